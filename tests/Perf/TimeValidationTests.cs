using System.Text.Json;
using Native.Perf.Paper;
using Native.Perf.Report;
using Native.Perf.Stats;
using NUnit.Framework;

namespace Native.Tests.Perf;

/// <summary>
/// The <c>validation</c> block's computation on two tiny synthetic row sets: which cells agree
/// within a factor of 1.5, which strategy without a direct map is best in each time mode, the
/// summary line, and the block rendered from files.
/// </summary>
[TestFixture]
public sealed class TimeValidationTests
{
    // pipe at 2 CPUs, real (3 rounds) / virtual (1 round) throughput:
    //   original 100 / 100; sfbuf-i386 300 (3x) / 400 (4x, agrees: 1.33);
    //   sfbuf-amd64 500 (5x) / 1000 (10x, differs: 2.0, and needs the direct map: never the best);
    //   epoch-cache 200 (2x) / 250 (2.5x, agrees: 1.25). Best without a direct map: sfbuf-i386 in both.
    // md-seq at 1 CPU: original 100 / 100; sfbuf-i386 120 (1.2x) / 200 (2x, differs: 1.67);
    //   epoch-cache 150 (1.5x) / 140 (1.4x, agrees: 0.93). Best: epoch-cache in real time, sfbuf-i386 in virtual.
    // linux-kmap only in the virtual file: not a cell.
    private static readonly PaperRow[] s_real =
    [
        Real("pipe", 2, "original", 100), Real("pipe", 2, "sfbuf-i386", 300), Real("pipe", 2, "sfbuf-amd64", 500), Real("pipe", 2, "epoch-cache", 200),
        Real("md-seq", 1, "original", 100), Real("md-seq", 1, "sfbuf-i386", 120), Real("md-seq", 1, "epoch-cache", 150),
    ];

    private static readonly PaperRow[] s_virtual =
    [
        Virtual("pipe", 2, "original", 100), Virtual("pipe", 2, "sfbuf-i386", 400), Virtual("pipe", 2, "sfbuf-amd64", 1000), Virtual("pipe", 2, "epoch-cache", 250),
        Virtual("pipe", 2, "linux-kmap", 900),
        Virtual("md-seq", 1, "original", 100), Virtual("md-seq", 1, "sfbuf-i386", 200), Virtual("md-seq", 1, "epoch-cache", 140),
    ];

    [Test]
    public void CellsAgreeWithinAFactorOfOneAndAHalf()
    {
        var comparison = TimeValidation.Compare(s_real, s_virtual);
        var cells = comparison.Cells.ToDictionary(c => $"{c.Experiment}/{c.Strategy}/{c.Cpus}");
        Assert.That(cells.Keys, Is.EquivalentTo(new[] { "pipe/sfbuf-i386/2", "pipe/sfbuf-amd64/2", "pipe/epoch-cache/2", "md-seq/sfbuf-i386/1", "md-seq/epoch-cache/1" }),
            "a cell for every strategy but original in both files; linux-kmap is only in one");
        Assert.Multiple(() =>
        {
            Assert.That(cells["pipe/sfbuf-i386/2"].Real.Ratio.Median, Is.EqualTo(3).Within(1e-9));
            Assert.That(cells["pipe/sfbuf-i386/2"].Virtual, Is.EqualTo(4).Within(1e-9));
            Assert.That(cells["pipe/sfbuf-i386/2"].Factor, Is.EqualTo(4.0 / 3).Within(1e-9));
            Assert.That(cells["pipe/sfbuf-i386/2"].Agrees, Is.True);
            Assert.That(cells["pipe/sfbuf-amd64/2"].Factor, Is.EqualTo(2).Within(1e-9));
            Assert.That(cells["pipe/sfbuf-amd64/2"].Agrees, Is.False);
            Assert.That(cells["pipe/epoch-cache/2"].Agrees, Is.True);
            Assert.That(cells["md-seq/sfbuf-i386/1"].Agrees, Is.False, "2 over 1.2 is 1.67");
            Assert.That(cells["md-seq/epoch-cache/1"].Agrees, Is.True, "1.4 over 1.5 is 0.93");
            Assert.That(comparison.Agreeing, Is.EqualTo(3));
            Assert.That(comparison.AgreeingShare, Is.EqualTo(0.6).Within(1e-9));
        });
    }

