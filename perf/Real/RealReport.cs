using System.Globalization;
using System.Text;
using Native.Perf.Paper;
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
    int Trials,
    bool Quick)
{
    public IEnumerable<string> Lines()
    {
        yield return $"host            {Host}: {Cpu}, {Kernel}";
        yield return $"date            {Date:yyyy-MM-dd HH:mm} UTC{(Quick ? ", --quick" : string.Empty)}, {Trials} trial(s) per cell, strategies interleaved";
        yield return Host.StartsWith("rows of ", StringComparison.Ordinal)
            ? $"round trip      {Ns(RoundTripStartNs)} to {Ns(RoundTripEndNs)} over the trials"
            : $"round trip      {Ns(RoundTripStartNs)} before, {Ns(RoundTripEndNs)} after (cache line between two pinned host cores)";
        yield return $"flush counts    {FlushCounting}";
        yield return $"TLB interrupts  {TlbInterrupts}";
    }

    private static string Ns(double? ns) => ns is double v ? $"{v:0} ns" : "n/a (one core)";
}

/// <summary>Renders <c>perf real</c>: terminal tables, the comparison with the simulation, Markdown.</summary>
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

    /// <summary>One table per experiment: median throughput [interval], paired speedup, and host counts per unit.</summary>
    public static void PrintTables(IReadOnlyList<RealCell> cells)
    {
        foreach (var group in cells.GroupBy(c => c.Experiment))
        {
            var first = group.First();
            var table = new Table().Border(TableBorder.Rounded)
                .Title($"[bold]{first.Experiment}[/] (host MMU, counts per {first.Unit}; * system-wide)")
                .AddColumn("strategy").AddColumn(new TableColumn("cpus").RightAligned()).AddColumn(new TableColumn("n").RightAligned())
                .AddColumn(new TableColumn(first.Bulk ? "MiB/s median [[CI]]" : "ops/s median [[CI]]").RightAligned())
                .AddColumn(new TableColumn("x original [[CI]]").RightAligned());
            foreach (var (_, header) in s_perUnit)
            {
                table.AddColumn(new TableColumn(header).RightAligned());
            }

            foreach (var cell in group.OrderBy(c => c.Cpus).ThenBy(c => StrategyOrder(c.Strategy)))
            {
                var row = new List<string>
                {
                    cell.Strategy,
                    cell.Cpus.ToString(CultureInfo.InvariantCulture),
                    cell.Throughput.N.ToString(CultureInfo.InvariantCulture),
                    WithInterval(cell.Throughput, "N0"),
                    cell.Speedup is { } s ? SpeedupText(s) : "-",
                };
                row.AddRange(s_perUnit.Select(k => Fmt(cell.PerUnit(k.Key))));
                table.AddRow(row.Select(c => new Text(c)));
            }

            AnsiConsole.Write(table);
        }
    }

    /// <summary>The simulation against reality: simulated and measured speedups over <c>original</c>, side by side.</summary>
    public static void PrintComparison(IReadOnlyList<ComparisonRow> comparison)
    {
        var table = new Table().Border(TableBorder.Rounded).Title("[bold]simulation (perf paper) against the host MMU (perf real): speedup over original[/]")
            .AddColumn("experiment").AddColumn(new TableColumn("cpus").RightAligned()).AddColumn("strategy")
            .AddColumn(new TableColumn("simulated").RightAligned()).AddColumn(new TableColumn("measured [[CI]]").RightAligned())
            .AddColumn(new TableColumn("measured / simulated").RightAligned())
            .AddColumn(new TableColumn("original: sim shootdowns / host flushes per unit").RightAligned());
        foreach (var c in comparison)
        {
            string[] cells =
            [
                c.Experiment,
                c.Cpus.ToString(CultureInfo.InvariantCulture),
                c.Strategy,
                $"{c.Simulated:0.00}x",
                SpeedupText(c.Measured),
                $"{c.Factor:0.00}{(c.Agrees ? string.Empty : "  differs > 1.5x")}",
                $"{Fmt(c.SimulatedShootdowns)} / {Fmt(c.HostFlushes)}",
            ];
            table.AddRow(cells.Select(t => new Text(t)));
        }

        AnsiConsole.Write(table);
    }

    /// <summary>The Markdown results: run information, the summary table and, with a simulated run, the comparison.</summary>
    public static void WriteMarkdown(string path, RealRunInfo info, IReadOnlyList<RealCell> cells, IReadOnlyList<ComparisonRow>? comparison)
    {
        var text = new StringBuilder();
        foreach (var line in info.Lines())
        {
            text.Append("    ").AppendLine(line);
        }

        text.AppendLine();
        text.AppendLine("| experiment | cpus | strategy | throughput, median [CI] | x original [CI] | remaps | host flushes sent | shootdowns asked | per |");
        text.AppendLine("|---|---:|---|---:|---:|---:|---:|---:|---|");
        foreach (var c in cells.OrderBy(c => Array.IndexOf(Experiments.Names, c.Experiment)).ThenBy(c => c.Cpus).ThenBy(c => StrategyOrder(c.Strategy)))
        {
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| {c.Experiment} | {c.Cpus} | {c.Strategy} | {WithInterval(c.Throughput, "N0")} {(c.Bulk ? "MiB/s" : "ops/s")} | {(c.Speedup is { } s ? SpeedupText(s) : "-")} | {Fmt(c.PerUnit("host_remaps"))} | {Fmt(c.PerUnit("host_flushes_sent"))} | {Fmt(c.PerUnit("shootdowns"))} | {(c.Bulk ? "MiB" : "op")} |");
        }

        if (comparison is { Count: > 0 })
        {
            text.AppendLine();
            text.AppendLine("| experiment | cpus | strategy | simulated speedup | measured speedup [CI] | measured / simulated | original: simulated shootdowns / host flushes per unit |");
            text.AppendLine("|---|---:|---|---:|---:|---:|---:|");
            foreach (var c in comparison)
            {
                text.AppendLine(CultureInfo.InvariantCulture,
                    $"| {c.Experiment} | {c.Cpus} | {c.Strategy} | {c.Simulated:0.00}x | {SpeedupText(c.Measured)} | {c.Factor:0.00}{(c.Agrees ? string.Empty : " **differs**")} | {Fmt(c.SimulatedShootdowns)} / {Fmt(c.HostFlushes)} |");
            }
        }

        File.WriteAllText(path, text.ToString());
    }

    /// <summary>
    /// Pairs each measured speedup with the simulated one for the same experiment, strategy and
    /// CPU count; <see cref="ComparisonRow.Agrees"/> when they are within a factor of 1.5.
    /// </summary>
    public static List<ComparisonRow> Compare(IReadOnlyList<RealCell> cells, IReadOnlyList<PaperRow> simulated)
    {
        var speedups = RealSummary.SimulatedSpeedups(simulated);
        var result = new List<ComparisonRow>();
        foreach (var cell in cells.Where(c => c.Speedup is not null)
            .OrderBy(c => Array.IndexOf(Experiments.Names, c.Experiment)).ThenBy(c => c.Cpus).ThenBy(c => StrategyOrder(c.Strategy)))
        {
            if (!speedups.TryGetValue((cell.Experiment, cell.Strategy, cell.Cpus), out double sim))
            {
                continue;
            }

            var original = cells.FirstOrDefault(c => c.Experiment == cell.Experiment && c.Cpus == cell.Cpus && c.Strategy == SfBufMapper.Original);
            result.Add(new ComparisonRow(
                cell.Experiment,
                cell.Cpus,
                cell.Strategy,
                sim,
                cell.Speedup!.Value,
                RealSummary.SimulatedPerUnit(simulated, cell.Experiment, SfBufMapper.Original, cell.Cpus, "shootdowns"),
                original?.PerUnit("host_flushes_sent")));
        }

        return result;
    }

    private static int StrategyOrder(string strategy)
    {
        int i = SfBufMapper.StrategyNames.ToList().IndexOf(strategy);
        return i < 0 ? int.MaxValue : i;
    }

    private static string WithInterval(Estimate e, string format) =>
        e.N <= 1
            ? e.Median.ToString(format, CultureInfo.InvariantCulture)
            : string.Create(CultureInfo.InvariantCulture, $"{e.Median.ToString(format, CultureInfo.InvariantCulture)} [{e.Low.ToString(format, CultureInfo.InvariantCulture)}, {e.High.ToString(format, CultureInfo.InvariantCulture)}]");

    /// <summary>A speedup with its interval; "(n.s.)" when the interval holds 1.0, which is then no speedup.</summary>
    private static string SpeedupText(Estimate e) =>
        string.Create(CultureInfo.InvariantCulture, $"{e.Median:0.00}x")
        + (e.N > 1 ? string.Create(CultureInfo.InvariantCulture, $" [{e.Low:0.00}, {e.High:0.00}]") : string.Empty)
        + (e.N > 1 && !e.Excludes(1.0) ? " (n.s.)" : string.Empty)
        + (e.N > 1 && e.Confidence < 0.95 ? string.Create(CultureInfo.InvariantCulture, $" ({e.Confidence:P0} CI)") : string.Empty);

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
internal sealed record ComparisonRow(
    string Experiment,
    int Cpus,
    string Strategy,
    double Simulated,
    Estimate Measured,
    double SimulatedShootdowns,
    double? HostFlushes)
{
    /// <summary>Measured over simulated speedup.</summary>
    public double Factor => Measured.Median / Simulated;

    /// <summary>True when the two speedups are within a factor of 1.5 of each other.</summary>
    public bool Agrees => Factor is >= 1 / 1.5 and <= 1.5;
}
