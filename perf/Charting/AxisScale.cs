using System.Globalization;
using ScottPlot;

namespace Native.Perf.Charting;

/// <summary>
/// A value axis, linear or logarithmic, chosen from the values it shows: logarithmic when the
/// positive values span more than <see cref="LogSpan"/> (one decade), so that a 0.25 beside a
/// 3.56, or 10.6 µs beside 35.8 µs under a 200 µs line, stay readable. ScottPlot 5 has no log
/// axis: values are plotted as their base-10 logarithms (<see cref="Map"/>) and the ticks, made
/// here, are labelled in the original units. Zeros cannot be drawn on a log axis: they are drawn
/// at its floor, one decade below the smallest positive value, whose tick reads "0" (a bar of 0
/// has no height; a line's point of 0 sits on the floor).
/// </summary>
internal sealed class AxisScale
{
    /// <summary>Largest over smallest positive value beyond which the axis is logarithmic.</summary>
    public const double LogSpan = 10;

    private AxisScale(bool log, double bottom, double top, bool hasZero)
    {
        IsLog = log;
        Bottom = bottom;
        Top = top;
        HasZero = hasZero;
    }

    /// <summary>True for a logarithmic axis.</summary>
    public bool IsLog { get; }

    /// <summary>True when some value is 0 (on a log axis, drawn at the floor).</summary>
    public bool HasZero { get; }

    /// <summary>The lower end of the axis, in plotted (mapped) coordinates: 0 on a linear axis, a whole decade on a log axis.</summary>
    public double Bottom { get; }

    /// <summary>The largest value shown, in plotted coordinates.</summary>
    public double Top { get; }

    /// <summary>What the axis label adds: "log scale" on a log axis.</summary>
    public string Note => IsLog ? HasZero ? "log scale; 0 at the bottom" : "log scale" : string.Empty;

    /// <summary>
    /// Chooses the axis for <paramref name="values"/> (every value drawn, interval ends included;
    /// NaN and infinities ignored; negative values force a linear axis).
    /// </summary>
    public static AxisScale For(IEnumerable<double> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        var finite = values.Where(double.IsFinite).ToList();
        var positive = finite.Where(v => v > 0).ToList();
        bool hasZero = finite.Any(v => v == 0);
        if (positive.Count == 0 || finite.Any(v => v < 0) || positive.Max() / positive.Min() <= LogSpan)
        {
            double min = Math.Min(0, finite.Count == 0 ? 0 : finite.Min());
            double max = finite.Count == 0 ? 1 : Math.Max(finite.Max(), 0);
            return new AxisScale(false, min, max > min ? max : min + 1, hasZero);
        }

        double lowDecade = Math.Floor(Math.Log10(positive.Min()));
        return new AxisScale(true, hasZero ? lowDecade - 1 : lowDecade, Math.Log10(positive.Max()), hasZero);
    }

    /// <summary>A value in plotted coordinates: itself, or its logarithm (the floor for 0).</summary>
    public double Map(double value) => !IsLog ? value : value > 0 ? Math.Log10(value) : Bottom;

    /// <summary>
    /// Puts the scale on <paramref name="axis"/>: its ticks and limits, with <paramref name="headroom"/>
    /// (a fraction of the height) left free above the largest value for labels drawn over it.
    /// </summary>
    public void Apply(Plot plot, IYAxis axis, double headroom)
    {
        ArgumentNullException.ThrowIfNull(plot);
        ArgumentNullException.ThrowIfNull(axis);
        double top = Top + ((Top - Bottom) * headroom / (1 - headroom));
        if (IsLog)
        {
            top = Math.Max(top, Top + 0.15);
            axis.TickGenerator = new ScottPlot.TickGenerators.NumericManual([.. LogTicks(Bottom, top)]);
            plot.Axes.SetLimitsY(Bottom, top, axis);
        }
        else
        {
            plot.Axes.SetLimitsY(Bottom, top, axis);
        }
    }

    /// <summary>The log axis' ticks between <paramref name="bottom"/> and <paramref name="top"/> (decades): labelled decades, 2 and 5 labelled too over fewer than three decades, minor ticks at the other multiples.</summary>
    public IEnumerable<Tick> LogTicks(double bottom, double top)
    {
        bool fine = top - bottom < 3;
        for (int decade = (int)Math.Floor(bottom); decade <= (int)Math.Ceiling(top); decade++)
        {
            for (int k = 1; k <= 9; k++)
            {
                double position = decade + Math.Log10(k);
                if (position < bottom - 1e-9 || position > top + 1e-9)
                {
                    continue;
                }

                if (HasZero && decade == (int)Math.Floor(bottom) && k == 1)
                {
                    yield return Tick.Major(position, "0");
                }
                else if (HasZero && decade == (int)Math.Floor(bottom))
                {
                    // The floor's decade holds only the zeros: no scale there.
                    continue;
                }
                else if (k == 1 || (fine && k is 2 or 5))
                {
                    yield return Tick.Major(position, Label(k * Math.Pow(10, decade)));
                }
                else
                {
                    yield return Tick.Minor(position);
                }
            }
        }
    }

    /// <summary>A tick label in the original units: thousands separated, small values without trailing zeros.</summary>
    public static string Label(double value) => value switch
    {
        >= 1000 => value.ToString("N0", CultureInfo.InvariantCulture),
        >= 1 => value.ToString("0.##", CultureInfo.InvariantCulture),
        _ => value.ToString("0.########", CultureInfo.InvariantCulture),
    };
}
