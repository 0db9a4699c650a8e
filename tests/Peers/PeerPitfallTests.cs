using System.Runtime.InteropServices;
using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Strategies.DragonFly;
using Native.SfBufNative.Strategies.FreeBsd;
using Native.SfBufNative.Strategies.Linux;
using Native.SfBufNative.Strategies.NetBsd;
using Native.Tests.Machine;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Peers;

using SfBuf = Native.SfBufNative.SfBuf;

/// <summary>
/// The pitfalls the peers' own histories document (peers.md section 8), each shown to be caught
/// (an exception, or the stale-translation oracle firing) or prevented (the mechanism refuses, or
/// the scheduler cannot do the harmful thing). Where the oracle must fire, the same scenario run
/// correctly shows 0 stale accesses.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class PeerPitfallTests
{
    private static readonly TimeSpan s_patience = TimeSpan.FromSeconds(30);

    // ------------------------------------------------------------------ Linux kmap

    [Test]
    public void KmapsTwoMappingsPerThreadDeadlockAtExhaustionIsDetectedAndReported()
    {
        // LAST_PKMAP = 2: each thread takes one slot, then waits for a second one that nobody
        // will ever free (Andrew Morton's kmap deadlock).
        using var m = new SimMachine(Options(cpus: 2, window: 2));
        using var kmap = (LinuxKmapMapper)SfBufMapper.Create(SfBufMapper.LinuxKmap, m);
        kmap.HungTaskTimeout = TimeSpan.FromMilliseconds(300);
        var first = new[] { Sim.NewPage(m, 1), Sim.NewPage(m, 2) };
        var second = new[] { Sim.NewPage(m, 3), Sim.NewPage(m, 4) };
        int holding = 0;
        var caught = new Exception?[2];
        var threads = Enumerable.Range(0, 2).Select(i => m.StartThread($"kmapper{i}", () =>
        {
            var held = kmap.Alloc(first[i]);
            try
            {
                Interlocked.Increment(ref holding);
                while (Volatile.Read(ref holding) < 2)
                {
                    m.CurrentCpu.Poll();
                }

                var more = kmap.Alloc(second[i]); // waits uninterruptibly: the pool is exhausted
                kmap.Free(more);
            }
            catch (KmapDeadlockException ex)
            {
                caught[i] = ex;
            }
            finally
            {
                kmap.Free(held);
            }
        }, cpu: i, bound: true)).ToArray();
        foreach (var td in threads)
        {
            td.Join(s_patience);
        }

        // At least one waiter reports it; its kunmap then lets the other one through.
        Assert.That(caught.Count(c => c != null), Is.GreaterThanOrEqualTo(1));
        Assert.That(caught.First(c => c != null)!.Message, Does.Contain("deadlock").And.Contain("kunmap"));
        Assert.That(kmap.Stats().NsfbufsUsed, Is.Zero, "everything was released afterwards");
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void KmapReusesAPurgedSlotOnlyAfterTheGlobalFlushSoNoCpuReadsTheOldPage()
    {
        // Count semantics (peers.md pitfall 6): cpu 1 caches slot 0 for page A; after kunmap the
        // slot (count 1) is not reusable until the wrap's global flush; after it, page B in the
        // same slot reads as B on cpu 1.
        using var m = new SimMachine(Options(cpus: 2, window: 4));
        using var kmap = (LinuxKmapMapper)SfBufMapper.Create(SfBufMapper.LinuxKmap, m);
        var pages = Enumerable.Range(0, 9).Select(i => Sim.NewPage(m, 0xA0 + (ulong)i)).ToArray();
        SfBuf a = default;
        m.Run(0, () => a = kmap.Alloc(pages[0]));
        m.Run(1, () => Assert.That(m.CurrentCpu.ReadUInt64(kmap.Kva(a)), Is.EqualTo(0xA0UL)));
        m.Run(0, () => kmap.Free(a));

        var before = m.Counters();
        var stats = kmap.Stats();
        m.Run(0, () =>
        {
            // Map (and drop) pages until the hand comes round and reuses a's address.
            for (int i = 1; i < pages.Length; i++)
            {
                var sf = kmap.Alloc(pages[i]);
                kmap.Free(sf);
                if (sf.Kva == a.Kva)
                {
                    var again = kmap.Alloc(pages[i]);
                    Assert.That(again.Kva, Is.EqualTo(a.Kva));
                    m.Run(1, () => Assert.That(m.CurrentCpu.ReadUInt64(kmap.Kva(again)), Is.EqualTo(0xA0UL + (ulong)i), "cpu 1 reads the new page"));
                    kmap.Free(again);
                    return;
                }
            }

            Assert.Fail("the clock hand never came back to the first slot");
        });
        var d = m.Counters() - before;
        var after = kmap.Stats();
        Assert.That(after.Details["pkmap.global_flushes"] - stats.Details["pkmap.global_flushes"], Is.EqualTo(1), "one global flush for the wrap");
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(1), "the flush reached the other CPU in one round");
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    // ------------------------------------------------------------------ Linux kmap_atomic

    [Test]
    public void SleepingWhileHoldingAKmapAtomicIsRefused()
    {
        using var m = new SimMachine(Options(cpus: 1, window: 8));
        using var mapper = (LinuxKmapAtomicMapper)SfBufMapper.Create(SfBufMapper.LinuxKmapAtomic, m);
        var page = Sim.NewPage(m, 0x51);
        var mutex = new KMutex("contended");
        m.Run(0, () =>
        {
            var sf = mapper.Alloc(page, SfBufFlags.CpuPrivate);
            Assert.That(() => m.Sleep(this, timeout: TimeSpan.FromMilliseconds(1)), Throws.InvalidOperationException.With.Message.Contains("critical section"));
            Assert.That(() => KernelThread.Current.Yield(), Throws.InvalidOperationException.With.Message.Contains("critical section"));
            Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(sf)), Is.EqualTo(0x51UL), "the mapping is intact");
            mapper.Free(sf);
            Assert.That(KernelThread.Current.CriticalNesting, Is.Zero, "kunmap_atomic re-enabled preemption");
            Assert.That(m.Sleep(this, timeout: TimeSpan.FromMilliseconds(1)), Is.EqualTo(SleepResult.TimedOut), "sleeping is fine once unmapped");
        });

        // Blocking on a mutex someone else holds is a sleep too.
        int holding = 0, release = 0;
        var holder = m.StartThread("holder", () =>
        {
            mutex.Lock();
            Volatile.Write(ref holding, 1);
            while (Volatile.Read(ref release) == 0)
            {
                m.Sleep(this, timeout: TimeSpan.FromMilliseconds(1));
            }

            mutex.Unlock();
        }, cpu: 0, bound: true);
        Sim.WaitUntil(() => Volatile.Read(ref holding) == 1, "the holder has the mutex");
        Exception? blocked = null;
        m.Run(0, () =>
        {
            var sf = mapper.Alloc(page, SfBufFlags.CpuPrivate);
            try
            {
                mutex.Lock();
                mutex.Unlock();
            }
            catch (InvalidOperationException ex)
            {
                blocked = ex;
            }
            finally
            {
                mapper.Free(sf);
            }
        });
        Volatile.Write(ref release, 1);
        holder.Join(s_patience);
        Assert.That(blocked?.Message, Does.Contain("blocking on mutex contended"));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void KmapAtomicOutOfLifoOrderIsRefusedAndChangesNothing()
    {
        using var m = new SimMachine(Options(cpus: 1, window: 8));
        using var mapper = (LinuxKmapAtomicMapper)SfBufMapper.Create(SfBufMapper.LinuxKmapAtomic, m);
        var a = Sim.NewPage(m, 0xA);
        var b = Sim.NewPage(m, 0xB);
        m.Run(0, () =>
        {
            var sa = mapper.Alloc(a, SfBufFlags.CpuPrivate);
            var sb = mapper.Alloc(b, SfBufFlags.CpuPrivate);
            Assert.That(mapper.AtomicDepth(0), Is.EqualTo(2));
            Assert.That(() => mapper.Free(sa), Throws.InvalidOperationException.With.Message.Contains("LIFO"));
            Assert.That(mapper.AtomicDepth(0), Is.EqualTo(2), "nothing was popped");
            Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(sa)), Is.EqualTo(0xAUL));
            Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(sb)), Is.EqualTo(0xBUL));
            mapper.Free(sb);
            mapper.Free(sa);
            Assert.That(mapper.AtomicDepth(0), Is.Zero);
            Assert.That(() => mapper.Free(sa), Throws.InvalidOperationException, "a double kunmap_atomic");
        });
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    // ------------------------------------------------------------------ Linux kmap_local

    [Test]
    public void KmapLocalPreventsMigrationAndSavesAndRestoresExactlyTheHeldMapsAtEachSwitch()
    {
        using var m = new SimMachine(Options(cpus: 2, window: 8));
        using var mapper = (LinuxKmapLocalMapper)SfBufMapper.Create(SfBufMapper.LinuxKmapLocal, m);
        var mine = new[] { Sim.NewPage(m, 0x111), Sim.NewPage(m, 0x222) };
        var theirs = Sim.NewPage(m, 0x333);
        int mapped = 0, hogReady = 0, releaseHog = 0;
        int resumedOn = -1;
        ulong[] seen = new ulong[2];
        var holder = m.StartThread("kmap-local holder", () =>
        {
            var td = KernelThread.Current;
            td.SchedPin();
            var sfs = mine.Select(p => mapper.Alloc(p, SfBufFlags.CpuPrivate)).ToArray();
            td.SchedUnpin(); // only kmap_local's own migrate_disable keeps it here now
            Volatile.Write(ref mapped, 1);
            while (Volatile.Read(ref hogReady) == 0)
            {
                // Switches out and in (a save and a restore each); once the hog holds cpu 0 the
                // wakeup waits for it, although cpu 1 is free.
                m.Sleep(this, timeout: TimeSpan.FromMilliseconds(1));
            }

            m.Sleep(this, timeout: TimeSpan.FromMilliseconds(20)); // one more switch out and in
            resumedOn = td.Cpu!.Id;
            seen[0] = m.CurrentCpu.ReadUInt64(mapper.Kva(sfs[0]));
            seen[1] = m.CurrentCpu.ReadUInt64(mapper.Kva(sfs[1]));
            mapper.Free(sfs[1]);
            mapper.Free(sfs[0]);
        }, cpu: 0);
        Sim.WaitUntil(() => Volatile.Read(ref mapped) == 1, "the holder has its maps");

        // The hog takes cpu 0 and, meanwhile, uses slot 0 of cpu 0 for its own page.
        ulong hogSaw = 0;
        var hog = m.StartThread("cpu0 hog", () =>
        {
            var td = KernelThread.Current;
            var sf = mapper.Alloc(theirs, SfBufFlags.CpuPrivate);
            hogSaw = m.CurrentCpu.ReadUInt64(mapper.Kva(sf));
            mapper.Free(sf);
            Volatile.Write(ref hogReady, 1);
            while (Volatile.Read(ref releaseHog) == 0)
            {
                m.CurrentCpu.Poll();
            }
        }, cpu: 0, bound: true);
        Sim.WaitUntil(() => Volatile.Read(ref hogReady) == 1, "the hog runs on cpu 0");
        Thread.Sleep(100);
        Assert.That(holder.HasExited, Is.False);
        Assert.That(holder.Cpu, Is.Null, "the holder waits for cpu 0 although cpu 1 is free: migration is disabled");
        Assert.That(m.Cpus[1].IsIdle, Is.True);
        Volatile.Write(ref releaseHog, 1);
        holder.Join(s_patience);
        hog.Join(s_patience);

        Assert.That(hogSaw, Is.EqualTo(0x333UL), "the hog's map in the same slot showed its own page");
        Assert.That(resumedOn, Is.Zero, "the holder resumed on the CPU it mapped on");
        Assert.That(seen, Is.EqualTo(new[] { 0x111UL, 0x222UL }), "both held maps were restored");
        var details = mapper.Stats().Details;
        Assert.That(details["kmap_local.saves"], Is.EqualTo(2 * details["kmap_local.switches_with_maps"]), "every switch-out saved exactly the two held maps");
        Assert.That(details["kmap_local.restores"], Is.EqualTo(details["kmap_local.saves"]), "and every switch-in restored them");
        Assert.That(details["kmap_local.switches_with_maps"], Is.GreaterThanOrEqualTo(2));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void KmapLocalOutOfLifoOrderOrFromAnotherThreadIsRefused()
    {
        using var m = new SimMachine(Options(cpus: 1, window: 8));
        using var mapper = (LinuxKmapLocalMapper)SfBufMapper.Create(SfBufMapper.LinuxKmapLocal, m);
        var a = Sim.NewPage(m, 0xA);
        var b = Sim.NewPage(m, 0xB);
        SfBuf sa = default, sb = default;
        m.Run(0, () =>
        {
            sa = mapper.Alloc(a, SfBufFlags.CpuPrivate);
            sb = mapper.Alloc(b, SfBufFlags.CpuPrivate);
            Assert.That(() => mapper.Free(sa), Throws.InvalidOperationException.With.Message.Contains("LIFO"));
            Assert.That(mapper.LocalDepth, Is.EqualTo(2));

            // Another thread cannot unmap them: its own stack is empty.
            var other = m.StartThread("other", () => mapper.Free(sb), cpu: 0);
            Assert.That(() => other.Join(s_patience), Throws.InvalidOperationException.With.Message.Contains("holds no kmap_local"));
            Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(sb)), Is.EqualTo(0xBUL), "still mapped after the other thread ran here");
            mapper.Free(sb);
            mapper.Free(sa);
            Assert.That(mapper.LocalDepth, Is.Zero);
            Assert.That(KernelThread.Current.PinCount, Is.Zero, "migration is enabled again");
        });
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    // ------------------------------------------------------------------ DragonFly lwbuf

    [TestCase(false, TestName = "{m}(mask reset to the remapping CPU: correct)")]
    [TestCase(true, TestName = "{m}(mask ORed: the planted bug)")]
    public void ARemappedLwbufMustResetItsCpuMaskOrTheOracleCatchesTheStaleCpu(bool plantOredMask)
    {
        using var m = new SimMachine(Options(cpus: 2, window: 8));
        using var lwbuf = (LwbufMapper)SfBufMapper.Create(SfBufMapper.DragonFlyLwbuf, m);
        lwbuf.PlantOredMask = plantOredMask;
        var p1 = Sim.NewPage(m, 0x1111);
        var p2 = Sim.NewPage(m, 0x2222);

        // cpu 0 maps the object to p1 and caches it; cpu 1 synchronises, reads, frees it there.
        SfBuf first = default;
        m.Run(0, () =>
        {
            first = lwbuf.Alloc(p1, SfBufFlags.CpuPrivate);
            Assert.That(m.CurrentCpu.ReadUInt64(lwbuf.Kva(first)), Is.EqualTo(0x1111UL));
        });
        m.Run(1, () =>
        {
            Assert.That(m.CurrentCpu.ReadUInt64(lwbuf.Kva(first)), Is.EqualTo(0x1111UL));
            lwbuf.Free(first);
        });

        // cpu 1 reuses the same object for p2, then hands it to cpu 0, which calls lwbuf_kva.
        SfBuf second = default;
        m.Run(1, () => second = lwbuf.Alloc(p2, SfBufFlags.CpuPrivate));
        Assert.That(second.Kva, Is.EqualTo(first.Kva), "the object (and its KVA) came back from cpu 1's magazine");
        Assert.That(lwbuf.MaskOf(second), Is.EqualTo(CpuSet.FromWord(plantOredMask ? 0b11UL : 0b10UL)));
        if (plantOredMask)
        {
            Assert.That(() => m.Run(0, () => m.CurrentCpu.ReadUInt64(lwbuf.Kva(second))), Throws.TypeOf<StaleTranslationException>());
            Assert.That(m.Counters()[Counter.StaleAccesses], Is.EqualTo(1), "the oracle caught cpu 0 reading p1 through the remapped address");
        }
        else
        {
            m.Run(0, () => Assert.That(m.CurrentCpu.ReadUInt64(lwbuf.Kva(second)), Is.EqualTo(0x2222UL)));
            Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
        }

        m.Run(1, () => lwbuf.Free(second));
    }

    [TestCase(true, TestName = "{m}(lwbuf_kva on the new CPU: correct)")]
    [TestCase(false, TestName = "{m}(the address used without lwbuf_kva)")]
    public void AnLwbufUsedOnANewCpuWithoutLwbufKvaReadsTheOldPageAndTheOracleCatchesIt(bool callKva)
    {
        using var m = new SimMachine(Options(cpus: 2, window: 8));
        using var lwbuf = (LwbufMapper)SfBufMapper.Create(SfBufMapper.DragonFlyLwbuf, m);
        var p1 = Sim.NewPage(m, 0x1111);
        var p2 = Sim.NewPage(m, 0x2222);
        SfBuf first = default, second = default;
        m.Run(0, () =>
        {
            first = lwbuf.Alloc(p1, SfBufFlags.CpuPrivate);
            Assert.That(m.CurrentCpu.ReadUInt64(lwbuf.Kva(first)), Is.EqualTo(0x1111UL)); // cpu 0 caches it
        });
        m.Run(1, () =>
        {
            lwbuf.Kva(first);
            lwbuf.Free(first); // into cpu 1's magazine
            second = lwbuf.Alloc(p2, SfBufFlags.CpuPrivate);
        });
        Assert.That(second.Kva, Is.EqualTo(first.Kva));

        // The thread "migrates" to cpu 0 with the address in hand.
        if (callKva)
        {
            m.Run(0, () => Assert.That(m.CurrentCpu.ReadUInt64(lwbuf.Kva(second)), Is.EqualTo(0x2222UL)));
            Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
            Assert.That(lwbuf.Stats().Details["lwbuf.kva_syncs"], Is.EqualTo(2), "one local invlpg per CPU that had not synchronised");
        }
        else
        {
            Assert.That(() => m.Run(0, () => m.CurrentCpu.ReadUInt64(second.Kva)), Throws.TypeOf<StaleTranslationException>());
            Assert.That(m.Counters()[Counter.StaleAccesses], Is.EqualTo(1));
        }

        m.Run(1, () => lwbuf.Free(second));
    }

    [Test]
    public void SharedLwbufsCostOneCrossCpuInvalidationPerAllocationAndPrivateOnesNone()
    {
        using var m = new SimMachine(Options(cpus: 2, window: 8));
        using var lwbuf = (LwbufMapper)SfBufMapper.Create(SfBufMapper.DragonFlyLwbuf, m);
        var page = Sim.NewPage(m, 0x77);
        var before = m.Counters();
        m.Run(0, () =>
        {
            for (int i = 0; i < 10; i++)
            {
                lwbuf.Free(lwbuf.Alloc(page, SfBufFlags.CpuPrivate));
            }
        });
        var privateCounts = m.Counters() - before;
        m.Run(0, () =>
        {
            for (int i = 0; i < 10; i++)
            {
                var sf = lwbuf.Alloc(page);
                m.Run(1, () => Assert.That(m.CurrentCpu.ReadUInt64(lwbuf.Kva(sf)), Is.EqualTo(0x77UL)));
                lwbuf.Free(sf);
            }
        });
        var shared = m.Counters() - before - privateCounts;
        Assert.That(privateCounts[Counter.ShootdownRounds], Is.Zero);
        Assert.That(privateCounts[Counter.KernelPteWrites], Is.EqualTo(10), "a PTE per lwbuf_alloc: nothing is reused by page");
        Assert.That(shared[Counter.ShootdownRounds], Is.EqualTo(10), "lwbuf_set_global: one cross-CPU invalidation per allocation");
        Assert.That(lwbuf.Stats().Details["lwbuf.kva_syncs"], Is.Zero, "after set_global, lwbuf_kva has nothing to do");
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    // ------------------------------------------------------------------ NetBSD emap

    [TestCase(true, TestName = "{m}(consumed: correct)")]
    [TestCase(false, TestName = "{m}(used without uvm_emap_consume)")]
    public void AnEmapAddressUsedWithoutConsumeReadsTheOldPageAndTheOracleCatchesIt(bool consume)
    {
        // A one-page window, so the second mapping reuses the first one's address.
        using var m = new SimMachine(Options(cpus: 2, window: 1));
        using var emap = (EmapMapper)SfBufMapper.Create(SfBufMapper.NetBsdEmap, m);
        var p1 = Sim.NewPage(m, 0x1111);
        var p2 = Sim.NewPage(m, 0x2222);
        SfBuf first = default, second = default;
        m.Run(0, () => first = emap.Alloc(p1, SfBufFlags.ReadOnly));
        m.Run(1, () => Assert.That(m.CurrentCpu.ReadUInt64(emap.Kva(first)), Is.EqualTo(0x1111UL))); // cpu 1 consumes and caches
        m.Run(0, () =>
        {
            emap.Free(first); // PTE cleared, nothing invalidated
            second = emap.Alloc(p2, SfBufFlags.ReadOnly); // same address, a new generation, still no invalidation
        });
        Assert.That(second.Kva, Is.EqualTo(first.Kva));
        Assert.That(emap.CpuGeneration(1), Is.LessThan(emap.GlobalGeneration), "cpu 1 is behind");
        var before = m.Counters();
        if (consume)
        {
            m.Run(1, () => Assert.That(m.CurrentCpu.ReadUInt64(emap.Kva(second)), Is.EqualTo(0x2222UL)));
            var d = m.Counters() - before;
            Assert.That(d[Counter.NonGlobalFlushes], Is.EqualTo(1), "consume flushed cpu 1's non-global TLB once");
            Assert.That(emap.CpuGeneration(1), Is.EqualTo(emap.GlobalGeneration));
            Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
        }
        else
        {
            Assert.That(() => m.Run(1, () => m.CurrentCpu.ReadUInt64(second.Kva)), Throws.TypeOf<StaleTranslationException>());
            Assert.That(m.Counters()[Counter.StaleAccesses], Is.EqualTo(1));
        }

        Assert.That(m.Counters()[Counter.ShootdownRounds], Is.Zero, "emap never sends a shootdown");
        m.Run(0, () => emap.Free(second));
    }

    [Test]
    public void EmapGenerationsCompareSafelyAcrossWrap()
    {
        Assert.That(Emap.IsOlder(1, 2), Is.True);
        Assert.That(Emap.IsOlder(2, 1), Is.False);
        Assert.That(Emap.IsOlder(5, 5), Is.False);
        Assert.That(Emap.IsOlder(uint.MaxValue, 3), Is.True, "3 was produced after the counter wrapped");
        Assert.That(Emap.IsOlder(3, uint.MaxValue), Is.False);
    }

    [Test]
    public void AFlushDoneForAnotherReasonAdvancesTheCpusEmapGeneration()
    {
        // Piggybacking (uvm_emap_update): a full flush requested by an IPI catches cpu 1 up, so
        // its next consume does not flush again.
        using var m = new SimMachine(Options(cpus: 2, window: 4));
        using var emap = (EmapMapper)SfBufMapper.Create(SfBufMapper.NetBsdEmap, m);
        var page = Sim.NewPage(m, 0x99);
        SfBuf sf = default;
        m.Run(0, () => sf = emap.Alloc(page, SfBufFlags.ReadOnly));
        Assert.That(emap.CpuGeneration(1), Is.LessThan((uint)sf.Generation));
        int responding = 0, stop = 0;
        var responder = m.StartThread("cpu1", () =>
        {
            Volatile.Write(ref responding, 1);
            while (Volatile.Read(ref stop) == 0)
            {
                m.CurrentCpu.Poll();
            }

            var before = m.Counters();
            Assert.That(m.CurrentCpu.ReadUInt64(emap.Kva(sf)), Is.EqualTo(0x99UL));
            Assert.That((m.Counters() - before)[Counter.NonGlobalFlushes], Is.Zero, "already caught up: consume had nothing to do");
        }, cpu: 1, bound: true);
        Sim.WaitUntil(() => Volatile.Read(ref responding) == 1, "cpu 1 runs");
        m.Run(0, () => m.CurrentCpu.ShootdownAllButSelf(ShootdownKind.All));
        Assert.That(emap.CpuGeneration(1), Is.GreaterThanOrEqualTo((uint)sf.Generation), "the IPI's full flush published the generation sampled before it");
        Volatile.Write(ref stop, 1);
        responder.Join(s_patience);
        Assert.That(emap.Stats().Details["emap.piggybacked"], Is.GreaterThanOrEqualTo(1));
        m.Run(0, () => emap.Free(sf));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void ConsumingAnOlderEmapMappingKeepsTheThreadsNewestGenerationSoASwitchToABehindCpuFlushes()
    {
        // uvm_emap_switch compares the CPU with the newest generation the thread consumed: a later
        // consume of an older mapping must not lower it, or the thread would run on a CPU that is
        // behind a mapping it already uses without that CPU flushing.
        using var m = new SimMachine(Options(cpus: 2, window: 4));
        using var emap = (EmapMapper)SfBufMapper.Create(SfBufMapper.NetBsdEmap, m);
        var older = Sim.NewPage(m, 0xA);
        var newer = Sim.NewPage(m, 0xB);
        SfBuf a = default, b = default;
        m.Run(0, () => a = emap.Alloc(older, SfBufFlags.ReadOnly));
        m.Run(1, () => Assert.That(m.CurrentCpu.ReadUInt64(emap.Kva(a)), Is.EqualTo(0xAUL))); // cpu 1 reaches a's generation
        m.Run(0, () => b = emap.Alloc(newer, SfBufFlags.ReadOnly));
        Assert.That(emap.CpuGeneration(1), Is.LessThan((uint)b.Generation), "cpu 1 is behind b");

        int consumed = 0, moved = 0;
        long switchFlushesBefore = 0, switchFlushesAfter = 0;
        var user = m.StartThread("user", () =>
        {
            Assert.That(m.CurrentCpu.ReadUInt64(emap.Kva(b)), Is.EqualTo(0xBUL));
            Assert.That(m.CurrentCpu.ReadUInt64(emap.Kva(a)), Is.EqualTo(0xAUL)); // the older one, after
            switchFlushesBefore = emap.Stats().Details["emap.switch_flushes"];
            Volatile.Write(ref consumed, 1);
            while (m.CurrentCpu.Id == 0)
            {
                KernelThread.Current.Yield(); // the hog below takes cpu 0; this thread moves to cpu 1
            }

            switchFlushesAfter = emap.Stats().Details["emap.switch_flushes"];
            Volatile.Write(ref moved, 1);
        }, cpu: 0);
        Sim.WaitUntil(() => Volatile.Read(ref consumed) == 1, "the user consumed both");
        var hog = m.StartThread("hog", () => Sim.SpinOnCpu(m, () => Volatile.Read(ref moved) == 1, "the user moved"), cpu: 0, bound: true);
        Sim.Join(user, hog);

        Assert.That(switchFlushesAfter - switchFlushesBefore, Is.EqualTo(1), "switching to cpu 1, behind b's generation, flushed there");
        m.Run(0, () =>
        {
            emap.Free(a);
            emap.Free(b);
        });
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void AnEmapMappingIsReadOnlySoAWriteThroughItFaults()
    {
        // pmap_emap_enter(va, pa, VM_PROT_READ): a reader's emap mapping cannot be written.
        using var m = new SimMachine(Options(cpus: 2, window: 4));
        using var emap = (EmapMapper)SfBufMapper.Create(SfBufMapper.NetBsdEmap, m);
        var page = Sim.NewPage(m, 0x77);
        m.Run(0, () =>
        {
            var sf = emap.Alloc(page, SfBufFlags.ReadOnly);
            Assert.That(m.Layout.SfBufWindow.Contains(sf.Kva), Is.True, "a reader gets a page of the emap window");
            ulong kva = emap.Kva(sf);
            Assert.That(m.CurrentCpu.ReadUInt64(kva), Is.EqualTo(0x77UL));
            Assert.That(() => m.CurrentCpu.WriteUInt64(kva, 0xBAD), Throws.TypeOf<PageFaultException>().With.Message.Contains("read-only"));
            Assert.That(m.CurrentCpu.ReadUInt64(kva), Is.EqualTo(0x77UL), "the faulting write changed nothing");
            emap.Free(sf);
        });
        Assert.That(m.Counters()[Counter.PageFaults], Is.EqualTo(1));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void AnEmapWriterGetsAWritableKernelMappingShotDownAtRemovalAsWithPmapKenterPaAndKremove()
    {
        // NetBSD used emap only for readers (the pipe's reader). A user that writes gets what
        // every other NetBSD kernel user of a temporary mapping gets: kernel_map KVA,
        // pmap_kenter_pa (a global writable PTE, no invalidation: the address was invalidated when
        // it was last removed), and at the end pmap_kremove + pmap_update, which shoots the
        // address down on every CPU when the PTE was used (PG_U), then the KVA is freed.
        using var m = new SimMachine(Options(cpus: 2, window: 4));
        using var emap = (EmapMapper)SfBufMapper.Create(SfBufMapper.NetBsdEmap, m);
        var written = Sim.NewPage(m, 0);
        var untouched = Sim.NewPage(m, 0);
        uint globalBefore = emap.GlobalGeneration;
        SfBuf sf = default;
        var before = m.Counters();
        m.Run(0, () =>
        {
            sf = emap.Alloc(written);
            m.CurrentCpu.WriteUInt64(emap.Kva(sf), 0x1234);
        });
        Assert.That(m.KernelMap.Region.Contains(sf.Kva), Is.True, $"0x{sf.Kva:x}: a writer's mapping is kernel_map KVA, not the emap window");
        m.Run(1, () => Assert.That(m.CurrentCpu.ReadUInt64(emap.Kva(sf)), Is.EqualTo(0x1234UL), "valid on every CPU at once"));
        m.Run(0, () => emap.Free(sf));
        var afterUsed = m.Counters() - before;
        Assert.That(afterUsed[Counter.KernelPteWrites], Is.EqualTo(1));
        Assert.That(afterUsed[Counter.KernelPteClears], Is.EqualTo(1));
        Assert.That(afterUsed[Counter.ShootdownRounds], Is.EqualTo(1), "pmap_update after removing a used PTE");
        Assert.That(afterUsed[Counter.NonGlobalFlushes] + afterUsed[Counter.MappingFlushes], Is.Zero, "no emap flush: the mapping is no emap mapping");
        Assert.That(emap.GlobalGeneration, Is.EqualTo(globalBefore), "nothing was produced");

        // Never used: pmap_kremove finds PG_U clear and asks for no shootdown.
        before = m.Counters();
        m.Run(0, () => emap.Free(emap.Alloc(untouched)));
        Assert.That((m.Counters() - before)[Counter.ShootdownRounds], Is.Zero, "an unused PTE is cached nowhere");

        var stats = emap.Stats();
        Assert.That(stats.Details["emap.kenter_maps"], Is.EqualTo(2));
        Assert.That(stats.Details["emap.kenter_shootdowns"], Is.EqualTo(1));
        Assert.That(stats.NsfbufsUsed, Is.Zero);
        Assert.That(MemoryMarshal.Read<ulong>(m.Physical.PhysicalBytes(written)), Is.EqualTo(0x1234UL));
        Assert.That(m.Counters()[Counter.StaleAccesses] + m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
    }

    [Test]
    public void TheConsumedEmapGenerationIsPerCpuSoAnotherThreadOnThatCpuDoesNotFlushAgain()
    {
        // uvm_emap_consume compares with the CPU's generation (ci->ci_data.cpu_uvm->emap_gen),
        // which the flush advanced: a second thread on the same CPU, which never consumed
        // anything itself, finds the CPU caught up and does not flush.
        using var m = new SimMachine(Options(cpus: 2, window: 4));
        using var emap = (EmapMapper)SfBufMapper.Create(SfBufMapper.NetBsdEmap, m);
        var page = Sim.NewPage(m, 0x55);
        SfBuf sf = default;
        m.Run(0, () => sf = emap.Alloc(page, SfBufFlags.ReadOnly));
        Assert.That(emap.CpuGeneration(1), Is.LessThan((uint)sf.Generation), "cpu 1 is behind the mapping");

        long FlushesOfAReaderOnCpu1()
        {
            long flushes = -1;
            m.Run(1, () =>
            {
                var before = m.Counters();
                Assert.That(m.CurrentCpu.ReadUInt64(emap.Kva(sf)), Is.EqualTo(0x55UL));
                flushes = (m.Counters() - before)[Counter.MappingFlushes];
            });
            return flushes;
        }

        Assert.That(FlushesOfAReaderOnCpu1(), Is.EqualTo(1), "the first thread on cpu 1 consumes by flushing");
        Assert.That(emap.CpuGeneration(1), Is.GreaterThanOrEqualTo((uint)sf.Generation), "and the CPU's generation records it");
        Assert.That(FlushesOfAReaderOnCpu1(), Is.Zero, "another thread on cpu 1: the CPU has consumed that generation already");
        Assert.That(emap.Stats().Details["emap.consume_flushes"], Is.EqualTo(1));
        m.Run(0, () => emap.Free(sf));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    // ------------------------------------------------------------------ FreeBSD quick_enter

    [Test]
    public void QuickEnterDoesNotNestAndTheAdapterFallsBackToAnSfBufForTheSecondMapping()
    {
        using var m = new SimMachine(Options(cpus: 1, window: 8));
        using var quick = (QuickMapper)SfBufMapper.Create(SfBufMapper.FreeBsdQuick, m);
        var a = Sim.NewPage(m, 0xA);
        var b = Sim.NewPage(m, 0xB);
        m.Run(0, () =>
        {
            // The mechanism itself refuses to nest.
            var raw = quick.TestHookQuickEnterPage(a);
            Assert.That(() => quick.TestHookQuickEnterPage(b), Throws.InvalidOperationException.With.Message.Contains("PTE busy"));
            Assert.That(() => m.Sleep(this, timeout: TimeSpan.FromMilliseconds(1)), Throws.InvalidOperationException.With.Message.Contains("critical section"), "nothing may sleep while it is held");
            quick.Free(raw);

            // The adapter prevents it: a nested private user gets a CPU-private sf_buf.
            var outer = quick.Alloc(a, SfBufFlags.CpuPrivate);
            var inner = quick.Alloc(b, SfBufFlags.CpuPrivate);
            Assert.That(m.Layout.Fixmap.Contains(outer.Kva), Is.True, "the first is the quick-map page");
            Assert.That(m.Layout.SfBufWindow.Contains(inner.Kva), Is.True, "the nested one is an sf_buf");
            Assert.That(m.CurrentCpu.ReadUInt64(quick.Kva(outer)), Is.EqualTo(0xAUL));
            Assert.That(m.CurrentCpu.ReadUInt64(quick.Kva(inner)), Is.EqualTo(0xBUL));
            quick.Free(inner);
            quick.Free(outer);
            Assert.That(KernelThread.Current.CriticalNesting, Is.Zero);
        });
        var details = quick.Stats().Details;
        Assert.That(details["quick.enters"], Is.EqualTo(2));
        Assert.That(details["quick.nested_fallbacks"], Is.EqualTo(1));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    private static MachineOptions Options(int cpus, int window) => new()
    {
        Cpus = cpus,
        PhysicalMemoryBytes = 16UL << 20,
        SfBufWindowPages = window,
        KernelMapPages = 64,
        KernelMemoryPages = 256,
        ShootdownWatchdog = TimeSpan.FromSeconds(15),
    };
}
