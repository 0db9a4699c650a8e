using System.CommandLine;
using Native.PageTable;
using Native.Perf.Stats;
using Native.SfBufNative;
using Spectre.Console;

namespace Native.Perf.Paper;

/// <summary>
/// <c>perf paper</c>: the main job. Runs each experiment for each strategy and CPU count on the
/// embedded default machine, repeated and interleaved, and prints the results side by side with
/// their statistics, the comparison with the original mechanisms, warnings and the checks of
/// every trial's exact relations; optionally JSON, CSV, Markdown and PNG charts.
/// </summary>
internal static class PaperCommand
{
    public static Command Create()
    {
        var options = new PlanOptions();
        var repeat = new Option<int?>("--repeat") { Description = "Timed trials per cell, interleaved across strategies (default 5; 3 with --quick)" };
        var inProcess = new Option<bool>("--in-process") { Description = "Run every round in this process instead of one process per round" };
        var json = new Option<FileInfo?>("--json") { Description = "Write the rows as JSON" };
        var csv = new Option<FileInfo?>("--csv") { Description = "Write the rows as CSV" };
        var plot = new Option<DirectoryInfo?>("--plot") { Description = "Write PNG charts into this directory" };
        var markdown = new Option<FileInfo?>("--markdown") { Description = "Write Markdown results tables" };

        var command = new Command("paper", "Reproduce the paper's evaluation: every experiment x strategy x CPU count, repeated.")
        {
            options.Quick, options.Cpus, options.Strategies, options.Peers, options.Experiments, options.Cost, options.Model, options.Checked, options.Backend, options.Host,
            options.Time, options.Quantum, options.Load, options.Shootdown, repeat, inProcess, json, csv, plot, markdown,
        };
        command.SetAction(parse =>
        {
            return PaperCommand.Reporting(() =>
            {
                bool quick = parse.GetValue(options.Quick);
                int rounds = parse.GetValue(repeat) ?? (quick ? 3 : 5);
                if (rounds < 1)
                {
                    throw new ArgumentException("--repeat needs at least 1 trial per cell");
                }

                var plan = options.Plan(parse, quick ? TrialSize.Quick : TrialSize.Full, rounds);

                // Virtual time is deterministic: one round, in this process.
                return Run(plan, !plan.IsVirtual && !parse.GetValue(inProcess), new Outputs(parse.GetValue(json), parse.GetValue(csv), parse.GetValue(plot), parse.GetValue(markdown)));
            });
        });
        return command;
    }

