using Native.PageTable;
using Native.SfBufNative;
using Native.Tests.SfBuf;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Peers;

/// <summary>
/// Unbound threads that migrate while they hold sf_bufs, for every strategy (epoch-cache also
/// has its own liveness tests): more threads than CPUs, each yielding between alloc, the
/// access and free, so that a thread reads and frees on another CPU than the one it allocated
/// on. Every read must see its page, nothing may be left allocated, and every allocation must be
/// counted once, the per-CPU mechanisms' counts included (<see cref="SfBufStrategyInfo.PrivateMapCounters"/>:
/// a count made on a CPU the thread no longer holds can be lost to that CPU's own increments).
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class PeerMigrationTests
{
    private const int Threads = 4;
    private const int Rounds = 150;
    private const int PageCount = 16;

    [TestCaseSource(typeof(AllStrategies), nameof(AllStrategies.Names))]
    public void UnboundThreadsThatMigrateWhileHoldingSfBufsReadTheirPagesAndEveryAllocationIsCounted(string strategy)
    {
        var info = SfBufMapper.Describe(strategy);
        using var m = new SimMachine(SfBufRig.Small(flavor: info.Flavor));
        using var sfbufs = SfBufMapper.Create(strategy, m);
        var pages = SfBufRig.NewPages(m, PageCount);

        // Warm the paths up on one thread first: a first, compiling pass is slow enough for the
        // other threads to run alone, each on its own CPU.
        m.Run(0, () =>
        {
            foreach (var page in pages)
            {
                var sf = sfbufs.Alloc(page, SfBufFlags.ReadOnly);
                m.CurrentCpu.ReadUInt64(sfbufs.Kva(sf));
                sfbufs.Free(sf);
            }
        });

        var allocations = new long[Threads];
        var privateAllocations = new long[Threads];
        var wrongReads = new long[Threads];
        var before = m.Counters();
        var statsBefore = sfbufs.Stats();
        int started = 0;

        var threads = Enumerable.Range(0, Threads).Select(t => m.StartThread($"migrant{t}", () =>
        {
            var td = KernelThread.Current;
            var random = new Random(0x316 + t);

            // All start before any works, so that every yield has a waiter to hand the CPU to.
            Interlocked.Increment(ref started);
            while (Volatile.Read(ref started) < Threads)
            {
                td.Yield();
                Thread.Yield();
            }

            for (int i = 0; i < Rounds; i++)
            {
                var page = pages[random.Next(PageCount)];
                var sf = sfbufs.Alloc(page, random.Next(2) == 0 ? SfBufFlags.Default : SfBufFlags.ReadOnly);
                allocations[t]++;
                Yield(td, random); // another thread takes this CPU; this one may resume on the other

                // sf_buf_kva on the CPU that reads, right where it reads (lwbuf_kva, emap's consume).
                wrongReads[t] += m.CurrentCpu.ReadUInt64(sfbufs.Kva(sf) + (8 * (ulong)random.Next(512))) != SfBufRig.Stamp(page) ? 1 : 0;
                Yield(td, random);

                // A private user in between, pinned while it holds its mapping.
                var other = pages[random.Next(PageCount)];
                td.SchedPin();
                var mine = sfbufs.Alloc(other, SfBufFlags.CpuPrivate);
                privateAllocations[t]++;
                wrongReads[t] += m.CurrentCpu.ReadUInt64(sfbufs.Kva(mine)) != SfBufRig.Stamp(other) ? 1 : 0;
                sfbufs.Free(mine);
                td.SchedUnpin();

                sfbufs.Free(sf); // on whichever CPU the thread holds now
                Yield(td, random);
            }
        })).ToArray();
        SfBufRig.JoinAll(threads, TimeSpan.FromMinutes(2));

        var d = m.Counters() - before;
        var stats = sfbufs.Stats();
        long total = allocations.Sum() + privateAllocations.Sum();
        TestContext.Out.WriteLine($"{strategy}: {total} allocations, {d[Counter.Migrations]} migrations");
        Assert.That(total, Is.EqualTo(2L * Threads * Rounds));
        Assert.That(d[Counter.Migrations], Is.GreaterThan(0), "the threads moved between CPUs");
        Assert.That(wrongReads, Is.All.Zero, "every read through an sf_buf saw its page's stamp");
        Assert.That(d[Counter.StaleAccesses] + d[Counter.LatentStaleAccesses], Is.Zero);
        Assert.That(stats.NsfbufsUsed, Is.Zero, "everything was freed");
        if (!info.NeedsDirectMap)
        {
            // Each allocation is a hit or a miss; the per-CPU mechanisms count theirs per CPU.
            Assert.That(stats.Hits + stats.Misses - (statsBefore.Hits + statsBefore.Misses), Is.EqualTo(total), "every allocation counted once");
        }

        long perCpuMaps = info.PrivateMapCounters.Count > 0 ? info.PrivateMapCounters.Sum(c => stats.Details[c]) : privateAllocations.Sum();
        Assert.That(perCpuMaps, Is.EqualTo(privateAllocations.Sum()), "every private mapping counted on the CPU that made it");
    }

    /// <summary>One or two yields: threads that all yielded once per step would hand the CPUs round in lockstep, each always back to its own.</summary>
    private static void Yield(KernelThread td, Random random)
    {
        for (int i = random.Next(1, 3); i > 0; i--)
        {
            td.Yield();
        }
    }
}
