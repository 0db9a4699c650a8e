namespace Native.Perf.Real;

/// <summary>A median with a distribution-free confidence interval, and the confidence actually reached.</summary>
/// <param name="Median">The sample median.</param>
/// <param name="Low">Lower bound of the interval.</param>
/// <param name="High">Upper bound of the interval.</param>
/// <param name="N">Samples.</param>
/// <param name="Confidence">The interval's coverage: 0.95 when enough samples, less with few.</param>
internal readonly record struct Estimate(double Median, double Low, double High, int N, double Confidence)
{
    /// <summary>True when the interval leaves <paramref name="value"/> out (a speedup whose interval holds 1.0 is none).</summary>
    public bool Excludes(double value) => N > 0 && (value < Low || value > High);
}

/// <summary>
/// The statistics <c>perf real</c> reports: medians, and for each a confidence interval from
/// order statistics (the binomial interval for the median: no assumption about the
/// distribution, which on a shared host is anything but normal). Speedups are medians of
/// per-repetition ratios of trials run back to back.
/// </summary>
internal static class RealStatistics
{
    /// <summary>The median of <paramref name="values"/> with the widest-needed order-statistic interval reaching <paramref name="confidence"/>.</summary>
    public static Estimate Median(IReadOnlyList<double> values, double confidence = 0.95)
    {
        ArgumentNullException.ThrowIfNull(values);
        int n = values.Count;
        if (n == 0)
        {
            return new Estimate(double.NaN, double.NaN, double.NaN, 0, 0);
        }

        var sorted = values.Order().ToArray();
        double median = n % 2 == 1 ? sorted[n / 2] : (sorted[(n / 2) - 1] + sorted[n / 2]) / 2;

        // [x_(k), x_(n+1-k)] covers the median with probability 1 - 2 P(Binomial(n, 1/2) <= k - 1):
        // take the largest k (narrowest interval) that still reaches the confidence asked for.
        int best = 1;
        for (int k = 1; k <= (n + 1) / 2; k++)
        {
            if (Coverage(n, k) >= confidence)
            {
                best = k;
            }
        }

        return new Estimate(median, sorted[best - 1], sorted[n - best], n, Coverage(n, best));
    }

    /// <summary>Coverage of the order-statistic interval [x_(k), x_(n+1-k)] for the median.</summary>
    internal static double Coverage(int n, int k)
    {
        double tail = 0;
        double term = Math.Pow(0.5, n); // C(n, 0) / 2^n
        for (int i = 0; i < k; i++)
        {
            tail += term;
            term = term * (n - i) / (i + 1);
        }

        return Math.Max(0, 1 - (2 * tail));
    }
}
