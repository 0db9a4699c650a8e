using Native.Perf.Paper;
using Native.SfBufNative;
using ScottPlot;

namespace Native.Perf.Real;

/// <summary>PNG charts of a <c>perf real</c> run: median throughput with its interval, and simulated against measured speedups.</summary>
internal static class RealCharts
{
    private static readonly ScottPlot.Palettes.Category10 s_palette = new();

    /// <summary>Writes every chart into <paramref name="directory"/>; returns the files.</summary>
    public static List<string> Write(string directory, IReadOnlyList<PaperRow> rows, IReadOnlyList<ComparisonRow>? comparison)
    {
        Directory.CreateDirectory(directory);
        var files = new List<string>();
        foreach (var group in rows.GroupBy(c => c.Experiment))
        {
            files.Add(Throughput(Path.Combine(directory, $"real-throughput-{group.Key}.png"), group.Key, [.. group]));
        }

        if (comparison is { Count: > 0 })
        {
            foreach (int cpus in comparison.Select(c => c.Cpus).Distinct().Order())
            {
                files.Add(Speedups(Path.Combine(directory, $"real-vs-simulated-{cpus}cpu.png"), [.. comparison.Where(c => c.Cpus == cpus)], cpus));
            }
        }

        return files;
    }

    private static string Throughput(string path, string experiment, List<PaperRow> cells)
    {
        var plot = new Plot();
        var strategies = SfBufMapper.StrategyNames.Where(s => cells.Any(c => c.Strategy == s)).ToList();
        var cpuCounts = cells.Select(c => c.Cpus).Distinct().Order().ToList();
        var bars = new List<Bar>();
        var ticks = new List<Tick>();
        for (int g = 0; g < cpuCounts.Count; g++)
        {
            double center = g * (strategies.Count + 1);
            ticks.Add(new Tick(center + ((strategies.Count - 1) / 2.0), $"{cpuCounts[g]} CPU{(cpuCounts[g] > 1 ? "s" : string.Empty)}"));
            for (int s = 0; s < strategies.Count; s++)
            {
                var cell = cells.FirstOrDefault(c => c.Cpus == cpuCounts[g] && c.Strategy == strategies[s]);
                if (cell == null)
                {
                    continue;
                }

                double median = cell.Throughput;
                bars.Add(new Bar
                {
                    Position = center + s,
                    Value = median,
                    FillColor = s_palette.GetColor(s),
                    Label = median.ToString(median >= 100 ? "N0" : "0.#", System.Globalization.CultureInfo.InvariantCulture),
                });
                if (cell.CiLow is { } low && cell.CiHigh is { } high)
                {
                    var whisker = plot.Add.Line(center + s, low, center + s, high);
                    whisker.LineWidth = 2;
                    whisker.LineColor = Colors.Black;
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

        plot.ShowLegend(Alignment.UpperLeft);
        plot.Title($"{experiment} on the host MMU: median, 95% interval");
        plot.YLabel(cells[0].Bytes > 0 ? "MiB/s" : "operations/s");
        plot.SavePng(path, 800, 450);
        return path;
    }

    private static string Speedups(string path, List<ComparisonRow> rows, int cpus)
    {
        var plot = new Plot();
        var bars = new List<Bar>();
        var ticks = new List<Tick>();
        for (int i = 0; i < rows.Count; i++)
        {
            double center = i * 3;
            ticks.Add(new Tick(center + 0.5, $"{rows[i].Experiment}\n{rows[i].Strategy}"));
            bars.Add(new Bar { Position = center, Value = rows[i].Simulated, FillColor = s_palette.GetColor(0) });
            var measured = rows[i].Measured.Ratio;
            bars.Add(new Bar { Position = center + 1, Value = measured.Median, FillColor = s_palette.GetColor(1) });
            if (measured.CiLow is { } low && measured.CiHigh is { } high)
            {
                var whisker = plot.Add.Line(center + 1, low, center + 1, high);
                whisker.LineWidth = 2;
                whisker.LineColor = Colors.Black;
            }
        }

        plot.Add.Bars(bars);
        plot.Add.HorizontalLine(1.0, color: Colors.Gray);
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual([.. ticks]);
        plot.Axes.Margins(bottom: 0);
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "simulated (perf paper)", FillColor = s_palette.GetColor(0) });
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "measured (perf real)", FillColor = s_palette.GetColor(1) });
        plot.ShowLegend(Alignment.UpperLeft);
        plot.Title($"speedup over original, {cpus} CPU{(cpus > 1 ? "s" : string.Empty)}");
        plot.YLabel("x original");
        plot.SavePng(path, Math.Max(800, 120 * rows.Count), 500);
        return path;
    }
}
