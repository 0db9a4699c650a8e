using System.CommandLine;
using System.Runtime.InteropServices;
using Native.PageTable;
using Native.Perf.Paper;
using Native.SfBufNative;
using Spectre.Console;

namespace Native.Perf.Real;

/// <summary>
/// <c>perf real</c>: the paper's experiments that make sense on real hardware, run unchanged on
/// the host backend (the host's MMU and its real TLB shootdowns) for each strategy and CPU count,
/// by <c>perf paper</c>'s own runner: repeated rounds with the strategies interleaved, medians
/// with within-run confidence intervals, paired speedups over <c>original</c>, every trial's relations
/// checked; beside them the host kernel's own counts and the cross-core round trip.
/// </summary>
internal static class RealCommand
{
    /// <summary>Exit code when the host backend cannot run here (nothing was measured).</summary>
    public const int Unavailable = 3;

    /// <summary>
    /// The experiments run by default: pipe (64 KiB direct writes between two pinned threads), the
    /// cache-defeating pipe, md's private copies, ptrace's page access, and sendfile's shared use
    /// with the NIC consumer on the other core.
    /// </summary>
    public static readonly string[] DefaultExperiments = ["pipe", "pipe-huge", "md-seq", "md-rand", "ptrace-page", "sendfile-hot", "sendfile-cold"];

    public static Command Create()
    {
        var quick = new Option<bool>("--quick") { Description = "Small sizes and one timed trial per cell, so no intervals (CI's smoke run, under a minute on 2 cores)" };
        var repeat = new Option<int?>("--repeat") { Description = "Timed trials per cell, interleaved across strategies (default 5; 1 with --quick)" };
        var cpus = new Option<int[]>("--cpus")
        {
            Description = "CPU counts to run (at most the host's cores)",
            DefaultValueFactory = _ => [1, 2],
            AllowMultipleArgumentsPerToken = true,
        };
        var strategies = new Option<string[]>("--strategies")
        {
            Description = $"Strategies ({string.Join(", ", SfBufMapper.StrategyNames.Where(s => SfBufMapper.Describe(s).RunsOnHost))}), or all; default the paper's three. "
                + "The other peers are refused on the host backend, each with its reason",
            DefaultValueFactory = _ => [.. SfBufMapper.PaperStrategyNames],
            AllowMultipleArgumentsPerToken = true,
        };
        var peers = new Option<bool>("--peers") { Description = "Add the peers that run on the host backend to the strategies (the others are reported and left out)" };
        var experiments = new Option<string[]>("--experiments")
        {
            Description = $"Experiments (default {string.Join(", ", DefaultExperiments)}; any of {string.Join(", ", Experiments.Names)})",
            DefaultValueFactory = _ => [.. DefaultExperiments],
            AllowMultipleArgumentsPerToken = true,
        };
        var model = new Option<string>("--model")
        {
            Description = "Cost profile the modelled mapping cost of the strategies' counts is priced with (nothing is charged: the costs are the host's)",
            DefaultValueFactory = _ => CostModel.Default.Name,
        };
        var inProcess = new Option<bool>("--in-process") { Description = "Run every round in this process instead of one process per round" };
        var simulated = new Option<FileInfo?>("--simulated") { Description = "Rows of a perf paper run (--json) to compare the speedups with" };
        var json = new Option<FileInfo?>("--json") { Description = "Write the rows as JSON (perf paper's schema, backend \"host\")" };
        var markdown = new Option<FileInfo?>("--markdown") { Description = "Write the summary (and the comparison) as Markdown" };
        var plot = new Option<DirectoryInfo?>("--plot") { Description = "Write PNG charts into this directory" };
        var rowsFile = new Option<FileInfo?>("--rows") { Description = "Summarise the rows of an earlier perf real --json instead of measuring" };

        var command = new Command("real", "Run the experiments on the host's MMU (real TLB shootdowns): every strategy x CPU count, repeated.")
        {
            quick, repeat, cpus, strategies, peers, experiments, model, inProcess, simulated, json, markdown, plot, rowsFile,
        };
        command.SetAction(parse =>
        {
            return PaperCommand.Reporting(() =>
            {
                bool isQuick = parse.GetValue(quick);
                if (parse.GetValue(rowsFile) is { } saved)
                {
                    var rows = PlotCommand.Load(saved.FullName);
                    return Report(FromRows(saved, rows, isQuick), rows, [], [], parse.GetValue(simulated), parse.GetValue(json), parse.GetValue(markdown), parse.GetValue(plot));
                }

                if (!HostBackend.IsAvailable)
                {
                    AnsiConsole.MarkupLine($"[yellow bold]perf real:[/] the host backend is unavailable here: {Markup.Escape(HostBackend.UnavailableReason!)}. Nothing was measured.");
                    return Unavailable;
                }

                int rounds = parse.GetValue(repeat) ?? (isQuick ? 1 : 5);
                if (rounds < 1)
                {
                    throw new ArgumentException("--repeat needs at least 1 trial per cell");
                }

                var named = parse.GetRequiredValue(strategies);
                var chosen = PaperCommand.OnHost(PaperCommand.ChooseStrategies(named, parse.GetValue(peers)), named);

                var runnable = Runnable(parse.GetRequiredValue(cpus));
                var plan = new PaperPlan(
                    Experiments.Expand(parse.GetRequiredValue(experiments)),
                    chosen,
                    runnable,
                    CostModel.Zero,
                    CostProfiles.Load(parse.GetRequiredValue(model)),
                    isQuick ? TrialSize.Quick : TrialSize.Full,
                    rounds,
                    CheckedTiming: false,
                    MachineBackend.Host);
                return Run(plan, !parse.GetValue(inProcess), parse.GetValue(simulated), parse.GetValue(json), parse.GetValue(markdown), parse.GetValue(plot));
            });
        });
        return command;
    }

