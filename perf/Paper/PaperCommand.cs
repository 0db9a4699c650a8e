using System.CommandLine;
using Native.PageTable;
using Native.SfBufNative;
using Spectre.Console;

namespace Native.Perf.Paper;

/// <summary>
/// <c>perf paper</c>: the main job. Runs each experiment for each strategy and CPU count on the
/// embedded default machine and prints the results side by side, the comparison with the original
/// mechanisms, and the invariant checks; optionally JSON, CSV and PNG charts.
/// </summary>
internal static class PaperCommand
{
    public static Command Create()
    {
        var quick = new Option<bool>("--quick") { Description = "All experiments at small sizes (under a minute on 2 cores)" };
        var cpus = new Option<int[]>("--cpus")
        {
            Description = "CPU counts to run",
            DefaultValueFactory = _ => [1, 2],
            AllowMultipleArgumentsPerToken = true,
        };
        var strategies = new Option<string[]>("--strategies")
        {
            Description = $"Strategies ({string.Join(", ", SfBufMapper.StrategyNames)}), or all; default the paper's three",
            DefaultValueFactory = _ => [.. SfBufMapper.PaperStrategyNames],
            AllowMultipleArgumentsPerToken = true,
        };
        var peers = new Option<bool>("--peers") { Description = $"Add the peers ({string.Join(", ", SfBufMapper.PeerNames)}) to the strategies" };
        var experiments = new Option<string[]>("--experiments")
        {
            Description = $"Experiments ({string.Join(", ", Experiments.Names)}; groups: {string.Join(", ", Experiments.Groups.Keys)})",
            DefaultValueFactory = _ => [.. Experiments.Names],
            AllowMultipleArgumentsPerToken = true,
        };
        var cost = new Option<string>("--cost")
        {
            Description = "Cost profile: zero, default, or host (written by perf calibrate)",
            DefaultValueFactory = _ => CostModel.Default.Name,
        };
        var json = new Option<FileInfo?>("--json") { Description = "Write the rows as JSON" };
        var csv = new Option<FileInfo?>("--csv") { Description = "Write the rows as CSV" };
        var plot = new Option<DirectoryInfo?>("--plot") { Description = "Write PNG charts into this directory" };
        var markdown = new Option<FileInfo?>("--markdown") { Description = "Write a Markdown results table" };
        var unchecked_ = new Option<bool>("--unchecked") { Description = "Turn the stale-translation oracle off (stale_accesses is then not measured)" };

        var command = new Command("paper", "Reproduce the paper's evaluation: every experiment x strategy x CPU count.")
        {
            quick, cpus, strategies, peers, experiments, cost, json, csv, plot, markdown, unchecked_,
        };
        command.SetAction(parse =>
        {
            try
            {
                var names = Expand(parse.GetRequiredValue(experiments));
                var chosen = ChooseStrategies(parse.GetRequiredValue(strategies), parse.GetValue(peers));

                var settings = new PaperSettings(CostProfiles.Load(parse.GetRequiredValue(cost)), parse.GetValue(quick), !parse.GetValue(unchecked_));
                return Run(settings, names, chosen, parse.GetRequiredValue(cpus), new Outputs(parse.GetValue(json), parse.GetValue(csv), parse.GetValue(plot), parse.GetValue(markdown)));
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

    private static int Run(PaperSettings settings, string[] experiments, string[] strategies, int[] cpuCounts, Outputs outputs)
    {
        var (json, csv, plot, markdown) = outputs;
        var defaults = new MachineOptions();
        AnsiConsole.MarkupLine($"[bold]perf paper[/]{(settings.Quick ? " --quick" : string.Empty)}: {experiments.Length} experiments x {strategies.Length} strategies x cpus {string.Join(",", cpuCounts)}");
        AnsiConsole.WriteLine($"machine: default ({defaults.PhysicalMemoryBytes >> 20} MiB, {defaults.TlbEntries}-entry {defaults.TlbWays}-way TLBs, nsfbufs {defaults.DefaultNsfbufs}), "
            + $"host {Environment.ProcessorCount} cores, checked mode {(settings.Checked ? "on" : "off")}");
        AnsiConsole.WriteLine($"cost profile: {settings.Cost}");
        AnsiConsole.WriteLine($"  source: {settings.Cost.Source}");

        var rows = new List<PaperRow>();
        var jobs = (from e in experiments from s in strategies from c in cpuCounts select (e, s, c)).ToArray();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("experiments", maxValue: jobs.Length);
                foreach (var (e, s, c) in jobs)
                {
                    task.Description = $"{e} {s} {c}cpu";
                    var trial = new Trial(settings, s, c);
                    try
                    {
                        rows.AddRange(Experiments.Run(e, trial));
                    }
                    catch (Exception ex)
                    {
                        throw new ExperimentFailedException($"{e} with {s} on {c} CPU(s) failed: {ex.Message}", ex);
                    }

                    // Only a clean run is torn down; after a failure its threads may still be blocked.
                    trial.Dispose();
                    task.Increment(1);
                }
            });

        PaperReport.PrintTables(rows);
        PaperReport.PrintComparison(rows);
        if (json != null)
        {
            PaperReport.WriteJson(json.FullName, rows);
            AnsiConsole.WriteLine($"wrote {Shown(json.FullName)}");
        }

        if (csv != null)
        {
            PaperReport.WriteCsv(csv.FullName, rows);
            AnsiConsole.WriteLine($"wrote {Shown(csv.FullName)}");
        }

        if (markdown != null)
        {
            PaperReport.WriteMarkdown(markdown.FullName, rows);
            AnsiConsole.WriteLine($"wrote {Shown(markdown.FullName)}");
        }

        if (plot != null)
        {
            foreach (var file in Charts.Write(plot.FullName, rows))
            {
                AnsiConsole.WriteLine($"wrote {Shown(file)}");
            }
        }

        var problems = PaperReport.Check(rows);
        AnsiConsole.WriteLine($"{rows.Count} rows in {clock.Elapsed.TotalSeconds:0.0} s; stale accesses: {rows.Sum(r => r["stale_accesses"])}");
        if (problems.Count > 0)
        {
            AnsiConsole.MarkupLine("[red bold]invariant violations:[/]");
            problems.ForEach(p => AnsiConsole.WriteLine($"  {p}"));
            return 1;
        }

        AnsiConsole.MarkupLine("[green]all invariants hold[/] (0 stale accesses; direct map: 0 PTE writes, 0 shootdowns; i386 private users: 0 IPIs; original: >= 2 shootdowns per mapping on SMP; hot sendfile: i386 <= 1% of original's shootdowns"
            + (strategies.Any(s => SfBufMapper.Describe(s).IsPeer) ? "; and each peer's own counts, see PaperReport.CheckPeer)" : ")"));
        return 0;
    }

    /// <summary>
    /// The strategies to run, in the order results list them: the names given (<c>all</c> for
    /// every one), plus the peers with <c>--peers</c>.
    /// </summary>
    internal static string[] ChooseStrategies(string[] names, bool peers)
    {
        var wanted = new HashSet<string>(StringComparer.Ordinal);
        foreach (var name in names)
        {
            if (name == "all")
            {
                wanted.UnionWith(SfBufMapper.StrategyNames);
            }
            else if (SfBufMapper.StrategyNames.Contains(name))
            {
                wanted.Add(name);
            }
            else
            {
                throw new ArgumentException($"unknown strategy '{name}'; known: {string.Join(", ", SfBufMapper.StrategyNames)}, all");
            }
        }

        if (peers)
        {
            wanted.UnionWith(SfBufMapper.PeerNames);
        }

        return [.. SfBufMapper.StrategyNames.Where(wanted.Contains)];
    }

    /// <summary>A written file's path relative to the working directory, as the user named it.</summary>
    private static string Shown(string path) => Path.GetRelativePath(Environment.CurrentDirectory, path);

    private static string[] Expand(string[] names)
    {
        var result = new List<string>();
        foreach (var name in names)
        {
            if (Experiments.Groups.TryGetValue(name, out var members))
            {
                result.AddRange(members);
            }
            else if (Experiments.Names.Contains(name))
            {
                result.Add(name);
            }
            else
            {
                throw new ArgumentException($"unknown experiment '{name}'; known: {string.Join(", ", Experiments.Names)}");
            }
        }

        return [.. result.Distinct()];
    }
}

/// <summary>An experiment threw; carries which one.</summary>
internal sealed class ExperimentFailedException(string message, Exception inner) : Exception(message, inner);

/// <summary>The files <c>perf paper</c> writes besides the terminal output.</summary>
internal sealed record Outputs(FileInfo? Json, FileInfo? Csv, DirectoryInfo? Plot, FileInfo? Markdown);
