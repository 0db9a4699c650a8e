using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Native.PageTable;
using Native.Perf.Charting;
using Native.Perf.Paper;
using Spectre.Console;

namespace Native.Perf.Scale;

/// <summary>
/// <c>perf scale</c>: every strategy, experiment and load form at 1 to 256 simulated CPUs in
/// virtual time. Each cell is one deterministic trial (and one checked verification trial at the
/// check size); cells run side by side on the host's cores, which cannot change their figures.
/// Prints a table per experiment (throughput against the CPU count), the simulator's own cost,
/// and writes JSON rows like <c>perf paper</c>'s, Markdown tables and PNG charts.
/// </summary>
internal static class ScaleCommand
{
    /// <summary>The default CPU counts: powers of two up to the largest machine.</summary>
    public static readonly int[] DefaultCpus = [.. new[] { 1, 2, 4, 8, 16, 32, 64, 128, 256 }.Where(c => c <= MachineOptions.MaxCpus)];

    public static Command Create()
    {
        var options = new PlanOptions();
        options.Cpus.DefaultValueFactory = _ => DefaultCpus;
        options.Strategies.DefaultValueFactory = _ => ["all"];
        options.Experiments.DefaultValueFactory = _ => [.. Paper.Experiments.Names];
        var json = new Option<FileInfo?>("--json") { Description = "Write the rows as JSON" };
        var markdown = new Option<FileInfo?>("--markdown") { Description = "Write Markdown tables" };
        var plot = new Option<DirectoryInfo?>("--plot") { Description = "Write PNG charts (throughput, IPIs and modelled cost against the CPU count) into this directory" };
        var parallel = new Option<int>("--parallel")
        {
            Description = "Cells run at once (default: the host's cores; the figures do not depend on it)",
            DefaultValueFactory = _ => PaperRunner.HostCores,
        };
        var noCheck = new Option<bool>("--no-check") { Description = "Skip the checked verification trial of each cell" };
        var verbose = new Option<bool>("--verbose") { Description = "Print each cell's host seconds (the simulator's cost) as it ends" };
        var command = new Command("scale", "Every strategy and experiment at 1 to 256 simulated CPUs in virtual time: deterministic tables, JSON and charts.")
        {
            options.Quick, options.Cpus, options.Strategies, options.Peers, options.Experiments, options.Cost, options.Model, options.Load, options.Quantum, options.Shootdown,
            json, markdown, plot, parallel, noCheck, verbose,
        };
        command.SetAction(parse =>
        {
            return PaperCommand.Reporting(() =>
            {
                var plan = options.Plan(parse, parse.GetValue(options.Quick) ? TrialSize.Quick : TrialSize.Full, 1, forceVirtual: true);
                int degree = Math.Max(1, parse.GetValue(parallel));
                return Run(plan, degree, !parse.GetValue(noCheck), parse.GetValue(json), parse.GetValue(markdown), parse.GetValue(plot), parse.GetValue(verbose));
            });
        });
        return command;
    }

