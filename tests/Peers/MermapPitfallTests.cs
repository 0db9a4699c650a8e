using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Strategies.Linux;
using Native.Tests.Machine;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Peers;

using SfBuf = Native.SfBufNative.SfBuf;

/// <summary>
/// The pitfalls of the <c>__GFP_UNMAPPED</c> RFC's mermap (<c>mm/mermap.c</c>): a put leaves the
/// translation in this CPU's TLB, so the wrap's local flush must come before any slot is reused;
/// a slot held at a wrap must be skipped, not reused; a mapping belongs to the CPU (and thread)
/// that made it. Each is shown with exact counts, and the skipped flush with the oracle firing.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class MermapPitfallTests
{
    private static readonly TimeSpan s_patience = TimeSpan.FromSeconds(30);

    /// <summary>
    /// N maps, each put before the next, in a region of R pages (R - 1 usable, the last reserved):
    /// the first wrap comes at map R, then every R - 1 maps: (N - 1) / (R - 1) wraps, one local full
    /// flush each, never an IPI or a shootdown. The translation a put leaves in the TLB is still
    /// there until the wrap, and gone when the slot is mapped again; with the flush skipped (the
    /// planted bug) it is still there, and the first read of the reused slot is stale.
    /// </summary>
    [TestCase(2, 5, 13, false)]
    [TestCase(1, 5, 13, false)]
    [TestCase(2, 32, 100, false)]
    [TestCase(2, 2, 7, false)]
    [TestCase(2, 5, 13, true, TestName = "{m}(the wrap's flush skipped: the planted bug)")]
    public void EveryWrapFlushesThisCpuOnceBeforeReuseAndNeverSendsAnIpi(int cpus, int regionPages, int maps, bool plantSkippedFlush)
    {
        using var m = new SimMachine(Options(cpus));
        using var mapper = (LinuxMermapMapper)SfBufMapper.Create(SfBufMapper.LinuxMermap, m);
        mapper.TestHookUseRegion(regionPages);
        if (plantSkippedFlush)
        {
            m.TestHookPlant(PlantedBug.MermapWrapFlushSkipped);
        }

        int usable = regionPages - 1;
        var pages = Enumerable.Range(0, maps).Select(i => Sim.NewPage(m, 0x1000UL + (ulong)i)).ToArray();
        var before = m.Counters();
        int staleReads = 0;
        m.Run(0, () =>
        {
            var td = KernelThread.Current;
            td.SchedPin();
            ulong slot0 = 0;
            for (int i = 0; i < maps; i++)
            {
                var sf = mapper.Alloc(pages[i], SfBufFlags.CpuPrivate);
                Assert.That(m.Layout.Fixmap.Contains(sf.Kva), Is.True, "a mermap slot, never the kmap fallback");
                Assert.That(sf.Kva, Is.EqualTo(m.Layout.FixmapAddress(0, i % usable)), "the bump pointer's next page");
                if (i == 0)
                {
                    slot0 = sf.Kva;
                }
                else if (i % usable == 0)
                {
                    // The slot is mapped again: its old translation was left by the put ...
                    Assert.That(m.CurrentCpu.TestHookTlbHolds(slot0), Is.EqualTo(plantSkippedFlush), "the wrap's flush dropped the old translation before the reuse");
                }

                try
                {
                    Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(sf)), Is.EqualTo(0x1000UL + (ulong)i));
                }
                catch (StaleTranslationException) when (plantSkippedFlush)
                {
                    staleReads++;
                }

                mapper.Free(sf);
                if (i == 0)
                {
                    Assert.That(m.CurrentCpu.TestHookTlbHolds(slot0), Is.True, "mermap_put clears the PTE and leaves the translation cached");
                }
            }

            td.SchedUnpin();
            Assert.That(td.PinCount, Is.Zero, "every put enabled migration again");
        });

        var delta = m.Counters() - before;
        var details = mapper.Stats().Details;
        int wraps = (maps - 1) / usable;
        Assert.That(details["mermap.maps"], Is.EqualTo(maps));
        Assert.That(details["mermap.wraps"], Is.EqualTo(wraps));
        Assert.That(details["mermap.flushes"], Is.EqualTo(plantSkippedFlush ? 0 : wraps));
        Assert.That(delta[Counter.FullFlushes], Is.EqualTo(plantSkippedFlush ? 0 : wraps), "one local full flush per wrap, nothing else");
        Assert.That(delta[Counter.LocalInvalidations], Is.Zero, "no invlpg: mermap_put does not flush");
        Assert.That(delta[Counter.IpisSent] + delta[Counter.ShootdownRounds], Is.Zero, "never an IPI");
        Assert.That(delta[Counter.KernelPteWrites], Is.EqualTo(maps));
        Assert.That(delta[Counter.KernelPteClears], Is.EqualTo(maps));
        Assert.That(details["mermap.failures"] + details["mermap.held_at_wrap"] + details["kmap.calls"], Is.Zero);
        Assert.That(mapper.Stats().Misses, Is.EqualTo(maps));
        if (plantSkippedFlush)
        {
            Assert.That(staleReads, Is.EqualTo(maps - usable), "every reused slot was read through its old translation");
            Assert.That(m.Counters()[Counter.StaleAccesses], Is.EqualTo(staleReads));
        }
        else
        {
            Assert.That(m.Counters()[Counter.StaleAccesses] + m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
        }
    }

    /// <summary>
    /// A slot held across a wrap is skipped: the bump restarts after the highest allocation in
    /// use, the freed pages below it wait for the next wrap, and when held mappings leave no room
    /// (or every tracking entry is taken) mermap_get fails and the private user gets kmap.
    /// </summary>
    [Test]
    public void ASlotHeldAcrossAWrapIsSkippedAndAFullRegionFallsBackToKmap()
    {
        using var m = new SimMachine(Options(cpus: 1));
        using var mapper = (LinuxMermapMapper)SfBufMapper.Create(SfBufMapper.LinuxMermap, m);
        mapper.TestHookUseRegion(5); // 4 usable pages
        var pages = Enumerable.Range(0, 12).Select(i => Sim.NewPage(m, 0x2000UL + (ulong)i)).ToArray();
        ulong Slot(int i) => m.Layout.FixmapAddress(0, i);
        m.Run(0, () =>
        {
            KernelThread.Current.SchedPin();
            SfBuf MapRead(int i)
            {
                var sf = mapper.Alloc(pages[i], SfBufFlags.CpuPrivate);
                Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(sf)), Is.EqualTo(0x2000UL + (ulong)i));
                return sf;
            }

            // Slots 0 and 2 held, 1 and 3 put.
            var a = MapRead(0);
            mapper.Free(MapRead(1));
            var c = MapRead(2);
            mapper.Free(MapRead(3));
            Assert.That(mapper.TestHookNextPage(0), Is.EqualTo(4));

            // The wrap: restart after c (slot 2), the highest held; slot 1 waits for the next wrap.
            var e = MapRead(4);
            Assert.That(e.Kva, Is.EqualTo(Slot(3)), "the bump restarted above the highest held slot");
            var details = mapper.Stats().Details;
            Assert.That(details["mermap.wraps"], Is.EqualTo(1));
            Assert.That(details["mermap.flushes"], Is.EqualTo(1));
            Assert.That(details["mermap.held_at_wrap"], Is.EqualTo(2));
            Assert.That(details["mermap.skipped_pages"], Is.EqualTo(1), "slot 1, freed but below a held slot");
            Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(a)), Is.EqualTo(0x2000UL), "the held slots still map their pages");
            Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(c)), Is.EqualTo(0x2002UL));

            // Full: a, c, e held up to the end; the next get wraps to after e and finds no room.
            var f = MapRead(5);
            Assert.That(m.Layout.SfBufWindow.Contains(f.Kva), Is.True, "mermap_get failed: the private user got kmap");
            details = mapper.Stats().Details;
            Assert.That(details["mermap.failures"], Is.EqualTo(1));
            Assert.That(details["mermap.wraps"], Is.EqualTo(1), "a failed get makes no wrap and no flush");
            Assert.That(details["kmap.calls"], Is.EqualTo(1));

            // Put a and c: e (slot 3) still holds the end of the region.
            mapper.Free(a);
            mapper.Free(c);
            var g = MapRead(6); // wraps: e (slot 3) is the highest held, nothing above it: fails
            Assert.That(m.Layout.SfBufWindow.Contains(g.Kva), Is.True);
            mapper.Free(e);
            var h = MapRead(7); // wraps to slot 0
            Assert.That(h.Kva, Is.EqualTo(Slot(0)));
            var i1 = MapRead(8);
            var i2 = MapRead(9);
            var i3 = MapRead(10);
            Assert.That(mapper.TestHookInUse(0), Is.EqualTo(4), "MERMAP_ALLOCS entries in use");
            var j = MapRead(11);
            Assert.That(m.Layout.SfBufWindow.Contains(j.Kva), Is.True, "the region is held to its end again: kmap");
            details = mapper.Stats().Details;
            Assert.That(details["mermap.failures"], Is.EqualTo(3));
            Assert.That(details["mermap.wraps"], Is.EqualTo(2));
            Assert.That(details["mermap.flushes"], Is.EqualTo(2));
            foreach (var sf in new[] { j, i3, i2, i1, h, g, f })
            {
                mapper.Free(sf);
            }

            KernelThread.Current.SchedUnpin();
            Assert.That(KernelThread.Current.PinCount, Is.Zero);
        });
        Assert.That(mapper.Stats().NsfbufsUsed, Is.Zero);
        Assert.That(mapper.Stats().Details["mermap.maps"], Is.EqualTo(9));
        Assert.That(m.Counters()[Counter.StaleAccesses] + m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
        Assert.That(m.Counters()[Counter.IpisSent], Is.Zero);
    }

    /// <summary>With room left in the region, a fifth held mapping on a CPU finds no free tracking entry (<c>MERMAP_ALLOCS</c>): kmap.</summary>
    [Test]
    public void AFifthHeldMappingFindsNoTrackingEntryAndFallsBackToKmap()
    {
        using var m = new SimMachine(Options(cpus: 1));
        using var mapper = (LinuxMermapMapper)SfBufMapper.Create(SfBufMapper.LinuxMermap, m);
        var pages = Enumerable.Range(0, 5).Select(i => Sim.NewPage(m, 0x3000UL + (ulong)i)).ToArray();
        m.Run(0, () =>
        {
            KernelThread.Current.SchedPin();
            var held = pages.Select(p => mapper.Alloc(p, SfBufFlags.CpuPrivate)).ToArray();
            Assert.That(held.Take(4).All(sf => m.Layout.Fixmap.Contains(sf.Kva)), Is.True);
            Assert.That(m.Layout.SfBufWindow.Contains(held[4].Kva), Is.True, "the fifth is kmap's");
            Assert.That(mapper.TestHookNextPage(0), Is.EqualTo(4), "room was left in the region");
            for (int i = 0; i < held.Length; i++)
            {
                Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(held[i])), Is.EqualTo(0x3000UL + (ulong)i));
                mapper.Free(held[i]);
            }

            KernelThread.Current.SchedUnpin();
        });
        var details = mapper.Stats().Details;
        Assert.That(details["mermap.failures"], Is.EqualTo(1));
        Assert.That(details["mermap.wraps"], Is.Zero);
        Assert.That(details["kmap.calls"], Is.EqualTo(1));
        Assert.That(mapper.Capacity(SfBufFlags.CpuPrivate), Is.EqualTo(Mermap.MERMAP_ALLOCS + mapper.LastPkmap));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    /// <summary>
    /// A mapping is the CPU's and the thread's that made it: its holder cannot migrate, a read on
    /// another CPU is a private-mapping violation, a put on another CPU or by another thread on the
    /// same CPU is refused, and so is a second put.
    /// </summary>
    [Test]
    public void UseOnAnotherCpuOrByAnotherThreadIsRefused()
    {
        using var m = new SimMachine(Options(cpus: 2));
        using var mapper = (LinuxMermapMapper)SfBufMapper.Create(SfBufMapper.LinuxMermap, m);
        var page = Sim.NewPage(m, 0x77);
        SfBuf sf = default;
        m.Run(0, () =>
        {
            var td = KernelThread.Current;
            td.SchedPin();
            sf = mapper.Alloc(page, SfBufFlags.CpuPrivate);
            td.SchedUnpin();
            Assert.That(td.PinCount, Is.EqualTo(1), "migration stays disabled while the mapping is held");
            Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(sf)), Is.EqualTo(0x77UL));

            var sameCpu = m.StartThread("same cpu, other thread", () => mapper.Free(sf), cpu: 0, bound: true);
            Assert.That(() => sameCpu.Join(s_patience), Throws.InvalidOperationException.With.Message.Contains("another thread made it"));

            var otherCpu = m.StartThread("other cpu", () =>
            {
                Assert.That(() => m.CurrentCpu.ReadUInt64(sf.Kva), Throws.TypeOf<PrivateMappingViolationException>(), "a read on another CPU");
                mapper.Free(sf);
            }, cpu: 1, bound: true);
            Assert.That(() => otherCpu.Join(s_patience), Throws.InvalidOperationException.With.Message.Contains("made on cpu 0"));

            Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(sf)), Is.EqualTo(0x77UL), "still mapped after the refusals");
            mapper.Free(sf);
            Assert.That(td.PinCount, Is.Zero);
            Assert.That(() => mapper.Free(sf), Throws.InvalidOperationException.With.Message.Contains("double put"));
        });
        Assert.That(mapper.TestHookInUse(0), Is.Zero);
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    /// <summary>
    /// The private map path, wraps and their flushes included, allocates no managed memory: the
    /// per-CPU state is native, the handle a struct.
    /// </summary>
    [TestCase(false)]
    [TestCase(true)]
    public void GetAndPutAcrossWrapsAllocateNoManagedMemory(bool isChecked)
    {
        using var m = new SimMachine(Options(cpus: 2) with { Checked = isChecked });
        using var mapper = (LinuxMermapMapper)SfBufMapper.Create(SfBufMapper.LinuxMermap, m);
        mapper.TestHookUseRegion(4);
        var page = Sim.NewPage(m, 0x99);
        const int operations = 3000;
        long allocated = -1;
        int wrongReads = 0;
        m.Run(0, () =>
        {
            var cpu = m.CurrentCpu;
            KernelThread.Current.SchedPin();
            for (int round = 0; round < 2; round++)
            {
                long before = GC.GetAllocatedBytesForCurrentThread();
                for (int i = 0; i < operations; i++)
                {
                    var sf = mapper.Alloc(page, SfBufFlags.CpuPrivate);
                    wrongReads += cpu.ReadUInt64(mapper.Kva(sf)) != 0x99UL ? 1 : 0;
                    mapper.Free(sf);
                }

                allocated = GC.GetAllocatedBytesForCurrentThread() - before; // the second round, warm
            }

            KernelThread.Current.SchedUnpin();
        });

        Assert.That(wrongReads, Is.Zero);
        Assert.That(allocated, Is.Zero, "mermap_get and mermap_put allocate nothing managed");
        Assert.That(mapper.Stats().Details["mermap.wraps"], Is.EqualTo(((2 * operations) - 1) / 3));
        Assert.That(mapper.Stats().Details["kmap.calls"], Is.Zero);
    }

    private static MachineOptions Options(int cpus) => new()
    {
        Cpus = cpus,
        PhysicalMemoryBytes = 16UL << 20,
        SfBufWindowPages = 8,
        KernelMapPages = 64,
        KernelMemoryPages = 256,
        Checked = true,
        ShootdownWatchdog = TimeSpan.FromSeconds(15),
    };
}
