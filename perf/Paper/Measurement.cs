using System.Text.Json.Serialization;
using Native.PageTable;

namespace Native.Perf.Paper;

/// <summary>
/// What one trial measured for one experiment point (most experiments have one point per trial;
/// <c>lru</c> has one per working-set size): time, work done, and the machine's counts.
/// </summary>
internal sealed record Measurement
{
    [JsonPropertyName("experiment")]
    public required string Experiment { get; init; }

    [JsonPropertyName("strategy")]
    public required string Strategy { get; init; }

    [JsonPropertyName("cpus")]
    public required int Cpus { get; init; }

    [JsonPropertyName("cost_profile")]
    public required string CostProfile { get; init; }

    /// <summary>The machine backend the trial ran on (<see cref="PaperRow.SimulatedBackend"/> or <see cref="PaperRow.HostBackend"/>).</summary>
    [JsonPropertyName("backend")]
    public string Backend { get; init; } = PaperRow.SimulatedBackend;

    /// <summary>Which point of the experiment (empty when it has one; the working set for lru).</summary>
    [JsonPropertyName("point")]
    public string Point { get; init; } = string.Empty;

    [JsonPropertyName("params")]
    public required IReadOnlyDictionary<string, object> Params { get; init; }

    /// <summary>Seconds of the measurement window: host wall-clock time in real time, virtual seconds in virtual time.</summary>
    [JsonPropertyName("seconds")]
    public required double Seconds { get; init; }

    /// <summary>How <see cref="Seconds"/> was timed: <see cref="PaperRow.RealTime"/> or <see cref="PaperRow.VirtualTime"/>.</summary>
    [JsonPropertyName("shootdown")]
    public string Shootdown { get; init; } = PaperRow.IpiShootdown;

    [JsonPropertyName("time_mode")]
    public string Time { get; init; } = PaperRow.RealTime;

    /// <summary>Which CPUs the workload kept busy: <see cref="PaperRow.PaperLoad"/> or <see cref="PaperRow.AllLoad"/>.</summary>
    [JsonPropertyName("load")]
    public string Load { get; init; } = PaperRow.PaperLoad;

    /// <summary>Virtual time: the window's virtual nanoseconds.</summary>
    [JsonPropertyName("virtual_ns")]
    public long? VirtualNs { get; init; }

    /// <summary>Virtual time: the quantum, in nanoseconds.</summary>
    [JsonPropertyName("quantum_ns")]
    public long? QuantumNs { get; init; }

    /// <summary>The window's host wall-clock seconds (in virtual time: what the simulation itself took).</summary>
    [JsonPropertyName("host_seconds")]
    public double HostSeconds { get; init; }

    /// <summary>Virtual time: the scheduler's decisions in the window (the simulator's own work).</summary>
    [JsonPropertyName("scheduling_steps")]
    public long? SchedulingSteps { get; init; }

    [JsonPropertyName("bytes")]
    public required long Bytes { get; init; }

    [JsonPropertyName("ops")]
    public required long Ops { get; init; }

    [JsonPropertyName("counters")]
    public required IReadOnlyDictionary<string, long> Counters { get; init; }

    /// <summary>True when the stale-translation oracle was on.</summary>
    [JsonPropertyName("checked")]
    public bool Checked { get; init; }

    /// <summary>The modelled mapping cost of the whole trial, in ns.</summary>
    [JsonPropertyName("modelled")]
    public required MappingCost Modelled { get; init; }

    /// <summary>The machine's configuration warnings (for example, threads left unpinned).</summary>
    [JsonPropertyName("warnings")]
    public IReadOnlyList<string> Warnings { get; init; } = [];

    /// <summary>A counter by schema name (0 when absent).</summary>
    public long this[string counter] => Counters.GetValueOrDefault(counter);

    /// <summary>MiB for bulk experiments, operations otherwise.</summary>
    [JsonIgnore]
    public double Units => Bytes > 0 ? Bytes / (double)(1 << 20) : Math.Max(1, Ops);

    /// <summary>MiB/s for experiments that move bulk data, operations/s otherwise.</summary>
    [JsonIgnore]
    public double Throughput => Seconds <= 0 ? 0 : Units / Seconds;

    /// <summary>Operations per second.</summary>
    [JsonIgnore]
    public double OpsPerSecond => Seconds <= 0 ? 0 : Ops / Seconds;
}
