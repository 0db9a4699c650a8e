using System.CommandLine;
using Native.Perf.Commands;
using Spectre.Console;

namespace Native.Perf;

/// <summary>The <c>perf</c> experiment runner: one subcommand per experiment.</summary>
internal static class Program
{
    /// <summary>
    /// Console width for redirected output, which has none: Spectre would assume 80 columns and
    /// wrap the tables of a log file.
    /// </summary>
    public const int RedirectedWidth = 200;

    private static int Main(string[] args)
    {
        StrategyCatalog.RegisterExternal();
        if (Console.IsOutputRedirected)
        {
            AnsiConsole.Profile.Width = RedirectedWidth;
        }

        var root = new RootCommand("Experiments and benchmarks on the simulated SMP machine.")
        {
            Paper.PaperCommand.Create(),
            Paper.PaperRoundCommand.Create(),
            Paper.CalibrateCommand.Create(),
            Paper.PlotCommand.Create(),
            Real.RealCommand.Create(),
            MachineCommand.Create(),
            BenchCommand.Create(),
            ScalingCommand.Create(),
            Scale.ScaleCommand.Create(),
            Report.ReportCommand.Create(),
            TraceSummaryCommand.Create(),
        };

        return root.Parse(args).Invoke();
    }
}
