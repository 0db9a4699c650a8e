using System.Numerics;
using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;
using SfBufHandle = Native.SfBufNative.SfBuf;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>sfbuf-i386, FreeBSD's 2006 algorithm (reference A.3), branch by branch, on a 2-CPU machine unless said.</summary>
[TestFixture]
[NonParallelizable]
public sealed class I386MapperTests
{
    // ------------------------------------------------------------------ sharing and the hit path

    [Test]
    public void TwoAllocationsOfOnePageGiveOneKvaAndReferenceCountTwo()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 8);
        var page = SfBufRig.NewPage(m);
        SfBufHandle first = default, second = default;

        m.Run(0, () => first = sfbufs.Alloc(page));
        m.Run(1, () => second = sfbufs.Alloc(page));
        var entry = sfbufs.TestHookEntry(first.Slot);

        Assert.That(second.Kva, Is.EqualTo(first.Kva));
        Assert.That(second.Slot, Is.EqualTo(first.Slot));
        Assert.That(SfBufMapper.Page(second), Is.EqualTo(page));
        Assert.That(first.Kva, Is.EqualTo(m.Layout.SfBufWindow.PageAddress(first.Slot)));
        Assert.That(entry.HasPage, Is.True);
        Assert.That(entry.Frame, Is.EqualTo(page.Frame));
        Assert.That(entry.RefCount, Is.EqualTo(2));
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.EqualTo(1));
        Assert.That(sfbufs.Stats().Hits, Is.EqualTo(1));
        Assert.That(sfbufs.Stats().Misses, Is.EqualTo(1));

        m.Run(0, () => sfbufs.Free(first));
        Assert.That(sfbufs.TestHookEntry(first.Slot).RefCount, Is.EqualTo(1));
        Assert.That(sfbufs.TestHookFreeList(), Does.Not.Contain(first.Slot), "1 -> 0 only puts an sf_buf on the free list");
        m.Run(1, () => sfbufs.Free(second));
        Assert.That(sfbufs.TestHookEntry(first.Slot).RefCount, Is.EqualTo(0));
        Assert.That(sfbufs.TestHookFreeList()[^1], Is.EqualTo(first.Slot));
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.EqualTo(0));
    }

    [Test]
    public void AHitWritesNoPte()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 8);
        var page = SfBufRig.NewPage(m);
        SfBufHandle inactiveHit = default, activeHit = default;
        ulong read = 0;
        CounterSnapshot? d = null;

        m.Run(0, () =>
        {
            var sf = sfbufs.Alloc(page);
            m.CurrentCpu.ReadUInt64(sf.Kva);
            sfbufs.Free(sf);
            var before = m.Counters();
            inactiveHit = sfbufs.Alloc(page);     // the sf_buf was inactive: 0 -> 1
            activeHit = sfbufs.Alloc(page);       // and now active: 1 -> 2
            d = m.Counters() - before;
            read = m.CurrentCpu.ReadUInt64(inactiveHit.Kva);
            sfbufs.Free(activeHit);
            sfbufs.Free(inactiveHit);
        });

        Assert.That(d![Counter.KernelPteWrites], Is.EqualTo(0));
        Assert.That(d[Counter.KernelPteClears], Is.EqualTo(0));
        Assert.That(activeHit.Kva, Is.EqualTo(inactiveHit.Kva));
        Assert.That(read, Is.EqualTo(SfBufRig.Stamp(page)));
        Assert.That(sfbufs.Stats().Hits, Is.EqualTo(2));
        Assert.That(sfbufs.Stats().Misses, Is.EqualTo(1));
    }

    [Test]
    public void AHitFromACpuAlreadyInTheMaskInvalidatesNothingAndSendsNoIpi()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 8);
        var page = SfBufRig.NewPage(m);
        CounterSnapshot? d = null;

        m.Run(0, () =>
        {
            sfbufs.Free(sfbufs.Alloc(page)); // shared: the mask becomes every CPU
            var before = m.Counters();
            var shared = sfbufs.Alloc(page);
            var priv = sfbufs.Alloc(page, SfBufFlags.CpuPrivate);
            d = m.Counters() - before;
            sfbufs.Free(priv);
            sfbufs.Free(shared);
        });

        Assert.That(d![Counter.LocalInvalidations], Is.EqualTo(0));
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(0));
        Assert.That(d[Counter.IpiTargets], Is.EqualTo(0));
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(0));
    }

    [Test]
    public void FreeWritesNoPteAndInvalidatesNothing()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 8);
        var page = SfBufRig.NewPage(m);
        SfBufHandle sf = default;
        CounterSnapshot? d = null;
        ulong pteBefore = 0;

        m.Run(0, () =>
        {
            sf = sfbufs.Alloc(page);
            m.CurrentCpu.ReadUInt64(sf.Kva);
            pteBefore = m.KernelPmap.ReadPte(sf.Kva);
            var before = m.Counters();
            sfbufs.Free(sf);
            d = m.Counters() - before;
        });

        Assert.That(d![Counter.KernelPteWrites], Is.EqualTo(0));
        Assert.That(d[Counter.KernelPteClears], Is.EqualTo(0));
        Assert.That(d[Counter.LocalInvalidations], Is.EqualTo(0));
        Assert.That(d[Counter.FullFlushes], Is.EqualTo(0));
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(0));
        Assert.That(d[Counter.IpiTargets], Is.EqualTo(0));

        // The inactive sf_buf keeps its mapping: same PTE, still in the hash, at the free list's tail.
        Assert.That(m.KernelPmap.ReadPte(sf.Kva), Is.EqualTo(pteBefore));
        Assert.That(Pte.Frame(pteBefore), Is.EqualTo(page.Frame));
        Assert.That(sfbufs.TestHookLookup(page.Frame), Is.EqualTo(sf.Slot));
        Assert.That(sfbufs.TestHookFreeList()[^1], Is.EqualTo(sf.Slot));
    }

    // ------------------------------------------------------------------ LRU

    [Test]
    public void TheVictimIsTheLeastRecentlyFreedInactiveSfBuf()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 4);
        var p = SfBufRig.NewPages(m, 8); // A B C D, then E F G H
        var held = new SfBufHandle[4];
        var reused = new SfBufHandle[4];
        var freeListAfterFrees = new List<int>();
        var lookupsOfEvicted = new int[4];

        m.Run(0, () =>
        {
            for (int i = 0; i < 4; i++)
            {
                held[i] = sfbufs.Alloc(p[i]);
            }

            foreach (int i in new[] { 2, 0, 3, 1 }) // free C, A, D, B
            {
                sfbufs.Free(held[i]);
            }

            freeListAfterFrees.AddRange(sfbufs.TestHookFreeList());
            for (int i = 0; i < 4; i++)
            {
                reused[i] = sfbufs.Alloc(p[4 + i]); // E, F, G, H
            }

            for (int i = 0; i < 4; i++)
            {
                lookupsOfEvicted[i] = sfbufs.TestHookLookup(p[i].Frame);
            }
        });

        Assert.That(freeListAfterFrees, Is.EqualTo(new[] { held[2].Slot, held[0].Slot, held[3].Slot, held[1].Slot }));
        Assert.That(reused[0].Slot, Is.EqualTo(held[2].Slot), "E reuses C's sf_buf");
        Assert.That(reused[0].Kva, Is.EqualTo(held[2].Kva));
        Assert.That(reused[1].Slot, Is.EqualTo(held[0].Slot), "F reuses A's sf_buf");
        Assert.That(reused[1].Kva, Is.EqualTo(held[0].Kva));
        Assert.That(reused[2].Slot, Is.EqualTo(held[3].Slot), "G reuses D's sf_buf");
        Assert.That(reused[3].Slot, Is.EqualTo(held[1].Slot), "H reuses B's sf_buf");
        Assert.That(lookupsOfEvicted, Is.All.EqualTo(-1), "a recycled sf_buf leaves its old page's hash chain");
        Assert.That(sfbufs.Stats().Recycles, Is.EqualTo(4));
        Assert.That(sfbufs.TestHookFreeList(), Is.Empty);
    }

    [Test]
    public void AHitOnAnInactiveSfBufTakesItOffTheFreeListSoTheNextVictimIsTheOneAfterIt()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 3);
        var p = SfBufRig.NewPages(m, 4);
        var held = new SfBufHandle[3];
        SfBufHandle again = default, fresh = default;
        var freeListAfterHit = new List<int>();

        m.Run(0, () =>
        {
            for (int i = 0; i < 3; i++)
            {
                held[i] = sfbufs.Alloc(p[i]);
            }

            for (int i = 0; i < 3; i++)
            {
                sfbufs.Free(held[i]);
            }

            again = sfbufs.Alloc(p[0]); // the head of the free list, hit again
            freeListAfterHit.AddRange(sfbufs.TestHookFreeList());
            fresh = sfbufs.Alloc(p[3]);
        });

        Assert.That(again.Slot, Is.EqualTo(held[0].Slot));
        Assert.That(freeListAfterHit, Is.EqualTo(new[] { held[1].Slot, held[2].Slot }));
        Assert.That(fresh.Slot, Is.EqualTo(held[1].Slot));
        Assert.That(sfbufs.TestHookLookup(p[0].Frame), Is.EqualTo(held[0].Slot));
    }

    // ------------------------------------------------------------------ the PG_A rule

    [Test]
    public void RecyclingAnSfBufWhoseOldMappingWasAccessedClearsTheMaskAndInvalidatesLocally()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 1);
        var p1 = SfBufRig.NewPage(m);
        var p2 = SfBufRig.NewPage(m);
        CpuSet maskBefore = default, maskAfter = default;
        ulong oldPte = 0, newPte = 0, read = 0;
        CounterSnapshot? d = null;

        m.Run(0, () =>
        {
            var sf = sfbufs.Alloc(p1);                  // shared: every CPU joins the mask
            m.CurrentCpu.ReadUInt64(sf.Kva);            // the walk sets PG_A
            sfbufs.Free(sf);
            maskBefore = sfbufs.TestHookEntry(0).CpuMask;
            oldPte = m.KernelPmap.ReadPte(sf.Kva);

            var before = m.Counters();
            var sf2 = sfbufs.Alloc(p2, SfBufFlags.CpuPrivate);
            d = m.Counters() - before;
            maskAfter = sfbufs.TestHookEntry(0).CpuMask;
            newPte = m.KernelPmap.ReadPte(sf2.Kva);
            read = m.CurrentCpu.ReadUInt64(sf2.Kva);
            sfbufs.Free(sf2);
        });

        Assert.That(maskBefore, Is.EqualTo(CpuSet.FromWord(0b11)));
        Assert.That(oldPte & (Pte.PG_V | Pte.PG_A), Is.EqualTo(Pte.PG_V | Pte.PG_A));
        Assert.That(maskAfter, Is.EqualTo(CpuSet.FromWord(0b01)), "the mask was cleared, then the allocating CPU joined");
        Assert.That(d!.OnCpu(0, Counter.LocalInvalidations), Is.EqualTo(1));
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(1));
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(0));
        Assert.That(Pte.Frame(newPte), Is.EqualTo(p2.Frame));
        Assert.That(newPte & (Pte.PG_A | Pte.PG_M), Is.EqualTo(0UL), "a new mapping starts with PG_A and PG_M clear");
        Assert.That(read, Is.EqualTo(SfBufRig.Stamp(p2)));
    }

    [Test]
    public void RecyclingAnSfBufWhoseOldMappingWasNeverAccessedKeepsTheMaskAndDoesNotInvalidateOnACpuInIt()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 1);
        var p1 = SfBufRig.NewPage(m);
        var p2 = SfBufRig.NewPage(m);
        CpuSet maskBefore = default, maskAfter = default;
        ulong oldPte = 0, read = 0;
        CounterSnapshot? d = null;

        m.Run(0, () =>
        {
            sfbufs.Free(sfbufs.Alloc(p1));              // shared, never touched
            maskBefore = sfbufs.TestHookEntry(0).CpuMask;
            oldPte = m.KernelPmap.ReadPte(m.Layout.SfBufWindow.PageAddress(0));

            var before = m.Counters();
            var sf2 = sfbufs.Alloc(p2, SfBufFlags.CpuPrivate);
            d = m.Counters() - before;
            maskAfter = sfbufs.TestHookEntry(0).CpuMask;
            read = m.CurrentCpu.ReadUInt64(sf2.Kva);
            sfbufs.Free(sf2);
        });

        Assert.That(maskBefore, Is.EqualTo(CpuSet.FromWord(0b11)));
        Assert.That(oldPte & Pte.PG_A, Is.EqualTo(0UL));
        Assert.That(maskAfter, Is.EqualTo(CpuSet.FromWord(0b11)), "an unused old mapping leaves the mask as it was");
        Assert.That(d![Counter.LocalInvalidations], Is.EqualTo(0));
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(0));
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(1));
        Assert.That(read, Is.EqualTo(SfBufRig.Stamp(p2)));
    }

    [Test]
    public void RecyclingAnUnaccessedSfBufStillInvalidatesLocallyOnACpuOutsideTheKeptMask()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 1);
        var p1 = SfBufRig.NewPage(m);
        var p2 = SfBufRig.NewPage(m);
        CpuSet maskAfter = default;
        CounterSnapshot? d = null;

        m.Run(0, () => sfbufs.Free(sfbufs.Alloc(p1, SfBufFlags.CpuPrivate))); // mask {0}, never touched
        m.Run(1, () =>
        {
            var before = m.Counters();
            var sf = sfbufs.Alloc(p2, SfBufFlags.CpuPrivate);
            d = m.Counters() - before;
            maskAfter = sfbufs.TestHookEntry(0).CpuMask;
            sfbufs.Free(sf);
        });

        Assert.That(maskAfter, Is.EqualTo(CpuSet.FromWord(0b11)));
        Assert.That(d!.OnCpu(1, Counter.LocalInvalidations), Is.EqualTo(1));
        Assert.That(d.OnCpu(0, Counter.LocalInvalidations), Is.EqualTo(0));
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(0));
    }

    // ------------------------------------------------------------------ the 2005 corner case (reference A.3.6)

    [Test]
    public void AStaleEntryFromAnOlderMappingSurvivesNoUntouchedPrivateRemapAndSharedRecycle()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 1); // one sf_buf: every allocation reuses it
        var p1 = SfBufRig.NewPage(m);
        var p2 = SfBufRig.NewPage(m);
        var p3 = SfBufRig.NewPage(m);
        ulong kva = m.Layout.SfBufWindow.PageAddress(0);
        ulong readP1 = 0, readP3 = 0;
        CpuSet maskAfterPrivate = default, maskAfterShared = default;
        SfBufHandle s3 = default;

        // CPU 1 caches a shared mapping of P1 by reading through it.
        m.Run(1, () =>
        {
            var s1 = sfbufs.Alloc(p1);
            readP1 = m.CurrentCpu.ReadUInt64(s1.Kva);
            sfbufs.Free(s1);
        });

        // CPU 0, pinned, recycles it privately for P2 and never touches it.
        m.Run(0, () =>
        {
            KernelThread.Current.SchedPin();
            var s2 = sfbufs.Alloc(p2, SfBufFlags.CpuPrivate);
            maskAfterPrivate = sfbufs.TestHookEntry(0).CpuMask;
            sfbufs.Free(s2);
            KernelThread.Current.SchedUnpin();
        });
        long cachedOnCpu1 = SfBufRig.CachedFrame(m.Cpus[1], kva);

        // Recycled again, shared, on CPU 0; CPU 1 reads through the address.
        m.Run(0, () =>
        {
            s3 = sfbufs.Alloc(p3);
            maskAfterShared = sfbufs.TestHookEntry(0).CpuMask;
        });
        m.Run(1, () => readP3 = m.CurrentCpu.ReadUInt64(s3.Kva));
        m.Run(0, () => sfbufs.Free(s3));

        Assert.That(readP1, Is.EqualTo(SfBufRig.Stamp(p1)));
        Assert.That(cachedOnCpu1, Is.EqualTo((long)p1.Frame), "the scenario needs CPU 1 to still cache P1 at the address");
        Assert.That(maskAfterPrivate, Is.EqualTo(CpuSet.FromWord(0b01)));
        Assert.That(maskAfterShared, Is.EqualTo(CpuSet.FromWord(0b11)));
        Assert.That(s3.Kva, Is.EqualTo(kva));
        Assert.That(readP3, Is.EqualTo(SfBufRig.Stamp(p3)));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.EqualTo(0));
    }

    [Test]
    public void TheCornerCaseIsClosedByARealIpiWhenTheCpuHoldingTheOldEntryKeepsRunning()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 1);
        var p1 = SfBufRig.NewPage(m);
        var p2 = SfBufRig.NewPage(m);
        var p3 = SfBufRig.NewPage(m);
        int phase = 0;
        ulong readP1 = 0, readP3 = 0;
        SfBufHandle s3 = default;
        CounterSnapshot? d = null;

        var reader = m.StartThread("cpu1-reader", () =>
        {
            var s1 = sfbufs.Alloc(p1);
            readP1 = m.CurrentCpu.ReadUInt64(s1.Kva);
            sfbufs.Free(s1);
            Volatile.Write(ref phase, 1);
            SfBufRig.SpinOnCpu(m, () => Volatile.Read(ref phase) == 2, "the shared recycle");
            readP3 = m.CurrentCpu.ReadUInt64(s3.Kva);
        }, 1, bound: true);

        SfBufRig.WaitUntil(() => Volatile.Read(ref phase) == 1, "CPU 1 has cached P1");
        m.Run(0, () =>
        {
            KernelThread.Current.SchedPin();
            sfbufs.Free(sfbufs.Alloc(p2, SfBufFlags.CpuPrivate)); // never touched
            KernelThread.Current.SchedUnpin();
            var before = m.Counters();
            s3 = sfbufs.Alloc(p3);
            d = m.Counters() - before;
        });
        Volatile.Write(ref phase, 2);
        reader.Join(SfBufRig.Patience);
        m.Run(0, () => sfbufs.Free(s3));

        Assert.That(readP1, Is.EqualTo(SfBufRig.Stamp(p1)));
        Assert.That(readP3, Is.EqualTo(SfBufRig.Stamp(p3)));
        Assert.That(d![Counter.IpisSent], Is.EqualTo(1), "CPU 1 was running: it is interrupted, not deferred");
        Assert.That(d.OnCpu(1, Counter.IpisReceived), Is.EqualTo(1));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.EqualTo(0));
    }

    // ------------------------------------------------------------------ shootdowns

    [TestCase(0, 0b1010UL)]
    [TestCase(1, 0b1000UL)]
    [TestCase(3, 0b0010UL)]
    public void AMaskedShootdownTargetsExactlyTheCpusOutsideSelfAndTheMask(int initiator, ulong expectedTargets)
    {
        using var m = new SimMachine(SfBufRig.Small(cpus: 4));
        using var sfbufs = SfBufRig.I386(m, 4);
        var page = SfBufRig.NewPage(m);
        int slot = -1;

        // Private allocations on CPUs 0 and 2: the mask becomes {0, 2}, no IPI.
        m.Run(0, () => sfbufs.Free(sfbufs.Alloc(page, SfBufFlags.CpuPrivate)));
        m.Run(2, () =>
        {
            var sf = sfbufs.Alloc(page, SfBufFlags.CpuPrivate);
            slot = sf.Slot;
            sfbufs.Free(sf);
        });
        var maskBefore = sfbufs.TestHookEntry(slot).CpuMask;

        CounterSnapshot d;
        using (new BusyCpus(m, Enumerable.Range(0, 4).Where(c => c != initiator)))
        {
            var before = m.Counters();
            m.Run(initiator, () => sfbufs.Free(sfbufs.Alloc(page)));
            d = m.Counters() - before;
        }

        bool selfInMask = maskBefore.Contains(initiator);
        int targets = BitOperations.PopCount(expectedTargets);
        Assert.That(maskBefore, Is.EqualTo(CpuSet.FromWord(0b0101)));
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(1));
        Assert.That(d[Counter.IpiTargets], Is.EqualTo(targets));
        Assert.That(d[Counter.IpisSent], Is.EqualTo(targets));
        Assert.That(d[Counter.IdleTargetsDeferred], Is.EqualTo(0));
        for (int cpu = 0; cpu < 4; cpu++)
        {
            long expected = (long)((expectedTargets >> cpu) & 1);
            Assert.That(d.OnCpu(cpu, Counter.IpisReceived), Is.EqualTo(expected), $"IPIs received by cpu {cpu}");
        }

        Assert.That(d.OnCpu(initiator, Counter.LocalInvalidations), Is.EqualTo(selfInMask ? 0 : 1));
        Assert.That(sfbufs.TestHookEntry(slot).CpuMask, Is.EqualTo(CpuSet.FromWord(0b1111)));
    }

    [Test]
    public void OnA256CpuMachineAMappingSharedByCpus1And200IsRecycledWithTheIpiToCpu200()
    {
        using var m = new SimMachine(SfBufRig.Small(cpus: MachineOptions.MaxCpus) with { PinThreads = false });
        using var sfbufs = SfBufRig.I386(m, 1); // one sf_buf: the second page recycles it
        var p1 = SfBufRig.NewPage(m);
        var p2 = SfBufRig.NewPage(m);
        SfBufHandle s1 = default, s2 = default;
        ulong readP1On1 = 0, readP1On200 = 0, readP2On200 = 0;
        int phase = 0;
        CounterSnapshot? d = null;
        CpuSet maskShared = default, maskRecycled = default;

        // CPU 1 maps P1 shared (every CPU joins the mask; all others idle, so deferred) and reads it.
        m.Run(1, () =>
        {
            s1 = sfbufs.Alloc(p1);
            readP1On1 = m.CurrentCpu.ReadUInt64(s1.Kva);
            maskShared = sfbufs.TestHookEntry(0).CpuMask;
        });

        // CPU 200 reads P1 through the same sf_buf, frees it, and keeps running with the entry cached.
        var reader = m.StartThread("cpu200-reader", () =>
        {
            readP1On200 = m.CurrentCpu.ReadUInt64(s1.Kva);
            sfbufs.Free(s1);
            Volatile.Write(ref phase, 1);
            SfBufRig.SpinOnCpu(m, () => Volatile.Read(ref phase) == 2, "the recycle");
            readP2On200 = m.CurrentCpu.ReadUInt64(s2.Kva);
            sfbufs.Free(s2);
        }, 200, bound: true);

        try
        {
            SfBufRig.WaitUntil(() => Volatile.Read(ref phase) == 1, "CPU 200 cached P1 and freed it");
            m.Run(1, () =>
            {
                var before = m.Counters();
                s2 = sfbufs.Alloc(p2); // recycles the accessed mapping: the mask is cleared
                d = m.Counters() - before;
                maskRecycled = sfbufs.TestHookEntry(0).CpuMask;
            });
        }
        finally
        {
            Volatile.Write(ref phase, 2);
            reader.Join(SfBufRig.Patience);
        }

        Assert.Multiple(() =>
        {
            Assert.That(maskShared, Is.EqualTo(m.AllCpusMask));
            Assert.That(readP1On1, Is.EqualTo(SfBufRig.Stamp(p1)));
            Assert.That(readP1On200, Is.EqualTo(SfBufRig.Stamp(p1)));
            Assert.That(s2.Kva, Is.EqualTo(s1.Kva), "the one sf_buf was recycled");
            Assert.That(sfbufs.Stats().Recycles, Is.EqualTo(1));
            Assert.That(d![Counter.ShootdownRounds], Is.EqualTo(1));
            Assert.That(d[Counter.IpiTargets], Is.EqualTo(255));
            Assert.That(d[Counter.IpisSent], Is.EqualTo(1), "CPU 200 is the one running target");
            Assert.That(d.OnCpu(200, Counter.IpisReceived), Is.EqualTo(1));
            Assert.That(d.OnCpu(200, Counter.IpiInvalidations), Is.EqualTo(1));
            Assert.That(d[Counter.IdleTargetsDeferred], Is.EqualTo(254));
            Assert.That(d.OnCpu(1, Counter.LocalInvalidations), Is.EqualTo(1));
            Assert.That(maskRecycled, Is.EqualTo(m.AllCpusMask));
            Assert.That(readP2On200, Is.EqualTo(SfBufRig.Stamp(p2)), "CPU 200 dropped P1's translation at the IPI");
            Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
            Assert.That(m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
        });
    }

    [Test]
    public void APrivateAllocationSendsNoIpi()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 2);
        var pages = SfBufRig.NewPages(m, 5);
        CounterSnapshot d;
        var masks = new List<CpuSet>();

        using (new BusyCpus(m, [1]))
        {
            var before = m.Counters();
            m.Run(0, () =>
            {
                for (int round = 0; round < 3; round++)
                {
                    foreach (var page in pages) // misses, recycles of accessed mappings, hits
                    {
                        var sf = sfbufs.Alloc(page, SfBufFlags.CpuPrivate);
                        m.CurrentCpu.ReadUInt64(sf.Kva);
                        masks.Add(sfbufs.TestHookEntry(sf.Slot).CpuMask);
                        sfbufs.Free(sf);
                    }
                }
            });
            d = m.Counters() - before;
        }

        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(0));
        Assert.That(d[Counter.IpiTargets], Is.EqualTo(0));
        Assert.That(d[Counter.IpisSent], Is.EqualTo(0));
        Assert.That(d.OnCpu(1, Counter.IpisReceived), Is.EqualTo(0));
        Assert.That(masks, Is.All.EqualTo(CpuSet.FromWord(0b01)));
        Assert.That(sfbufs.Stats().Recycles, Is.GreaterThan(0));
    }

    [Test]
    public void ASharedAllocationAfterEveryCpuIsInTheMaskSendsNone()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 4);
        var page = SfBufRig.NewPage(m);
        CounterSnapshot? first = null;

        m.Run(0, () =>
        {
            var before = m.Counters();
            sfbufs.Free(sfbufs.Alloc(page));
            first = m.Counters() - before;
        });
        var afterFirst = m.Counters();
        m.Run(0, () => sfbufs.Free(sfbufs.Alloc(page)));
        m.Run(1, () => sfbufs.Free(sfbufs.Alloc(page)));
        var d = m.Counters() - afterFirst;

        Assert.That(first![Counter.ShootdownRounds], Is.EqualTo(1), "the first shared allocation brings CPU 1 into the mask");
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(0));
        Assert.That(d[Counter.IpiTargets], Is.EqualTo(0));
        Assert.That(d[Counter.IpisSent], Is.EqualTo(0));
        Assert.That(d[Counter.LocalInvalidations], Is.EqualTo(0));
        Assert.That(sfbufs.TestHookEntry(0).CpuMask, Is.EqualTo(CpuSet.FromWord(0b11)));
    }

    // ------------------------------------------------------------------ statistics

    [Test]
    public void NsfbufsUsedAndNsfbufsPeakFollowUse()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 4);
        var p = SfBufRig.NewPages(m, 5); // A B C D E
        var seen = new List<(int Used, int Peak)>();
        void Note() => seen.Add((sfbufs.Stats().NsfbufsUsed, sfbufs.Stats().NsfbufsPeak));

        m.Run(0, () =>
        {
            var a = sfbufs.Alloc(p[0]);
            var b = sfbufs.Alloc(p[1]);
            var c = sfbufs.Alloc(p[2]);
            Note(); // 3/3
            var a2 = sfbufs.Alloc(p[0]);
            Note(); // a hit on an active sf_buf: 3/3
            sfbufs.Free(a2);
            Note(); // 2 -> 1: still in use, 3/3
            sfbufs.Free(a);
            sfbufs.Free(b);
            Note(); // 1/3
            var b2 = sfbufs.Alloc(p[1]);
            Note(); // a hit on an inactive sf_buf: 2/3
            var d = sfbufs.Alloc(p[3]);
            var e = sfbufs.Alloc(p[4]);
            Note(); // 4/4
            foreach (var sf in new[] { b2, c, d, e })
            {
                sfbufs.Free(sf);
            }

            Note(); // 0/4
        });

        Assert.That(seen, Is.EqualTo(new[] { (3, 3), (3, 3), (3, 3), (1, 3), (2, 3), (4, 4), (0, 4) }));
        var sysctl = sfbufs.Stats().Sysctl();
        Assert.That(sysctl["kern.ipc.nsfbufsused"], Is.EqualTo(0));
        Assert.That(sysctl["kern.ipc.nsfbufspeak"], Is.EqualTo(4));
    }

    [Test]
    public void NoWaitWithThePoolExhaustedReturnsNoneWithoutSleepingAndCountsAFailure()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 2);
        var p = SfBufRig.NewPages(m, 3);
        SfBufHandle denied = default, hit = default;
        SfBufStats? statsBefore = null;
        CounterSnapshot? d = null;

        m.Run(0, () =>
        {
            var a = sfbufs.Alloc(p[0]);
            var b = sfbufs.Alloc(p[1]);
            statsBefore = sfbufs.Stats();
            var before = m.Counters();
            denied = sfbufs.Alloc(p[2], SfBufFlags.NoWait);
            d = m.Counters() - before;
            hit = sfbufs.Alloc(p[0], SfBufFlags.NoWait); // exhaustion never denies a page already mapped
            sfbufs.Free(hit);
            sfbufs.Free(a);
            sfbufs.Free(b);
        });
        var stats = sfbufs.Stats();

        Assert.That(denied, Is.EqualTo(SfBufHandle.None));
        Assert.That(denied.IsNone, Is.True);
        Assert.That(d![Counter.Sleeps], Is.EqualTo(0));
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(0));
        Assert.That(stats.AllocWait, Is.EqualTo(statsBefore!.AllocWait));
        Assert.That(stats.Failures, Is.EqualTo(statsBefore.Failures + 1));
        Assert.That(hit.IsNone, Is.False);
        Assert.That(sfbufs.TestHookLookup(p[2].Frame), Is.EqualTo(-1));
    }

    [Test]
    public void AWaiterSleepsAndGetsTheSfBufWhenAnotherThreadFreesOne()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 1);
        var p1 = SfBufRig.NewPage(m);
        var p2 = SfBufRig.NewPage(m);
        SfBufHandle first = default, waited = default;
        ulong read = 0;

        m.Run(0, () => first = sfbufs.Alloc(p1));
        var before = m.Counters();
        var waiter = m.StartThread("waiter", () =>
        {
            waited = sfbufs.Alloc(p2);
            read = m.CurrentCpu.ReadUInt64(waited.Kva);
            sfbufs.Free(waited);
        }, 1, bound: true);
        SfBufRig.WaitUntil(() => sfbufs.Stats().AllocWait == 1, "the waiter sleeps for a free sf_buf");
        bool exitedBeforeFree = waiter.HasExited;
        m.Run(0, () => sfbufs.Free(first));
        waiter.Join(SfBufRig.Patience);
        var d = m.Counters() - before;
        var stats = sfbufs.Stats();

        Assert.That(exitedBeforeFree, Is.False);
        Assert.That(waited.Slot, Is.EqualTo(first.Slot));
        Assert.That(waited.Page, Is.EqualTo(p2));
        Assert.That(read, Is.EqualTo(SfBufRig.Stamp(p2)));
        Assert.That(stats.AllocWait, Is.EqualTo(1));
        Assert.That(d[Counter.Sleeps], Is.GreaterThanOrEqualTo(1));
        Assert.That(d[Counter.Wakeups], Is.GreaterThanOrEqualTo(1));
        Assert.That(stats.NetstatM(), Does.Contain("1 requests for sfbufs delayed"));
        Assert.That(stats.NsfbufsUsed, Is.EqualTo(0));
    }

    [Test]
    public void AFreeWakesBothWaitersForOnePageAndTheyShareOneSfBufBecauseTheHashIsProbedAgain()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 1);
        var p1 = SfBufRig.NewPage(m);
        var p2 = SfBufRig.NewPage(m);
        SfBufHandle first = default;
        var got = new SfBufHandle[2];
        var reads = new ulong[2];

        m.Run(0, () => first = sfbufs.Alloc(p1));
        var waiters = Enumerable.Range(0, 2).Select(w => m.StartThread($"waiter{w}", () =>
        {
            got[w] = sfbufs.Alloc(p2);
            reads[w] = m.CurrentCpu.ReadUInt64(got[w].Kva);
            sfbufs.Free(got[w]);
        }, w == 0 ? 1 : -1, bound: w == 0)).ToArray();
        SfBufRig.WaitUntil(() => sfbufs.Stats().AllocWait == 2, "both waiters sleep for a free sf_buf");
        long wokenByTheFree = 0;
        m.Run(0, () =>
        {
            var before = m.Counters();
            sfbufs.Free(first);
            wokenByTheFree = (m.Counters() - before).OnCpu(0, Counter.Wakeups);
        });
        SfBufRig.JoinAll(waiters, SfBufRig.Patience);
        var stats = sfbufs.Stats();

        Assert.That(wokenByTheFree, Is.EqualTo(2), "a free wakes every waiter");
        Assert.That(got[1].Kva, Is.EqualTo(got[0].Kva));
        Assert.That(reads, Is.All.EqualTo(SfBufRig.Stamp(p2)));
        Assert.That(stats.Misses, Is.EqualTo(2), "P1, then P2 once");
        Assert.That(stats.Hits, Is.EqualTo(1), "the second waiter finds P2 in the hash");
        Assert.That(stats.AllocWait, Is.EqualTo(2));
        Assert.That(stats.NsfbufsUsed, Is.EqualTo(0));
    }

    [Test]
    public void ACatchWaitThatIsCancelledReturnsNone()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 1);
        var p1 = SfBufRig.NewPage(m);
        var p2 = SfBufRig.NewPage(m);
        using var cancel = new CancellationTokenSource();
        SfBufHandle first = default;
        SfBufHandle result = default;
        bool returned = false;

        m.Run(0, () => first = sfbufs.Alloc(p1));
        var waiter = m.StartThread("catcher", () =>
        {
            result = sfbufs.Alloc(p2, SfBufFlags.Catch, cancel.Token);
            returned = true;
        }, 1, bound: true);
        SfBufRig.WaitUntil(() => sfbufs.Stats().AllocWait == 1, "the catcher sleeps for a free sf_buf");
        cancel.Cancel();
        waiter.Join(SfBufRig.Patience);

        Assert.That(returned, Is.True);
        Assert.That(result.IsNone, Is.True);
        Assert.That(sfbufs.Stats().Failures, Is.EqualTo(1));
        Assert.That(sfbufs.TestHookEntry(first.Slot).RefCount, Is.EqualTo(1), "the held sf_buf is untouched");
        Assert.That(sfbufs.TestHookLookup(p2.Frame), Is.EqualTo(-1));
        m.Run(0, () => sfbufs.Free(first));
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.EqualTo(0));
    }

    [Test]
    public void NetstatMPrintsTheSfBufLinesInFreeBsdsFormat()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 4);
        var p = SfBufRig.NewPages(m, 3);

        m.Run(0, () =>
        {
            var held = p.Select(page => sfbufs.Alloc(page)).ToArray();
            sfbufs.Free(held[2]);
        });
        sfbufs.RecordAllocFail();
        sfbufs.RecordAllocFail();
        string[] lines = sfbufs.Stats().NetstatM().Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

        Assert.That(lines, Is.EqualTo(new[]
        {
            "2/3/4 sfbufs in use (current/peak/max)",
            "2 requests for sfbufs denied",
            "0 requests for sfbufs delayed",
        }));
    }

    [Test]
    public void SysctlNamesTheValuesAsFreeBsdDoes()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 5);
        var p = SfBufRig.NewPages(m, 2);

        m.Run(0, () =>
        {
            var a = sfbufs.Alloc(p[0]);
            sfbufs.Alloc(p[1]);
            sfbufs.Free(a);
        });
        sfbufs.RecordAllocFail();
        var sysctl = sfbufs.Stats().Sysctl();

        Assert.That(sysctl.Keys, Is.EquivalentTo(new[]
        {
            "kern.ipc.nsfbufs", "kern.ipc.nsfbufsused", "kern.ipc.nsfbufspeak",
            "kern.ipc.sfstat.sf_allocwait", "kern.ipc.sfstat.sf_allocfail",
        }));
        Assert.That(sysctl["kern.ipc.nsfbufs"], Is.EqualTo(5));
        Assert.That(sysctl["kern.ipc.nsfbufsused"], Is.EqualTo(1));
        Assert.That(sysctl["kern.ipc.nsfbufspeak"], Is.EqualTo(2));
        Assert.That(sysctl["kern.ipc.sfstat.sf_allocwait"], Is.EqualTo(0));
        Assert.That(sysctl["kern.ipc.sfstat.sf_allocfail"], Is.EqualTo(1));
    }

    [TestCase(1, 1)]
    [TestCase(2, 2)]
    [TestCase(3, 2)]
    [TestCase(63, 32)]
    [TestCase(64, 64)]
    [TestCase(65, 64)]
    [TestCase(100, 64)]
    [TestCase(128, 128)]
    public void HashBucketsIsTheLargestPowerOfTwoNotAboveNsfbufs(int nsfbufs, int buckets)
    {
        using var m = new SimMachine(SfBufRig.Small(windowPages: 128));
        using var sfbufs = SfBufRig.I386(m, nsfbufs);

        Assert.That(sfbufs.Nsfbufs, Is.EqualTo(nsfbufs));
        Assert.That(sfbufs.HashBuckets, Is.EqualTo(buckets));
        Assert.That(sfbufs.TestHookFreeList(), Is.EqualTo(Enumerable.Range(0, nsfbufs)), "all start free, in index order");
    }

    [TestCase(0)]
    [TestCase(65)]
    public void APoolOutsideTheSfBufWindowIsRefused(int nsfbufs)
    {
        using var m = new SimMachine(SfBufRig.Small(windowPages: 64));

        Assert.That(() => SfBufMapper.Create(SfBufMapper.I386, m, nsfbufs), Throws.TypeOf<ArgumentOutOfRangeException>());
    }

    // ------------------------------------------------------------------ misuse

    [Test]
    public void AReferenceCountOverflowThrowsAndChangesNothing()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 4);
        var page = SfBufRig.NewPage(m);
        SfBufHandle sf = default;

        m.Run(0, () => sf = sfbufs.Alloc(page));
        sfbufs.TestHookSetRefCount(sf.Slot, int.MaxValue);
        var statsBefore = sfbufs.Stats();
        var entryBefore = sfbufs.TestHookEntry(sf.Slot);
        var freeListBefore = sfbufs.TestHookFreeList();
        ulong pteBefore = 0;
        m.Run(0, () => pteBefore = m.KernelPmap.ReadPte(sf.Kva));
        var before = m.Counters();

        Assert.That(() => m.Run(0, () => sfbufs.Alloc(page)), Throws.TypeOf<OverflowException>());
        Assert.That(() => m.Run(1, () => sfbufs.Alloc(page, SfBufFlags.NoWait)), Throws.TypeOf<OverflowException>());

        var d = m.Counters() - before;
        Assert.That(sfbufs.TestHookEntry(sf.Slot), Is.EqualTo(entryBefore));
        Assert.That(sfbufs.Stats(), Is.EqualTo(statsBefore));
        Assert.That(sfbufs.TestHookFreeList(), Is.EqualTo(freeListBefore));
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(0));
        Assert.That(d[Counter.LocalInvalidations], Is.EqualTo(0));
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(0));

        // The lock was released on the way out: the mapper still works.
        sfbufs.TestHookSetRefCount(sf.Slot, 1);
        m.Run(1, () => sfbufs.Free(sf));
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.EqualTo(0));
        Assert.That(m.KernelPmap.ReadPte(sf.Kva) & Pte.PG_FRAME, Is.EqualTo(pteBefore & Pte.PG_FRAME));
    }

    [Test]
    public void ADoubleFreeThrowsInvalidOperationException()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 1);
        var p1 = SfBufRig.NewPage(m);
        var p2 = SfBufRig.NewPage(m);
        SfBufHandle sf = default, other = default;

        m.Run(0, () =>
        {
            sf = sfbufs.Alloc(p1);
            sfbufs.Free(sf);
        });

        Assert.That(() => m.Run(0, () => sfbufs.Free(sf)), Throws.InvalidOperationException);
        Assert.That(sfbufs.TestHookFreeList(), Is.EqualTo(new[] { 0 }), "the failed free did not append the sf_buf again");
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.EqualTo(0));

        // After the sf_buf has been recycled for another page, the old handle is stale.
        m.Run(0, () => other = sfbufs.Alloc(p2));
        Assert.That(other.Slot, Is.EqualTo(sf.Slot));
        Assert.That(() => m.Run(0, () => sfbufs.Free(sf)), Throws.InvalidOperationException);
        Assert.That(sfbufs.TestHookEntry(other.Slot).RefCount, Is.EqualTo(1));
        m.Run(0, () => sfbufs.Free(other));
    }

    [Test]
    public void AHandleFromBeforeARecycleBackToTheSamePageIsStale()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 1);
        var p1 = SfBufRig.NewPage(m);
        var p2 = SfBufRig.NewPage(m);
        SfBufHandle old = default, current = default;

        // The one sf_buf maps p1, then p2, then p1 again: same slot, same page, same address.
        m.Run(0, () =>
        {
            old = sfbufs.Alloc(p1);
            sfbufs.Free(old);
            sfbufs.Free(sfbufs.Alloc(p2));
            current = sfbufs.Alloc(p1);
        });

        Assert.That((current.Kva, current.Page), Is.EqualTo((old.Kva, old.Page)));
        Assert.That(() => m.Run(0, () => sfbufs.Free(old)), Throws.InvalidOperationException.With.Message.Contains("stale"));
        Assert.That(sfbufs.TestHookEntry(current.Slot).RefCount, Is.EqualTo(1), "the live reference was not dropped");
        m.Run(0, () => sfbufs.Free(current));
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.Zero);
    }

    [Test]
    public void FreeingAHandleFromAnotherMapperThrowsArgumentException()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var mine = SfBufRig.I386(m, 4);
        using var theirs = SfBufRig.I386(m, 4);
        var page = SfBufRig.NewPage(m);
        SfBufHandle foreign = default;

        m.Run(0, () => foreign = theirs.Alloc(page));

        Assert.That(() => m.Run(0, () => mine.Free(foreign)), Throws.ArgumentException);
        Assert.That(() => m.Run(0, () => mine.Free(SfBufHandle.None)), Throws.ArgumentException);
        Assert.That(theirs.TestHookEntry(foreign.Slot).RefCount, Is.EqualTo(1));
        Assert.That(mine.TestHookEntry(foreign.Slot).HasPage, Is.False);
        m.Run(0, () => theirs.Free(foreign));
    }

    [Test]
    public void AllocatingAPageThatIsNeitherWiredNorHeldThrows()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 4);
        var page = m.Physical.Alloc(AllocFlags.Zero);
        var before = m.Counters();
        bool heldWorks = false;

        Assert.That(() => m.Run(0, () => sfbufs.Alloc(page)), Throws.InvalidOperationException);
        var d = m.Counters() - before;
        var stats = sfbufs.Stats();
        Assert.That(stats.Misses, Is.EqualTo(0));
        Assert.That(stats.NsfbufsUsed, Is.EqualTo(0));
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(0));

        m.Physical.Hold(page);
        m.Run(0, () =>
        {
            sfbufs.Free(sfbufs.Alloc(page));
            heldWorks = true;
        });
        Assert.That(heldWorks, Is.True);
    }

    [Test]
    public void AllocatingAPageOutsidePhysicalMemoryThrows()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 4);
        var beyond = new VmPage(m.Physical.FrameCount);

        Assert.That(() => m.Run(0, () => sfbufs.Alloc(beyond)), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(sfbufs.Stats().Misses, Is.EqualTo(0));
        Assert.That(sfbufs.TestHookFreeList(), Has.Count.EqualTo(4));
    }

    [Test]
    public void CpuPrivateFromAnUnpinnedThreadThrows()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, 4);
        var page = SfBufRig.NewPage(m);
        bool pinnedBefore = true;
        ulong readWhenPinned = 0;

        var unpinned = m.StartThread("unpinned", () =>
        {
            pinnedBefore = KernelThread.Current.IsPinned;
            sfbufs.Alloc(page, SfBufFlags.CpuPrivate);
        });
        Assert.That(() => unpinned.Join(SfBufRig.Patience), Throws.InvalidOperationException);
        Assert.That(pinnedBefore, Is.False);
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.EqualTo(0));

        var pinned = m.StartThread("pinned", () =>
        {
            KernelThread.Current.SchedPin();
            var sf = sfbufs.Alloc(page, SfBufFlags.CpuPrivate);
            readWhenPinned = m.CurrentCpu.ReadUInt64(sf.Kva);
            sfbufs.Free(sf);
            KernelThread.Current.SchedUnpin();
        });
        pinned.Join(SfBufRig.Patience);
        Assert.That(readWhenPinned, Is.EqualTo(SfBufRig.Stamp(page)));
    }
}