    /// <summary>Runs every cell of <paramref name="plan"/> (virtual time) and reports.</summary>
    public static int Run(PaperPlan plan, int degree, bool verify, FileInfo? json, FileInfo? markdown, DirectoryInfo? plot, bool verbose = false)
    {
        var cells = plan.Cells();
        AnsiConsole.MarkupLine($"[bold]perf scale[/]{(plan.Size == TrialSize.Quick ? " --quick" : string.Empty)}: {plan.Experiments.Length} experiments x {plan.Strategies.Length} strategies x cpus {string.Join(",", plan.CpuCounts)}"
            + $" x load {string.Join(",", plan.LoadForms.Select(LoadName))} = {cells.Count} cells, virtual time (quantum {QuantumNs(plan)} ns, seed-free: every figure is a function of the workload, the strategy and the profile)");
        AnsiConsole.MarkupLine($"shootdowns: {Markup.Escape(PaperReport.ShootdownText(PaperRow.ShootdownName(plan.Shootdown)))}");
        AnsiConsole.MarkupLine($"cost profile {Markup.Escape(plan.Cost.ToString())}");
        var clock = Stopwatch.StartNew();
        var result = RunCells(plan, degree, verify, verbose);
        var problems = result.Verification.Concat(result.Timed).SelectMany(PaperChecks.Check).ToList();
        var rows = PaperRunner.Aggregate(plan, result.Timed, result.Verification);
        clock.Stop();

        PrintTables(rows);
        long steps = rows.Sum(r => r.SchedulingSteps ?? 0);
        double hostSeconds = result.Timed.Sum(m => m.HostSeconds);
        long stale = rows.Sum(r => r["stale_accesses"]), latent = rows.Sum(r => r["latent_stale_accesses"]);
        int checkedTrials = rows.Sum(r => r.CheckedTrials);
        AnsiConsole.MarkupLine($"{rows.Count} rows from {result.Timed.Count + result.Verification.Count} trials in {clock.Elapsed.TotalSeconds:0.0} s ({degree} at once); "
            + $"in {checkedTrials} checked trials: stale accesses {stale}, latent stale accesses {latent}");
        AnsiConsole.MarkupLine($"simulator cost: {(steps > 0 ? hostSeconds * 1e9 / steps : 0):0} host ns per scheduling step ({steps:N0} steps in {hostSeconds:0.0} host s of timed windows)");

        if (json != null)
        {
            PaperReport.WriteJson(json.FullName, rows);
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(json.FullName)}");
        }