    private static int Run(PaperPlan plan, bool childProcesses, Outputs outputs)
    {
        var (json, csv, plot, markdown) = outputs;
        var defaults = new MachineOptions();
        int cells = plan.Cells().Count;
        AnsiConsole.MarkupLine($"[bold]perf paper[/]{(plan.Size == TrialSize.Quick ? " --quick" : string.Empty)}: {plan.Experiments.Length} experiments x {plan.Strategies.Length} strategies x cpus {string.Join(",", plan.CpuCounts)}"
            + $" = {cells} cells, {plan.Rounds} timed trials each{(plan.Verify ? " + 1 checked verification trial" : string.Empty)}");
        AnsiConsole.WriteLine($"machine: default ({defaults.PhysicalMemoryBytes >> 20} MiB, {defaults.TlbEntries}-entry {defaults.TlbWays}-way TLBs, nsfbufs {defaults.DefaultNsfbufs}), "
            + $"host {PaperRunner.HostCores} cores {(plan.SharedHost && plan.Backend == MachineBackend.Simulated ? "(shared: threads unpinned, parking after 5 us)" : "(threads pinned)")}; timed trials {(plan.CheckedTiming ? "checked (oracle on)" : "unchecked (oracle off; verified by a checked trial per cell at reduced size)")}; "
            + $"rounds {(childProcesses ? "each in a fresh process" : "in this process")}, strategies rotated within a round");
        AnsiConsole.WriteLine($"shootdowns: {PaperReport.ShootdownText(PaperRow.ShootdownName(plan.Shootdown))}");
        AnsiConsole.WriteLine($"cost profile: {plan.Cost}");
        AnsiConsole.WriteLine($"  source: {plan.Cost.Source}");
        AnsiConsole.WriteLine($"modelled mapping cost priced with: {plan.Model.Name}; statistics: {SampleSummary.CiMethod}");

        PaperRun run = null!;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("trials", maxValue: cells * (plan.Rounds + (plan.Verify ? 1 : 0)));
                run = PaperRunner.Run(plan, childProcesses, done =>
                {
                    task.Description = done;
                    task.Increment(1);
                });
            });

        var rows = run.Rows;
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

        foreach (var warning in run.Warnings)
        {
            AnsiConsole.MarkupLine($"[yellow bold]warning:[/] {Markup.Escape(warning)}");
        }

        int trials = run.Timed.Count + run.Verification.Count;
        var all = run.Verification.Concat(run.Timed).ToList();
        long stale = all.Sum(m => m["stale_accesses"]);
        long latent = all.Sum(m => m["latent_stale_accesses"]);
        int checkedTrials = all.Count(m => m.Checked);
        AnsiConsole.WriteLine($"{rows.Count} rows from {trials} trials in {run.Elapsed.TotalSeconds:0.0} s; in {checkedTrials} checked trials: stale accesses {stale}, latent stale accesses {latent}");
        if (run.Problems.Count > 0)
        {
            AnsiConsole.MarkupLine("[red bold]invariant violations:[/]");
            run.Problems.ForEach(p => AnsiConsole.WriteLine($"  {p}"));
            return 1;
        }

        AnsiConsole.MarkupLine($"[green]all invariants hold[/] in every trial: 0 stale and 0 latent stale accesses; every kernel PTE write a recorded mapping; "
            + "per strategy what its registry entry declares: per-use mapping (original): exactly the shootdown rounds its mechanisms imply, IPIs = rounds x (N-1) less idle deferrals; "
            + "direct map: no mapping; the others: one mapping per miss; no IPI for private users where private mappings shoot nothing down; "
            + "shootdowns only from the counter a strategy declares; the mechanisms' own counters (PaperChecks); "
            + "and each experiment's own relations");
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

    /// <summary>
    /// The strategies of <paramref name="chosen"/> that run on the host backend. One named
    /// explicitly that does not is an error with its reason; those that came with <c>all</c> or
    /// <c>--peers</c> are left out, each reported with its reason.
    /// </summary>
    internal static string[] OnHost(string[] chosen, string[] named)
    {
        foreach (var info in chosen.Select(SfBufMapper.Describe).Where(i => !i.RunsOnHost))
        {
            if (named.Contains(info.Name))
            {
                throw new ArgumentException($"{info.Name} does not run on the host backend: {info.NotOnHost}");
            }

            Console.Error.WriteLine($"note: {info.Name} left out on the host backend: {info.NotOnHost}");
        }

        var runnable = chosen.Where(s => SfBufMapper.Describe(s).RunsOnHost).ToArray();
        return runnable.Length > 0 ? runnable : throw new ArgumentException("none of the chosen strategies runs on the host backend");
    }

    /// <summary>Runs a command's body, reporting bad options (exit 2) and a failed experiment (exit 1, with its cause).</summary>
    public static int Reporting(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (ArgumentException ex)
        {
            AnsiConsole.MarkupLine($"[red bold]error:[/] {Markup.Escape(ex.Message)}");
            return 2;
        }
        catch (ExperimentFailedException ex)
        {
            AnsiConsole.MarkupLine($"[red bold]error:[/] {Markup.Escape(ex.Message)}");
            if (ex.InnerException is { } inner)
            {
                AnsiConsole.WriteException(inner, ExceptionFormats.ShortenPaths);
            }

            return 1;
        }
    }

    /// <summary>A written file's path relative to the working directory, as the user named it.</summary>
    private static string Shown(string path) => Path.GetRelativePath(Environment.CurrentDirectory, path);
}

/// <summary>The options <c>perf paper</c> and <c>perf paper-round</c> share: what to run and how.</summary>
internal sealed class PlanOptions
{
    public Option<bool> Quick { get; } = new("--quick") { Description = "All experiments at small sizes (under a minute on 2 cores)" };

    public Option<int[]> Cpus { get; } = new("--cpus")
    {
        Description = "CPU counts to run (more than the host's cores run oversubscribed, unpinned)",
        DefaultValueFactory = _ => [1, 2],
        AllowMultipleArgumentsPerToken = true,
    };

    public Option<string[]> Strategies { get; } = new("--strategies")
    {
        Description = $"Strategies ({string.Join(", ", SfBufMapper.StrategyNames)}), or all; default the paper's three",
        DefaultValueFactory = _ => [.. SfBufMapper.PaperStrategyNames],
        AllowMultipleArgumentsPerToken = true,
    };

    public Option<bool> Peers { get; } = new("--peers") { Description = $"Add the peers ({string.Join(", ", SfBufMapper.PeerNames)}) to the strategies" };

    public Option<string[]> Experiments { get; } = new("--experiments")
    {
        Description = $"Experiments ({string.Join(", ", Paper.Experiments.Names)}; groups: {string.Join(", ", Paper.Experiments.Groups.Keys)})",
        DefaultValueFactory = _ => [.. Paper.Experiments.Names],
        AllowMultipleArgumentsPerToken = true,
    };

