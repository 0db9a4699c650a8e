using System.Globalization;
using System.Text;
using Native.PageTable;
using Native.Perf.Charting;
using Native.Perf.Paper;
using Native.Perf.Real;
using Native.Perf.Stats;
using Native.SfBufNative;

namespace Native.Perf.Report;

/// <summary>
/// The generated blocks of the README and the docs pages (<c>&lt;!--gen NAME ARGS--&gt;</c>), each
/// rendered from committed results or from the code's own tables, never typed:
/// <list type="bullet">
/// <item><c>run FILE</c>: what the run was (rows, CPUs, checked trials, stale accesses, round trip, noisy rows);</item>
/// <item><c>headline FILE CPUS</c>: per experiment, the paired speedups of the paper's strategies, <c>epoch-cache</c> and the best peer;</item>
/// <item><c>throughput FILE CPUS</c>: the median throughput, its within-run 95% CI and IPIs per unit of every strategy;</item>
/// <item><c>speedups FILE</c>: every paired speedup over <c>original</c>;</item>
/// <item><c>between-runs FILE FILE...</c>: runs of the same tree, each run's within-run interval against the median of the other runs' medians;</item>
/// <item><c>per-unit FILE CPUS COUNTER FORMAT</c>, <c>modelled FILE CPUS</c>: one count, or the modelled cost, per unit;</item>
/// <item><c>lru FILE STRATEGY...</c>: the hit rate at each working-set size;</item>
/// <item><c>real-vs-simulated MEASURED SIMULATED</c>: <c>perf real</c>'s comparison;</item>
/// <item><c>validation REAL VIRTUAL</c>: real-time against virtual-time speedups, cell by cell, and the best strategy without a direct map in each (<see cref="TimeValidation"/>);</item>
/// <item><c>identical FILE FILE</c>: two virtual-time runs of one command, row by row, apart from the host's fields;</item>
/// <item><c>excerpt FILE FROM-TO...</c>: lines of a committed terminal output, clipped to 110 columns, in a code block;</item>
/// <item><c>trace-summary FILE</c>: the event counts of a committed <c>perf trace-summary --json</c>;</item>
/// <item><c>strategies</c>, <c>cost-profiles</c>: the registry and the built-in cost profiles.</item>
/// </list>
/// Every table with an interval names it <see cref="WithinRun.Interval"/> and has
/// <see cref="WithinRun.Legend"/> under it.
/// </summary>
internal static class DocTables
{
    /// <summary>The block's lines (each ending in a newline).</summary>
    public static string Render(string args, DocResults results)
    {
        var a = args.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return a switch
        {
            ["run", var file] => Run(results.Rows(file)),
            ["headline", var file, var cpus] => Headline(results.Rows(file), Cpus(cpus)),
            ["throughput", var file, var cpus] => Throughput(results.Rows(file), Cpus(cpus)),
            ["speedups", var file] => Speedups(results.Rows(file)),
            ["between-runs", .. var files] when files.Length >= 2 => BetweenRuns(files, results),
            ["per-unit", var file, var cpus, var counter, var format] => PerUnit(results.Rows(file), Cpus(cpus), r => r[counter] / r.Units, format, $"`{counter}` per MiB (per operation for exec and ptrace-word)"),
            ["modelled", var file, var cpus] => PerUnit(results.Rows(file), Cpus(cpus), r => r.ModelledNs / 1000, "0.0#", "modelled mapping cost, µs per MiB (per operation for exec and ptrace-word)"),
            ["lru", var file, .. var strategies] when strategies.Length > 0 => Lru(results.Rows(file), strategies),
            ["real-vs-simulated", var measured, var simulated] => RealVsSimulated(results.Rows(measured), results.Rows(simulated)),
            ["validation", var real, var virtualFile] => Validation(real, results.Rows(real), virtualFile, results.Rows(virtualFile)),
            ["excerpt", var file, .. var ranges] when ranges.Length > 0 => Excerpt(results.Root, file, ranges),
            ["trace-summary", var file] => Commands.TraceSummary.FromJson(Path.Combine(results.Root, "docs", "results", file)).ToMarkdown(),
            ["scale", var file, var experiment] => Scale(results.Rows(file), experiment),
            ["identical", var first, var second] => Identical(results, first, second),
            ["trade-off", var file, var experiment, var cpus] => TradeOff(results.Rows(file), experiment, Cpus(cpus)),
            ["over-reference", var file, var experiment, var reference, .. var strategies] when strategies.Length > 0 => OverReference(results.Rows(file), experiment, reference, strategies),
            ["strategies"] => Strategies(),
            ["cost-profiles"] => CostProfilesTable(),
            _ => throw new ArgumentException($"unknown generated block '{args}'"),
        };
    }

    /// <summary>How the run's figures were timed (named as the charts name it) and on what.</summary>
    public static string TimeMode(IReadOnlyList<PaperRow> rows) =>
        $"{ChartText.TimeMode(rows)} on {(rows.Any(r => r.Backend == PaperRow.HostBackend) ? "the host MMU" : "the simulated machine")}";

