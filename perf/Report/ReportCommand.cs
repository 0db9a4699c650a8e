using System.CommandLine;
using Spectre.Console;

namespace Native.Perf.Report;

/// <summary>
/// <c>perf report</c>: renders every measured figure of the README and the docs pages from the
/// committed results (<see cref="DocMarkers"/>), or checks that they match.
/// </summary>
internal static class ReportCommand
{
    public static Command Create()
    {
        var check = new Option<bool>("--check") { Description = "Only check: exit 1 listing every figure that differs from the results or has no mark" };
        var root = new Option<DirectoryInfo?>("--root") { Description = "The repository (default: the one above the current directory)" };
        var command = new Command("report", "Render the README's and docs' figures from the committed results in docs/results (or --check them).") { check, root };
        command.SetAction(parse =>
        {
            string repo = parse.GetValue(root)?.FullName ?? DocResults.FindRoot(Environment.CurrentDirectory);
            var results = new DocResults(repo);
            if (parse.GetValue(check))
            {
                var problems = DocMarkers.CheckAll(repo, results);
                foreach (var problem in problems)
                {
                    AnsiConsole.WriteLine(problem);
                }

                AnsiConsole.WriteLine(problems.Count == 0 ? "every figure matches the committed results" : $"{problems.Count} figures do not match");
                return problems.Count == 0 ? 0 : 1;
            }

            foreach (var page in DocMarkers.WriteAll(repo, results))
            {
                AnsiConsole.WriteLine($"rewrote {page}");
            }

            var left = DocMarkers.CheckAll(repo, results);
            foreach (var problem in left)
            {
                AnsiConsole.WriteLine(problem);
            }

            return left.Count == 0 ? 0 : 1;
        });
        return command;
    }
}
