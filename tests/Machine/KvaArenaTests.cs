using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>The kernel_map arena: no-wait failure, waiting for space, cancelled waits, double frees.</summary>
[TestFixture]
[NonParallelizable]
public sealed class KvaArenaTests
{
    [Test]
    public void ANoWaitAllocationFailsWhenTheArenaIsFull()
    {
        using var m = new SimMachine(Sim.Small());
        var arena = m.KernelMap;
        ulong all = 0, more = 1;

        m.Run(0, () =>
        {
            all = arena.Alloc(arena.Region.Pages, wait: false);
            more = arena.Alloc(1, wait: false);
        });

        Assert.That(arena.Region.Pages, Is.EqualTo(64));
        Assert.That(all, Is.EqualTo(arena.Region.Start));
        Assert.That(more, Is.Zero);
        Assert.That(arena.FreePages, Is.Zero);
        Assert.That(arena.Failures, Is.EqualTo(1));
        Assert.That(arena.Waits, Is.Zero);
    }

    [Test]
    public void AllocationsAreDisjointPageAlignedAndInsideTheRegion()
    {
        using var m = new SimMachine(Sim.Small());
        var arena = m.KernelMap;
        var got = new List<ulong>();

        m.Run(0, () =>
        {
            for (int i = 0; i < 16; i++)
            {
                got.Add(arena.Alloc(4, wait: false));
            }
        });

        Assert.That(got, Has.None.EqualTo(0UL));
        Assert.That(got, Is.Unique);
        Assert.That(got, Has.All.Matches<ulong>(va => (va & Pte.PageMask) == 0 && va >= arena.Region.Start && va + (4 * Pte.PageSize) <= arena.Region.End));
        var sorted = got.Order().ToList();
        Assert.That(sorted.Zip(sorted.Skip(1), (a, b) => b - a), Has.All.GreaterThanOrEqualTo((ulong)(4 * Pte.PageSize)));
        Assert.That(arena.FreePages, Is.Zero);
    }

    [Test]
    public void AWaitingAllocationSleepsAndProceedsOnceSpaceIsFreed()
    {
        using var m = new SimMachine(Sim.Small());
        var arena = m.KernelMap;
        ulong all = 0, waited = 0;
        m.Run(0, () => all = arena.Alloc(arena.Region.Pages, wait: true));

        var waiter = m.StartThread("waiter", () => waited = arena.Alloc(2, wait: true), cpu: 1, bound: true);
        Sim.WaitUntil(() => arena.Waits == 1 && waiter.Cpu == null, "the waiter sleeps");
        bool stillWaiting = !waiter.HasExited;
        m.Run(0, () => arena.Free(all + (8UL << Pte.PageShift), 2));
        Sim.Join(waiter);

        Assert.That(stillWaiting, Is.True);
        Assert.That(waited, Is.EqualTo(all + (8UL << Pte.PageShift)), "the only free run");
        Assert.That(arena.FreePages, Is.Zero);
        Assert.That(arena.Waits, Is.EqualTo(1));
        Assert.That(m.Counters().OnCpu(1, Counter.Sleeps), Is.EqualTo(1));
    }

    [Test]
    public void AWaiterForMoreThanWasFreedKeepsWaiting()
    {
        using var m = new SimMachine(Sim.Small());
        var arena = m.KernelMap;
        ulong all = 0, waited = 0;
        m.Run(0, () => all = arena.Alloc(arena.Region.Pages, wait: false));

        var waiter = m.StartThread("waiter", () => waited = arena.Alloc(4, wait: true), cpu: 1, bound: true);
        Sim.WaitUntil(() => arena.Waits == 1 && waiter.Cpu == null, "the waiter sleeps");
        m.Run(0, () => arena.Free(all, 2)); // too small: the waiter wakes, finds no room, sleeps again
        Sim.WaitUntil(() => arena.Waits == 2 && waiter.Cpu == null, "the waiter sleeps again");
        bool waitingAfterSmallFree = !waiter.HasExited;
        m.Run(0, () => arena.Free(all + (2UL << Pte.PageShift), 2));
        Sim.Join(waiter);

        Assert.That(waitingAfterSmallFree, Is.True);
        Assert.That(waited, Is.EqualTo(all));
        Assert.That(arena.Waits, Is.EqualTo(2));
    }

    [Test]
    public void ACancelledWaitReturnsZero()
    {
        using var m = new SimMachine(Sim.Small());
        var arena = m.KernelMap;
        using var cancel = new CancellationTokenSource();
        ulong waited = 1;
        m.Run(0, () => arena.Alloc(arena.Region.Pages, wait: false));

        var waiter = m.StartThread("waiter", () => waited = arena.Alloc(1, wait: true, cancel.Token), cpu: 1, bound: true);
        Sim.WaitUntil(() => arena.Waits == 1 && waiter.Cpu == null, "the waiter sleeps");
        cancel.Cancel();
        Sim.Join(waiter);

        Assert.That(waited, Is.Zero);
        Assert.That(arena.FreePages, Is.Zero);

        // The arena's lock was released on the way out: another allocation can still run.
        ulong after = 1;
        m.Run(0, () => after = arena.Alloc(1, wait: false));
        Assert.That(after, Is.Zero);
        Assert.That(arena.Failures, Is.EqualTo(1), "the cancelled wait is not a no-wait failure");
    }

