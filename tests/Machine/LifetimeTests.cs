using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>Dispose returns every native byte, stops kernel threads still running, and never hides an exception.</summary>
[TestFixture]
[NonParallelizable]
public sealed class LifetimeTests
{
    [Test]
    public void DisposeReturnsEveryNativeByteTheMachineAllocated()
    {
        long processBefore = NativeLedger.ProcessOutstandingBytes;
        var m = new SimMachine(Sim.Small());
        long bootBytes = m.NativeBytes;

        // Grow it: user page tables, mapped kernel memory, TLB contents.
        var one = m.CreateVmSpace();
        var two = m.CreateVmSpace();
        m.Run(0, () =>
        {
            one.MapAnonymous(0x10_0000, 4 * Pte.PageSize);
            one.MapAnonymous(0x8000_0000, Pte.PageSize); // another PTE page
            m.KernelMemory.Alloc(5 * Pte.PageSize);
            m.CurrentCpu.Fill(0x10_0000, 4 * Pte.PageSize, 0x5a);
        }, one);
        m.Run(1, () => two.MapAnonymous(0x10_0000, Pte.PageSize), two);
        long grownBytes = m.NativeBytes;
        long processWhileAlive = NativeLedger.ProcessOutstandingBytes;

        m.Dispose();

        Assert.That(bootBytes, Is.GreaterThan(0));
        Assert.That(grownBytes, Is.GreaterThan(bootBytes), "the user page tables are native too");
        Assert.That(processWhileAlive - processBefore, Is.EqualTo(grownBytes));
        Assert.That(m.NativeBytes, Is.Zero);
        Assert.That(NativeLedger.ProcessOutstandingBytes, Is.EqualTo(processBefore));
    }

    [Test]
    public void ManyMachinesBootedAndDisposedLeakNothing()
    {
        long processBefore = NativeLedger.ProcessOutstandingBytes;
        for (int i = 0; i < 20; i++)
        {
            using var m = new SimMachine(Sim.Small(cpus: 1 + (i % 4)) with { Flavor = i % 2 == 0 ? MachineFlavor.Amd64 : MachineFlavor.I386 });
            var page = Sim.NewPage(m, (ulong)i);
            ulong seen = 0;
            m.Run(0, () =>
            {
                m.KernelPmap.KEnter(m.Layout.KernelMap.Start, page);
                seen = m.CurrentCpu.ReadUInt64(m.Layout.KernelMap.Start);
            });
            Assert.That(seen, Is.EqualTo((ulong)i));
        }

        Assert.That(NativeLedger.ProcessOutstandingBytes, Is.EqualTo(processBefore));
    }

    [Test]
    public void DisposeWithLiveKernelThreadsStopsThemNamesThemAndFreesEverything()
    {
        long processBefore = NativeLedger.ProcessOutstandingBytes;
        var m = new SimMachine(Sim.Small());
        object channel = new();
        var mutex = new KMutex("held");
        var asleep = new Flag();
        var holding = new Flag();
        var sleeper = m.StartThread("lingering-sleeper", () =>
        {
            asleep.Set();
            m.Sleep(channel);
        }, cpu: 1, bound: true);
        var holder = m.StartThread("lock-holder", () =>
        {
            mutex.Lock();
            holding.Set();
            m.Sleep(channel); // never woken
        }, cpu: 0, bound: true);
        Sim.WaitUntil(() => holding.IsSet, "the holder holds the mutex");
        var blocked = m.StartThread("blocked-on-mutex", mutex.Lock, cpu: 0);
        var spinner = m.StartThread("spinner", () =>
        {
            while (true)
            {
                m.CurrentCpu.Poll();
            }
        });
        Sim.WaitUntil(() => asleep.IsSet && sleeper.Cpu == null && m.LiveThreads().Count == 4, "every thread runs or waits");

        Assert.That(m.Dispose, Throws.Nothing, "Dispose never throws for live threads: it stops them");

        Assert.That(m.NativeBytes, Is.Zero);
        Assert.That(NativeLedger.ProcessOutstandingBytes, Is.EqualTo(processBefore));
        Assert.That(m.LiveThreads(), Is.Empty);
        Assert.That(m.StoppedAtDispose, Has.Count.EqualTo(4));
        Assert.That(m.StoppedAtDispose, Has.Some.Contains("lingering-sleeper").And.Contains("stopped"));
        Assert.That(m.StoppedAtDispose, Has.None.Contains("could not be stopped"));
        foreach (var td in new[] { sleeper, holder, blocked, spinner })
        {
            Assert.That(td.Fault, Is.Not.Null, $"{td} ended by the stop");
        }
    }

