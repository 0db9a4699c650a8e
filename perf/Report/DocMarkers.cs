using System.Text;
using System.Text.RegularExpressions;

namespace Native.Perf.Report;

/// <summary>
/// The marks that tie a measured figure in the README or a docs page to the committed results it
/// comes from, so that the figure cannot go stale unnoticed:
/// <list type="bullet">
/// <item>an inline value, <c>&lt;!--q FILE KEY FIELD FORMAT--&gt;2.92&lt;!--/q--&gt;</c>: the text
/// between the marks is <see cref="DocQueries"/>' value of FIELD for the row KEY of
/// <c>docs/results/FILE</c>, formatted with the .NET format FORMAT;</item>
/// <item>a generated block, <c>&lt;!--gen NAME ARGS...--&gt;</c> … <c>&lt;!--/gen--&gt;</c>: the
/// lines between are <see cref="DocTables"/>' rendering of NAME;</item>
/// <item>a cited or configured figure (a published number, a constant of the code),
/// <c>&lt;!--c--&gt;</c> right before it: not a measurement, so not checked against results.</item>
/// </list>
/// Markdown renders the marks invisibly. <c>perf report --check</c> and a test compare every
/// mark with a fresh rendering; <c>perf report --write</c> rewrites them.
/// </summary>
internal static partial class DocMarkers
{
    /// <summary>The pages that carry marks: the README and every docs page outside <c>docs/results</c> (which holds generated output only).</summary>
    public static IEnumerable<string> Pages(string root)
    {
        yield return Path.Combine(root, "README.md");
        var docs = Path.Combine(root, "docs");
        if (!Directory.Exists(docs))
        {
            yield break;
        }

        foreach (var page in Directory.EnumerateFiles(docs, "*.md", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
        {
            if (!Path.GetRelativePath(docs, page).StartsWith("results" + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            {
                yield return page;
            }
        }
    }

    /// <summary>One mark whose text differs from its fresh rendering, or that cannot be rendered.</summary>
    public sealed record Mismatch(string Page, int Line, string Mark, string Found, string Expected)
    {
        /// <inheritdoc/>
        public override string ToString() => $"{Page}:{Line}: {Mark}: the page says '{Found}', the results give '{Expected}'";
    }

    /// <summary>Renders every mark of <paramref name="text"/> afresh; the mismatches found, and the text with every mark rewritten.</summary>
    public static (string Text, List<Mismatch> Mismatches) Render(string page, string text, DocResults results)
    {
        var mismatches = new List<Mismatch>();
        string afterBlocks = BlockMark().Replace(text, m =>
        {
            string args = m.Groups["args"].Value.Trim();
            string found = m.Groups["body"].Value;
            string expected;
            try
            {
                expected = DocTables.Render(args, results);
            }
            catch (Exception e) when (e is ArgumentException or InvalidDataException or IOException or KeyNotFoundException)
            {
                mismatches.Add(new Mismatch(page, LineOf(text, m.Index), $"gen {args}", "(a block)", $"cannot render: {e.Message}"));
                return m.Value;
            }

            if (found != expected)
            {
                mismatches.Add(new Mismatch(page, LineOf(text, m.Index), $"gen {args}", FirstDifference(found, expected).Found, FirstDifference(found, expected).Expected));
            }

            return $"<!--gen {args}-->\n{expected}<!--/gen-->";
        });

        string rendered = InlineMark().Replace(afterBlocks, m =>
        {
            string args = m.Groups["args"].Value.Trim();
            string found = m.Groups["text"].Value;
            string expected;
            try
            {
                expected = DocQueries.Render(args, results);
            }
            catch (Exception e) when (e is ArgumentException or InvalidDataException or IOException or KeyNotFoundException or FormatException)
            {
                mismatches.Add(new Mismatch(page, LineOf(afterBlocks, m.Index), $"q {args}", found, $"cannot render: {e.Message}"));
                return m.Value;
            }

            if (found != expected)
            {
                mismatches.Add(new Mismatch(page, LineOf(afterBlocks, m.Index), $"q {args}", found, expected));
            }

            return $"<!--q {args}-->{expected}<!--/q-->";
        });
        return (rendered, mismatches);
    }

    /// <summary>
    /// Figures that look measured (a number with a unit results are given in: ×, ns, µs, ms, s,
    /// MiB/s, ops/s, %) but carry no mark: outside code, generated blocks and inline values, and
    /// not flagged as cited or configured. Each is a figure typed by hand.
    /// </summary>
    public static List<(int Line, string Figure)> UnmarkedFigures(string text)
    {
        var found = new List<(int, string)>();
        var lines = text.Split('\n');
        bool inFence = false;
        bool inBlock = false;
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i];
            if (line.TrimStart().StartsWith("```", StringComparison.Ordinal))
            {
                inFence = !inFence;
                continue;
            }

            if (inFence)
            {
                continue;
            }

            if (line.Contains("<!--gen ", StringComparison.Ordinal))
            {
                inBlock = true;
            }

            if (inBlock)
            {
                if (line.Contains("<!--/gen-->", StringComparison.Ordinal))
                {
                    inBlock = false;
                }

                continue;
            }

            string plain = InlineMark().Replace(line, string.Empty);
            plain = CodeSpan().Replace(plain, string.Empty);
            plain = LinkTarget().Replace(plain, "]");
            foreach (Match m in Figure().Matches(plain))
            {
                // 95% is the confidence level of every interval, not a result.
                if (!plain[..m.Index].EndsWith("<!--c-->", StringComparison.Ordinal) && !m.Value.StartsWith("95", StringComparison.Ordinal))
                {
                    found.Add((i + 1, m.Value.Trim()));
                }
            }
        }

        return found;
    }

    private static int LineOf(string text, int index) => text.AsSpan(0, index).Count('\n') + 1;

    private static (string Found, string Expected) FirstDifference(string found, string expected)
    {
        var a = found.Split('\n');
        var b = expected.Split('\n');
        for (int i = 0; i < Math.Max(a.Length, b.Length); i++)
        {
            string x = i < a.Length ? a[i] : "(end)";
            string y = i < b.Length ? b[i] : "(end)";
            if (x != y)
            {
                return ($"line {i + 1}: {Clip(x)}", Clip(y));
            }
        }

        return ("(same lines)", "(same lines)");
    }

    private static string Clip(string s) => s.Length <= 160 ? s : s[..160] + "…";

    /// <summary>Writes every page's marks afresh; returns the pages changed.</summary>
    public static List<string> WriteAll(string root, DocResults results)
    {
        var changed = new List<string>();
        foreach (var page in Pages(root))
        {
            string text = File.ReadAllText(page);
            var (rendered, _) = Render(Path.GetRelativePath(root, page), text, results);
            if (rendered != text)
            {
                File.WriteAllText(page, rendered, new UTF8Encoding(false));
                changed.Add(Path.GetRelativePath(root, page));
            }
        }

        return changed;
    }

    /// <summary>Every mismatch and every unmarked figure over all pages, as messages.</summary>
    public static List<string> CheckAll(string root, DocResults results)
    {
        var problems = new List<string>();
        foreach (var page in Pages(root))
        {
            string relative = Path.GetRelativePath(root, page);
            string text = File.ReadAllText(page);
            problems.AddRange(Render(relative, text, results).Mismatches.Select(m => m.ToString()));
            problems.AddRange(UnmarkedFigures(text).Select(f => $"{relative}:{f.Line}: '{f.Figure}' looks measured but has no mark (q, gen, or c for a cited or configured figure)"));
        }

        return problems;
    }

    [GeneratedRegex(@"<!--gen (?<args>[^>]*?)-->\n(?<body>.*?)<!--/gen-->", RegexOptions.Singleline)]
    private static partial Regex BlockMark();

    [GeneratedRegex(@"<!--q (?<args>[^>]*?)-->(?<text>.*?)<!--/q-->")]
    private static partial Regex InlineMark();

    [GeneratedRegex(@"`[^`]*`")]
    private static partial Regex CodeSpan();

    [GeneratedRegex(@"\]\([^)]*\)")]
    private static partial Regex LinkTarget();

    // A number (digits, thousands separators, a decimal part, a range "1.2–3.4") followed by a unit
    // results are given in. "x" counts only as a multiplier right after the digits.
    [GeneratedRegex(@"(?<![\w.\-])\d[\d,]*(\.\d+)?([–-]\d[\d,]*(\.\d+)?)?(\s?(×|µs\b|ns\b|ms\b|MiB/s|ops/s|%)|x\b|\ss\b)")]
    private static partial Regex Figure();
}
