using Native.PageTable;
using Native.Perf.Paper;
using Native.SfBufNative;
using NUnit.Framework;

namespace Native.Tests.Perf;

/// <summary>
/// <c>perf paper</c>'s experiments at their quick size: every experiment runs for every strategy
/// on 1 and 2 CPUs, and the invariants the paper's argument rests on hold in the rows.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class PaperTests
{
    private static List<PaperRow>? s_rows;

    private static List<PaperRow> Rows()
    {
        if (s_rows == null)
        {
            var settings = new PaperSettings(CostModel.Zero, Quick: true, Checked: true);
            var rows = new List<PaperRow>();
            foreach (var experiment in Experiments.Names)
            {
                foreach (var strategy in SfBufMapper.StrategyNames)
                {
                    foreach (int cpus in new[] { 1, 2 })
                    {
                        using var trial = new Trial(settings, strategy, cpus);
                        rows.AddRange(Experiments.Run(experiment, trial));
                    }
                }
            }

            s_rows = rows;
        }

        return s_rows;
    }

    [Test]
    public void EveryExperimentHasARowForEveryStrategyAndCpuCount()
    {
        var keys = Rows().Select(r => (r.Experiment, r.Strategy, r.Cpus)).ToHashSet();
        var expected = from e in Experiments.Names from s in SfBufMapper.StrategyNames from c in new[] { 1, 2 } select (e, s, c);
        Assert.That(expected.Where(k => !keys.Contains(k)), Is.Empty);
        Assert.That(Rows().All(r => r.CostProfile == "zero"), Is.True);
    }

    [Test]
    public void TheInvariantsHold()
    {
        Assert.That(PaperReport.Check(Rows()), Is.Empty);
        Assert.That(Rows().Sum(r => r["stale_accesses"]), Is.Zero);
    }

    [Test]
    public void TheDirectMapWritesNoKernelPteAndSendsNoShootdown()
    {
        var amd64 = Rows().Where(r => r.Strategy == SfBufMapper.Amd64).ToList();
        Assert.That(amd64.Sum(r => r["pte_writes"]), Is.Zero);
        Assert.That(amd64.Sum(r => r["shootdowns"]), Is.Zero);
    }

    [Test]
    public void PrivateUsersOfSfbufI386SendNoIpi()
    {
        var rows = Rows().Where(r => r.Strategy == SfBufMapper.I386 && r.Experiment is "pipe" or "pipe-huge" or "md-seq" or "md-rand" or "ptrace-word" or "ptrace-page");
        Assert.That(rows.Select(r => r["ipis_sent"]), Is.All.Zero);
    }

    [Test]
    public void OriginalOnTwoCpusShootsDownTwicePerMapping()
    {
        var md = Rows().Single(r => r.Experiment == "md-seq" && r.Strategy == SfBufMapper.Original && r.Cpus == 2);
        Assert.That(md["shootdowns"], Is.EqualTo(2 * md["sfbuf_misses"]));
        Assert.That(md["sfbuf_misses"], Is.EqualTo(md.Bytes / Pte.PageSize), "one mapping per page moved");
    }

    [Test]
    public void HotSendfileWithSfbufI386ReachesZeroShootdowns()
    {
        var hot = Rows().Single(r => r.Experiment == "sendfile-hot" && r.Strategy == SfBufMapper.I386 && r.Cpus == 2);
        var original = Rows().Single(r => r.Experiment == "sendfile-hot" && r.Strategy == SfBufMapper.Original && r.Cpus == 2);
        Assert.That(hot["shootdowns"], Is.Zero);
        Assert.That(original["shootdowns"], Is.GreaterThan(0));
    }

    [Test]
    public void TheLruCurveFallsOffACliffAtNsfbufs()
    {
        var lru = Rows().Where(r => r.Experiment == "lru" && r.Strategy == SfBufMapper.I386).ToList();
        Assert.That(lru.Where(r => (double)r.Params["fraction_of_pool"] < 1).Select(r => (double)r.Params["hit_rate"]), Is.All.GreaterThan(0.95));
        Assert.That(lru.Where(r => (double)r.Params["fraction_of_pool"] > 1).Select(r => (double)r.Params["hit_rate"]), Is.All.LessThan(0.05));
    }

    [Test]
    public void JsonAndCsvHaveEveryRowInTheFixedSchema()
    {
        var dir = Directory.CreateTempSubdirectory("paper");
        try
        {
            string json = Path.Combine(dir.FullName, "out.json");
            string csv = Path.Combine(dir.FullName, "out.csv");
            PaperReport.WriteJson(json, Rows());
            PaperReport.WriteCsv(csv, Rows());
            using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(json));
            Assert.That(doc.RootElement.GetArrayLength(), Is.EqualTo(Rows().Count));
            var first = doc.RootElement[0];
            foreach (var field in new[] { "experiment", "strategy", "cpus", "cost_profile", "params", "seconds", "bytes", "ops", "mb_per_s", "ops_per_s", "counters" })
            {
                Assert.That(first.TryGetProperty(field, out _), Is.True, field);
            }

            foreach (var counter in PaperRow.CounterKeys)
            {
                Assert.That(first.GetProperty("counters").TryGetProperty(counter, out _), Is.True, counter);
            }

            Assert.That(File.ReadAllLines(csv), Has.Length.EqualTo(Rows().Count + 1));
            string markdown = Path.Combine(dir.FullName, "out.md");
            PaperReport.WriteMarkdown(markdown, Rows());
            var lines = File.ReadAllLines(markdown);
            foreach (var experiment in Experiments.Names.Where(e => e != "lru"))
            {
                Assert.That(lines.Count(l => l.StartsWith($"| {experiment} |", StringComparison.Ordinal)), Is.EqualTo(1), experiment);
            }
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Test]
    public void ASavedRunReadsBackAndRendersTheSameCharts()
    {
        var dir = Directory.CreateTempSubdirectory("replot");
        try
        {
            string json = Path.Combine(dir.FullName, "out.json");
            PaperReport.WriteJson(json, Rows());
            var back = PlotCommand.Load(json);
            Assert.That(back, Has.Count.EqualTo(Rows().Count));
            Assert.That(back.Select(r => (r.Experiment, r.Strategy, r.Cpus, r.Bytes, r.Ops)), Is.EqualTo(Rows().Select(r => (r.Experiment, r.Strategy, r.Cpus, r.Bytes, r.Ops))));
            Assert.That(back.Select(r => r["ipis_sent"]), Is.EqualTo(Rows().Select(r => r["ipis_sent"])));

            var fresh = Charts.Write(Path.Combine(dir.FullName, "fresh"), Rows());
            var replotted = Charts.Write(Path.Combine(dir.FullName, "replotted"), back);
            Assert.That(replotted.Select(Path.GetFileName), Is.EqualTo(fresh.Select(Path.GetFileName)));
            Assert.That(File.ReadAllBytes(replotted.Single(f => f.EndsWith("lru.png", StringComparison.Ordinal))), Is.EqualTo(File.ReadAllBytes(fresh.Single(f => f.EndsWith("lru.png", StringComparison.Ordinal)))));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Test]
    public void ChartsRenderToPngHeadless()
    {
        var dir = Directory.CreateTempSubdirectory("charts");
        try
        {
            var files = Charts.Write(dir.FullName, Rows());
            Assert.That(files, Has.Count.GreaterThanOrEqualTo(Experiments.Names.Length));
            foreach (var file in files)
            {
                var head = File.ReadAllBytes(file).Take(8).ToArray();
                Assert.That(head, Is.EqualTo(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }), $"{Path.GetFileName(file)} is a PNG");
            }
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
