using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using Native.SfBufNative;
using NUnit.Framework;

namespace Native.Tests.Conformance;

/// <summary>
/// No code outside the registry decides how to drive or check a strategy by its name: a switch on
/// the name silently skips or mistreats every strategy it does not list. What a strategy is and
/// does is declared once, in <see cref="SfBufStrategyInfo.All"/>, and consulted from there. The
/// scan covers the C# sources of <c>perf/</c>, <c>tests/</c>, <c>PageTable/</c> and
/// <c>SfBufNative/</c>, but for the registry itself (<c>SfBufNative/SfBufStrategyInfo.cs</c>) and
/// the strategies' own code (<c>SfBufNative/Strategies/</c>), which know their own names.
/// </summary>
[TestFixture]
public sealed class NoNameSwitchesTests
{
    private static readonly string[] s_scanned = ["perf", "tests", "PageTable", "SfBufNative"];

    private static readonly string[] s_excluded =
    [
        "SfBufNative/SfBufStrategyInfo.cs",
        "SfBufNative/Strategies/",

        // This file's own examples of what the scanner finds.
        "tests/Conformance/NoNameSwitchesTests.cs",
    ];

    [Test]
    public void NoSourceOutsideTheRegistryComparesOrSwitchesOnAStrategyName()
    {
        string root = TestRepository.Root;
        var scanner = NameSwitchScanner.ForRegisteredStrategies();
        var findings = new List<string>();
        int files = 0;
        foreach (string folder in s_scanned)
        {
            foreach (string file in Directory.EnumerateFiles(Path.Combine(root, folder), "*.cs", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
            {
                string relative = Path.GetRelativePath(root, file).Replace('\\', '/');
                if (IsBuildOutput(relative) || s_excluded.Any(e => e.EndsWith('/') ? relative.StartsWith(e, StringComparison.Ordinal) : relative == e))
                {
                    continue;
                }

                files++;
                findings.AddRange(scanner.Scan(File.ReadAllText(file)).Select(f => $"{relative}:{f.Line}: {f.Text}"));
            }
        }

        Assert.That(files, Is.GreaterThan(100), $"the sources were found under {root}");
        Assert.That(findings, Is.Empty,
            "decide by what SfBufStrategyInfo declares (add a property there if needed), or name the strategy a test is about in a [TestCase]:"
            + Environment.NewLine + string.Join(Environment.NewLine, findings));
    }

    [Test]
    public void TheScannerFindsEveryKindOfNameSwitch()
    {
        string source = """
            bool a = strategy == SfBufMapper.I386;
            bool b = SfBufMapper.Amd64 != strategy;
            if (Strategy is SfBufMapper.I386
                or SfBufMapper.EpochCache)
            bool c = name is not SfBufMapper.Original;
            case SfBufMapper.NetBsdEmap:
            case "linux-kmap":
            SfBufMapper.DragonFlyLwbuf => 2,
            SfBufMapper.LinuxKmapAtomic when cpuPrivate => 0,
            "sfbuf-amd64" => 1,
            bool d = m.Strategy == "epoch-cache";
            bool e = name.StartsWith("freebsd-quick", StringComparison.Ordinal);
            bool f = string.Equals(name, SfBufMapper.LinuxKmapLocal, StringComparison.Ordinal);
            bool g = name.Equals("original");
            bool h = strategy == Native.SfBufNative.SfBufMapper.Amd64;
            """;
        var findings = NameSwitchScanner.ForRegisteredStrategies().Scan(source);
        Assert.That(findings.Select(f => f.Line), Is.EqualTo(new[] { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 }), string.Join(Environment.NewLine, findings));
    }

    [Test]
    public void TheScannerLeavesAttributesLookupsCommentsAndProseAlone()
    {
        string source = """
            [TestCase(SfBufMapper.I386)]
            [TestCase(SfBufMapper.EpochCache, 2)]
            public void X([Values(SfBufMapper.I386, SfBufMapper.Amd64)] string strategy) => Run(strategy);
            var info = SfBufStrategyInfo.Of(name);
            using var mapper = SfBufMapper.Create(SfBufMapper.I386, m, 8);
            var i386 = byStrategy[SfBufMapper.I386];
            public const string Baseline = SfBufMapper.Original;
            DefaultValueFactory = _ => [SfBufMapper.EpochCache, SfBufMapper.I386],
            // if (strategy == SfBufMapper.I386) in a comment
            /* case SfBufMapper.Original: in a block comment */
            string note = "sfbuf-i386 == the paper's; case original";
            bool same = strategy == other;
            bool instrument = name.StartsWith("sfbuf.", StringComparison.Ordinal);
            if (info.IsMappingCache && strategy.Length > 0) { }
            """;
        Assert.That(NameSwitchScanner.ForRegisteredStrategies().Scan(source), Is.Empty);
    }

    private static bool IsBuildOutput(string relative) =>
        relative.Split('/').Any(part => part is "bin" or "obj");
}

/// <summary>
/// Finds comparisons and switches on strategy names in C# source: a name is one of
/// <see cref="SfBufMapper"/>'s constants for a registered strategy, or a string literal equal to a
/// registered name; it is flagged when compared with <c>==</c> or <c>!=</c>, matched with
/// <c>is</c>, <c>or</c>, <c>and</c> or <c>not</c>, used as a <c>case</c> label or a switch arm
/// (<c>name =&gt;</c>, <c>name when … =&gt;</c>), or passed to <c>Equals</c>, <c>StartsWith</c> or
/// <c>EndsWith</c>. Comments are skipped; names used otherwise (attributes, registry lookups,
/// arguments, indexers) are not flagged.
/// </summary>
internal sealed class NameSwitchScanner
{
    private readonly Regex[] _patterns;

    private NameSwitchScanner(IEnumerable<string> names, IEnumerable<string> constants)
    {
        string literal = string.Join("|", names.Select(n => Regex.Escape($"\"{n}\"")));
        string constant = string.Join("|", constants.Select(Regex.Escape));
        string name = $@"(?:\b(?:[A-Za-z_]\w*\.)*SfBufMapper\.(?:{constant})\b|{literal})";
        _patterns =
        [
            new Regex($@"(?:==|!=)\s*{name}", RegexOptions.CultureInvariant),
            new Regex($@"{name}\s*(?:==|!=)", RegexOptions.CultureInvariant),
            new Regex($@"\b(?:is|or|and|not)\s+{name}", RegexOptions.CultureInvariant),
            new Regex($@"\bcase\s+{name}", RegexOptions.CultureInvariant),
            new Regex($@"{name}(?:\s+when\b.*?)?\s*=>", RegexOptions.CultureInvariant),
            new Regex($@"\b(?:Equals|StartsWith|EndsWith)\s*\([^;]*?{name}", RegexOptions.CultureInvariant),
        ];
    }

    /// <summary>The scanner for the strategies <see cref="SfBufStrategyInfo.All"/> registers and <see cref="SfBufMapper"/>'s constants for them.</summary>
    public static NameSwitchScanner ForRegisteredStrategies()
    {
        var names = SfBufStrategyInfo.All.Select(i => i.Name).ToHashSet(StringComparer.Ordinal);
        var constants = typeof(SfBufMapper).GetFields(BindingFlags.Public | BindingFlags.Static)
            .Where(f => f.IsLiteral && f.FieldType == typeof(string) && names.Contains((string)f.GetRawConstantValue()!))
            .Select(f => f.Name)
            .ToList();
        Assert.That(constants, Is.Not.Empty, "SfBufMapper names the registered strategies");
        return new NameSwitchScanner(names, constants);
    }

    /// <summary>The lines of <paramref name="source"/> (numbered from 1) that compare or switch on a strategy name.</summary>
    public IReadOnlyList<(int Line, string Text)> Scan(string source)
    {
        ArgumentNullException.ThrowIfNull(source);
        var findings = new List<(int, string)>();
        string[] lines = WithoutComments(source).Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i].TrimEnd('\r');
            if (_patterns.Any(p => p.IsMatch(line)))
            {
                findings.Add((i + 1, line.Trim()));
            }
        }

        return findings;
    }

