using System.Diagnostics;
using Native.PageTable;
using Native.Perf.Real;
using Native.SfBufNative;
using Native.SfBufNative.Kernel;

namespace Native.Perf.Paper;

/// <summary>How much work a trial does.</summary>
internal enum TrialSize
{
    /// <summary>The full run's sizes: long enough to time.</summary>
    Full,

    /// <summary><c>--quick</c>: small sizes, the same shape.</summary>
    Quick,

    /// <summary>The checked verification trial: the smallest size that still exercises every path.</summary>
    Check,
}

/// <summary>Which CPUs an experiment keeps busy.</summary>
internal enum LoadForm
{
    /// <summary>The paper's form: two parties for pipe and sendfile (the other CPUs idle); one worker per CPU where the paper already had that.</summary>
    Paper,

    /// <summary>Every CPU works: N/2 pipe pairs, N/2 sendfile connections (sender and NIC on a pair of CPUs), and so on.</summary>
    All,
}

/// <summary>
/// One experiment run: a freshly booted default machine with the chosen CPU count, cost profile
/// and sf_buf strategy, and the measurement window (time, machine counters, sf_buf statistics).
/// </summary>
internal sealed class Trial : IDisposable
{
    private readonly Stopwatch _clock = new();
    private long _virtualBegin;
    private long _virtualEnd;
    private long _stepsBegin;
    private long _stepsEnd;
    private CounterSnapshot? _before;
    private CounterSnapshot? _after;
    private SfBufStats? _sfBefore;
    private SfBufStats? _sfAfter;
    private readonly HostWindow? _host;
    private readonly double? _roundTripNs;

    public Trial(CostModel cost, string strategy, int cpus, TrialSize size, bool isChecked, CostModel? model = null, MachineBackend backend = MachineBackend.Simulated, bool sharedHost = false,
        MachineTime time = MachineTime.Real, TimeSpan? quantum = null, LoadForm load = LoadForm.Paper, ShootdownMechanism shootdown = ShootdownMechanism.Ipi)
    {
        Cost = cost;
        Model = model ?? cost;
        Strategy = strategy;
        Cpus = cpus;
        Size = size;
        Load = load;
        bool isVirtual = time == MachineTime.Virtual;
        if (!isVirtual && (backend == MachineBackend.Host || size != TrialSize.Check))
        {
            // The host can move its vCPUs between physical cores mid-run (on the development VM
            // between about 100 and 500 ns, for minutes at a time), which moves every cross-CPU
            // figure: every timed trial records the cross-core round trip it ran with.
            _roundTripNs = CrossCoreRoundTrip.Measure(roundTrips: 2000, batches: 5);
        }

        // On a host whose cores other processes keep busy, a CPU pinned to a shared core waits a
        // host time slice for every hand-off (a 16 MiB pipe trial went from 13 ms to 1 s): there the
        // threads run unpinned, so a waiting CPU's core can run the thread it waits for, and the
        // machine parks early as an oversubscribed one does. The host backend needs its pins.
        bool unpin = (sharedHost && backend == MachineBackend.Simulated) || isVirtual;
        Machine = new Machine(new MachineOptions
        {
            Cpus = cpus,

            // XPFO's strategies need their own amd64; every other runs on the default one.
            Flavor = SfBufMapper.Describe(strategy).FlavorOr(MachineFlavor.Amd64),
            Cost = cost,
            Checked = isChecked,
            Backend = backend,
            PinThreads = !unpin,
            Oversubscribed = unpin && !isVirtual ? true : null,
            Time = time,
            Quantum = quantum ?? MachineOptions.DefaultQuantum,
            Shootdown = shootdown,
        });
        Kernel = new SimKernel(Machine, strategy);
        _host = backend == MachineBackend.Host ? new HostWindow(Machine) : null;
    }

    /// <summary>The profile the machine charges.</summary>
    public CostModel Cost { get; }

    /// <summary>The profile the modelled mapping cost is priced with.</summary>
    public CostModel Model { get; }

    public string Strategy { get; }

    public int Cpus { get; }

    public TrialSize Size { get; }

    /// <summary>Which CPUs the experiment keeps busy.</summary>
    public LoadForm Load { get; }

    /// <summary>True in virtual time.</summary>
    public bool IsVirtual => Machine.Time == MachineTime.Virtual;

    public Machine Machine { get; }

    public SimKernel Kernel { get; }

    /// <summary>True when the stale-translation oracle is on in this trial.</summary>
    public bool IsChecked => Machine.Options.Checked;

    /// <summary>The CPU a second party (reader, NIC) runs on: the other CPU when there are two.</summary>
    public int PeerCpu => Cpus - 1;

    /// <summary>Picks the size of this trial from the full, quick and check sizes.</summary>
    public T Pick<T>(T full, T quick, T check) => Size switch
    {
        TrialSize.Full => full,
        TrialSize.Quick => quick,
        _ => check,
    };

    /// <summary>
    /// Each CPU's share of <paramref name="total"/> work, in whole <paramref name="granule"/>s (at
    /// least one): experiments that run one worker per CPU do the same total work at every CPU
    /// count, so that rows at different CPU counts compare like with like and a trial on more
    /// CPUs than the host has cores does not grow with them.
    /// </summary>
    public long Share(long total, long granule = 1) => Math.Max(granule, total / Cpus / granule * granule);

    /// <summary>Starts the measurement window.</summary>
    public void Begin()
    {
        _sfBefore = Kernel.SfBufs.Stats();
        _before = Machine.Counters();
        _host?.Begin();
        _virtualBegin = Machine.VirtualNowNs;
        _stepsBegin = Machine.VirtualSteps;
        _clock.Restart();
    }