    public Option<string> Cost { get; } = new("--cost")
    {
        Description = "Cost profile the machine charges: zero, default, or host (written by perf calibrate)",
        DefaultValueFactory = _ => CostModel.Default.Name,
    };

    public Option<string?> Model { get; } = new("--model")
    {
        Description = "Cost profile the modelled mapping cost is priced with (default: --cost, or default when --cost is zero)",
    };

    public Option<bool> Checked { get; } = new("--checked") { Description = "Time with the stale-translation oracle on (slower; no separate verification trial)" };

    public Option<HostMode> Host { get; } = new("--host")
    {
        Description = "dedicated: pin the simulated CPUs' threads to host cores; shared: other processes keep the cores busy, so run unpinned and park early, "
            + "as on an oversubscribed host; auto (default): shared when other processes keep a quarter of a core busy in a 250 ms sample at the start",
        DefaultValueFactory = _ => HostMode.Auto,
    };

    public Option<MachineBackend> Backend { get; } = new("--backend")
    {
        Description = "Machine backend: simulated, or host (the host's MMU, Linux x64; nothing is charged there and --cost prices the modelled cost; see perf real)",
        DefaultValueFactory = _ => MachineBackend.Simulated,
    };

    public Option<MachineTime> Time { get; } = new("--time")
    {
        Description = "real: time trials by the host's wall clock (default); virtual: one CPU at a time on per-CPU virtual clocks, deterministic at any CPU count (one round, no interval)",
        DefaultValueFactory = _ => MachineTime.Real,
    };

    public Option<int> Quantum { get; } = new("--quantum")
    {
        Description = $"Virtual time: how far, in ns, a CPU's clock may run ahead of the next runnable CPU's before it yields (default {(long)MachineOptions.DefaultQuantum.TotalNanoseconds}; a multiple of 100)",
        DefaultValueFactory = _ => (int)MachineOptions.DefaultQuantum.TotalNanoseconds,
    };

    public Option<ShootdownMechanism> Shootdown { get; } = new("--shootdown")
    {
        Description = "How the machine delivers shootdowns: ipi (default: an IPI per running target, serviced by a handler) or broadcast "
            + "(broadcast invalidation hardware, INVLPGB + TLBSYNC or TLBI IS + DSB: no handler, the initiator waits for completion)",
        DefaultValueFactory = _ => ShootdownMechanism.Ipi,
    };

    public Option<LoadForm[]> Load { get; } = new("--load")
    {
        Description = "paper: the experiments as the paper ran them (default); all: the forms in which every CPU works (N/2 pipe pairs, N/2 sendfile connections; an experiment whose paper form already keeps every CPU busy, or has one thread, runs that); both: paper all",
        DefaultValueFactory = _ => [LoadForm.Paper],
        AllowMultipleArgumentsPerToken = true,
    };

    /// <summary>The plan the parsed options describe.</summary>
    public PaperPlan Plan(ParseResult parse, TrialSize size, int rounds, bool forceVirtual = false)
    {
        var time = parse.GetValue(Time);
        if (time == MachineTime.Virtual || forceVirtual)
        {
            return VirtualPlan(parse, size);
        }

        var experiments = Paper.Experiments.Expand(parse.GetRequiredValue(Experiments));
        var strategies = PaperCommand.ChooseStrategies(parse.GetRequiredValue(Strategies), parse.GetValue(Peers));

        var cpus = parse.GetRequiredValue(Cpus).Distinct().Order().ToArray();
        foreach (int c in cpus.Where(c => c < 1 || c > MachineOptions.MaxCpus))
        {
            throw new ArgumentException($"a machine has 1 to {MachineOptions.MaxCpus} CPUs, not {c}");
        }

        var cost = CostProfiles.Load(parse.GetRequiredValue(Cost));
        var model = parse.GetValue(Model) is { } name ? CostProfiles.Load(name)
            : cost.Name == CostModel.Zero.Name ? CostModel.Default : cost;
        var backend = parse.GetValue(Backend);
        if (backend == MachineBackend.Host)
        {
            // The host's MMU pays its real costs: charging a profile on top would count them twice.
            HostBackend.ThrowIfUnavailable();
            cost = CostModel.Zero;
            strategies = PaperCommand.OnHost(strategies, parse.GetRequiredValue(Strategies));
        }

        var host = parse.GetValue(Host);
        bool shared = host == HostMode.Shared
            || (host == HostMode.Auto && HostLoad.SampleOtherCoresBusy(PaperRunner.HostCores, TimeSpan.FromMilliseconds(250)) >= HostLoad.BusyCores);
        var shootdown = parse.GetValue(Shootdown);
        if (backend == MachineBackend.Host && shootdown != ShootdownMechanism.Ipi)
        {
            throw new ArgumentException("--shootdown broadcast runs on the simulated backend only");
        }

        return new PaperPlan(experiments, strategies, cpus, cost, model, size, rounds, parse.GetValue(Checked), backend, shared, Loads: LoadForms(parse), Shootdown: shootdown);
    }

