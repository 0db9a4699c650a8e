using System.Diagnostics;
using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>
/// The machine's deadlock report (<see cref="MachineOptions.DetectDeadlocks"/>): a wait that can
/// never end is thrown as a <see cref="DeadlockException"/> from a sleep instead of hanging, and
/// waits that something can still end (another thread, a cancellation, the host, a wakeup some
/// timed sleeper gives) are never reported.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class DeadlockReportTests
{
    [Test]
    public void TwoThreadsAsleepOnChannelsNobodyWakesAreBothReportedWithTheirInterlockHeld()
    {
        using var m = new SimMachine(Sim.Small());
        var mutexes = new[] { new KMutex("first"), new KMutex("second") };
        var channels = new[] { new object(), new object() };
        var reports = new DeadlockException?[2];
        var heldAtThrow = new bool[2];
        var threads = Enumerable.Range(0, 2).Select(i => m.StartThread($"sleeper{i}", () =>
        {
            mutexes[i].Lock();
            try
            {
                m.Sleep(channels[i], mutexes[i]);
            }
            catch (DeadlockException ex)
            {
                reports[i] = ex;
                heldAtThrow[i] = mutexes[i].IsOwned;
            }
            finally
            {
                mutexes[i].Unlock();
            }
        }, cpu: i)).ToArray();
        Sim.Join(threads);

        Assert.That(reports, Is.All.Not.Null, "the one reported first frees nothing, so the other is reported after it");
        Assert.That(heldAtThrow, Is.All.True, "the interlock is held when the report is thrown, as after a return");
        var first = reports.Single(r => r!.Waits.Count == 2)!;
        Assert.That(first.Message, Does.Contain("sleeper0").And.Contain("sleeper1").And.Contain("interlock first").And.Contain("interlock second"));
        Assert.That(reports.Count(r => r!.Waits.Count == 1), Is.EqualTo(1), "the second report names only the thread left");
        Assert.That(m.Faults, Is.Empty);
    }

    [Test]
    public void AnUncaughtReportEndsTheThreadAndItsJoinRethrowsIt()
    {
        using var m = new SimMachine(Sim.Small());
        var channel = new object();
        var threads = Enumerable.Range(0, 2).Select(i => m.StartThread($"stuck{i}", () => m.Sleep(channel), cpu: i)).ToArray();
        Assert.That(() => threads[0].Join(Sim.Patience), Throws.TypeOf<DeadlockException>());
        Assert.That(() => threads[1].Join(Sim.Patience), Throws.TypeOf<DeadlockException>());
        Assert.That(m.Faults.Select(f => f.Fault), Has.All.TypeOf<DeadlockException>());
    }

    [Test]
    public void ALoneSleeperIsLeftToItsJoinersTimeout()
    {
        // One thread asleep on a channel nobody wakes is no deadlock between threads: whoever
        // started it may still start another one that wakes it, so its joiner's timeout decides.
        using var m = new SimMachine(Sim.Small());
        var channel = new object();
        var lone = m.StartThread("lone", () => m.Sleep(channel), cpu: 0);
        Assert.That(() => lone.Join(TimeSpan.FromMilliseconds(300)), Throws.TypeOf<TimeoutException>());
        m.Run(1, () => m.Wakeup(channel));
        lone.Join(Sim.Patience);
        Assert.That(m.Faults, Is.Empty);
    }

    [Test]
    public void AKernelThreadJoiningTheDeadlockedThreadsNeitherHidesTheDeadlockNorIsReported([Values] bool joinWithATimeout)
    {
        using var m = new SimMachine(Sim.Small());
        var channels = new[] { new object(), new object() };
        var reported = new bool[2];
        var sleepers = Enumerable.Range(0, 2).Select(i => m.StartThread($"sleeper{i}", () =>
        {
            try
            {
                m.Sleep(channels[i]);
            }
            catch (DeadlockException)
            {
                reported[i] = true;
            }
        }, cpu: i)).ToArray();
        var joiner = m.StartThread("joiner", () =>
        {
            foreach (var td in sleepers)
            {
                td.Join(joinWithATimeout ? Sim.Patience : null);
            }
        });
        joiner.Join(Sim.Patience);
        Assert.That(reported, Is.All.True, "the sleepers are reported");
        Assert.That(m.Faults, Is.Empty, "the joiner is not");
    }

    [Test]
    public void PollersAreReportedOnlyOnceTheMachineHasBeenQuiet()
    {
        var quiet = TimeSpan.FromMilliseconds(300);
        using var m = new SimMachine(Sim.Small() with { DeadlockQuiescence = quiet });
        var reported = new bool[2];
        var clock = Stopwatch.StartNew();
        var pollers = Enumerable.Range(0, 2).Select(i => m.StartThread($"poller{i}", () =>
        {
            var channel = new object();
            try
            {
                while (true)
                {
                    m.Sleep(channel, timeout: TimeSpan.FromMilliseconds(5)); // a tick, then look again at what never changes
                }
            }
            catch (DeadlockException)
            {
                reported[i] = true;
            }
        }, cpu: i)).ToArray();
        Sim.Join(pollers);
        Assert.That(reported, Is.All.True);
        Assert.That(clock.Elapsed, Is.GreaterThanOrEqualTo(quiet), "not before the machine has been quiet that long");
    }

    [Test]
    public void TimedSleepersThatWakeOthersAreNeverReported()
    {
        using var m = new SimMachine(Sim.Small() with { DeadlockQuiescence = TimeSpan.FromMilliseconds(100) });
        var ping = new object();
        var done = new Flag();
        int pongs = 0;
        var pinger = m.StartThread("pinger", () =>
        {
            for (int i = 0; i < 40; i++)
            {
                m.Sleep(ping, timeout: TimeSpan.FromMilliseconds(10));
                m.Wakeup(done);
            }

            done.Set();
            m.Wakeup(done);
        }, cpu: 0);
        var ponger = m.StartThread("ponger", () =>
        {
            while (!done.IsSet)
            {
                m.Sleep(done, timeout: TimeSpan.FromMilliseconds(100)); // a long tick: the pinger's wakeups end it first
                pongs++;
            }
        }, cpu: 1);
        Sim.Join(pinger, ponger);
        Assert.That(pongs, Is.GreaterThan(1));
        Assert.That(m.Faults, Is.Empty);
    }

    /// <summary>
    /// lwbuf's wait at exhaustion, on a loaded host: a poller sleeps a tick at a time until an
    /// object it needs is freed without a wakeup (lwbuf's free puts it back in a magazine), and
    /// the thread that freed it then sleeps until the poller wakes it. A loaded host core makes
    /// each step of a sleeper's spin before it blocks last a time slice (here the test hook: a
    /// millisecond). The tick still ends at its timeout, the poller finds the object, and nothing
    /// is reported. With the spin blind to the timeout (planted: ManualResetEventSlim's spin,
    /// which the wait used) the tick lasts the whole spin, seconds, longer than the quiet period,
    /// and the sleeper was reported as deadlocked although the poller's next look would free it:
    /// the intermittent report of MultiMappingTests' lwbuf AllocMany pairs on a busy host.
    /// </summary>
    [Test]
    public void APollersTickEndsAtItsTimeoutWhenEachSpinStepTakesATimeSlice([Values] bool planted)
    {
        var quiet = TimeSpan.FromMilliseconds(300);
        var tick = TimeSpan.FromMilliseconds(10);
        using var m = new SimMachine(Sim.Small() with { DeadlockQuiescence = quiet, Oversubscribed = false });
        m.TestHookSleeperSpinStep = () => Thread.Sleep(1);
        if (planted)
        {
            m.TestHookPlant(PlantedBug.SleepSpinIgnoresTimeout);
        }

        var interlock = new KMutex("handoff");
        var freed = new Flag();
        var done = new Flag();
        var longestTick = TimeSpan.Zero;
        DeadlockException? report = null;
        var poller = m.StartThread("poller", () =>
        {
            var ticks = new object();
            while (!freed.IsSet)
            {
                long start = Stopwatch.GetTimestamp();
                try
                {
                    m.Sleep(ticks, timeout: tick);
                }
                catch (DeadlockException) when (planted)
                {
                    return; // reported in turn, once the freer it was reported with has gone
                }

                var took = Stopwatch.GetElapsedTime(start);
                longestTick = took > longestTick ? took : longestTick;
            }

            interlock.Lock();
            done.Set();
            m.Wakeup(done);
            interlock.Unlock();
        }, cpu: 0, bound: true);
        var freer = m.StartThread("freer", () =>
        {
            Sim.SpinOnCpu(m, () => m.SleepingThreads == 1, "the poller sleeps its first tick");
            interlock.Lock();
            try
            {
                freed.Set(); // no wakeup: the poller's next look finds it
                while (!done.IsSet)
                {
                    m.Sleep(done, interlock);
                }
            }
            catch (DeadlockException ex)
            {
                report = ex;
            }
            finally
            {
                interlock.Unlock();
            }
        }, cpu: 1, bound: true);
        Sim.Join(poller, freer);

        TestContext.Out.WriteLine($"planted {planted}: longest tick {longestTick.TotalMilliseconds:0} ms; {report?.Message ?? "nothing reported"}");
        if (planted)
        {
            Assert.That(report, Is.Not.Null, "the planted spin outlasts the quiet period: the machine is taken for deadlocked");
            return;
        }

        Assert.That(report, Is.Null, "a poller that will find what it waits for is not deadlocked");
        Assert.That(longestTick, Is.LessThan(quiet), "each tick ends at its timeout, not after the whole spin");
        Assert.That(m.Faults, Is.Empty);
    }

    [Test]
    public void ACancellableSleepIsNeverCountedAsStuck()
    {
        using var m = new SimMachine(Sim.Small());
        var channel = new object();
        using var cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        var waiter = m.StartThread("waiter", () => m.Sleep(channel), cpu: 0);
        SleepResult result = SleepResult.Woken;
        var cancellable = m.StartThread("cancellable", () =>
        {
            result = m.Sleep(new object(), cancellation: cancel.Token);
            m.Wakeup(channel);
        }, cpu: 1);
        Sim.Join(waiter, cancellable);
        Assert.That(result, Is.EqualTo(SleepResult.Interrupted));
        Assert.That(m.Faults, Is.Empty);
    }

    [Test]
    public void SleepersTheHostWakesBeforeItJoinsAreNotReported()
    {
        using var m = new SimMachine(Sim.Small());
        var channel = new object();
        var threads = Enumerable.Range(0, 2).Select(i => m.StartThread($"sleeper{i}", () => m.Sleep(channel), cpu: i)).ToArray();
        Sim.WaitUntil(() => m.SleepingThreads == 2, "both sleep");
        Thread.Sleep(50); // both asleep for a while, with nobody joining them
        Assert.That(m.Wakeup(channel), Is.EqualTo(2));
        Sim.Join(threads);
        Assert.That(m.Faults, Is.Empty);
    }

    [Test]
    public void WithDetectionOffADeadlockWaitsForTheJoinersTimeout()
    {
        var m = new SimMachine(Sim.Small() with { DetectDeadlocks = false });
        var channel = new object();
        var threads = Enumerable.Range(0, 2).Select(i => m.StartThread($"stuck{i}", () => m.Sleep(channel), cpu: i)).ToArray();
        Assert.That(() => threads[0].Join(TimeSpan.FromMilliseconds(300)), Throws.TypeOf<TimeoutException>());
        m.Dispose();
        Assert.That(m.StoppedAtDispose, Has.Count.EqualTo(2));
        Assert.That(threads.Select(t => t.Fault), Has.All.TypeOf<MachineStoppedException>());
    }
}
