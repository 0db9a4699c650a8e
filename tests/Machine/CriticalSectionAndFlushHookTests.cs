using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>
/// The machine features the peers rest on: critical sections (<c>critical_enter</c>,
/// <c>preempt_disable</c>) that make a switch throw instead of happening, hooks told about every
/// whole-TLB flush before and after it, hooks told about every poll, hooks that can be
/// removed, and the per-CPU fixmap.
/// </summary>
[TestFixture]
public sealed class CriticalSectionAndFlushHookTests
{
    [Test]
    public void InACriticalSectionSleepingYieldingAndJoiningThrowAndLeaveTheThreadRunnable()
    {
        using var m = new SimMachine(Sim.Small(cpus: 1));
        m.Run(0, () =>
        {
            var td = KernelThread.Current;
            td.CriticalEnter();
            td.CriticalEnter();
            Assert.That(td.CriticalNesting, Is.EqualTo(2));
            Assert.That(() => m.Sleep(this, timeout: TimeSpan.FromMilliseconds(1)), Throws.InvalidOperationException.With.Message.Contains("msleep inside a critical section"));
            Assert.That(() => td.Yield(), Throws.InvalidOperationException.With.Message.Contains("yield inside a critical section"));
            Assert.That(m.SleepingThreads, Is.Zero, "the refused sleep was never queued");
            td.CriticalExit();
            td.CriticalExit();
            Assert.That(() => td.CriticalExit(), Throws.InvalidOperationException.With.Message.Contains("without critical_enter"));
            Assert.That(m.Sleep(this, timeout: TimeSpan.FromMilliseconds(1)), Is.EqualTo(SleepResult.TimedOut));
        });
    }

    [Test]
    public void AContendedMutexSpinsButRefusesToBlockInACriticalSection()
    {
        using var m = new SimMachine(Sim.Small(cpus: 2));
        var mutex = new KMutex("busy");
        var held = new Flag();
        var release = new Flag();
        var holder = m.StartThread("holder", () =>
        {
            mutex.Lock();
            held.Set();
            while (!release.IsSet)
            {
                m.CurrentCpu.Poll();
            }

            mutex.Unlock();
        }, cpu: 1, bound: true);
        Sim.WaitUntil(() => held.IsSet, "the holder has the mutex");
        Exception? refused = null;
        m.Run(0, () =>
        {
            var td = KernelThread.Current;
            td.CriticalEnter();
            try
            {
                mutex.Lock();
            }
            catch (InvalidOperationException ex)
            {
                refused = ex;
            }
            finally
            {
                td.CriticalExit();
            }
        });
        release.Set();
        Sim.Join(holder);
        Assert.That(refused?.Message, Does.Contain("blocking on mutex busy"));
        m.Run(0, () =>
        {
            mutex.Lock(); // the refused attempt left no waiter behind
            mutex.Unlock();
        });
    }

    [Test]
    public void FlushHooksSeeEveryWholeTlbFlushBeforeAndAfterAndCanBeRemoved()
    {
        using var m = new SimMachine(Sim.Small(cpus: 2));
        var hook = new RecordingFlushHook();
        m.AddTlbFlushHook(hook);
        var stop = new Flag();
        var running = new Flag();
        var responder = m.StartThread("cpu1", () =>
        {
            running.Set();
            while (!stop.IsSet)
            {
                m.CurrentCpu.Poll();
            }
        }, cpu: 1, bound: true);
        Sim.WaitUntil(() => running.IsSet, "cpu 1 runs");
        m.Run(0, () =>
        {
            m.CurrentCpu.FlushTlb();
            m.CurrentCpu.ShootdownAllButSelf(ShootdownKind.All);
        });
        stop.Set();
        Sim.Join(responder);

        Assert.That(hook.Events, Does.Contain((0, true, "flushing")).And.Contain((0, true, "flushed")), "the local flush");
        Assert.That(hook.Events, Does.Contain((1, true, "flushing")).And.Contain((1, true, "flushed")), "the flush an IPI asked cpu 1 for");
        Assert.That(hook.TokensMatched, Is.True, "each Flushed got the token its Flushing returned");

        Assert.That(m.RemoveTlbFlushHook(hook), Is.True);
        Assert.That(m.RemoveTlbFlushHook(hook), Is.False);
        int seen = hook.Events.Count;
        m.Run(0, () => m.CurrentCpu.FlushTlb());
        Assert.That(hook.Events, Has.Count.EqualTo(seen), "a removed hook hears nothing");
    }

