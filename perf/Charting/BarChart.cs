using ScottPlot;

namespace Native.Perf.Charting;

/// <summary>One bar: its group, its series, its value and, when it has one, its interval.</summary>
internal sealed record BarValue(int Group, int Series, double Value, double? Low = null, double? High = null);

/// <summary>
/// Bars grouped along the horizontal axis (by CPU count, by experiment), one per series in each
/// group, with error bars where the values have intervals (named in the legend and explained by a
/// caption under the plot), the values written over the bars, an optional reference line, and the
/// legend beside the plot. The layout is computed from the
/// labels so that none overlaps: every bar's slot is at least as wide as its value label (written
/// upright when that would make the chart too wide) and every group as wide as its label.
/// </summary>
internal sealed class BarChart : IChart
{
    private const double CharPx = 7.5;
    private const int MaxWidth = 1800;
    private const int AxisPx = 110;
    private const int LegendCharPx = 8;
    private const int PlotHeightPx = 330;
    private const int CaptionFontPx = 12;
    private const int CaptionLinePx = 20;

    public BarChart(string fileName, string title, string yLabel, IReadOnlyList<string> groups, IReadOnlyList<ChartSeries> series, IReadOnlyList<BarValue> values,
        double? reference = null, string? intervalLegend = null, bool valueLabels = true, string? intervalCaption = null)
    {
        FileName = fileName;
        Title = title;
        Groups = groups;
        Series = series;
        Values = values;
        Reference = reference;
        bool intervals = values.Any(v => v.Low is not null && v.High is not null);
        IntervalLegend = intervals ? intervalLegend : null;
        Caption = intervals ? intervalCaption : null;
        ValueLabels = valueLabels;
        Scale = AxisScale.For(values.SelectMany(v => new[] { v.Value, v.Low ?? double.NaN, v.High ?? double.NaN }).Concat(reference is { } r ? [r] : []));
        YLabel = AxisLabel.With(yLabel, Scale);
    }

    public string FileName { get; }

    public string Title { get; }

    public string XLabel => string.Empty;

    public string YLabel { get; }

    public AxisScale Scale { get; }

    public IReadOnlyList<ChartSeries> Series { get; }

    public double? Reference { get; }

    /// <summary>The group labels, along the horizontal axis (a line break makes two lines).</summary>
    public IReadOnlyList<string> Groups { get; }

    public IReadOnlyList<BarValue> Values { get; }

    /// <summary>What the error bars are, for the legend; null when no value has an interval.</summary>
    public string? IntervalLegend { get; }

    /// <summary>The line under the plot saying what the error bars leave out; null when no value has an interval.</summary>
    public string? Caption { get; }

    public bool ValueLabels { get; }

    /// <summary>True when the value labels are written upright (horizontal ones would make the chart wider than its maximum).</summary>
    public bool UprightLabels => ValueLabels && Slots * HorizontalSlotPx > MaxWidth - AxisPx - LegendPx;

    /// <summary>The chart's width in pixels, from the layout: the slots or the title over the data area (ScottPlot centres it there), the value axis and the legend.</summary>
    public int Width => Math.Max(800, (int)Math.Ceiling(Math.Max(Math.Max(Slots * SlotPx, ChartText.TitleWidth(Title)), CaptionPx)) + AxisPx + LegendPx);

    /// <summary>The chart's height in pixels: the plot, the title, the group labels, the caption, and room for the legend.</summary>
    public int Height => Math.Max(PlotHeightPx + 150 + (GroupLines * 16) + (Caption is null ? 0 : CaptionLinePx), (LegendEntries * 22) + 120);

    /// <summary>The width of one bar's slot in pixels.</summary>
    public double SlotPx => UprightLabels ? Math.Max(24, GroupPx / (Series.Count + 1)) : HorizontalSlotPx;

    /// <summary>The width the caption needs (12 px, about 6.5 px a character), laid out under the data area.</summary>
    private double CaptionPx => Caption is null ? 0 : 6.5 * Caption.Length;

    private int Slots => Groups.Count * (Series.Count + 1);

    private int GroupLines => Groups.Count == 0 ? 1 : Groups.Max(g => g.Split('\n').Length);

    private int LegendEntries => Series.Count + (IntervalLegend is null ? 0 : 1) + (Reference is null ? 0 : 1);

    private int LegendPx => 60 + (LegendCharPx * Math.Max(12, Series.Select(s => s.Name.Length).Append(IntervalLegend?.Length ?? 0).Max()));