    [Test]
    public void TheBestStrategyNeedsNoDirectMapAndIsComparedPerExperimentAndCpuCount()
    {
        var bests = TimeValidation.Compare(s_real, s_virtual).Bests.ToDictionary(b => b.Experiment);
        Assert.Multiple(() =>
        {
            Assert.That(bests["pipe"].RealBest, Is.EqualTo(new[] { "sfbuf-i386" }), "sfbuf-amd64 is faster but needs the direct map");
            Assert.That(bests["pipe"].VirtualBest, Is.EqualTo(new[] { "sfbuf-i386" }));
            Assert.That(bests["pipe"].Same, Is.True);
            Assert.That(bests["md-seq"].RealBest, Is.EqualTo(new[] { "epoch-cache" }));
            Assert.That(bests["md-seq"].RealSpeedup, Is.EqualTo(1.5).Within(1e-9));
            Assert.That(bests["md-seq"].VirtualBest, Is.EqualTo(new[] { "sfbuf-i386" }));
            Assert.That(bests["md-seq"].Same, Is.False);
        });
    }

    [Test]
    public void OriginalIsBestWhenEveryOtherIsSlowerAndATieMatchesEither()
    {
        PaperRow[] real = [Real("exec", 1, "original", 100), Real("exec", 1, "sfbuf-i386", 90), Real("pipe", 1, "original", 100), Real("pipe", 1, "sfbuf-i386", 200), Real("pipe", 1, "epoch-cache", 190)];
        PaperRow[] virtualRows = [Virtual("exec", 1, "original", 100), Virtual("exec", 1, "sfbuf-i386", 80), Virtual("pipe", 1, "original", 100), Virtual("pipe", 1, "sfbuf-i386", 180), Virtual("pipe", 1, "epoch-cache", 180)];
        var comparison = TimeValidation.Compare(real, virtualRows);
        var bests = comparison.Bests.ToDictionary(b => b.Experiment);
        Assert.Multiple(() =>
        {
            Assert.That(bests["exec"].RealBest, Is.EqualTo(new[] { "original" }));
            Assert.That(bests["exec"].VirtualBest, Is.EqualTo(new[] { "original" }));
            Assert.That(bests["pipe"].VirtualBest, Is.EquivalentTo(new[] { "sfbuf-i386", "epoch-cache" }), "an exact tie names both");
            Assert.That(bests["pipe"].Same, Is.True);
            Assert.That(comparison.Passes, Is.True, "every cell agrees and every best is the same");
            Assert.That(TimeValidation.Summary(comparison), Does.StartWith("3 of 3 cells agree within 1.5x (100.0%)").And.EndWith(": met."));
        });
    }

    [Test]
    public void TheSummaryLineStatesTheCountsAndTheBar()
    {
        var comparison = TimeValidation.Compare(s_real, s_virtual);
        Assert.That(comparison.Passes, Is.False);
        Assert.That(TimeValidation.Summary(comparison), Is.EqualTo(
            "3 of 5 cells agree within 1.5x (60.0%); the best strategy without a direct map is the same in 1 of 2 experiments and CPU counts and differs in `md-seq` at 1 CPU; "
            + "the bar (at least 80% of cells agree, the same best everywhere): not met."));
    }

    [Test]
    public void RowsOfTheWrongTimeModeAreRefused()
    {
        Assert.Multiple(() =>
        {
            Assert.That(() => TimeValidation.Compare(s_virtual, s_virtual), Throws.ArgumentException);
            Assert.That(() => TimeValidation.Compare(s_real, s_real), Throws.ArgumentException);
        });
    }

