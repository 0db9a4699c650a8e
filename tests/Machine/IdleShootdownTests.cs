using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>An idle CPU is never waited for: it is marked flush-pending and flushes before it next runs.</summary>
[TestFixture]
[NonParallelizable]
public sealed class IdleShootdownTests
{
    private const ulong OldMarker = 0x0101_0101_0101_0101;
    private const ulong NewMarker = 0x0202_0202_0202_0202;

    [Test]
    public void AShootdownToACpuWhoseThreadSleepsIsDeferredAndTheCpuFlushesBeforeTheThreadRunsAgain()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;
        var oldPage = Sim.NewPage(m, OldMarker);
        var newPage = Sim.NewPage(m, NewMarker);
        m.Run(0, () => m.KernelPmap.KEnter(va, oldPage));

        object channel = new();
        var cached = new Flag();
        ulong before = 0, after = 0;
        long flushesBeforeSleep = -1, flushesOnWake = -1;
        SleepResult slept = SleepResult.TimedOut;
        var sleeper = m.StartThread("sleeper", () =>
        {
            before = m.CurrentCpu.ReadUInt64(va);
            flushesBeforeSleep = m.Counters().OnCpu(1, Counter.FullFlushes);
            cached.Set();
            slept = m.Sleep(channel);

            // The first thing after waking: the deferred flush must already have happened.
            flushesOnWake = m.Counters().OnCpu(1, Counter.FullFlushes);
            after = m.CurrentCpu.ReadUInt64(va);
        }, cpu: 1, bound: true);

        Sim.WaitUntil(() => cached.IsSet && sleeper.Cpu == null && m.Cpus[1].IsIdle, "the sleeper is asleep and cpu 1 idle");
        var start = m.Counters();
        int targeted = 0;
        m.Run(0, () =>
        {
            m.KernelPmap.KEnter(va, newPage);
            targeted = m.CurrentCpu.Shootdown(m.Cpus[1].Mask, ShootdownKind.Page, va);
        });
        var shot = m.Counters() - start;

        Assert.That(sleeper.HasExited, Is.False, "the shootdown finished while the thread still slept");
        Assert.That(targeted, Is.EqualTo(1));
        Assert.That(shot[Counter.IdleTargetsDeferred], Is.EqualTo(1));
        Assert.That(shot[Counter.IpisSent], Is.Zero);
        Assert.That(shot[Counter.IpisReceived], Is.Zero);
        Assert.That(shot[Counter.ShootdownRounds], Is.EqualTo(1));
        Assert.That(shot.OnCpu(1, Counter.FullFlushes), Is.Zero, "an idle CPU does nothing until it runs");

        Assert.That(m.Wakeup(channel), Is.EqualTo(1));
        Sim.Join(sleeper);

        Assert.That(slept, Is.EqualTo(SleepResult.Woken));
        Assert.That(before, Is.EqualTo(OldMarker));
        Assert.That(flushesOnWake, Is.EqualTo(flushesBeforeSleep + 1));
        Assert.That(after, Is.EqualTo(NewMarker));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void AShootdownToACpuThatNeverRanAThreadDoesNotWaitAndItsFirstThreadStartsWithAFlush()
    {
        using var m = new SimMachine(Sim.Small());
        var start = m.Counters();
        m.Run(0, () => m.CurrentCpu.ShootdownAllButSelf(ShootdownKind.All));
        var shot = m.Counters() - start;
        m.Run(1, () => { });
        var ran = m.Counters() - start;

        Assert.That(shot[Counter.IdleTargetsDeferred], Is.EqualTo(1));
        Assert.That(shot[Counter.IpisSent], Is.Zero);
        Assert.That(ran.OnCpu(1, Counter.FullFlushes), Is.EqualTo(1));
    }

    [Test]
    public void TwoDeferredShootdownsCostTheIdleCpuOneFlush()
    {
        using var m = new SimMachine(Sim.Small());
        var start = m.Counters();
        m.Run(0, () =>
        {
            m.CurrentCpu.Shootdown(m.Cpus[1].Mask, ShootdownKind.Page, m.Layout.KernelMap.Start);
            m.CurrentCpu.Shootdown(m.Cpus[1].Mask, ShootdownKind.All);
        });
        m.Run(1, () => { });
        var d = m.Counters() - start;

        Assert.That(d[Counter.IdleTargetsDeferred], Is.EqualTo(2));
        Assert.That(d.OnCpu(1, Counter.FullFlushes), Is.EqualTo(1));
        Assert.That(d.OnCpu(1, Counter.LocalInvalidations), Is.Zero);
    }
}
