using System.Globalization;
using System.Text;
using Native.Perf.Paper;
using Native.Perf.Stats;
using Native.SfBufNative;
using Spectre.Console;

namespace Native.Perf.Real;

/// <summary>What a <c>perf real</c> run was measured on: the host, the date, the round trip before and after.</summary>
internal sealed record RealRunInfo(
    string Host,
    string Cpu,
    string Kernel,
    DateTime Date,
    double? RoundTripStartNs,
    double? RoundTripEndNs,
    string FlushCounting,
    string TlbInterrupts,
    int Rounds,
    bool Quick)
{
    /// <summary>True when the information was read back from saved rows rather than measured now.</summary>
    public bool FromRows => Host.StartsWith("rows of ", StringComparison.Ordinal);

    public IEnumerable<string> Lines()
    {
        yield return $"host            {Host}: {Cpu}, {Kernel}";
        yield return $"date            {Date:yyyy-MM-dd HH:mm} UTC{(Quick ? ", --quick" : string.Empty)}, {Rounds} timed trial(s) per cell, strategies interleaved";
        yield return FromRows
            ? $"round trip      {Ns(RoundTripStartNs)} to {Ns(RoundTripEndNs)} over the trials"
            : $"round trip      {Ns(RoundTripStartNs)} before, {Ns(RoundTripEndNs)} after (cache line between two pinned host cores)";
        yield return $"flush counts    {FlushCounting}";
        yield return $"TLB interrupts  {TlbInterrupts}";
        yield return $"statistics      {SampleSummary.CiMethod}; speedups paired by round";
    }

    private static string Ns(double? ns) => ns is double v && v > 0 ? $"{v:0} ns" : "n/a";
}

/// <summary>
/// Renders <c>perf real</c>'s rows: terminal tables, the comparison with the simulation, Markdown;
/// every interval named <see cref="WithinRun.Interval"/>, with <see cref="WithinRun.Legend"/> under
/// each table.
/// </summary>
internal static class RealReport
{
    private static readonly (string Key, string Header)[] s_perUnit =
    [
        ("host_remaps", "remaps"),
        ("host_flushes_sent", "flushes sent"),
        ("host_flushes_received", "flushes recv"),
        ("host_tlb_ipis", "TLB IRQs*"),
        ("shootdowns", "shootdn asked"),
        ("sfbuf_hits", "hits"),
        ("sfbuf_misses", "misses"),
    ];

    /// <summary>One table per experiment: median throughput with its within-run CI, the paired speedup, and host counts per unit (median trial).</summary>
    public static void PrintTables(IReadOnlyList<PaperRow> rows)
    {
        var speedups = PaperReport.Speedups(rows);
        foreach (var group in rows.GroupBy(r => r.Experiment))
        {
            var first = group.First();
            var table = new Table().Border(TableBorder.Rounded)
                .Title($"[bold]{first.Experiment}[/] (host MMU, counts per {first.Unit}; * system-wide)")
                .AddColumn("strategy").AddColumn(new TableColumn("cpus").RightAligned()).AddColumn(new TableColumn("n").RightAligned())
                .AddColumn(new TableColumn(first.Bytes > 0 ? "MiB/s" : "ops/s").RightAligned())
                .AddColumn(new TableColumn(WithinRun.Interval).RightAligned())
                .AddColumn(new TableColumn($"x original [[{WithinRun.Interval}]]").RightAligned());
            foreach (var (_, header) in s_perUnit)
            {
                table.AddColumn(new TableColumn(header).RightAligned());
            }

            foreach (var row in group.OrderBy(r => r.Cpus).ThenBy(r => StrategyOrder(r.Strategy)))
            {
                var speedup = speedups.FirstOrDefault(s => s.Experiment == row.Experiment && s.Point == row.Point && s.Cpus == row.Cpus && s.Strategy == row.Strategy);
                var cells = new List<string>
                {
                    row.Strategy,
                    row.Cpus.ToString(CultureInfo.InvariantCulture),
                    Math.Max(1, row.Samples.Count).ToString(CultureInfo.InvariantCulture),
                    PaperReport.Number(row.Throughput),
                    row.CiLow is { } lo && row.CiHigh is { } hi ? $"[{PaperReport.Number(lo)}, {PaperReport.Number(hi)}]" : "-",
                    speedup is null ? "-" : PaperReport.SpeedupText(speedup),
                };
                cells.AddRange(s_perUnit.Select(k => Fmt(PerUnit(row, k.Key))));
                table.AddRow(cells.Select(c => new Text(c)));
            }

            if (group.Any(r => r.CiLow is not null))
            {
                table.Caption(Markup.Escape($"{WithinRun.Legend} {WithinRun.HoldsOneLegend}"));
            }

            AnsiConsole.Write(table);
        }
    }