    [Test]
    public void DisposeInsideAUsingDoesNotHideTheExceptionAlreadyPropagating()
    {
        SimMachine? machine = null;
        object channel = new();
        var failure = Assert.Throws<InvalidTimeZoneException>(() =>
        {
            using var m = new SimMachine(Sim.Small());
            machine = m;
            m.StartThread("left-asleep", () => m.Sleep(channel), cpu: 1);
            Sim.WaitUntil(() => m.SleepingThreads == 1, "the thread sleeps");
            throw new InvalidTimeZoneException("the test's own failure");
        });

        Assert.That(failure!.Message, Is.EqualTo("the test's own failure"));
        Assert.That(machine!.NativeBytes, Is.Zero);
        Assert.That(machine.StoppedAtDispose, Has.Count.EqualTo(1));
    }

    [Test]
    public void RunWithATimeoutThrowsWhenTheBodyDoesNotEndAndDisposeStopsIt()
    {
        var m = new SimMachine(Sim.Small());
        object channel = new();

        Assert.That(() => m.Run(0, () => m.Sleep(channel), TimeSpan.FromMilliseconds(200)), Throws.TypeOf<TimeoutException>());
        Assert.That(() => m.Run(1, () => { }, TimeSpan.FromSeconds(20)), Throws.Nothing, "a body that ends in time returns");
        m.Dispose();
        Assert.That(m.NativeBytes, Is.Zero);
        Assert.That(m.StoppedAtDispose, Has.Count.EqualTo(1));
    }

    [Test]
    public void AnExceptionInAThreadHoldingSfBufsAndALockIsReportedAndDisposeReclaimsEverything()
    {
        long processBefore = NativeLedger.ProcessOutstandingBytes;
        var m = new SimMachine(Sim.Small());
        var mutex = new KMutex("subsystem");
        var thrower = m.StartThread("thrower", () =>
        {
            mutex.Lock();
            m.KernelPmap.KEnter(m.Layout.KernelMap.Start, Sim.NewPage(m, 7));
            throw new InvalidTimeZoneException("kernel bug while holding a lock");
        }, cpu: 0);
        Assert.That(() => thrower.Join(Sim.Patience), Throws.TypeOf<InvalidTimeZoneException>());
        var waiter = m.StartThread("waits-for-the-lock", mutex.Lock, cpu: 1);
        Sim.WaitUntil(() => waiter.Cpu == null, "the waiter blocks on the orphaned lock");

        Assert.That(m.Faults.Select(f => f.Thread), Is.EqualTo(new[] { thrower }));
        Assert.That(m.Faults[0].Fault, Is.TypeOf<InvalidTimeZoneException>());
        m.Dispose();
        Assert.That(m.NativeBytes, Is.Zero);
        Assert.That(NativeLedger.ProcessOutstandingBytes, Is.EqualTo(processBefore));
        Assert.That(waiter.Fault, Is.TypeOf<MachineStoppedException>());
    }

