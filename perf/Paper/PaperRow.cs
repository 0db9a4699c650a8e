using System.Text.Json.Serialization;

namespace Native.Perf.Paper;

/// <summary>
/// One result row of <c>perf paper</c>, in the fixed JSON schema: one experiment, one
/// strategy, one CPU count.
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

    [JsonPropertyName("params")]
    public required IReadOnlyDictionary<string, object> Params { get; init; }

    [JsonPropertyName("seconds")]
    public required double Seconds { get; init; }

    [JsonPropertyName("bytes")]
    public required long Bytes { get; init; }

    [JsonPropertyName("ops")]
    public required long Ops { get; init; }

    /// <summary>MiB (2^20 bytes) per second; 0 for experiments that move no bulk data.</summary>
    [JsonPropertyName("mb_per_s")]
    public double MbPerS => Bytes == 0 || Seconds <= 0 ? 0 : Bytes / (double)(1 << 20) / Seconds;

    [JsonPropertyName("ops_per_s")]
    public double OpsPerS => Seconds <= 0 ? 0 : Ops / Seconds;

    [JsonPropertyName("counters")]
    public required IReadOnlyDictionary<string, long> Counters { get; init; }

    /// <summary>A counter by schema name (0 when absent).</summary>
    public long this[string counter] => Counters.GetValueOrDefault(counter);

    /// <summary>The unit results are normalised by: MiB for bulk experiments, operations otherwise.</summary>
    [JsonIgnore]
    public double Units => Bytes > 0 ? Bytes / (double)(1 << 20) : Math.Max(1, Ops);

    /// <summary>"MB" or "op".</summary>
    [JsonIgnore]
    public string Unit => Bytes > 0 ? "MB" : "op";

    /// <summary>The schema's counter names, in order.</summary>
    public static readonly string[] CounterKeys =
    [
        "pte_writes", "pte_clears", "user_pte_writes", "local_invalidations", "full_flushes", "shootdowns", "ipis_sent",
        "ipi_targets", "tlb_misses", "sfbuf_hits", "sfbuf_misses", "sfbuf_waits", "sfbuf_fails", "lock_contentions",
        "stale_accesses", "latent_stale_accesses",
    ];
}