    private LoadForm[] LoadForms(ParseResult parse) => [.. parse.GetRequiredValue(Load).Distinct().Order()];

    /// <summary>A virtual-time plan: one round (the figures do not move), the simulated backend, a profile with virtual-time prices.</summary>
    private PaperPlan VirtualPlan(ParseResult parse, TrialSize size)
    {
        var experiments = Paper.Experiments.Expand(parse.GetRequiredValue(Experiments));
        var strategies = PaperCommand.ChooseStrategies(parse.GetRequiredValue(Strategies), parse.GetValue(Peers));
        var cpus = parse.GetRequiredValue(Cpus).Distinct().Order().ToArray();
        foreach (int c in cpus.Where(c => c < 1 || c > MachineOptions.MaxCpus))
        {
            throw new ArgumentException($"a machine has 1 to {MachineOptions.MaxCpus} CPUs, not {c}");
        }

        if (parse.GetValue(Backend) != MachineBackend.Simulated)
        {
            throw new ArgumentException("virtual time runs on the simulated backend only");
        }

        var cost = CostProfiles.Load(parse.GetRequiredValue(Cost));
        if (!cost.CanRunVirtualTime)
        {
            throw new ArgumentException($"virtual time needs a cost profile with prices; '{cost.Name}' has none (use default or host)");
        }

        var model = parse.GetValue(Model) is { } name ? CostProfiles.Load(name) : cost;
        int quantum = parse.GetValue(Quantum);
        if (quantum % 100 != 0 || quantum < MachineOptions.MinQuantum.TotalNanoseconds || quantum > MachineOptions.MaxQuantum.TotalNanoseconds)
        {
            throw new ArgumentException($"--quantum must be a multiple of 100 ns from {MachineOptions.MinQuantum.TotalNanoseconds} to {MachineOptions.MaxQuantum.TotalNanoseconds}");
        }

        return new PaperPlan(experiments, strategies, cpus, cost, model, size, 1, parse.GetValue(Checked), MachineBackend.Simulated, false,
            MachineTime.Virtual, TimeSpan.FromTicks(quantum / 100), LoadForms(parse), parse.GetValue(Shootdown));
    }
}

/// <summary>Whether other processes share the host's cores (<c>--host</c>).</summary>
internal enum HostMode
{
    /// <summary>Sample the host at the start.</summary>
    Auto,

    /// <summary>The cores are ours: pinned threads, the usual spins.</summary>
    Dedicated,

    /// <summary>Other processes keep the cores busy: unpinned threads, early parking.</summary>
    Shared,
}

/// <summary>The files <c>perf paper</c> writes besides the terminal output.</summary>
internal sealed record Outputs(FileInfo? Json, FileInfo? Csv, DirectoryInfo? Plot, FileInfo? Markdown);

/// <summary>
/// <c>perf paper-round</c> (hidden): runs one round of a <c>perf paper</c> plan in this process
/// and prints each trial's measurements as one JSON line; <c>perf paper</c> starts one per round.
/// </summary>
internal static class PaperRoundCommand
{
    public static Command Create()
    {
        var options = new PlanOptions();
        var round = new Option<int>("--round") { Description = "Which round (0-based): sets the strategies' rotation", Required = true };
        var size = new Option<TrialSize>("--size") { Description = "Trial size", DefaultValueFactory = _ => TrialSize.Full };
        var command = new Command("paper-round", "One round of perf paper, as JSON lines (used by perf paper).")
        {
            options.Cpus, options.Strategies, options.Peers, options.Experiments, options.Cost, options.Model, options.Checked, options.Backend, options.Host, options.Load, options.Shootdown, round, size,
        };
        command.Hidden = true;
        command.SetAction(parse =>
        {
            var plan = options.Plan(parse, parse.GetValue(size), rounds: 1);
            int r = parse.GetValue(round);
            PaperRunner.Prejit();
            var output = Console.Out;
            foreach (var cell in RepeatedTrials.RoundOrder(plan.Cells(), c => c.Group, r))
            {
                var trial = PaperRunner.RunTrial(plan, cell, plan.Size, plan.CheckedTiming);
                output.WriteLine(PaperRunner.FormatTrial(trial));
                output.Flush();
            }

            return 0;
        });
        return command;
    }
}
