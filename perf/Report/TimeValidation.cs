using System.Globalization;
using Native.Perf.Paper;
using Native.SfBufNative;

namespace Native.Perf.Report;

/// <summary>
/// Virtual time against real time: the same experiments, strategies and CPU counts timed by the
/// host's wall clock (<c>perf paper</c>) and by the machine's virtual clocks (<c>perf paper --time
/// virtual</c>), compared by their speedups over <c>original</c>. Real time gives the paired
/// speedup (<see cref="PaperReport.Speedups"/>: the median of the per-round ratios, with its CI);
/// virtual time, which runs one deterministic round, the ratio of the two throughputs. A cell
/// agrees when the two are within a factor of <see cref="Tolerance"/>. Per experiment (point) and
/// CPU count it also names the best strategy that needs no direct map
/// (<see cref="SfBufStrategyInfo.NeedsDirectMap"/> false, <c>original</c> included at 1.0) in each
/// mode.
/// </summary>
internal static class TimeValidation
{
    /// <summary>Two speedups agree when neither exceeds the other by more than this factor.</summary>
    public const double Tolerance = 1.5;

    /// <summary>The share of cells that must agree for the comparison to pass.</summary>
    public const double AgreeShare = 0.8;

    /// <summary>One experiment (point), CPU count and strategy in both files.</summary>
    /// <param name="Real">The paired speedup in real time.</param>
    /// <param name="Virtual">The speedup in virtual time: the strategy's throughput over <c>original</c>'s.</param>
    /// <param name="RealRow">The strategy's real-time row.</param>
    /// <param name="VirtualRow">The strategy's virtual-time row.</param>
    public sealed record Cell(PaperReport.Speedup Real, double Virtual, PaperRow RealRow, PaperRow VirtualRow)
    {
        /// <summary>The experiment.</summary>
        public string Experiment => Real.Experiment;

        /// <summary>The experiment point (lru's working set), empty otherwise.</summary>
        public string Point => Real.Point;

        /// <summary>The CPU count.</summary>
        public int Cpus => Real.Cpus;

        /// <summary>The strategy.</summary>
        public string Strategy => Real.Strategy;

        /// <summary>Virtual over real speedup.</summary>
        public double Factor => Virtual / Real.Ratio.Median;

        /// <summary>The two speedups are within a factor of <see cref="Tolerance"/>.</summary>
        public bool Agrees => Factor is >= 1 / Tolerance and <= Tolerance;
    }

    /// <summary>The best strategy without a direct map in each mode, for one experiment (point) and CPU count.</summary>
    /// <param name="Experiment">The experiment.</param>
    /// <param name="Point">The experiment point (lru's working set), empty otherwise.</param>
    /// <param name="Cpus">The CPU count.</param>
    /// <param name="RealBest">The strategies with the highest real-time speedup (more than one only on an exact tie).</param>
    /// <param name="RealSpeedup">Their real-time speedup.</param>
    /// <param name="VirtualBest">The strategies with the highest virtual-time speedup (more than one only on an exact tie).</param>
    /// <param name="VirtualSpeedup">Their virtual-time speedup.</param>
    public sealed record Best(string Experiment, string Point, int Cpus, IReadOnlyList<string> RealBest, double RealSpeedup, IReadOnlyList<string> VirtualBest, double VirtualSpeedup)
    {
        /// <summary>Both modes name the same best strategy (one of it, on a tie).</summary>
        public bool Same => RealBest.Intersect(VirtualBest, StringComparer.Ordinal).Any();
    }

    /// <summary>Every cell and every best of the two files.</summary>
    public sealed record Comparison(IReadOnlyList<Cell> Cells, IReadOnlyList<Best> Bests)
    {
        /// <summary>Cells whose speedups agree.</summary>
        public int Agreeing => Cells.Count(c => c.Agrees);

        /// <summary>The share of cells that agree (0 without cells).</summary>
        public double AgreeingShare => Cells.Count == 0 ? 0 : Agreeing / (double)Cells.Count;

        /// <summary>Experiments (points) and CPU counts whose best strategy is the same in both modes.</summary>
        public int SameBest => Bests.Count(b => b.Same);

        /// <summary>The bar: at least <see cref="AgreeShare"/> of the cells agree and every best is the same.</summary>
        public bool Passes => Cells.Count > 0 && AgreeingShare >= AgreeShare && SameBest == Bests.Count;
    }

