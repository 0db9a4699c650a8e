using System.Diagnostics.Metrics;

namespace Native.PageTable;

/// <summary>
/// Exposes the machine counters as <see cref="System.Diagnostics.Metrics"/> observable
/// instruments on meters named <c>SfBufNative</c>. They are pull-style: a listener such as
/// dotnet-counters runs the callbacks when it samples, so nothing is added to any hot path.
/// <list type="bullet">
/// <item><c>machine.*</c>, one meter per machine, tagged <c>cpu</c>: exactly that machine's counters.</item>
/// <item><c>total.*</c>, one meter per process, tagged <c>cpu</c>: every machine's counters, the
/// disposed ones included. <c>perf paper</c> boots a machine per trial, each living well under
/// dotnet-counters' one-second interval, so these are the ones to watch.</item>
/// </list>
/// </summary>
internal static class MachineMetrics
{
    public const string MeterName = "SfBufNative";

    private static readonly Lock s_lock = new();
    private static readonly List<Machine> s_live = [];
    private static readonly long[,] s_retired = new long[MachineOptions.MaxCpus, CounterNames.Count];
    private static Meter? s_totals;

    public static Meter Create(Machine machine)
    {
        var meter = new Meter(MeterName, "1.0");
        foreach (var counter in CounterNames.All)
        {
            var c = counter;
            meter.CreateObservableCounter(
                "machine." + CounterNames.Of(c),
                () => Observe(machine, c),
                unit: Unit(c),
                description: $"{CounterNames.Of(c)} per simulated CPU of one machine");
        }

        lock (s_lock)
        {
            s_totals ??= CreateTotals();
            s_live.Add(machine);
        }

        return meter;
    }

    /// <summary>
    /// Folds a disposing machine's counts into the process totals and runs
    /// <paramref name="markDisposed"/> under the same lock, so no callback reads the machine's
    /// native counters after they are freed.
    /// </summary>
    public static void Retire(Machine machine, Action? markDisposed = null)
    {
        lock (s_lock)
        {
            markDisposed?.Invoke();
            if (!s_live.Remove(machine))
            {
                return;
            }

            for (int cpu = 0; cpu < machine.Options.Cpus; cpu++)
            {
                for (int c = 0; c < CounterNames.Count; c++)
                {
                    s_retired[cpu, c] += machine.ReadCounter(cpu, (Counter)c);
                }
            }
        }
    }

    private static Meter CreateTotals()
    {
        var meter = new Meter(MeterName, "1.0");
        foreach (var counter in CounterNames.All)
        {
            var c = counter;
            meter.CreateObservableCounter(
                "total." + CounterNames.Of(c),
                () => ObserveTotals(c),
                unit: Unit(c),
                description: $"{CounterNames.Of(c)} per simulated CPU, over every machine of the process");
        }

        return meter;
    }

    private static string Unit(Counter c) => c == Counter.AckWaitNanoseconds ? "ns" : "{event}";

    private static List<Measurement<long>> Observe(Machine machine, Counter counter)
    {
        var measurements = new List<Measurement<long>>(machine.Options.Cpus);
        lock (s_lock)
        {
            // A listener may sample after Dispose (its meter is being torn down): nothing to read then.
            if (!s_live.Contains(machine))
            {
                return measurements;
            }

            for (int cpu = 0; cpu < machine.Options.Cpus; cpu++)
            {
                measurements.Add(new Measurement<long>(machine.ReadCounter(cpu, counter), new KeyValuePair<string, object?>("cpu", cpu)));
            }
        }

        return measurements;
    }

    private static List<Measurement<long>> ObserveTotals(Counter counter)
    {
        var measurements = new List<Measurement<long>>();
        lock (s_lock)
        {
            int cpus = s_live.Count == 0 ? 0 : s_live.Max(m => m.Options.Cpus);
            for (int cpu = 0; cpu < MachineOptions.MaxCpus; cpu++)
            {
                long value = s_retired[cpu, (int)counter];
                foreach (var machine in s_live)
                {
                    if (cpu < machine.Options.Cpus)
                    {
                        value += machine.ReadCounter(cpu, counter);
                    }
                }

                if (value != 0 || cpu < cpus)
                {
                    measurements.Add(new Measurement<long>(value, new KeyValuePair<string, object?>("cpu", cpu)));
                }
            }
        }

        return measurements;
    }
}