    [Test]
    public void TheBlockRendersFromTheFiles()
    {
        string root = Path.Combine(Path.GetTempPath(), $"validation-{Guid.NewGuid():N}");
        string results = Path.Combine(root, "docs", "results");
        Directory.CreateDirectory(results);
        try
        {
            File.WriteAllText(Path.Combine(results, "r.json"), JsonSerializer.Serialize(s_real, PaperReport.Json));
            File.WriteAllText(Path.Combine(results, "v.json"), JsonSerializer.Serialize(s_virtual, PaperReport.Json));
            string page = "<!--gen validation r.json v.json-->\n<!--/gen-->\n";
            var (rendered, _) = DocMarkers.Render("page.md", page, new DocResults(root));
            Assert.Multiple(() =>
            {
                Assert.That(rendered, Does.Contain("**Validation:** 3 of 5 cells agree within 1.5x (60.0%)"));
                Assert.That(rendered, Does.Contain("| `pipe` | 2 | 3.00× / 4.00×<br>1.33 |"));
                Assert.That(rendered, Does.Contain("5.00× / 10.00×<br>2.00 **differs**"));
                Assert.That(rendered, Does.Contain("| `md-seq` | 1 | `epoch-cache` 1.50×"));
                Assert.That(DocMarkers.Render("page.md", rendered, new DocResults(root)).Mismatches, Is.Empty);
            });
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Test]
    public void TheIdenticalBlockIgnoresOnlyTheHostsFields()
    {
        string root = Path.Combine(Path.GetTempPath(), $"identical-{Guid.NewGuid():N}");
        string results = Path.Combine(root, "docs", "results");
        Directory.CreateDirectory(results);
        try
        {
            void Write(string file, IEnumerable<PaperRow> rows) => File.WriteAllText(Path.Combine(results, file), JsonSerializer.Serialize(rows.ToArray(), PaperReport.Json));
            Write("a.json", s_virtual);
            Write("busy.json", s_virtual.Select(r => r with { HostSeconds = 99, Oversubscribed = true }));
            Write("other.json", s_virtual.Select((r, i) => i == 2 ? r with { Ops = 2, HostSeconds = 5 } : r));
            Write("real.json", s_real);
            var docs = new DocResults(root);
            Assert.Multiple(() =>
            {
                Assert.That(DocTables.Render("identical a.json busy.json", docs), Does.EndWith(": every row identical.*\n"));
                Assert.That(DocTables.Render("identical a.json other.json", docs), Does.Contain("7 of 8 rows identical; differing: `ops`"));
                Assert.That(() => DocTables.Render("identical a.json real.json", docs), Throws.InstanceOf<InvalidDataException>());
            });
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    private static PaperRow Real(string experiment, int cpus, string strategy, double throughput)
    {
        // Three rounds around the throughput, in the same proportion for every strategy: each per-round ratio is the same.
        double[] samples = [throughput * 0.9, throughput, throughput * 1.1];
        var summary = SampleSummary.Of(samples);
        return Row(experiment, cpus, strategy, throughput, samples, PaperRow.RealTime) with { CiLow = summary.CiLow, CiHigh = summary.CiHigh, Cv = summary.Cv };
    }

    private static PaperRow Virtual(string experiment, int cpus, string strategy, double throughput) =>
        Row(experiment, cpus, strategy, throughput, [throughput], PaperRow.VirtualTime) with { VirtualNs = (long)(1e9 / throughput), QuantumNs = 500 };

    private static PaperRow Row(string experiment, int cpus, string strategy, double throughput, double[] samples, string timeMode) => new()
    {
        Experiment = experiment,
        Strategy = strategy,
        Cpus = cpus,
        CostProfile = "default",
        Params = new Dictionary<string, object>(),
        Seconds = 1 / throughput,
        Bytes = 1 << 20,
        Ops = 1,
        MbPerS = throughput,
        OpsPerS = throughput,
        Counters = new Dictionary<string, long>(),
        Samples = samples,
        TimeMode = timeMode,
    };
}
