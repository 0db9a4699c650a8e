using System.CommandLine;
using BenchmarkDotNet.Running;
using Native.Perf.Benchmarks;
using Spectre.Console;

namespace Native.Perf.Commands;

/// <summary>
/// <c>perf bench</c>: runs the BenchmarkDotNet suites of this assembly. Every token it does not
/// know itself goes to BenchmarkDotNet unchanged (<c>--filter</c>, <c>--job</c>, <c>--list</c>, ...).
/// </summary>
internal static class BenchCommand
{
    // BenchmarkDotNet returns no summary for these; that is not a failure.
    private static readonly string[] s_informational = ["--list", "--info", "--version", "-?", "--help"];

    public static Command Create()
    {
        var smoke = new Option<bool>("--smoke")
        {
            Description = "CI smoke: each benchmark once, in this process (the Dry job with the in-process toolchain)",
        };

        var command = new Command(
            "bench",
            "Run the BenchmarkDotNet suites. Other arguments go to BenchmarkDotNet, e.g. --filter '*Machine*' --job short; "
            + "its own help: perf bench -- --help.")
        {
            smoke,
        };

        // BenchmarkDotNet parses its own arguments; they must reach it in their original order.
        command.TreatUnmatchedTokensAsErrors = false;
        command.SetAction(parse => Run([.. parse.UnmatchedTokens], parse.GetValue(smoke)));
        return command;
    }

    private static int Run(string[] args, bool smoke)
    {
        var summaries = BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, new BenchConfig(smoke)).ToArray();

        // BenchmarkDotNet exits normally when a benchmark throws or fails validation; CI must not.
        var failures = summaries
            .SelectMany(s => s.Reports.Where(r => !r.Success).Select(r => r.BenchmarkCase.DisplayInfo))
            .ToList();
        bool failed = failures.Count > 0
            || summaries.Any(s => s.HasCriticalValidationErrors || s.Reports.Length == 0);

        if (summaries.Length == 0 && !args.Any(a => s_informational.Contains(a, StringComparer.OrdinalIgnoreCase)))
        {
            AnsiConsole.MarkupLine("[red bold]error:[/] no benchmark ran (does --filter match any? try --list flat)");
            return 1;
        }

        if (failed)
        {
            AnsiConsole.MarkupLine("[red bold]error:[/] benchmarks failed or did not validate:");
            foreach (var name in failures)
            {
                AnsiConsole.WriteLine($"  {name}");
            }

            return 1;
        }

        return 0;
    }
}
