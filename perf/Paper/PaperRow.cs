using System.Text.Json.Serialization;
using Native.PageTable;
using Native.Perf.Stats;

namespace Native.Perf.Paper;

/// <summary>
/// One result row of <c>perf paper</c>, in the fixed JSON schema: one experiment (point), one
/// strategy, one CPU count, summarising its repeated timed trials. <c>mb_per_s</c> and
/// <c>ops_per_s</c> are medians; <c>samples</c> holds each round's throughput (MiB/s for bulk
/// experiments, operations/s otherwise) with its CI and CV; <c>counters</c> are those of the
/// median trial, except <c>stale_accesses</c> and <c>latent_stale_accesses</c>, summed over every
/// checked trial of the cell.
/// </summary>
internal sealed record PaperRow
{
    [JsonPropertyName("experiment")]
    public required string Experiment { get; init; }

    [JsonPropertyName("strategy")]
    public required string Strategy { get; init; }

    [JsonPropertyName("cpus")]
    public required int Cpus { get; init; }

    [JsonPropertyName("cost_profile")]
    public required string CostProfile { get; init; }

    /// <summary>The machine backend the row was measured on: <see cref="SimulatedBackend"/> or <see cref="HostBackend"/>.</summary>
    [JsonPropertyName("backend")]
    public string Backend { get; init; } = SimulatedBackend;

    [JsonPropertyName("params")]
    public required IReadOnlyDictionary<string, object> Params { get; init; }

    /// <summary>Median seconds of one timed trial.</summary>
    [JsonPropertyName("seconds")]
    public required double Seconds { get; init; }

    /// <summary>Bytes one trial moved.</summary>
    [JsonPropertyName("bytes")]
    public required long Bytes { get; init; }

    /// <summary>Operations one trial did.</summary>
    [JsonPropertyName("ops")]
    public required long Ops { get; init; }

    /// <summary>Median MiB (2^20 bytes) per second; 0 for experiments that move no bulk data.</summary>
    [JsonPropertyName("mb_per_s")]
    public required double MbPerS { get; init; }

    /// <summary>Median operations per second.</summary>
    [JsonPropertyName("ops_per_s")]
    public required double OpsPerS { get; init; }

    [JsonPropertyName("counters")]
    public required IReadOnlyDictionary<string, long> Counters { get; init; }

    /// <summary>Each timed round's throughput, in round order (MiB/s, or operations/s).</summary>
    [JsonPropertyName("samples")]
    public IReadOnlyList<double> Samples { get; init; } = [];

    /// <summary>Lower end of the 95% CI of the median throughput (<see cref="SampleSummary.CiMethod"/>); null with one sample.</summary>
    [JsonPropertyName("ci_low")]
    public double? CiLow { get; init; }

    /// <summary>Upper end of the 95% CI of the median throughput; null with one sample.</summary>
    [JsonPropertyName("ci_high")]
    public double? CiHigh { get; init; }

    /// <summary>Coefficient of variation of the samples.</summary>
    [JsonPropertyName("cv")]
    public double Cv { get; init; }

    /// <summary>The modelled cost of the mapping machinery per MiB (or per operation), in ns: the counts priced by <see cref="ModelProfile"/>.</summary>
    [JsonPropertyName("modelled_ns")]
    public double ModelledNs { get; init; }

    /// <summary>Its parts per MiB (or per operation), in ns.</summary>
    [JsonPropertyName("modelled")]
    public Native.PageTable.MappingCost? Modelled { get; init; }

    /// <summary>The cost profile the modelled cost is priced with.</summary>
    [JsonPropertyName("model_profile")]
    public string ModelProfile { get; init; } = string.Empty;

    /// <summary>The experiment point (the working set of lru), empty otherwise.</summary>
    [JsonPropertyName("point")]
    public string Point { get; init; } = string.Empty;

    /// <summary>More simulated CPUs than the host has cores: the threads time-share cores.</summary>
    [JsonPropertyName("oversubscribed")]
    public bool Oversubscribed { get; init; }

    /// <summary>True when the timed trials ran with the stale-translation oracle on (<c>--checked</c>).</summary>
    [JsonPropertyName("timed_checked")]
    public bool TimedChecked { get; init; }

    /// <summary>Checked trials of the cell (the verification trial, and the timed ones under <c>--checked</c>).</summary>
    [JsonPropertyName("checked_trials")]
    public int CheckedTrials { get; init; }

