using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;
using SfBufHandle = Native.SfBufNative.SfBuf;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>
/// epoch-cache: lock-free hits, slots recycled after an epoch instead of a shootdown, the
/// fallback shootdown for a lagging CPU, all-or-nothing multi-slot allocation and fair waits.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class EpochCacheMapperTests
{
    private static EpochCacheMapper Create(SimMachine m, int nsfbufs) =>
        (EpochCacheMapper)SfBufMapper.Create(SfBufMapper.EpochCache, m, nsfbufs);

    // ------------------------------------------------------------------ the hit path

    [Test]
    public void AHitTakesNoLockAndWritesNoPte()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 8);
        var page = SfBufRig.NewPage(m);
        CounterSnapshot? d = null;
        int reads = 0, wrongReads = 0;

        m.Run(0, () =>
        {
            var first = sfbufs.Alloc(page);
            sfbufs.Free(first);
            var before = m.Counters();
            for (int i = 0; i < 1000; i++)
            {
                var sf = sfbufs.Alloc(page);
                var again = sfbufs.Alloc(page);
                reads++;
                if (m.CurrentCpu.ReadUInt64(sfbufs.Kva(again)) != SfBufRig.Stamp(page))
                {
                    wrongReads++;
                }

                sfbufs.Free(again);
                sfbufs.Free(sf);
            }

            d = m.Counters() - before;
        });

        Assert.That(d![Counter.LockAcquisitions], Is.Zero, "a hit touches no lock");
        Assert.That(d[Counter.KernelPteWrites], Is.Zero);
        Assert.That(d[Counter.LocalInvalidations], Is.Zero);
        Assert.That(reads, Is.EqualTo(1000));
        Assert.That(wrongReads, Is.Zero, "every read through a hit's address saw the page's stamp");
        Assert.That(sfbufs.Stats().Hits, Is.EqualTo(2000));
        Assert.That(sfbufs.Stats().Misses, Is.EqualTo(1));
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.Zero);
    }

    [Test]
    public void ANewMappingIsOnePteWriteAndValidOnEveryCpuWithoutInvalidation()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 8);
        var page = SfBufRig.NewPage(m);
        SfBufHandle sf = default;
        ulong readOnOne = 0;
        var before = m.Counters();

        m.Run(0, () => sf = sfbufs.Alloc(page));
        m.Run(1, () => readOnOne = m.CurrentCpu.ReadUInt64(sfbufs.Kva(sf)));
        m.Run(0, () => sfbufs.Free(sf));
        var d = m.Counters() - before;

        Assert.That(readOnOne, Is.EqualTo(SfBufRig.Stamp(page)));
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(1));
        Assert.That(d[Counter.LocalInvalidations], Is.Zero, "a clean slot is cached nowhere");
        Assert.That(d[Counter.ShootdownRounds], Is.Zero);
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        Assert.That(d[Counter.LatentStaleAccesses], Is.Zero);
    }

    [Test]
    public void MissesServedFromTheCpusMagazineTakeNoLock()
    {
        // 512 clean slots, 200 first-time pages: no retire is needed, so every locked miss
        // refills the magazine in full and the next MagazineSize misses take no lock.
        using var m = new SimMachine(SfBufRig.Small(windowPages: 512));
        using var sfbufs = Create(m, 512);
        var pages = SfBufRig.NewPages(m, 200);
        CounterSnapshot? d = null;

        m.Run(0, () =>
        {
            var before = m.Counters();
            foreach (var page in pages)
            {
                var sf = sfbufs.Alloc(page);
                Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(sf)), Is.EqualTo(SfBufRig.Stamp(page)));
                sfbufs.Free(sf);
            }

            d = m.Counters() - before;
        });

        var stats = sfbufs.Stats();
        long locked = stats.Details[EpochCacheMapper.DetailLockedMisses];
        int perLock = sfbufs.MagazineSize + 1;
        Assert.That(sfbufs.MagazineSize, Is.GreaterThan(1));
        Assert.That(stats.Misses, Is.EqualTo(200));
        Assert.That(locked, Is.EqualTo((200 + perLock - 1) / perLock), "one locked miss per magazine refill");
        Assert.That(d![Counter.LockAcquisitions], Is.EqualTo(locked), "a miss from the magazine takes no lock");
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(200), "one PTE write per miss, wherever its slot came from");
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        Assert.That(sfbufs.TestHookCheckInvariants(), Is.Empty);
    }

    [Test]
    public void ACpusMissesTakeItsPartitionsSlotsInAddressOrderSoTheySpreadEvenlyOverTheTlbSets([Values(0, 1)] int cpu)
    {
        // 512 slots in two partitions; 192 first-time pages on one CPU, through several magazine
        // refills. Used in reverse, each magazine left its unused slots as a run in the middle
        // of the CPU's addresses, and some TLB sets held one more of its mappings than others.
        using var m = new SimMachine(SfBufRig.Small(windowPages: 512));
        using var sfbufs = Create(m, 512);
        var pages = SfBufRig.NewPages(m, 192);
        var kvas = new ulong[pages.Length];

        m.Run(cpu, () =>
        {
            for (int i = 0; i < pages.Length; i++)
            {
                var sf = sfbufs.Alloc(pages[i]);
                kvas[i] = sfbufs.Kva(sf);
                sfbufs.Free(sf);
            }
        });

        int sets = m.Options.TlbEntries / m.Options.TlbWays;
        Assert.That(pages.Length, Is.GreaterThan(3 * sfbufs.MagazineSize), "several refills");
        Assert.That(kvas, Is.EqualTo(Enumerable.Range(0, pages.Length).Select(i => kvas[0] + ((ulong)i * Pte.PageSize))), "consecutive addresses, lowest first");
        Assert.That(kvas.GroupBy(k => (k / Pte.PageSize) % (ulong)sets).Select(g => g.Count()), Is.All.EqualTo(pages.Length / sets), "as many of the CPU's mappings in every TLB set");
        Assert.That(sfbufs.TestHookCheckInvariants(), Is.Empty);
    }

    [Test]
    public void CleanSlotsIdleInAnotherCpusMagazineAreTakenBackBeforeThePoolCountsAsExhausted()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 64);
        var pages = SfBufRig.NewPages(m, 66);
        var held = new List<SfBufHandle>();

        // CPU 1's one miss refills its magazine; then CPU 0 maps everything else.
        m.Run(1, () => sfbufs.Free(sfbufs.Alloc(pages[65])));
        var (_, _, inMagazines) = sfbufs.TestHookPool();
        Assert.That(inMagazines, Is.EqualTo(sfbufs.MagazineSize), "CPU 1's magazine was filled");

        m.Run(0, () =>
        {
            for (int i = 0; i < 65; i++)
            {
                var sf = sfbufs.Alloc(pages[i], SfBufFlags.NoWait);
                if (sf.IsNone)
                {
                    break;
                }

                held.Add(sf);
            }

            Assert.That(held, Has.Count.EqualTo(64), "every slot of the pool, CPU 1's idle ones included");
            Assert.That(sfbufs.Alloc(pages[64], SfBufFlags.NoWait).IsNone, Is.True, "the 65th finds the pool exhausted");
            held.ForEach(sfbufs.Free);
        });

        var stats = sfbufs.Stats();
        Assert.That(stats.Details[EpochCacheMapper.DetailSteals], Is.GreaterThanOrEqualTo(sfbufs.MagazineSize));
        Assert.That(stats.NsfbufsUsed, Is.Zero);
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
        Assert.That(sfbufs.TestHookCheckInvariants(), Is.Empty);
    }

    // ------------------------------------------------------------------ counters

    [Test]
    public void NsfbufsPeakCountsSlotsMadeBusyByLockFreeHitsInCheckedMode()
    {
        // Three pages mapped and freed one at a time (the peak so far is 1), then all three held
        // at once by hits, which take no lock: the peak is 3.
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 8);
        var pages = SfBufRig.NewPages(m, 3);
        m.Run(0, () =>
        {
            foreach (var page in pages)
            {
                sfbufs.Free(sfbufs.Alloc(page));
            }

            var held = pages.Select(p => sfbufs.Alloc(p)).ToList();
            held.ForEach(sfbufs.Free);
        });

        var stats = sfbufs.Stats();
        Assert.That(stats.Hits, Is.EqualTo(3));
        Assert.That(stats.Details[EpochCacheMapper.DetailPeakExact], Is.EqualTo(1), "tests run in checked mode");
        Assert.That(stats.NsfbufsPeak, Is.EqualTo(3));
        Assert.That(stats.NsfbufsUsed, Is.Zero);
    }

    [Test]
    public void NsfbufsUsedReportsDriftInsteadOfClampingIt()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 8);
        sfbufs.TestHookDriftUsed(1, -2);
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.EqualTo(-2), "a use count that went wrong shows");
        Assert.That(sfbufs.Stats().Details.Keys, Has.None.EqualTo("epoch.retired_slots"), "recycles are reported once, as Recycles");
    }

    [Test]
    public void EachCpusPerCpuLinePartitionHeaderAndMagazineShareNoCacheLineWithAnotherCpus([Values(2, 3, 8)] int cpus)
    {
        // The partition headers were 48-byte structs side by side in a managed array, so that
        // neighbouring CPUs' headers (written at every retire and reclaim) shared lines.
        using var m = new SimMachine(SfBufRig.Small(cpus: cpus, windowPages: 512));
        using var sfbufs = Create(m, 512);
        var owner = new Dictionary<nuint, string>();
        void Claim(nuint address, int bytes, string what)
        {
            for (nuint line = address / 64; line <= (address + (nuint)bytes - 1) / 64; line++)
            {
                if (owner.TryGetValue(line, out var other) && other != what)
                {
                    Assert.Fail($"{what} shares cache line 0x{line * 64:x} with {other}");
                }

                owner[line] = what;
            }
        }

        for (int c = 0; c < cpus; c++)
        {
            var layout = sfbufs.TestHookLayout(c);
            Claim(layout.PerCpu, 128, $"cpu {c}");
            Claim(layout.Partition, 128, $"cpu {c}");
            Claim(layout.Magazine, (1 + sfbufs.MagazineSize) * sizeof(int), $"cpu {c}");
            Claim(layout.Shared, 16, "the shared line");
        }
    }

    // ------------------------------------------------------------------ retire, epochs, reclaim

    [Test]
    public void ARecycledSlotWaitsForTheOtherCpusFlushPointAndSendsNoIpi()
    {
        // Pool of 8: batches of 1, retired ahead when fewer than 1 clean slot would remain.
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 8);
        var pages = SfBufRig.NewPages(m, 32);
        var before = m.Counters();

        // CPU 1 caches a translation of every slot, then goes idle.
        var handles = new SfBufHandle[8];
        m.Run(0, () =>
        {
            for (int i = 0; i < 8; i++)
            {
                handles[i] = sfbufs.Alloc(pages[i]);
            }
        });
        m.Run(1, () =>
        {
            foreach (var sf in handles)
            {
                Assert.That(m.CurrentCpu.ReadUInt64(sf.Kva), Is.EqualTo(SfBufRig.Stamp(sf.Page)));
            }
        });
        m.Run(0, () =>
        {
            foreach (var sf in handles)
            {
                sfbufs.Free(sf);
            }

            // Every further page recycles a slot CPU 1 has cached; CPU 1 is idle, so nobody waits.
            for (int i = 8; i < 32; i++)
            {
                var sf = sfbufs.Alloc(pages[i]);
                Assert.That(m.CurrentCpu.ReadUInt64(sf.Kva), Is.EqualTo(SfBufRig.Stamp(pages[i])));
                sfbufs.Free(sf);
            }
        });
        var beforeCpu1 = m.Counters();

        // CPU 1 switches a thread in: its flush point drops every retired translation first.
        m.Run(1, () =>
        {
            for (int i = 24; i < 32; i++)
            {
                var sf = sfbufs.Alloc(pages[i]);
                Assert.That(m.CurrentCpu.ReadUInt64(sf.Kva), Is.EqualTo(SfBufRig.Stamp(pages[i])));
                sfbufs.Free(sf);
            }
        });
        var d = m.Counters() - before;
        var cpu1 = m.Counters() - beforeCpu1;

        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        Assert.That(d[Counter.LatentStaleAccesses], Is.Zero);
        Assert.That(d[Counter.ShootdownRounds], Is.Zero, "recycling waited out an epoch instead");
        Assert.That(d[Counter.IpisSent], Is.Zero);
        Assert.That(sfbufs.Stats().Recycles, Is.GreaterThanOrEqualTo(24));
        Assert.That(sfbufs.TestHookObservedEpoch(1), Is.EqualTo(sfbufs.GlobalEpoch), "CPU 1 caught up when it ran");
        Assert.That(cpu1.OnCpu(1, Counter.LocalInvalidations) + cpu1.OnCpu(1, Counter.FullFlushes), Is.GreaterThan(0), "CPU 1 invalidated what was retired while it was idle");
    }

    [Test]
    public void ACpuThatPassesNoFlushPointGetsOneFallbackShootdown()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 8);

        // CPU 1 runs a thread that answers IPIs (at its memory accesses, as a long copy does) but
        // makes no sf_buf call, never polls, and never switches.
        var d = StreamOnCpu0BesideBusyCpu1(m, sfbufs, pageCount: 16, cpu1Polls: false);

        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        Assert.That(d[Counter.LatentStaleAccesses], Is.Zero);
        Assert.That(sfbufs.FallbackShootdowns, Is.GreaterThan(0), "the busy CPU never passed an epoch by itself");
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(sfbufs.FallbackShootdowns), "every round was a fallback");
        Assert.That(d[Counter.IpisSent], Is.EqualTo(sfbufs.FallbackShootdowns));
        Assert.That(d[Counter.ShootdownRounds], Is.LessThanOrEqualTo(8), "one round advances a whole batch, not one page");
    }

    [Test]
    public void ACpuThatPollsWhileItWaitsPassesFlushPointsThere()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 8);

        // CPU 1 runs a kernel loop that polls (Cpu.Poll), as a CPU spinning for a lock does, and
        // makes no sf_buf call: each poll is a flush point, so the epochs it holds back pass on
        // their own and the fallback is not needed (unless the host deschedules CPU 1's thread for
        // longer than the cross-CPU spin, hence "fewer than half" rather than none).
        var d = StreamOnCpu0BesideBusyCpu1(m, sfbufs, pageCount: 64, cpu1Polls: true);

        long batches = sfbufs.Stats().Details[EpochCacheMapper.DetailBatches];
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        Assert.That(d[Counter.LatentStaleAccesses], Is.Zero);
        Assert.That(batches, Is.GreaterThanOrEqualTo(8), "pages past the first eight recycle slots, in batches of one");
        Assert.That(sfbufs.TestHookFlushPoints(1), Is.GreaterThan(0), "CPU 1 invalidated retired slots at its polls");
        Assert.That(sfbufs.FallbackShootdowns, Is.LessThan(batches / 2), "the polling CPU passed the epochs itself");
    }

    [Test]
    public void ACpuStreamingAloneRecyclesEveryPartitionAsLruWould()
    {
        // 2 CPUs, 64 slots (a partition of 32 each); CPU 0 cycles through twice the pool while
        // CPU 1 takes no slot: LRU misses every time, and so must epoch-cache once CPU 1 counts
        // as dormant, instead of keeping CPU 1's partition mapped (which would hit a quarter).
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 64);
        var pages = SfBufRig.NewPages(m, 128);
        long hitsBefore = 0;
        m.Run(0, () =>
        {
            for (int cycle = 0; cycle < 12; cycle++)
            {
                if (cycle == 8)
                {
                    hitsBefore = sfbufs.Stats().Hits;
                }

                foreach (var page in pages)
                {
                    var sf = sfbufs.Alloc(page);
                    Assert.That(m.CurrentCpu.ReadUInt64(sf.Kva), Is.EqualTo(SfBufRig.Stamp(page)));
                    sfbufs.Free(sf);
                }
            }
        });

        Assert.That(sfbufs.Stats().Hits - hitsBefore, Is.Zero, "cycles 9 to 12 hit nothing, as LRU");
        Assert.That(sfbufs.TestHookCheckInvariants(), Is.Empty);
        Assert.That(m.Counters()[Counter.StaleAccesses] + m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
    }

    [Test]
    public void RecyclingOneEpochEarlyIsCaughtByTheOracle()
    {
        // The planted bug lets a slot that CPU 1 still caches be reused before CPU 1 passed its
        // epoch; CPU 1 then reads the new page through its stale entry.
        Assert.That(PlantedEarlyRecycle(plant: true), Is.InstanceOf<StaleTranslationException>());
        Assert.That(PlantedEarlyRecycle(plant: false), Is.Null, "without the bug the fallback shootdown makes it safe");
    }

    // ------------------------------------------------------------------ exhaustion

    [Test]
    public void AllocManyTakesEverythingOrNothing()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 4);
        var pages = SfBufRig.NewPages(m, 6);
        var two = new SfBufHandle[2];

        m.Run(0, () =>
        {
            var held = pages.Take(3).Select(p => sfbufs.Alloc(p)).ToList();
            Assert.That(sfbufs.AllocMany(pages.AsSpan(3, 2), two, SfBufFlags.NoWait), Is.False, "one slot is free, two are needed");
            Assert.That(sfbufs.Stats().NsfbufsUsed, Is.EqualTo(3), "nothing was kept from the failed attempt");
            Assert.That(sfbufs.AllocMany(pages.AsSpan(2, 2), two, SfBufFlags.NoWait), Is.True, "one hit and one miss fit");
            Assert.That(two[0].Kva, Is.EqualTo(held[2].Kva));
            sfbufs.Free(two[0]);
            sfbufs.Free(two[1]);
            held.ForEach(sfbufs.Free);
        });
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.Zero);
    }

    [Test]
    public void AllocManyCountsAgainWhenItsOwnRetireTakesTheSlotOfOneOfItsPages()
    {
        // A pool of three and random pairs of five pages: the batch AllocMany retires for its
        // missing page is often the slot of the pair's cached page, which then needs a clean
        // slot too. Each handle must map its own page, and the count must add up.
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 3);
        var pages = SfBufRig.NewPages(m, 5);
        var two = new SfBufHandle[2];
        var random = new Random(7);
        int wrong = 0;

        m.Run(0, () =>
        {
            for (int i = 0; i < 2000; i++)
            {
                int a = random.Next(pages.Length), b = (a + 1 + random.Next(pages.Length - 1)) % pages.Length;
                Assert.That(sfbufs.AllocMany([pages[a], pages[b]], two), Is.True);
                wrong += m.CurrentCpu.ReadUInt64(two[0].Kva) == SfBufRig.Stamp(pages[a]) ? 0 : 1;
                wrong += m.CurrentCpu.ReadUInt64(two[1].Kva) == SfBufRig.Stamp(pages[b]) ? 0 : 1;
                sfbufs.Free(two[0]);
                sfbufs.Free(two[1]);
            }
        });
        Assert.That(wrong, Is.Zero, "every handle maps its own page");
        Assert.That(sfbufs.TestHookCheckInvariants(), Is.Empty);
        Assert.That(sfbufs.Stats().Recycles, Is.GreaterThan(0));
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.Zero);
        Assert.That(m.Counters()[Counter.StaleAccesses] + m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
    }

    [Test]
    public void TwoThreadsNeedingTwoMappingsEachFromAPoolOfThreeBothFinish()
    {
        // kmap's deadlock: each holds one and waits for a second. AllocMany never holds while waiting.
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 3);
        var pages = SfBufRig.NewPages(m, 4);
        int rounds = 500;
        var threads = new List<KernelThread>();
        for (int t = 0; t < 2; t++)
        {
            var mine = new[] { pages[2 * t], pages[(2 * t) + 1] };
            threads.Add(m.StartThread($"pair{t}", () =>
            {
                var both = new SfBufHandle[2];
                for (int i = 0; i < rounds; i++)
                {
                    Assert.That(sfbufs.AllocMany(mine, both), Is.True);
                    Assert.That(m.CurrentCpu.ReadUInt64(both[0].Kva), Is.EqualTo(SfBufRig.Stamp(mine[0])));
                    Assert.That(m.CurrentCpu.ReadUInt64(both[1].Kva), Is.EqualTo(SfBufRig.Stamp(mine[1])));
                    m.CurrentCpu.Poll();
                    sfbufs.Free(both[0]);
                    sfbufs.Free(both[1]);
                }
            }, cpu: t, bound: true));
        }

        SfBufRig.JoinAll(threads, SfBufRig.Patience);
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
        Assert.That(m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.Zero);
    }

    [Test]
    public void WaitersAreServedInTheOrderTheyCame()
    {
        using var m = new SimMachine(SfBufRig.Small(cpus: 3));
        using var sfbufs = Create(m, 2);
        var pages = SfBufRig.NewPages(m, 4);
        var held = new SfBufHandle[2];
        m.Run(0, () =>
        {
            held[0] = sfbufs.Alloc(pages[0]);
            held[1] = sfbufs.Alloc(pages[1]);
        });

        var order = new List<int>();
        var got = new SfBufHandle[2];
        var waiters = new List<KernelThread>();
        for (int w = 0; w < 2; w++)
        {
            int me = w;
            int sleepersBefore = m.SleepingThreads;
            waiters.Add(m.StartThread($"waiter{me}", () =>
            {
                got[me] = sfbufs.Alloc(pages[2 + me]);
                lock (order)
                {
                    order.Add(me);
                }
            }, cpu: 1 + me, bound: true));
            SfBufRig.WaitUntil(() => m.SleepingThreads == sleepersBefore + 1, $"waiter {me} sleeps");
        }

        m.Run(0, () => sfbufs.Free(held[0]));
        SfBufRig.WaitUntil(() => { lock (order) { return order.Count == 1; } }, "one waiter is served");
        Thread.Sleep(50);
        Assert.That(order, Is.EqualTo(new[] { 0 }), "the first waiter got the first free slot, the second still waits");
        m.Run(0, () => sfbufs.Free(held[1]));
        SfBufRig.JoinAll(waiters, SfBufRig.Patience);
        Assert.That(order, Is.EqualTo(new[] { 0, 1 }));
        m.Run(0, () =>
        {
            sfbufs.Free(got[0]);
            sfbufs.Free(got[1]);
        });
        Assert.That(sfbufs.Stats().AllocWait, Is.GreaterThanOrEqualTo(2));
    }

    [Test]
    public void AStaleHandleIsRefusedAfterItsSlotWasRecycled()
    {
        using var m = new SimMachine(SfBufRig.Small(cpus: 1));
        using var sfbufs = Create(m, 2);
        var pages = SfBufRig.NewPages(m, 8);
        m.Run(0, () =>
        {
            var old = sfbufs.Alloc(pages[0]);
            sfbufs.Free(old);
            for (int i = 1; i < 8; i++)
            {
                sfbufs.Free(sfbufs.Alloc(pages[i]));
            }

            Assert.That(() => sfbufs.Free(old), Throws.InvalidOperationException);
        });
    }

    [Test]
    public void RandomSharedUseOnTwoCpusKeepsEveryInvariant([Values(1, 2, 3)] int seed)
    {
        // Both CPUs map, share, read, free and recycle a working set twice the pool; the
        // structural invariants are checked after each round, the oracle on every access.
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 16);
        var pages = SfBufRig.NewPages(m, 32);
        var shared = new SfBufHandle[4];
        var sharedLock = new object();
        for (int round = 0; round < 20; round++)
        {
            var threads = new List<KernelThread>();
            for (int c = 0; c < 2; c++)
            {
                var random = new Random((seed * 1000) + (round * 10) + c);
                threads.Add(m.StartThread($"random{c}", () =>
                {
                    var mine = new List<SfBufHandle>();
                    var cpu = m.CurrentCpu;
                    for (int op = 0; op < 300; op++)
                    {
                        switch (random.Next(4))
                        {
                            case 0 when mine.Count < 4:
                                mine.Add(sfbufs.Alloc(pages[random.Next(pages.Length)], SfBufFlags.NoWait) is { IsNone: false } sf ? sf : default);
                                mine.RemoveAll(h => h.IsNone);
                                break;
                            case 1 when mine.Count > 0:
                                int k = random.Next(mine.Count);
                                Assert.That(cpu.ReadUInt64(mine[k].Kva), Is.EqualTo(SfBufRig.Stamp(mine[k].Page)));
                                sfbufs.Free(mine[k]);
                                mine.RemoveAt(k);
                                break;
                            case 2:
                                // Share: hand a mapping to the other CPU, or read one it handed over.
                                lock (sharedLock)
                                {
                                    int i = random.Next(shared.Length);
                                    if (shared[i].IsNone && mine.Count > 0)
                                    {
                                        shared[i] = mine[^1];
                                        mine.RemoveAt(mine.Count - 1);
                                    }
                                    else if (!shared[i].IsNone)
                                    {
                                        Assert.That(cpu.ReadUInt64(shared[i].Kva), Is.EqualTo(SfBufRig.Stamp(shared[i].Page)));
                                        sfbufs.Free(shared[i]);
                                        shared[i] = default;
                                    }
                                }

                                break;
                            default:
                                cpu.Poll();
                                break;
                        }
                    }

                    mine.ForEach(sfbufs.Free);
                }, cpu: c, bound: true));
            }

            SfBufRig.JoinAll(threads, SfBufRig.Patience);
            Assert.That(sfbufs.TestHookCheckInvariants(), Is.Empty, $"after round {round}");
        }

        m.Run(0, () =>
        {
            for (int i = 0; i < shared.Length; i++)
            {
                if (!shared[i].IsNone)
                {
                    sfbufs.Free(shared[i]);
                }
            }
        });
        Assert.That(sfbufs.TestHookCheckInvariants(), Is.Empty);
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.Zero);
        Assert.That(sfbufs.Stats().Recycles, Is.GreaterThan(0));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
        Assert.That(m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
    }

    // ------------------------------------------------------------------ helpers

    /// <summary>CPU 0 maps, reads and frees <paramref name="pageCount"/> pages once each while CPU 1 runs a busy thread; the counters' change.</summary>
    private static CounterSnapshot StreamOnCpu0BesideBusyCpu1(SimMachine m, EpochCacheMapper sfbufs, int pageCount, bool cpu1Polls)
    {
        var pages = SfBufRig.NewPages(m, pageCount);
        using var busy = new BusyCpus(m, [1], polls: cpu1Polls);
        var before = m.Counters();
        m.Run(0, () =>
        {
            foreach (var page in pages)
            {
                var sf = sfbufs.Alloc(page);
                Assert.That(m.CurrentCpu.ReadUInt64(sf.Kva), Is.EqualTo(SfBufRig.Stamp(page)));
                sfbufs.Free(sf);
            }
        });
        return m.Counters() - before;
    }

    private static Exception? PlantedEarlyRecycle(bool plant)
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 8);
        sfbufs.TestHooks = new EpochCacheTestHooks { RecycleOneEpochEarly = plant };
        var pages = SfBufRig.NewPages(m, 16);
        var handles = new SfBufHandle[8];
        var next = SfBufHandle.None;
        int phase = 0;
        Exception? seen = null;

        m.Run(0, () =>
        {
            for (int i = 0; i < 8; i++)
            {
                handles[i] = sfbufs.Alloc(pages[i]);
            }
        });

        // CPU 1 caches every slot, then stays running without a flush point (or a poll) until phase 2.
        var reader = m.StartThread("stale-reader", () =>
        {
            var cpu = m.CurrentCpu;
            foreach (var sf in handles)
            {
                cpu.ReadUInt64(sf.Kva);
            }

            Volatile.Write(ref phase, 1);
            SfBufRig.SpinOnCpu(m, () => Volatile.Read(ref phase) == 2, "the recycled mapping is published", poll: false);
            try
            {
                cpu.ReadUInt64(next.Kva);
            }
            catch (StaleTranslationException e)
            {
                seen = e;
            }
        }, cpu: 1, bound: true);
        SfBufRig.WaitUntil(() => Volatile.Read(ref phase) == 1, "CPU 1 cached every slot");

        m.Run(0, () =>
        {
            foreach (var sf in handles)
            {
                sfbufs.Free(sf);
            }

            next = sfbufs.Alloc(pages[8]);
        });
        Volatile.Write(ref phase, 2);
        reader.Join(SfBufRig.Patience);
        m.Run(0, () => sfbufs.Free(next));
        return seen;
    }
}
