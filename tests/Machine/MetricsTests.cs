using System.Diagnostics.Metrics;
using System.Diagnostics.Tracing;
using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>The counters seen through System.Diagnostics.Metrics and the trace events.</summary>
[TestFixture]
[NonParallelizable]
public sealed class MetricsTests
{
    [Test]
    public void AMeterListenerObservesTlbMissesPerCpuEqualToTheCounterSnapshot()
    {
        var preexisting = new HashSet<Meter>();
        var published = new List<Instrument>();
        var observed = new Dictionary<(string Name, int Cpu), long>();
        bool booted = false;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            // Per-machine instruments only; the process totals are covered below.
            if (instrument.Meter.Name != "SfBufNative" || !instrument.Name.StartsWith("machine.", StringComparison.Ordinal))
            {
                return;
            }

            if (!booted)
            {
                preexisting.Add(instrument.Meter); // a machine another test left alive: not ours
                return;
            }

            published.Add(instrument);
            l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            int cpu = -1;
            foreach (var tag in tags)
            {
                if (tag.Key == "cpu")
                {
                    cpu = (int)tag.Value!;
                }
            }

            observed[(instrument.Name, cpu)] = value;
        });
        listener.Start();

        booted = true;
        using var m = new SimMachine(Sim.Small());
        var pages = Enumerable.Range(0, 8).Select(i => Sim.NewPage(m, (ulong)i)).ToArray();
        ulong va = m.Layout.KernelMap.Start;
        m.Run(0, () =>
        {
            for (int i = 0; i < 3; i++)
            {
                m.KernelPmap.KEnter(va + ((ulong)i << Pte.PageShift), pages[i]);
                m.CurrentCpu.ReadUInt64(va + ((ulong)i << Pte.PageShift));
            }
        });
        m.Run(1, () =>
        {
            for (int i = 3; i < 8; i++)
            {
                m.KernelPmap.KEnter(va + ((ulong)i << Pte.PageShift), pages[i]);
                m.CurrentCpu.ReadUInt64(va + ((ulong)i << Pte.PageShift));
                m.CurrentCpu.ReadUInt64(va + ((ulong)i << Pte.PageShift));
            }
        });

        listener.RecordObservableInstruments();
        var snapshot = m.Counters();

        Assert.That(published.Select(i => i.Name), Is.EquivalentTo(CounterNames.All.Select(c => "machine." + CounterNames.Of(c))));
        Assert.That(published, Has.All.Matches<Instrument>(i => i!.IsObservable));
        Assert.That(observed[("machine.tlb_misses", 0)], Is.EqualTo(3));
        Assert.That(observed[("machine.tlb_misses", 1)], Is.EqualTo(5));
        for (int cpu = 0; cpu < 2; cpu++)
        {
            Assert.That(observed[("machine.tlb_misses", cpu)], Is.EqualTo(snapshot.OnCpu(cpu, Counter.TlbMisses)), $"cpu {cpu}");
            Assert.That(observed[("machine.tlb_hits", cpu)], Is.EqualTo(snapshot.OnCpu(cpu, Counter.TlbHits)), $"cpu {cpu}");
            Assert.That(observed[("machine.pte_writes", cpu)], Is.EqualTo(snapshot.OnCpu(cpu, Counter.KernelPteWrites)), $"cpu {cpu}");
        }

        Assert.That(observed.Keys.Where(k => k.Name == "machine.tlb_misses").Select(k => k.Cpu), Is.EquivalentTo(new[] { 0, 1 }));
        Assert.That(published.Single(i => i.Name == "machine.ack_wait_ns").Unit, Is.EqualTo("ns"));
    }

    [Test]
    public void AShootdownEmitsBeginAndEndTraceEvents()
    {
        using var events = new ShootdownEvents();
        using var m = new SimMachine(Sim.Small(cpus: 3));
        ulong va = m.Layout.KernelMap.PageAddress(7);

        m.Run(2, () => m.CurrentCpu.Shootdown(CpuSet.Of(0, 1), ShootdownKind.Page, va));

        var mine = events.Snapshot().Where(e => e.Payload is { Count: > 0 } p && p[0] is int cpu && cpu == 2).ToList();
        Assert.That(mine.Select(e => e.EventId), Is.EqualTo(new[] { 1, 2 }));
        Assert.That(mine[0].Payload![1], Is.EqualTo(0b011L), "the target cpumask (its first word)");
        Assert.That(mine[0].Payload![3], Is.EqualTo((long)va));
        Assert.That(mine[1].Payload![1], Is.EqualTo(2), "two targets");
    }

    private sealed class ShootdownEvents : EventListener
    {
        private readonly List<EventWrittenEventArgs> _events = [];

        public List<EventWrittenEventArgs> Snapshot()
        {
            lock (_events)
            {
                return [.. _events];
            }
        }

        protected override void OnEventSourceCreated(EventSource eventSource)
        {
            if (eventSource.Name == "SfBufNative")
            {
                EnableEvents(eventSource, EventLevel.Verbose, (EventKeywords)1);
            }
        }

        protected override void OnEventWritten(EventWrittenEventArgs eventData)
        {
            lock (_events)
            {
                _events.Add(eventData);
            }
        }
    }

    [Test]
    public void ProcessTotalsKeepADisposedMachinesCounts()
    {
        long Total()
        {
            long sum = 0;
            using var listener = new MeterListener();
            listener.InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == "SfBufNative" && instrument.Name == "total.tlb_misses")
                {
                    l.EnableMeasurementEvents(instrument);
                }
            };
            listener.SetMeasurementEventCallback<long>((_, value, _, _) => sum += value);
            listener.Start();
            listener.RecordObservableInstruments();
            return sum;
        }

        // Booting one machine first guarantees the process-wide instruments exist.
        using (new SimMachine(Sim.Small()))
        {
        }

        long before = Total();
        long misses;
        using (var m = new SimMachine(Sim.Small()))
        {
            var page = Sim.NewPage(m, 7);
            ulong va = m.Layout.KernelMap.Start;
            m.Run(0, () =>
            {
                m.KernelPmap.KEnter(va, page);
                m.CurrentCpu.ReadUInt64(va);
            });
            misses = m.Counters()[Counter.TlbMisses];
        }

        Assert.That(misses, Is.GreaterThan(0));
        Assert.That(Total() - before, Is.EqualTo(misses), "the disposed machine's misses stay in the process total");
    }
}
