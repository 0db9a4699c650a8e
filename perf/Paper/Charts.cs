using Native.Perf.Charting;

namespace Native.Perf.Paper;

/// <summary>
/// PNG charts of a <c>perf paper</c> run (ScottPlot, rendered headless): per experiment the
/// throughput of every strategy with its within-run 95% CI (the caption under it says what that
/// leaves out), and against the CPU count the modelled mapping
/// cost and the IPIs per unit; the IPIs per MiB of every bulk experiment; the LRU curve. Every
/// chart's title says the CPU count, the cost profile and the time mode of its rows; value axes
/// are logarithmic where the values span more than a decade (<see cref="AxisScale"/>); every
/// strategy keeps its registry colour (<see cref="StrategyPalette"/>).
/// </summary>
internal static class Charts
{
    /// <summary>The name of the chart of IPIs per MiB of every bulk experiment.</summary>
    public const string IpisPerMibFile = "ipis-per-mib.png";

    /// <summary>Writes every chart into <paramref name="directory"/>; returns the files.</summary>
    public static List<string> Write(string directory, IReadOnlyList<PaperRow> rows)
    {
        Directory.CreateDirectory(directory);
        return [.. Plan(rows).Select(c => c.Save(directory))];
    }

    /// <summary>The charts of <paramref name="rows"/>, described, in the order they are written.</summary>
    public static List<IChart> Plan(IReadOnlyList<PaperRow> rows)
    {
        ArgumentNullException.ThrowIfNull(rows);
        var charts = new List<IChart>();
        foreach (var group in rows.Where(r => r.Experiment != "lru").GroupBy(r => r.Experiment))
        {
            var list = group.ToList();
            charts.Add(Throughput($"throughput-{group.Key}.png", group.Key, list));
        }

        // Per experiment, one line per strategy against the CPU count: the modelled mapping cost
        // (deterministic where the counts are) and the IPIs sent per unit.
        if (rows.Select(r => r.Cpus).Distinct().Count() > 1)
        {
            foreach (var group in rows.Where(r => r.Experiment is not ("lru" or "memcpy")).GroupBy(r => r.Experiment))
            {
                var list = group.ToList();
                string unit = list[0].Unit;
                charts.Add(AgainstCpus(
                    $"modelled-{group.Key}.png",
                    ChartText.Title($"{group.Key}: modelled mapping cost per {unit}", ChartText.ModelledContext(list)),
                    $"µs per {unit}",
                    list,
                    r => r.ModelledNs / 1000));
                charts.Add(AgainstCpus(
                    $"ipis-vs-cpus-{group.Key}.png",
                    ChartText.Title($"{group.Key}: IPIs sent per {unit} against the CPU count (median trial)", ChartText.Context(list)),
                    $"IPIs per {unit}",
                    list,
                    r => r["ipis_sent"] / r.Units));
            }
        }

        var bulkRows = rows.Where(r => r.Bytes > 0 && r.Experiment is not ("memcpy" or "lru")).ToList();
        if (bulkRows.Count > 0)
        {
            int cpus = bulkRows.Max(r => r.Cpus);
            charts.Add(IpisPerMib(IpisPerMibFile, [.. bulkRows.Where(r => r.Cpus == cpus)]));
        }

        var lru = rows.Where(r => r.Experiment == "lru").ToList();
        if (lru.Count > 0)
        {
            charts.Add(LruCurve("lru.png", lru));
        }

        return charts;
    }

    /// <summary>One bar per strategy, grouped by CPU count: the median throughput with its within-run 95% CI across rounds.</summary>
    public static BarChart Throughput(string fileName, string experiment, IReadOnlyList<PaperRow> rows)
    {
        ArgumentNullException.ThrowIfNull(rows);
        var strategies = StrategyPalette.Ordered(rows.Select(r => r.Strategy));
        var styles = StrategyPalette.For(strategies);
        var cpuCounts = rows.Select(r => r.Cpus).Distinct().Order().ToList();
        var values = new List<BarValue>();
        for (int g = 0; g < cpuCounts.Count; g++)
        {
            for (int s = 0; s < strategies.Count; s++)
            {
                if (rows.FirstOrDefault(r => r.Cpus == cpuCounts[g] && r.Strategy == strategies[s]) is { } row)
                {
                    values.Add(new BarValue(g, s, row.Throughput, row.CiLow, row.CiHigh));
                }
            }
        }

        return new BarChart(
            fileName,
            ChartText.Title($"{experiment}: throughput, {ChartText.Summary(rows)}", ChartText.Context(rows)),
            ChartText.ThroughputUnit(rows[0]),
            [.. cpuCounts.Select(CpuLabel)],
            [.. strategies.Select(s => ChartSeries.Of(s, styles[s]))],
            values,
            intervalLegend: ChartText.CiLegend,
            intervalCaption: ChartText.IntervalCaption);
    }

