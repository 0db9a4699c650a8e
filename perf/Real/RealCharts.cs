using Native.Perf.Charting;
using Native.Perf.Paper;
using ScottPlot;

namespace Native.Perf.Real;

/// <summary>
/// PNG charts of a <c>perf real</c> run: per experiment the median throughput of every strategy
/// with its within-run 95% CI, and per CPU count the simulated against the measured speedups over
/// <c>original</c>, each with its interval, on a log axis where they span more than a decade, with
/// the 1× line. Titles say the CPU count, the cost profile and the time mode of each side.
/// </summary>
internal static class RealCharts
{
    private static readonly ChartSeries s_simulated = ChartSeries.Plain("simulated (perf paper)", Colors.SteelBlue);
    private static readonly ChartSeries s_measured = ChartSeries.Plain("measured (perf real, host MMU)", Colors.DarkOrange);

    /// <summary>Writes every chart into <paramref name="directory"/>; returns the files.</summary>
    public static List<string> Write(string directory, IReadOnlyList<PaperRow> rows, IReadOnlyList<ComparisonRow>? comparison, IReadOnlyList<PaperRow>? simulated = null)
    {
        Directory.CreateDirectory(directory);
        return [.. Plan(rows, comparison, simulated).Select(c => c.Save(directory))];
    }

    /// <summary>The charts, described, in the order they are written; <paramref name="simulated"/> (the rows compared with) names their profile and time mode.</summary>
    public static List<IChart> Plan(IReadOnlyList<PaperRow> rows, IReadOnlyList<ComparisonRow>? comparison, IReadOnlyList<PaperRow>? simulated = null)
    {
        ArgumentNullException.ThrowIfNull(rows);
        var charts = new List<IChart>();
        foreach (var group in rows.GroupBy(c => c.Experiment))
        {
            var list = group.ToList();
            var chart = Charts.Throughput($"real-throughput-{group.Key}.png", $"{group.Key} on the host MMU", list);
            charts.Add(chart);
        }

        if (comparison is { Count: > 0 })
        {
            foreach (int cpus in comparison.Select(c => c.Cpus).Distinct().Order())
            {
                charts.Add(Speedups($"real-vs-simulated-{cpus}cpu.png", [.. comparison.Where(c => c.Cpus == cpus)], cpus, rows, simulated));
            }
        }

        return charts;
    }

    private static BarChart Speedups(string fileName, List<ComparisonRow> rows, int cpus, IReadOnlyList<PaperRow> measured, IReadOnlyList<PaperRow>? simulated)
    {
        var values = new List<BarValue>();
        for (int i = 0; i < rows.Count; i++)
        {
            var sim = rows[i].SimulatedRatio;
            values.Add(new BarValue(i, 0, rows[i].Simulated, sim?.CiLow, sim?.CiHigh));
            var ratio = rows[i].Measured.Ratio;
            values.Add(new BarValue(i, 1, ratio.Median, ratio.CiLow, ratio.CiHigh));
        }

        var measuredRows = measured.Where(r => r.Cpus == cpus).ToList();
        var simulatedRows = simulated?.Where(r => r.Cpus == cpus).ToList() ?? [];
        string simulatedSide = simulatedRows.Count > 0
            ? $"simulated: {ChartText.Profile(simulatedRows)}, {ChartText.TimeMode(simulatedRows)}"
            : "simulated: as recorded";
        string context = $"{Charts.CpuLabel(cpus)}; {simulatedSide}; measured: host MMU, {ChartText.Profile(measuredRows)}, {ChartText.TimeMode(measuredRows)}";
        return new BarChart(
            fileName,
            ChartText.Title($"speedup over original, simulated against measured ({ChartText.MedianCi}, paired by round)", context),
            "× original",
            [.. rows.Select(r => $"{r.Experiment}\n{r.Strategy}")],
            [s_simulated, s_measured],
            values,
            reference: 1.0,
            intervalLegend: ChartText.CiLegend,
            intervalCaption: ChartText.IntervalCaption);
    }
}
