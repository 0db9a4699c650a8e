using System.Diagnostics;
using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;

namespace Native.Tests.Conformance;

using SfBuf = Native.SfBufNative.SfBuf;

/// <summary>
/// Threads that need two mappings at once, run against every strategy with the pool exactly
/// exhausted: two <see cref="SfBufMapper.Alloc"/> calls per thread either complete or report the
/// deadlock (<see cref="DeadlockException"/>) within seconds, never hang; the same work through
/// <see cref="SfBufMapper.AllocMany"/> always completes; and AllocMany keeps its contract.
/// <para>
/// Pools of 2: a 2-page sf_buf window (sfbuf-i386, freebsd-quick's sf_bufs, epoch-cache, the kmap
/// pool, the emap window) and a 2-page <c>kernel_map</c> (original's per-use KVA, lwbuf's objects).
/// sfbuf-amd64 has no pool. Private users of kmap_atomic and kmap_local take per-CPU slots, and
/// freebsd-quick's take the CPU's quick page first, so two private mappings per thread fit there.
/// lwbuf objects freed on one CPU stay in its magazines (<see cref="SfBufStrategyInfo.FreesReachWaitersOnAnyCpu"/>):
/// a waiter on the other CPU is never freed, so there both waiters are reported, one after the other.
/// </para>
/// </summary>
[TestFixtureSource(nameof(Strategies))]
[NonParallelizable]
public sealed class MultiMappingTests(string strategy)
{
    private const int Pool = 2;
    private static readonly TimeSpan s_patience = TimeSpan.FromSeconds(20);

    /// <summary>Every strategy, named like <c>(linux-kmap)</c>.</summary>
    public static IEnumerable<TestFixtureData> Strategies() =>
        SfBufMapper.StrategyNames.Select(s => new TestFixtureData(s).SetArgDisplayNames(s));

    private SfBufStrategyInfo Info => SfBufMapper.Describe(strategy);