    private double GroupPx => 16 + (CharPx * (Groups.Count == 0 ? 0 : Groups.Max(g => g.Split('\n').Max(l => l.Length))));

    private double LabelPx => ValueLabels ? 8 + (CharPx * (Values.Count == 0 ? 0 : Values.Max(v => ChartText.Value(v.Value).Length))) : 0;

    private double HorizontalSlotPx => Math.Max(Math.Max(12, LabelPx), GroupPx / (Series.Count + 1));

    /// <summary>Where bar <paramref name="v"/> stands on the horizontal axis.</summary>
    public double Position(BarValue v)
    {
        ArgumentNullException.ThrowIfNull(v);
        return (v.Group * (Series.Count + 1)) + v.Series;
    }

    public string Save(string directory)
    {
        string path = Path.Combine(directory, FileName);
        var plot = new Plot();
        var bars = new List<Bar>();
        foreach (var v in Values)
        {
            var style = Series[v.Series];
            var bar = new Bar { Position = Position(v), Value = Scale.Map(v.Value), ValueBase = Scale.Bottom, FillColor = style.Color };
            if (style.Hatch is { } hatch)
            {
                bar.FillHatch = hatch;
                bar.FillHatchColor = style.HatchColor;
            }

            bars.Add(bar);
        }

        plot.Add.Bars(bars);
        foreach (var v in Values)
        {
            if (v.Low is { } low && v.High is { } high)
            {
                double x = Position(v);
                foreach (var (x1, y1, x2, y2) in new[] { (x, low, x, high), (x - 0.2, low, x + 0.2, low), (x - 0.2, high, x + 0.2, high) })
                {
                    var line = plot.Add.Line(x1, Scale.Map(y1), x2, Scale.Map(y2));
                    line.LineWidth = 1.5f;
                    line.LineColor = Colors.Black;
                }
            }
        }

        if (ValueLabels)
        {
            foreach (var v in Values)
            {
                var text = plot.Add.Text(ChartText.Value(v.Value), Position(v), Scale.Map(Math.Max(v.Value, v.High ?? v.Value)));
                text.LabelFontSize = 11;
                text.LabelFontColor = Colors.Black;
                if (UprightLabels)
                {
                    text.LabelRotation = -90;
                    text.LabelAlignment = Alignment.MiddleLeft;
                    text.OffsetY = -4;
                }
                else
                {
                    text.LabelAlignment = Alignment.LowerCenter;
                    text.OffsetY = -3;
                }
            }
        }

        if (Reference is { } reference)
        {
            var line = plot.Add.HorizontalLine(Scale.Map(reference), 1.5f, Colors.DimGray, LinePattern.Dashed);
            line.ExcludeFromLegend = true;
        }

        var ticks = Groups.Select((g, i) => new Tick((i * (Series.Count + 1)) + ((Series.Count - 1) / 2.0), g));
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual([.. ticks]);
        plot.Axes.SetLimitsX(-1, Slots - 1);
        Scale.Apply(plot, plot.Axes.Left, ValueLabels ? Headroom : 0.05);
        foreach (var s in Series)
        {
            var item = new LegendItem { LabelText = s.Name, FillColor = s.Color };
            if (s.Hatch is { } hatch)
            {
                item.FillHatch = hatch;
                item.FillHatchColor = s.HatchColor;
            }

            plot.Legend.ManualItems.Add(item);
        }

        if (IntervalLegend is { } interval)
        {
            plot.Legend.ManualItems.Add(new LegendItem { LabelText = interval, LineColor = Colors.Black, LineWidth = 1.5f });
        }

        if (Reference is { } r)
        {
            plot.Legend.ManualItems.Add(new LegendItem { LabelText = $"{AxisScale.Label(r)}× (no change)", LineColor = Colors.DimGray, LineWidth = 1.5f, LinePattern = LinePattern.Dashed });
        }

        if (Caption is { } caption)
        {
            plot.Axes.Bottom.Label.Text = caption;
            plot.Axes.Bottom.Label.FontSize = CaptionFontPx;
            plot.Axes.Bottom.Label.Bold = false;
        }

        plot.ShowLegend(Edge.Right);
        plot.Title(Title);
        plot.YLabel(YLabel);
        plot.SavePng(path, Width, Height);
        return path;
    }

    /// <summary>The fraction of the plot's height left above the tallest bar for its label.</summary>
    private double Headroom => UprightLabels ? Math.Min(0.4, (LabelPx + 12) / PlotHeightPx) : 0.1;
}
