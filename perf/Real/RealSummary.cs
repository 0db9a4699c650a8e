using System.Globalization;
using Native.Perf.Paper;
using Native.SfBufNative;

namespace Native.Perf.Real;

/// <summary>
/// One cell of a <c>perf real</c> run (experiment × strategy × CPU count) over its repeated
/// trials: the median throughput with its interval, the paired speedup over <c>original</c>, and
/// the median of each count per unit.
/// </summary>
internal sealed record RealCell(string Experiment, string Strategy, int Cpus, IReadOnlyList<PaperRow> Trials, Estimate Throughput, Estimate? Speedup)
{
    /// <summary>"MB" or "op", as the rows are normalised.</summary>
    public string Unit => Trials[0].Unit;

    /// <summary>True when the experiment moves bulk data (throughput in MiB/s).</summary>
    public bool Bulk => Trials[0].Bytes > 0;

    /// <summary>The median over the trials of <paramref name="counter"/> per unit; null when any trial could not count it (-1).</summary>
    public double? PerUnit(string counter)
    {
        if (Trials.Any(t => t.Counters.TryGetValue(counter, out long v) && v < 0))
        {
            return null;
        }

        return RealStatistics.Median([.. Trials.Select(t => t[counter] / t.Units)]).Median;
    }
}

/// <summary>Summaries of repeated trials: cells, speedups, and the comparison with a simulated run.</summary>
internal static class RealSummary
{
    /// <summary>The trial's throughput: MiB/s for bulk experiments, operations/s otherwise.</summary>
    public static double Throughput(PaperRow row) => row.Bytes > 0 ? row.MbPerS : row.OpsPerS;

    /// <summary>The repetition a trial belongs to (trials of one repetition and cell ran back to back).</summary>
    public static long Repetition(PaperRow row) =>
        row.Params.TryGetValue("trial", out var v) ? Convert.ToInt64(v, CultureInfo.InvariantCulture) : 0;

    /// <summary>Groups trials into cells; speedups pair each trial with <c>original</c>'s trial of the same repetition.</summary>
    public static List<RealCell> Cells(IReadOnlyList<PaperRow> rows)
    {
        var cells = new List<RealCell>();
        foreach (var group in rows.GroupBy(r => (r.Experiment, r.Strategy, r.Cpus)))
        {
            var trials = group.OrderBy(Repetition).ToList();
            var throughput = RealStatistics.Median([.. trials.Select(Throughput)]);
            Estimate? speedup = null;
            if (group.Key.Strategy != SfBufMapper.Original)
            {
                var baseline = rows
                    .Where(r => r.Experiment == group.Key.Experiment && r.Cpus == group.Key.Cpus && r.Strategy == SfBufMapper.Original)
                    .ToDictionary(Repetition);
                var ratios = trials
                    .Where(t => baseline.TryGetValue(Repetition(t), out var b) && Throughput(b) > 0)
                    .Select(t => Throughput(t) / Throughput(baseline[Repetition(t)]))
                    .ToList();
                speedup = ratios.Count > 0 ? RealStatistics.Median(ratios) : null;
            }

            cells.Add(new RealCell(group.Key.Experiment, group.Key.Strategy, group.Key.Cpus, trials, throughput, speedup));
        }

        return cells;
    }

    /// <summary>
    /// The simulated speedups over <c>original</c> from a <c>perf paper</c> run (ratio of the cells'
    /// median throughputs), by (experiment, strategy, cpus).
    /// </summary>
    public static Dictionary<(string Experiment, string Strategy, int Cpus), double> SimulatedSpeedups(IReadOnlyList<PaperRow> simulated)
    {
        var medians = simulated
            .GroupBy(r => (r.Experiment, r.Strategy, r.Cpus))
            .ToDictionary(g => g.Key, g => RealStatistics.Median([.. g.Select(Throughput)]).Median);
        var result = new Dictionary<(string, string, int), double>();
        foreach (var ((experiment, strategy, cpus), median) in medians)
        {
            if (strategy != SfBufMapper.Original && medians.TryGetValue((experiment, SfBufMapper.Original, cpus), out double original) && original > 0)
            {
                result[(experiment, strategy, cpus)] = median / original;
            }
        }

        return result;
    }

    /// <summary>A simulated row's counter per unit, median over its trials.</summary>
    public static double SimulatedPerUnit(IReadOnlyList<PaperRow> simulated, string experiment, string strategy, int cpus, string counter)
    {
        var rows = simulated.Where(r => r.Experiment == experiment && r.Strategy == strategy && r.Cpus == cpus).ToList();
        return rows.Count == 0 ? double.NaN : RealStatistics.Median([.. rows.Select(r => r[counter] / r.Units)]).Median;
    }

    /// <summary>
    /// The invariants of a host run; returns the violations. Each PTE write the strategy made is one
    /// host <c>mmap</c> (no more, no less); the direct map changes no host mapping; sf_buf's private
    /// users never unmap; and nothing ever reads through a stale translation.
    /// </summary>
    public static List<string> Check(IReadOnlyList<PaperRow> rows)
    {
        var problems = new List<string>();
        foreach (var r in rows)
        {
            string where = $"{r.Experiment}/{r.Strategy}/{r.Cpus}cpu/trial {Repetition(r)}";
            if (r["host_maps"] != r["pte_writes"])
            {
                problems.Add($"{where}: {r["host_maps"]} host mmaps for {r["pte_writes"]} kernel PTE writes");
            }

            if (r["host_unmaps"] > r["pte_clears"])
            {
                problems.Add($"{where}: {r["host_unmaps"]} host unmaps for {r["pte_clears"]} kernel PTE clears");
            }

            if (r.Strategy == SfBufMapper.Amd64 && r["host_remaps"] != 0)
            {
                problems.Add($"{where}: the direct map made {r["host_remaps"]} host remaps");
            }

            if (r.Strategy == SfBufMapper.I386 && r.Experiment is "pipe" or "pipe-huge" or "md-seq" or "md-rand" or "ptrace-word" or "ptrace-page"
                && r["host_unmaps"] != 0)
            {
                problems.Add($"{where}: sf_buf private users unmapped {r["host_unmaps"]} times");
            }

            if (r["stale_accesses"] != 0)
            {
                problems.Add($"{where}: {r["stale_accesses"]} stale accesses");
            }
        }

        return problems;
    }
}
