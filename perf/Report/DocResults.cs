using Native.Perf.Paper;

namespace Native.Perf.Report;

/// <summary>The committed result files under <c>docs/results</c>, loaded once each.</summary>
internal sealed class DocResults(string root)
{
    private readonly Dictionary<string, IReadOnlyList<PaperRow>> _rows = new(StringComparer.Ordinal);

    /// <summary>The repository's root.</summary>
    public string Root { get; } = root;

    /// <summary>The rows of <c>docs/results/<paramref name="file"/></c>, a <c>perf paper --json</c> or <c>perf real --json</c> file.</summary>
    public IReadOnlyList<PaperRow> Rows(string file)
    {
        if (file.Contains("..", StringComparison.Ordinal) || Path.IsPathRooted(file))
        {
            throw new ArgumentException($"'{file}' is not a file under docs/results");
        }

        if (!_rows.TryGetValue(file, out var rows))
        {
            string path = Path.Combine(Root, "docs", "results", file);
            if (!File.Exists(path))
            {
                throw new FileNotFoundException($"no docs/results/{file}", path);
            }

            rows = PlotCommand.Load(path);
            _rows[file] = rows;
        }

        return rows;
    }

    /// <summary>The rows of <c>docs/results/<paramref name="file"/></c> as raw JSON objects, every field as written.</summary>
    public IReadOnlyList<System.Text.Json.Nodes.JsonObject> RawRows(string file)
    {
        Rows(file);
        var array = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(Root, "docs", "results", file)))?.AsArray()
            ?? throw new InvalidDataException($"docs/results/{file} is not a JSON array");
        return [.. array.Select(n => n as System.Text.Json.Nodes.JsonObject ?? throw new InvalidDataException($"docs/results/{file}: a row is not an object"))];
    }

    /// <summary>The repository root above <paramref name="start"/>: the first directory holding <c>Native.sln</c>.</summary>
    public static string FindRoot(string start)
    {
        for (var dir = new DirectoryInfo(start); dir != null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Native.sln")))
            {
                return dir.FullName;
            }
        }

        throw new DirectoryNotFoundException($"no Native.sln above {start}");
    }
}
