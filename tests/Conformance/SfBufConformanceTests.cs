using System.Diagnostics;
using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;

namespace Native.Tests.Conformance;

using SfBuf = Native.SfBufNative.SfBuf;

/// <summary>
/// The sf_buf contract, written once and run against every strategy on 1 and 2 CPUs with the
/// stale-translation oracle on. Every test ends with no stale access on the machine. Addresses
/// are taken with <see cref="SfBufMapper.Kva"/> on the CPU that accesses them, as subsystems do.
/// <para>
/// Documented exceptions, from <see cref="SfBufStrategyInfo"/>: the direct map has no pool; the
/// Linux, DragonFly and NetBSD peers wait uninterruptibly (<c>TASK_UNINTERRUPTIBLE</c>,
/// <c>tsleep</c> without <c>PCATCH</c>, vmem <c>VM_SLEEP</c>), so a cancelled
/// <see cref="SfBufFlags.Catch"/> wait goes on until an sf_buf is freed; lwbuf objects freed on one
/// CPU stay in its magazines, so a waiter on another CPU with <c>kernel_map</c> exhausted may wait
/// for ever (DragonFly's objcache does not take from other CPUs' magazines).
/// </para>
/// </summary>
[TestFixtureSource(typeof(StrategyFixture), nameof(StrategyFixture.StrategiesAndCpus))]
[NonParallelizable]
public sealed class SfBufConformanceTests(string strategy, int cpus) : StrategyFixture(strategy, cpus)
{
    private const int PoolPages = 8;

    private Native.PageTable.Machine _machine = null!;
    private SfBufMapper _mapper = null!;

    private bool HasPool => Info.HasPool;

    private int OtherCpu => Cpus > 1 ? 1 : 0;

    [SetUp]
    public void BootMachine()
    {
        _machine = new Native.PageTable.Machine(new MachineOptions
        {
            Flavor = SfBufMapper.Describe(Strategy).FlavorOr(MachineFlavor.Amd64),
            Cpus = Cpus,
            PhysicalMemoryBytes = 32UL << 20,
            SfBufWindowPages = PoolPages,
            KernelMapPages = PoolPages,
            KernelMemoryPages = 64,
            Checked = true,
        });
        _mapper = SfBufMapper.Create(Strategy, _machine);
    }

    [TearDown]
    public void CheckNoStaleAccessAndShutDown()
    {
        try
        {
            Assert.That(_machine.Counters()[Counter.StaleAccesses], Is.Zero, "a stale translation was used");
        }
        finally
        {
            _mapper.Dispose();
            _machine.Dispose();
        }
    }

    [Test]
    public void DataWrittenThroughTheKvaIsThePagesData()
    {
        var page = AllocPage();
        var stamp = Stamp(0x5a);
        _machine.Run(0, () =>
        {
            var sf = _mapper.Alloc(page);
            Assert.That(sf.IsNone, Is.False);
            Assert.That(SfBufMapper.Page(sf), Is.EqualTo(page));
            _machine.CurrentCpu.Write(_mapper.Kva(sf), stamp);
            _mapper.Free(sf);
        });

        Assert.That(_machine.Physical.PhysicalBytes(page).ToArray(), Is.EqualTo(stamp), "the physical page holds what was written through the mapping");
    }

    [Test]
    public void ASecondAllocationAndTheOtherCpuSeeTheSameData()
    {
        var page = AllocPage();
        var stamp = Stamp(0x33);
        SfBuf held = default;
        _machine.Run(0, () =>
        {
            held = _mapper.Alloc(page);
            _machine.CurrentCpu.Write(_mapper.Kva(held), stamp);
            var second = _mapper.Alloc(page);
            var seen = new byte[Pte.PageSize];
            _machine.CurrentCpu.Read(_mapper.Kva(second), seen);
            Assert.That(seen, Is.EqualTo(stamp), "a second allocation of the page sees the first one's bytes");
            _mapper.Free(second);
        });

        // The first allocation is shared and still held: the other CPU may use its address.
        var remote = new byte[Pte.PageSize];
        _machine.Run(OtherCpu, () => _machine.CurrentCpu.Read(_mapper.Kva(held), remote));
        Assert.That(remote, Is.EqualTo(stamp), "another CPU sees the page through the shared mapping");

        // And a fresh allocation there sees the same bytes.
        _machine.Run(OtherCpu, () =>
        {
            var there = _mapper.Alloc(page);
            Assert.That(_machine.CurrentCpu.ReadUInt64(_mapper.Kva(there) + 8), Is.EqualTo(BitConverter.ToUInt64(stamp, 8)));
            _mapper.Free(there);
        });
        _machine.Run(0, () => _mapper.Free(held));
    }

