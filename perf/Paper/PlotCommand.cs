using System.CommandLine;
using System.Text.Json;
using Spectre.Console;

namespace Native.Perf.Paper;

/// <summary><c>perf plot</c>: renders the charts of a run saved with <c>perf paper --json</c>, without running it again.</summary>
internal static class PlotCommand
{
    public static Command Create()
    {
        var json = new Option<FileInfo>("--json") { Description = "Rows written by perf paper --json", Required = true };
        var output = new Option<DirectoryInfo>("--plot") { Description = "Directory for the PNG charts", Required = true };
        var command = new Command("plot", "Render the charts of a saved perf paper run.") { json, output };
        command.SetAction(parse =>
        {
            var rows = Load(parse.GetRequiredValue(json).FullName);
            foreach (var file in Charts.Write(parse.GetRequiredValue(output).FullName, rows))
            {
                AnsiConsole.WriteLine($"wrote {Path.GetRelativePath(Environment.CurrentDirectory, file)}");
            }

            return 0;
        });
        return command;
    }

    /// <summary>Reads rows back, turning JSON parameter values into the numbers and strings the charts expect.</summary>
    public static List<PaperRow> Load(string path)
    {
        var rows = JsonSerializer.Deserialize<List<PaperRow>>(File.ReadAllText(path), PaperReport.Json)
            ?? throw new InvalidDataException($"{path} holds no rows");
        return [.. rows.Select(r => r with { Params = JsonValues.Plain(r.Params) })];
    }
}
