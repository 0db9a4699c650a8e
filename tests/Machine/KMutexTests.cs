using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>The kernel mutex: counting, ownership rules, and blocking that gives the CPU up.</summary>
[TestFixture]
[NonParallelizable]
public sealed class KMutexTests
{
    [Test]
    public void AnUncontendedLockCountsOneAcquisitionAndNoContention()
    {
        using var m = new SimMachine(Sim.Small());
        var mutex = new KMutex("m");
        CounterSnapshot? d = null;
        bool ownedInside = false, ownedAfter = true;

        m.Run(1, () =>
        {
            var before = m.Counters();
            mutex.Lock();
            ownedInside = mutex.IsOwned;
            mutex.AssertOwned();
            mutex.Unlock();
            ownedAfter = mutex.IsOwned;
            d = m.Counters() - before;
        });

        Assert.That(d!.OnCpu(1, Counter.LockAcquisitions), Is.EqualTo(1));
        Assert.That(d[Counter.LockAcquisitions], Is.EqualTo(1));
        Assert.That(d[Counter.LockContentions], Is.Zero);
        Assert.That(ownedInside, Is.True);
        Assert.That(ownedAfter, Is.False);
    }

    [TestCase(false)]
    [TestCase(true)]
    public void AContendedAcquisitionFromAnotherCpuCountsOneContention(bool spinOnly)
    {
        using var m = new SimMachine(Sim.Small());
        var mutex = new KMutex("m", spinOnly);
        var held = new Flag();
        var unlocked = new Flag();
        bool waiterSawUnlock = false;
        var start = m.Counters();

        var holder = m.StartThread("holder", () =>
        {
            mutex.Lock();
            held.Set();
            Sim.SpinOnCpu(m, () => m.Counters().OnCpu(1, Counter.LockContentions) == 1, "the waiter contends");
            unlocked.Set();
            mutex.Unlock();
        }, cpu: 0, bound: true);
        var waiter = m.StartThread("waiter", () =>
        {
            Sim.SpinOnCpu(m, () => held.IsSet, "the holder holds the mutex");
            mutex.Lock();
            waiterSawUnlock = unlocked.IsSet;
            mutex.Unlock();
        }, cpu: 1, bound: true);
        Sim.Join(holder, waiter);
        var d = m.Counters() - start;

        Assert.That(waiterSawUnlock, Is.True, "the waiter got the mutex only after the holder released it");
        Assert.That(d[Counter.LockContentions], Is.EqualTo(1));
        Assert.That(d.OnCpu(1, Counter.LockContentions), Is.EqualTo(1));
        Assert.That(d.OnCpu(0, Counter.LockAcquisitions), Is.EqualTo(1));
        Assert.That(d.OnCpu(1, Counter.LockAcquisitions), Is.EqualTo(1));
    }

    [Test]
    public void TryLockFailsOnAHeldMutexWithoutCountingAContention()
    {
        using var m = new SimMachine(Sim.Small());
        var mutex = new KMutex("m");
        var held = new Flag();
        var tried = new Flag();
        bool got = true, gotLater = false;

        var holder = m.StartThread("holder", () =>
        {
            mutex.Lock();
            held.Set();
            Sim.SpinOnCpu(m, () => tried.IsSet, "the other thread tried");
            mutex.Unlock();
        }, cpu: 0, bound: true);
        var trier = m.StartThread("trier", () =>
        {
            Sim.SpinOnCpu(m, () => held.IsSet, "the mutex is held");
            got = mutex.TryLock();
            tried.Set();
            Sim.SpinOnCpu(m, () => holder.HasExited, "the holder is gone");
            gotLater = mutex.TryLock();
            mutex.Unlock();
        }, cpu: 1, bound: true);
        Sim.Join(holder, trier);

        Assert.That(got, Is.False);
        Assert.That(gotLater, Is.True);
        Assert.That(m.Counters()[Counter.LockContentions], Is.Zero);
        Assert.That(m.Counters()[Counter.LockAcquisitions], Is.EqualTo(2));
    }