    private static int Cpus(string text) =>
        int.TryParse(text, CultureInfo.InvariantCulture, out int cpus) && cpus > 0 ? cpus : throw new ArgumentException($"'{text}' is not a CPU count");

    private static string Run(IReadOnlyList<PaperRow> rows)
    {
        var first = rows[0];
        var cpus = rows.Select(r => r.Cpus).Distinct().Order().ToList();
        var trips = rows.Select(r => JsonValues.Number(r.Params.GetValueOrDefault("round_trip_ns"))).OfType<double>().Order().ToList();
        long stale = rows.Sum(r => r["stale_accesses"] + r["latent_stale_accesses"]);
        int noisy = rows.Count(r => r.Samples.Count >= 2 && r.Cv > 0.10);
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture,
            $"- {rows.Count} rows: {rows.Select(r => r.Strategy).Distinct().Count()} strategies, {rows.Select(r => r.Experiment).Distinct().Count()} experiments, at {string.Join(" and ", cpus)} CPUs; {TimeMode(rows)}, cost profile `{first.CostProfile}`, {first.Samples.Count} timed trials per row.");
        text.AppendLine(CultureInfo.InvariantCulture,
            $"- {rows.Sum(r => r.CheckedTrials)} checked trials, with {stale} stale or latent-stale accesses.");
        if (trips.Count > 0)
        {
            text.AppendLine(CultureInfo.InvariantCulture,
                $"- The host's cross-core round trip before the timed trials: {DocQueries.Percentile(trips, 0.1):0} to {DocQueries.Percentile(trips, 0.9):0} ns (10th to 90th percentile, median {DocQueries.Percentile(trips, 0.5):0} ns).");
        }

