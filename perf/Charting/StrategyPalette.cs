using Native.SfBufNative;
using ScottPlot;

namespace Native.Perf.Charting;

/// <summary>
/// How one strategy is drawn in every chart: a colour and a variant (the bar hatch, the line
/// pattern and the marker), fixed by the strategy's position in the registry
/// (<see cref="SfBufStrategyInfo.All"/>), so that a strategy keeps its look from chart to chart
/// whichever others a chart holds.
/// </summary>
/// <param name="Index">The position the style was chosen by.</param>
/// <param name="Color">The fill or line colour: one of <see cref="StrategyPalette.Colors"/>.</param>
/// <param name="Variant">0 for the first <see cref="StrategyPalette.Colors"/>.Length strategies, then 1, 2, ...: the colours again, drawn differently.</param>
internal sealed record StrategyStyle(int Index, Color Color, int Variant)
{
    private static readonly LinePattern[] s_patterns = [LinePattern.Solid, LinePattern.Dashed, LinePattern.Dotted, LinePattern.DenselyDashed];

    private static readonly MarkerShape[] s_markers =
    [
        MarkerShape.FilledCircle, MarkerShape.FilledSquare, MarkerShape.FilledTriangleUp, MarkerShape.FilledDiamond,
        MarkerShape.FilledTriangleDown, MarkerShape.OpenCircle, MarkerShape.OpenSquare, MarkerShape.OpenDiamond,
    ];

    /// <summary>The line pattern: solid for variant 0, then dashed, dotted, densely dashed, and again.</summary>
    public LinePattern LinePattern => s_patterns[Variant % s_patterns.Length];

    /// <summary>The marker: one shape per four variants, so that (pattern, marker) differs for the first 32 variants.</summary>
    public MarkerShape Marker => s_markers[(Variant / s_patterns.Length) % s_markers.Length];

    /// <summary>The bar hatch: none for variant 0, then stripes, dots, a checker board, and again.</summary>
    public IHatch? Hatch => (Variant % 4) switch
    {
        0 => null,
        1 => new ScottPlot.Hatches.Striped(),
        2 => new ScottPlot.Hatches.Dots(),
        _ => new ScottPlot.Hatches.Checker(),
    };

    /// <summary>The colour the hatch is drawn in over <see cref="Color"/>: white for the first four variants, black for the next four.</summary>
    public Color HatchColor => (Variant / 4) % 2 == 0 ? Colors.White : Colors.Black;

    /// <summary>What tells two styles apart in a line chart: colour, pattern and marker, different for each of the first 640 indices (20 colours x 32 variants).</summary>
    public (uint Color, LinePattern Pattern, MarkerShape Marker) LineKey => (Color.ARGB, LinePattern, Marker);

    /// <summary>What tells two styles apart in a bar chart: colour, hatch and hatch colour, different for each of the first 160 indices (20 colours x 8 variants).</summary>
    public (uint Color, int Hatch, uint HatchColor) BarKey => (Color.ARGB, Variant % 4, HatchColor.ARGB);
}

/// <summary>
/// The strategies' colours: a 20-colour categorical palette (d3's Category20, its ten strong
/// colours first, then their ten light companions, so that the first ten strategies are drawn in
/// the familiar Category10 colours), and past 20 strategies the same colours in another variant
/// (<see cref="StrategyStyle.Variant"/>: hatched bars, dashed or dotted lines, other markers).
/// </summary>
internal static class StrategyPalette
{
    /// <summary>The colours, in the order indices take them.</summary>
    public static IReadOnlyList<Color> Colors { get; } = Reordered();

    /// <summary>The style of the strategy at registry position <paramref name="index"/>.</summary>
    public static StrategyStyle At(int index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        return new StrategyStyle(index, Colors[index % Colors.Count], index / Colors.Count);
    }

    /// <summary>
    /// The style of every strategy in <paramref name="strategies"/>: a registered strategy by its
    /// registry position; one the registry does not know (rows of a run from another build) after
    /// every registered one, in ordinal name order, so that it too gets a style of its own.
    /// </summary>
    public static IReadOnlyDictionary<string, StrategyStyle> For(IEnumerable<string> strategies)
    {
        ArgumentNullException.ThrowIfNull(strategies);
        var registry = SfBufStrategyInfo.All.Select(i => i.Name).ToList();
        var result = new Dictionary<string, StrategyStyle>(StringComparer.Ordinal);
        var unknown = new List<string>();
        foreach (string name in strategies.Distinct(StringComparer.Ordinal))
        {
            int i = registry.IndexOf(name);
            if (i >= 0)
            {
                result[name] = At(i);
            }
            else
            {
                unknown.Add(name);
            }
        }

        unknown.Sort(StringComparer.Ordinal);
        for (int u = 0; u < unknown.Count; u++)
        {
            result[unknown[u]] = At(registry.Count + u);
        }

        return result;
    }

    /// <summary><paramref name="strategies"/> in the order charts list them: the registry's, then unknown names in ordinal order.</summary>
    public static List<string> Ordered(IEnumerable<string> strategies)
    {
        var styles = For(strategies);
        return [.. styles.OrderBy(p => p.Value.Index).Select(p => p.Key)];
    }

    private static Color[] Reordered()
    {
        var category20 = new ScottPlot.Palettes.Category20().Colors;
        return [.. category20.Where((_, i) => i % 2 == 0), .. category20.Where((_, i) => i % 2 == 1)];
    }
}
