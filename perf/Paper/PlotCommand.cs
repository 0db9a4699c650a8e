using System.CommandLine;
using System.Text.Json;
using Native.Perf.Charting;
using Native.Perf.Real;
using Spectre.Console;

namespace Native.Perf.Paper;

/// <summary>
/// <c>perf plot</c>: renders the charts of saved runs without running them again: those of a
/// <c>perf paper --json</c> run (<c>--json</c>), and those of a <c>perf real --json</c> run
/// (<c>--real-json</c>, compared with the <c>perf paper</c> run given by <c>--simulated</c>); and
/// with <c>--markdown</c> the <c>perf paper</c> run's Markdown tables, as <c>perf paper --markdown</c>
/// writes them.
/// </summary>
internal static class PlotCommand
{
    public static Command Create()
    {
        var json = new Option<FileInfo?>("--json") { Description = "Rows written by perf paper --json" };
        var realJson = new Option<FileInfo?>("--real-json") { Description = "Rows written by perf real --json (real-throughput-*.png; with --simulated, real-vs-simulated-*cpu.png)" };
        var simulated = new Option<FileInfo?>("--simulated") { Description = "Rows of the perf paper run the --real-json run is compared with (as perf real --simulated)" };
        var output = new Option<DirectoryInfo?>("--plot") { Description = "Directory for the PNG charts" };
        var markdown = new Option<FileInfo?>("--markdown") { Description = "Write the --json run's Markdown tables (as perf paper --markdown) to this file" };
        var command = new Command("plot", "Render the charts (and, with --markdown, the Markdown tables) of saved perf paper and perf real runs.") { json, realJson, simulated, output, markdown };
        command.Validators.Add(result =>
        {
            if (result.GetValue(json) is null && result.GetValue(realJson) is null)
            {
                result.AddError("give --json (a perf paper run), --real-json (a perf real run), or both");
            }

            if (result.GetValue(simulated) is not null && result.GetValue(realJson) is null)
            {
                result.AddError("--simulated is the run --real-json is compared with: give --real-json too");
            }

            if (result.GetValue(markdown) is not null && result.GetValue(json) is null)
            {
                result.AddError("--markdown renders the tables of a perf paper run: give --json too");
            }

            if (result.GetValue(output) is null && result.GetValue(markdown) is null)
            {
                result.AddError("give --plot (a directory for the charts), --markdown (a file for the tables), or both");
            }
        });
        command.SetAction(parse =>
        {
            if (parse.GetValue(markdown) is { } md)
            {
                PaperReport.WriteMarkdown(md.FullName, Load(parse.GetRequiredValue(json)!.FullName));
                AnsiConsole.WriteLine($"wrote {Path.GetRelativePath(Environment.CurrentDirectory, md.FullName)}");
            }

            if (parse.GetValue(output) is { } directory)
            {
                foreach (var file in Write(directory.FullName, parse.GetValue(json)?.FullName, parse.GetValue(realJson)?.FullName, parse.GetValue(simulated)?.FullName))
                {
                    AnsiConsole.WriteLine($"wrote {Path.GetRelativePath(Environment.CurrentDirectory, file)}");
                }
            }

            return 0;
        });
        return command;
    }

    /// <summary>The charts of the saved runs, described, in the order <see cref="Write"/> writes them.</summary>
    public static List<IChart> Plan(string? paperJson, string? realJson, string? simulatedJson)
    {
        var charts = new List<IChart>();
        if (paperJson is not null)
        {
            charts.AddRange(Charts.Plan(Load(paperJson)));
        }

        if (realJson is not null)
        {
            var rows = Load(realJson);
            var simulated = simulatedJson is null ? null : Load(simulatedJson);
            charts.AddRange(RealCharts.Plan(rows, simulated is null ? null : RealReport.Compare(rows, simulated), simulated));
        }

        return charts;
    }

    /// <summary>Renders the charts of the saved runs into <paramref name="directory"/>; returns the files.</summary>
    public static List<string> Write(string directory, string? paperJson, string? realJson, string? simulatedJson)
    {
        Directory.CreateDirectory(directory);
        return [.. Plan(paperJson, realJson, simulatedJson).Select(c => c.Save(directory))];
    }

    /// <summary>Reads rows back, turning JSON parameter values into the numbers and strings the charts expect.</summary>
    public static List<PaperRow> Load(string path)
    {
        var rows = JsonSerializer.Deserialize<List<PaperRow>>(File.ReadAllText(path), PaperReport.Json)
            ?? throw new InvalidDataException($"{path} holds no rows");
        return [.. rows.Select(r => r with { Params = JsonValues.Plain(r.Params) })];
    }
}
