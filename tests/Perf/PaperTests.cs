using Native.PageTable;
using Native.Perf.Paper;
using Native.SfBufNative;
using NUnit.Framework;

namespace Native.Tests.Perf;

/// <summary>
/// <c>perf paper</c>'s experiments at their quick size: every experiment runs for every strategy,
/// the peers included, on 1 and 2 CPUs, and the invariants the paper's argument rests on, and the
/// counts each peer's algorithm fixes, hold in the rows.
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
    public void PaperAcceptsEveryStrategyNameAllAndThePeersSwitch()
    {
        Assert.That(PaperCommand.ChooseStrategies(["all"], peers: false), Is.EqualTo(SfBufMapper.StrategyNames));
        Assert.That(PaperCommand.ChooseStrategies([.. SfBufMapper.PaperStrategyNames], peers: false), Is.EqualTo(SfBufMapper.PaperStrategyNames));
        Assert.That(PaperCommand.ChooseStrategies([.. SfBufMapper.PaperStrategyNames], peers: true), Is.EqualTo(SfBufMapper.StrategyNames));
        Assert.That(PaperCommand.ChooseStrategies([SfBufMapper.NetBsdEmap, SfBufMapper.Original], peers: false), Is.EqualTo(new[] { SfBufMapper.Original, SfBufMapper.NetBsdEmap }), "in the order results list them");
        foreach (var name in SfBufMapper.StrategyNames)
        {
            Assert.That(PaperCommand.ChooseStrategies([name], peers: false), Is.EqualTo(new[] { name }));
        }

        Assert.That(() => PaperCommand.ChooseStrategies(["linux-kmap-highmem"], peers: false), Throws.ArgumentException.With.Message.Contains("linux-kmap"));
    }

    [Test]
    public void NetbsdEmapSendsNoIpiAnywhere()
    {
        var emap = Rows().Where(r => r.Strategy == SfBufMapper.NetBsdEmap).ToList();
        Assert.That(emap, Is.Not.Empty);
        Assert.That(emap.Select(r => (r.Experiment, r.Cpus, r["ipis_sent"], r["shootdowns"])), Has.All.Matches<(string, int, long Ipis, long Shootdowns)>(x => x.Ipis == 0 && x.Shootdowns == 0));
        Assert.That(emap.Where(r => r.Cpus == 2 && r.Experiment == "sendfile-hot").Single()["emap.consume_flushes"], Is.GreaterThan(0), "the NIC's CPU consumed by flushing");
    }

    [TestCase(SfBufMapper.LinuxKmapAtomic)]
    [TestCase(SfBufMapper.LinuxKmapLocal)]
    [TestCase(SfBufMapper.FreeBsdQuick)]
    public void PerCpuPeersSendNoIpiForPrivateUsers(string strategy)
    {
        var rows = Rows().Where(r => r.Strategy == strategy && PaperReport.IsPrivateOnly(r.Experiment)).ToList();
        Assert.That(rows.Select(r => r.Experiment).Distinct().Count(), Is.EqualTo(7), "every private-only experiment ran");
        Assert.That(rows.Select(r => r["ipis_sent"] + r["shootdowns"]), Is.All.Zero);
    }

    [TestCase(SfBufMapper.LinuxKmap)]
    [TestCase(SfBufMapper.LinuxKmapAtomic)]
    [TestCase(SfBufMapper.LinuxKmapLocal)]
    public void KmapFlushesGloballyAtMostOncePerLastPkmapNewMappings(string strategy)
    {
        foreach (var r in Rows().Where(r => r.Strategy == strategy))
        {
            long lastPkmap = r["pkmap.last_pkmap"], peak = r["pkmap.peak_in_use"];
            Assert.That(lastPkmap, Is.EqualTo(1024), "x86-32 LAST_PKMAP on the default machine");
            Assert.That(r["pkmap.global_flushes"], Is.LessThanOrEqualTo(r["pkmap.wraps"]), $"{r.Experiment}/{r.Cpus}cpu: one flush per wrap at most");
            Assert.That(peak, Is.LessThan(lastPkmap));
            Assert.That(Math.Max(0, r["pkmap.global_flushes"] - 1) * (lastPkmap - peak), Is.LessThanOrEqualTo(r["pkmap.new_mappings"]), $"{r.Experiment}/{r.Cpus}cpu");
        }

        var cold = Rows().Single(r => r.Strategy == strategy && r.Experiment == "sendfile-cold" && r.Cpus == 2);
        Assert.That(cold["pkmap.global_flushes"], Is.GreaterThan(0), "a file twice nsfbufs wraps the 1024-slot pool");
        Assert.That(cold["shootdowns"], Is.GreaterThanOrEqualTo(cold["pkmap.global_flushes"]), "each global flush reaches the other CPU");
    }

    [Test]
    public void LwbufSharedUsersCostOneCrossCpuInvalidationPerAllocationAndPrivateUsersNone()
    {
        foreach (var r in Rows().Where(r => r.Strategy == SfBufMapper.DragonFlyLwbuf))
        {
            string where = $"{r.Experiment}/{r.Cpus}cpu";
            Assert.That(r["shootdowns"], Is.EqualTo(r["lwbuf.set_global_syncs"]), where);
            Assert.That(r["lwbuf.set_global_syncs"], Is.EqualTo(r.Cpus > 1 ? r["lwbuf.shared_allocs"] : 0), where);
            if (PaperReport.IsPrivateOnly(r.Experiment))
            {
                Assert.That(r["shootdowns"], Is.Zero, where);
            }
        }

        var vnode = Rows().Single(r => r.Strategy == SfBufMapper.DragonFlyLwbuf && r.Experiment == "vnode" && r.Cpus == 2);
        Assert.That(vnode["lwbuf.shared_allocs"], Is.GreaterThan(0));
    }

    [Test]
    public void KmapLocalRestoresExactlyTheMapsItSaved()
    {
        foreach (var r in Rows().Where(r => r.Strategy == SfBufMapper.LinuxKmapLocal))
        {
            Assert.That(r["kmap_local.restores"], Is.EqualTo(r["kmap_local.saves"]), $"{r.Experiment}/{r.Cpus}cpu");
        }
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
