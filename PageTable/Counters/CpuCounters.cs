namespace Native.PageTable;

/// <summary>
/// Per-CPU event counters in native memory, one cache-line-padded block per CPU.
/// <para>
/// Each block has a single writer: the kernel thread that holds that CPU (CPU ownership changes
/// hands through the scheduler lock, which orders the writes). So increments are plain stores, no
/// shared line is written on a hot path, and readers sum with volatile loads.
/// </para>
/// </summary>
internal sealed unsafe class CpuCounters
{
    // 128 bytes: x64 prefetches adjacent line pairs, so 64 would still false-share.
    private const int StrideAlign = 128;

    private readonly long* _base;
    private readonly int _strideLongs;

    public CpuCounters(NativeLedger ledger, int cpus)
    {
        Cpus = cpus;
        int strideBytes = ((CounterNames.Count * sizeof(long)) + StrideAlign - 1) / StrideAlign * StrideAlign;
        _strideLongs = strideBytes / sizeof(long);
        _base = (long*)ledger.AllocZeroed((nuint)(strideBytes * cpus), StrideAlign);
    }

    public int Cpus { get; }

    /// <summary>The first counter of <paramref name="cpu"/>'s block: its owner increments through it directly.</summary>
    public long* BlockOf(int cpu) => _base + (cpu * _strideLongs);

    public long Read(int cpu, Counter counter) => Volatile.Read(ref _base[(cpu * _strideLongs) + (int)counter]);

    public long Sum(Counter counter)
    {
        long total = 0;
        for (int cpu = 0; cpu < Cpus; cpu++)
        {
            total += Read(cpu, counter);
        }

        return total;
    }
}
