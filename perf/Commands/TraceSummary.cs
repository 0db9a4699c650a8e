using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Microsoft.Diagnostics.Tracing;
using Spectre.Console;

namespace Native.Perf.Commands;

/// <summary>
/// What a trace of the <c>SfBufNative</c> provider holds: events per name, and per name and
/// subject (the strategy of an sf_buf event, hit or miss for an allocation, the mutex of a
/// contended acquire). Counts only: nothing that varies with the host's speed but the counts
/// themselves.
/// </summary>
internal sealed class TraceSummary
{
    /// <summary>The provider the summary reads.</summary>
    public const string Provider = "SfBufNative";

    private static readonly JsonSerializerOptions s_indented = new() { WriteIndented = true };

    /// <summary>Events of the provider, by event name.</summary>
    public SortedDictionary<string, long> Events { get; } = new(StringComparer.Ordinal);

    /// <summary>Events by (event name, subject).</summary>
    public SortedDictionary<string, SortedDictionary<string, long>> BySubject { get; } = new(StringComparer.Ordinal);

    /// <summary>Field names seen per event name (the payload a reader gets).</summary>
    public SortedDictionary<string, string[]> Fields { get; } = new(StringComparer.Ordinal);

    /// <summary>Events of other providers (the runtime's, when the session asked for them).</summary>
    public long OtherEvents { get; private set; }

    /// <summary>Reads the <c>.nettrace</c> file <paramref name="path"/>.</summary>
    public static TraceSummary Read(string path)
    {
        var summary = new TraceSummary();
        using var source = new EventPipeEventSource(path);
        source.Dynamic.All += summary.Add;
        source.Process();
        return summary;
    }

    /// <summary>Reads back a summary written by <see cref="ToJson"/> (a committed one, which the docs render).</summary>
    public static TraceSummary FromJson(string path)
    {
        using var document = JsonDocument.Parse(File.ReadAllText(path));
        var root = document.RootElement;
        var summary = new TraceSummary();
        foreach (var e in root.GetProperty("events").EnumerateObject())
        {
            summary.Events[e.Name] = e.Value.GetInt64();
        }

        foreach (var e in root.GetProperty("by_subject").EnumerateObject())
        {
            var subjects = new SortedDictionary<string, long>(StringComparer.Ordinal);
            foreach (var subject in e.Value.EnumerateObject())
            {
                subjects[subject.Name] = subject.Value.GetInt64();
            }

            summary.BySubject[e.Name] = subjects;
        }

        foreach (var e in root.GetProperty("fields").EnumerateObject())
        {
            summary.Fields[e.Name] = [.. e.Value.EnumerateArray().Select(f => f.GetString() ?? string.Empty)];
        }

        return summary;
    }

    /// <summary>The count of <paramref name="eventName"/> for <paramref name="subject"/> (0 when none).</summary>
    public long Count(string eventName, string? subject = null) => subject == null
        ? Events.GetValueOrDefault(eventName)
        : BySubject.TryGetValue(eventName, out var subjects) ? subjects.GetValueOrDefault(subject) : 0;

    /// <summary>The summary as Markdown tables.</summary>
    public string ToMarkdown()
    {
        var text = new StringBuilder();
        text.AppendLine("| event | count |").AppendLine("|---|---:|");
        foreach (var (name, count) in Events)
        {
            text.Append(CultureInfo.InvariantCulture, $"| `{name}` | {count:N0} |").AppendLine();
        }

        text.AppendLine().AppendLine("| event | strategy / mutex / kind | count |").AppendLine("|---|---|---:|");
        foreach (var (name, subjects) in BySubject)
        {
            foreach (var (subject, count) in subjects)
            {
                text.Append(CultureInfo.InvariantCulture, $"| `{name}` | {subject} | {count:N0} |").AppendLine();
            }
        }

        text.AppendLine().AppendLine("| event | fields |").AppendLine("|---|---|");
        foreach (var (name, fields) in Fields)
        {
            text.Append(CultureInfo.InvariantCulture, $"| `{name}` | {string.Join(", ", fields)} |").AppendLine();
        }

        return text.ToString();
    }

