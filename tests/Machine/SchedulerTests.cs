using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>sched_pin nesting, migrations of unpinned sleepers, and pinned sleepers coming home.</summary>
[TestFixture]
[NonParallelizable]
public sealed class SchedulerTests
{
    [Test]
    public void SchedPinNestsAndSchedUnpinWithoutSchedPinThrows()
    {
        using var m = new SimMachine(Sim.Small());
        var counts = new List<int>();
        var pinned = new List<bool>();
        Exception? unbalanced = null;

        var td = m.StartThread("pinner", () =>
        {
            var self = KernelThread.Current;
            void Note()
            {
                counts.Add(self.PinCount);
                pinned.Add(self.IsPinned);
            }

            Note();
            self.SchedPin();
            Note();
            self.SchedPin();
            Note();
            self.SchedUnpin();
            Note();
            self.SchedUnpin();
            Note();
            try
            {
                self.SchedUnpin();
            }
            catch (InvalidOperationException e)
            {
                unbalanced = e;
            }

            Note();
        }, cpu: 0);
        Sim.Join(td);

        Assert.That(counts, Is.EqualTo(new[] { 0, 1, 2, 1, 0, 0 }));
        Assert.That(pinned, Is.EqualTo(new[] { false, true, true, true, false, false }));
        Assert.That(unbalanced, Is.Not.Null);
        Assert.That(unbalanced!.Message, Does.Contain("sched_unpin without sched_pin"));
    }

    [Test]
    public void ABoundThreadIsPinnedWithoutSchedPin()
    {
        using var m = new SimMachine(Sim.Small());
        bool pinned = false;
        int pinCount = -1, bound = -1;

        m.Run(1, () =>
        {
            pinned = KernelThread.Current.IsPinned;
            pinCount = KernelThread.Current.PinCount;
            bound = KernelThread.Current.BoundCpu;
        });

        Assert.That(pinned, Is.True);
        Assert.That(pinCount, Is.Zero);
        Assert.That(bound, Is.EqualTo(1));
    }

    [Test]
    public void AnUnboundThreadAskedToStartOnABusyCpuStartsOnAFreeOneWithoutAMigration()
    {
        using var m = new SimMachine(Sim.Small());
        var holding = new Flag();
        var release = new Flag();
        int ranOn = -1;
        var start = m.Counters();
        var holder = m.StartThread("holder", () =>
        {
            holding.Set();
            Sim.SpinOnCpu(m, () => release.IsSet, "released");
        }, cpu: 0, bound: true);
        Sim.WaitUntil(() => holding.IsSet, "the holder runs");

        try
        {
            var td = m.StartThread("wanderer", () => ranOn = m.CurrentCpu.Id, cpu: 0);
            Sim.Join(td);
        }
        finally
        {
            release.Set();
            Sim.Join(holder);
        }

        Assert.That(ranOn, Is.EqualTo(1));
        Assert.That((m.Counters() - start)[Counter.Migrations], Is.Zero);
    }

    [Test]
    public void OnlyTheThreadItselfMayPinItself()
    {
        using var m = new SimMachine(Sim.Small());
        var release = new Flag();
        var td = m.StartThread("victim", () => Sim.SpinOnCpu(m, () => release.IsSet, "released"), cpu: 0, bound: true);
        try
        {
            Assert.That(td.SchedPin, Throws.InvalidOperationException);
            Assert.That(td.Yield, Throws.InvalidOperationException);
        }
        finally
        {
            release.Set();
            Sim.Join(td);
        }

        Assert.That(td.PinCount, Is.Zero);
    }

