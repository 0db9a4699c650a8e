using ScottPlot;

namespace Native.Perf.Charting;

/// <summary>One strategy's point on a trade-off chart.</summary>
internal sealed record TradeOffPoint(int Series, double X, double Y, bool OnFrontier);

/// <summary>
/// One point per strategy, throughput against exposure, with the frontier (the points no other
/// beats on both) joined by a dashed line. Both axes are chosen from the data like any value
/// axis here (<see cref="AxisScale"/>): logarithmic over more than a decade, zeros at the floor.
/// </summary>
internal sealed class ExposureChart : IChart
{
    public ExposureChart(string fileName, string title, string xLabel, string yLabel, IReadOnlyList<ChartSeries> series, IReadOnlyList<TradeOffPoint> points)
    {
        FileName = fileName;
        Title = title;
        Series = series;
        Points = points;
        Scale = AxisScale.For(points.Select(p => p.Y));
        XScale = AxisScale.For(points.Select(p => p.X));
        XLabel = AxisLabel.With(xLabel, XScale).Replace("0 at the bottom", "0 at the left", StringComparison.Ordinal);
        YLabel = AxisLabel.With(yLabel, Scale);
    }

    public string FileName { get; }

    public string Title { get; }

    public string XLabel { get; }

    public string YLabel { get; }

    public AxisScale Scale { get; }

    /// <summary>The horizontal (exposure) axis' scale.</summary>
    public AxisScale XScale { get; }

    public IReadOnlyList<ChartSeries> Series { get; }

    public IReadOnlyList<TradeOffPoint> Points { get; }

    public double? Reference => null;

    public string Save(string directory)
    {
        string path = Path.Combine(directory, FileName);
        var plot = new Plot();
        var frontier = Points.Where(p => p.OnFrontier).OrderBy(p => p.X).ToList();
        if (frontier.Count > 1)
        {
            var line = plot.Add.Scatter(frontier.Select(p => XScale.Map(p.X)).ToArray(), frontier.Select(p => Scale.Map(p.Y)).ToArray(), Colors.DimGray);
            line.LinePattern = LinePattern.Dashed;
            line.MarkerShape = MarkerShape.None;
            line.LegendText = "frontier";
        }

        foreach (var point in Points)
        {
            var style = Series[point.Series];
            var marker = plot.Add.Scatter(new[] { XScale.Map(point.X) }, new[] { Scale.Map(point.Y) }, style.Color);
            marker.MarkerShape = style.Marker;
            marker.MarkerSize = point.OnFrontier ? 12 : 8;
            marker.LegendText = point.OnFrontier ? $"{style.Name} (frontier)" : style.Name;
        }

        if (XScale.IsLog)
        {
            double right = XScale.Top + 0.15;
            plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual([.. XScale.LogTicks(XScale.Bottom, right)]);
            plot.Axes.SetLimitsX(XScale.Bottom - 0.1, right);
        }
        else
        {
            double span = XScale.Top - XScale.Bottom;
            plot.Axes.SetLimitsX(XScale.Bottom - (0.05 * span), XScale.Top + (0.05 * span));
        }

        Scale.Apply(plot, plot.Axes.Left, 0.05);
        plot.ShowLegend(Edge.Right);
        plot.Title(Title);
        plot.XLabel(XLabel);
        plot.YLabel(YLabel);
        int width = Math.Max(900, ChartText.TitleWidth(Title) + 110 + 60 + (8 * Series.Max(s => s.Name.Length + 11)));
        plot.SavePng(path, width, Math.Max(480, ((Points.Count + 1) * 22) + 120));
        return path;
    }
}