    /// <summary>The summary as indented JSON.</summary>
    public string ToJson() => JsonSerializer.Serialize(
        new { provider = Provider, events = Events, by_subject = BySubject, fields = Fields },
        s_indented);

    private void Add(TraceEvent e)
    {
        if (e.ProviderName != Provider)
        {
            OtherEvents++;
            return;
        }

        string name = e.EventName;
        Events[name] = Events.GetValueOrDefault(name) + 1;
        if (!Fields.ContainsKey(name))
        {
            Fields[name] = e.PayloadNames;
        }

        if (Subject(e) is { } subject)
        {
            if (!BySubject.TryGetValue(name, out var subjects))
            {
                BySubject[name] = subjects = new SortedDictionary<string, long>(StringComparer.Ordinal);
            }

            subjects[subject] = subjects.GetValueOrDefault(subject) + 1;
        }
    }

    private static string? Subject(TraceEvent e)
    {
        string? strategy = e.PayloadByName("strategy") as string;
        return e.EventName switch
        {
            "SfBufAlloc" => $"{strategy} {(Convert.ToBoolean(e.PayloadByName("hit"), CultureInfo.InvariantCulture) ? "hit" : "miss")}",
            "SfBufWakeup" => $"{strategy}{(Convert.ToBoolean(e.PayloadByName("interrupted"), CultureInfo.InvariantCulture) ? " interrupted" : string.Empty)}",
            "LockContended" => $"{e.PayloadByName("lockName")}{(Convert.ToBoolean(e.PayloadByName("spin"), CultureInfo.InvariantCulture) ? " (spin)" : string.Empty)}",
            "ShootdownBegin" => Convert.ToInt32(e.PayloadByName("kind"), CultureInfo.InvariantCulture) switch
            {
                0 => "page",
                1 => "range",
                2 => "all",
                var k => k.ToString(CultureInfo.InvariantCulture),
            },
            _ => strategy,
        };
    }
}

/// <summary><c>perf trace-summary</c>: counts the <c>SfBufNative</c> events of a <c>.nettrace</c> file.</summary>
internal static class TraceSummaryCommand
{
    public static Command Create()
    {
        var trace = new Argument<FileInfo>("trace") { Description = "A .nettrace file written by dotnet-trace" };
        var markdown = new Option<FileInfo?>("--markdown") { Description = "Also write the tables as Markdown" };
        var json = new Option<FileInfo?>("--json") { Description = "Also write the counts as JSON" };
        var command = new Command("trace-summary", "Count the SfBufNative events of a trace, per event and per strategy (docs/profiling.md).")
        {
            trace, markdown, json,
        };
        command.SetAction(parse =>
        {
            var file = parse.GetRequiredValue(trace);
            if (!file.Exists)
            {
                AnsiConsole.MarkupLine($"[red bold]error:[/] {Markup.Escape(file.FullName)} does not exist");
                return 2;
            }

            var summary = TraceSummary.Read(file.FullName);
            string tables = summary.ToMarkdown();
            Console.Out.Write(tables);
            if (parse.GetValue(markdown) is { } md)
            {
                File.WriteAllText(md.FullName, tables);
            }

            if (parse.GetValue(json) is { } js)
            {
                File.WriteAllText(js.FullName, summary.ToJson() + Environment.NewLine);
            }

            if (summary.Events.Count == 0)
            {
                AnsiConsole.MarkupLine($"[yellow bold]warning:[/] no {TraceSummary.Provider} event in the trace (was the provider enabled? --providers {TraceSummary.Provider}:0x1FF:5)");
                return 1;
            }

            return 0;
        });
        return command;
    }
}