    [Test]
    public void UnlockByANonOwnerThrowsSynchronizationLockException()
    {
        using var m = new SimMachine(Sim.Small());
        var mutex = new KMutex("owned-elsewhere");
        var held = new Flag();
        var tried = new Flag();
        Exception? error = null;
        bool stillHeld = false;

        var owner = m.StartThread("owner", () =>
        {
            mutex.Lock();
            held.Set();
            Sim.SpinOnCpu(m, () => tried.IsSet, "the intruder tried");
            stillHeld = mutex.IsOwned;
            mutex.Unlock();
        }, cpu: 0, bound: true);
        var intruder = m.StartThread("intruder", () =>
        {
            Sim.SpinOnCpu(m, () => held.IsSet, "the owner holds the mutex");
            try
            {
                mutex.Unlock();
            }
            catch (SynchronizationLockException e)
            {
                error = e;
            }

            tried.Set();
        }, cpu: 1, bound: true);
        Sim.Join(owner, intruder);

        Assert.That(error, Is.TypeOf<SynchronizationLockException>());
        Assert.That(error!.Message, Does.Contain("owned-elsewhere"));
        Assert.That(stillHeld, Is.True, "the failed unlock did not release the owner's mutex");
        Assert.That(() => m.Run(0, mutex.Unlock), Throws.TypeOf<SynchronizationLockException>(), "unlocking a free mutex");
        Assert.That(() => m.Run(0, mutex.AssertOwned), Throws.TypeOf<SynchronizationLockException>());
    }

    [TestCase(false)]
    [TestCase(true)]
    public void LockingAMutexTwiceOnOneThreadThrowsLockRecursionException(bool spinOnly)
    {
        using var m = new SimMachine(Sim.Small());
        var mutex = new KMutex("recursed", spinOnly);
        bool ownedAfter = false;

        Assert.That(
            () => m.Run(0, () =>
            {
                mutex.Lock();
                try
                {
                    mutex.Lock();
                }
                finally
                {
                    ownedAfter = mutex.IsOwned;
                    mutex.Unlock();
                }
            }),
            Throws.TypeOf<LockRecursionException>().With.Message.Contains("recursed"));
        Assert.That(ownedAfter, Is.True);
        Assert.That(m.Counters()[Counter.LockContentions], Is.Zero, "a recursion is not a contention");
    }

    [Test]
    public void AThreadBlockedOnAMutexGivesItsCpuUpSoAnotherThreadRunsThere()
    {
        using var m = new SimMachine(Sim.Small());
        var mutex = new KMutex("m");
        var held = new Flag();
        var release = new Flag();
        bool heldWhileThirdRan = false;
        int thirdCpu = -1;

        var holder = m.StartThread("holder", () =>
        {
            mutex.Lock();
            held.Set();
            Sim.SpinOnCpu(m, () => release.IsSet, "released");
            mutex.Unlock();
        }, cpu: 0, bound: true);
        Sim.WaitUntil(() => held.IsSet, "the holder holds the mutex");
        var blocked = m.StartThread("blocked", () =>
        {
            mutex.Lock();
            mutex.Unlock();
        }, cpu: 1, bound: true);
        Sim.WaitUntil(() => m.Counters().OnCpu(1, Counter.LockContentions) == 1, "the blocked thread contends");

        try
        {
            // Only possible if "blocked" gave cpu 1 up while waiting for the mutex.
            var third = m.StartThread("third", () =>
            {
                thirdCpu = m.CurrentCpu.Id;
                heldWhileThirdRan = !release.IsSet && !blocked.HasExited;
            }, cpu: 1, bound: true);
            Sim.Join(third);
        }
        finally
        {
            release.Set();
            Sim.Join(holder, blocked);
        }

        Assert.That(thirdCpu, Is.EqualTo(1));
        Assert.That(heldWhileThirdRan, Is.True);
        Assert.That(m.Counters().OnCpu(1, Counter.Sleeps), Is.GreaterThanOrEqualTo(1), "the blocked thread slept on the turnstile");
        Assert.That(m.Counters().OnCpu(1, Counter.LockContentions), Is.EqualTo(1));
    }
}
