using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;
using SfBufHandle = Native.SfBufNative.SfBuf;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>sfbuf-i386 under real concurrency: two pinned kernel threads on two CPUs, the stale-translation oracle on.</summary>
[TestFixture]
[NonParallelizable]
[Category("Stress")]
public sealed class I386StressTests
{
    private const int Nsfbufs = 64;
    private const int PageCount = 3 * Nsfbufs;
    private const int OperationsPerThread = 500_000;
    private const int MaxHeld = 4;
    private const int MaxInFlight = 4;

    [Test]
    public void AMillionRandomOperationsOnTwoCpusMakeNoStaleAccessAndLeaveTheCacheConsistent()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufRig.I386(m, Nsfbufs);
        var pages = SfBufRig.NewPages(m, PageCount);
        var inbox = new[] { new ConcurrentQueue<(SfBufHandle Sf, VmPage Page)>(), new ConcurrentQueue<(SfBufHandle Sf, VmPage Page)>() };
        var operations = new long[2];
        var allocations = new long[2];
        var handedOver = new long[2];
        var badReads = new long[2];
        var badHandles = new long[2];
        var before = m.Counters();

        Assert.That(m.Options.Checked, Is.True, "the stale-translation oracle is on");
        var threads = Enumerable.Range(0, 2).Select(cpu => m.StartThread($"stress-cpu{cpu}", () =>
        {
            var random = new Random(0x5f00 + cpu);
            var c = m.CurrentCpu;
            var held = new List<(SfBufHandle Sf, VmPage Page, bool Shared)>(MaxHeld);
            var mine = inbox[cpu];
            var theirs = inbox[1 - cpu];

            void Check(SfBufHandle sf, VmPage page, int word)
            {
                if (c.ReadUInt64(sf.Kva + (ulong)(8 * word)) != SfBufRig.Stamp(page))
                {
                    badReads[cpu]++;
                }
            }

            for (int op = 0; op < OperationsPerThread; op++)
            {
                // A shared mapping the other CPU allocated (and referenced) for us: read it, free it.
                if (mine.TryDequeue(out var delivered))
                {
                    Check(delivered.Sf, delivered.Page, random.Next(512));
                    sfbufs.Free(delivered.Sf);
                    operations[cpu] += 2;
                }

                int choice = random.Next(16);
                if (held.Count == 0 || (held.Count < MaxHeld && choice < 5))
                {
                    var page = pages[random.Next(PageCount)];
                    bool shared = random.Next(2) == 0;
                    var sf = sfbufs.Alloc(page, shared ? SfBufFlags.Default : SfBufFlags.CpuPrivate);
                    if (sf.IsNone || sf.Page != page)
                    {
                        badHandles[cpu]++;
                    }

                    held.Add((sf, page, shared));
                    allocations[cpu]++;
                }
                else if (choice < 11)
                {
                    var (sf, page, _) = held[random.Next(held.Count)];
                    int word = random.Next(512);
                    if (random.Next(4) == 0)
                    {
                        c.WriteUInt64(sf.Kva + (ulong)(8 * word), SfBufRig.Stamp(page));
                    }
                    else
                    {
                        Check(sf, page, word);
                    }
                }
                else if (choice == 11 && theirs.Count < MaxInFlight && held.Find(h => h.Shared) is { Sf.IsNone: false } share)
                {
                    // Take another reference to a shared mapping and hand it to the other CPU,
                    // which reads through it and frees it (sendfile's NIC pattern).
                    var again = sfbufs.Alloc(share.Page);
                    if (again.Kva != share.Sf.Kva)
                    {
                        badHandles[cpu]++;
                    }

                    theirs.Enqueue((again, share.Page));
                    allocations[cpu]++;
                    handedOver[cpu]++;
                }
                else
                {
                    int victim = random.Next(held.Count);
                    sfbufs.Free(held[victim].Sf);
                    held.RemoveAt(victim);
                }

                operations[cpu]++;
            }

            foreach (var (sf, _, _) in held)
            {
                sfbufs.Free(sf);
            }
        }, cpu, bound: true)).ToArray();
        SfBufRig.JoinAll(threads, TimeSpan.FromMinutes(2));

