using System.Globalization;
using Native.PageTable;
using Native.Perf.Paper;
using Native.Perf.Stats;

namespace Native.Perf.Charting;

/// <summary>
/// The words on the charts: units (MiB, 2^20 bytes, as the text says; never "MB"), the line
/// under every title saying what the values come from: the CPU count and the machine, the cost
/// profile, and the time mode, all read from the rows; and what the error bars are: within-run
/// intervals (<see cref="WithinRun"/>), named so in the title and the legend and explained in the
/// caption under the plot.
/// </summary>
internal static class ChartText
{
    /// <summary>The unit of bulk data: 2^20 bytes.</summary>
    public const string MiB = "MiB";

    /// <summary>What the bars and error bars of a chart with intervals are.</summary>
    public const string MedianCi = "median, " + WithinRun.Interval + " across rounds";

    /// <summary>What a throughput bar is: the median with its within-run 95% CI across rounds, or the one round's value.</summary>
    public static string Summary(IEnumerable<PaperRow> rows) =>
        rows.Any(r => r.CiLow is not null && r.CiHigh is not null) ? MedianCi : rows.Any(r => r.Samples.Count > 1) ? "median across rounds" : "one round";

    /// <summary>The legend entry of the error bars.</summary>
    public const string CiLegend = WithinRun.Interval;

    /// <summary>The caption under a chart with error bars: what they leave out.</summary>
    public const string IntervalCaption = WithinRun.ChartCaption;

    /// <summary>The throughput unit of a row: MiB/s for bulk experiments, operations/s otherwise.</summary>
    public static string ThroughputUnit(PaperRow row)
    {
        ArgumentNullException.ThrowIfNull(row);
        return row.Bytes > 0 ? $"{MiB}/s" : "operations/s";
    }

    /// <summary>"1 and 2 simulated CPUs", "2 host CPUs", "1 simulated CPU": the CPU counts of <paramref name="rows"/> and their machine.</summary>
    public static string Cpus(IEnumerable<PaperRow> rows)
    {
        var list = rows.ToList();
        var counts = list.Select(r => r.Cpus).Distinct().Order().ToList();
        var machines = list.Select(r => r.Backend == PaperRow.HostBackend ? "host" : "simulated").Distinct().Order(StringComparer.Ordinal);
        return $"{Join(counts.Select(c => c.ToString(CultureInfo.InvariantCulture)))} {string.Join("/", machines)} CPU{(counts.Count == 1 && counts[0] == 1 ? string.Empty : "s")}";
    }

    /// <summary>"cost profile default": the profile the machine charged (zero: nothing charged, the host's own costs).</summary>
    public static string Profile(IEnumerable<PaperRow> rows)
    {
        var profiles = rows.Select(r => r.CostProfile).Distinct().Order(StringComparer.Ordinal).ToList();
        string names = Join(profiles);
        return profiles.Count == 1 && profiles[0] == CostModel.Zero.Name
            ? $"cost profile {names} (nothing charged)"
            : $"cost profile{(profiles.Count > 1 ? "s" : string.Empty)} {names}";
    }

    /// <summary>"modelled with the default profile": the profile a modelled cost is priced with.</summary>
    public static string ModelProfile(IEnumerable<PaperRow> rows) =>
        $"priced with cost profile {Join(rows.Select(r => r.ModelProfile).Distinct().Order(StringComparer.Ordinal))}";

    /// <summary>The time mode of the rows' timings: "real time (wall clock)", "virtual time (simulated clock)", ...</summary>
    public static string TimeMode(IEnumerable<PaperRow> rows) =>
        Join(rows.Select(r => r.TimeMode).Distinct().Order(StringComparer.Ordinal).Select(TimeModeName));

    /// <summary>How a time mode reads on a chart.</summary>
    public static string TimeModeName(string mode) => mode switch
    {
        PaperRow.RealTime => "real time (wall clock)",
        "virtual" => "virtual time (simulated clock)",
        _ => $"{mode} time",
    };

    /// <summary>The line under a chart's title: CPU counts and machine, cost profile, time mode.</summary>
    public static string Context(IEnumerable<PaperRow> rows)
    {
        var list = rows.ToList();
        return $"{Cpus(list)}, {Profile(list)}, {TimeMode(list)}";
    }

    /// <summary>The line under a chart of modelled costs: CPU counts and machine, the profile the counts are priced with, and that the time is modelled.</summary>
    public static string ModelledContext(IEnumerable<PaperRow> rows)
    {
        var list = rows.ToList();
        return $"{Cpus(list)}, modelled time: the counts {ModelProfile(list)}";
    }

    /// <summary>A title over its context line.</summary>
    public static string Title(string what, string context) => $"{what}\n{context}";

    /// <summary>The width in pixels a chart needs for <paramref name="title"/>'s longest line (bold, 16 px).</summary>
    public static int TitleWidth(string title) => 60 + (int)Math.Ceiling(9.5 * title.Split('\n').Max(l => l.Length));

    /// <summary>A value label: thousands separated at 100 and above, two significant decimals below.</summary>
    public static string Value(double v) => v switch
    {
        >= 100 => v.ToString("N0", CultureInfo.InvariantCulture),
        >= 1 => v.ToString("0.#", CultureInfo.InvariantCulture),
        _ => v.ToString("0.##", CultureInfo.InvariantCulture),
    };

    private static string Join(IEnumerable<string> items)
    {
        var list = items.ToList();
        return list.Count switch
        {
            0 => "?",
            1 => list[0],
            _ => $"{string.Join(", ", list.Take(list.Count - 1))} and {list[^1]}",
        };
    }
}
