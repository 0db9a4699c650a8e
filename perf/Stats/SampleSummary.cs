using Perfolizer.Mathematics.Common;
using Perfolizer.Mathematics.QuantileEstimators;
using Pragmastat;

namespace Native.Perf.Stats;

/// <summary>
/// Repeated measurements of one quantity, summarised: the median, a 95% confidence interval of
/// the median over those measurements, and the coefficient of variation. The statistics are Perfolizer's (the library
/// BenchmarkDotNet uses): the sample median (Hyndman-Fan type 7), and for the interval the
/// Harrell-Davis estimate of the median with its Maritz-Jarrett standard error and a Student t
/// quantile with n - 1 degrees of freedom (<see cref="CiMethod"/>), which suits the 3 to 10
/// samples a run has. Throughputs and speedups are positive and their noise multiplicative (a
/// descheduled thread makes a trial slower by a factor), so for positive samples the interval
/// is computed on their logarithms and transformed back: it stays positive and a ratio's
/// interval is symmetric in factors. The coefficient of variation is the sample standard
/// deviation over the mean. The measurements of a run are its rounds, so the interval is a
/// within-run one: it says how well this run's rounds pin the median down, not where another
/// run on the same host would land (<see cref="WithinRun"/>).
/// </summary>
public sealed record SampleSummary
{
    /// <summary>How the interval is computed, for output headers and documentation.</summary>
    public const string CiMethod = WithinRun.Interval + " of the median: Harrell-Davis estimate with Maritz-Jarrett standard error and Student t (n-1 df) on the log of the rounds' samples (Perfolizer); the host's between-run variation is not in it";

    /// <summary>Confidence level of the interval.</summary>
    public const double Level = 0.95;

    private SampleSummary(IReadOnlyList<double> samples, double median, double? low, double? high, double cv)
    {
        Samples = samples;
        Median = median;
        CiLow = low;
        CiHigh = high;
        Cv = cv;
    }

    /// <summary>The measurements, in the order they were taken.</summary>
    public IReadOnlyList<double> Samples { get; }

    /// <summary>Number of measurements.</summary>
    public int Count => Samples.Count;

    /// <summary>The sample median.</summary>
    public double Median { get; }

    /// <summary>Lower end of the (within-run) 95% confidence interval of the median; null with fewer than two samples.</summary>
    public double? CiLow { get; }

    /// <summary>Upper end of the (within-run) 95% confidence interval of the median; null with fewer than two samples.</summary>
    public double? CiHigh { get; }

    /// <summary>Coefficient of variation: sample standard deviation / mean (0 with fewer than two samples).</summary>
    public double Cv { get; }

    /// <summary>True when the interval exists and contains <paramref name="value"/>.</summary>
    public bool CiContains(double value) => CiLow is { } low && CiHigh is { } high && low <= value && value <= high;

    /// <summary>
    /// For a ratio: true when the interval exists and excludes 1.0. A speedup whose interval
    /// holds 1.0 shows no difference; one whose interval excludes it differs within this run,
    /// which is not yet a difference between runs (<see cref="WithinRun"/>).
    /// </summary>
    public bool ExcludesOne => CiLow is not null && !CiContains(1.0);

    /// <summary>Summarises <paramref name="samples"/> (at least one, all finite).</summary>
    public static SampleSummary Of(IReadOnlyList<double> samples)
    {
        ArgumentNullException.ThrowIfNull(samples);
        if (samples.Count == 0)
        {
            throw new ArgumentException("no samples to summarise", nameof(samples));
        }

        if (samples.Any(x => !double.IsFinite(x)))
        {
            throw new ArgumentException("samples must be finite", nameof(samples));
        }

        var copy = samples.ToArray();
        var sample = new Sample(copy);
        double median = SimpleQuantileEstimator.Instance.Quantile(sample, new Probability(0.5)).NominalValue;
        if (copy.Length < 2)
        {
            return new SampleSummary(copy, median, null, null, 0);
        }

        bool positive = copy.All(x => x > 0);
        var ci = HarrellDavisQuantileEstimator.Instance
            .QuantileConfidenceIntervalEstimator(positive ? new Sample([.. copy.Select(x => Math.Log(x))]) : sample, new Probability(0.5))
            .ConfidenceInterval(new ConfidenceLevel(Level));
        var moments = Moments.Create(copy);
        double cv = moments.Mean == 0 ? 0 : moments.StandardDeviation / Math.Abs(moments.Mean);
        return positive
            ? new SampleSummary(copy, median, Math.Exp(ci.Lower), Math.Exp(ci.Upper), cv)
            : new SampleSummary(copy, median, ci.Lower, ci.Upper, cv);
    }

    /// <summary>
    /// Summarises paired ratios <c>numerators[i] / denominators[i]</c>: the speedup of each
    /// round's trial over the same round's baseline trial, so that host drift between rounds
    /// cancels out of every ratio.
    /// </summary>
    public static SampleSummary OfRatios(IReadOnlyList<double> numerators, IReadOnlyList<double> denominators)
    {
        ArgumentNullException.ThrowIfNull(numerators);
        ArgumentNullException.ThrowIfNull(denominators);
        if (numerators.Count != denominators.Count)
        {
            throw new ArgumentException($"{numerators.Count} trials paired with {denominators.Count}", nameof(denominators));
        }

        if (denominators.Any(d => d <= 0))
        {
            throw new ArgumentException("a ratio's baseline must be positive", nameof(denominators));
        }

        return Of([.. numerators.Select((n, i) => n / denominators[i])]);
    }
}
