using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>The liveness rules: shootdowns finish whatever the targets are doing in kernel wait loops.</summary>
[TestFixture]
[NonParallelizable]
public sealed class ShootdownLivenessTests
{
    private const int Rounds = 100_000;

    private static readonly TimeSpan s_noDeadlockLimit = TimeSpan.FromMinutes(10);

    [TestCase(true)]
    [TestCase(false)]
    public void TwoCpusShootingAtEachOtherForAHundredThousandRoundsEachFinish(bool serialize)
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;
        int ready = 0;
        var start = m.Counters();

        KernelThread Shooter(int self, int other) => m.StartThread($"shooter{self}", () =>
        {
            // Both start shooting only once both run, so most rounds meet a running target.
            Interlocked.Increment(ref ready);
            Sim.SpinOnCpu(m, () => Volatile.Read(ref ready) == 2, "both shooters run");
            var cpu = m.CurrentCpu;
            var target = m.Cpus[other].Mask;
            for (int i = 0; i < Rounds; i++)
            {
                cpu.Shootdown(target, ShootdownKind.Page, va + ((ulong)(i & 15) << Pte.PageShift), serialize: serialize);
            }
        }, cpu: self, bound: true);

        var a = Shooter(0, 1);
        var b = Shooter(1, 0);

        // No short limit: a deadlock trips the machine's shootdown watchdog, which ends the
        // threads with ShootdownTimeoutException; a busy host only makes the rounds slower.
        a.Join(s_noDeadlockLimit);
        b.Join(s_noDeadlockLimit);
        var d = m.Counters() - start;

        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(2L * Rounds));
        Assert.That(d.OnCpu(0, Counter.ShootdownRounds), Is.EqualTo(Rounds));
        Assert.That(d.OnCpu(1, Counter.ShootdownRounds), Is.EqualTo(Rounds));
        Assert.That(d[Counter.IpiTargets], Is.EqualTo(2L * Rounds));
        Assert.That(d[Counter.IpisSent] + d[Counter.IdleTargetsDeferred], Is.EqualTo(2L * Rounds), "every target was interrupted or deferred");
        Assert.That(d[Counter.IpisReceived], Is.EqualTo(d[Counter.IpisSent]), "every IPI sent was serviced");
        Assert.That(d.OnCpu(1, Counter.IpisReceived), Is.EqualTo(d.OnCpu(0, Counter.IpisSent)));
        Assert.That(d[Counter.IpisSent], Is.GreaterThan(0), "the shooters overlapped");
    }

    [TestCase(true)]
    [TestCase(false)]
    public void AShootdownWhoseTargetSpinsOnAMutexTheInitiatorHoldsFinishes(bool spinOnly)
    {
        using var m = new SimMachine(Sim.Small());
        var mutex = new KMutex("held-by-initiator", spinOnly);
        var held = new Flag();
        var shot = new Flag();
        bool targetGotIt = false;
        CounterSnapshot? round = null;

        var initiator = m.StartThread("initiator", () =>
        {
            mutex.Lock();
            held.Set();
            Sim.SpinOnCpu(m, () => m.Counters().OnCpu(1, Counter.LockContentions) == 1, "the target contends for the mutex");
            var before = m.Counters();
            m.CurrentCpu.Shootdown(m.Cpus[1].Mask, ShootdownKind.Page, m.Layout.KernelMap.Start);
            round = m.Counters() - before;
            shot.Set();
            mutex.Unlock();
        }, cpu: 0, bound: true);

        var target = m.StartThread("target", () =>
        {
            Sim.SpinOnCpu(m, () => held.IsSet, "the initiator holds the mutex");
            mutex.Lock();
            targetGotIt = shot.IsSet;
            mutex.Unlock();
        }, cpu: 1, bound: true);

        Sim.Join(initiator, target);

        Assert.That(round![Counter.ShootdownRounds], Is.EqualTo(1));
        Assert.That(round[Counter.IpisSent] + round[Counter.IdleTargetsDeferred], Is.EqualTo(1));
        Assert.That(targetGotIt, Is.True, "the target got the mutex only after the shootdown");
        if (spinOnly)
        {
            // A spin mutex never gives the CPU up: the target must have taken the IPI while spinning.
            Assert.That(round[Counter.IpisSent], Is.EqualTo(1));
            Assert.That(round.OnCpu(1, Counter.IpisReceived), Is.EqualTo(1));
        }
    }

    [Test]
    public void AShootdownToACpuBlockedOutsideTheKernelWaitPrimitivesTripsTheWatchdogNamingTheCpus()
    {
        using var m = new SimMachine(Sim.Small() with { ShootdownWatchdog = TimeSpan.FromMilliseconds(200) });
        using var hostEvent = new ManualResetEventSlim(false);
        var blocking = new Flag();
        ShootdownTimeoutException? timeout = null;

        // A kernel thread that blocks the host thread without publishing its CPU idle: a bug the
        // machine must report instead of hanging.
        var stuck = m.StartThread("stuck", () =>
        {
            blocking.Set();
            hostEvent.Wait(Sim.Patience);
        }, cpu: 1, bound: true);
        Sim.WaitUntil(() => blocking.IsSet, "the stuck thread blocks");

        try
        {
            m.Run(0, () =>
            {
                try
                {
                    m.CurrentCpu.Shootdown(m.Cpus[1].Mask, ShootdownKind.Page, m.Layout.KernelMap.Start);
                }
                catch (ShootdownTimeoutException e)
                {
                    timeout = e;
                }

                // The watchdog released smp_ipi_mtx on the way out.
                m.SmpIpiMutex.Lock();
                m.SmpIpiMutex.Unlock();
            });
        }
        finally
        {
            hostEvent.Set();
            Sim.Join(stuck);
        }

        Assert.That(timeout, Is.Not.Null);
        Assert.That(timeout!.Initiator, Is.Zero);
        Assert.That(timeout.Message, Does.Contain("cpu 0"));
        Assert.That(timeout.Message, Does.Contain("CPUs {1}"));
        Assert.That(m.Counters().OnCpu(1, Counter.IpisReceived), Is.EqualTo(1), "the late target still serviced the request when it let go of its CPU");
    }
}
