using Native.Perf.Paper;

namespace Native.Perf.Scale;

/// <summary>
/// The throughput-versus-exposure trade-off at one CPU count: a strategy is on the frontier when
/// no other strategy has at least its throughput with at most its exposure and is better in one
/// of the two. Exposure is the checked trial's exposed CPU·µs per unit (docs/output.md, "Exposure").
/// </summary>
internal static class ExposureFrontier
{
    /// <summary>The CPU count the trade-off is shown at: 64 (today's server) when the rows reach it, else their largest.</summary>
    public const int PreferredCpus = 64;

    /// <summary>One strategy's point: its exposure and its throughput.</summary>
    public readonly record struct Point(string Strategy, double Exposure, double Throughput);

    /// <summary>
    /// The points of <paramref name="rows"/> (one experiment and load) at the CPU count chosen by
    /// <see cref="CpusFor"/>, for every strategy whose checked trial measured exposed time; empty when none did.
    /// </summary>
    public static (int Cpus, List<Point> Points) PointsOf(IReadOnlyList<PaperRow> rows)
    {
        ArgumentNullException.ThrowIfNull(rows);
        var measured = rows.Where(r => r.ExposedCpuUsPerUnit is not null).ToList();
        if (measured.Count == 0)
        {
            return (0, []);
        }

        int cpus = CpusFor(measured.Select(r => r.Cpus));
        return (cpus, [.. measured.Where(r => r.Cpus == cpus).Select(r => new Point(r.Strategy, r.ExposedCpuUsPerUnit!.Value, r.Throughput))]);
    }

    /// <summary><see cref="PreferredCpus"/> when present, else the largest count.</summary>
    public static int CpusFor(IEnumerable<int> cpus)
    {
        var list = cpus.ToList();
        return list.Contains(PreferredCpus) ? PreferredCpus : list.Max();
    }

    /// <summary>
    /// The strategies no other point dominates, in order of increasing exposure. A strategy that
    /// needs the direct map (<see cref="SfBufNative.SfBufStrategyInfo.NeedsDirectMap"/>) is the
    /// reference, not a candidate: it keeps every page mapped all the time, which is what a kernel
    /// without a direct map exists to avoid and what a stale-translation count cannot see.
    /// </summary>
    public static List<string> Of(IReadOnlyList<Point> points)
    {
        ArgumentNullException.ThrowIfNull(points);
        var candidates = points.Where(p => !IsReference(p.Strategy)).ToList();
        return [.. candidates
            .Where(p => !candidates.Any(q => Dominates(q, p)))
            .OrderBy(p => p.Exposure).ThenByDescending(p => p.Throughput)
            .Select(p => p.Strategy)];
    }

    /// <summary>True for a strategy that needs the direct map (unknown names are candidates).</summary>
    public static bool IsReference(string strategy) =>
        SfBufNative.SfBufStrategyInfo.All.FirstOrDefault(i => i.Name == strategy) is { NeedsDirectMap: true };

    private static bool Dominates(Point q, Point p) =>
        q.Throughput >= p.Throughput && q.Exposure <= p.Exposure && (q.Throughput > p.Throughput || q.Exposure < p.Exposure);
}
