using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Kernel;
using NUnit.Framework;
using SfBufHandle = Native.SfBufNative.SfBuf;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>
/// Faults injected where the machine cannot prevent them: native allocation refused at every
/// allocation point of boot, mapper construction and kernel set-up (a clear error, nothing
/// leaked); cancellation at every interruptible wait (the documented failure value, nothing
/// lost); a kernel thread that dies holding sf_bufs and locks (reported; Dispose reclaims all).
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class FaultInjectionTests
{
    [TearDown]
    public void LiftTheLimit() => NativeLedger.TestHookLimitAllocations(null);

    [TestCase(MachineFlavor.Amd64, 1)]
    [TestCase(MachineFlavor.I386, 3)]
    public void ARefusedAllocationAtEveryPointOfBootFailsClearlyAndLeaksNothing(MachineFlavor flavor, int cpus)
    {
        long before = NativeLedger.ProcessOutstandingBytes;
        int points = 0;
        while (true)
        {
            NativeLedger.TestHookLimitAllocations(points);
            SimMachine m;
            try
            {
                m = new SimMachine(Sim.Small(cpus) with { Flavor = flavor });
            }
            catch (NativeAllocationException e)
            {
                NativeLedger.TestHookLimitAllocations(null);
                Assert.That(e.Message, Does.Contain("refused"));
                Assert.That(NativeLedger.ProcessOutstandingBytes, Is.EqualTo(before), $"allocation point {points} of boot leaked");
                points++;
                continue;
            }

            NativeLedger.TestHookLimitAllocations(null);
            m.Dispose();
            break;
        }

        Assert.That(points, Is.GreaterThanOrEqualTo(5 + (2 * cpus)), "frames, descriptors, page table, counters, mailboxes, and a TLB per CPU");
        Assert.That(NativeLedger.ProcessOutstandingBytes, Is.EqualTo(before));
    }

    [TestCaseSource(typeof(AllStrategies), nameof(AllStrategies.Names))]
    public void ARefusedAllocationAtEveryPointOfMapperAndKernelSetUpFailsClearlyAndLeaksNothing(string strategy)
    {
        using var m = new SimMachine(Sim.Small() with { Flavor = SfBufMapper.Describe(strategy).Flavor });
        long machineBytes = m.NativeBytes;
        int liveMappers = SfBufMetrics.LiveCount;
        int failures = 0;
        long setUpPoints;
        bool builtIn = true;
        for (int points = 0; ; points++)
        {
            NativeLedger.TestHookLimitAllocations(points);
            SimKernel kernel;
            long allocationsBefore = m.Ledger.Allocations;
            try
            {
                kernel = new SimKernel(m, strategy);
                setUpPoints = m.Ledger.Allocations - allocationsBefore;
            }
            catch (NativeAllocationException)
            {
                NativeLedger.TestHookLimitAllocations(null);
                Assert.That(m.NativeBytes, Is.EqualTo(machineBytes), $"allocation point {points} of {strategy}'s set-up leaked native memory");
                Assert.That(SfBufMetrics.LiveCount, Is.EqualTo(liveMappers), $"allocation point {points} of {strategy}'s set-up left its instruments published");
                failures++;
                continue;
            }

            NativeLedger.TestHookLimitAllocations(null);
            builtIn = kernel.SfBufs.GetType().Assembly == typeof(SfBufMapper).Assembly;
            kernel.Dispose();
            break;
        }

        // (A mapper's blocks belong to the machine's ledger: they go back when the machine does.)
        machineBytes = m.NativeBytes;

        // An address space (its page directory) is set up the same way.
        NativeLedger.TestHookLimitAllocations(0);
        Assert.That(m.CreateVmSpace, Throws.TypeOf<NativeAllocationException>());
        NativeLedger.TestHookLimitAllocations(null);
        Assert.That(m.NativeBytes, Is.EqualTo(machineBytes));
        // A strategy from another assembly cannot use the machine's ledger (internal): its state is managed.
        Assert.That(setUpPoints, builtIn ? Is.GreaterThan(0) : Is.GreaterThanOrEqualTo(0));
        Assert.That(failures, Is.EqualTo(setUpPoints), "every allocation point of the set-up that succeeded was refused once");
    }

    [TestCaseSource(typeof(AllStrategies), nameof(AllStrategies.Names))]
    public void AKernelThreadThatDiesHoldingSfBufsAndALockIsReportedAndDisposeReclaimsEverything(string strategy)
    {
        long before = NativeLedger.ProcessOutstandingBytes;
        var m = new SimMachine(Sim.Small() with { Flavor = SfBufMapper.Describe(strategy).Flavor });
        var mapper = SfBufMapper.Create(strategy, m);
        var subsystem = new KMutex("subsystem");
        var pages = Enumerable.Range(0, 3).Select(i => Sim.NewPage(m, (ulong)i)).ToArray();
        var dying = m.StartThread("dies-holding", () =>
        {
            subsystem.Lock();
            KernelThread.Current.SchedPin();
            foreach (var page in pages)
            {
                mapper.Alloc(page, SfBufFlags.CpuPrivate);
            }

            throw new InvalidTimeZoneException("a kernel bug with three sf_bufs and a lock held");
        }, cpu: 0);
        Assert.That(() => dying.Join(Sim.Patience), Throws.TypeOf<InvalidTimeZoneException>());
        var blocked = m.StartThread("wants-the-lock", subsystem.Lock, cpu: 1);
        Sim.WaitUntil(() => blocked.Cpu == null, "the next user blocks on the orphaned lock");

        Assert.That(m.Faults, Has.Count.EqualTo(1));
        Assert.That(m.Faults[0].Thread, Is.SameAs(dying));
        Assert.That(m.Faults[0].Fault.Message, Does.Contain("three sf_bufs"));
        // nsfbufsused counts the pool's sf_bufs: private mappings made in per-CPU slots outside the
        // pool (kmap_atomic, kmap_local, the quick page) are not among them.
        var info = SfBufMapper.Describe(strategy);
        int inPool = info.HasPool ? pages.Length - Math.Min(pages.Length, info.PerCpuPrivateSlots) : 0;
        Assert.That(mapper.Stats().NsfbufsUsed, Is.EqualTo(inPool), "the dead thread's sf_bufs are still accounted for");
        Assert.That(mapper.Stats().Misses, Is.EqualTo(info.HasPool ? pages.Length : 0), "each of its private mappings was made");
        mapper.Dispose();
        m.Dispose();

        Assert.That(m.NativeBytes, Is.Zero);
        Assert.That(NativeLedger.ProcessOutstandingBytes, Is.EqualTo(before));
        Assert.That(m.StoppedAtDispose, Has.Count.EqualTo(1).And.Some.Contains("wants-the-lock"));
        Assert.That(blocked.Fault, Is.TypeOf<MachineStoppedException>());
    }

    [TestCaseSource(typeof(AllStrategies), nameof(AllStrategies.Names))]
    public void CancellationEndsEveryInterruptibleWaitWithItsDocumentedResult(string strategy)
    {
        using var m = new SimMachine(new MachineOptions { Cpus = 2, PhysicalMemoryBytes = 32UL << 20, KernelMapPages = 64, Flavor = SfBufMapper.Describe(strategy).FlavorOr(MachineFlavor.Amd64) });
        using var kernel = new SimKernel(m, strategy, nsfbufs: 2);
        var space = m.CreateVmSpace();
        const ulong buffer = 0x1000_0000;
        m.Run(0, () => space.MapAnonymous(buffer, 16 * Pte.PageSize), space);

        // msleep with PCATCH.
        Assert.That(Interrupted(m, space, token => (int)m.Sleep(new object(), cancellation: token)), Is.EqualTo((int)SleepResult.Interrupted));

        // kernel_map exhausted: a waiting KVA allocation.
        int hogPages = 0;
        ulong hog = 0;
        m.Run(0, () => hog = m.KernelMap.Alloc(hogPages = m.KernelMap.FreePages, wait: false));
        Assert.That(Interrupted(m, space, token => (int)m.KernelMap.Alloc(1, wait: true, token)), Is.Zero);
        m.Run(0, () => m.KernelMap.Free(hog, hogPages)); // lwbuf takes its objects' pages from kernel_map below

        // A pipe read on an empty pipe: EINTR.
        Pipe pipe = null!;
        m.Run(0, () => pipe = Pipe.Create(kernel));
        Assert.That(Interrupted(m, space, token => pipe.Read(new Uio(buffer, 100, UioSegment.UserSpace, UioDirection.Read), token)), Is.EqualTo(Errno.EINTR));

        // A buffered pipe write into a full pipe: EINTR, or the short count if some bytes moved.
        long accepted = 0;
        m.Run(0, () =>
        {
            for (int i = 0; i < 4; i++)
            {
                Assert.That(pipe.Write(new Uio(buffer, 4000, UioSegment.UserSpace, UioDirection.Write)), Is.Zero);
            }
        }, space);
        int writeResult = Interrupted(m, space, token =>
        {
            var uio = new Uio(buffer, 4000, UioSegment.UserSpace, UioDirection.Write);
            int error = pipe.Write(uio, token);
            accepted = 4000 - uio.Resid;
            return error;
        });
        Assert.That(writeResult == Errno.EINTR ? accepted == 0 : writeResult == Errno.OK && accepted is > 0 and < 4000, Is.True, $"result {writeResult}, {accepted} bytes accepted");
        long drained = 0;
        m.Run(0, () =>
        {
            pipe.CloseWrite();
            while (true)
            {
                var uio = new Uio(buffer, 8000, UioSegment.UserSpace, UioDirection.Read);
                Assert.That(pipe.Read(uio), Is.Zero);
                if (uio.Resid == 8000)
                {
                    break;
                }

                drained += 8000 - uio.Resid;
            }
        }, space);
        Assert.That(drained, Is.EqualTo(16000 + accepted), "no byte of an interrupted write is lost or duplicated");

        // A socket with no NIC never drains: the lingering close's wait is interrupted.
        var socket = new Socket(kernel, sendBufferHiWat: 4096);
        Assert.That(Interrupted(m, space, token => socket.Send(new Uio(buffer, 3000, UioSegment.UserSpace, UioDirection.Write), token)), Is.Zero);
        Assert.That(Interrupted(m, space, socket.WaitDrained), Is.EqualTo(Errno.EINTR));

        // A full socket buffer: the send waits for space and is interrupted before moving anything.
        Assert.That(Interrupted(m, space, token => socket.Send(new Uio(buffer, 8000, UioSegment.UserSpace, UioDirection.Write), token)), Is.EqualTo(Errno.EINTR));

        // The sf_buf pool (or kernel_map) exhausted: Catch returns no sf_buf; the direct map never waits.
        var held = new List<SfBufHandle>();
        var pages = Enumerable.Range(0, 70).Select(i => Sim.NewPage(m, (ulong)i)).ToArray();
        m.Run(0, () =>
        {
            foreach (var page in pages)
            {
                var sf = kernel.SfBufs.Alloc(page, SfBufFlags.NoWait);
                if (sf.IsNone)
                {
                    break;
                }

                held.Add(sf);
            }
        });
        var extra = Sim.NewPage(m, 99);
        var info = SfBufMapper.Describe(strategy);
        if (info.HasPool && !info.InterruptibleWait)
        {
            // The documented result of an uninterruptible wait (kmap's TASK_UNINTERRUPTIBLE, lwbuf's
            // tsleep without PCATCH, emap's vmem VM_SLEEP): the cancellation is not seen and the
            // wait ends with an sf_buf once one is freed.
            Assert.That(held, Is.Not.Empty, "the pool was exhausted by sf_bufs that can be freed");
            var got = UninterruptiblyWaited(m, kernel.SfBufs, extra, () => m.Run(1, () => kernel.SfBufs.Free(held[^1])));
            held.RemoveAt(held.Count - 1);
            Assert.That(got.IsNone, Is.False, "an uninterruptible wait ignores the cancellation and ends with an sf_buf");
            Assert.That(got.Page, Is.EqualTo(extra));
            m.Run(1, () => kernel.SfBufs.Free(got));
        }
        else
        {
            int gotNone = Interrupted(m, space, token => kernel.SfBufs.Alloc(extra, SfBufFlags.Catch, token).IsNone ? 1 : 0, mayNotBlock: !info.HasPool);
            Assert.That(gotNone, Is.EqualTo(info.HasPool ? 1 : 0), info.HasPool ? "an interruptible wait for the exhausted pool ends with nothing" : "with no pool the allocation never blocks");
        }

        m.Run(0, () => held.ForEach(kernel.SfBufs.Free));
        Assert.That(m.Counters()[Counter.StaleAccesses] + m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
    }

    /// <summary>
    /// A <see cref="SfBufFlags.Catch"/> allocation on CPU 1 that waits uninterruptibly: cancelled
    /// once it sleeps, it must still be waiting a while later; <paramref name="freeOne"/> then
    /// frees an sf_buf (on the waiter's CPU, where lwbuf's magazine takes it back) and the wait
    /// must end with an sf_buf. Never hangs: the free is what ends the wait.
    /// </summary>
    private static SfBufHandle UninterruptiblyWaited(SimMachine m, SfBufMapper mapper, VmPage page, Action freeOne)
    {
        using var signal = new CancellationTokenSource();
        var got = SfBufHandle.None;
        long waitsBefore = mapper.Stats().AllocWait;
        var waiter = m.StartThread("waiter", () => got = mapper.Alloc(page, SfBufFlags.Catch, signal.Token), cpu: 1);
        Sim.WaitUntil(() => mapper.Stats().AllocWait > waitsBefore || waiter.HasExited, "the waiter sleeps for an sf_buf");
        signal.Cancel();
        Thread.Sleep(100);
        Assert.That(waiter.HasExited, Is.False, "a cancelled uninterruptible wait goes on");
        freeOne();
        Sim.Join(waiter);
        return got;
    }

    /// <summary>
    /// Runs <paramref name="wait"/> on a kernel thread, cancels once the thread has blocked (given its
    /// CPU up), and returns what the wait returned. <paramref name="mayNotBlock"/>: the call may simply finish.
    /// </summary>
    private static int Interrupted(SimMachine m, VmSpace space, Func<CancellationToken, int> wait, bool mayNotBlock = false)
    {
        using var signal = new CancellationTokenSource();
        int result = int.MinValue;
        var waiter = m.StartThread("waiter", () => result = wait(signal.Token), cpu: 1, vmspace: space);
        Sim.WaitUntil(() => (waiter.HasRun && waiter.Cpu == null) || (mayNotBlock && waiter.HasExited), "the waiter blocks");
        signal.Cancel();
        Sim.Join(waiter);
        return result;
    }
}