    /// <summary>Compares <paramref name="real"/> (real-time rows) with <paramref name="virtualRows"/> (virtual-time rows of the same experiments).</summary>
    public static Comparison Compare(IReadOnlyList<PaperRow> real, IReadOnlyList<PaperRow> virtualRows)
    {
        if (real.FirstOrDefault(r => r.TimeMode != PaperRow.RealTime) is { } notReal)
        {
            throw new ArgumentException($"the real-time rows hold a row timed in {notReal.TimeMode} time ({notReal.Experiment}/{notReal.Strategy}/{notReal.Cpus})");
        }

        if (virtualRows.FirstOrDefault(r => r.TimeMode != PaperRow.VirtualTime) is { } notVirtual)
        {
            throw new ArgumentException($"the virtual-time rows hold a row timed in {notVirtual.TimeMode} time ({notVirtual.Experiment}/{notVirtual.Strategy}/{notVirtual.Cpus})");
        }

        // The paper's form of each experiment only (--load all adds others under the same names).
        real = [.. real.Where(r => r.Load == PaperRow.PaperLoad)];
        virtualRows = [.. virtualRows.Where(r => r.Load == PaperRow.PaperLoad)];
        var virtualByKey = virtualRows.ToDictionary(r => (r.Experiment, r.Point, r.Cpus, r.Strategy));
        var realByKey = real.ToDictionary(r => (r.Experiment, r.Point, r.Cpus, r.Strategy));
        var cells = new List<Cell>();
        foreach (var s in PaperReport.Speedups(real))
        {
            if (virtualByKey.TryGetValue((s.Experiment, s.Point, s.Cpus, s.Strategy), out var row)
                && virtualByKey.TryGetValue((s.Experiment, s.Point, s.Cpus, PaperReport.Baseline), out var baseline)
                && baseline.Throughput > 0)
            {
                cells.Add(new Cell(s, row.Throughput / baseline.Throughput, realByKey[(s.Experiment, s.Point, s.Cpus, s.Strategy)], row));
            }
        }

        var bests = new List<Best>();
        foreach (var group in cells.GroupBy(c => (c.Experiment, c.Point, c.Cpus)))
        {
            var candidates = group.Where(c => !SfBufMapper.Describe(c.Strategy).NeedsDirectMap).ToList();
            List<(string Strategy, double Value)> realValues = [(PaperReport.Baseline, 1.0), .. candidates.Select(c => (c.Strategy, c.Real.Ratio.Median))];
            List<(string Strategy, double Value)> virtualValues = [(PaperReport.Baseline, 1.0), .. candidates.Select(c => (c.Strategy, c.Virtual))];
            double realMax = realValues.Max(v => v.Value);
            double virtualMax = virtualValues.Max(v => v.Value);
            bests.Add(new Best(group.Key.Experiment, group.Key.Point, group.Key.Cpus,
                [.. realValues.Where(v => v.Value == realMax).Select(v => v.Strategy)], realMax,
                [.. virtualValues.Where(v => v.Value == virtualMax).Select(v => v.Strategy)], virtualMax));
        }

        return new Comparison(cells, bests);
    }

    /// <summary>
    /// One line that states the result: how many cells agree (<c>N of M cells agree within 1.5x
    /// (P%)</c>), in how many experiments and CPU counts the best strategy is the same and where it
    /// differs, and whether that meets the bar.
    /// </summary>
    public static string Summary(Comparison comparison)
    {
        var differ = comparison.Bests.Where(b => !b.Same).Select(b => $"`{Name(b.Experiment, b.Point)}` at {b.Cpus} CPU{(b.Cpus == 1 ? string.Empty : "s")}").ToList();
        var invariant = CultureInfo.InvariantCulture;
        return string.Create(invariant, $"{comparison.Agreeing} of {comparison.Cells.Count} cells agree within {Tolerance:0.0}x ({100 * comparison.AgreeingShare:0.0}%); ")
            + string.Create(invariant, $"the best strategy without a direct map is the same in {comparison.SameBest} of {comparison.Bests.Count} experiments and CPU counts")
            + (differ.Count == 0 ? "; " : $" and differs in {string.Join(", ", differ)}; ")
            + string.Create(invariant, $"the bar (at least {100 * AgreeShare:0}% of cells agree, the same best everywhere): {(comparison.Passes ? "met" : "not met")}.");
    }

    /// <summary>An experiment and its point as the tables name them: <c>lru 0.25</c>, or the experiment alone.</summary>
    public static string Name(string experiment, string point) => point.Length == 0 ? experiment : $"{experiment} {point}";
}