    /// <summary>The host, as a run records it.</summary>
    public static RealRunInfo Describe(int rounds, bool quick, double? roundTripStart, double? roundTripEnd) => new(
        Environment.MachineName,
        CpuModel(),
        Kernel(),
        DateTime.UtcNow,
        roundTripStart,
        roundTripEnd,
        HostBackend.CanCountFlushes
            ? "tlb:tlb_flush per kernel thread (perf_event_open): sent = remote flushes the host kernel started in our remaps; received = flush IPIs handled while our threads ran"
            : $"unavailable: {HostBackend.FlushCountUnavailableReason}",
        HostInterrupts.IsAvailable ? "/proc/interrupts TLB line, system-wide, on the machine's host cores" : "no TLB line in /proc/interrupts",
        rounds,
        quick);

    /// <summary>Prints and writes the summaries of <paramref name="rows"/>; non-zero when a relation failed.</summary>
    public static int Report(RealRunInfo info, IReadOnlyList<PaperRow> rows, IReadOnlyList<string> problems, IReadOnlyList<string> warnings,
        FileInfo? simulatedFile, FileInfo? json, FileInfo? markdown, DirectoryInfo? plot)
    {
        foreach (var line in info.Lines())
        {
            AnsiConsole.WriteLine(line);
        }

        RealReport.PrintTables(rows);
        var simulatedRows = simulatedFile == null ? null : PlotCommand.Load(simulatedFile.FullName);
        var comparison = simulatedRows == null ? null : RealReport.Compare(rows, simulatedRows);
        if (comparison != null)
        {
            RealReport.PrintComparison(comparison);
        }

        if (json != null)
        {
            PaperReport.WriteJson(json.FullName, rows);
            AnsiConsole.WriteLine($"wrote {Shown(json.FullName)}");
        }

        if (markdown != null)
        {
            RealReport.WriteMarkdown(markdown.FullName, info, rows, comparison);
            AnsiConsole.WriteLine($"wrote {Shown(markdown.FullName)}");
        }

        if (plot != null)
        {
            foreach (var file in RealCharts.Write(plot.FullName, rows, comparison, simulatedRows))
            {
                AnsiConsole.WriteLine($"wrote {Shown(file)}");
            }
        }

        foreach (var warning in warnings)
        {
            AnsiConsole.MarkupLine($"[yellow bold]warning:[/] {Markup.Escape(warning)}");
        }

        if (problems.Count > 0)
        {
            AnsiConsole.MarkupLine("[red bold]invariant violations:[/]");
            foreach (var p in problems)
            {
                AnsiConsole.WriteLine($"  {p}");
            }

            return 1;
        }

        if (!info.FromRows)
        {
            AnsiConsole.MarkupLine("[green]all invariants hold[/] in every trial: every kernel PTE write one host mmap; the direct map remaps nothing; "
                + "sf_buf's private users never unmap; original asks for exactly the shootdown rounds its mechanisms imply; and each experiment's own relations");
        }

        return 0;
    }

