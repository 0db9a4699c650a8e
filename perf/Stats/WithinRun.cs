namespace Native.Perf.Stats;

/// <summary>
/// The words every report uses for the intervals <see cref="SampleSummary"/> computes. Those are
/// <em>within-run</em> intervals: they measure the spread of one run's paired rounds, all timed in
/// one process tree within minutes, and so on one phase of the host. A host whose speed changes in
/// phases that last minutes (a VM whose host moves its cores) shifts whole runs, and that
/// between-run variation is not in the interval: another run's median can fall outside it far
/// more often than 5 % of the time. So no report calls a difference significant on the interval
/// alone; every table and chart with an interval names it <see cref="Interval"/> and carries
/// <see cref="Legend"/> (or, on a chart, <see cref="ChartCaption"/>).
/// </summary>
public static class WithinRun
{
    /// <summary>The interval's name in every column header, caption and legend.</summary>
    public const string Interval = "within-run 95% CI";

    /// <summary>The one-line legend under every table that shows a real-time interval.</summary>
    public const string Legend =
        "within-run 95% CI: the spread of this run's paired rounds, all on one host phase; it does not include the host's "
        + "between-run variation (phases lasting minutes), so a difference is claimed only where a paired speedup's interval "
        + "excludes 1.0 and the row's counts explain it.";

    /// <summary>The mark of a speedup whose within-run interval holds 1.0.</summary>
    public const string HoldsOne = "≈1";

    /// <summary>What <see cref="HoldsOne"/> means, for the legend of a table of speedups.</summary>
    public const string HoldsOneLegend = HoldsOne + ": the speedup's within-run interval holds 1.0 (no difference shown).";

    /// <summary>The line under a chart with error bars.</summary>
    public const string ChartCaption =
        "error bars: within-run 95% CI, the spread of this run's rounds on one host phase; the host's between-run variation is not included";
}