    /// <summary>"1 CPU", "2 CPUs".</summary>
    public static string CpuLabel(int cpus) => $"{cpus} CPU{(cpus > 1 ? "s" : string.Empty)}";

    /// <summary>One line per strategy: <paramref name="value"/> against the CPU count.</summary>
    public static LineChart AgainstCpus(string fileName, string title, string yLabel, IReadOnlyList<PaperRow> rows, Func<PaperRow, double> value, bool log2X = false)
    {
        ArgumentNullException.ThrowIfNull(rows);
        var strategies = StrategyPalette.Ordered(rows.Select(r => r.Strategy));
        var styles = StrategyPalette.For(strategies);
        var lines = new List<LinePoints>();
        for (int s = 0; s < strategies.Count; s++)
        {
            var points = rows.Where(r => r.Strategy == strategies[s]).OrderBy(r => r.Cpus).ToList();
            lines.Add(new LinePoints(s, [.. points.Select(r => (double)r.Cpus)], [.. points.Select(value)]));
        }

        string machine = rows.Any(r => r.Backend == PaperRow.HostBackend) ? "CPUs" : "simulated CPUs";
        return new LineChart(fileName, title, log2X ? $"{machine} (log2 scale)" : machine, yLabel,
            [.. strategies.Select(s => ChartSeries.Of(s, styles[s]))], lines,
            xTicks: [.. rows.Select(r => (double)r.Cpus).Distinct().Order()], log2X: log2X);
    }

    private static BarChart IpisPerMib(string fileName, List<PaperRow> rows)
    {
        var experiments = rows.Select(r => r.Experiment).Distinct().ToList();
        var strategies = StrategyPalette.Ordered(rows.Select(r => r.Strategy));
        var styles = StrategyPalette.For(strategies);
        var values = new List<BarValue>();
        for (int e = 0; e < experiments.Count; e++)
        {
            for (int s = 0; s < strategies.Count; s++)
            {
                if (rows.FirstOrDefault(r => r.Experiment == experiments[e] && r.Strategy == strategies[s]) is { } row)
                {
                    values.Add(new BarValue(e, s, row["ipis_sent"] / row.Units));
                }
            }
        }

        return new BarChart(
            fileName,
            ChartText.Title($"IPIs sent per {ChartText.MiB} moved (median trial)", ChartText.Context(rows)),
            $"IPIs per {ChartText.MiB}",
            experiments,
            [.. strategies.Select(s => ChartSeries.Of(s, styles[s]))],
            values,
            valueLabels: false);
    }

    private static LineChart LruCurve(string fileName, List<PaperRow> rows)
    {
        int cpus = rows.Min(r => r.Cpus);
        var shown = rows.Where(r => r.Cpus == cpus && JsonValues.Number(r.Params.GetValueOrDefault("hit_rate")) is not null).ToList();
        var strategies = StrategyPalette.Ordered(shown.Select(r => r.Strategy));
        var styles = StrategyPalette.For(strategies);
        var lines = new List<LinePoints>();
        for (int s = 0; s < strategies.Count; s++)
        {
            var points = shown.Where(r => r.Strategy == strategies[s]).OrderBy(r => JsonValues.Number(r.Params["fraction_of_pool"])).ToList();
            lines.Add(new LinePoints(s,
                [.. points.Select(r => JsonValues.Number(r.Params["fraction_of_pool"])!.Value)],
                [.. points.Select(r => 100 * JsonValues.Number(r.Params["hit_rate"])!.Value)]));
        }

        return new LineChart(
            fileName,
            ChartText.Title("sf_buf hit rate, cyclic working set", ChartText.Context(shown)),
            "working set / nsfbufs",
            "hits (%)",
            [.. strategies.Select(s => ChartSeries.Of(s, styles[s]))],
            lines,
            verticalLine: (1.0, "nsfbufs"),
            fixedY: (-5, 105));
    }
}