        // Handed-over references the other thread had no time to take are freed here.
        m.Run(0, () =>
        {
            foreach (var queue in inbox)
            {
                while (queue.TryDequeue(out var left))
                {
                    sfbufs.Free(left.Sf);
                }
            }
        });

        var d = m.Counters() - before;
        var stats = sfbufs.Stats();
        var entries = Enumerable.Range(0, Nsfbufs).Select(sfbufs.TestHookEntry).ToArray();
        var freeList = sfbufs.TestHookFreeList();
        TestContext.Out.WriteLine($"{operations.Sum():#,0} operations, {allocations.Sum():#,0} allocations ({stats.Hits:#,0} hits, {stats.Recycles:#,0} recycles), {handedOver.Sum():#,0} handed to the other CPU");
        TestContext.Out.WriteLine(d.ToString());

        Assert.That(operations.Sum(), Is.GreaterThanOrEqualTo(1_000_000));
        Assert.That(d[Counter.StaleAccesses], Is.EqualTo(0));
        Assert.That(badReads, Is.All.EqualTo(0), "every read through an sf_buf saw its page's stamp");
        Assert.That(badHandles, Is.All.EqualTo(0));
        Assert.That(handedOver.Sum(), Is.GreaterThan(0));

        // The cache is consistent and nothing is left referenced.
        Assert.That(stats.NsfbufsUsed, Is.EqualTo(0));
        Assert.That(stats.NsfbufsPeak, Is.LessThanOrEqualTo(Nsfbufs));
        Assert.That(stats.Hits + stats.Misses, Is.EqualTo(allocations.Sum()));
        Assert.That(stats.Failures, Is.EqualTo(0));
        Assert.That(stats.AllocWait, Is.EqualTo(0));
        Assert.That(entries.Select(e => e.RefCount), Is.All.EqualTo(0));
        Assert.That(freeList, Has.Count.EqualTo(Nsfbufs));
        Assert.That(freeList, Is.EquivalentTo(Enumerable.Range(0, Nsfbufs)));
        Assert.That(sfbufs.TestHookHashCount(), Is.EqualTo(entries.Count(e => e.HasPage)));
        for (int i = 0; i < Nsfbufs; i++)
        {
            if (entries[i].HasPage)
            {
                Assert.That(sfbufs.TestHookLookup(entries[i].Frame), Is.EqualTo(i), $"the hash finds sf_buf {i} for its page");
            }
        }

        // Every IPI was sent to a running CPU or deferred for an idle one, and every sent one was serviced.
        Assert.That(d[Counter.ShootdownRounds], Is.GreaterThan(0));
        Assert.That(d[Counter.IpisSent] + d[Counter.IdleTargetsDeferred], Is.EqualTo(d[Counter.IpiTargets]));
        Assert.That(d[Counter.IpisReceived], Is.EqualTo(d[Counter.IpisSent]));

        // Mask soundness: a CPU in an sf_buf's mask caches no other frame for its address.
        var unsound = new List<string>();
        for (int cpu = 0; cpu < 2; cpu++)
        {
            int self = cpu;
            m.Run(cpu, () =>
            {
                for (int i = 0; i < Nsfbufs; i++)
                {
                    ulong kva = m.Layout.SfBufWindow.PageAddress(i);
                    long cached = SfBufRig.CachedFrame(m.CurrentCpu, kva);
                    if (entries[i].CpuMask.Contains(self) && cached >= 0 && cached != entries[i].Frame)
                    {
                        unsound.Add($"cpu {self} caches frame 0x{cached:x} for sf_buf {i}, which maps 0x{entries[i].Frame:x}");
                    }
                }
            });
        }

        Assert.That(unsound, Is.Empty);
        foreach (var page in pages)
        {
            var words = MemoryMarshal.Cast<byte, ulong>(m.Physical.PhysicalBytes(page)).ToArray();
            Assert.That(words, Is.All.EqualTo(SfBufRig.Stamp(page)), $"{page}");
        }
    }
}
