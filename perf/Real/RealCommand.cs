using System.CommandLine;
using System.Runtime.InteropServices;
using System.Text.Json;
using Native.PageTable;
using Native.Perf.Paper;
using Native.SfBufNative;
using Spectre.Console;

namespace Native.Perf.Real;

/// <summary>
/// <c>perf real</c>: the paper's experiments that make sense on real hardware, run unchanged on
/// the host backend (the host's MMU and its real TLB shootdowns) for each strategy and CPU count,
/// in repeated trials with the strategies interleaved; medians with confidence intervals, paired
/// speedups over <c>original</c>, and the host kernel's own counts beside the remaps made.
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
        var quick = new Option<bool>("--quick") { Description = "Small sizes and 1 trial per cell, so no intervals (CI's smoke run, under a minute on 2 cores)" };
        var trials = new Option<int?>("--trials") { Description = "Trials per cell (default 5; 1 with --quick)" };
        var cpus = new Option<int[]>("--cpus")
        {
            Description = "CPU counts to run (at most the host's cores)",
            DefaultValueFactory = _ => [1, 2],
            AllowMultipleArgumentsPerToken = true,
        };
        var strategies = new Option<string[]>("--strategies")
        {
            Description = $"Strategies ({string.Join(", ", SfBufMapper.StrategyNames)})",
            DefaultValueFactory = _ => [.. SfBufMapper.StrategyNames],
            AllowMultipleArgumentsPerToken = true,
        };
        var experiments = new Option<string[]>("--experiments")
        {
            Description = $"Experiments (default {string.Join(", ", DefaultExperiments)}; any of {string.Join(", ", Experiments.Names)})",
            DefaultValueFactory = _ => [.. DefaultExperiments],
            AllowMultipleArgumentsPerToken = true,
        };
        var simulated = new Option<FileInfo?>("--simulated") { Description = "Rows of a perf paper run (--json) to compare the speedups with" };
        var json = new Option<FileInfo?>("--json") { Description = "Write every trial's row as JSON (perf paper's schema, backend \"host\")" };
        var markdown = new Option<FileInfo?>("--markdown") { Description = "Write the summary (and the comparison) as Markdown" };
        var plot = new Option<DirectoryInfo?>("--plot") { Description = "Write PNG charts into this directory" };
        var unchecked_ = new Option<bool>("--unchecked") { Description = "Turn checked mode's caller checks off" };
        var from = new Option<FileInfo?>("--rows") { Description = "Summarise the rows of an earlier perf real --json instead of measuring" };

        var command = new Command("real", "Run the experiments on the host's MMU (real TLB shootdowns): every strategy x CPU count, repeated trials.")
        {
            quick, trials, cpus, strategies, experiments, simulated, json, markdown, plot, unchecked_, from,
        };
        command.SetAction(parse =>
        {
            try
            {
                var chosen = parse.GetRequiredValue(strategies);
                foreach (var s in chosen.Where(s => !SfBufMapper.StrategyNames.Contains(s)))
                {
                    throw new ArgumentException($"unknown strategy '{s}'; known: {string.Join(", ", SfBufMapper.StrategyNames)}");
                }

                var names = parse.GetRequiredValue(experiments);
                foreach (var e in names.Where(e => !Experiments.Names.Contains(e)))
                {
                    throw new ArgumentException($"unknown experiment '{e}'; known: {string.Join(", ", Experiments.Names)}");
                }

                bool isQuick = parse.GetValue(quick);
                int n = parse.GetValue(trials) ?? (isQuick ? 1 : 5);
                if (n < 1)
                {
                    throw new ArgumentException("--trials must be at least 1");
                }

                var outputs = new Outputs(parse.GetValue(json), null, parse.GetValue(plot), parse.GetValue(markdown));
                if (parse.GetValue(from) is { } saved)
                {
                    var rows = PlotCommand.Load(saved.FullName);
                    var trialRoundTrips = rows.Select(r => Convert.ToDouble(r.Params.GetValueOrDefault("round_trip_ns", -1.0), System.Globalization.CultureInfo.InvariantCulture))
                        .Where(v => v > 0).Order().ToList();
                    var info = new RealRunInfo(
                        $"rows of {saved.Name}",
                        "as recorded",
                        "as recorded",
                        saved.LastWriteTimeUtc,
                        trialRoundTrips.Count > 0 ? trialRoundTrips[0] : null,
                        trialRoundTrips.Count > 0 ? trialRoundTrips[^1] : null,
                        "as recorded",
                        "as recorded",
                        rows.Select(RealSummary.Repetition).Distinct().Count(),
                        isQuick);
                    return Report(info, rows, parse.GetValue(simulated), outputs, elapsed: null);
                }

                var settings = new PaperSettings(CostModel.Zero, isQuick, !parse.GetValue(unchecked_), MachineBackend.Host);
                return Run(settings, n, names, chosen, parse.GetRequiredValue(cpus), parse.GetValue(simulated), outputs);
            }
            catch (ArgumentException ex)
            {
                AnsiConsole.MarkupLine($"[red bold]error:[/] {Markup.Escape(ex.Message)}");
                return 2;
            }
            catch (ExperimentFailedException ex)
            {
                AnsiConsole.MarkupLine($"[red bold]error:[/] {Markup.Escape(ex.Message)}");
                AnsiConsole.WriteException(ex.InnerException!, ExceptionFormats.ShortenPaths);
                return 1;
            }
        });
        return command;
    }

    /// <summary>Runs every trial; the rows, in the order they ran.</summary>
    public static List<PaperRow> RunTrials(PaperSettings settings, int trials, string[] experiments, string[] strategies, int[] cpuCounts, Action<string>? progress = null)
    {
        var rows = new List<PaperRow>();
        for (int rep = 0; rep < trials; rep++)
        {
            foreach (var e in experiments)
            {
                foreach (int c in cpuCounts)
                {
                    // The strategies of one cell run back to back, in an order that rotates with the
                    // repetition, so a slow phase of the host does not always hit the same strategy.
                    for (int k = 0; k < strategies.Length; k++)
                    {
                        string s = strategies[(k + rep) % strategies.Length];
                        progress?.Invoke($"trial {rep + 1}/{trials}: {e} {s} {c}cpu");
                        double? roundTrip = CrossCoreRoundTrip.Measure(roundTrips: 2000, batches: 5);
                        var trial = new Trial(settings, s, c);
                        List<PaperRow> produced;
                        try
                        {
                            produced = [.. Experiments.Run(e, trial)];
                        }
                        catch (Exception ex)
                        {
                            throw new ExperimentFailedException($"{e} with {s} on {c} CPU(s), trial {rep + 1}, failed: {ex.Message}", ex);
                        }

                        trial.Dispose();
                        foreach (var row in produced)
                        {
                            var parameters = new Dictionary<string, object>(row.Params, StringComparer.Ordinal)
                            {
                                ["trial"] = rep,
                                ["round_trip_ns"] = roundTrip is double rt ? Math.Round(rt, 1) : -1.0,
                            };
                            rows.Add(row with { Params = parameters });
                        }
                    }
                }
            }
        }

        return rows;
    }

    /// <summary>The host, as the run records it.</summary>
    public static RealRunInfo Describe(int trials, bool quick, double? roundTripStart, double? roundTripEnd) => new(
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
        trials,
        quick);

    private static int Run(PaperSettings settings, int trials, string[] experiments, string[] strategies, int[] cpuCounts, FileInfo? simulatedFile, Outputs outputs)
    {
        if (!HostBackend.IsAvailable)
        {
            AnsiConsole.MarkupLine($"[yellow bold]perf real:[/] the host backend is unavailable here: {Markup.Escape(HostBackend.UnavailableReason!)}. Nothing was measured.");
            return Unavailable;
        }

        var runnable = cpuCounts.Where(c => c >= 1 && c <= HostBackend.HostCores).Distinct().Order().ToArray();
        foreach (int c in cpuCounts.Except(runnable))
        {
            AnsiConsole.MarkupLine($"[yellow]skipping {c} CPU(s):[/] the host backend needs one host core per CPU and this process may use {HostBackend.HostCores}");
        }

        if (runnable.Length == 0)
        {
            throw new ArgumentException("no CPU count asked for can run on this host");
        }

        AnsiConsole.MarkupLine($"[bold]perf real[/]{(settings.Quick ? " --quick" : string.Empty)}: {experiments.Length} experiments x {strategies.Length} strategies x cpus {string.Join(",", runnable)} x {trials} trial(s), on the host MMU");
        double? roundTripStart = CrossCoreRoundTrip.Measure();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        List<PaperRow> rows = [];
        int total = trials * experiments.Length * strategies.Length * runnable.Length;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("trials", maxValue: total);
                rows = RunTrials(settings, trials, experiments, strategies, runnable, description =>
                {
                    if (task.Description.Length > 0 && description != task.Description)
                    {
                        task.Increment(1);
                    }

                    task.Description = description;
                });
                task.Increment(1);
            });
        double? roundTripEnd = CrossCoreRoundTrip.Measure();
        if (outputs.Json != null)
        {
            // Written first: a run is too long to lose to a later failure.
            File.WriteAllText(outputs.Json.FullName, JsonSerializer.Serialize(rows, s_json));
            AnsiConsole.WriteLine($"wrote {Shown(outputs.Json.FullName)}");
        }

        return Report(Describe(trials, settings.Quick, roundTripStart, roundTripEnd), rows, simulatedFile, outputs with { Json = null }, clock.Elapsed);
    }

    /// <summary>Prints and writes the summaries of <paramref name="rows"/>; non-zero when an invariant fails.</summary>
    private static int Report(RealRunInfo info, List<PaperRow> rows, FileInfo? simulatedFile, Outputs outputs, TimeSpan? elapsed)
    {
        var (json, _, plot, markdown) = outputs;
        foreach (var line in info.Lines())
        {
            AnsiConsole.WriteLine(line);
        }

        var cells = RealSummary.Cells(rows);
        RealReport.PrintTables(cells);
        var comparison = simulatedFile == null ? null : RealReport.Compare(cells, PlotCommand.Load(simulatedFile.FullName));
        if (comparison != null)
        {
            RealReport.PrintComparison(comparison);
        }

        if (json != null)
        {
            File.WriteAllText(json.FullName, JsonSerializer.Serialize(rows, s_json));
            AnsiConsole.WriteLine($"wrote {Shown(json.FullName)}");
        }

        if (markdown != null)
        {
            RealReport.WriteMarkdown(markdown.FullName, info, cells, comparison);
            AnsiConsole.WriteLine($"wrote {Shown(markdown.FullName)}");
        }

        if (plot != null)
        {
            foreach (var file in RealCharts.Write(plot.FullName, cells, comparison))
            {
                AnsiConsole.WriteLine($"wrote {Shown(file)}");
            }
        }

        var problems = RealSummary.Check(rows);
        AnsiConsole.WriteLine($"{rows.Count} trials{(elapsed is { } e ? $" in {e.TotalSeconds:0.0} s" : string.Empty)}");
        if (problems.Count > 0)
        {
            AnsiConsole.MarkupLine("[red bold]invariant violations:[/]");
            problems.ForEach(p => AnsiConsole.WriteLine($"  {p}"));
            return 1;
        }

        AnsiConsole.MarkupLine("[green]all invariants hold[/] (one host mmap per kernel PTE write; the direct map remaps nothing; sf_buf private users never unmap)");
        return 0;
    }

    private static readonly JsonSerializerOptions s_json = new() { WriteIndented = true };

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