    [Test]
    public void PollHooksRunOnThePollingCpuAtEveryPollAndCanBeRemoved()
    {
        using var m = new SimMachine(Sim.Small(cpus: 2));
        var hook = new CountingPollHook();
        m.AddPollHook(hook);
        m.Run(0, () =>
        {
            for (int i = 0; i < 10; i++)
            {
                m.CurrentCpu.Poll();
            }
        });
        m.Run(1, () => m.CurrentCpu.Poll());
        m.Run(1, () => m.CurrentCpu.ReadUInt64(VmLayout.DMAP_BASE)); // a memory access is no poll

        Assert.That(m.RemovePollHook(hook), Is.True);
        Assert.That(m.RemovePollHook(hook), Is.False, "removed once");
        m.Run(0, () => m.CurrentCpu.Poll());

        Assert.That(hook.On(0), Is.EqualTo(10), "one call per Cpu.Poll, none after removal");
        Assert.That(hook.On(1), Is.EqualTo(1));
        Assert.That(hook.OffCpu, Is.Zero, "every call came on the polling CPU's own thread");
    }

    [Test]
    public void PollHooksRunWhenACpuThatParkedIdleInAWaitRunsAgain()
    {
        // Oversubscribed: a wait parks after a short spin with the CPU published idle.
        using var m = new SimMachine(Sim.Small(cpus: 2) with { Oversubscribed = true, PinThreads = false });
        var hook = new CountingPollHook();
        m.AddPollHook(hook);
        var mutex = new KMutex("spin", spinOnly: true);
        var held = new Flag();
        var holder = m.StartThread("holder", () =>
        {
            mutex.Lock();
            held.Set();
            Sim.WaitUntil(() => m.Counters().OnCpu(0, Counter.CrossCpuParks) > 0, "CPU 0 parks waiting for the mutex");
            mutex.Unlock();
        }, cpu: 1, bound: true);
        Sim.WaitUntil(() => held.IsSet, "the holder has the mutex");
        m.Run(0, () =>
        {
            mutex.Lock(); // never calls Cpu.Poll
            mutex.Unlock();
        });
        Sim.Join(holder);

        Assert.That(hook.On(0), Is.GreaterThan(0), "CPU 0 came back from an idle park");
        Assert.That(hook.OffCpu, Is.Zero);
    }

    [Test]
    public void EachCpuHasItsOwnFixmapSlotsInsideTheKernelRegions()
    {
        using var m = new SimMachine(Sim.Small(cpus: 2));
        Assert.That(m.Layout.Fixmap.Pages, Is.EqualTo(2 * VmLayout.FixmapPagesPerCpu));
        Assert.That(m.Layout.FixmapAddress(1, 0), Is.EqualTo(m.Layout.FixmapAddress(0, 0) + ((ulong)VmLayout.FixmapPagesPerCpu << Pte.PageShift)));
        Assert.That(m.Layout.IsKernelRegion(m.Layout.FixmapAddress(1, VmLayout.FixmapPagesPerCpu - 1)), Is.True);
        Assert.That(m.Layout.IsKernelRegion(m.Layout.Fixmap.End), Is.False, "followed by a guard page");
        Assert.That(() => m.Layout.FixmapAddress(0, VmLayout.FixmapPagesPerCpu), Throws.TypeOf<ArgumentOutOfRangeException>());
        var page = Sim.NewPage(m, 0xF1);
        m.Run(1, () =>
        {
            ulong va = m.Layout.FixmapAddress(1, 3);
            m.KernelPmap.KEnter(va, page);
            Assert.That(m.CurrentCpu.ReadUInt64(va), Is.EqualTo(0xF1UL));
            m.KernelPmap.KRemove(va);
            m.CurrentCpu.InvalidatePage(va);
        });
    }

    private sealed class CountingPollHook : IPollHook
    {
        private readonly long[] _calls = new long[8];
        private long _offCpu;

        public long OffCpu => Volatile.Read(ref _offCpu);

        public long On(int cpu) => Volatile.Read(ref _calls[cpu]);

        public void Polled(Cpu cpu)
        {
            if (KernelThread.CurrentOrNull?.Cpu != cpu)
            {
                Interlocked.Increment(ref _offCpu);
            }

            Interlocked.Increment(ref _calls[cpu.Id]);
        }
    }

    private sealed class RecordingFlushHook : ITlbFlushHook
    {
        private readonly List<(int, bool, string)> _events = [];
        private long _next;
        private volatile bool _mismatch;

        public IReadOnlyList<(int Cpu, bool Global, string What)> Events
        {
            get
            {
                lock (_events)
                {
                    return [.. _events];
                }
            }
        }

        public bool TokensMatched => !_mismatch;

        public long Flushing(Cpu cpu, bool global)
        {
            lock (_events)
            {
                _events.Add((cpu.Id, global, "flushing"));
            }

            return (Interlocked.Increment(ref _next) << 8) | (uint)cpu.Id;
        }

        public void Flushed(Cpu cpu, bool global, long token)
        {
            if ((token & 0xff) != cpu.Id)
            {
                _mismatch = true;
            }

            lock (_events)
            {
                _events.Add((cpu.Id, global, "flushed"));
            }
        }
    }
}