    private static int Run(PaperPlan plan, bool childProcesses, FileInfo? simulatedFile, FileInfo? json, FileInfo? markdown, DirectoryInfo? plot)
    {
        int cells = plan.Cells().Count;
        AnsiConsole.MarkupLine($"[bold]perf real[/]{(plan.Size == TrialSize.Quick ? " --quick" : string.Empty)}: {plan.Experiments.Length} experiments x {plan.Strategies.Length} strategies x cpus {string.Join(",", plan.CpuCounts)}"
            + $" = {cells} cells, {plan.Rounds} timed trial(s) each, on the host MMU; rounds {(childProcesses ? "each in a fresh process" : "in this process")}");
        double? roundTripStart = CrossCoreRoundTrip.Measure();
        PaperRun run = null!;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("trials", maxValue: cells * plan.Rounds);
                run = PaperRunner.Run(plan, childProcesses, done =>
                {
                    task.Description = done;
                    task.Increment(1);
                });
            });
        double? roundTripEnd = CrossCoreRoundTrip.Measure();
        int status = Report(Describe(plan.Rounds, plan.Size == TrialSize.Quick, roundTripStart, roundTripEnd), run.Rows, run.Problems, run.Warnings,
            simulatedFile, json, markdown, plot);
        AnsiConsole.WriteLine($"{run.Rows.Count} rows from {run.Timed.Count} trials in {run.Elapsed.TotalSeconds:0.0} s");
        return status;
    }

    private static int[] Runnable(int[] asked)
    {
        var runnable = asked.Where(c => c >= 1 && c <= HostBackend.HostCores).Distinct().Order().ToArray();
        foreach (int c in asked.Except(runnable))
        {
            AnsiConsole.MarkupLine($"[yellow]skipping {c} CPU(s):[/] the host backend runs one CPU per host core and this process may use {HostBackend.HostCores}");
        }

        return runnable.Length > 0 ? runnable : throw new ArgumentException("no CPU count asked for can run on this host");
    }

    private static RealRunInfo FromRows(FileInfo saved, List<PaperRow> rows, bool quick)
    {
        var roundTrips = rows.Select(r => JsonValues.Number(r.Params.GetValueOrDefault("round_trip_ns")) ?? -1).Where(v => v > 0).Order().ToList();
        return new RealRunInfo(
            $"rows of {saved.Name}",
            "as recorded",
            "as recorded",
            saved.LastWriteTimeUtc,
            roundTrips.Count > 0 ? roundTrips[0] : null,
            roundTrips.Count > 0 ? roundTrips[^1] : null,
            "as recorded",
            "as recorded",
            rows.Count == 0 ? 0 : rows.Max(r => Math.Max(1, r.Samples.Count)),
            quick);
    }

    private static string Shown(string path) => Path.GetRelativePath(Environment.CurrentDirectory, path);

    private static string Kernel()
    {
        try
        {
            return $"Linux {File.ReadAllText("/proc/sys/kernel/osrelease").Trim()} ({RuntimeInformation.OSDescription}), .NET {Environment.Version}";
        }
        catch (IOException)
        {
            return RuntimeInformation.OSDescription;
        }
    }

    private static string CpuModel()
    {
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
            return $"{line?.Split(':', 2)[1].Trim() ?? "unknown CPU"}, {HostBackend.HostCores} cores for this process";
        }
        catch (IOException)
        {
            return $"{HostBackend.HostCores} cores";
        }
    }
}
