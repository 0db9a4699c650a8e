using Native.PageTable;

namespace Native.SfBufNative;

/// <summary>
/// An event count of a per-CPU mechanism: one native slot per CPU, each on its own cache line,
/// written only by the thread holding that CPU (so a plain increment loses nothing and shares no
/// line), summed when read.
/// </summary>
internal sealed unsafe class PerCpuCount
{
    private const int Stride = 8; // longs: one 64-byte line per CPU

    private readonly long* _counts;
    private readonly int _cpus;

    public PerCpuCount(Machine machine)
    {
        _cpus = machine.Options.Cpus;
        _counts = (long*)machine.Ledger.AllocZeroed((nuint)(_cpus * Stride * sizeof(long)), 64);
    }

    /// <summary>The sum over CPUs.</summary>
    public long Value
    {
        get
        {
            long sum = 0;
            for (int c = 0; c < _cpus; c++)
            {
                sum += Volatile.Read(ref _counts[c * Stride]);
            }

            return sum;
        }
    }

    /// <summary>Counts one event on <paramref name="cpu"/>, which the calling thread holds.</summary>
    public void Increment(Cpu cpu) => _counts[cpu.Id * Stride]++;
}