        text.AppendLine(CultureInfo.InvariantCulture,
            $"- {noisy} of {rows.Count(r => r.Samples.Count >= 2)} rows vary by more than 10 % between rounds (CV): their medians are uncertain; the paired speedups are the firmer comparison.");
        return text.ToString();
    }

    private static string Headline(IReadOnlyList<PaperRow> rows, int cpus)
    {
        var speedups = PaperReport.Speedups(rows).Where(s => s.Cpus == cpus && s.Point.Length == 0).ToList();
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"*Paired speedup over `original` at {cpus} CPUs, median [{WithinRun.Interval}] of the per-round ratios; the best peer is the one with the highest median, whose interval may overlap others'. {Capital(TimeMode(rows))}, cost profile `{rows[0].CostProfile}`.*");
        text.AppendLine();
        text.AppendLine("| experiment | `original` IPIs per unit | `sfbuf-i386` | `sfbuf-amd64` (direct map) | `epoch-cache` | best peer |");
        text.AppendLine("|---|---:|---:|---:|---:|---|");
        foreach (var experiment in speedups.Select(s => s.Experiment).Distinct())
        {
            var of = speedups.Where(s => s.Experiment == experiment).ToList();
            string Cell(string strategy) => of.FirstOrDefault(s => s.Strategy == strategy) is { } s ? Speedup(s, " ") : "-";
            var best = of.Where(s => SfBufStrategyInfo.All.Any(i => i.Name == s.Strategy && i.IsPeer)).MaxBy(s => s.Ratio.Median);
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| `{experiment}` | {PaperReport.Number(of[0].BaselineIpis)} | {Cell(SfBufMapper.I386)} | {Cell(SfBufMapper.Amd64)} | {Cell(SfBufMapper.EpochCache)} | {(best is null ? "-" : $"`{best.Strategy}` {Speedup(best, " ")}")} |");
        }

        return text.Append(Legend(speedups: true)).ToString();
    }

    private static string Throughput(IReadOnlyList<PaperRow> rows, int cpus)
    {
        var at = rows.Where(r => r.Cpus == cpus && r.Point.Length == 0).ToList();
        var strategies = Ordered(at.Select(r => r.Strategy));
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"*{cpus} CPU{(cpus == 1 ? string.Empty : "s")}: median throughput, its {WithinRun.Interval}, and IPIs sent per unit in the median trial. {Capital(TimeMode(at))}, cost profile `{at[0].CostProfile}`.*");
        text.AppendLine();
        text.AppendLine("| experiment | unit | " + string.Join(" | ", strategies.Select(s => $"`{s}`")) + " |");
        text.AppendLine("|---|---|" + string.Concat(strategies.Select(_ => "---:|")));
        foreach (var experiment in at.Select(r => r.Experiment).Distinct())
        {
            var of = at.Where(r => r.Experiment == experiment).ToList();
            string unit = of[0].Bytes > 0 ? $"MiB/s<br>{WithinRun.Interval}<br>IPIs/MiB" : $"ops/s<br>{WithinRun.Interval}<br>IPIs/op";
            var cells = strategies.Select(s => of.FirstOrDefault(r => r.Strategy == s) is { } r
                ? $"{PaperReport.Number(r.Throughput)}<br>{(r.CiLow is { } lo && r.CiHigh is { } hi ? $"[{PaperReport.Number(lo)}, {PaperReport.Number(hi)}]" : "-")}<br>{PaperReport.Number(r["ipis_sent"] / r.Units)}"
                : "-");
            text.AppendLine(CultureInfo.InvariantCulture, $"| `{experiment}` | {unit} | {string.Join(" | ", cells)} |");
        }

        return text.Append(Legend(speedups: false)).ToString();
    }

    /// <summary><c>perf scale</c>'s rows of one experiment: per strategy and CPU count, throughput, IPIs and modelled cost per unit.</summary>
    private static string Scale(IReadOnlyList<PaperRow> rows, string experiment)
    {
        var of = rows.Where(r => r.Experiment == experiment && r.Point.Length == 0).ToList();
        if (of.Count == 0)
        {
            throw new ArgumentException($"no rows of '{experiment}'");
        }

        var cpus = of.Select(r => r.Cpus).Distinct().Order().ToList();
        var first = of[0];
        string unit = first.Bytes > 0 ? "MiB" : first.Params.GetValueOrDefault("ops_are") as string is { Length: > 0 } ops ? ops.TrimEnd('s') : "op";
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture,
            $"*`{experiment}`: {(first.Bytes > 0 ? "MiB/s" : $"{unit}s per second")}, then IPIs sent and modelled mapping cost (µs) per {unit}, against the simulated CPU count. "
            + $"{Capital(TimeMode(of))}, cost profile `{first.CostProfile}`, quantum {first.QuantumNs} ns: one deterministic trial per cell, no interval.*");
        text.AppendLine();
        text.AppendLine("| strategy | " + string.Join(" | ", cpus) + " |");
        text.AppendLine("|---|" + string.Concat(cpus.Select(_ => "---:|")));
        foreach (var strategy in Ordered(of.Select(r => r.Strategy)))
        {
            var cells = cpus.Select(c => of.FirstOrDefault(r => r.Strategy == strategy && r.Cpus == c) is { } r
                ? $"{PaperReport.Number(r.Throughput)}<br>{PaperReport.Number(r["ipis_sent"] / r.Units)}<br>{PaperReport.Number(r.ModelledNs / 1000)}"
                : "-");
            text.AppendLine(CultureInfo.InvariantCulture, $"| `{strategy}` | {string.Join(" | ", cells)} |");
        }

        return text.ToString();
    }

    /// <summary>
    /// One experiment at one CPU count, every strategy: throughput, IPIs, and the exposure its
    /// checked trial measured, with the throughput-versus-exposure frontier marked.
    /// </summary>
    private static string TradeOff(IReadOnlyList<PaperRow> rows, string experiment, int cpus)
    {
        var at = rows.Where(r => r.Experiment == experiment && r.Cpus == cpus && r.Point.Length == 0).ToList();
        if (at.Count == 0)
        {
            throw new ArgumentException($"no rows of '{experiment}' at {cpus} CPUs");
        }

        var first = at[0];
        var frontier = Native.Perf.Scale.ExposureFrontier.Of([.. at.Where(r => r.ExposedCpuUsPerUnit is not null)
            .Select(r => new Native.Perf.Scale.ExposureFrontier.Point(r.Strategy, r.ExposedCpuUsPerUnit!.Value, r.Throughput))]);
        bool broadcast = first.Shootdown == PaperRow.BroadcastShootdown;
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture,
            $"*`{experiment}` at {cpus} CPUs, shootdowns by {first.Shootdown}: throughput, IPIs{(broadcast ? " and broadcast invalidation instructions" : string.Empty)} per {first.Unit}, "
            + $"then the checked trial's exposure: windows, exposed CPU·µs per {first.Unit} and the longest window (µs); ✓ marks the throughput-versus-exposure frontier. "
            + $"{Capital(TimeMode(at))}, cost profile `{first.CostProfile}`.*");
        text.AppendLine();
        text.AppendLine($"| strategy | {(first.Bytes > 0 ? "MiB/s" : "ops/s")} | IPIs |{(broadcast ? " broadcasts |" : string.Empty)} windows | CPU·µs | longest µs | frontier |");
        text.AppendLine($"|---|---:|---:|{(broadcast ? "---:|" : string.Empty)}---:|---:|---:|:---:|");
        foreach (var strategy in Ordered(at.Select(r => r.Strategy)))
        {
            var r = at.First(x => x.Strategy == strategy);
            string Optional(double? v) => v is { } x ? PaperReport.Number(x) : "-";
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| `{strategy}` | {PaperReport.Number(r.Throughput)} | {PaperReport.Number(r["ipis_sent"] / r.Units)} |{(broadcast ? $" {PaperReport.Number(r["broadcast_invalidations"] / r.Units)} |" : string.Empty)}"
                + $" {Optional(r.ExposuresPerUnit)} | {Optional(r.ExposedCpuUsPerUnit)} | {Optional(r.LongestExposureUs)} | {(frontier.Contains(strategy) ? "✓" : string.Empty)} |");
        }

        return text.ToString();
    }

    /// <summary>Each strategy's time per unit over a reference strategy's (its throughput over theirs), against the CPU count.</summary>
    private static string OverReference(IReadOnlyList<PaperRow> rows, string experiment, string reference, string[] strategies)
    {
        var of = rows.Where(r => r.Experiment == experiment && r.Point.Length == 0).ToList();
        var cpus = of.Where(r => r.Strategy == reference).Select(r => r.Cpus).Distinct().Order().ToList();
        if (cpus.Count == 0)
        {
            throw new ArgumentException($"no rows of '{reference}' in '{experiment}'");
        }

        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture,
            $"*`{experiment}`: time per {of[0].Unit} over `{reference}`'s (its throughput over the strategy's), against the simulated CPU count. {Capital(TimeMode(of))}, cost profile `{of[0].CostProfile}`, shootdowns by {of[0].Shootdown}.*");
        text.AppendLine();
        text.AppendLine("| strategy | " + string.Join(" | ", cpus) + " |");
        text.AppendLine("|---|" + string.Concat(cpus.Select(_ => "---:|")));
        foreach (string strategy in strategies)
        {
            var cells = cpus.Select(c => of.FirstOrDefault(r => r.Strategy == strategy && r.Cpus == c) is { } r
                && of.First(x => x.Strategy == reference && x.Cpus == c) is { } baseline
                ? (baseline.Throughput / r.Throughput).ToString("0.00", CultureInfo.InvariantCulture) + "×" : "-");
            text.AppendLine(CultureInfo.InvariantCulture, $"| `{strategy}` | {string.Join(" | ", cells)} |");
        }

        return text.ToString();
    }

    private static string Speedups(IReadOnlyList<PaperRow> rows)
    {
        var speedups = PaperReport.Speedups(rows).Where(s => s.Point.Length == 0).ToList();
        var strategies = Ordered(speedups.Select(s => s.Strategy));
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"*Paired speedup over `original`: median [{WithinRun.Interval}] of the per-round ratios. {Capital(TimeMode(rows))}, cost profile `{rows[0].CostProfile}`.*");
        text.AppendLine();
        text.AppendLine("| experiment | CPUs | `original` IPIs | " + string.Join(" | ", strategies.Select(s => $"`{s}`")) + " |");
        text.AppendLine("|---|---:|---:|" + string.Concat(strategies.Select(_ => "---:|")));
        foreach (var group in speedups.GroupBy(s => (s.Experiment, s.Cpus)))
        {
            var cells = strategies.Select(s => group.FirstOrDefault(x => x.Strategy == s) is { } x ? Speedup(x, "<br>") : "-");
            text.AppendLine(CultureInfo.InvariantCulture, $"| `{group.Key.Experiment}` | {group.Key.Cpus} | {PaperReport.Number(group.First().BaselineIpis)} | {string.Join(" | ", cells)} |");
        }

        return text.Append(Legend(speedups: true)).ToString();
    }

    /// <summary>
    /// Runs of the same tree against each other, what the within-run intervals leave out, measured:
    /// for every cell all the runs have, whether each run's within-run interval holds the median of
    /// the other runs' medians (throughput, and paired speedup over <c>original</c>), how many cells
    /// held it in at least 80 % of the runs, and how far a run's median lies from the others'; and the
    /// host's round trip in each run.
    /// </summary>
    /// <summary>
    /// Two virtual-time runs of one command: which rows are identical field by field apart from
    /// the host's own (<see cref="HostFields"/>), and, where any differ, which fields.
    /// </summary>
    private static string Identical(DocResults results, string first, string second)
    {
        var a = results.RawRows(first);
        var b = results.RawRows(second);
        if (results.Rows(first).Concat(results.Rows(second)).Any(r => r.TimeMode != PaperRow.VirtualTime))
        {
            throw new InvalidDataException($"{first} and {second}: identical rows are asked only of virtual-time runs");
        }

        var differing = new SortedSet<string>(StringComparer.Ordinal);
        int same = 0;
        for (int i = 0; i < Math.Min(a.Count, b.Count); i++)
        {
            var fields = DifferingFields(a[i], b[i]);
            differing.UnionWith(fields);
            same += fields.Count == 0 ? 1 : 0;
        }

        var rows = results.Rows(first);
        string verdict = same == a.Count && a.Count == b.Count
            ? "every row identical"
            : $"{same} of {Math.Max(a.Count, b.Count)} rows identical; differing: {(differing.Count == 0 ? "the row count" : string.Join(", ", differing.Select(f => $"`{f}`")))}";
        return $"*`{first}` and `{second}`: {a.Count} and {b.Count} rows ({rows.Select(r => r.Strategy).Distinct().Count()} strategies, {rows.Select(r => r.Experiment).Distinct().Count()} experiments, at {string.Join(", ", rows.Select(r => r.Cpus).Distinct().Order())} CPUs), compared field by field apart from {string.Join(" and ", HostFields.Select(f => $"`{f}`"))}: {verdict}.*\n";
    }

    /// <summary>The fields of a virtual-time row that describe the host rather than the run: its wall clock, and whether it had fewer cores than CPUs.</summary>
    internal static readonly string[] HostFields = ["host_seconds", "oversubscribed"];

    private static List<string> DifferingFields(System.Text.Json.Nodes.JsonObject a, System.Text.Json.Nodes.JsonObject b)
    {
        var names = a.Select(p => p.Key).Union(b.Select(p => p.Key)).Where(k => !HostFields.Contains(k));
        return [.. names.Where(k => !System.Text.Json.Nodes.JsonNode.DeepEquals(a[k], b[k]))];
    }

    private static string BetweenRuns(IReadOnlyList<string> files, DocResults results)
    {
        static (string, string, string, int) RowKey(PaperRow r) => (r.Experiment, r.Point, r.Strategy, r.Cpus);
        static (string, string, string, int) SpeedupKey(PaperReport.Speedup s) => (s.Experiment, s.Point, s.Strategy, s.Cpus);
        var runs = files.Select(results.Rows).ToList();
        var rows = Cells(runs.Select(run => run.Where(r => r.CiLow is not null).ToDictionary(RowKey, Estimate.Of)).ToList());
        var speedups = Cells(runs.Select(run => PaperReport.Speedups(run).Where(s => s.Ratio.CiLow is not null).ToDictionary(SpeedupKey, s => Estimate.Of(s.Ratio))).ToList());
        if (rows.Count == 0)
        {
            throw new InvalidDataException($"{string.Join(", ", files)} have no cell with an interval in common");
        }

        var names = files.Select((_, i) => ((char)('A' + i)).ToString()).ToList();
        string Both(Func<List<Estimate[]>, string> of) => $"{of(rows)} | {(speedups.Count == 0 ? "-" : of(speedups))}";
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture,
            $"*{runs.Count} runs of the same tree, {string.Join(", ", files.Select((f, i) => $"`{f}` ({names[i]})"))}: in every cell, each run's {WithinRun.Interval} against the median of the other runs' medians. {Capital(TimeMode(runs[0]))}, cost profile `{runs[0][0].CostProfile}`.*");
        text.AppendLine();
        text.AppendLine("| | throughput | paired speedup over `original` |");
        text.AppendLine("|---|---:|---:|");
        text.AppendLine(CultureInfo.InvariantCulture, $"| cells with an interval in every run | {Both(c => c.Count.ToString(CultureInfo.InvariantCulture))} |");
        text.AppendLine(CultureInfo.InvariantCulture, $"| intervals that hold the median of the other runs' medians | {Both(c => Share(c.Sum(cell => Enumerable.Range(0, cell.Length).Count(i => HoldsOthers(cell, i))), c.Count * runs.Count))} |");
        text.AppendLine(CultureInfo.InvariantCulture, $"| the same, per run: {string.Join(", ", names)} | {Both(c => string.Join(", ", Enumerable.Range(0, runs.Count).Select(i => Share(c.Count(cell => HoldsOthers(cell, i)), c.Count))))} |");
        text.AppendLine(CultureInfo.InvariantCulture, $"| cells whose intervals hold it in at least 80 % of the runs | {Both(c => Share(c.Count(cell => Enumerable.Range(0, cell.Length).Count(i => HoldsOthers(cell, i)) >= 0.8 * cell.Length), c.Count))} |");
        text.AppendLine(CultureInfo.InvariantCulture, $"| factor between a run's median and the others': median, 90th percentile, largest | {Both(Factors)} |");
        text.AppendLine(CultureInfo.InvariantCulture, $"| host's cross-core round trip, median over each run's trials | {string.Join(", ", runs.Select(RoundTrip))} | |");
        return text.Append(Legend(speedups: false)).ToString();

        static List<Estimate[]> Cells<TKey>(List<Dictionary<TKey, Estimate>> perRun)
            where TKey : notnull =>
            [.. perRun[0].Keys.Where(k => perRun.All(run => run.ContainsKey(k))).Select(k => perRun.Select(run => run[k]).ToArray())];

        static double Others(Estimate[] cell, int i) =>
            SampleSummary.Of([.. cell.Where((_, j) => j != i).Select(e => e.Median)]).Median;

        static bool HoldsOthers(Estimate[] cell, int i) => cell[i].Holds(Others(cell, i));

        static string Share(int count, int of) => string.Create(CultureInfo.InvariantCulture, $"{count} of {of} ({100.0 * count / of:0} %)");

        static string Factors(List<Estimate[]> cells)
        {
            var factors = cells.SelectMany(cell => cell.Select((e, i) => Math.Max(e.Median / Others(cell, i), Others(cell, i) / e.Median))).Order().ToList();
            return string.Create(CultureInfo.InvariantCulture, $"{DocQueries.Percentile(factors, 0.5):0.00}×, {DocQueries.Percentile(factors, 0.9):0.00}×, {factors[^1]:0.00}×");
        }

        static string RoundTrip(IReadOnlyList<PaperRow> run)
        {
            var trips = run.Select(r => JsonValues.Number(r.Params.GetValueOrDefault("round_trip_ns"))).OfType<double>().Order().ToList();
            return trips.Count == 0 ? "-" : string.Create(CultureInfo.InvariantCulture, $"{DocQueries.Percentile(trips, 0.5):0} ns");
        }
    }

    /// <summary>A median and its within-run interval, as a row or a paired speedup gives them.</summary>
    private sealed record Estimate(double Median, double Low, double High)
    {
        public static Estimate Of(PaperRow row) => new(row.Throughput, row.CiLow!.Value, row.CiHigh!.Value);

        public static Estimate Of(SampleSummary ratio) => new(ratio.Median, ratio.CiLow!.Value, ratio.CiHigh!.Value);

        public bool Holds(double value) => Low <= value && value <= High;
    }

    private static string PerUnit(IReadOnlyList<PaperRow> rows, int cpus, Func<PaperRow, double> value, string format, string what)
    {
        var at = rows.Where(r => r.Cpus == cpus && r.Point.Length == 0 && r.Experiment != "memcpy").ToList();
        var strategies = Ordered(at.Select(r => r.Strategy));
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"*{cpus} CPU{(cpus == 1 ? string.Empty : "s")}: {what}, from the median trial{(cpus == 1 ? "; at 1 CPU the counts do not depend on timing" : "; on several CPUs some depend on their interleaving")}. Cost profile `{(at.Count > 0 ? at[0].ModelProfile : "?")}`.*");
        text.AppendLine();
        text.AppendLine("| experiment | " + string.Join(" | ", strategies.Select(s => $"`{s}`")) + " |");
        text.AppendLine("|---|" + string.Concat(strategies.Select(_ => "---:|")));
        foreach (var experiment in at.Select(r => r.Experiment).Distinct())
        {
            var of = at.Where(r => r.Experiment == experiment).ToList();
            var cells = strategies.Select(s => of.FirstOrDefault(r => r.Strategy == s) is { } r ? value(r).ToString(format, CultureInfo.InvariantCulture) : "-");
            text.AppendLine(CultureInfo.InvariantCulture, $"| `{experiment}` | {string.Join(" | ", cells)} |");
        }

        return text.ToString();
    }

    private static string Lru(IReadOnlyList<PaperRow> rows, string[] strategies)
    {
        var lru = rows.Where(r => r.Experiment == "lru").ToList();
        var cpus = lru.Select(r => r.Cpus).Distinct().Order().ToList();
        var columns = strategies.SelectMany(s => cpus.Select(c => (Strategy: s, Cpus: c))).ToList();
        var text = new StringBuilder();
        text.AppendLine("*Hit rate (sf_buf hits / (hits + misses), median trial) with a cyclic working set of K pages; K / `nsfbufs` in the first column.*");
        text.AppendLine();
        text.AppendLine("| working set / nsfbufs | pages | " + string.Join(" | ", columns.Select(c => $"`{c.Strategy}` {c.Cpus} CPU{(c.Cpus == 1 ? string.Empty : "s")}")) + " |");
        text.AppendLine("|---:|---:|" + string.Concat(columns.Select(_ => "---:|")));
        foreach (var point in lru.Select(r => r.Point).Distinct().OrderBy(p => JsonValues.Number(lru.First(r => r.Point == p).Params["fraction_of_pool"])))
        {
            var sample = lru.First(r => r.Point == point);
            var cells = columns.Select(c => lru.FirstOrDefault(r => r.Point == point && r.Strategy == c.Strategy && r.Cpus == c.Cpus) is { } r
                ? $"{100 * (JsonValues.Number(r.Params["hit_rate"]) ?? double.NaN):0.0} %"
                : "-");
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| {JsonValues.Number(sample.Params["fraction_of_pool"]):0.##} | {JsonValues.Number(sample.Params["working_set_pages"]):N0} | {string.Join(" | ", cells)} |");
        }

        return text.ToString();
    }

    private static string RealVsSimulated(IReadOnlyList<PaperRow> measured, IReadOnlyList<PaperRow> simulated)
    {
        var comparison = RealReport.Compare(measured, simulated);
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"*Paired speedup over `original`, simulated (`perf paper --cost {simulated[0].CostProfile}`) against measured on the host MMU (`perf real`), both {ChartText.TimeMode(measured)}; \"agree\": within a factor of 1.5. {comparison.Count(c => c.Agrees)} of {comparison.Count} agree.*");
        text.AppendLine();
        text.AppendLine(CultureInfo.InvariantCulture, $"| experiment | CPUs | strategy | simulated | measured [{WithinRun.Interval}] | measured / simulated | `original` MiB/s: simulated / measured | `original`: shootdowns asked / host flushes per MiB |");
        text.AppendLine("|---|---:|---|---:|---:|---:|---:|---:|");
        foreach (var c in comparison)
        {
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| `{c.Experiment}` | {c.Cpus} | `{c.Strategy}` | {c.Simulated:0.00}× | {Speedup(c.Measured, " ")} | {c.Factor:0.00} {c.Verdict} | {PaperReport.Number(c.SimulatedOriginal)} / {PaperReport.Number(c.MeasuredOriginal)} | {PaperReport.Number(c.ShootdownsAsked ?? double.NaN)} / {PaperReport.Number(c.HostFlushes ?? double.NaN)} |");
        }

        return text.Append(Legend(speedups: true)).ToString();
    }

    private static string Validation(string realFile, IReadOnlyList<PaperRow> real, string virtualFile, IReadOnlyList<PaperRow> virtualRows)
    {
        var comparison = TimeValidation.Compare(real, virtualRows);
        if (comparison.Cells.Count == 0)
        {
            throw new ArgumentException($"{realFile} and {virtualFile} have no experiment, strategy and CPU count in common");
        }

        var strategies = Ordered(comparison.Cells.Select(c => c.Strategy));
        string tolerance = TimeValidation.Tolerance.ToString("0.0", CultureInfo.InvariantCulture);
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture,
            $"*Speedup over `original` in real time (`{realFile}`: the paired speedup, median of the per-round ratios, as the `speedups` table gives it) and in virtual time (`{virtualFile}`: the ratio of the throughputs of its one round); virtual / real, and \"agrees\" when that is within a factor of {tolerance}. {(real[0].CostProfile == virtualRows[0].CostProfile ? $"Cost profile `{real[0].CostProfile}` in both" : $"Cost profiles `{real[0].CostProfile}` (real) and `{virtualRows[0].CostProfile}` (virtual)")}.*");
        text.AppendLine();
        text.AppendLine(CultureInfo.InvariantCulture, $"**Validation:** {TimeValidation.Summary(comparison)}");
        text.AppendLine();
        text.AppendLine("*Per experiment and CPU count: the cells that agree; virtual / real over its strategies (median [lowest, highest]); the time per unit (MiB, or operation) of `original` and, the median over the other strategies, of the rest, in real / virtual time.*");
        text.AppendLine();
        text.AppendLine("| experiment | CPUs | agree | virtual / real | `original` per unit: real / virtual | the others per unit (median): real / virtual |");
        text.AppendLine("|---|---:|---:|---:|---:|---:|");
        foreach (var group in comparison.Cells.GroupBy(c => (c.Experiment, c.Point, c.Cpus)))
        {
            var factors = group.Select(c => c.Factor).Order().ToList();
            var realNs = group.Select(c => 1e9 / c.RealRow.Throughput).Order().ToList();
            var virtualNs = group.Select(c => 1e9 / c.VirtualRow.Throughput).Order().ToList();
            var realBase = real.First(r => r.Experiment == group.Key.Experiment && r.Point == group.Key.Point && r.Cpus == group.Key.Cpus && r.Strategy == PaperReport.Baseline);
            var virtualBase = virtualRows.First(r => r.Experiment == group.Key.Experiment && r.Point == group.Key.Point && r.Cpus == group.Key.Cpus && r.Strategy == PaperReport.Baseline);
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| `{TimeValidation.Name(group.Key.Experiment, group.Key.Point)}` | {group.Key.Cpus} | {group.Count(c => c.Agrees)} of {group.Count()} | {DocQueries.Percentile(factors, 0.5):0.00} [{factors[0]:0.00}, {factors[^1]:0.00}] | {PaperReport.Nanoseconds(1e9 / realBase.Throughput)} / {PaperReport.Nanoseconds(1e9 / virtualBase.Throughput)} | {PaperReport.Nanoseconds(DocQueries.Percentile(realNs, 0.5))} / {PaperReport.Nanoseconds(DocQueries.Percentile(virtualNs, 0.5))} |");
        }

        text.AppendLine();
        text.AppendLine(CultureInfo.InvariantCulture, $"*Every cell: the speedup in real time / in virtual time, then virtual / real; **differs**: not within a factor of {tolerance}.*");
        text.AppendLine();
        text.AppendLine("| experiment | CPUs | " + string.Join(" | ", strategies.Select(s => $"`{s}`")) + " |");
        text.AppendLine("|---|---:|" + string.Concat(strategies.Select(_ => "---:|")));
        foreach (var group in comparison.Cells.GroupBy(c => (c.Experiment, c.Point, c.Cpus)))
        {
            var cells = strategies.Select(s => group.FirstOrDefault(c => c.Strategy == s) is { } c
                ? string.Create(CultureInfo.InvariantCulture, $"{c.Real.Ratio.Median:0.00}× / {c.Virtual:0.00}×<br>{c.Factor:0.00}{(c.Agrees ? string.Empty : " **differs**")}")
                : "-");
            text.AppendLine(CultureInfo.InvariantCulture, $"| `{TimeValidation.Name(group.Key.Experiment, group.Key.Point)}` | {group.Key.Cpus} | {string.Join(" | ", cells)} |");
        }

        text.AppendLine();
        text.AppendLine("*The best strategy that needs no direct map (`original` included, at 1.00×) in each mode, with its speedup (in real time with its 95% CI); and each one's speedup in the other mode: the CIs show whether real time tells the two apart.*");
        text.AppendLine();
        text.AppendLine("| experiment | CPUs | best in real time | best in virtual time | same | real's best in virtual time | virtual's best in real time |");
        text.AppendLine("|---|---:|---|---|---|---:|---:|");
        foreach (var b in comparison.Bests)
        {
            var of = comparison.Cells.Where(c => c.Experiment == b.Experiment && c.Point == b.Point && c.Cpus == b.Cpus).ToList();
            string Names(IReadOnlyList<string> names) => string.Join(" = ", names.Select(n => $"`{n}`"));
            string InVirtual(string strategy) => strategy == PaperReport.Baseline ? "1.00×" : $"{of.First(c => c.Strategy == strategy).Virtual.ToString("0.00", CultureInfo.InvariantCulture)}×";
            string InReal(string strategy) => strategy == PaperReport.Baseline ? "1.00×" : Speedup(of.First(c => c.Strategy == strategy).Real, " ");
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| `{TimeValidation.Name(b.Experiment, b.Point)}` | {b.Cpus} | {Names(b.RealBest)} {InReal(b.RealBest[0])} | {Names(b.VirtualBest)} {b.VirtualSpeedup:0.00}× | {(b.Same ? "yes" : "**no**")} | {InVirtual(b.RealBest[0])} | {InReal(b.VirtualBest[0])} |");
        }

        return text.ToString();
    }

    private static string Excerpt(string root, string file, string[] ranges)
    {
        var lines = File.ReadAllLines(Path.Combine(root, "docs", "results", file));
        var text = new StringBuilder("```\n");
        foreach (var range in ranges)
        {
            var bounds = range.Split('-');
            int from = int.Parse(bounds[0], CultureInfo.InvariantCulture);
            int to = bounds.Length > 1 ? int.Parse(bounds[1], CultureInfo.InvariantCulture) : from;
            if (from < 1 || to > lines.Length || from > to)
            {
                throw new ArgumentException($"lines {range} are not in docs/results/{file} ({lines.Length} lines)");
            }

            for (int i = from - 1; i < to; i++)
            {
                string line = lines[i].TrimEnd();
                text.AppendLine(line.Length <= 110 ? line : line[..109] + "…");
            }
        }

        return text.Append("```\n").ToString();
    }

    private static string Strategies()
    {
        var text = new StringBuilder();
        text.AppendLine("| strategy | kernel | private users get | shared users get |");
        text.AppendLine("|---|---|---|---|");
        foreach (var info in SfBufStrategyInfo.All)
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"| `{info.Name}` | {info.Family} | {Escape(info.PrivateUsers)} | {Escape(info.SharedUsers)} |");
        }

        return text.ToString();
    }

    private static string CostProfilesTable()
    {
        var text = new StringBuilder();
        text.AppendLine("| profile | invlpg | full flush | walk | PTE write | IPI send | delivery | handler | source |");
        text.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---|");
        foreach (var m in CostModel.Builtin.Values)
        {
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| `{m.Name}` | {m.LocalInvalidateNs:0.#} ns | {m.FullFlushNs:0.#} ns | {m.TlbMissWalkNs:0.#} ns | {m.PteWriteNs:0.#} ns | {m.IpiSendNs:0.#} ns | {m.IpiDeliveryNs:0.#} ns | {m.IpiHandlerNs:0.#} ns | {Escape(m.Source)} |");
        }

        // The prices of work the host really does in real time: virtual time charges them instead.
        text.AppendLine();
        text.AppendLine("| profile | copy | kernel entry | lock | lock hand-off | wakeup | context switch | spin turn |");
        text.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var m in CostModel.Builtin.Values)
        {
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| `{m.Name}` | {m.CopyBytesPerNs:0.#} B/ns | {m.KernelEntryNs:0.#} ns | {m.LockNs:0.#} ns | {m.LockHandoffNs:0.#} ns | {m.WakeupNs:0.#} ns | {m.ContextSwitchNs:0.#} ns | {m.SpinNs:0.#} ns |");
        }

        return text.ToString();
    }

    private static List<string> Ordered(IEnumerable<string> strategies)
    {
        var present = strategies.Distinct().ToList();
        var order = SfBufStrategyInfo.All.Select(i => i.Name).ToList();
        return [.. present.OrderBy(s => order.IndexOf(s) is int i and >= 0 ? i : int.MaxValue).ThenBy(s => s, StringComparer.Ordinal)];
    }

    /// <summary>The legend line under a table with intervals, after a blank line; of speedups, with what <see cref="WithinRun.HoldsOne"/> means.</summary>
    private static string Legend(bool speedups) =>
        $"\n*{WithinRun.Legend}{(speedups ? $" {WithinRun.HoldsOneLegend}" : string.Empty)}*\n";

    private static string Speedup(PaperReport.Speedup s, string separator) =>
        string.Create(CultureInfo.InvariantCulture, $"{s.Ratio.Median:0.00}×{(s.ExcludesOne ? string.Empty : $" {WithinRun.HoldsOne}")}{(s.Ratio.CiLow is { } lo && s.Ratio.CiHigh is { } hi ? $"{separator}[{lo:0.00}, {hi:0.00}]" : string.Empty)}");

    private static string Capital(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..];

    private static string Escape(string s) => s.Replace("|", "\\|", StringComparison.Ordinal);
}