    [Test]
    public void AnAlreadyCancelledWaitOnAFullArenaReturnsZeroAtOnce()
    {
        using var m = new SimMachine(Sim.Small());
        var arena = m.KernelMap;
        ulong waited = 1;

        m.Run(0, () =>
        {
            arena.Alloc(arena.Region.Pages, wait: false);
            waited = arena.Alloc(1, wait: true, new CancellationToken(canceled: true));
        });

        Assert.That(waited, Is.Zero);
    }

    [Test]
    public void FreeingTwiceThrows()
    {
        using var m = new SimMachine(Sim.Small());
        var arena = m.KernelMap;

        Assert.That(
            () => m.Run(0, () =>
            {
                ulong va = arena.Alloc(3, wait: false);
                arena.Free(va, 3);
                arena.Free(va, 3);
            }),
            Throws.InvalidOperationException.With.Message.Contains("double free"));
        Assert.That(arena.FreePages, Is.EqualTo(arena.Region.Pages));
    }

    [Test]
    public void FreeingARangeOutsideTheRegionThrowsAndChangesNothing()
    {
        using var m = new SimMachine(Sim.Small());
        var arena = m.KernelMap;

        Assert.That(
            () => m.Run(0, () => arena.Free(arena.Region.End, 1)),
            Throws.ArgumentException);
        Assert.That(
            () => m.Run(0, () => arena.Free(arena.Region.PageAddress(63), 2)),
            Throws.ArgumentException);
        Assert.That(
            () => m.Run(0, () => arena.Free(arena.Region.Start + 1, 1)),
            Throws.ArgumentException);
        Assert.That(
            () => m.Run(0, () => arena.Alloc(arena.Region.Pages + 1, wait: false)),
            Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(arena.FreePages, Is.EqualTo(arena.Region.Pages));
    }

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    public void RandomAllocationsAndFreesNeverOverlapAndFailOnlyWhenNoFreeRunIsLongEnough(int seed)
    {
        using var m = new SimMachine(Sim.Small());
        var arena = m.KernelMap;
        int n = arena.Region.Pages;
        var problems = new List<string>();
        int allocations = 0, failures = 0;

        m.Run(0, () =>
        {
            var random = new Random(seed);
            var used = new bool[n];
            var live = new List<(ulong Va, int Pages)>();
            for (int step = 0; step < 3000; step++)
            {
                if (live.Count > 0 && random.Next(3) == 0)
                {
                    int victim = random.Next(live.Count);
                    var (va, pages) = live[victim];
                    live.RemoveAt(victim);
                    arena.Free(va, pages);
                    int first = (int)((va - arena.Region.Start) >> Pte.PageShift);
                    Array.Fill(used, false, first, pages);
                    continue;
                }

                int want = 1 + random.Next(random.Next(2) == 0 ? 4 : 20);
                int longestFree = 0, run = 0;
                foreach (bool u in used)
                {
                    run = u ? 0 : run + 1;
                    longestFree = Math.Max(longestFree, run);
                }

                ulong got = arena.Alloc(want, wait: false);
                if (got == 0)
                {
                    failures++;
                    if (longestFree >= want)
                    {
                        problems.Add($"step {step}: {want} pages refused with a free run of {longestFree}");
                    }

                    continue;
                }

                allocations++;
                int at = (int)((got - arena.Region.Start) >> Pte.PageShift);
                if (got < arena.Region.Start || at + want > n || (got & Pte.PageMask) != 0)
                {
                    problems.Add($"step {step}: 0x{got:x} (+{want}) is outside the region");
                    continue;
                }

                for (int i = at; i < at + want; i++)
                {
                    if (used[i])
                    {
                        problems.Add($"step {step}: page {i} handed out twice");
                    }

                    used[i] = true;
                }

                live.Add((got, want));
                if (arena.FreePages != used.Count(u => !u))
                {
                    problems.Add($"step {step}: FreePages {arena.FreePages} but {used.Count(u => !u)} pages are free");
                }
            }
        });

        Assert.That(problems, Is.Empty);
        Assert.That(allocations, Is.GreaterThan(500));
        Assert.That(failures, Is.GreaterThan(0), "the arena was driven full");
    }

    [Test]
    public void KernelMemoryMapsZeroedPagesAndFreeingUnmapsAndReturnsThem()
    {
        using var m = new SimMachine(Sim.Small());
        int freeFrames = m.Physical.FreePages;
        int freeKva = m.KernelMemory.FreePages;
        ulong va = 0, word = 1;
        int framesWhileMapped = 0;

        m.Run(0, () =>
        {
            va = m.KernelMemory.Alloc(3 * Pte.PageSize);
            word = m.CurrentCpu.ReadUInt64(va + (2 * Pte.PageSize));
            framesWhileMapped = m.Physical.FreePages;
            m.KernelMemory.Free(va, 3 * Pte.PageSize);
        });

        Assert.That(va, Is.EqualTo(m.Layout.KernelMemory.Start));
        Assert.That(word, Is.Zero);
        Assert.That(framesWhileMapped, Is.EqualTo(freeFrames - 3));
        Assert.That(m.Physical.FreePages, Is.EqualTo(freeFrames));
        Assert.That(m.KernelMemory.FreePages, Is.EqualTo(freeKva));
        Assert.That(m.KernelPmap.ReadPte(va), Is.Zero);
        Assert.That(() => m.Run(0, () => m.KernelMemory.Free(va, Pte.PageSize)), Throws.InvalidOperationException);
    }
}
