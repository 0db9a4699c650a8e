using System.Runtime.InteropServices;
using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Strategies.Linux;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Peers;

using SfBuf = Native.SfBufNative.SfBuf;

/// <summary>
/// XPFO on the machine with exclusive page ownership (<see cref="MachineFlavor.Amd64Xpfo"/>): the
/// page-mapped direct map without user pages, and the three flush policies of the RFC
/// (<c>linux-xpfo</c> v6 immediate, <c>linux-xpfo-deferred</c> v7, <c>linux-xpfo-batched</c> v9),
/// with exact counts on small cases, under both shootdown mechanisms.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class XpfoTests
{
    private static MachineOptions Options(int cpus, ShootdownMechanism shootdown = ShootdownMechanism.Ipi) => new()
    {
        Cpus = cpus,
        PhysicalMemoryBytes = 16UL << 20,
        Flavor = MachineFlavor.Amd64Xpfo,
        SfBufWindowPages = 16,
        KernelMapPages = 64,
        KernelMemoryPages = 16,
        Shootdown = shootdown,
        ShootdownWatchdog = TimeSpan.FromSeconds(20),
    };

    private static VmPage NewPage(SimMachine m, ulong marker, bool user = true)
    {
        var page = m.Physical.Alloc(AllocFlags.Zero | AllocFlags.Wired | (user ? AllocFlags.User : 0));
        MemoryMarshal.Write(m.Physical.PhysicalBytes(page), in marker);
        return page;
    }

    private static ulong Dmap(VmPage page) => VmLayout.DMAP_BASE + page.PhysicalAddress;

    /// <summary>One kmap, a read of the page's marker through it, and the kunmap, on CPU 0.</summary>
    private static void MapReadUnmapOnCpu0(SimMachine m, LinuxXpfoMapper mapper, VmPage page, ulong marker) => m.Run(0, () =>
    {
        var sf = mapper.Alloc(page);
        Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(sf)), Is.EqualTo(marker));
        mapper.Free(sf);
    });

    private static LinuxXpfoMapper Create(SimMachine m, string strategy) => (LinuxXpfoMapper)SfBufMapper.Create(strategy, m);

    [Test]
    public void TheMachinePageMapsItsDirectMapAndKeepsUserPagesOutOfIt()
    {
        using var m = new SimMachine(Options(2));
        var kernelPage = NewPage(m, 0x1111, user: false);
        var userPage = NewPage(m, 0x2222);

        Assert.That(m.Layout.DirectMapIsPaged, Is.True);
        Assert.That(Pte.IsValid(m.KernelPmap.ReadPte(Dmap(kernelPage))), Is.True, "a kernel page stays in the direct map");
        Assert.That(m.KernelPmap.ReadPte(Dmap(userPage)), Is.Zero, "xpfo_alloc_pages took the user page out");

        var before = m.Counters();
        m.Run(0, () =>
        {
            Assert.That(m.CurrentCpu.ReadUInt64(Dmap(kernelPage)), Is.EqualTo(0x1111UL));
            Assert.That(() => m.CurrentCpu.ReadUInt64(Dmap(userPage)), Throws.TypeOf<PageFaultException>(), "no kernel mapping of a user page");
        });
        var d = m.Counters() - before;
        Assert.That(d[Counter.TlbMisses], Is.EqualTo(1), "the direct map is walked and cached like any kernel page (the fault caches nothing)");
        Assert.That(d[Counter.MappingTlbMisses], Is.EqualTo(1));

        // Freed, the user page stays out until a kernel allocation takes it back (then in again).
        m.Physical.Unwire(userPage);
        m.Physical.Free(userPage);
        Assert.That(m.KernelPmap.ReadPte(Dmap(userPage)), Is.Zero);
        var again = m.Physical.Alloc(AllocFlags.Wired);
        Assert.That(again, Is.EqualTo(userPage), "the free queue is LIFO");
        Assert.That(Pte.IsValid(m.KernelPmap.ReadPte(Dmap(again))), Is.True, "a kernel allocation puts it back");
    }

    [TestCase(SfBufMapper.I386)]
    [TestCase(SfBufMapper.LinuxKmap)]
    [TestCase(SfBufMapper.EpochCache)]
    public void OtherStrategiesRunOnTheMachineWithUserPagesOutOfTheDirectMap(string strategy)
    {
        using var m = new SimMachine(Options(2));
        using var mapper = SfBufMapper.Create(strategy, m, 8);
        var pages = Enumerable.Range(0, 12).Select(i => NewPage(m, 0x5000UL + (ulong)i)).ToArray();
        m.Run(0, () =>
        {
            for (int i = 0; i < pages.Length; i++)
            {
                var sf = mapper.Alloc(pages[i]);
                Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(sf)), Is.EqualTo(0x5000UL + (ulong)i));
                mapper.Free(sf);
            }
        });
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
        Assert.That(m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
    }

    [Test]
    public void TheDirectMapStrategyRefusesTheMachine()
    {
        using var m = new SimMachine(Options(2));
        Assert.That(() => SfBufMapper.Create(SfBufMapper.Amd64, m), Throws.InvalidOperationException);
    }

    /// <summary>
    /// v6 on 4 CPUs: a kmap of a user page restores its PTE (one write, no flush); the kunmap to
    /// mapcount 0 clears it and flushes here and on the 3 others: one shootdown with 3 targets.
    /// </summary>
    [TestCase(ShootdownMechanism.Ipi)]
    [TestCase(ShootdownMechanism.Broadcast)]
    public void ImmediateKunmapToMapcountZeroIsOneShootdownToEveryOtherCpu(ShootdownMechanism mechanism)
    {
        using var m = new SimMachine(Options(4, mechanism));
        var page = NewPage(m, 0x1234);
        using var mapper = Create(m, SfBufMapper.LinuxXpfo);
        var before = m.Counters();
        m.Run(0, () =>
        {
            var sf = mapper.Alloc(page);
            Assert.That(sf.Kva, Is.EqualTo(Dmap(page)), "kmap is page_address: the direct-map address");
            Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(sf)), Is.EqualTo(0x1234UL));
            mapper.Free(sf);
            Assert.That(() => m.CurrentCpu.ReadUInt64(Dmap(page)), Throws.TypeOf<PageFaultException>(), "out of the direct map again, and not in this TLB");
        });
        m.CloseExposures();
        var d = m.Counters() - before;
        var details = mapper.Stats().Details;

        Assert.That(details["xpfo.kmaps"], Is.EqualTo(1));
        Assert.That(details["xpfo.restores"], Is.EqualTo(1));
        Assert.That(details["xpfo.unmaps"], Is.EqualTo(1));
        Assert.That(details["xpfo.flushes"], Is.EqualTo(1));
        Assert.That(details["xpfo.shootdowns"], Is.EqualTo(1));
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(1));
        Assert.That(d[Counter.KernelPteClears], Is.EqualTo(1));
        Assert.That(d[Counter.MappedPages], Is.EqualTo(1), "every kernel PTE write is a recorded mapping");
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(1));
        Assert.That(mechanism == ShootdownMechanism.Ipi ? d[Counter.IpiTargets] : d[Counter.BroadcastTargets], Is.EqualTo(3));
        Assert.That(d[Counter.Exposures], Is.Zero);
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        Assert.That(d[Counter.LatentStaleAccesses], Is.Zero);
    }

    /// <summary>
    /// v7 on 4 CPUs: the same kunmap sends nothing: one local invalidation, the 3 other CPUs'
    /// <c>pending_xpfo_flush</c> bits, and a full flush at each of those CPUs' next context switch.
    /// </summary>
    [TestCase(SfBufMapper.LinuxXpfoDeferred, ShootdownMechanism.Ipi)]
    [TestCase(SfBufMapper.LinuxXpfoDeferred, ShootdownMechanism.Broadcast)]
    [TestCase(SfBufMapper.LinuxXpfoBatched, ShootdownMechanism.Ipi)]
    public void DeferredKunmapInvalidatesLocallyAndLeavesEveryOtherCpuAFullFlushAtItsNextSwitch(string strategy, ShootdownMechanism mechanism)
    {
        using var m = new SimMachine(Options(4, mechanism));
        var page = NewPage(m, 0x4321);
        using var mapper = Create(m, strategy);
        var before = m.Counters();
        MapReadUnmapOnCpu0(m, mapper, page, 0x4321UL);
        var d = m.Counters() - before;
        var details = mapper.Stats().Details;

        Assert.That(details["xpfo.restores"], Is.EqualTo(1));
        Assert.That(details["xpfo.unmaps"], Is.EqualTo(1));
        Assert.That(details["xpfo.shootdowns"], Is.Zero);
        Assert.That(details["xpfo.pending_posts"], Is.EqualTo(3));
        Assert.That(d[Counter.IpisSent], Is.Zero);
        Assert.That(d[Counter.ShootdownRounds], Is.Zero);
        Assert.That(d[Counter.BroadcastInvalidations], Is.Zero);
        Assert.That(d[Counter.LocalInvalidations], Is.EqualTo(1));
        Assert.That(Enumerable.Range(0, 4).Select(mapper.Xpfo.IsPending), Is.EqualTo(new[] { false, true, true, true }));

        var flushesBefore = m.Counters()[Counter.FullFlushes];
        for (int c = 1; c < 4; c++)
        {
            m.Run(c, () => { });
        }

        Assert.That(mapper.Stats().Details["xpfo.pending_flushes"], Is.EqualTo(3));
        Assert.That(m.Counters()[Counter.FullFlushes] - flushesBefore, Is.EqualTo(3), "__flush_tlb_all at each switch");
        Assert.That(Enumerable.Range(0, 4).Select(mapper.Xpfo.IsPending), Is.All.False);

        m.Run(1, () => { });
        Assert.That(mapper.Stats().Details["xpfo.pending_flushes"], Is.EqualTo(3), "the bit was cleared: the next switch owes nothing");
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
        Assert.That(m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
    }

    /// <summary>Nested kmaps of one page share the mapping: the first restores, the last removes, once each.</summary>
    [TestCase(SfBufMapper.LinuxXpfo)]
    [TestCase(SfBufMapper.LinuxXpfoDeferred)]
    [TestCase(SfBufMapper.LinuxXpfoBatched)]
    public void NestedKmapsOfOnePageRestoreOnceAndRemoveOnce(string strategy)
    {
        using var m = new SimMachine(Options(2));
        var page = NewPage(m, 0x77);
        using var mapper = Create(m, strategy);
        m.Run(0, () =>
        {
            var a = mapper.Alloc(page);
            var b = mapper.Alloc(page, SfBufFlags.CpuPrivate);
            Assert.That(b.Kva, Is.EqualTo(a.Kva));
            Assert.That(mapper.Xpfo.MapCount(page), Is.EqualTo(2));
            mapper.Free(a);
            Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(b)), Is.EqualTo(0x77UL), "still mapped: mapcount 1");
            Assert.That(mapper.Stats().Details["xpfo.unmaps"], Is.Zero);
            mapper.Free(b);
        });
        var details = mapper.Stats().Details;
        Assert.That(details["xpfo.kmaps"], Is.EqualTo(2));
        Assert.That(details["xpfo.restores"], Is.EqualTo(1));
        Assert.That(details["xpfo.unmaps"], Is.EqualTo(1));
        Assert.That(details["xpfo.flushes"], Is.EqualTo(1));
        Assert.That(mapper.Xpfo.MapCount(page), Is.Zero);
        Assert.That(m.KernelPmap.ReadPte(Dmap(page)), Is.Zero);
        Assert.That(() => m.Run(0, () => mapper.Free(new SfBuf(Dmap(page), page, -1, mapper.Id))), Throws.Exception, "a kunmap below mapcount 0 is refused");
    }

    /// <summary>A kernel page (md's, kmem's) is always in the direct map: kmap and kunmap write, clear and flush nothing.</summary>
    [TestCase(SfBufMapper.LinuxXpfo)]
    [TestCase(SfBufMapper.LinuxXpfoDeferred)]
    public void AKernelPageNeedsNothing(string strategy)
    {
        using var m = new SimMachine(Options(4));
        var page = NewPage(m, 0x99, user: false);
        using var mapper = Create(m, strategy);
        var before = m.Counters();
        MapReadUnmapOnCpu0(m, mapper, page, 0x99UL);
        var d = m.Counters() - before;
        var details = mapper.Stats().Details;
        Assert.That(details["xpfo.kmaps"], Is.EqualTo(1));
        Assert.That(details["xpfo.restores"] + details["xpfo.unmaps"] + details["xpfo.flushes"] + details["xpfo.pending_posts"], Is.Zero);
        Assert.That(d[Counter.KernelPteWrites] + d[Counter.KernelPteClears] + d[Counter.LocalInvalidations] + d[Counter.ShootdownRounds], Is.Zero);
    }

    /// <summary>
    /// Exposure: cpu 1 caches a user page's direct-map translation under its own kmap and frees it;
    /// cpu 0's kunmap to mapcount 0 then removes the page. Immediate shoots cpu 1 down (no window);
    /// deferred leaves it a pending flush, so cpu 1 still translates the page until its next switch
    /// (one window). Either way no access is stale; cpu 1 reaching the page through that entry is the
    /// ret2dir access XPFO exists to stop, which the oracle reports.
    /// </summary>
    [TestCase(SfBufMapper.LinuxXpfo, ShootdownMechanism.Ipi, 0)]
    [TestCase(SfBufMapper.LinuxXpfo, ShootdownMechanism.Broadcast, 0)]
    [TestCase(SfBufMapper.LinuxXpfoDeferred, ShootdownMechanism.Ipi, 1)]
    [TestCase(SfBufMapper.LinuxXpfoDeferred, ShootdownMechanism.Broadcast, 1)]
    [TestCase(SfBufMapper.LinuxXpfoBatched, ShootdownMechanism.Ipi, 1)]
    public void ImmediateOpensNoExposureWindowAndDeferredOneUntilTheNextSwitch(string strategy, ShootdownMechanism mechanism, int windows)
    {
        using var m = new SimMachine(Options(2, mechanism));
        var page = NewPage(m, 0xabcd);
        using var mapper = Create(m, strategy);
        SfBuf first = default, second = default;
        m.Run(1, () =>
        {
            first = mapper.Alloc(page);
            m.CurrentCpu.ReadUInt64(mapper.Kva(first));
        });
        m.Run(0, () =>
        {
            second = mapper.Alloc(page);
            m.CurrentCpu.ReadUInt64(mapper.Kva(second));
        });
        m.Run(1, () => mapper.Free(first)); // mapcount 1: the PTE stays, cpu 1 keeps its entry
        var before = m.Counters();
        m.Run(0, () => mapper.Free(second));
        var d = m.Counters() - before;

        Assert.That(d[Counter.Exposures], Is.EqualTo(windows));
        ulong vpn = Dmap(page) >> Pte.PageShift;
        if (windows != 0)
        {
            Assert.That(m.CpuAt(1).HoldsStale(vpn), Is.True, "until its next switch cpu 1 still translates the user page");
        }

        // After a switch (the probe's own start is one) cpu 1 reaches nothing.
        m.Run(1, () => Assert.That(() => m.CurrentCpu.ReadUInt64(Dmap(page)), Throws.TypeOf<PageFaultException>()));
        m.CloseExposures();
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero, "every access through the mapping matched its PTE");
        Assert.That(m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
    }

    /// <summary>
    /// Allocations to user space from a CPU: v7 takes each page out of the direct map and flushes it
    /// (a local invalidation and pending bits); v9 refills the CPU's list with a batch of
    /// <see cref="Xpfo.PcpBatch"/> pages, all out at once with one full local flush and pending bits,
    /// and a freed user page stays out, so allocating it to user space again costs nothing.
    /// </summary>
    [TestCase(SfBufMapper.LinuxXpfo)]
    [TestCase(SfBufMapper.LinuxXpfoDeferred)]
    [TestCase(SfBufMapper.LinuxXpfoBatched)]
    public void UserAllocationsFlushPerPageOrOncePerRefillBatch(string strategy)
    {
        const int pages = Xpfo.PcpBatch + 1;
        using var m = new SimMachine(Options(4));
        using var mapper = Create(m, strategy);
        bool batched = mapper.Policy == XpfoFlushPolicy.Batched;
        var allocated = new VmPage[pages];
        var before = m.Counters();
        m.Run(0, () =>
        {
            for (int i = 0; i < pages; i++)
            {
                allocated[i] = m.Physical.Alloc(AllocFlags.Wired | AllocFlags.User);
                Assert.That(m.KernelPmap.ReadPte(Dmap(allocated[i])), Is.Zero);
            }
        });
        var d = m.Counters() - before;
        long flushes = mapper.Stats().Details["xpfo.alloc_flushes"];
        Assert.That(flushes, Is.EqualTo(batched ? 2 : pages), "one flush per page, or per refill");
        Assert.That(d[Counter.KmemPteWrites], Is.EqualTo(batched ? 2 * Xpfo.PcpBatch : pages), "the allocator keeps the permanent map: a refill takes its whole batch out");
        Assert.That(d[Counter.KernelPteClears] + d[Counter.KernelPteWrites], Is.Zero, "no ephemeral mapping");
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(mapper.Policy == XpfoFlushPolicy.Immediate ? pages : 0));
        Assert.That(d[Counter.FullFlushes], Is.EqualTo(batched ? 2 : 0), "xpfo_flush_tlb_all per refill");

        m.Run(0, () =>
        {
            foreach (var page in allocated)
            {
                m.Physical.Unwire(page);
                m.Physical.Free(page);
            }

            for (int i = 0; i < pages; i++)
            {
                allocated[i] = m.Physical.Alloc(AllocFlags.Wired | AllocFlags.User);
            }
        });
        long again = mapper.Stats().Details["xpfo.alloc_flushes"] - flushes;
        Assert.That(again, Is.EqualTo(batched ? 0 : pages), "v9 leaves freed user pages out; v6/v7 restored them at free and take them out again");
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    /// <summary>
    /// The promise XPFO exists for, with each deferral's planted bug: after its next context switch a
    /// CPU owing no pending flush reaches no page out of the direct map. Deferred: cpu 1 holds a
    /// user page's translation when cpu 0's kunmap removes it; batched: cpu 1 holds a kernel page's
    /// translation when a refill on cpu 0 takes the freed page for user space.
    /// </summary>
    [TestCase(SfBufMapper.LinuxXpfoDeferred, 0)]
    [TestCase(SfBufMapper.LinuxXpfoDeferred, 512, TestName = "{m}(linux-xpfo-deferred, the switch's flush skipped: the planted bug)")]
    [TestCase(SfBufMapper.LinuxXpfoBatched, 0)]
    [TestCase(SfBufMapper.LinuxXpfoBatched, 1024, TestName = "{m}(linux-xpfo-batched, a CPU left out of the batch's pending mask: the planted bug)")]
    public void AfterItsNextSwitchNoCpuReachesAPageOutOfTheDirectMap(string strategy, int plantedBug)
    {
        // The planted bugs by value (PlantedBug is internal to the machine): 512 XpfoSwitchFlushSkipped, 1024 XpfoBatchSkipsOneCpu.
        var bug = (PlantedBug)plantedBug;
        using var m = new SimMachine(Options(2));
        var page = NewPage(m, 0x42);
        var kernelPage = NewPage(m, 0x43, user: false);
        using var mapper = Create(m, strategy);
        m.TestHookPlant(bug);
        SfBuf first = default, second = default;
        m.Run(1, () =>
        {
            first = mapper.Alloc(page);
            m.CurrentCpu.ReadUInt64(mapper.Kva(first));
        });
        m.Run(0, () =>
        {
            second = mapper.Alloc(page);
            m.CurrentCpu.ReadUInt64(mapper.Kva(second));
        });
        m.Run(1, () => mapper.Free(first));
        m.Run(0, () => mapper.Free(second)); // the page leaves the direct map: cpu 1 owes a flush
        m.Run(1, () =>
        {
            // The switch that runs this owes the flush; then cpu 1 caches a kernel page's translation.
            var k = mapper.Alloc(kernelPage);
            m.CurrentCpu.ReadUInt64(mapper.Kva(k));
            mapper.Free(k);
        });
        m.Physical.Unwire(kernelPage);
        m.Physical.Free(kernelPage);
        m.Run(0, () => m.Physical.Alloc(AllocFlags.Wired | AllocFlags.User)); // the freed kernel page leaves the direct map (batched: in a refill)
        m.Run(1, () => { }); // cpu 1's next switch
        var breaches = new List<string>();
        m.Run(1, () => breaches.AddRange(mapper.CheckExclusive()));

        TestContext.Out.WriteLine(string.Join(Environment.NewLine, breaches));
        Assert.That(breaches, bug == PlantedBug.None ? Is.Empty : Is.Not.Empty);
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    /// <summary>
    /// The explorer and each deferral's planted bug, as for mermap and ephmap: on a scenario where
    /// two threads per CPU map, read and unmap two user pages (switching while they hold them) and
    /// a kernel page one CPU has read is freed and taken for user space by the other, every explored
    /// schedule of the real code ends with no CPU reaching a page out of the direct map unless it
    /// owes a flush; with the deferred switch flush skipped, or a CPU left out of a refill batch's
    /// pending mask, the explorer finds a schedule that ends with one, and its seed replays it.
    /// </summary>
    [TestCase(SfBufMapper.LinuxXpfo, 0)]
    [TestCase(SfBufMapper.LinuxXpfoDeferred, 0)]
    [TestCase(SfBufMapper.LinuxXpfoBatched, 0)]
    [TestCase(SfBufMapper.LinuxXpfoDeferred, 512, TestName = "{m}(linux-xpfo-deferred, the switch's flush skipped: the planted bug)")]
    [TestCase(SfBufMapper.LinuxXpfoBatched, 1024, TestName = "{m}(linux-xpfo-batched, a CPU left out of the batch's pending mask: the planted bug)")]
    public void TheExplorerFindsEachDeferralsPlantedBugAndTheRealCodePasses(string strategy, int plantedBug)
    {
        var bug = (PlantedBug)plantedBug;
        var scenario = Exploration.XpfoScenario(strategy);
        if (bug == PlantedBug.None)
        {
            Exploration.AssertAllPass(scenario);
            return;
        }

        var found = Native.Tests.Exploration.Explorer.Explore(scenario, Native.Tests.Exploration.Explorer.CiBugBudget, bug);
        Assert.That(found, Is.Not.Null, $"the planted bug survived {Native.Tests.Exploration.Explorer.CiBugBudget} schedules of {scenario.Name}");
        TestContext.Out.WriteLine(found!.ToString());
        Assert.That(found.What, Does.Contain("owes no flush"), "found by the ownership check, not by some other failure");
        string? again = Native.Tests.Exploration.Explorer.RunOne(scenario, found.Seed, bug, out _, out int steps);
        Assert.That(again, Is.EqualTo(found.What), "the seed replays the failing schedule");
        Assert.That(steps, Is.EqualTo(found.Steps));
        Assert.That(Native.Tests.Exploration.Explorer.RunOne(scenario, found.Seed, PlantedBug.None, out _, out _), Is.Null, "the same schedule passes with the real code");
    }

    /// <summary>The XPFO scenario for the explorer.</summary>
    private static class Exploration
    {
        public static void AssertAllPass(Native.Tests.Exploration.Scenario scenario) =>
            Native.Tests.Exploration.Explorer.AssertAllPass(scenario, Native.Tests.Exploration.Explorer.Schedules());

        public static Native.Tests.Exploration.Scenario XpfoScenario(string strategy) => new($"xpfo-{strategy}-2cpu", Options(2) with { Checked = true }, run =>
        {
            var m = run.M;
            var mapper = Create(m, strategy);
            run.State["mapper"] = mapper;
            var pages = new[] { NewPage(m, 0x61), NewPage(m, 0x62) };
            var kernelPage = NewPage(m, 0x63, user: false);
            bool kernelPageRead = false;
            for (int t = 0; t < 4; t++)
            {
                int me = t;
                int cpu = t % 2;
                var random = run.RandomFor(me);
                m.StartThread($"xpfo{me}", () =>
                {
                    var td = KernelThread.Current;
                    if (me == 1)
                    {
                        // cpu 1 caches the kernel page's direct-map translation.
                        var k = mapper.Alloc(kernelPage);
                        m.CurrentCpu.ReadUInt64(mapper.Kva(k));
                        mapper.Free(k);
                        kernelPageRead = true;
                    }

                    for (int op = 0; op < 3; op++)
                    {
                        var page = pages[random.Next(pages.Length)];
                        var sf = mapper.Alloc(page);
                        if (random.Next(2) == 0)
                        {
                            td.Yield(); // switch while holding it
                        }

                        if (m.CurrentCpu.ReadUInt64(mapper.Kva(sf)) != 0x61UL + (page == pages[0] ? 0UL : 1UL))
                        {
                            run.Fail($"cpu {m.CurrentCpu.Id} read the wrong bytes through {sf}");
                        }

                        mapper.Free(sf);
                        td.Yield();
                    }

                    if (me == 0 && kernelPageRead)
                    {
                        // cpu 0 frees the kernel page cpu 1 has read (in the schedules where it has), and takes it for user space.
                        m.Physical.Unwire(kernelPage);
                        m.Physical.Free(kernelPage);
                        var user = m.Physical.Alloc(AllocFlags.Wired | AllocFlags.User);
                        td.Yield();
                        m.Physical.Unwire(user);
                        m.Physical.Free(user);
                    }

                    td.Yield(); // a last switch on this CPU
                }, cpu: cpu, bound: true);
            }
        })
        {
            ExpectedSteps = 200,
            Check = run =>
            {
                var mapper = (LinuxXpfoMapper)run.State["mapper"];
                foreach (var breach in mapper.CheckExclusive())
                {
                    run.Fail(breach);
                }

                if (run.M.Counters()[Counter.StaleAccesses] != 0)
                {
                    run.Fail("a stale access");
                }
            },
        };
    }

    /// <summary>kmap and kunmap of a user page (restore, removal, flush) and a user allocation allocate nothing managed once warm.</summary>
    [TestCase(SfBufMapper.LinuxXpfo)]
    [TestCase(SfBufMapper.LinuxXpfoDeferred)]
    [TestCase(SfBufMapper.LinuxXpfoBatched)]
    public void TheMappingPathsAllocateNothingManaged(string strategy)
    {
        using var m = new SimMachine(Options(2) with { Checked = false });
        var page = NewPage(m, 0x5a);
        using var mapper = Create(m, strategy);
        long allocated = -1;
        m.Run(0, () =>
        {
            for (int round = 0; round < 2; round++)
            {
                long before = GC.GetAllocatedBytesForCurrentThread();
                for (int i = 0; i < 200; i++)
                {
                    var sf = mapper.Alloc(page);
                    m.CurrentCpu.ReadUInt64(mapper.Kva(sf));
                    mapper.Free(sf);
                    var user = m.Physical.Alloc(AllocFlags.Wired | AllocFlags.User);
                    m.Physical.Unwire(user);
                    m.Physical.Free(user);
                }

                allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            }
        });
        Assert.That(allocated, Is.Zero);
        Assert.That(mapper.Stats().Details["xpfo.unmaps"], Is.EqualTo(400));
    }
}

