using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>
/// Virtual time's clock rules, exactly, on small cases under the default profile: what a copy, a
/// shootdown to a running and to an idle CPU, a contended mutex, a sleep and wakeup, and a spin
/// on a shared word cost each CPU's clock.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class VirtualTimeTests
{
    private static CostModel P => CostModel.Default;

    private static long Ns(double ns) => (long)Math.Round(ns);

    /// <summary>Polls (a spin turn each) until <paramref name="condition"/> holds; a bounded number of turns.</summary>
    private static void SpinUntil(SimMachine m, Func<bool> condition)
    {
        for (int turn = 0; !condition(); turn++)
        {
            if (turn > 1_000_000)
            {
                throw new InvalidOperationException("the condition never held");
            }

            m.CurrentCpu.Poll();
        }
    }

    private static SimMachine Virtual(int cpus = 2, bool isChecked = false, long quantumNs = 500) => new(Sim.Small(cpus) with
    {
        Time = MachineTime.Virtual,
        Cost = P,
        Checked = isChecked,
        Quantum = TimeSpan.FromTicks(quantumNs / 100),
    });

    [Test]
    public void ACopyCostsItsBytesAtTheProfilesBandwidth()
    {
        using var m = Virtual();
        var page = Sim.NewPage(m, 1);
        long before = 0, after = 0;
        m.Run(0, () =>
        {
            var cpu = m.CurrentCpu;
            before = cpu.VirtualTimeNs;
            cpu.Write(m.Layout.DirectMap(page.PhysicalAddress), new byte[Pte.PageSize]);
            after = cpu.VirtualTimeNs;
        });

        Assert.That(after - before, Is.EqualTo((long)Math.Ceiling(Pte.PageSize / P.CopyBytesPerNs)));
    }

    [Test]
    public void AThreadStartsOneContextSwitchAfterTheMachineTimeAndTheMachineTimeIsWhereItEnded()
    {
        using var m = Virtual();
        long start = -1, zeroed = -1, end = -1;
        long t0 = m.VirtualNowNs;
        m.Run(1, () =>
        {
            start = m.CurrentCpu.VirtualTimeNs;
            var page = Sim.NewPage(m, 1);
            zeroed = m.CurrentCpu.VirtualTimeNs;
            m.CurrentCpu.Write(m.Layout.DirectMap(page.PhysicalAddress), new byte[100]);
            end = m.CurrentCpu.VirtualTimeNs;
        });

        Assert.That(start - t0, Is.EqualTo(Ns(P.ContextSwitchNs)));
        Assert.That(zeroed - start, Is.EqualTo((long)Math.Ceiling(Pte.PageSize / P.CopyBytesPerNs)), "a zeroed page is a page of stores at the copy bandwidth");
        Assert.That(end - zeroed, Is.EqualTo(10));
        Assert.That(m.VirtualNowNs, Is.EqualTo(end), "the machine's time is where the last thread stopped");
    }

    [Test]
    public void AShootdownToARunningTargetTakesSendDeliveryHandlerAndInvalidationAndTheTargetPaysHandlerAndInvalidation()
    {
        using var m = Virtual();
        ulong va = m.Layout.KernelMap.Start;
        var held = new KMutex("held", spinOnly: true);
        var gate = new KMutex("gate", spinOnly: true);
        long sentAt = 0, doneAt = 0, targetAfter = 0, targetBefore = 0;
        var initiator = m.StartThread("initiator", () =>
        {
            held.Lock();
            m.KernelPmap.KEnter(va, Sim.NewPage(m, 1));

            // Let the target start spinning on `held`.
            SpinUntil(m, gate.IsLockedByOther);

            sentAt = m.CurrentCpu.VirtualTimeNs;
            m.CurrentCpu.Shootdown(m.Cpus[1].Mask, ShootdownKind.Page, va, serialize: false);
            doneAt = m.CurrentCpu.VirtualTimeNs;
            held.Unlock();
        }, cpu: 0, bound: true);
        var target = m.StartThread("target", () =>
        {
            // Start later than the initiator, so that it surely holds `held` first.
            m.CurrentCpu.Write(m.Layout.DirectMap(Sim.NewPage(m, 1).PhysicalAddress), new byte[4 * Pte.PageSize]);
            gate.Lock();
            targetBefore = m.CurrentCpu.VirtualTimeNs;
            held.Lock();
            targetAfter = m.CurrentCpu.VirtualTimeNs;
            held.Unlock();
            gate.Unlock();
        }, cpu: 1, bound: true);
        try
        {
            Sim.Join(initiator, target);
        }
        catch (TimeoutException)
        {
            Assert.Fail(m.Controller!.Describe());
        }

        long roundTrip = Ns(P.IpiSendNs + P.IpiDeliveryNs + P.IpiHandlerNs + P.LocalInvalidateNs);
        Assert.That(doneAt - sentAt, Is.EqualTo(roundTrip), "send, delivery, then the target's handler and invlpg before its acknowledgement");
        Assert.That(m.Counters()[Counter.IpisReceived], Is.EqualTo(1));

        // The target took the IPI while it spun, then got the mutex a hand-off after the release.
        Assert.That(targetAfter, Is.EqualTo(doneAt + Ns(P.LockHandoffNs)));
        Assert.That(targetBefore, Is.LessThan(sentAt));
    }

    [Test]
    public void AShootdownToAnIdleTargetCostsTheRoundTripAndTheTargetPaysWhenItNextRuns()
    {
        using var m = Virtual();
        ulong va = m.Layout.KernelMap.Start;
        long sentAt = 0, doneAt = 0, idleClock = 0;
        m.Run(1, () => { });
        idleClock = m.Cpus[1].VirtualTimeNs;
        m.Run(0, () =>
        {
            m.KernelPmap.KEnter(va, Sim.NewPage(m, 1));
            sentAt = m.CurrentCpu.VirtualTimeNs;
            m.CurrentCpu.Shootdown(m.Cpus[1].Mask, ShootdownKind.Page, va, serialize: false);
            doneAt = m.CurrentCpu.VirtualTimeNs;
        });

        Assert.That(doneAt - sentAt, Is.EqualTo(Ns(P.IpiSendNs + P.IpiDeliveryNs + P.IpiHandlerNs)), "the least round trip; nobody is waited for");
        Assert.That(m.Cpus[1].VirtualTimeNs, Is.EqualTo(idleClock), "an idle CPU's clock does not move");
        Assert.That(m.Counters()[Counter.IdleTargetsDeferred], Is.EqualTo(1));

        long t0 = m.VirtualNowNs;
        long startedAt = 0;
        m.Run(1, () => startedAt = m.CurrentCpu.VirtualTimeNs);

        // Its clock jumps to the machine's time, then pays the switch and the deferred handler and invlpg.
        Assert.That(startedAt, Is.EqualTo(t0 + Ns(P.ContextSwitchNs + P.IpiHandlerNs + P.LocalInvalidateNs)));
    }

    [Test]
    public void AContendedMutexPassesToTheWaiterAHandOffAfterTheRelease()
    {
        using var m = Virtual();
        var mutex = new KMutex("m");
        var taken = new KMutex("taken", spinOnly: true);
        long releasedAt = 0, acquiredAt = 0;
        var owner = m.StartThread("owner", () =>
        {
            mutex.Lock();
            SpinUntil(m, taken.IsLockedByOther);

            // Work a while, so the waiter spins (well within the cross-CPU spin).
            m.CurrentCpu.Write(m.Layout.DirectMap(Sim.NewPage(m, 1).PhysicalAddress), new byte[Pte.PageSize]);
            releasedAt = m.CurrentCpu.VirtualTimeNs;
            mutex.Unlock();
        }, cpu: 0, bound: true);
        var waiter = m.StartThread("waiter", () =>
        {
            // Start later than the owner, so that the owner surely holds the mutex first.
            m.CurrentCpu.Write(m.Layout.DirectMap(Sim.NewPage(m, 1).PhysicalAddress), new byte[4 * Pte.PageSize]);
            taken.Lock();
            mutex.Lock();
            acquiredAt = m.CurrentCpu.VirtualTimeNs;
            mutex.Unlock();
        }, cpu: 1, bound: true);
        Sim.Join(owner, waiter);

        Assert.That(acquiredAt, Is.EqualTo(releasedAt + Ns(P.LockHandoffNs)));
        Assert.That(m.Counters()[Counter.LockContentions], Is.EqualTo(1));
    }

    [Test]
    public void AWokenSleeperRunsAWakeupAndASwitchAfterTheWakeup()
    {
        using var m = Virtual();
        object channel = new();
        var asleep = new KMutex("asleep", spinOnly: true);
        long wokeAt = 0, ranAt = 0;
        var sleeper = m.StartThread("sleeper", () =>
        {
            asleep.Lock();
            m.Sleep(channel, asleep);
            ranAt = m.CurrentCpu.VirtualTimeNs;
            asleep.Unlock();
        }, cpu: 1, bound: true);
        var waker = m.StartThread("waker", () =>
        {
            // Wait until the sleeper sleeps (it drops the interlock as it does), well after it started.
            m.CurrentCpu.Write(m.Layout.DirectMap(Sim.NewPage(m, 1).PhysicalAddress), new byte[16 * Pte.PageSize]);
            SpinUntil(m, () => m.SleepingThreads > 0);

            wokeAt = m.CurrentCpu.VirtualTimeNs;
            Assert.That(m.Wakeup(channel), Is.EqualTo(1));
        }, cpu: 0, bound: true);
        Sim.Join(sleeper, waker);

        // Then the interlock: uncontended.
        Assert.That(ranAt, Is.EqualTo(wokeAt + Ns(P.WakeupNs + P.ContextSwitchNs + P.LockNs)));
    }

    [Test]
    public void ASpinnerSeesAStoreWithinOneSpinTurnAndAQuantumOfIt()
    {
        using var m = Virtual(quantumNs: 1000);
        var page = Sim.NewPage(m, 0);
        ulong word = m.Layout.DirectMap(page.PhysicalAddress);
        long storedAt = 0, seenAt = 0;
        var spinner = m.StartThread("spinner", () =>
        {
            var cpu = m.CurrentCpu;
            while (cpu.ReadUInt64(word) == 0)
            {
                cpu.Poll();
            }

            seenAt = cpu.VirtualTimeNs;
        }, cpu: 1, bound: true);
        var storer = m.StartThread("storer", () =>
        {
            var cpu = m.CurrentCpu;
            cpu.Write(m.Layout.DirectMap(Sim.NewPage(m, 1).PhysicalAddress), new byte[8 * Pte.PageSize]);
            cpu.WriteUInt64(word, 1);
            storedAt = cpu.VirtualTimeNs;
        }, cpu: 0, bound: true);
        Sim.Join(spinner, storer);

        // The spinner's clock passes the store's time by at most one spin turn (a poll and a load) plus the quantum.
        long turn = Ns(P.SpinNs) + 1;
        Assert.That(seenAt, Is.GreaterThanOrEqualTo(storedAt - 1000).And.LessThanOrEqualTo(storedAt + turn + 1000));
    }
}

/// <summary>Test helpers for mutexes.</summary>
internal static class KMutexTestExtensions
{
    /// <summary>True when a thread other than the caller holds <paramref name="mutex"/>.</summary>
    public static bool IsLockedByOther(this KMutex mutex) => !mutex.IsOwned && !mutex.TryLockAndRelease();

    private static bool TryLockAndRelease(this KMutex mutex)
    {
        if (!mutex.TryLock())
        {
            return false;
        }

        mutex.Unlock();
        return true;
    }
}