    /// <summary>The simulation against reality: simulated and measured speedups over <c>original</c>, side by side.</summary>
    public static void PrintComparison(IReadOnlyList<ComparisonRow> comparison)
    {
        var table = new Table().Border(TableBorder.Rounded).Title("[bold]simulation (perf paper) against the host MMU (perf real): speedup over original[/]")
            .AddColumn("experiment").AddColumn(new TableColumn("cpus").RightAligned()).AddColumn("strategy")
            .AddColumn(new TableColumn("simulated").RightAligned()).AddColumn(new TableColumn($"measured [[{WithinRun.Interval}]]").RightAligned())
            .AddColumn(new TableColumn("measured / simulated (agree: within 1.5x)").RightAligned())
            .AddColumn(new TableColumn("original MiB/s: simulated / measured").RightAligned())
            .AddColumn(new TableColumn("original: shootdowns asked / host flushes per unit").RightAligned());
        foreach (var c in comparison)
        {
            string[] cells =
            [
                c.Experiment,
                c.Cpus.ToString(CultureInfo.InvariantCulture),
                c.Strategy,
                $"{c.Simulated:0.00}x",
                PaperReport.SpeedupText(c.Measured),
                $"{c.Factor:0.00} {c.Verdict}",
                $"{PaperReport.Number(c.SimulatedOriginal)} / {PaperReport.Number(c.MeasuredOriginal)}",
                $"{Fmt(c.ShootdownsAsked)} / {Fmt(c.HostFlushes)}",
            ];
            table.AddRow(cells.Select(t => new Text(t)));
        }

        if (comparison.Any(c => c.Measured.Ratio.CiLow is not null))
        {
            table.Caption(Markup.Escape($"{WithinRun.Legend} {WithinRun.HoldsOneLegend}"));
        }

        AnsiConsole.Write(table);
    }

    /// <summary>The Markdown results: run information, the summary table and, with a simulated run, the comparison.</summary>
    public static void WriteMarkdown(string path, RealRunInfo info, IReadOnlyList<PaperRow> rows, IReadOnlyList<ComparisonRow>? comparison)
    {
        var speedups = PaperReport.Speedups(rows);
        var text = new StringBuilder();
        foreach (var line in info.Lines())
        {
            text.Append("    ").AppendLine(line);
        }

        text.AppendLine();
        text.AppendLine(CultureInfo.InvariantCulture, $"| experiment | cpus | strategy | throughput, median [{WithinRun.Interval}] | x original [{WithinRun.Interval}] | remaps | host flushes sent | shootdowns asked | per |");
        text.AppendLine("|---|---:|---|---:|---:|---:|---:|---:|---|");
        foreach (var r in Ordered(rows))
        {
            var s = speedups.FirstOrDefault(x => x.Experiment == r.Experiment && x.Point == r.Point && x.Cpus == r.Cpus && x.Strategy == r.Strategy);
            string interval = r.CiLow is { } lo && r.CiHigh is { } hi ? $" [{PaperReport.Number(lo)}, {PaperReport.Number(hi)}]" : string.Empty;
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| {r.Experiment} | {r.Cpus} | {r.Strategy} | {PaperReport.Number(r.Throughput)}{interval} {(r.Bytes > 0 ? "MiB/s" : "ops/s")} | {(s is null ? "-" : PaperReport.SpeedupText(s))} | {Fmt(PerUnit(r, "host_remaps"))} | {Fmt(PerUnit(r, "host_flushes_sent"))} | {Fmt(PerUnit(r, "shootdowns"))} | {(r.Bytes > 0 ? "MiB" : "op")} |");
        }

        if (rows.Any(r => r.CiLow is not null))
        {
            text.AppendLine().AppendLine(CultureInfo.InvariantCulture, $"*{WithinRun.Legend} {WithinRun.HoldsOneLegend}*");
        }

        if (comparison is { Count: > 0 })
        {
            text.AppendLine();
            text.AppendLine(CultureInfo.InvariantCulture, $"| experiment | cpus | strategy | simulated speedup | measured speedup [{WithinRun.Interval}] | measured / simulated | original MiB/s: simulated / measured | original: shootdowns asked / host flushes per unit |");
            text.AppendLine("|---|---:|---|---:|---:|---:|---:|---:|");
            foreach (var c in comparison)
            {
                text.AppendLine(CultureInfo.InvariantCulture,
                    $"| {c.Experiment} | {c.Cpus} | {c.Strategy} | {c.Simulated:0.00}x | {PaperReport.SpeedupText(c.Measured)} | {c.Factor:0.00} {c.Verdict} | {PaperReport.Number(c.SimulatedOriginal)} / {PaperReport.Number(c.MeasuredOriginal)} | {Fmt(c.ShootdownsAsked)} / {Fmt(c.HostFlushes)} |");
            }

            if (comparison.Any(c => c.Measured.Ratio.CiLow is not null))
            {
                text.AppendLine().AppendLine(CultureInfo.InvariantCulture, $"*{WithinRun.Legend} {WithinRun.HoldsOneLegend}*");
            }
        }

        File.WriteAllText(path, text.ToString());
    }