    [Test]
    public void ManyPagesInTurnKeepTheirOwnBytes()
    {
        var pages = Enumerable.Range(0, PoolPages * 3).Select(_ => AllocPage()).ToArray();
        _machine.Run(0, () =>
        {
            foreach (var p in pages)
            {
                var sf = _mapper.Alloc(p);
                _machine.CurrentCpu.WriteUInt64(_mapper.Kva(sf), p.Frame * 7919UL);
                _mapper.Free(sf);
            }
        });

        _machine.Run(OtherCpu, () =>
        {
            foreach (var p in pages.Reverse())
            {
                var sf = _mapper.Alloc(p);
                Assert.That(_machine.CurrentCpu.ReadUInt64(_mapper.Kva(sf)), Is.EqualTo(p.Frame * 7919UL), $"bytes of {p}");
                _mapper.Free(sf);
            }
        });
    }

    [Test]
    public void CpuPrivateWorksOnAPinnedThread()
    {
        var page = AllocPage();
        ulong seen = 0;
        var td = _machine.StartThread("private", () =>
        {
            var self = KernelThread.Current;
            self.SchedPin();
            var sf = _mapper.Alloc(page, SfBufFlags.CpuPrivate);
            _machine.CurrentCpu.WriteUInt64(_mapper.Kva(sf), 0xfeedface);
            seen = _machine.CurrentCpu.ReadUInt64(_mapper.Kva(sf));
            _mapper.Free(sf);
            self.SchedUnpin();
        });
        td.Join();
        Assert.That(seen, Is.EqualTo(0xfeedfaceUL));
        Assert.That(BitConverter.ToUInt64(_machine.Physical.PhysicalBytes(page)), Is.EqualTo(0xfeedfaceUL));
    }

    [Test]
    public void CpuPrivateFromAnUnpinnedThreadIsRefused()
    {
        var page = AllocPage();
        var td = _machine.StartThread("unpinned", () => _mapper.Alloc(page, SfBufFlags.CpuPrivate));
        Assert.That(() => td.Join(), Throws.InvalidOperationException.With.Message.Contains("pinned"));
    }

    [Test]
    public void NoWaitWithThePoolExhaustedReturnsNoSfBufWithoutSleeping()
    {
        var pages = Enumerable.Range(0, PoolPages + 1).Select(_ => AllocPage()).ToArray();
        _machine.Run(0, () =>
        {
            var held = pages.Take(PoolPages).Select(p => _mapper.Alloc(p)).ToList();
            Assert.That(held.All(sf => !sf.IsNone), Is.True);
            var before = _machine.Counters();
            var extra = _mapper.Alloc(pages[PoolPages], SfBufFlags.NoWait);
            var d = _machine.Counters() - before;
            if (HasPool)
            {
                Assert.That(extra.IsNone, Is.True, "the pool is exhausted");
                Assert.That(_mapper.Stats().Failures, Is.EqualTo(1));
            }
            else
            {
                Assert.That(extra.IsNone, Is.False, "the direct map has no pool to exhaust");
                held.Add(extra);
            }

            Assert.That(d[Counter.Sleeps], Is.Zero, "NoWait never sleeps");
            held.ForEach(_mapper.Free);
        });
    }