        if (markdown != null)
        {
            File.WriteAllText(markdown.FullName, Markdown(rows, plan));
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(markdown.FullName)}");
        }

        if (plot != null)
        {
            Directory.CreateDirectory(plot.FullName);
            foreach (var chart in Charts(rows))
            {
                AnsiConsole.MarkupLine($"wrote {Markup.Escape(chart.Save(plot.FullName))}");
            }
        }

        foreach (var problem in problems)
        {
            AnsiConsole.MarkupLine($"[red]violation:[/] {Markup.Escape(problem)}");
        }

        return problems.Count == 0 && stale == 0 && latent == 0 ? 0 : 1;
    }

    /// <summary>The timed and verification trials of every cell, in plan order whatever order they ran in.</summary>
    public static (List<Measurement> Timed, List<Measurement> Verification) RunCells(PaperPlan plan, int degree, bool verify, bool verbose = false)
    {
        var cells = plan.Cells();
        var timed = new IReadOnlyList<Measurement>[cells.Count];
        var verification = new IReadOnlyList<Measurement>[cells.Count];
        int done = 0;
        Parallel.For(0, cells.Count, new ParallelOptions { MaxDegreeOfParallelism = degree }, i =>
        {
            var clock = Stopwatch.StartNew();
            verification[i] = verify ? PaperRunner.RunTrial(plan, cells[i], TrialSize.Check, isChecked: true) : [];
            double checkSeconds = clock.Elapsed.TotalSeconds;
            timed[i] = PaperRunner.RunTrial(plan, cells[i], plan.Size, plan.CheckedTiming);
            int n = Interlocked.Increment(ref done);
            if (verbose)
            {
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {cells[i]}: check {checkSeconds:0.00} s, timed {clock.Elapsed.TotalSeconds - checkSeconds:0.00} s"));
            }
            else if (n % 25 == 0 || n == cells.Count)
            {
                Console.Error.WriteLine($"  {n}/{cells.Count} cells");
            }
        });
        return ([.. timed.SelectMany(t => t)], [.. verification.SelectMany(t => t)]);
    }

    private static long QuantumNs(PaperPlan plan) => (long)(plan.Quantum ?? MachineOptions.DefaultQuantum).TotalNanoseconds;

    private static string LoadName(LoadForm load) => load == LoadForm.All ? PaperRow.AllLoad : PaperRow.PaperLoad;

    private static string Title(PaperRow row) => row.Load == PaperRow.AllLoad ? $"{row.Experiment} (every CPU works)" : row.Experiment;

    private static IEnumerable<IGrouping<(string Experiment, string Load, string Point), PaperRow>> Groups(IReadOnlyList<PaperRow> rows) =>
        rows.GroupBy(r => (r.Experiment, r.Load, r.Point));

    private static void PrintTables(IReadOnlyList<PaperRow> rows)
    {
        foreach (var group in Groups(rows))
        {
            var first = group.First();
            var cpus = group.Select(r => r.Cpus).Distinct().Order().ToList();
            var table = new Table().Border(TableBorder.Rounded)
                .Title($"[bold]{Markup.Escape(Title(first))}{(first.Point.Length > 0 ? $" [[{Markup.Escape(first.Point)}]]" : string.Empty)}[/]: {(first.Bytes > 0 ? "MiB/s" : "ops/s")} (virtual time, shootdowns by {first.Shootdown}); IPIs per {first.Unit}"
                    + (group.Any(r => r.ExposedCpuUsPerUnit is not null) ? $"; exposed CPU·µs per {first.Unit} (checked trial)" : string.Empty))
                .AddColumn("strategy");
            foreach (int c in cpus)
            {
                table.AddColumn(new TableColumn($"{c}").RightAligned());
            }

            foreach (var strategy in StrategyPalette.Ordered(group.Select(r => r.Strategy)))
            {
                var cellsOf = cpus.Select(c => group.FirstOrDefault(r => r.Strategy == strategy && r.Cpus == c))
                    .Select(r => r == null ? "-" : $"{PaperReport.Number(r.Throughput)}\n[grey]{PaperReport.Number(r["ipis_sent"] / r.Units)}[/]"
                        + (r.ExposedCpuUsPerUnit is { } us ? $"\n[yellow]{PaperReport.Number(us)}[/]" : string.Empty));
                table.AddRow([Markup.Escape(strategy), .. cellsOf]);
            }

            AnsiConsole.Write(table);
        }
    }

    /// <summary>Markdown: per experiment, throughput, IPIs and modelled cost per unit against the CPU count.</summary>
    public static string Markdown(IReadOnlyList<PaperRow> rows, PaperPlan plan)
    {
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"# perf scale: virtual time, cost profile {plan.Cost.Name}, quantum {QuantumNs(plan)} ns, shootdowns by {PaperRow.ShootdownName(plan.Shootdown)}");
        text.AppendLine();
        text.AppendLine("Every figure is virtual time: deterministic, one trial per cell, no interval.");
        foreach (var group in Groups(rows))
        {
            var first = group.First();
            var cpus = group.Select(r => r.Cpus).Distinct().Order().ToList();
            var tables = new List<(string, Func<PaperRow, double?>)>
            {
                (first.Bytes > 0 ? "MiB/s" : "ops/s", r => r.Throughput),
                ($"IPIs per {first.Unit}", r => r["ipis_sent"] / r.Units),
                ($"modelled mapping ns per {first.Unit}", r => r.ModelledNs),
            };
            if (first.Shootdown == PaperRow.BroadcastShootdown)
            {
                // Broadcast rows carry the instruction counts; their IPIs are only the strategies' own.
                tables.Add(($"broadcast invalidation instructions per {first.Unit}", r => r["broadcast_invalidations"] / r.Units));
                tables.Add(($"broadcast completion waits per {first.Unit}", r => r["broadcast_syncs"] / r.Units));
            }

            if (group.Any(r => r.ExposuresPerUnit is not null))
            {
                // From the checked verification trials (docs/output.md, "Exposure").
                tables.Add(($"exposures per {first.Unit} (checked trial)", r => r.ExposuresPerUnit));
                tables.Add(($"exposed CPU·µs per {first.Unit} (checked trial)", r => r.ExposedCpuUsPerUnit));
                tables.Add(("longest exposure window, µs (checked trial)", r => r.LongestExposureUs));
            }

            foreach (var (what, value) in tables)
            {
                text.AppendLine();
                string point = first.Point.Length > 0 ? $" [{first.Point}]" : string.Empty;
                text.AppendLine(CultureInfo.InvariantCulture, $"## {Title(first)}{point}: {what}");
                text.AppendLine();
                text.AppendLine("| strategy | " + string.Join(" | ", cpus.Select(c => c.ToString(CultureInfo.InvariantCulture))) + " |");
                text.AppendLine("|---|" + string.Concat(cpus.Select(_ => "---:|")));
                foreach (var strategy in StrategyPalette.Ordered(group.Select(r => r.Strategy)))
                {
                    var values = cpus.Select(c => group.FirstOrDefault(r => r.Strategy == strategy && r.Cpus == c) is { } r && value(r) is { } v ? PaperReport.Number(v) : "-");
                    text.AppendLine("| " + strategy + " | " + string.Join(" | ", values) + " |");
                }
            }

            var (tradeOffCpus, points) = ExposureFrontier.PointsOf([.. group]);
            if (points.Count > 0)
            {
                text.AppendLine();
                text.AppendLine(CultureInfo.InvariantCulture, $"Throughput-versus-exposure frontier of {Title(first)} at {tradeOffCpus} CPUs (no strategy has more throughput with less exposure): {string.Join(", ", ExposureFrontier.Of(points))}.");
            }
        }

        return text.ToString();
    }

    /// <summary>Per experiment and load: throughput, IPIs per unit and modelled cost per unit against the CPU count (log2 axis).</summary>
    public static IEnumerable<IChart> Charts(IReadOnlyList<PaperRow> rows)
    {
        foreach (var group in Groups(rows).Where(g => g.Key.Point.Length == 0))
        {
            var list = group.ToList();
            var first = list[0];
            string name = $"scale-{first.Experiment}{(first.Load == PaperRow.AllLoad ? "-all" : string.Empty)}";
            string context = $"virtual time, cost profile {first.CostProfile}, quantum {first.QuantumNs} ns";
            yield return Paper.Charts.AgainstCpus($"{name}-throughput.png",
                ChartText.Title($"{Title(first)}: {(first.Bytes > 0 ? "MiB/s" : "operations/s")}", context),
                first.Bytes > 0 ? "MiB/s" : "operations/s", list, r => r.Throughput, log2X: true);
            yield return Paper.Charts.AgainstCpus($"{name}-ipis.png",
                ChartText.Title($"{Title(first)}: IPIs sent per {first.Unit}", context),
                $"IPIs per {first.Unit}", list, r => r["ipis_sent"] / r.Units, log2X: true);
            yield return Paper.Charts.AgainstCpus($"{name}-modelled.png",
                ChartText.Title($"{Title(first)}: modelled mapping cost per {first.Unit}", context),
                $"ns per {first.Unit}", list, r => r.ModelledNs, log2X: true);
            if (TradeOff(list) is { } tradeOff)
            {
                yield return tradeOff;
            }
        }
    }
    /// <summary>
    /// Throughput against exposed CPU·µs per unit at <see cref="ExposureFrontier.PreferredCpus"/>
    /// CPUs (or the largest count), one point per strategy, the frontier joined; null when no
    /// checked trial measured exposed time.
    /// </summary>
    public static ExposureChart? TradeOff(IReadOnlyList<PaperRow> rows)
    {
        ArgumentNullException.ThrowIfNull(rows);
        var (cpus, points) = ExposureFrontier.PointsOf(rows);
        if (points.Count == 0)
        {
            return null;
        }

        var first = rows[0];
        var frontier = ExposureFrontier.Of(points);
        var strategies = StrategyPalette.Ordered(points.Select(p => p.Strategy));
        var styles = StrategyPalette.For(strategies);
        var series = strategies.Select(s => ChartSeries.Of(s, styles[s])).ToList();
        var plotted = points.Select(p => new TradeOffPoint(strategies.IndexOf(p.Strategy), p.Exposure, p.Throughput, frontier.Contains(p.Strategy))).ToList();
        string name = $"scale-{first.Experiment}{(first.Load == PaperRow.AllLoad ? "-all" : string.Empty)}-exposure.png";
        string context = $"{cpus} simulated CPUs, virtual time, cost profile {first.CostProfile}, shootdowns by {first.Shootdown}";
        return new ExposureChart(name, ChartText.Title($"{Title(first)}: throughput against exposure, one point per strategy", context),
            $"exposed CPU·µs per {first.Unit} (checked trial)", first.Bytes > 0 ? "MiB/s" : "operations/s", series, plotted);
    }
}
