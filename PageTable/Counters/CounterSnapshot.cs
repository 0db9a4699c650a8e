using System.Text;

namespace Native.PageTable;

/// <summary>
/// The machine's counters at one moment, per CPU and summed. Subtract two snapshots to get the
/// events of a scenario: <c>var d = machine.Counters() - before;</c>.
/// </summary>
public sealed class CounterSnapshot
{
    private readonly long[,] _perCpu;

    internal CounterSnapshot(long[,] perCpu) => _perCpu = perCpu;

    /// <summary>Number of CPUs in the snapshot.</summary>
    public int Cpus => _perCpu.GetLength(0);

    /// <summary>The total of <paramref name="counter"/> over all CPUs.</summary>
    public long this[Counter counter]
    {
        get
        {
            long total = 0;
            for (int cpu = 0; cpu < Cpus; cpu++)
            {
                total += _perCpu[cpu, (int)counter];
            }

            return total;
        }
    }

    /// <summary>The value of <paramref name="counter"/> on one CPU.</summary>
    public long OnCpu(int cpu, Counter counter) => _perCpu[cpu, (int)counter];

    /// <summary>The events between <paramref name="before"/> and <paramref name="after"/>.</summary>
    public static CounterSnapshot operator -(CounterSnapshot after, CounterSnapshot before)
    {
        ArgumentNullException.ThrowIfNull(after);
        ArgumentNullException.ThrowIfNull(before);
        if (after.Cpus != before.Cpus)
        {
            throw new ArgumentException("snapshots of machines with different CPU counts", nameof(before));
        }

        var diff = new long[after.Cpus, CounterNames.Count];
        for (int cpu = 0; cpu < after.Cpus; cpu++)
        {
            for (int c = 0; c < CounterNames.Count; c++)
            {
                diff[cpu, c] = after._perCpu[cpu, c] - before._perCpu[cpu, c];
            }
        }

        return new CounterSnapshot(diff);
    }

    /// <summary>Same as the subtraction operator.</summary>
    public static CounterSnapshot Subtract(CounterSnapshot after, CounterSnapshot before) => after - before;

    /// <summary>Totals by schema name.</summary>
    public IReadOnlyDictionary<string, long> ToDictionary() =>
        CounterNames.All.ToDictionary(CounterNames.Of, c => this[c], StringComparer.Ordinal);

    /// <summary>Non-zero totals, one <c>name=value</c> per line.</summary>
    public override string ToString()
    {
        var text = new StringBuilder();
        foreach (var counter in CounterNames.All)
        {
            long value = this[counter];
            if (value != 0)
            {
                text.Append(CounterNames.Of(counter)).Append('=').Append(value).AppendLine();
            }
        }

        return text.ToString();
    }
}