    /// <summary>
    /// Each of two threads, on two CPUs, takes one mapping from a pool of two and then asks for a
    /// second. Where both come from the pool, the second waits for ever; the waiter that went to
    /// sleep last gets a <see cref="DeadlockException"/>, frees its first mapping, and the other one
    /// completes (lwbuf: its free stays on its CPU, so the other is reported too).
    /// </summary>
    [Test]
    public void TwoAllocCallsPerThreadAtExhaustionCompleteOrReportTheDeadlock([Values] bool cpuPrivate)
    {
        var flags = cpuPrivate ? SfBufFlags.CpuPrivate : SfBufFlags.Default;
        using var m = Boot(cpus: 2, pool: Pool);
        using var sfbufs = SfBufMapper.Create(strategy, m);
        var first = NewPages(m, 2);
        var second = NewPages(m, 2);
        var reports = new DeadlockException?[2];
        var completed = new bool[2];
        int holding = 0;
        var clock = Stopwatch.StartNew();
        var threads = Enumerable.Range(0, 2).Select(i => m.StartThread($"two-allocs{i}", () =>
        {
            var held = sfbufs.Alloc(first[i], flags);
            try
            {
                Interlocked.Increment(ref holding);
                SpinUntil(m, () => Volatile.Read(ref holding) == 2);
                SfBuf more;
                try
                {
                    more = sfbufs.Alloc(second[i], flags);
                }
                catch (DeadlockException ex)
                {
                    reports[i] = ex;
                    return;
                }

                Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(more)), Is.EqualTo(Stamp(second[i])));
                Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(held)), Is.EqualTo(Stamp(first[i])));
                sfbufs.Free(more);
                completed[i] = true;
            }
            finally
            {
                sfbufs.Free(held);
            }
        }, cpu: i, bound: true)).ToArray();

        foreach (var td in threads)
        {
            td.Join(s_patience);
        }

        int expected = ExpectedReports(cpuPrivate);
        TestContext.Out.WriteLine($"{strategy} {flags}: {reports.Count(r => r != null)} reported, {completed.Count(c => c)} completed, in {clock.Elapsed.TotalSeconds:0.00} s");
        foreach (var report in reports.Where(r => r != null))
        {
            TestContext.Out.WriteLine(report!.Message);
        }

        Assert.That(reports.Count(r => r != null), Is.EqualTo(expected), "deadlocks reported");
        Assert.That(completed.Count(c => c), Is.EqualTo(2 - expected), "threads that got their second mapping");
        if (expected > 0)
        {
            Assert.That(reports.OfType<DeadlockException>().Any(r => r.Waits.Count == 2 && threads.All(t => r.Message.Contains(t.Name, StringComparison.Ordinal))), Is.True,
                "the first report names both waiting threads");
        }

        AssertNothingHeld(m, sfbufs);
    }

    /// <summary>
    /// The same need, two mappings at a time, through AllocMany from a pool of two: two threads bound
    /// to the two CPUs, then four unbound threads on two CPUs (lwbuf: on one CPU, whose magazines
    /// get back what its threads free; bound, its <c>kernel_map</c> has two objects per CPU), many
    /// rounds: every call succeeds and every thread finishes.
    /// </summary>
    [Test]
    public void AllocManyPairsFromAnExhaustedPoolAlwaysComplete([Values] bool unbound)
    {
        bool lwbuf = !Info.FreesReachWaitersOnAnyCpu;
        int cpus = unbound && lwbuf ? 1 : 2;
        int threadCount = unbound ? 4 : 2;
        for (int round = 0; round < 20; round++)
        {
            using var m = Boot(cpus, pool: Pool, kernelMapPages: lwbuf && !unbound ? Pool * cpus : Pool);
            using var sfbufs = SfBufMapper.Create(strategy, m);
            var threads = Enumerable.Range(0, threadCount).Select(t =>
            {
                var mine = NewPages(m, 3); // pages of its own: the pairs miss and exhaust the pool
                return m.StartThread($"pairs{t}", () =>
                {
                    var both = new SfBuf[2];
                    for (int i = 0; i < 40; i++)
                    {
                        VmPage[] pair = [mine[i % 3], mine[(i + 1) % 3]];
                        Assert.That(sfbufs.AllocMany(pair, both), Is.True);
                        Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(both[0])), Is.EqualTo(Stamp(pair[0])));
                        KernelThread.Current.Yield(); // holding both: let the others run into the exhausted pool
                        Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(both[1])), Is.EqualTo(Stamp(pair[1])));
                        sfbufs.Free(both[1]);
                        sfbufs.Free(both[0]);
                    }
                }, cpu: unbound ? -1 : t, bound: !unbound);
            }).ToArray();

            foreach (var td in threads)
            {
                td.Join(s_patience);
            }

            AssertNothingHeld(m, sfbufs);
        }
    }

    [Test]
    public void NoWaitWithTooFewSlotsReturnsFalseHoldingNothing()
    {
        using var m = Boot(cpus: 2, pool: Pool);
        using var sfbufs = SfBufMapper.Create(strategy, m);
        var pages = NewPages(m, 3);
        m.Run(0, () =>
        {
            var held = sfbufs.Alloc(pages[0]);
            var two = new SfBuf[2];
            bool got = sfbufs.AllocMany(pages.AsSpan(1, 2), two, SfBufFlags.NoWait);
            if (Info.HasPool)
            {
                Assert.That(got, Is.False, "one slot is free, two are needed");
                Assert.That(two, Is.All.EqualTo(SfBuf.None));
                Assert.That(sfbufs.Stats().NsfbufsUsed, Is.EqualTo(1), "only the mapping held before");
            }
            else
            {
                Assert.That(got, Is.True, "the direct map has no pool to exhaust");
                sfbufs.Free(two[1]);
                sfbufs.Free(two[0]);
            }

            sfbufs.Free(held);
        });
        AssertNothingHeld(m, sfbufs);
    }

    /// <summary>
    /// A Catch caller that got one page of two and waits for the second is cancelled: it returns
    /// false and gives the first back. The Linux, DragonFly and NetBSD peers wait uninterruptibly,
    /// so there the cancellation cannot end that wait (their gate wait is the next test).
    /// </summary>
    [Test]
    public void ACancelledCatchWaitForAMappingReturnsFalseHoldingNothing()
    {
        if (Info.HasPool && !Info.InterruptibleWait)
        {
            Assert.Ignore($"{strategy} waits for a mapping uninterruptibly: Catch cannot end that wait");
        }

        using var m = Boot(cpus: 2, pool: Pool);
        using var sfbufs = SfBufMapper.Create(strategy, m);
        var pages = NewPages(m, 3);
        SfBuf held = default;
        m.Run(0, () => held = sfbufs.Alloc(pages[0]));
        using var cancel = new CancellationTokenSource();
        var two = new SfBuf[2];
        bool got = true;
        var waiter = m.StartThread("catch-many", () => got = sfbufs.AllocMany(pages.AsSpan(1, 2), two, SfBufFlags.Catch, cancel.Token), cpu: 1, bound: true);
        if (Info.HasPool)
        {
            WaitUntil(() => m.SleepingThreads == 1, "the caller waits for its second mapping");
            cancel.Cancel();
            waiter.Join(s_patience);
            Assert.That(got, Is.False, "a cancelled wait gives nothing");
            Assert.That(two, Is.All.EqualTo(SfBuf.None));
            Assert.That(sfbufs.Stats().NsfbufsUsed, Is.EqualTo(1), "the first page was given back; only the mapping held before remains");
        }
        else
        {
            waiter.Join(s_patience);
            Assert.That(got, Is.True, "the direct map never waits");
            m.Run(1, () => two.ToList().ForEach(sfbufs.Free));
        }

        m.Run(0, () => sfbufs.Free(held));
        AssertNothingHeld(m, sfbufs);
    }

    /// <summary>
    /// While one caller waits for the second page of its pair (holding the first, in the fallback;
    /// holding nothing, in epoch-cache's native AllocMany), a second Catch caller waits behind it
    /// and is cancelled: it returns false holding nothing. Freeing the mapping held since the start
    /// then lets the first caller complete.
    /// </summary>
    [Test]
    public void ACancelledCatchWaitBehindAnotherCallerReturnsFalseHoldingNothing()
    {
        if (!Info.HasPool)
        {
            Assert.Ignore("the direct map never waits");
        }

        using var m = Boot(cpus: 2, pool: Pool);
        using var sfbufs = SfBufMapper.Create(strategy, m);
        var pages = NewPages(m, 5);
        SfBuf held = default;
        m.Run(0, () => held = sfbufs.Alloc(pages[0]));

        // The first caller runs on CPU 0, where the held mapping is freed (lwbuf's magazines).
        var first = new SfBuf[2];
        var firstCaller = m.StartThread("many-first", () =>
        {
            Assert.That(sfbufs.AllocMany(pages.AsSpan(1, 2), first), Is.True);
            sfbufs.Free(first[1]);
            sfbufs.Free(first[0]);
        }, cpu: 0, bound: true);
        WaitUntil(() => m.SleepingThreads == 1, "the first caller waits");

        using var cancel = new CancellationTokenSource();
        var second = new SfBuf[2];
        bool got = true;
        var secondCaller = m.StartThread("many-second", () => got = sfbufs.AllocMany(pages.AsSpan(3, 2), second, SfBufFlags.Catch, cancel.Token), cpu: 1, bound: true);
        WaitUntil(() => m.SleepingThreads == 2, "the second caller waits behind the first");
        cancel.Cancel();
        secondCaller.Join(s_patience);
        Assert.That(got, Is.False, "a cancelled wait gives nothing");
        Assert.That(second, Is.All.EqualTo(SfBuf.None));
        // A strategy with its own AllocMany takes a request all or nothing; the fallback's gate
        // holder takes the pages one by one.
        bool native = sfbufs.GetType().GetMethod("AllocManyCore", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)!.DeclaringType != typeof(SfBufMapper);
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.EqualTo(native ? 1 : 2), native
            ? "all or nothing: the first caller waits holding nothing"
            : "the gate's holder waits holding the first page of its pair");

        m.Run(0, () => sfbufs.Free(held));
        firstCaller.Join(s_patience);
        AssertNothingHeld(m, sfbufs);
    }

    [Test]
    public void ARequestAboveTheCapacityThrows([Values] bool cpuPrivate)
    {
        var flags = cpuPrivate ? SfBufFlags.CpuPrivate : SfBufFlags.Default;
        using var m = Boot(cpus: 1, pool: Pool);
        using var sfbufs = SfBufMapper.Create(strategy, m);
        int capacity = sfbufs.Capacity(flags);
        TestContext.Out.WriteLine($"{strategy} {flags}: capacity {capacity}");
        if (!Info.HasPool)
        {
            Assert.That(capacity, Is.EqualTo(int.MaxValue), "the direct map maps every page at once");
            return;
        }

        Assert.That(capacity, Is.EqualTo(ExpectedCapacity(cpuPrivate)));
        var pages = NewPages(m, capacity + 1);
        m.Run(0, () =>
        {
            var result = new SfBuf[capacity + 1];
            Assert.That(() => sfbufs.AllocMany(pages, result, flags), Throws.TypeOf<ArgumentOutOfRangeException>());
            Assert.That(result, Is.All.EqualTo(SfBuf.None));
        });
        AssertNothingHeld(m, sfbufs);
    }

    [Test]
    public void AResultTooShortThrows()
    {
        using var m = Boot(cpus: 1, pool: Pool);
        using var sfbufs = SfBufMapper.Create(strategy, m);
        var pages = NewPages(m, 2);
        m.Run(0, () => Assert.That(() => sfbufs.AllocMany(pages, new SfBuf[1]), Throws.TypeOf<ArgumentException>()));
        AssertNothingHeld(m, sfbufs);
    }

    /// <summary>Private mappings through AllocMany on a pinned thread: per-CPU slots (no gate), the quick page and an sf_buf, or the pool.</summary>
    [Test]
    public void AllocManyOfPrivateMappingsOnAPinnedThreadWorks()
    {
        using var m = Boot(cpus: 2, pool: Pool);
        using var sfbufs = SfBufMapper.Create(strategy, m);
        var pages = NewPages(m, 2);
        m.Run(1, () =>
        {
            var both = new SfBuf[2];
            Assert.That(sfbufs.AllocMany(pages, both, SfBufFlags.CpuPrivate), Is.True);
            Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(both[0])), Is.EqualTo(Stamp(pages[0])));
            Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(both[1])), Is.EqualTo(Stamp(pages[1])));
            sfbufs.Free(both[1]);
            sfbufs.Free(both[0]);
        });
        AssertNothingHeld(m, sfbufs);
    }

    /// <summary>
    /// The deadlocks reported when two threads each hold one mapping and want a second: none
    /// without a pool, or for private users whose mappings come from per-CPU slots (the quick
    /// page's second mapping nests into the pool); both waiters where a free does not reach a
    /// waiter on another CPU (<see cref="SfBufStrategyInfo.FreesReachWaitersOnAnyCpu"/>); else one.
    /// </summary>
    private int ExpectedReports(bool cpuPrivate) =>
        !Info.HasPool || (cpuPrivate && Info.PerCpuPrivateSlots > 0) ? 0
        : !Info.FreesReachWaitersOnAnyCpu ? 2
        : 1;

    /// <summary>
    /// One caller's capacity: the pool, or for private users with per-CPU slots, the slots (where
    /// they never wait) or the slots and then the pool they nest into (the quick page).
    /// </summary>
    private int ExpectedCapacity(bool cpuPrivate) =>
        !cpuPrivate || Info.PerCpuPrivateSlots == 0 ? Pool
        : Info.PrivateNeverWaits ? Info.PerCpuPrivateSlots
        : Info.PerCpuPrivateSlots + Pool;

    private Native.PageTable.Machine Boot(int cpus, int pool, int? kernelMapPages = null) => new(new MachineOptions
    {
        Flavor = Info.FlavorOr(MachineFlavor.Amd64),
        Cpus = cpus,
        PhysicalMemoryBytes = 32UL << 20,
        SfBufWindowPages = pool,
        KernelMapPages = kernelMapPages ?? pool,
        KernelMemoryPages = 64,
        Checked = true,
        ShootdownWatchdog = TimeSpan.FromSeconds(20),
    });

    private static void AssertNothingHeld(Native.PageTable.Machine m, SfBufMapper sfbufs)
    {
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.Zero, "every mapping was freed");
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
        Assert.That(m.Faults, Is.Empty, "no kernel thread ended with an exception");
    }

    private static ulong Stamp(VmPage page) => 0x3a3a_0000_0000_0000UL | page.Frame;

    private static VmPage[] NewPages(Native.PageTable.Machine m, int count) => Enumerable.Range(0, count).Select(_ =>
    {
        var page = m.Physical.Alloc(AllocFlags.Zero | AllocFlags.Wired);
        System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(m.Physical.PhysicalBytes(page)).Fill(Stamp(page));
        return page;
    }).ToArray();

    private static void SpinUntil(Native.PageTable.Machine m, Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + s_patience;
        while (!condition())
        {
            m.CurrentCpu.Poll();
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException("the other thread never took its first mapping");
            }
        }
    }

    private static void WaitUntil(Func<bool> condition, string what)
    {
        if (!SpinWait.SpinUntil(condition, s_patience))
        {
            Assert.Fail($"timed out waiting until {what}");
        }
    }
}