    [Test]
    public void ACancelledCatchWaitReturnsNoSfBufUnlessTheStrategyWaitsUninterruptibly()
    {
        if (HasPool && !Info.InterruptibleWait)
        {
            CatchCannotInterruptAnUninterruptibleWait();
            return;
        }

        var pages = Enumerable.Range(0, PoolPages + 1).Select(_ => AllocPage()).ToArray();
        using var cancel = new CancellationTokenSource();
        _machine.Run(0, () =>
        {
            var held = pages.Take(PoolPages).Select(p => _mapper.Alloc(p)).ToList();
            cancel.CancelAfter(TimeSpan.FromMilliseconds(50));
            var extra = _mapper.Alloc(pages[PoolPages], SfBufFlags.Catch, cancel.Token);
            if (HasPool)
            {
                Assert.That(extra.IsNone, Is.True, "a cancelled wait gives no sf_buf");
                Assert.That(_mapper.Stats().AllocWait, Is.EqualTo(1), "the caller slept once before the cancellation");
            }
            else
            {
                Assert.That(extra.IsNone, Is.False, "the direct map never waits, so there is nothing to cancel");
                held.Add(extra);
            }

            held.ForEach(_mapper.Free);
        });
    }

    /// <summary>The documented behaviour of kmap, lwbuf and emap: the cancellation is not seen, the wait ends with an sf_buf.</summary>
    private void CatchCannotInterruptAnUninterruptibleWait()
    {
        var pages = Enumerable.Range(0, PoolPages + 1).Select(_ => AllocPage()).ToArray();
        using var cancel = new CancellationTokenSource();
        var held = new List<SfBuf>();
        _machine.Run(0, () => held.AddRange(pages.Take(PoolPages).Select(p => _mapper.Alloc(p))));
        Assert.That(held.All(sf => !sf.IsNone), Is.True);

        // The waiter runs on the same CPU as the frees below, so that an lwbuf freed there is in
        // the magazine it takes from.
        SfBuf got = default;
        ulong seen = 0;
        var waiter = _machine.StartThread("catch-waiter", () =>
        {
            got = _mapper.Alloc(pages[PoolPages], SfBufFlags.Catch, cancel.Token);
            _machine.CurrentCpu.WriteUInt64(_mapper.Kva(got), 0xc47c4);
            seen = _machine.CurrentCpu.ReadUInt64(_mapper.Kva(got));
            _mapper.Free(got);
        }, cpu: 0, bound: true);
        WaitUntil(() => _mapper.Stats().AllocWait > 0, "the waiter sleeps for an sf_buf");
        cancel.Cancel();
        Thread.Sleep(100);
        Assert.That(waiter.HasExited, Is.False, "a cancelled uninterruptible wait goes on");

        _machine.Run(0, () => held.ForEach(_mapper.Free));
        waiter.Join(TimeSpan.FromSeconds(30));
        Assert.That(got.IsNone, Is.False, "the waiter got its sf_buf once one was freed");
        Assert.That(seen, Is.EqualTo(0xc47c4UL));
    }

