using Native.SfBufNative;
using ScottPlot;

namespace Native.Perf.Paper;

/// <summary>PNG charts of a <c>perf paper</c> run (ScottPlot, rendered headless).</summary>
internal static class Charts
{
    private static readonly ScottPlot.Palettes.Category10 s_palette = new();

    /// <summary>Writes every chart into <paramref name="directory"/>; returns the files.</summary>
    public static List<string> Write(string directory, IReadOnlyList<PaperRow> rows)
    {
        Directory.CreateDirectory(directory);
        var files = new List<string>();
        foreach (var group in rows.Where(r => r.Experiment != "lru").GroupBy(r => r.Experiment))
        {
            var list = group.ToList();
            bool bulk = list[0].Bytes > 0;
            files.Add(GroupedBars(
                Path.Combine(directory, $"throughput-{group.Key}.png"),
                $"{group.Key}: throughput ({list[0].CostProfile} cost profile)",
                bulk ? "MiB/s" : "operations/s",
                list,
                r => bulk ? r.MbPerS : r.OpsPerS));
        }

        // Per experiment, one line per strategy against the CPU count: the modelled mapping cost
        // (deterministic where the counts are) and the IPIs sent per unit.
        if (rows.Select(r => r.Cpus).Distinct().Count() > 1)
        {
            foreach (var group in rows.Where(r => r.Experiment is not ("lru" or "memcpy")).GroupBy(r => r.Experiment))
            {
                var list = group.ToList();
                files.Add(AgainstCpus(
                    Path.Combine(directory, $"modelled-{group.Key}.png"),
                    $"{group.Key}: modelled mapping cost ({list[0].ModelProfile} profile)",
                    $"µs per {list[0].Unit}",
                    list,
                    r => r.ModelledNs / 1000));
                files.Add(AgainstCpus(
                    Path.Combine(directory, $"ipis-vs-cpus-{group.Key}.png"),
                    $"{group.Key}: IPIs sent per {list[0].Unit} against the CPU count",
                    $"IPIs / {list[0].Unit}",
                    list,
                    r => r["ipis_sent"] / r.Units));
            }
        }

        var bulkRows = rows.Where(r => r.Bytes > 0 && r.Experiment != "memcpy").ToList();
        if (bulkRows.Count > 0)
        {
            int cpus = bulkRows.Max(r => r.Cpus);
            files.Add(IpisPerMb(Path.Combine(directory, "ipis-per-mb.png"), bulkRows.Where(r => r.Cpus == cpus).ToList(), cpus));
        }

        var lru = rows.Where(r => r.Experiment == "lru").ToList();
        if (lru.Count > 0)
        {
            files.Add(LruCurve(Path.Combine(directory, "lru.png"), lru));
        }

        return files;
    }

    /// <summary>One bar per strategy, grouped by CPU count.</summary>
    public static string GroupedBars(string path, string title, string yLabel, IReadOnlyList<PaperRow> rows, Func<PaperRow, double> value)
    {
        var plot = new Plot();
        var strategies = rows.Select(r => r.Strategy).Distinct().ToList();
        var cpuCounts = rows.Select(r => r.Cpus).Distinct().Order().ToList();
        var bars = new List<Bar>();
        var ticks = new List<Tick>();
        for (int g = 0; g < cpuCounts.Count; g++)
        {
            double center = g * (strategies.Count + 1);
            ticks.Add(new Tick(center + ((strategies.Count - 1) / 2.0), $"{cpuCounts[g]} CPU{(cpuCounts[g] > 1 ? "s" : string.Empty)}"));
            for (int s = 0; s < strategies.Count; s++)
            {
                var row = rows.FirstOrDefault(r => r.Cpus == cpuCounts[g] && r.Strategy == strategies[s]);
                if (row != null)
                {
                    double v = value(row);
                    bars.Add(new Bar
                    {
                        Position = center + s,
                        Value = v,
                        FillColor = s_palette.GetColor(s),
                        Label = v.ToString(v >= 100 ? "N0" : "0.#", System.Globalization.CultureInfo.InvariantCulture),
                    });
                }
            }
        }

        plot.Add.Bars(bars);
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual([.. ticks]);
        plot.Axes.Margins(bottom: 0);
        for (int s = 0; s < strategies.Count; s++)
        {
            plot.Legend.ManualItems.Add(new LegendItem { LabelText = strategies[s], FillColor = s_palette.GetColor(s) });
        }

        // Beside the data with the peers on board: inside, nine entries would hide bars.
        if (strategies.Count > 3)
        {
            plot.ShowLegend(Edge.Right);
        }
        else
        {
            plot.ShowLegend(Alignment.UpperLeft);
        }

        plot.Title(title);
        plot.YLabel(yLabel);
        plot.SavePng(path, strategies.Count > 3 ? 1000 : 800, 450);
        return path;
    }

