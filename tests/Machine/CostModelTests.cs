using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>
/// The cost model's one rule for shootdowns, checked through what the machine charged
/// (<see cref="Counter.ChargedNanoseconds"/>, a count, not a timing), under a profile whose
/// charges are distinct powers of two so that every sum says which charges it holds.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class CostModelTests
{
    /// <summary>invlpg 1, flush 2, walk 4, PTE write 8, send 16, delivery 32, handler 64 (ns).</summary>
    private static readonly CostModel s_distinct = new("distinct", 1, 2, 4, 8, 16, 32, 64, "test profile: each charge its own power of two");

    private static MachineOptions Options(int cpus = 2) => Sim.Small(cpus) with { Cost = s_distinct };

    [TestCase(ShootdownKind.Page, 1, 1L)]
    [TestCase(ShootdownKind.Range, 3, 3L)]
    [TestCase(ShootdownKind.All, 1, 2L)]
    public void ARunningAndAnIdleTargetAreChargedByTheSameRule(ShootdownKind kind, int pages, long work)
    {
        // Initiator: a send per target, then the round trip (delivery + handler). Target: the
        // handler and the invalidation it was asked for (1 ns per page, or a 2 ns flush).
        long initiator = 16 + 32 + 64;
        long target = 64 + work;

        var running = ShootAtCpu1(kind, pages, targetRunning: true);
        var idle = ShootAtCpu1(kind, pages, targetRunning: false);

        Assert.That(running.Initiator, Is.EqualTo(initiator), "initiator, running target");
        Assert.That(idle.Initiator, Is.EqualTo(initiator), "initiator, idle target");
        Assert.That(running.Target, Is.EqualTo(target), "a running target pays in its handler");
        Assert.That(idle.Target, Is.EqualTo(target), "an idle target pays the same when it next runs");
        Assert.That(running.IpisSent, Is.EqualTo(1));
        Assert.That(idle.IpisSent, Is.Zero, "the idle target was deferred, not interrupted");
    }

    [Test]
    public void ACpuParkedInACrossCpuWaitOnAnOversubscribedMachineIsChargedByTheSameRule()
    {
        // Oversubscribed, a parked wait publishes its CPU idle: a shootdown then defers to it, and
        // it pays the handler and its invalidation when the park ends, as any idle target does.
        int cpus = Native.Interop.HostCpu.AllowedCpus().Length + 1;
        Assume.That(cpus, Is.LessThanOrEqualTo(MachineOptions.MaxCpus), "the host has more cores than a machine may have CPUs");
        using var m = new SimMachine(Options(cpus));
        Assume.That(m.Oversubscribed, Is.True);
        ulong va = m.Layout.KernelMap.Start;
        var locked = new Flag();
        var waiter = m.StartThread("waiter", () =>
        {
            Sim.SpinOnCpu(m, () => locked.IsSet, "smp_ipi_mtx is held");
            m.SmpIpiMutex.Lock(); // spins, then parks with its CPU published idle
            m.SmpIpiMutex.Unlock();
        }, cpu: 1, bound: true);
        CounterSnapshot? before = null;
        int rounds = 0;
        var holder = m.StartThread("holder", () =>
        {
            m.SmpIpiMutex.Lock();
            locked.Set();
            Sim.SpinOnCpu(m, () => m.Counters().OnCpu(1, Counter.CrossCpuParks) > 0 && m.Cpus[1].IsIdle, "cpu 1 parks");
            before = m.Counters();
            while (rounds < 100 && m.Counters().OnCpu(0, Counter.IdleTargetsDeferred) == before.OnCpu(0, Counter.IdleTargetsDeferred))
            {
                m.CurrentCpu.Shootdown(m.Cpus[1].Mask, ShootdownKind.Page, va, serialize: false);
                rounds++;
            }

            m.SmpIpiMutex.Unlock();
        }, cpu: 0, bound: true);
        Sim.Join(holder, waiter);

        var d = m.Counters() - before!;
        long owed = m.Cpus[1].TestHookOwedNanoseconds(); // deferred after the wake-up: paid at its next flush
        Assert.That(d.OnCpu(0, Counter.IdleTargetsDeferred), Is.EqualTo(1), "a round found the parked CPU idle");
        Assert.That(d[Counter.IpisSent] + d[Counter.IdleTargetsDeferred], Is.EqualTo(rounds));
        Assert.That(d.OnCpu(0, Counter.ChargedNanoseconds), Is.EqualTo(rounds * (16 + 32 + 64)), "initiator: send and round trip per round");
        Assert.That(d.OnCpu(1, Counter.ChargedNanoseconds) + owed, Is.EqualTo(rounds * (64 + 1)), "target: handler and invlpg per round, IPI'd or deferred");
        Assert.That(d[Counter.StaleAccesses] + d[Counter.LatentStaleAccesses], Is.Zero);
    }

    [TestCase(true)]
    [TestCase(false)]
    public void TheModelledMappingCostIsWhatTheMachineChargedForTheMappings(bool otherCpuRunning)
    {
        // original on 2 CPUs: per mapping a PTE write and a clear, two local invlpgs, two broadcast
        // rounds, and the walk of the first access; nothing else runs, so the machine charged
        // exactly the mapping machinery.
        const int Mappings = 20;
        using var m = new SimMachine(Options());
        using var mapper = SfBufMapper.Create(SfBufMapper.Original, m);
        var pages = Enumerable.Range(0, Mappings).Select(i => Sim.NewPage(m, (ulong)i)).ToArray();
        var stop = new Flag();
        var poller = otherCpuRunning
            ? m.StartThread("poller", () => Sim.SpinOnCpu(m, () => stop.IsSet, "stopped"), cpu: 1, bound: true)
            : null;
        var before = m.Counters();
        m.Run(0, () =>
        {
            foreach (var page in pages)
            {
                var sf = mapper.Alloc(page);
                m.CurrentCpu.ReadUInt64(sf.Kva);
                mapper.Free(sf);
            }
        });
        stop.Set();
        if (poller != null)
        {
            Sim.Join(poller);
        }
        else
        {
            m.Run(1, () => { }); // cpu 1 runs once more and pays what it was asked while idle
        }

        var d = m.Counters() - before;
        var modelled = MappingCost.Of(d, s_distinct);
        Assert.That(d[Counter.Mappings], Is.EqualTo(Mappings));
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(2 * Mappings));
        Assert.That(d[Counter.MappingTlbMisses], Is.EqualTo(Mappings));
        Assert.That(modelled.TotalNs, Is.EqualTo(d[Counter.ChargedNanoseconds]));
        Assert.That(modelled.PteNs, Is.EqualTo(8.0 * 2 * Mappings));
        Assert.That(modelled.InvalidationNs, Is.EqualTo(1.0 * 2 * Mappings), "own invlpgs only");
        Assert.That(modelled.ShootdownNs, Is.EqualTo(2.0 * Mappings * ((32 + 64) + (16 + 64 + 1))));
        Assert.That(modelled.WalkNs, Is.EqualTo(4.0 * Mappings));
    }

    [Test]
    public void TheModelIsTheSameForARunningAndAnIdleTarget()
    {
        // Deterministic counts: whether cpu 1 was running or idle changes the IPIs and flushes it
        // did, not the modelled cost.
        var costs = new List<double>();
        foreach (bool running in new[] { true, false })
        {
            using var m = new SimMachine(Sim.Small());
            var page = Sim.NewPage(m, 7);
            var stop = new Flag();
            var poller = running ? m.StartThread("poller", () => Sim.SpinOnCpu(m, () => stop.IsSet, "stopped"), cpu: 1, bound: true) : null;
            var before = m.Counters();
            m.Run(0, () =>
            {
                m.KernelPmap.QEnter(m.Layout.KernelMap.Start, [page]);
                m.KernelPmap.QRemove(m.Layout.KernelMap.Start, 1);
            });
            stop.Set();
            if (poller != null)
            {
                Sim.Join(poller);
            }

            var d = m.Counters() - before;
            Assert.That(d[Counter.IpisSent] + d[Counter.IdleTargetsDeferred], Is.EqualTo(2));
            costs.Add(MappingCost.Of(d, CostModel.Default).TotalNs);
        }

        Assert.That(costs[1], Is.EqualTo(costs[0]));
        Assert.That(costs[0], Is.GreaterThan(0));
    }

    private static (long Initiator, long Target, long IpisSent) ShootAtCpu1(ShootdownKind kind, int pages, bool targetRunning)
    {
        using var m = new SimMachine(Options());
        ulong va = m.Layout.KernelMap.Start;
        var stop = new Flag();
        var poller = targetRunning
            ? m.StartThread("target", () => Sim.SpinOnCpu(m, () => stop.IsSet, "stopped"), cpu: 1, bound: true)
            : null;
        if (targetRunning)
        {
            Sim.WaitUntil(() => !m.Cpus[1].IsIdle, "cpu 1 runs its thread");
        }

        var before = m.Counters();
        m.Run(0, () => m.CurrentCpu.Shootdown(m.Cpus[1].Mask, kind, va, pages));
        stop.Set();
        if (poller != null)
        {
            Sim.Join(poller);
        }
        else
        {
            Assert.That(m.Cpus[1].IsIdle, Is.True, "cpu 1 stayed idle through the shootdown");
            m.Run(1, () => { });
        }

        var d = m.Counters() - before;
        return (d.OnCpu(0, Counter.ChargedNanoseconds), d.OnCpu(1, Counter.ChargedNanoseconds), d[Counter.IpisSent]);
    }
}
