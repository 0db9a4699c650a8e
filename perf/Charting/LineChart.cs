using System.Globalization;
using ScottPlot;

namespace Native.Perf.Charting;

/// <summary>One line: its series and its points.</summary>
internal sealed record LinePoints(int Series, IReadOnlyList<double> Xs, IReadOnlyList<double> Ys);

/// <summary>
/// One line per series against a numeric horizontal axis (the CPU count, the working set), the
/// value axis chosen from the data. Lines that coincide with an earlier one say so in the
/// legend ("= original") and their markers are drawn smaller over the earlier one's, so that no
/// series hides behind another.
/// </summary>
internal sealed class LineChart : IChart
{
    public LineChart(string fileName, string title, string xLabel, string yLabel, IReadOnlyList<ChartSeries> series, IReadOnlyList<LinePoints> lines,
        IReadOnlyList<double>? xTicks = null, double? reference = null, (double X, string Label)? verticalLine = null, (double Low, double High)? fixedY = null,
        bool log2X = false)
    {
        Log2X = log2X;
        FileName = fileName;
        Title = title;
        XLabel = xLabel;
        Series = series;
        Lines = lines;
        XTicks = xTicks;
        Reference = reference;
        VerticalLine = verticalLine;
        FixedY = fixedY;
        Scale = AxisScale.For(lines.SelectMany(l => l.Ys).Concat(reference is { } r ? [r] : []));
        YLabel = AxisLabel.With(yLabel, Scale);
    }

    public string FileName { get; }

    /// <summary>True when the horizontal axis is logarithmic in base 2 (CPU counts 1 to 256), labelled in the original values.</summary>
    public bool Log2X { get; }

    private double MapX(double x) => Log2X ? Math.Log2(x) : x;

    public string Title { get; }

    public string XLabel { get; }

    public string YLabel { get; }

    public AxisScale Scale { get; }

    public IReadOnlyList<ChartSeries> Series { get; }

    public double? Reference { get; }

    public IReadOnlyList<LinePoints> Lines { get; }

    /// <summary>The ticks of the horizontal axis (the CPU counts); null for automatic ones.</summary>
    public IReadOnlyList<double>? XTicks { get; }

    /// <summary>A labelled vertical line (nsfbufs on the LRU curve).</summary>
    public (double X, string Label)? VerticalLine { get; }

    /// <summary>Fixed limits of a linear value axis (0-100 % with a margin); null to fit the data.</summary>
    public (double Low, double High)? FixedY { get; }

    /// <summary>
    /// The chart's width in pixels: at least 900, and enough for the title over the data area
    /// (ScottPlot centres it there), beside the value axis and the legend.
    /// </summary>
    public int Width => Math.Max(900, ChartText.TitleWidth(Title) + 110 + 60 + (8 * LegendTexts().Append(VerticalLine?.Label ?? string.Empty).Max(t => t.Length)));

    /// <summary>The legend text of each line: its series' name, and "= ..." when it coincides with an earlier line.</summary>
    public IReadOnlyList<string> LegendTexts()
    {
        var texts = new List<string>();
        for (int i = 0; i < Lines.Count; i++)
        {
            var same = Enumerable.Range(0, i).FirstOrDefault(j => Coincide(Lines[j], Lines[i]), -1);
            string name = Series[Lines[i].Series].Name;
            texts.Add(same < 0 ? name : $"{name} (= {Series[Lines[same].Series].Name})");
        }

        return texts;
    }

    public string Save(string directory)
    {
        string path = Path.Combine(directory, FileName);
        var plot = new Plot();
        var legend = LegendTexts();
        for (int i = 0; i < Lines.Count; i++)
        {
            var line = Lines[i];
            var style = Series[line.Series];
            int later = Lines.Skip(i + 1).Count(l => Coincide(l, line));
            var scatter = plot.Add.Scatter(line.Xs.Select(MapX).ToArray(), line.Ys.Select(Scale.Map).ToArray(), style.Color);
            scatter.LinePattern = style.Pattern;
            scatter.LineWidth = 1.5f;
            scatter.MarkerShape = style.Marker;
            scatter.MarkerSize = 6 + (2 * Math.Min(later, 6));
            scatter.LegendText = legend[i];
        }

        if (VerticalLine is { } vertical)
        {
            plot.Add.VerticalLine(vertical.X, 1.5f, Colors.Gray).LegendText = vertical.Label;
        }

        if (Reference is { } reference)
        {
            plot.Add.HorizontalLine(Scale.Map(reference), 1.5f, Colors.DimGray, LinePattern.Dashed).LegendText = $"{AxisScale.Label(reference)}× (no change)";
        }

        if (XTicks is { } ticks)
        {
            plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
                [.. ticks.Select(c => new Tick(MapX(c), c.ToString(CultureInfo.InvariantCulture)))]);
            double low = MapX(ticks.Min()), high = MapX(ticks.Max());
            double span = ticks.Count > 1 ? high - low : 1;
            plot.Axes.SetLimitsX(low - (0.05 * span), high + (0.05 * span));
        }

        if (FixedY is { } y && !Scale.IsLog)
        {
            plot.Axes.SetLimitsY(y.Low, y.High);
        }
        else
        {
            Scale.Apply(plot, plot.Axes.Left, 0.05);
        }

        plot.ShowLegend(Edge.Right);
        plot.Title(Title);
        plot.XLabel(XLabel);
        plot.YLabel(YLabel);
        int entries = Lines.Count + (VerticalLine is null ? 0 : 1) + (Reference is null ? 0 : 1);
        plot.SavePng(path, Width, Math.Max(480, (entries * 22) + 120));
        return path;
    }

    private static bool Coincide(LinePoints a, LinePoints b) => a.Xs.SequenceEqual(b.Xs) && a.Ys.SequenceEqual(b.Ys);
}