    /// <summary>
    /// <paramref name="source"/> with its comments blanked out (line breaks kept, so that line
    /// numbers hold), string and character literals kept as they are.
    /// </summary>
    internal static string WithoutComments(string source)
    {
        var result = new StringBuilder(source.Length);
        int i = 0;
        while (i < source.Length)
        {
            char c = source[i];
            char next = i + 1 < source.Length ? source[i + 1] : '\0';
            if (c == '/' && next == '/')
            {
                while (i < source.Length && source[i] != '\n')
                {
                    i++;
                }
            }
            else if (c == '/' && next == '*')
            {
                i += 2;
                while (i < source.Length && !(source[i] == '*' && i + 1 < source.Length && source[i + 1] == '/'))
                {
                    result.Append(source[i] == '\n' ? '\n' : ' ');
                    i++;
                }

                i += 2;
            }
            else if (c == '"' || c == '\'')
            {
                // A literal, to its closing quote: a verbatim string doubles its quotes, the others escape with a backslash.
                bool verbatim = c == '"' && i > 0 && source[i - 1] == '@';
                result.Append(c);
                i++;
                while (i < source.Length && source[i] != '\n')
                {
                    char d = source[i];
                    result.Append(d);
                    i++;
                    if (!verbatim && d == '\\' && i < source.Length)
                    {
                        result.Append(source[i]);
                        i++;
                    }
                    else if (d == c)
                    {
                        if (verbatim && i < source.Length && source[i] == '"')
                        {
                            result.Append('"');
                            i++;
                        }
                        else
                        {
                            break;
                        }
                    }
                }
            }
            else
            {
                result.Append(c);
                i++;
            }
        }

        return result.ToString();
    }
}
