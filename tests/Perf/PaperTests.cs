using Native.PageTable;
using Native.Perf.Paper;
using Native.SfBufNative;
using NUnit.Framework;

namespace Native.Tests.Perf;

/// <summary>
/// <c>perf paper</c> at its smallest size: every experiment for every registered strategy, the
/// peers included, on 1 and 2 CPUs, a checked verification trial and two interleaved timed rounds
/// per cell, run as <c>perf paper</c> runs them; the exact relations of every trial hold (the
/// paper's and each peer's own counts), the rows carry their statistics, and the outputs have the
/// fixed schema.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class PaperTests
{
    private static readonly int[] s_cpus = [1, 2];
    private static PaperRun? s_run;

    private static PaperPlan Plan(string[]? experiments = null, string[]? strategies = null, int[]? cpus = null, int rounds = 2) =>
        new(experiments ?? Experiments.Names, strategies ?? [.. SfBufMapper.StrategyNames], cpus ?? s_cpus,
            CostModel.Zero, CostModel.Default, TrialSize.Check, rounds, CheckedTiming: false);

    private static PaperRun Run() => s_run ??= PaperRunner.Run(Plan(), childProcesses: false);

    private static List<PaperRow> Rows() => Run().Rows;

    private static PaperRow Row(string experiment, string strategy, int cpus) =>
        Rows().Single(r => r.Experiment == experiment && r.Strategy == strategy && r.Cpus == cpus);

    /// <summary>The rows of <paramref name="experiment"/> for the strategy the test is about, every CPU count and point.</summary>
    private static List<PaperRow> Rows(string experiment, string strategy) =>
        [.. Rows().Where(r => r.Experiment == experiment && r.Strategy == strategy)];

    [Test]
    public void EveryExperimentHasARowForEveryRegisteredStrategyAndCpuCount()
    {
        var keys = Rows().Select(r => (r.Experiment, r.Strategy, r.Cpus)).ToHashSet();
        var expected = from e in Experiments.Names from s in SfBufMapper.StrategyNames from c in s_cpus select (e, s, c);
        Assert.That(expected.Where(k => !keys.Contains(k)), Is.Empty);
        Assert.That(Rows().All(r => r.CostProfile == "zero" && r.ModelProfile == "default"), Is.True);
        Assert.That(Experiments.Expand(["vnode", "pipe"]), Is.EqualTo(new[] { "pipe", "vnode-pagein", "vnode-read" }));
    }

    [Test]
    public void EveryTrialOfEveryStrategySatisfiesItsExactRelations()
    {
        var run = Run();
        Assert.That(run.Problems, Is.Empty);
        Assert.That(run.Verification, Has.Count.EqualTo(Plan().Cells().Count + (SfBufMapper.StrategyNames.Count * s_cpus.Length)), "one checked trial per cell (lru has two points at this size)");
        Assert.That(run.Verification.All(m => m.Checked), Is.True);
        Assert.That(run.Timed.Any(m => m.Checked), Is.False, "timed trials run without the oracle");
        Assert.That(run.Verification.Concat(run.Timed).Sum(m => m["stale_accesses"]), Is.Zero);
        Assert.That(Rows().All(r => r.CheckedTrials >= 1 && r["stale_accesses"] == 0), Is.True);
    }

    [Test]
    public void EveryRowCarriesItsSamplesCiCvAndModelledCost()
    {
        foreach (var r in Rows())
        {
            Assert.That(r.Samples, Has.Count.EqualTo(2), $"{r.Experiment}/{r.Strategy}/{r.Cpus}");
            Assert.That(r.CiLow, Is.Not.Null.And.LessThanOrEqualTo(r.CiHigh!.Value));
            Assert.That(r.Throughput, Is.EqualTo(r.Summary.Median));
            Assert.That(r.Cv, Is.EqualTo(Cv(r.Samples)).Within(1e-9), $"{r.Experiment}/{r.Strategy}/{r.Cpus}: the sample standard deviation over the mean");

            // Priced from the counts: a cell that wrote kernel PTEs or shot down has a positive cost.
            if (r["pte_writes"] + r["pte_clears"] + r["shootdowns"] > 0)
            {
                Assert.That(r.ModelledNs, Is.GreaterThan(0), $"{r.Experiment}/{r.Strategy}/{r.Cpus}");
            }
            Assert.That(r.Oversubscribed, Is.EqualTo(r.Cpus > PaperRunner.HostCores));
        }

        // The modelled cost comes from counts alone: the direct map's is zero, original's on SMP is
        // the two broadcast rounds per page of md.
        Assert.That(Rows().Where(r => SfBufMapper.Describe(r.Strategy).NeedsDirectMap).Select(r => r.ModelledNs), Is.All.Zero);
        var md = Row("md-seq", SfBufMapper.Original, 2);
        Assert.That(md.Modelled!.ShootdownNs, Is.GreaterThan(md.Modelled.PteNs));
        Assert.That(md.ModelledNs, Is.GreaterThan(Row("md-seq", SfBufMapper.Original, 1).ModelledNs));
    }

    [Test]
    public void OriginalOnTwoCpusSendsTwoBroadcastRoundsPerMapping()
    {
        var md = Row("md-seq", SfBufMapper.Original, 2);
        Assert.That(md["mappings"], Is.EqualTo(md.Bytes / Pte.PageSize), "one mapping per page moved");
        Assert.That(md["shootdowns"], Is.EqualTo(2 * md["mappings"]));
        Assert.That(md["ipis_sent"] + md["idle_targets_deferred"], Is.EqualTo(md["shootdowns"]), "IPIs = rounds x (N-1) less idle deferrals");

        // The pager's mapping is invalidated once, at unmap.
        var pagein = Row("vnode-pagein", SfBufMapper.Original, 2);
        Assert.That(pagein["mappings"], Is.EqualTo(pagein.Ops));
        Assert.That(pagein["shootdowns"], Is.EqualTo(pagein["mappings"]));
    }

    [Test]
    public void ExecMapsTheHeaderAndThePartialPageOnlyAndSharesTheRest()
    {
        var exec = Row("exec", SfBufMapper.Original, 2);
        long partial = Convert.ToInt64(exec.Params["partial_pages"], System.Globalization.CultureInfo.InvariantCulture);
        Assert.That(partial, Is.EqualTo(1), "/bin/true: the .data page before its .bss");
        Assert.That(exec["mappings"], Is.EqualTo(exec.Ops * 2));
        Assert.That(exec["shootdowns"], Is.EqualTo(exec.Ops * 3), "qenter + qremove of the header, vm_map_remove of the partial page");
        Assert.That(Row("exec", SfBufMapper.I386, 2)["mappings"], Is.Zero, "both pages stay cached");
    }

    [Test]
    public void PrivateUsersOfSfbufI386SendNoIpiAndTheDirectMapMapsNothing()
    {
        // Every strategy whose private users shoot nothing down (sfbuf-i386 among them) and every
        // one that needs the direct map, by what the registry declares.
        var quiet = Rows().Where(r => SfBufMapper.Describe(r.Strategy).PrivateShootdowns == SfBufShootdowns.None && Experiments.Get(r.Experiment).PrivateMappings).ToList();
        Assert.That(quiet.Select(r => r.Strategy), Does.Contain(SfBufMapper.I386));
        Assert.That(quiet.Select(r => r["ipis_sent"] + r["shootdowns"]), Is.All.Zero);
        var direct = Rows().Where(r => SfBufMapper.Describe(r.Strategy).NeedsDirectMap).ToList();
        Assert.That(direct.Select(r => r.Strategy), Does.Contain(SfBufMapper.Amd64));
        Assert.That(direct.Sum(r => r["pte_writes"] + r["mappings"] + r["shootdowns"]), Is.Zero);
    }

    [Test]
    public void HotSendfileWithSfbufI386ReachesZeroShootdownsAndOriginalUsesItsPool()
    {
        var hot = Row("sendfile-hot", SfBufMapper.I386, 2);
        var original = Row("sendfile-hot", SfBufMapper.Original, 2);
        Assert.That(hot["shootdowns"], Is.Zero);
        Assert.That(original["mappings"], Is.EqualTo(original.Bytes / Pte.PageSize));
        Assert.That(original["shootdowns"], Is.EqualTo(2 * original["mappings"]));
    }

    [Test]
    public void TheLruCurveFallsOffACliffAtNsfbufs()
    {
        var lru = Rows("lru", SfBufMapper.I386);
        Assert.That(lru.Select(r => r.Point).Distinct(), Is.EqualTo(new[] { "0.5", "2" }));
        Assert.That(lru.Where(r => (double)r.Params["fraction_of_pool"] < 1).Select(r => (double)r.Params["hit_rate"]), Is.All.GreaterThan(0.95));
        Assert.That(lru.Where(r => (double)r.Params["fraction_of_pool"] > 1).Select(r => (double)r.Params["hit_rate"]), Is.All.LessThan(0.05));
    }

    [Test]
    public void AMappingMadeWithoutBeingCountedFailsTheCheck()
    {
        Measurement Trial(bool counted)
        {
            using var trial = new Trial(CostModel.Zero, SfBufMapper.Original, 2, TrialSize.Check, isChecked: true);
            var m = trial.Machine;
            var page = m.Physical.Alloc(AllocFlags.Wired | AllocFlags.Zero);
            ulong va = m.Layout.KernelMap.Start;
            trial.Begin();
            m.Run(0, () =>
            {
                // A mechanism that maps a page with pmap_qenter and unmaps it, like original's.
                m.KernelPmap.QEnter(va, [page]);
                if (counted)
                {
                    m.KernelPmap.CountMapping(1);
                }

                m.CurrentCpu.ReadUInt64(va);
                m.KernelPmap.QRemove(va, 1);
            });
            trial.End();
            return trial.Measure("lru", 0, 1, new Dictionary<string, object> { ["hit_rate"] = "n/a" }, point: "test");
        }

        Assert.That(PaperChecks.Check(Trial(counted: true)), Is.Empty, "the same mapping, recorded: every relation holds");
        var problems = PaperChecks.Check(Trial(counted: false));
        Assert.That(problems, Has.Some.Contains("1 kernel PTE writes but 0 pages of recorded mappings"));
        Assert.That(problems, Has.Some.Contains("2 shootdown rounds for 0 mappings"));
    }

    [Test]
    public void ALatentStaleAccessInACheckedTrialFailsTheCheck()
    {
        // A remap without invalidation whose old entry cpu 1's TLB had already evicted: only the
        // latent-staleness oracle sees the access, and the trial's check must report it.
        using var trial = new Trial(CostModel.Zero, SfBufMapper.I386, 2, TrialSize.Check, isChecked: true);
        var m = trial.Machine;
        ulong stride = (ulong)(m.Options.TlbEntries / m.Options.TlbWays) << Pte.PageShift; // pages in one TLB set
        ulong va = m.Layout.KernelMap.Start;
        var oldPage = m.Physical.Alloc(AllocFlags.Wired | AllocFlags.Zero);
        var newPage = m.Physical.Alloc(AllocFlags.Wired | AllocFlags.Zero);
        m.Run(0, () =>
        {
            for (int way = 0; way <= m.Options.TlbWays; way++)
            {
                m.KernelPmap.KEnter(va + ((ulong)way * stride), way == 0 ? oldPage : m.Physical.Alloc(AllocFlags.Wired | AllocFlags.Zero));
            }
        });
        m.Run(1, () =>
        {
            for (int way = 0; way <= m.Options.TlbWays; way++)
            {
                m.CurrentCpu.ReadUInt64(va + ((ulong)way * stride));
            }

            Assert.That(m.CurrentCpu.TestHookTlbHolds(va), Is.False, "the set conflict evicted the first entry");
        });
        trial.Begin();
        m.Run(0, () => m.KernelPmap.KEnter(va, newPage)); // the bug: no invalidation
        m.Run(1, () => Assert.Throws<LatentStaleTranslationException>(() => m.CurrentCpu.ReadUInt64(va)));
        trial.End();

        var measured = trial.Measure("lru", 0, 1, new Dictionary<string, object> { ["hit_rate"] = "n/a" }, point: "test");
        Assert.That(measured["stale_accesses"], Is.Zero, "the TLB no longer held the entry");
        Assert.That(measured["latent_stale_accesses"], Is.EqualTo(1));
        Assert.That(PaperChecks.Check(measured), Has.Some.Contains("1 latent stale accesses"));
    }

    [Test]
    public void TheExecExperimentFailsLoudlyWithoutItsImage()
    {
        using var trial = new Trial(CostModel.Zero, SfBufMapper.I386, 1, TrialSize.Check, isChecked: true);
        var ex = Assert.Throws<FileNotFoundException>(() => new ExecExperiment("/no/such/image").Run(trial));
        Assert.That(ex!.Message, Does.Contain("/no/such/image"));
    }

    [Test]
    public void PtraceRunsOnMoreCpusThanTheTargetUsedToMap()
    {
        // Four tracers use target pages 0 to 31: the target maps 8 per tracer.
        var run = PaperRunner.Run(Plan(["ptrace-word", "ptrace-page"], [SfBufMapper.I386, SfBufMapper.Amd64], [4], rounds: 1), childProcesses: false);
        Assert.That(run.Problems, Is.Empty);
        Assert.That(run.Rows, Has.Count.EqualTo(4));
        Assert.That(run.Rows.Select(r => r.Oversubscribed), Is.All.EqualTo(PaperRunner.HostCores < 4));
    }

    [Test]
    public void ARoundInItsOwnProcessMeasuresWhatARoundInThisOneDoes()
    {
        var plan = Plan(["ptrace-page"], [SfBufMapper.Original, SfBufMapper.I386], [2], rounds: 1);
        var child = PaperRunner.Run(plan, childProcesses: true);
        var here = PaperRunner.Run(plan, childProcesses: false);
        Assert.That(child.Problems, Is.Empty);
        Assert.That(child.Timed, Has.Count.EqualTo(2));
        foreach (var key in new[] { "mappings", "mapped_pages", "pte_writes", "shootdowns", "sfbuf_misses" })
        {
            Assert.That(child.Timed.Select(m => (m.Strategy, m[key])), Is.EquivalentTo(here.Timed.Select(m => (m.Strategy, m[key]))), key);
        }

        var line = PaperRunner.FormatTrial(here.Timed);
        Assert.That(PaperRunner.ParseTrial(line).Select(m => (m.Experiment, m.Strategy, m.Bytes, m.Modelled.TotalNs)), Is.EqualTo(here.Timed.Select(m => (m.Experiment, m.Strategy, m.Bytes, m.Modelled.TotalNs))));
    }

    [Test]
    public void OnASharedHostTheTrialsRunUnpinnedAndOversubscribedAndTheRunSaysSo()
    {
        using (var trial = new Trial(CostModel.Zero, SfBufMapper.I386, 2, TrialSize.Check, isChecked: true, sharedHost: true))
        {
            Assert.That(trial.Machine.Oversubscribed, Is.True);
            Assert.That(trial.Machine.PinsHostThreads, Is.False);
        }

        using (var trial = new Trial(CostModel.Zero, SfBufMapper.I386, 2, TrialSize.Check, isChecked: true))
        {
            Assert.That(trial.Machine.Oversubscribed, Is.EqualTo(PaperRunner.HostCores < 2));
        }

        // The child processes are told too, and the relations hold as on a dedicated host.
        var plan = Plan(["pipe", "ptrace-page"], [SfBufMapper.Original, SfBufMapper.I386], [2], rounds: 1) with { SharedHost = true };
        Assert.That(string.Join(' ', PaperRunner.RoundArguments(plan, 0)), Does.Contain("--host shared"));
        Assert.That(string.Join(' ', PaperRunner.RoundArguments(plan with { SharedHost = false }, 0)), Does.Contain("--host dedicated"));
        Assert.That(string.Join(' ', PaperRunner.RoundArguments(plan with { Loads = [LoadForm.Paper, LoadForm.All] }, 0)), Does.EndWith("--load paper all"));
        var run = PaperRunner.Run(plan, childProcesses: true);
        Assert.That(run.Problems, Is.Empty);
        Assert.That(run.Rows, Has.Count.EqualTo(4));
        Assert.That(run.Warnings, Has.One.Contains("ran unpinned"));
        Assert.That(PaperRunner.Run(plan with { SharedHost = false }, childProcesses: false).Warnings, Has.None.Contains("ran unpinned"));
    }

    [Test]
    public void TheEveryCpuLoadCoversEveryExperimentOnce()
    {
        var plan = Plan(["pipe", "sendfile-hot", "md-seq", "lru", "build"], [SfBufMapper.I386], [4], rounds: 1);
        var all = plan with { Loads = [LoadForm.All] };
        Assert.That(all.Cells().Select(c => $"{c.Experiment}/{c.Load}"), Is.EqualTo(new[] { "pipe/All", "sendfile-hot/All", "md-seq/Paper", "lru/Paper", "build/Paper" }),
            "an experiment without a separate every-CPU form runs its paper form");
        var both = plan with { Loads = [LoadForm.Paper, LoadForm.All] };
        Assert.That(both.Cells().Select(c => $"{c.Experiment}/{c.Load}"), Is.EqualTo(new[] { "pipe/Paper", "pipe/All", "sendfile-hot/Paper", "sendfile-hot/All", "md-seq/Paper", "lru/Paper", "build/Paper" }),
            "and only once when both forms are asked for");
    }

    [TestCase("epoch-cache", "sfbuf-i386")]
    public void OnEveryCpuOnlyACacheThatRecyclesPerCpuMayHitAColdSendfilePage(string perCpu, string oneOrder)
    {
        // 100 pages sent, 2 of them hits.
        static Measurement Cold(string strategy, string load, long hits, long mappings)
        {
            using var t = new Trial(CostModel.Zero, strategy, 1, TrialSize.Check, isChecked: false);
            t.Begin();
            t.End();
            var m = t.Measure("sendfile-cold", 100 * Pte.PageSize, 100, new Dictionary<string, object>());
            return m with
            {
                Load = load,
                Counters = new Dictionary<string, long>(m.Counters) { ["mappings"] = mappings, ["sfbuf_misses"] = 100 - hits, ["sfbuf_hits"] = hits },
            };
        }

        Assert.That(SfBufMapper.Describe(perCpu).RecyclesPerCpu, Is.True);
        Assert.That(SfBufMapper.Describe(oneOrder).RecyclesPerCpu, Is.False);
        var cold = Experiments.Get("sendfile-cold");
        Assert.That(cold.Relations(Cold(perCpu, PaperRow.AllLoad, hits: 2, mappings: 98)), Is.Empty, "many CPUs missing at once: a hit is no violation");
        Assert.That(cold.Relations(Cold(perCpu, PaperRow.AllLoad, hits: 2, mappings: 99)), Has.One.Contains("99 mappings, 98 misses and 2 hits"), "but a miss is still one mapping");
        Assert.That(cold.Relations(Cold(perCpu, PaperRow.PaperLoad, hits: 2, mappings: 98)), Has.One.Contains("each should miss"), "one sender: every page misses");
        Assert.That(cold.Relations(Cold(oneOrder, PaperRow.AllLoad, hits: 2, mappings: 98)), Has.One.Contains("each should miss"), "one order over the pool: every page misses on every CPU too");
        Assert.That(cold.Relations(Cold(oneOrder, PaperRow.AllLoad, hits: 0, mappings: 100)), Is.Empty);
    }

    [Test]
    public void ARunWhoseCrossCoreRoundTripMovedSaysSo()
    {
        static Measurement Timed(double roundTripNs)
        {
            using var t = new Trial(CostModel.Zero, SfBufMapper.Amd64, 1, TrialSize.Check, isChecked: false);
            t.Begin();
            t.End();
            return t.Measure("memcpy", 4096, 1, new Dictionary<string, object> { ["round_trip_ns"] = roundTripNs });
        }

        var plan = Plan(["memcpy"], [SfBufMapper.Amd64], [1], rounds: 2);
        var steady = PaperRunner.Warnings(plan, [], [Timed(100), Timed(140)], load: null);
        Assert.That(steady, Has.None.Contains("round trip"));
        var moved = PaperRunner.Warnings(plan, [], [Timed(100), Timed(480)], load: null);
        Assert.That(moved, Has.One.Contains("ranged from 100 to 480 ns"));
    }

    [Test]
    public void PaperAcceptsEveryStrategyNameAllAndThePeersSwitch()
    {
        Assert.That(PaperCommand.ChooseStrategies(["all"], peers: false), Is.EqualTo(SfBufMapper.StrategyNames));
        Assert.That(PaperCommand.ChooseStrategies([.. SfBufMapper.PaperStrategyNames], peers: false), Is.EqualTo(SfBufMapper.PaperStrategyNames));
        Assert.That(PaperCommand.ChooseStrategies([.. SfBufMapper.PaperStrategyNames], peers: true), Is.EqualTo(SfBufMapper.PaperStrategyNames.Concat(SfBufMapper.PeerNames)));
        Assert.That(PaperCommand.ChooseStrategies([SfBufMapper.NetBsdEmap, SfBufMapper.Original], peers: false), Is.EqualTo(new[] { SfBufMapper.Original, SfBufMapper.NetBsdEmap }), "in the order results list them");
        foreach (var name in SfBufMapper.StrategyNames)
        {
            Assert.That(PaperCommand.ChooseStrategies([name], peers: false), Is.EqualTo(new[] { name }));
        }

        Assert.That(() => PaperCommand.ChooseStrategies(["linux-kmap-highmem"], peers: false), Throws.ArgumentException.With.Message.Contains("linux-kmap"));
    }

    [Test]
    public void NetbsdEmapReadersSendNoIpiAndOnlyWritersKernelMappingsAreShotDown()
    {
        var emap = Trials(SfBufMapper.NetBsdEmap);
        Assert.That(emap, Is.Not.Empty);
        Assert.That(
            emap.Select(m => (m.Experiment, m.Cpus, m["shootdowns"], Kremoves: m["emap.kenter_shootdowns"])),
            Has.All.Matches<(string, int, long Shootdowns, long Kremoves)>(x => x.Shootdowns == x.Kremoves),
            "every shootdown removes a writer's used pmap_kenter_pa mapping");

        // Experiments whose every sf_buf user only reads (the pipe's reader, sendfile of cached
        // pages, lru) use emap alone: no IPI at all.
        string[] readers = ["pipe", "pipe-huge", "sendfile-hot", "lru"];
        Assert.That(
            emap.Where(m => readers.Contains(m.Experiment)).Select(m => (m.Experiment, m.Cpus, m["ipis_sent"], m["shootdowns"], m["emap.kenter_maps"])),
            Has.All.Matches<(string, int, long Ipis, long Shootdowns, long Kenters)>(x => x.Ipis == 0 && x.Shootdowns == 0 && x.Kenters == 0));

        // md writes too: its writes get kernel mappings, shot down at removal on 2 CPUs.
        Assert.That(Row("md-seq", SfBufMapper.NetBsdEmap, 2)["emap.kenter_shootdowns"], Is.GreaterThan(0));
        Assert.That(Row("sendfile-hot", SfBufMapper.NetBsdEmap, 2)["emap.consume_flushes"], Is.GreaterThan(0), "the NIC's CPU consumed by flushing");

        // Its price is the consumers' flushes: counted as mapping work and priced by the model.
        var md = Row("md-seq", SfBufMapper.NetBsdEmap, 2);
        Assert.That(md["mapping_flushes"], Is.EqualTo(md["emap.consume_flushes"] + md["emap.switch_flushes"]).And.GreaterThan(0));
        Assert.That(md.Modelled!.InvalidationNs * md.Units, Is.GreaterThanOrEqualTo(md["mapping_flushes"] * CostModel.Default.FullFlushNs * (1 - 1e-9)));
    }

    [TestCase(SfBufMapper.LinuxKmapAtomic)]
    [TestCase(SfBufMapper.LinuxKmapLocal)]
    [TestCase(SfBufMapper.FreeBsdQuick)]
    public void PerCpuPeersSendNoIpiForPrivateUsers(string strategy)
    {
        var trials = Trials(strategy).Where(m => Experiments.Get(m.Experiment).PrivateMappings).ToList();
        Assert.That(trials.Select(m => m.Experiment).Distinct().Count(), Is.EqualTo(Experiments.All.Count(e => e.PrivateMappings)), "every private-only experiment ran");
        Assert.That(trials.Select(m => m["ipis_sent"] + m["shootdowns"]), Is.All.Zero);
    }

    [TestCase(SfBufMapper.LinuxKmap)]
    [TestCase(SfBufMapper.LinuxKmapAtomic)]
    [TestCase(SfBufMapper.LinuxKmapLocal)]
    public void KmapFlushesGloballyAtMostOncePerLastPkmapNewMappings(string strategy)
    {
        foreach (var m in Trials(strategy))
        {
            string where = $"{m.Experiment}{m.Point}/{m.Cpus}cpu{(m.Checked ? " (checked)" : string.Empty)}";
            long lastPkmap = m["pkmap.last_pkmap"], peak = m["pkmap.peak_in_use"];
            Assert.That(lastPkmap, Is.EqualTo(1024), "x86-32 LAST_PKMAP on the default machine");
            Assert.That(m["pkmap.global_flushes"], Is.LessThanOrEqualTo(m["pkmap.wraps"]), $"{where}: one flush per wrap at most");
            Assert.That(peak, Is.LessThan(lastPkmap));
            Assert.That(Math.Max(0, m["pkmap.global_flushes"] - 1) * (lastPkmap - peak), Is.LessThanOrEqualTo(m["pkmap.new_mappings"]), where);
            Assert.That(m["shootdowns"], Is.EqualTo(m.Cpus > 1 ? m["pkmap.global_flushes"] : 0), $"{where}: the global flush is kmap's only shootdown");
        }

        var cold = Row("sendfile-cold", strategy, 2);
        Assert.That(cold["pkmap.global_flushes"], Is.GreaterThan(0), "a file twice nsfbufs wraps the 1024-slot pool");
        Assert.That(cold["shootdowns"], Is.EqualTo(cold["pkmap.global_flushes"]), "each global flush reaches the other CPU");
    }

    [Test]
    public void LwbufSharedUsersCostOneCrossCpuInvalidationPerAllocationAndPrivateUsersNone()
    {
        foreach (var m in Trials(SfBufMapper.DragonFlyLwbuf))
        {
            string where = $"{m.Experiment}{m.Point}/{m.Cpus}cpu{(m.Checked ? " (checked)" : string.Empty)}";
            Assert.That(m["shootdowns"], Is.EqualTo(m["lwbuf.set_global_syncs"]), where);
            Assert.That(m["lwbuf.set_global_syncs"], Is.EqualTo(m.Cpus > 1 ? m["lwbuf.shared_allocs"] : 0), where);
            if (Experiments.Get(m.Experiment).PrivateMappings)
            {
                Assert.That(m["shootdowns"], Is.Zero, where);
            }
        }

        var pagein = Row("vnode-pagein", SfBufMapper.DragonFlyLwbuf, 2);
        Assert.That(pagein["lwbuf.shared_allocs"], Is.GreaterThan(0));
        Assert.That(pagein["shootdowns"], Is.EqualTo(pagein["lwbuf.shared_allocs"]));
    }

    [Test]
    public void EpochCacheMapsOncePerMissAndSendsIpisOnlyFromItsEpochFallback()
    {
        foreach (var m in Trials(SfBufMapper.EpochCache))
        {
            string where = $"{m.Experiment}{m.Point}/{m.Cpus}cpu{(m.Checked ? " (checked)" : string.Empty)}";
            long fallbacks = m[EpochCacheMapper.DetailFallbackShootdowns];
            Assert.That(m["mappings"], Is.EqualTo(m["sfbuf_misses"]), where);
            Assert.That(m["pte_writes"], Is.EqualTo(m["mapped_pages"]), where);
            Assert.That(m["pte_clears"], Is.EqualTo(m["sfbuf_recycles"]), $"{where}: retiring is the only unmap");
            Assert.That(m["shootdowns"], Is.EqualTo(fallbacks), $"{where}: the fallback is the only shootdown");
            Assert.That(m["ipis_sent"], Is.LessThanOrEqualTo(fallbacks * (m.Cpus - 1)), where);
            Assert.That(m["latent_stale_accesses"] + m["stale_accesses"], Is.Zero, where);
        }

        // A file twice the pool: every page misses, and the slots it recycles were retired first.
        var cold = Row("sendfile-cold", SfBufMapper.EpochCache, 2);
        Assert.That(cold["sfbuf_recycles"], Is.GreaterThan(0));
        Assert.That(cold[EpochCacheMapper.DetailBatches], Is.GreaterThan(0));
    }

    [Test]
    public void KmapLocalRestoresExactlyTheMapsItSaved()
    {
        foreach (var m in Trials(SfBufMapper.LinuxKmapLocal))
        {
            Assert.That(m["kmap_local.restores"], Is.EqualTo(m["kmap_local.saves"]), $"{m.Experiment}/{m.Cpus}cpu");
        }
    }

    [Test]
    public void EveryPeerRecordsEachMappingItMakesAndHasAModelledCost()
    {
        foreach (var strategy in SfBufMapper.PeerNames)
        {
            foreach (var m in Trials(strategy))
            {
                string where = $"{m.Experiment}{m.Point}/{strategy}/{m.Cpus}cpu{(m.Checked ? " (checked)" : string.Empty)}";
                Assert.That(m["pte_writes"], Is.EqualTo(m["mapped_pages"]), where);
                Assert.That(m["mappings"], Is.EqualTo(m["sfbuf_misses"] + m["kmap_local.restores"]), where);
            }

            // Whatever a peer maps is priced: PTE stores, and its walks and invalidations with them.
            var mapping = Rows().Where(r => r.Strategy == strategy && r["mapped_pages"] > 0).ToList();
            Assert.That(mapping, Is.Not.Empty, strategy);
            Assert.That(mapping.Select(r => r.Modelled!.PteNs), Is.All.GreaterThan(0), strategy);
        }
    }

    [Test]
    public void EachPeerCheckFailsWhenItsCountsBreakTheAlgorithm()
    {
        Assert.That(PaperChecks.Check(Fake(SfBufMapper.NetBsdEmap, "pipe", new() { ["shootdowns"] = 1, ["ipi_targets"] = 1, ["ipis_sent"] = 1 })),
            Has.Some.Contains("1 shootdowns but 0 emap.kenter_shootdowns (the strategy's only shootdowns)"));
        Assert.That(PaperChecks.Check(Fake(SfBufMapper.NetBsdEmap, "md-seq", new() { ["shootdowns"] = 2, ["ipi_targets"] = 2, ["ipis_sent"] = 2, ["emap.kenter_shootdowns"] = 2, ["emap.kenter_maps"] = 1 })),
            Has.Some.Contains("2 kremove shootdowns for 1 writers' mappings"));
        Assert.That(PaperChecks.Check(Fake(SfBufMapper.FreeBsdQuick, "md-seq", new() { ["shootdowns"] = 1, ["ipi_targets"] = 1, ["ipis_sent"] = 1, ["quick.enters"] = 0 })),
            Has.Some.Contains("where the algorithm sends none"));
        Assert.That(PaperChecks.Check(Fake(SfBufMapper.LinuxKmap, "sendfile-cold", new() { ["pkmap.global_flushes"] = 3, ["pkmap.wraps"] = 2, ["shootdowns"] = 3, ["ipi_targets"] = 3, ["ipis_sent"] = 3, ["pkmap.last_pkmap"] = 1024 })),
            Has.Some.Contains("3 global flushes in 2 wraps"));
        Assert.That(PaperChecks.Check(Fake(SfBufMapper.DragonFlyLwbuf, "sendfile-hot", new() { ["lwbuf.shared_allocs"] = 5, ["lwbuf.set_global_syncs"] = 4, ["shootdowns"] = 4, ["ipi_targets"] = 4, ["ipis_sent"] = 4 })),
            Has.Some.Contains("4 cross-CPU invalidations for 5 shared allocations"));
        Assert.That(PaperChecks.Check(Fake(SfBufMapper.LinuxKmapLocal, "pipe", new() { ["kmap_local.saves"] = 2, ["kmap_local.restores"] = 1, ["pkmap.last_pkmap"] = 1024 })),
            Has.Some.Contains("2 kmap_local maps saved at switch-out, 1 restored"));
        Assert.That(PaperChecks.Check(Fake(SfBufMapper.NetBsdEmap, "pipe", new() { ["mappings"] = 3, ["mapped_pages"] = 3, ["pte_writes"] = 3, ["sfbuf_misses"] = 2 })),
            Has.Some.Contains("3 mappings for 2 sf_buf misses"));
        Assert.That(PaperChecks.Check(Fake(SfBufMapper.NetBsdEmap, "pipe", new() { ["emap.consume_flushes"] = 2, ["mapping_flushes"] = 3 })),
            Has.Some.Contains("3 mapping flushes for 2 consume and 0 switch flushes"));
        Assert.That(PaperChecks.Check(Fake(SfBufMapper.NetBsdEmap, "pipe", new() { ["mappings"] = 2, ["mapped_pages"] = 2, ["pte_writes"] = 2, ["sfbuf_misses"] = 2 })), Is.Empty);
    }

    private static Measurement Fake(string strategy, string experiment, Dictionary<string, long> counters) => new()
    {
        Experiment = experiment,
        Strategy = strategy,
        Cpus = 2,
        CostProfile = "zero",
        Params = new Dictionary<string, object> { ["direct_writes"] = 0L, ["partial_pages"] = 1L },
        Seconds = 1,
        Bytes = 0,
        Ops = 1,
        Counters = counters,
        Modelled = new MappingCost(0, 0, 0, 0),
    };

    /// <summary>Every trial of <paramref name="strategy"/>, timed and checked, as PaperChecks saw them.</summary>
    private static List<Measurement> Trials(string strategy) => [.. Run().Timed.Concat(Run().Verification).Where(m => m.Strategy == strategy)];

    [Test]
    public void JsonCsvAndMarkdownHaveEveryRowInTheFixedSchema()
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
            foreach (var field in new[] { "experiment", "strategy", "cpus", "cost_profile", "params", "seconds", "bytes", "ops", "mb_per_s", "ops_per_s", "counters", "samples", "ci_low", "ci_high", "cv", "modelled_ns" })
            {
                Assert.That(first.TryGetProperty(field, out _), Is.True, field);
            }

            Assert.That(first.GetProperty("samples").GetArrayLength(), Is.EqualTo(2));
            Assert.That(first.GetProperty("mb_per_s").GetDouble(), Is.EqualTo(Rows()[0].MbPerS));
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
                Assert.That(lines.Count(l => l.StartsWith($"| {experiment} |", StringComparison.Ordinal)), Is.EqualTo(experiment == "memcpy" ? 1 : 1 + s_cpus.Length), experiment);
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
            Assert.That(back.Select(r => r.Samples), Is.EqualTo(Rows().Select(r => r.Samples)));
            Assert.That(back.Select(r => r.ModelledNs), Is.EqualTo(Rows().Select(r => r.ModelledNs)));

            var fresh = Charts.Write(Path.Combine(dir.FullName, "fresh"), Rows());
            var replotted = Charts.Write(Path.Combine(dir.FullName, "replotted"), back);
            Assert.That(replotted.Select(Path.GetFileName), Is.EqualTo(fresh.Select(Path.GetFileName)));
            foreach (string name in new[] { "lru.png", "modelled-md-seq.png" })
            {
                Assert.That(File.ReadAllBytes(replotted.Single(f => f.EndsWith(name, StringComparison.Ordinal))), Is.EqualTo(File.ReadAllBytes(fresh.Single(f => f.EndsWith(name, StringComparison.Ordinal)))), name);
            }
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
            Assert.That(files.Select(Path.GetFileName), Does.Contain("modelled-pipe.png"));
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

    /// <summary>The coefficient of variation computed here: sample standard deviation (n - 1) over the mean.</summary>
    private static double Cv(IReadOnlyList<double> samples)
    {
        double mean = samples.Average();
        double variance = samples.Sum(x => (x - mean) * (x - mean)) / (samples.Count - 1);
        return Math.Sqrt(variance) / Math.Abs(mean);
    }
}