    [Test]
    public void EveryWaiterButTheCancelledOneGetsItsSfBuf()
    {
        if (!HasPool)
        {
            Assert.Ignore("the direct map never waits");
        }

        if (!Info.FreesReachWaitersOnAnyCpu && Cpus > 1)
        {
            Assert.Ignore("lwbufs freed on one CPU stay in its magazines: a waiter on another CPU may wait for ever (see the fixture's remarks)");
        }

        const int waiters = 3;
        var poolPages = Enumerable.Range(0, PoolPages).Select(_ => AllocPage()).ToArray();
        var waiterPages = Enumerable.Range(0, waiters).Select(_ => AllocPage()).ToArray();
        var release = new object();
        var released = false;
        using var cancel = new CancellationTokenSource();
        var got = new SfBuf[waiters];
        var sums = new ulong[waiters];

        var holder = _machine.StartThread("holder", () =>
        {
            var held = poolPages.Select(p => _mapper.Alloc(p)).ToList();
            while (!Volatile.Read(ref released))
            {
                _machine.Sleep(release, timeout: TimeSpan.FromMilliseconds(20));
            }

            // Free one at a time: each free must reach a waiter that still wants one.
            foreach (var sf in held)
            {
                _mapper.Free(sf);
                _machine.Sleep(release, timeout: TimeSpan.FromMilliseconds(2));
            }
        }, cpu: 0);
        WaitUntil(() => _mapper.Stats().NsfbufsUsed == PoolPages, "the holder exhausts the pool");

        var threads = Enumerable.Range(0, waiters).Select(w => _machine.StartThread($"waiter{w}", () =>
        {
            var flags = w == 1 ? SfBufFlags.Catch : SfBufFlags.Default;
            var sf = _mapper.Alloc(waiterPages[w], flags, w == 1 ? cancel.Token : CancellationToken.None);
            got[w] = sf;
            if (!sf.IsNone)
            {
                _machine.CurrentCpu.WriteUInt64(_mapper.Kva(sf), (ulong)w + 100);
                sums[w] = _machine.CurrentCpu.ReadUInt64(_mapper.Kva(sf));
                _mapper.Free(sf);
            }
        })).ToArray();

        WaitUntil(() => _machine.SleepingThreads >= waiters + 1, "every waiter sleeps for an sf_buf");
        cancel.Cancel();
        if (Info.InterruptibleWait)
        {
            WaitUntil(() => threads[1].HasExited, "the cancelled waiter returns");
        }

        Volatile.Write(ref released, true);
        _machine.Wakeup(release);

        holder.Join(TimeSpan.FromSeconds(30));
        foreach (var t in threads)
        {
            t.Join(TimeSpan.FromSeconds(30));
        }

        if (Info.InterruptibleWait)
        {
            Assert.That(got[1].IsNone, Is.True, "the cancelled waiter gets no sf_buf");
            Assert.That(new[] { got[0].IsNone, got[2].IsNone }, Is.All.False, "every other waiter gets one");
            Assert.That(new[] { sums[0], sums[2] }, Is.EqualTo(new[] { 100UL, 102UL }));
        }
        else
        {
            Assert.That(got.Select(g => g.IsNone), Is.All.False, "an uninterruptible wait ignores the cancellation: every waiter gets one");
            Assert.That(sums, Is.EqualTo(new[] { 100UL, 101UL, 102UL }));
        }

        Assert.That(_mapper.Stats().NsfbufsUsed, Is.Zero, "no reference left behind");
    }

    [Test]
    public void FreeingTwiceIsRefusedAndChangesNothing()
    {
        var page = AllocPage();
        _machine.Run(0, () =>
        {
            var sf = _mapper.Alloc(page);
            _mapper.Free(sf);
            Assert.That(() => _mapper.Free(sf), Throws.InstanceOf<InvalidOperationException>().Or.InstanceOf<ArgumentException>());
            var again = _mapper.Alloc(page);
            Assert.That(again.IsNone, Is.False, "the mapper still works after refusing the double free");
            _mapper.Free(again);
        });
        Assert.That(_mapper.Stats().NsfbufsUsed, Is.Zero);
    }

    [Test]
    public void AllocatingAnUnwiredPageIsRefused()
    {
        var page = _machine.Physical.Alloc(AllocFlags.Zero);
        var td = _machine.StartThread("unwired", () => _mapper.Alloc(page), cpu: 0, bound: true);
        Assert.That(() => td.Join(), Throws.InvalidOperationException.With.Message.Contains("wired"));
    }

    [Test]
    public void AHandleFromAnotherMapperIsRefused()
    {
        using var other = SfBufMapper.Create(Strategy, _machine);
        var page = AllocPage();
        _machine.Run(0, () =>
        {
            var sf = other.Alloc(page);
            Assert.That(() => _mapper.Free(sf), Throws.ArgumentException);
            other.Free(sf);
        });
    }

    private VmPage AllocPage() => _machine.Physical.Alloc(AllocFlags.Zero | AllocFlags.Wired);

    private static byte[] Stamp(byte seed)
    {
        var bytes = new byte[Pte.PageSize];
        for (int i = 0; i < bytes.Length; i++)
        {
            bytes[i] = (byte)(seed + (i * 31));
        }

        return bytes;
    }

    private static void WaitUntil(Func<bool> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(30))
            {
                Assert.Fail($"timed out waiting until {what}");
            }

            Thread.Sleep(1);
        }
    }
}