    private static string IpisPerMb(string path, List<PaperRow> rows, int cpus)
    {
        var plot = new Plot();
        var experiments = rows.Select(r => r.Experiment).Distinct().ToList();
        var strategies = SfBufMapper.StrategyNames.Where(s => rows.Any(r => r.Strategy == s)).ToList();
        var bars = new List<Bar>();
        var ticks = new List<Tick>();
        for (int e = 0; e < experiments.Count; e++)
        {
            double center = e * (strategies.Count + 1);
            ticks.Add(new Tick(center + ((strategies.Count - 1) / 2.0), experiments[e]));
            for (int s = 0; s < strategies.Count; s++)
            {
                var row = rows.FirstOrDefault(r => r.Experiment == experiments[e] && r.Strategy == strategies[s]);
                if (row != null)
                {
                    bars.Add(new Bar { Position = center + s, Value = row["ipis_sent"] / row.Units, FillColor = s_palette.GetColor(s) });
                }
            }
        }

        plot.Add.Bars(bars);
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual([.. ticks]);
        plot.Axes.Margins(bottom: 0);
        for (int s = 0; s < strategies.Count; s++)
        {
            plot.Legend.ManualItems.Add(new LegendItem { LabelText = strategies[s], FillColor = s_palette.GetColor(s) });
        }

        if (strategies.Count > 3)
        {
            plot.ShowLegend(Edge.Right);
        }
        else
        {
            plot.ShowLegend(Alignment.UpperRight);
        }

        plot.Title($"IPIs sent per MiB moved, {cpus} CPUs");
        plot.YLabel("IPIs / MiB");
        plot.SavePng(path, 1000, 450);
        return path;
    }

    /// <summary>One line per strategy: <paramref name="value"/> against the CPU count.</summary>
    public static string AgainstCpus(string path, string title, string yLabel, IReadOnlyList<PaperRow> rows, Func<PaperRow, double> value)
    {
        var plot = new Plot();
        var strategies = SfBufMapper.StrategyNames.Where(s => rows.Any(r => r.Strategy == s)).ToList();
        var cpuCounts = rows.Select(r => r.Cpus).Distinct().Order().ToList();
        for (int s = 0; s < strategies.Count; s++)
        {
            var points = rows.Where(r => r.Strategy == strategies[s]).OrderBy(r => r.Cpus).ToList();
            var line = plot.Add.Scatter(points.Select(r => (double)r.Cpus).ToArray(), points.Select(value).ToArray(), s_palette.GetColor(s));
            line.LegendText = strategies[s];
        }

        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            [.. cpuCounts.Select(c => new Tick(c, c.ToString(System.Globalization.CultureInfo.InvariantCulture)))]);
        plot.ShowLegend(Edge.Right);
        plot.Title(title);
        plot.XLabel("simulated CPUs");
        plot.YLabel(yLabel);
        plot.SavePng(path, 800, 450);
        return path;
    }

    private static string LruCurve(string path, List<PaperRow> rows)
    {
        var plot = new Plot();
        int cpus = rows.Min(r => r.Cpus);
        int i = 0;
        foreach (var group in rows.Where(r => r.Cpus == cpus && JsonValues.Number(r.Params["hit_rate"]) is not null).GroupBy(r => r.Strategy))
        {
            var points = group.OrderBy(r => JsonValues.Number(r.Params["fraction_of_pool"])).ToList();
            var line = plot.Add.Scatter(
                points.Select(r => JsonValues.Number(r.Params["fraction_of_pool"])!.Value).ToArray(),
                points.Select(r => 100 * JsonValues.Number(r.Params["hit_rate"])!.Value).ToArray(),
                s_palette.GetColor(i++));
            line.LegendText = group.Key;
        }

        plot.Add.VerticalLine(1.0, color: Colors.Gray).LegendText = "nsfbufs";
        if (i > 3)
        {
            plot.ShowLegend(Edge.Right);
        }
        else
        {
            plot.ShowLegend(Alignment.UpperRight);
        }

        plot.Title("sf_buf hit rate, cyclic working set");
        plot.XLabel("working set / nsfbufs");
        plot.YLabel("hits (%)");
        plot.Axes.SetLimitsY(-5, 105);
        plot.SavePng(path, 800, 450);
        return path;
    }
}