    [Test]
    public void AnUnpinnedSleeperWokenWhileItsCpuIsBusyResumesOnTheOtherCpuAndTheMigrationIsCounted()
    {
        using var m = new SimMachine(Sim.Small());
        var hook = new RecordingHook();
        m.AddContextSwitchHook(hook);
        object channel = new();
        var asleep = new Flag();
        var resumed = new Flag();
        var holding = new Flag();
        var release = new Flag();
        int startCpu = -1, resumeCpu = -1;

        var a = m.StartThread("A", () =>
        {
            startCpu = m.CurrentCpu.Id;
            asleep.Set();
            m.Sleep(channel);
            resumeCpu = m.CurrentCpu.Id;
            resumed.Set();
        }, cpu: 0);
        Sim.WaitUntil(() => asleep.IsSet && a.Cpu == null, "A sleeps");

        var b = m.StartThread("B", () =>
        {
            holding.Set();
            Sim.SpinOnCpu(m, () => release.IsSet, "B is released");
        }, cpu: 0, bound: true);
        Sim.WaitUntil(() => holding.IsSet, "B holds cpu 0");

        var start = m.Counters();
        Assert.That(m.Wakeup(channel), Is.EqualTo(1));
        try
        {
            Sim.WaitUntil(() => resumed.IsSet, "A resumes while B still holds cpu 0");
        }
        finally
        {
            release.Set();
            Sim.Join(a, b);
        }

        var d = m.Counters() - start;
        Assert.That(startCpu, Is.Zero);
        Assert.That(resumeCpu, Is.EqualTo(1));
        Assert.That(d[Counter.Migrations], Is.EqualTo(1));
        Assert.That(d.OnCpu(1, Counter.Migrations), Is.EqualTo(1));
        Assert.That(a.LastCpu, Is.EqualTo(1));
        Assert.That(hook.Migrations, Is.EqualTo(new[] { ("A", 0, 1) }));
    }

    [Test]
    public void APinnedSleeperComesBackOnItsOwnCpuEvenWhenTheOtherIsFree()
    {
        using var m = new SimMachine(Sim.Small());
        object channel = new();
        var asleep = new Flag();
        var holding = new Flag();
        var release = new Flag();
        int startCpu = -1, resumeCpu = -1;

        var a = m.StartThread("A", () =>
        {
            KernelThread.Current.SchedPin();
            startCpu = m.CurrentCpu.Id;
            asleep.Set();
            m.Sleep(channel);
            resumeCpu = m.CurrentCpu.Id;
            KernelThread.Current.SchedUnpin();
        }, cpu: 0);
        Sim.WaitUntil(() => asleep.IsSet && a.Cpu == null, "A sleeps");

        var b = m.StartThread("B", () =>
        {
            holding.Set();
            Sim.SpinOnCpu(m, () => release.IsSet, "B is released");
        }, cpu: 0, bound: true);
        Sim.WaitUntil(() => holding.IsSet, "B holds cpu 0");

        var start = m.Counters();
        Assert.That(m.Wakeup(channel), Is.EqualTo(1));

        // Give A every chance to (wrongly) take the free cpu 1; the assertion holds either way.
        Thread.Sleep(50);
        bool resumedWhileBusy = resumeCpu >= 0;
        release.Set();
        Sim.Join(a, b);
        var d = m.Counters() - start;

        Assert.That(startCpu, Is.Zero);
        Assert.That(resumedWhileBusy, Is.False, "a pinned thread waits for its own CPU");
        Assert.That(resumeCpu, Is.Zero);
        Assert.That(d[Counter.Migrations], Is.Zero);
        Assert.That(d.OnCpu(1, Counter.ContextSwitches), Is.Zero);
    }

    [Test]
    public void AYieldingThreadLetsAThreadWaitingForItsCpuRun()
    {
        using var m = new SimMachine(Sim.Small(cpus: 1));
        var order = new List<string>();
        var running = new Flag();
        var otherRan = new Flag();
        int yields = 0;

        var yielder = m.StartThread("yielder", () =>
        {
            lock (order)
            {
                order.Add("yielder-before");
            }

            running.Set();
            var deadline = DateTime.UtcNow + Sim.Patience;
            while (!otherRan.IsSet && DateTime.UtcNow < deadline)
            {
                KernelThread.Current.Yield();
                yields++;
            }

            lock (order)
            {
                order.Add("yielder-after");
            }
        }, cpu: 0);
        Sim.WaitUntil(() => running.IsSet, "the yielder runs");
        var other = m.StartThread("other", () =>
        {
            lock (order)
            {
                order.Add("other");
            }

            otherRan.Set();
        }, cpu: 0);
        Sim.Join(yielder, other);

        Assert.That(order, Is.EqualTo(new[] { "yielder-before", "other", "yielder-after" }));
        Assert.That(yields, Is.GreaterThanOrEqualTo(1));
    }

