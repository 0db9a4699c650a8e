using System.Text.RegularExpressions;
using Native.Perf.Report;
using NUnit.Framework;

namespace Native.Tests.Perf;

/// <summary>
/// The README and the docs pages against the committed results: every marked figure is rendered
/// afresh from <c>docs/results</c> and must match; no figure that looks measured goes unmarked;
/// the README stays short and links every page.
/// </summary>
[TestFixture]
public sealed partial class DocsTests
{
    private static readonly string s_root = TestRepository.Root;

    [Test]
    public void EveryQuotedFigureMatchesTheCommittedResults()
    {
        var problems = DocMarkers.CheckAll(s_root, new DocResults(s_root));
        Assert.That(problems, Is.Empty, "run `dotnet run -c Release --project perf -- report` to render them, or fix the page");
    }

    [Test]
    public void AWrongFigureIsReported()
    {
        var results = new DocResults(s_root);
        string page = "pipe at 2 CPUs: <!--q paper-default.json pipe/sfbuf-i386/2 speedup F2-->9.99<!--/q-->×.\n";
        var (rendered, mismatches) = DocMarkers.Render("page.md", page, results);
        Assert.That(mismatches, Has.Count.EqualTo(1));
        Assert.That(mismatches[0].Found, Is.EqualTo("9.99"));
        Assert.That(rendered, Does.Not.Contain("9.99"), "rendering rewrites the figure");
        Assert.That(DocMarkers.Render("page.md", rendered, results).Mismatches, Is.Empty, "and the rewritten page checks");
    }

    [Test]
    public void AStaleGeneratedBlockIsReported()
    {
        var results = new DocResults(s_root);
        string page = "<!--gen speedups paper-default.json-->\n| a hand-edited table |\n<!--/gen-->\n";
        var (rendered, mismatches) = DocMarkers.Render("page.md", page, results);
        Assert.That(mismatches, Has.Count.EqualTo(1));
        Assert.That(rendered, Does.Contain("`sfbuf-i386`"));
        Assert.That(DocMarkers.Render("page.md", rendered, results).Mismatches, Is.Empty);
    }

    [Test]
    public void AMarkThatNamesNothingIsReported()
    {
        var results = new DocResults(s_root);
        string page = "<!--q paper-default.json pipe/no-such-strategy/2 speedup F2-->1.00<!--/q--> <!--q missing.json pipe/sfbuf-i386/2 speedup F2-->1.00<!--/q-->";
        Assert.That(DocMarkers.Render("page.md", page, results).Mismatches, Has.Count.EqualTo(2));
    }

    [TestCase("the pipe ran at 6,751 MiB/s", "6,751 MiB/s")]
    [TestCase("a speedup of 2.92× over original", "2.92×")]
    [TestCase("an 8-byte read took 4.74 ns", "4.74 ns")]
    [TestCase("1.70× to 2.38× in six runs", "1.70×")]
    [TestCase("367 rows, 10.6 % CV", "10.6 %")]
    [TestCase("it delivered 2.05x", "2.05x")]
    public void AnUnmarkedFigureIsFound(string line, string figure)
    {
        Assert.That(DocMarkers.UnmarkedFigures(line + "\n").Select(f => f.Figure), Does.Contain(figure));
    }

    [TestCase("a cited <!--c-->26.4× slowdown")]
    [TestCase("`perf bench --filter '*x*' at 5 ns` in code")]
    [TestCase("a 95% CI")]
    [TestCase("<!--q paper-default.json pipe/sfbuf-i386/2 speedup F2-->2.92<!--/q-->×")]
    [TestCase("```\n2.92× in a code block\n```")]
    [TestCase("<!--gen strategies-->\n1.5× inside a block\n<!--/gen-->")]
    [TestCase("512 MiB of memory, 64 KiB writes, 0x400000")]
    public void MarkedCitedOrCodeFiguresAreNotFlagged(string text)
    {
        Assert.That(DocMarkers.UnmarkedFigures(text + "\n"), Is.Empty);
    }

    [Test]
    public void TheReadmeIsShortAndLinksEveryPage()
    {
        string readme = File.ReadAllText(Path.Combine(s_root, "README.md"));
        Assert.That(readme.Split('\n').Length, Is.LessThanOrEqualTo(201), "README.md is at most 200 lines");
        var pages = Directory.EnumerateFiles(Path.Combine(s_root, "docs"), "*.md").Select(p => "docs/" + Path.GetFileName(p));
        Assert.That(pages.Where(p => !readme.Contains($"]({p})", StringComparison.Ordinal)), Is.Empty, "every docs page is linked from the README");
    }

    [Test]
    public void EveryRelativeLinkResolves()
    {
        var broken = new List<string>();
        foreach (var page in DocMarkers.Pages(s_root))
        {
            string dir = Path.GetDirectoryName(page)!;
            foreach (Match m in RelativeLink().Matches(File.ReadAllText(page)))
            {
                string target = m.Groups["target"].Value.Split('#')[0];
                if (target.Length > 0 && !File.Exists(Path.Combine(dir, target)) && !Directory.Exists(Path.Combine(dir, target)))
                {
                    broken.Add($"{Path.GetRelativePath(s_root, page)}: {target}");
                }
            }
        }

        Assert.That(broken, Is.Empty);
    }

    [Test]
    public void EveryCommittedChartIsLinkedFromAPage()
    {
        string pages = string.Concat(DocMarkers.Pages(s_root).Select(File.ReadAllText));
        string results = Path.Combine(s_root, "docs", "results");
        var charts = Directory.EnumerateFiles(results, "*.png", SearchOption.AllDirectories).Select(c => Path.GetRelativePath(results, c).Replace('\\', '/'));
        Assert.That(charts.Where(c => !pages.Contains($"results/{c})", StringComparison.Ordinal)), Is.Empty);
    }

    [GeneratedRegex(@"\]\((?<target>(?!https?:|mailto:|#)[^)\s]+)\)")]
    private static partial Regex RelativeLink();
}