    /// <summary>
    /// Pairs each measured speedup with the simulated one (from a <c>perf paper</c> run) for the same
    /// experiment, strategy and CPU count; <see cref="ComparisonRow.Agrees"/> within a factor of 1.5.
    /// </summary>
    public static List<ComparisonRow> Compare(IReadOnlyList<PaperRow> measured, IReadOnlyList<PaperRow> simulated)
    {
        var simulatedSpeedups = PaperReport.Speedups(simulated);
        var result = new List<ComparisonRow>();
        foreach (var m in PaperReport.Speedups(measured)
            .OrderBy(s => Array.IndexOf(Experiments.Names, s.Experiment)).ThenBy(s => s.Cpus).ThenBy(s => StrategyOrder(s.Strategy)))
        {
            var sim = simulatedSpeedups.FirstOrDefault(s => s.Experiment == m.Experiment && s.Point == m.Point && s.Cpus == m.Cpus && s.Strategy == m.Strategy);
            if (sim is null)
            {
                continue;
            }

            PaperRow? Original(IReadOnlyList<PaperRow> rows) =>
                rows.FirstOrDefault(r => r.Experiment == m.Experiment && r.Point == m.Point && r.Cpus == m.Cpus && r.Strategy == PaperReport.Baseline);
            var measuredOriginal = Original(measured);
            var simulatedOriginal = Original(simulated);
            result.Add(new ComparisonRow(
                m.Experiment,
                m.Cpus,
                m.Strategy,
                sim.Ratio.Median,
                m,
                simulatedOriginal?.Throughput ?? double.NaN,
                measuredOriginal?.Throughput ?? double.NaN,
                measuredOriginal is null ? null : PerUnit(measuredOriginal, "shootdowns"),
                measuredOriginal is null ? null : PerUnit(measuredOriginal, "host_flushes_sent"))
            {
                SimulatedRatio = sim.Ratio,
            });
        }

        return result;
    }

    /// <summary>A counter of the row's median trial per unit; null when the host could not count it (-1).</summary>
    public static double? PerUnit(PaperRow row, string counter) =>
        row.Counters.TryGetValue(counter, out long v) && v < 0 ? null : row[counter] / row.Units;

    private static IEnumerable<PaperRow> Ordered(IReadOnlyList<PaperRow> rows) =>
        rows.OrderBy(r => Array.IndexOf(Experiments.Names, r.Experiment)).ThenBy(r => r.Cpus).ThenBy(r => StrategyOrder(r.Strategy));

    private static int StrategyOrder(string strategy)
    {
        int i = SfBufMapper.StrategyNames.ToList().IndexOf(strategy);
        return i < 0 ? int.MaxValue : i;
    }

    private static string Fmt(double? v) => v switch
    {
        null => "n/a",
        double d when double.IsNaN(d) => "n/a",
        0 => "0",
        double d when d >= 100 => d.ToString("N0", CultureInfo.InvariantCulture),
        double d => d.ToString("0.###", CultureInfo.InvariantCulture),
    };
}

/// <summary>One line of the simulation-against-reality comparison.</summary>
/// <param name="Experiment">The experiment.</param>
/// <param name="Cpus">CPU count.</param>
/// <param name="Strategy">The strategy compared with <c>original</c>.</param>
/// <param name="Simulated">The simulated paired speedup (median).</param>
/// <param name="Measured">The measured paired speedup, with its interval.</param>
/// <param name="SimulatedOriginal">The simulated <c>original</c>'s median throughput.</param>
/// <param name="MeasuredOriginal">The measured <c>original</c>'s median throughput.</param>
/// <param name="ShootdownsAsked">Shootdown rounds <c>original</c> asked for per unit on the host.</param>
/// <param name="HostFlushes">Remote flushes the host kernel sent per unit for <c>original</c>.</param>
internal sealed record ComparisonRow(
    string Experiment,
    int Cpus,
    string Strategy,
    double Simulated,
    PaperReport.Speedup Measured,
    double SimulatedOriginal,
    double MeasuredOriginal,
    double? ShootdownsAsked,
    double? HostFlushes)
{
    /// <summary>The simulated paired speedup with its interval (null when the row was made without it).</summary>
    public SampleSummary? SimulatedRatio { get; init; }

    /// <summary>Measured over simulated speedup.</summary>
    public double Factor => Measured.Ratio.Median / Simulated;

    /// <summary>True when the two speedups are within a factor of 1.5 of each other.</summary>
    public bool Agrees => Factor is >= 1 / 1.5 and <= 1.5;

    /// <summary>True when the simulated speedup lies inside the measured one's within-run CI: the difference is then within this run's noise alone.</summary>
    public bool SimulatedInsideCi => Measured.Ratio.CiContains(Simulated);

    /// <summary>The verdict: agree (within 1.5x), differ, or differ by the medians only (the simulated value is inside the measured within-run CI).</summary>
    public string Verdict => Agrees ? "agree" : SimulatedInsideCi ? "differ (inside within-run CI)" : "differ";
}
