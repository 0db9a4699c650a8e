using System.CommandLine;
using Native.PageTable;
using Spectre.Console;

namespace Native.Perf.Commands;

/// <summary>
/// <c>perf machine</c>: boots the embedded default machine, prints its configuration and runs a
/// shootdown ping-pong on it, then prints the counters the run produced.
/// </summary>
internal static class MachineCommand
{
    private const int DefaultRounds = 20_000;
    private const int QuickRounds = 2_000;

    private static readonly IAnsiConsole s_error = CreateErrorConsole();

    public static Command Create()
    {
        var cpus = new Option<int?>("--cpus")
        {
            Description = "Simulated CPUs (default: the embedded default machine's)",
        };
        cpus.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<int?>() is int n && (n < 1 || n > MachineOptions.MaxCpus))
            {
                r.AddError($"--cpus must be between 1 and {MachineOptions.MaxCpus}");
            }
        });

        var rounds = new Option<int?>("--rounds")
        {
            Description = $"Ping-pong rounds (default {DefaultRounds}, {QuickRounds} with --quick)",
        };
        rounds.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<int?>() is int n && n < 1)
            {
                r.AddError("--rounds must be at least 1");
            }
        });

        var cost = new Option<string>("--cost")
        {
            Description = "Cost profile",
            DefaultValueFactory = _ => CostModel.Zero.Name,
        };
        cost.AcceptOnlyFromAmong([.. CostModel.Builtin.Keys]);

        var flavor = new Option<string>("--flavor")
        {
            Description = "Kernel address-space flavour",
            DefaultValueFactory = _ => "amd64",
        };
        flavor.AcceptOnlyFromAmong("amd64", "i386");

        var quick = new Option<bool>("--quick")
        {
            Description = $"A short run ({QuickRounds} rounds) for smoke tests",
        };

        var command = new Command("machine", "Boot the default machine, print its configuration and run a shootdown ping-pong.")
        {
            cpus, rounds, cost, flavor, quick,
        };

        command.SetAction(parse =>
        {
            var defaults = new MachineOptions();
            var options = defaults with
            {
                Cpus = parse.GetValue(cpus) ?? defaults.Cpus,
                Cost = CostModel.Named(parse.GetRequiredValue(cost)),
                Flavor = parse.GetRequiredValue(flavor) == "i386" ? MachineFlavor.I386 : MachineFlavor.Amd64,
            };
            int n = parse.GetValue(rounds) ?? (parse.GetValue(quick) ? QuickRounds : DefaultRounds);
            return Run(options, n);
        });

        return command;
    }

    private static int Run(MachineOptions options, int rounds)
    {
        try
        {
            using var machine = new Machine(options);
            PrintConfiguration(machine);

            AnsiConsole.WriteLine();
            AnsiConsole.MarkupLine($"[bold]Shootdown ping-pong[/]: {rounds:N0} rounds on {options.Cpus} CPU(s), cost profile [bold]{Markup.Escape(options.Cost.Name)}[/]");
            var result = PingPong.Run(machine, rounds);
            PrintResult(result, options.Cost);

            long stale = result.Counters[Counter.StaleAccesses] + result.Counters[Counter.LatentStaleAccesses];
            if (stale != 0)
            {
                Error($"{stale} stale translation(s): a TLB kept a mapping a shootdown should have removed");
                return 1;
            }

            return 0;
        }
        catch (Exception ex)
        {
            Error(ex);
            return 1;
        }
    }

    private static void PrintConfiguration(Machine machine)
    {
        AnsiConsole.MarkupLine("[bold]Machine[/]");
        foreach (var line in machine.Describe().Split(Environment.NewLine))
        {
            AnsiConsole.WriteLine(line);
        }

        foreach (var warning in machine.Warnings)
        {
            AnsiConsole.MarkupLine($"[yellow]warning:[/] {Markup.Escape(warning)}");
        }
    }

    private static void PrintResult(PingPongResult result, CostModel cost)
    {
        var counters = result.Counters;
        var table = new Table().Border(TableBorder.Rounded).AddColumn("counter");
        for (int cpu = 0; cpu < counters.Cpus; cpu++)
        {
            table.AddColumn(new TableColumn($"cpu{cpu}").RightAligned());
        }

        table.AddColumn(new TableColumn("total").RightAligned());
        table.AddColumn(new TableColumn("per round").RightAligned());

        foreach (var counter in CounterNames.All)
        {
            long total = counters[counter];
            if (total == 0 && counter != Counter.StaleAccesses)
            {
                continue;
            }

            var cells = new List<string> { CounterNames.Of(counter) };
            for (int cpu = 0; cpu < counters.Cpus; cpu++)
            {
                cells.Add(counters.OnCpu(cpu, counter).ToString("N0"));
            }

            cells.Add(total.ToString("N0"));
            cells.Add(((double)total / result.Rounds).ToString("N2"));
            // The oracle's row is always shown, green when clean, so a reader never has to infer zero.
            var style = counter != Counter.StaleAccesses ? Style.Plain
                : total == 0 ? new Style(Color.Green) : new Style(Color.Red, decoration: Decoration.Bold);
            table.AddRow(cells.Select(c => new Text(c, style)));
        }

        AnsiConsole.Write(table);

        double seconds = result.Elapsed.TotalSeconds;
        long shootdowns = counters[Counter.ShootdownRounds];
        AnsiConsole.WriteLine($"rounds/s            {result.Rounds / seconds:N0}");
        AnsiConsole.WriteLine($"mean round trip     {result.Elapsed.TotalMicroseconds / result.Rounds:N2} us (remap + invlpg + shootdown + handoff to the next CPU)");
        if (shootdowns > 0)
        {
            AnsiConsole.WriteLine($"mean ack wait       {counters[Counter.AckWaitNanoseconds] / 1000.0 / shootdowns:N2} us per shootdown");
        }

        AnsiConsole.WriteLine($"elapsed             {seconds:N3} s");
        AnsiConsole.WriteLine($"cost profile        {cost}");
    }

    private static IAnsiConsole CreateErrorConsole()
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        if (Console.IsErrorRedirected)
        {
            console.Profile.Width = Program.RedirectedWidth;
        }

        return console;
    }

    private static void Error(string message) =>
        s_error.MarkupLine($"[red bold]error:[/] {Markup.Escape(message)}");

    private static void Error(Exception ex)
    {
        Error($"{ex.GetType().Name}: {ex.Message}");
        s_error.WriteException(ex, ExceptionFormats.ShortenPaths | ExceptionFormats.ShortenTypes);
    }
}