    [Test]
    public void MetricsCallbacksAfterDisposeReadNothingOfTheFreedMachine()
    {
        var observed = new List<(string Name, long Value)>();
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == MachineMetrics.MeterName || instrument.Meter.Name.StartsWith("SfBuf", StringComparison.Ordinal))
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, _, _) => observed.Add((instrument.Name, value)));
        listener.SetMeasurementEventCallback<int>((instrument, value, _, _) => observed.Add((instrument.Name, value)));
        listener.Start();

        var m = new SimMachine(Sim.Small());
        using var mapper = Native.SfBufNative.SfBufMapper.Create(Native.SfBufNative.SfBufMapper.I386, m, 8);
        var page = Sim.NewPage(m, 1);
        m.Run(0, () => mapper.Free(mapper.Alloc(page)));
        listener.RecordObservableInstruments();
        Assert.That(observed.Where(o => o.Name == "machine.context_switches").Sum(o => o.Value), Is.GreaterThan(0), "a live machine is observed");
        mapper.Dispose();
        m.Dispose();

        // Callbacks the listener still holds for the disposed machine must not touch its freed counters.
        observed.Clear();
        for (int i = 0; i < 3; i++)
        {
            listener.RecordObservableInstruments();
        }

        Assert.That(observed.Where(o => o.Name.StartsWith("machine.", StringComparison.Ordinal)), Is.Empty);
        Assert.That(observed.Where(o => o.Name == "total.context_switches").Sum(o => o.Value), Is.GreaterThan(0), "the totals keep the retired counts");
    }

    [TestCaseSource(typeof(AllStrategies), nameof(AllStrategies.Names))]
    public void AStrategysInstrumentsReadNothingOnceItsMachineIsGone(string strategy)
    {
        // A strategy's counts live in its machine's native memory (per-CPU counts, generations,
        // object tables): disposed before the mapper, the machine takes them with it.
        var observed = new List<string>();
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == MachineMetrics.MeterName)
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, _, tags, _) =>
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "strategy" && Equals(tag.Value, strategy))
                {
                    observed.Add(instrument.Name);
                }
            }
        });
        listener.Start();

        var m = new SimMachine(Sim.Small() with { Flavor = Native.SfBufNative.SfBufMapper.Describe(strategy).Flavor });
        var mapper = Native.SfBufNative.SfBufMapper.Create(strategy, m);
        var page = Sim.NewPage(m, 1);
        m.Run(0, () => mapper.Free(mapper.Alloc(page)));
        listener.RecordObservableInstruments();
        Assert.That(observed, Does.Contain("sfbuf.nsfbufsused"), "a live strategy is observed");

        m.Dispose();
        observed.Clear();
        listener.RecordObservableInstruments();
        Assert.That(observed.Where(name => name.StartsWith("sfbuf.", StringComparison.Ordinal)), Is.Empty, "nothing is read of the freed machine");
        mapper.Dispose();
        listener.RecordObservableInstruments();
    }

    [Test]
    public void AListenerSamplingWhileMachinesComeAndGoNeverReadsFreedMemory()
    {
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        long samples = 0;
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == MachineMetrics.MeterName)
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((_, _, _, _) => Interlocked.Increment(ref samples));
        listener.Start();
        using var stop = new CancellationTokenSource();
        var sampler = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                listener.RecordObservableInstruments();
            }
        });

        for (int i = 0; i < 30; i++)
        {
            using var m = new SimMachine(Sim.Small());
            m.Run(i % 2, () => m.CurrentCpu.Poll());
        }

        stop.Cancel();
        sampler.Wait();
        Assert.That(Interlocked.Read(ref samples), Is.GreaterThan(0));
    }

    [Test]
    public void AThreadThatThrowsHasExitedAndJoinRethrowsItsException()
    {
        using var m = new SimMachine(Sim.Small());
        var td = m.StartThread("thrower", () => throw new InvalidTimeZoneException("from the kernel thread"), cpu: 0);

        Assert.That(() => td.Join(Sim.Patience), Throws.TypeOf<InvalidTimeZoneException>().With.Message.EqualTo("from the kernel thread"));
        Assert.That(td.HasExited, Is.True);
        Assert.That(td.Fault, Is.TypeOf<InvalidTimeZoneException>());
        Assert.That(m.Cpus[0].IsIdle, Is.True, "a thread that throws still gives its CPU back");
        Assert.That(m.LiveThreads(), Is.Empty);
    }
}