    [Test]
    public void WakeupOneWakesTheLongestSleeperFirst()
    {
        using var m = new SimMachine(Sim.Small());
        object channel = new();
        var order = new List<string>();
        KernelThread Sleeper(string name, int cpu) => m.StartThread(name, () =>
        {
            m.Sleep(channel);
            lock (order)
            {
                order.Add(name);
            }
        }, cpu, bound: true);

        var first = Sleeper("first", 0);
        Sim.WaitUntil(() => m.SleepingThreads == 1, "the first sleeps");
        var second = Sleeper("second", 1);
        Sim.WaitUntil(() => m.SleepingThreads == 2, "the second sleeps");

        int woken = m.WakeupOne(channel);
        Sim.Join(first);
        bool secondStillAsleep = !second.HasExited && m.SleepingThreads == 1;
        int wokenAgain = m.WakeupOne(channel);
        Sim.Join(second);

        Assert.That(woken, Is.EqualTo(1));
        Assert.That(secondStillAsleep, Is.True);
        Assert.That(wokenAgain, Is.EqualTo(1));
        Assert.That(order, Is.EqualTo(new[] { "first", "second" }));
        Assert.That(m.WakeupOne(channel), Is.Zero);
    }

    [Test]
    public void SleepsAreCountedAndASleepEndsByTimeoutByCancellationOrByWakeup()
    {
        using var m = new SimMachine(Sim.Small());
        object channel = new();
        using var cancel = new CancellationTokenSource();
        SleepResult timedOut = SleepResult.Woken, interrupted = SleepResult.Woken, woken = SleepResult.TimedOut;
        var second = new Flag();
        var third = new Flag();
        var start = m.Counters();

        var sleeper = m.StartThread("sleeper", () =>
        {
            timedOut = m.Sleep(channel, timeout: TimeSpan.FromMilliseconds(1));
            second.Set();
            interrupted = m.Sleep(channel, cancellation: cancel.Token);
            third.Set();
            woken = m.Sleep(channel);
        }, cpu: 1, bound: true);

        Sim.WaitUntil(() => second.IsSet && sleeper.Cpu == null, "the second sleep began");
        cancel.Cancel();
        Sim.WaitUntil(() => third.IsSet && sleeper.Cpu == null, "the third sleep began");
        int woke = 0;
        m.Run(0, () => woke = m.Wakeup(channel));
        Sim.Join(sleeper);
        var d = m.Counters() - start;

        Assert.That(timedOut, Is.EqualTo(SleepResult.TimedOut));
        Assert.That(interrupted, Is.EqualTo(SleepResult.Interrupted));
        Assert.That(woken, Is.EqualTo(SleepResult.Woken));
        Assert.That(woke, Is.EqualTo(1));
        Assert.That(d.OnCpu(1, Counter.Sleeps), Is.EqualTo(3));
        Assert.That(d.OnCpu(0, Counter.Wakeups), Is.EqualTo(1));
        Assert.That(m.Wakeup(channel), Is.Zero, "nobody sleeps on the channel any more");
    }

    private sealed class RecordingHook : IContextSwitchHook
    {
        private readonly List<(string, int, int)> _migrations = [];

        public IReadOnlyList<(string Thread, int From, int To)> Migrations
        {
            get
            {
                lock (_migrations)
                {
                    return [.. _migrations];
                }
            }
        }

        public void SwitchIn(Cpu cpu, KernelThread thread, int migratedFrom)
        {
            if (migratedFrom >= 0)
            {
                lock (_migrations)
                {
                    _migrations.Add((thread.Name, migratedFrom, cpu.Id));
                }
            }
        }

        public void SwitchOut(Cpu cpu, KernelThread thread)
        {
        }
    }
}
