using System.Diagnostics;
using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Kernel;

namespace Native.Perf.Paper;

/// <summary>
/// One experiment run: a freshly booted default machine with the chosen CPU count, cost profile
/// and sf_buf strategy, and the measurement window (time, machine counters, sf_buf statistics).
/// </summary>
internal sealed class Trial : IDisposable
{
    private readonly Stopwatch _clock = new();
    private CounterSnapshot? _before;
    private CounterSnapshot? _after;
    private SfBufStats? _sfBefore;
    private SfBufStats? _sfAfter;

    public Trial(PaperSettings settings, string strategy, int cpus)
    {
        Settings = settings;
        Strategy = strategy;
        Cpus = cpus;
        Machine = new Machine(new MachineOptions { Cpus = cpus, Cost = settings.Cost, Checked = settings.Checked });
        Kernel = new SimKernel(Machine, strategy);
    }

    public PaperSettings Settings { get; }

    public string Strategy { get; }

    public int Cpus { get; }

    public Machine Machine { get; }

    public SimKernel Kernel { get; }

    /// <summary>The CPU a second party (reader, NIC) runs on: the other CPU when there are two.</summary>
    public int PeerCpu => Cpus - 1;

    public bool Quick => Settings.Quick;

    /// <summary>Starts the measurement window.</summary>
    public void Begin()
    {
        _sfBefore = Kernel.SfBufs.Stats();
        _before = Machine.Counters();
        _clock.Restart();
    }

    /// <summary>Ends the measurement window.</summary>
    public void End()
    {
        _clock.Stop();
        _after = Machine.Counters();
        _sfAfter = Kernel.SfBufs.Stats();
    }

    /// <summary>The row for what was measured between <see cref="Begin"/> and <see cref="End"/>.</summary>
    public PaperRow Row(string experiment, long bytes, long ops, IReadOnlyDictionary<string, object> parameters)
    {
        if (_before is null || _after is null || _sfBefore is null || _sfAfter is null)
        {
            throw new InvalidOperationException("Begin and End frame the measurement");
        }

        var d = _after - _before;
        var counters = new Dictionary<string, long>(StringComparer.Ordinal)
        {
            ["pte_writes"] = d[Counter.KernelPteWrites],
            ["pte_clears"] = d[Counter.KernelPteClears],
            ["user_pte_writes"] = d[Counter.UserPteWrites],
            ["local_invalidations"] = d[Counter.LocalInvalidations],
            ["full_flushes"] = d[Counter.FullFlushes] + d[Counter.NonGlobalFlushes],
            ["shootdowns"] = d[Counter.ShootdownRounds],
            ["ipis_sent"] = d[Counter.IpisSent],
            ["ipi_targets"] = d[Counter.IpiTargets],
            ["tlb_misses"] = d[Counter.TlbMisses],
            ["sfbuf_hits"] = _sfAfter.Hits - _sfBefore.Hits,
            ["sfbuf_misses"] = _sfAfter.Misses - _sfBefore.Misses,
            ["sfbuf_waits"] = _sfAfter.AllocWait - _sfBefore.AllocWait,
            ["sfbuf_fails"] = (_sfAfter.Failures - _sfBefore.Failures) + (_sfAfter.AllocFail - _sfBefore.AllocFail),
            ["lock_contentions"] = d[Counter.LockContentions],
            ["stale_accesses"] = Machine.Counters()[Counter.StaleAccesses],
        };

        // The strategy's own counts (pkmap flushes, kmap_local saves, lwbuf syncs, emap flushes...),
        // as deltas over the window; pool sizes and high-water marks as they stand at the end.
        foreach (var (key, after) in _sfAfter.Details)
        {
            counters[key] = IsLevel(key) ? after : after - _sfBefore.Details.GetValueOrDefault(key);
        }

        return new PaperRow
        {
            Experiment = experiment,
            Strategy = Strategy,
            Cpus = Cpus,
            CostProfile = Settings.Cost.Name,
            Params = parameters,
            Seconds = _clock.Elapsed.TotalSeconds,
            Bytes = bytes,
            Ops = ops,
            Counters = counters,
        };
    }

    /// <summary>Details that are levels (sizes, high-water marks), not counts.</summary>
    public static bool IsLevel(string key) => key.EndsWith(".last_pkmap", StringComparison.Ordinal)
        || key.EndsWith(".peak_in_use", StringComparison.Ordinal) || key.EndsWith(".objects", StringComparison.Ordinal);

    /// <summary>Joins every thread (rethrowing the first failure).</summary>
    public static void JoinAll(params KernelThread[] threads)
    {
        foreach (var td in threads)
        {
            td.Join(TimeSpan.FromMinutes(10));
        }
    }

    public void Dispose()
    {
        Kernel.Dispose();
        Machine.Dispose();
    }
}

/// <summary>What <c>perf paper</c> was asked for.</summary>
internal sealed record PaperSettings(CostModel Cost, bool Quick, bool Checked);
