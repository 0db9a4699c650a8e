using ScottPlot;

namespace Native.Perf.Charting;

/// <summary>How one series (a strategy, or "simulated" / "measured") is drawn.</summary>
/// <param name="Name">The legend text.</param>
/// <param name="Color">Fill or line colour.</param>
/// <param name="Hatch">The bar hatch, if any.</param>
/// <param name="HatchColor">The hatch's colour.</param>
/// <param name="Pattern">The line pattern.</param>
/// <param name="Marker">The line's marker.</param>
internal sealed record ChartSeries(string Name, Color Color, IHatch? Hatch, Color HatchColor, LinePattern Pattern, MarkerShape Marker)
{
    /// <summary>A strategy's series, in its registry style.</summary>
    public static ChartSeries Of(string name, StrategyStyle style)
    {
        ArgumentNullException.ThrowIfNull(style);
        return new(name, style.Color, style.Hatch, style.HatchColor, style.LinePattern, style.Marker);
    }

    /// <summary>A plain series in <paramref name="color"/>.</summary>
    public static ChartSeries Plain(string name, Color color) => new(name, color, null, Colors.White, LinePattern.Solid, MarkerShape.FilledCircle);
}

/// <summary>
/// A chart, described before it is drawn: its file name, words and axis scale can be checked
/// without rendering, and <see cref="Save"/> draws it.
/// </summary>
internal interface IChart
{
    /// <summary>The PNG's file name (deterministic: from the experiment, CPU count, ...).</summary>
    string FileName { get; }

    /// <summary>The title: what is shown, over a line giving the CPU count, cost profile and time mode.</summary>
    string Title { get; }

    /// <summary>The horizontal axis' label (may be empty for labelled groups).</summary>
    string XLabel { get; }

    /// <summary>The value axis' label, with its unit and, on a log axis, "log scale".</summary>
    string YLabel { get; }

    /// <summary>The value axis' scale, chosen from the data.</summary>
    AxisScale Scale { get; }

    /// <summary>The series, in legend order.</summary>
    IReadOnlyList<ChartSeries> Series { get; }

    /// <summary>The y of a horizontal reference line (1× on ratio charts), in the data's units; null for none.</summary>
    double? Reference { get; }

    /// <summary>Draws the chart into <paramref name="directory"/>/<see cref="FileName"/>; returns the path.</summary>
    string Save(string directory);
}

/// <summary>The label of the value axis: the quantity, then the scale's note ("log scale") in parentheses.</summary>
internal static class AxisLabel
{
    public static string With(string label, AxisScale scale)
    {
        ArgumentNullException.ThrowIfNull(scale);
        return scale.IsLog ? $"{label} ({scale.Note})" : label;
    }
}
