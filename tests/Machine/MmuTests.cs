using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>TLB fills, the accessed and modified bits, and page faults.</summary>
[TestFixture]
[NonParallelizable]
public sealed class MmuTests
{
    [Test]
    public void ATlbFillOnAReadSetsTheAccessedBitAndLeavesTheModifiedBitClear()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;
        var page = Sim.NewPage(m, 42);
        ulong entered = 0, afterRead = 0;

        m.Run(0, () =>
        {
            m.KernelPmap.KEnter(va, page);
            entered = m.KernelPmap.ReadPte(va);
            m.CurrentCpu.ReadUInt64(va);
            afterRead = m.KernelPmap.ReadPte(va);
        });

        Assert.That(entered & Pte.PG_A, Is.Zero, "pmap_kenter maps with PG_A clear");
        Assert.That(entered & (Pte.PG_V | Pte.PG_RW | Pte.PG_G), Is.EqualTo(Pte.PG_V | Pte.PG_RW | Pte.PG_G));
        Assert.That(afterRead & Pte.PG_A, Is.EqualTo(Pte.PG_A));
        Assert.That(afterRead & Pte.PG_M, Is.Zero);
        Assert.That(Pte.Frame(afterRead), Is.EqualTo(page.Frame));
    }

    [Test]
    public void AWriteSetsTheModifiedBit()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;
        var page = Sim.NewPage(m, 0);
        ulong afterWrite = 0;

        m.Run(0, () =>
        {
            m.KernelPmap.KEnter(va, page);
            m.CurrentCpu.WriteUInt64(va + 16, 0x1234);
            afterWrite = m.KernelPmap.ReadPte(va);
        });

        Assert.That(afterWrite & (Pte.PG_A | Pte.PG_M), Is.EqualTo(Pte.PG_A | Pte.PG_M));
        Assert.That(BitConverter.ToUInt64(m.Physical.PhysicalBytes(page)[16..24]), Is.EqualTo(0x1234UL));
    }

    [Test]
    public void AWriteThroughACleanEntryWalksAgainToSetTheModifiedBit()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;
        var page = Sim.NewPage(m, 0);
        CounterSnapshot? write = null;
        ulong afterRead = 0, afterWrite = 0;

        m.Run(0, () =>
        {
            m.KernelPmap.KEnter(va, page);
            m.CurrentCpu.ReadUInt64(va);
            afterRead = m.KernelPmap.ReadPte(va);
            var before = m.Counters();
            m.CurrentCpu.WriteUInt64(va, 7);
            write = m.Counters() - before;
            afterWrite = m.KernelPmap.ReadPte(va);
        });

        Assert.That(afterRead & Pte.PG_M, Is.Zero);
        Assert.That(afterWrite & Pte.PG_M, Is.EqualTo(Pte.PG_M));
        Assert.That(write![Counter.TlbMisses], Is.EqualTo(1));
        Assert.That(write[Counter.TlbHits], Is.Zero);
    }

    [Test]
    public void ATlbHitDoesNotSetTheAccessedBitOnlyAFillDoes()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;
        var page = Sim.NewPage(m, 0);
        ulong afterHit = 0, afterRefill = 0;
        CounterSnapshot? hit = null;

        m.Run(0, () =>
        {
            var cpu = m.CurrentCpu;
            m.KernelPmap.KEnter(va, page);
            cpu.ReadUInt64(va);

            // Clear PG_A behind the TLB's back (same frame, so the entry is not stale).
            ulong pte = m.KernelPmap.ReadPte(va);
            m.KernelPmap.ExchangePte(va, pte & ~(Pte.PG_A | Pte.PG_M));
            var before = m.Counters();
            cpu.ReadUInt64(va);
            hit = m.Counters() - before;
            afterHit = m.KernelPmap.ReadPte(va);

            cpu.InvalidatePage(va);
            cpu.ReadUInt64(va);
            afterRefill = m.KernelPmap.ReadPte(va);
        });

        Assert.That(hit![Counter.TlbHits], Is.EqualTo(1));
        Assert.That(hit[Counter.TlbMisses], Is.Zero);
        Assert.That(afterHit & Pte.PG_A, Is.Zero, "a hit uses the cached entry and leaves the PTE alone");
        Assert.That(afterRefill & Pte.PG_A, Is.EqualTo(Pte.PG_A));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void AFullTlbSetEvictsItsEntriesRoundRobin()
    {
        // 8 entries, 2 ways: 4 sets, so kernel_map pages 0, 4 and 8 share one set.
        using var m = new SimMachine(Sim.Small() with { TlbEntries = 8, TlbWays = 2 });
        ulong Page(int i) => m.Layout.KernelMap.PageAddress(i);
        var misses = new List<long>();

        m.Run(0, () =>
        {
            foreach (int i in new[] { 0, 4, 8 })
            {
                m.KernelPmap.KEnter(Page(i), Sim.NewPage(m, (ulong)i));
            }

            long last = m.Counters()[Counter.TlbMisses];
            foreach (int i in new[] { 0, 4, 8, 4, 0, 8 })
            {
                m.CurrentCpu.ReadUInt64(Page(i));
                long now = m.Counters()[Counter.TlbMisses];
                misses.Add(now - last);
                last = now;
            }
        });

        // 0 and 4 fill the set; 8 evicts 0 (the first victim); 4 still hits; 0 misses and evicts 4; 8 hits.
        Assert.That(misses, Is.EqualTo(new long[] { 1, 1, 1, 0, 1, 0 }));
    }

    [Test]
    public void ARangeShootdownInvalidatesExactlyTheRangeOnTheTarget()
    {
        using var m = new SimMachine(Sim.Small());
        ulong Page(int i) => m.Layout.KernelMap.PageAddress(i);
        m.Run(0, () =>
        {
            for (int i = 0; i < 4; i++)
            {
                m.KernelPmap.KEnter(Page(i), Sim.NewPage(m, (ulong)i));
            }
        });
        var cached = new Flag();
        var shot = new Flag();
        var missed = new List<long>();

        var target = m.StartThread("target", () =>
        {
            for (int i = 0; i < 4; i++)
            {
                m.CurrentCpu.ReadUInt64(Page(i));
            }

            cached.Set();
            Sim.SpinOnCpu(m, () => shot.IsSet, "the range is shot down");
            for (int i = 0; i < 4; i++)
            {
                long before = m.Counters().OnCpu(1, Counter.TlbMisses);
                m.CurrentCpu.ReadUInt64(Page(i));
                missed.Add(m.Counters().OnCpu(1, Counter.TlbMisses) - before);
            }
        }, cpu: 1, bound: true);
        Sim.WaitUntil(() => cached.IsSet, "the target cached four pages");
        m.Run(0, () => m.CurrentCpu.Shootdown(m.Cpus[1].Mask, ShootdownKind.Range, Page(1), pages: 2));
        shot.Set();
        Sim.Join(target);

        Assert.That(missed, Is.EqualTo(new long[] { 0, 1, 1, 0 }));
        Assert.That(m.Counters().OnCpu(1, Counter.LocalInvalidations), Is.EqualTo(2));
    }

    [Test]
    public void AnAllShootdownFlushesGlobalEntriesOnTheTarget()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;
        m.Run(0, () => m.KernelPmap.KEnter(va, Sim.NewPage(m, 1)));
        var cached = new Flag();
        var shot = new Flag();
        long missed = -1;

        var target = m.StartThread("target", () =>
        {
            m.CurrentCpu.ReadUInt64(va);
            cached.Set();
            Sim.SpinOnCpu(m, () => shot.IsSet, "the TLB is shot down");
            long before = m.Counters().OnCpu(1, Counter.TlbMisses);
            m.CurrentCpu.ReadUInt64(va);
            missed = m.Counters().OnCpu(1, Counter.TlbMisses) - before;
        }, cpu: 1, bound: true);
        Sim.WaitUntil(() => cached.IsSet, "the target cached the page");
        m.Run(0, () => m.CurrentCpu.ShootdownAllButSelf(ShootdownKind.All));
        shot.Set();
        Sim.Join(target);

        Assert.That(missed, Is.EqualTo(1));
        Assert.That(m.Counters().OnCpu(1, Counter.FullFlushes), Is.EqualTo(1));
    }

    [Test]
    public void ReadingAKernelAddressWhosePteIsInvalidRaisesAPageFaultNamingTheCpuAndTheAddress()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.PageAddress(5) + 0x18;
        PageFaultException? fault = null;

        m.Run(1, () =>
        {
            try
            {
                m.CurrentCpu.ReadUInt64(va);
            }
            catch (PageFaultException e)
            {
                fault = e;
            }
        });

        Assert.That(fault, Is.Not.Null);
        Assert.That(fault!.Cpu, Is.EqualTo(1));
        Assert.That(fault.Address, Is.EqualTo(va));
        Assert.That(fault.IsWrite, Is.False);
        Assert.That(fault.Message, Does.Contain("cpu 1"));
        Assert.That(fault.Message, Does.Contain($"0x{va:x}"));
        Assert.That(m.Counters().OnCpu(1, Counter.PageFaults), Is.EqualTo(1));
        Assert.That(m.Counters()[Counter.TlbMisses], Is.Zero, "a faulting walk caches nothing");
    }

    [Test]
    public void AKernelAddressOutsideEveryKernelRegionFaults()
    {
        using var m = new SimMachine(Sim.Small());
        ulong beyond = VmLayout.KERNBASE + ((ulong)m.Layout.KernelPages << Pte.PageShift);

        Assert.That(
            () => m.Run(0, () => m.CurrentCpu.WriteUInt64(beyond, 1)),
            Throws.TypeOf<PageFaultException>()
                .With.Property(nameof(PageFaultException.Address)).EqualTo(beyond)
                .And.Property(nameof(PageFaultException.IsWrite)).True);
    }

    [Test]
    public void AUserAddressWithNoMappingFaultsInAThreadWithNoAddressSpace()
    {
        using var m = new SimMachine(Sim.Small());
        const ulong uva = 0x40_0000;

        Assert.That(
            () => m.Run(0, () => m.CurrentCpu.ReadUInt64(uva)),
            Throws.TypeOf<PageFaultException>()
                .With.Property(nameof(PageFaultException.Address)).EqualTo(uva)
                .And.Property(nameof(PageFaultException.Cpu)).EqualTo(0));
    }

    [Test]
    public void AnUnmappedUserAddressFaultsInAThreadWithAnAddressSpace()
    {
        using var m = new SimMachine(Sim.Small());
        const ulong mapped = 0x40_0000;
        var space = m.CreateVmSpace();
        PageFaultException? fault = null;

        m.Run(0, () =>
        {
            space.MapAnonymous(mapped, Pte.PageSize);
            m.CurrentCpu.WriteUInt64(mapped, 1);
            try
            {
                m.CurrentCpu.ReadUInt64(mapped + Pte.PageSize); // same PTE page, next PTE invalid
            }
            catch (PageFaultException e)
            {
                fault = e;
            }
        }, space);

        Assert.That(fault, Is.Not.Null);
        Assert.That(fault!.Address, Is.EqualTo(mapped + Pte.PageSize));
        Assert.That(fault.Message, Does.Contain("not valid"));
        Assert.That(m.Counters()[Counter.PageFaults], Is.EqualTo(1));
    }

    [Test]
    public void AWriteToAReadOnlyUserPageFaultsAndLeavesThePageUnchanged()
    {
        using var m = new SimMachine(Sim.Small());
        const ulong uva = 0x40_0000;
        var space = m.CreateVmSpace();
        ulong read = 1;

        Assert.That(
            () => m.Run(0, () =>
            {
                space.MapAnonymous(uva, Pte.PageSize, writable: false);
                read = m.CurrentCpu.ReadUInt64(uva);
                m.CurrentCpu.WriteUInt64(uva, 99);
            }, space),
            Throws.TypeOf<PageFaultException>().With.Property(nameof(PageFaultException.IsWrite)).True);
        Assert.That(read, Is.Zero);
        Assert.That(space.Pmap.Extract(uva), Is.Not.Null);
        Assert.That(m.Physical.PhysicalBytes(space.Pmap.Extract(uva)!.Value)[0], Is.Zero);
    }

    [Test]
    public void TheDirectMapReadsAnyFrameWithoutTouchingTheTlb()
    {
        using var m = new SimMachine(Sim.Small());
        var page = Sim.NewPage(m, 0x5151);
        ulong seen = 0;
        CounterSnapshot? d = null;

        m.Run(0, () =>
        {
            var before = m.Counters();
            seen = m.CurrentCpu.ReadUInt64(m.Layout.DirectMap(page.PhysicalAddress));
            d = m.Counters() - before;
        });

        Assert.That(seen, Is.EqualTo(0x5151UL));
        Assert.That(d![Counter.TlbHits] + d[Counter.TlbMisses], Is.Zero);
    }

    [Test]
    public void TheI386FlavourHasNoDirectMap()
    {
        using var m = new SimMachine(Sim.Small() with { Flavor = MachineFlavor.I386 });

        Assert.That(m.Layout.DirectMapBytes, Is.Zero);
        Assert.That(() => m.Layout.DirectMap(0), Throws.InvalidOperationException);
        Assert.That(
            () => m.Run(0, () => m.CurrentCpu.ReadUInt64(VmLayout.DMAP_BASE)),
            Throws.TypeOf<PageFaultException>());
    }
}