    /// <summary>Ends the measurement window.</summary>
    public void End()
    {
        _clock.Stop();
        _virtualEnd = Machine.VirtualNowNs;
        _stepsEnd = Machine.VirtualSteps;
        _host?.End();
        if (IsChecked && _host == null)
        {
            // Windows still open are closed at the trial's end and counted (docs/output.md).
            Machine.CloseExposures();
        }

        _after = Machine.Counters();
        _sfAfter = Kernel.SfBufs.Stats();
    }

    /// <summary>What was measured between <see cref="Begin"/> and <see cref="End"/>.</summary>
    public Measurement Measure(string experiment, long bytes, long ops, IReadOnlyDictionary<string, object> parameters, string point = "")
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
            ["mapping_flushes"] = d[Counter.MappingFlushes],
            ["shootdowns"] = d[Counter.ShootdownRounds],
            ["ipis_sent"] = d[Counter.IpisSent],
            ["ipi_targets"] = d[Counter.IpiTargets],
            ["idle_targets_deferred"] = d[Counter.IdleTargetsDeferred],
            ["tlb_misses"] = d[Counter.TlbMisses],
            ["mapping_tlb_misses"] = d[Counter.MappingTlbMisses],
            ["mappings"] = d[Counter.Mappings],
            ["mapped_pages"] = d[Counter.MappedPages],
            ["sfbuf_hits"] = _sfAfter.Hits - _sfBefore.Hits,
            ["sfbuf_misses"] = _sfAfter.Misses - _sfBefore.Misses,
            ["sfbuf_recycles"] = _sfAfter.Recycles - _sfBefore.Recycles,
            ["sfbuf_waits"] = _sfAfter.AllocWait - _sfBefore.AllocWait,
            ["sfbuf_fails"] = _sfAfter.Failures - _sfBefore.Failures,
            ["lock_contentions"] = d[Counter.LockContentions],
            ["stale_accesses"] = IsChecked ? Machine.Counters()[Counter.StaleAccesses] : 0,
            ["latent_stale_accesses"] = IsChecked ? Machine.Counters()[Counter.LatentStaleAccesses] : 0,
            ["charged_ns"] = d[Counter.ChargedNanoseconds],
            ["cross_cpu_parks"] = d[Counter.CrossCpuParks],
        };
        if (Machine.Options.Shootdown == ShootdownMechanism.Broadcast)
        {
            // Only in broadcast rows, so that IPI rows keep the schema they always had.
            counters["broadcast_invalidations"] = d[Counter.BroadcastInvalidations];
            counters["broadcast_pages"] = d[Counter.BroadcastPages];
            counters["broadcast_syncs"] = d[Counter.BroadcastSyncs];
            counters["broadcast_targets"] = d[Counter.BroadcastTargets];
        }

        _host?.AddCounters(counters);
        if (IsChecked && _host == null)
        {
            // Exposure is the oracle's: checked trials only, and its lengths in virtual time only.
            counters[ExposuresKey] = d[Counter.Exposures];
            if (IsVirtual)
            {
                counters[ExposedNsKey] = d[Counter.ExposedNanoseconds];
                counters[LongestExposureNsKey] = Machine.LongestExposureNs;
            }
        }

        if (_roundTripNs != null)
        {
            parameters = new Dictionary<string, object>(parameters, StringComparer.Ordinal) { ["round_trip_ns"] = Math.Round(_roundTripNs ?? -1, 1) };
        }

        // The strategy's own counts (pkmap flushes, kmap_local saves, lwbuf syncs, emap flushes...),
        // as deltas over the window; pool sizes and high-water marks as they stand at the end.
        foreach (var (key, after) in _sfAfter.Details)
        {
            counters[key] = IsLevel(key) ? after : after - _sfBefore.Details.GetValueOrDefault(key);
        }

        return new Measurement
        {
            Experiment = experiment,
            Strategy = Strategy,
            Cpus = Cpus,
            CostProfile = Cost.Name,
            Backend = _host != null ? PaperRow.HostBackend : PaperRow.SimulatedBackend,
            Shootdown = PaperRow.ShootdownName(Machine.Options.Shootdown),
            Point = point,
            Params = parameters,
            Seconds = IsVirtual ? (_virtualEnd - _virtualBegin) / 1e9 : _clock.Elapsed.TotalSeconds,
            Time = IsVirtual ? PaperRow.VirtualTime : PaperRow.RealTime,
            Load = Load == LoadForm.All ? PaperRow.AllLoad : PaperRow.PaperLoad,
            VirtualNs = IsVirtual ? _virtualEnd - _virtualBegin : null,
            QuantumNs = IsVirtual ? Machine.QuantumNs : null,
            HostSeconds = _clock.Elapsed.TotalSeconds,
            SchedulingSteps = IsVirtual ? _stepsEnd - _stepsBegin : null,
            Bytes = bytes,
            Ops = ops,
            Counters = counters,
            Checked = IsChecked,
            Modelled = MappingCost.Of(d, Model),
            Warnings = Machine.Warnings,
        };
    }

    /// <summary>Exposure windows opened in a checked trial (<see cref="Counter.Exposures"/>).</summary>
    public const string ExposuresKey = "exposures";

    /// <summary>Their lengths summed, virtual nanoseconds (<see cref="Counter.ExposedNanoseconds"/>).</summary>
    public const string ExposedNsKey = "exposed_ns";

    /// <summary>The longest window of the trial's machine, virtual nanoseconds (a level, not a count).</summary>
    public const string LongestExposureNsKey = "longest_exposure_ns";

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
