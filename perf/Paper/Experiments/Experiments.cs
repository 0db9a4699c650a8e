namespace Native.Perf.Paper;

/// <summary>The experiments <c>perf paper</c> runs, in the order they run and print.</summary>
internal static class Experiments
{
    /// <summary>Every experiment.</summary>
    public static readonly IReadOnlyList<Experiment> All =
    [
        new PipeExperiment(huge: false),
        new PipeExperiment(huge: true),
        new MdExperiment(random: false),
        new MdExperiment(random: true),
        new SendfileExperiment(hot: true),
        new SendfileExperiment(hot: false),
        new ExecExperiment(),
        new PtraceExperiment(pages: false),
        new PtraceExperiment(pages: true),
        new VnodePageInExperiment(),
        new VnodeReadExperiment(),
        new LruExperiment(),
        new MemcpyExperiment(),
        new BuildExperiment(),
    ];

    /// <summary>Experiment names in the order they run and print.</summary>
    public static readonly string[] Names = [.. All.Select(e => e.Name)];

    /// <summary>Group names accepted by <c>--experiments</c>.</summary>
    public static readonly IReadOnlyDictionary<string, string[]> Groups = new Dictionary<string, string[]>(StringComparer.Ordinal)
    {
        ["md"] = ["md-seq", "md-rand"],
        ["sendfile"] = ["sendfile-hot", "sendfile-cold"],
        ["ptrace"] = ["ptrace-word", "ptrace-page"],
        ["vnode"] = ["vnode-pagein", "vnode-read"],
    };

    /// <summary>The experiment called <paramref name="name"/>.</summary>
    public static Experiment Get(string name) =>
        All.FirstOrDefault(e => e.Name == name) ?? throw new ArgumentException($"unknown experiment '{name}'", nameof(name));

    /// <summary>Runs the experiment called <paramref name="name"/> on <paramref name="trial"/>.</summary>
    public static IReadOnlyList<Measurement> Run(string name, Trial trial) => Get(name).Run(trial);

    /// <summary>Expands group names; throws for an unknown name.</summary>
    public static string[] Expand(IEnumerable<string> names)
    {
        var result = new List<string>();
        foreach (var name in names)
        {
            if (Groups.TryGetValue(name, out var members))
            {
                result.AddRange(members);
            }
            else if (Names.Contains(name))
            {
                result.Add(name);
            }
            else
            {
                throw new ArgumentException($"unknown experiment '{name}'; known: {string.Join(", ", Names)}; groups: {string.Join(", ", Groups.Keys)}");
            }
        }

        // In the canonical order, each once.
        return [.. Names.Where(result.Contains)];
    }
}