    /// <summary>
    /// Exposure windows per MiB (or per operation), from the cell's checked trials (their windows
    /// over their units): how often a removed ephemeral translation stayed cached on some CPU past
    /// the call that removed it. Null when no checked trial ran (and in rows saved before the field).
    /// </summary>
    [JsonPropertyName("exposures_per_unit")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? ExposuresPerUnit { get; init; }

    /// <summary>Virtual time: exposed CPU·µs per MiB (or per operation), from the cell's checked trials; null otherwise.</summary>
    [JsonPropertyName("exposed_cpu_us_per_unit")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? ExposedCpuUsPerUnit { get; init; }

    /// <summary>Virtual time: the longest exposure window of the cell's checked trials, in µs; null otherwise.</summary>
    [JsonPropertyName("longest_exposure_us")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? LongestExposureUs { get; init; }

    /// <summary>
    /// How <see cref="Seconds"/> (and so the throughput) was timed: <see cref="RealTime"/>, the
    /// host's wall clock, or <see cref="VirtualTime"/> (rows saved before the field read back as real time).
    /// </summary>
    [JsonPropertyName("time_mode")]
    public string TimeMode { get; init; } = RealTime;

    /// <summary>The <see cref="TimeMode"/> of trials timed by the host's wall clock.</summary>
    public const string RealTime = "real";

    /// <summary>The <see cref="TimeMode"/> of trials timed by the machine's virtual clocks.</summary>
    public const string VirtualTime = "virtual";

    /// <summary>Which CPUs the workload kept busy: <see cref="PaperLoad"/> or <see cref="AllLoad"/>.</summary>
    [JsonPropertyName("load")]
    public string Load { get; init; } = PaperLoad;

    /// <summary>The <see cref="Load"/> of the paper's form of an experiment.</summary>
    public const string PaperLoad = "paper";

    /// <summary>The <see cref="Load"/> of the form in which every CPU works.</summary>
    public const string AllLoad = "all";

    /// <summary>Virtual time: the median trial's virtual nanoseconds; null in real time.</summary>
    [JsonPropertyName("virtual_ns")]
    public long? VirtualNs { get; init; }

    /// <summary>Virtual time: the quantum in nanoseconds; null in real time.</summary>
    [JsonPropertyName("quantum_ns")]
    public long? QuantumNs { get; init; }

    /// <summary>Host wall-clock seconds of the median trial's window (a host figure: it varies from run to run).</summary>
    [JsonPropertyName("host_seconds")]
    public double HostSeconds { get; init; }

    /// <summary>Virtual time: the scheduler's decisions in the median trial's window; null in real time.</summary>
    [JsonPropertyName("scheduling_steps")]
    public long? SchedulingSteps { get; init; }

    /// <summary>
    /// How the machine delivered shootdowns: <see cref="IpiShootdown"/> or <see cref="BroadcastShootdown"/>
    /// (rows saved before the field read back as IPIs).
    /// </summary>
    [JsonPropertyName("shootdown")]
    public string Shootdown { get; init; } = IpiShootdown;

    /// <summary>The <see cref="Shootdown"/> of rows whose shootdowns were IPIs serviced by handlers.</summary>
    public const string IpiShootdown = "ipi";

    /// <summary>The <see cref="Shootdown"/> of rows whose shootdowns were broadcast invalidations with a completion wait.</summary>
    public const string BroadcastShootdown = "broadcast";

    /// <summary>The <see cref="Shootdown"/> name of <paramref name="mechanism"/>.</summary>
    public static string ShootdownName(ShootdownMechanism mechanism) =>
        mechanism == ShootdownMechanism.Broadcast ? BroadcastShootdown : IpiShootdown;

    /// <summary>The <see cref="Backend"/> of rows from the simulated machine.</summary>
    public const string SimulatedBackend = "simulated";

    /// <summary>The <see cref="Backend"/> of rows measured on the host's MMU (<c>perf real</c>).</summary>
    public const string HostBackend = "host";

    /// <summary>A counter by schema name (0 when absent).</summary>
    public long this[string counter] => Counters.GetValueOrDefault(counter);

    /// <summary>The unit results are normalised by: MiB for bulk experiments, operations otherwise.</summary>
    [JsonIgnore]
    public double Units => Bytes > 0 ? Bytes / (double)(1 << 20) : Math.Max(1, Ops);

    /// <summary>"MiB" (2^20 bytes) or "op".</summary>
    [JsonIgnore]
    public string Unit => Bytes > 0 ? "MiB" : "op";

    /// <summary>The median throughput: MiB/s for bulk experiments, operations/s otherwise.</summary>
    [JsonIgnore]
    public double Throughput => Bytes > 0 ? MbPerS : OpsPerS;

    /// <summary>The statistics of <see cref="Samples"/> (of the one throughput, for rows saved before rows had samples).</summary>
    [JsonIgnore]
    public SampleSummary Summary => SampleSummary.Of(Samples.Count > 0 ? Samples : [Throughput]);

    /// <summary>The schema's counter names, in order.</summary>
    public static readonly string[] CounterKeys =
    [
        "pte_writes", "pte_clears", "user_pte_writes", "local_invalidations", "full_flushes", "mapping_flushes", "shootdowns", "ipis_sent",
        "ipi_targets", "idle_targets_deferred", "tlb_misses", "mapping_tlb_misses", "mappings", "mapped_pages",
        "sfbuf_hits", "sfbuf_misses", "sfbuf_waits", "sfbuf_fails", "lock_contentions", "stale_accesses",
        "latent_stale_accesses", "charged_ns", "cross_cpu_parks",
    ];
}
