using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>
/// Shootdowns delivered by broadcast invalidation hardware (<see cref="ShootdownMechanism.Broadcast"/>):
/// exact counts of instructions, pages and completion waits, no IPI and no handler, targets that
/// no longer translate the old page, the virtual-time clock rule, and a planted bug the oracle catches.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class BroadcastShootdownTests
{
    private const ulong OldMarker = 0x0101_0101_0101_0101;
    private const ulong NewMarker = 0x0202_0202_0202_0202;

    private static CostModel P => CostModel.Default;

    private static MachineOptions Real(int cpus, ShootdownMechanism mechanism = ShootdownMechanism.Broadcast) =>
        Sim.Small(cpus) with { Shootdown = mechanism };

    private static MachineOptions Virtual(int cpus) => Sim.Small(cpus) with
    {
        Shootdown = ShootdownMechanism.Broadcast,
        Time = MachineTime.Virtual,
        Cost = P,
    };

    /// <summary>Polls (a spin turn each) until <paramref name="condition"/> holds; a bounded number of turns.</summary>
    private static void PollUntil(SimMachine m, Func<bool> condition)
    {
        for (int turn = 0; !condition(); turn++)
        {
            if (turn > 10_000_000)
            {
                throw new InvalidOperationException("the condition never held");
            }

            m.CurrentCpu.Poll();
        }
    }

    /// <summary>
    /// Maps <paramref name="pages"/> old pages at the start of kernel_map, lets every other CPU's
    /// thread cache them and wait, remaps them to new pages on CPU 0, shoots them down with
    /// <paramref name="kind"/>, and has each target check it no longer holds an old translation.
    /// </summary>
    private static (CounterSnapshot Shot, long[] TargetClocksBefore, long[] TargetClocksAfter, long InitiatorNs) RemapAndShoot(
        SimMachine m, ShootdownKind kind, int pages)
    {
        ulong va = m.Layout.KernelMap.Start;
        var newPages = new VmPage[pages];
        for (int i = 0; i < pages; i++)
        {
            m.Run(0, () => m.KernelPmap.KEnter(va + (ulong)(i * Pte.PageSize), Sim.NewPage(m, OldMarker)));
            newPages[i] = Sim.NewPage(m, NewMarker);
        }

        int n = m.Cpus.Count;
        int cached = 0;
        var shot = new Flag();
        var stillHeld = new int[n];
        var read = new ulong[n];
        var targets = Enumerable.Range(1, n - 1).Select(cpu => m.StartThread($"target{cpu}", () =>
        {
            var c = m.CurrentCpu;
            for (int i = 0; i < pages; i++)
            {
                Assert.That(c.ReadUInt64(va + (ulong)(i * Pte.PageSize)), Is.EqualTo(OldMarker));
            }

            Interlocked.Increment(ref cached);
            PollUntil(m, () => shot.IsSet);
            for (int i = 0; i < pages; i++)
            {
                stillHeld[cpu] += c.TestHookTlbHolds(va + (ulong)(i * Pte.PageSize)) ? 1 : 0;
            }

            read[cpu] = c.ReadUInt64(va);
        }, cpu: cpu, bound: true)).ToArray();

        var before = new long[n];
        var after = new long[n];
        long initiatorNs = 0;
        CounterSnapshot? start = null, end = null;
        var initiator = m.StartThread("initiator", () =>
        {
            var c = m.CurrentCpu;
            PollUntil(m, () => Volatile.Read(ref cached) == n - 1);
            for (int i = 0; i < pages; i++)
            {
                m.KernelPmap.KEnter(va + (ulong)(i * Pte.PageSize), newPages[i]);
            }

            start = m.Counters();
            for (int t = 0; t < n; t++)
            {
                before[t] = m.Cpus[t].VirtualTimeNs;
            }

            c.Shootdown(m.AllCpusMask, kind, va, pages, serialize: false);
            for (int t = 0; t < n; t++)
            {
                after[t] = m.Cpus[t].VirtualTimeNs;
            }

            initiatorNs = after[0] - before[0];
            end = m.Counters();
            shot.Set();
        }, cpu: 0, bound: true);
        Sim.Join([initiator, .. targets]);

        Assert.That(stillHeld, Is.All.EqualTo(0), "no target still translates an old page");
        Assert.That(read.Skip(1), Is.All.EqualTo(NewMarker), "every target reads the new page");
        var d = m.Counters();
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        Assert.That(d[Counter.LatentStaleAccesses], Is.Zero);
        return (end! - start!, before, after, initiatorNs);
    }

    private static void AssertNoIpis(CounterSnapshot d)
    {
        Assert.That(d[Counter.IpisSent], Is.Zero);
        Assert.That(d[Counter.IpisReceived], Is.Zero, "no handler ran");
        Assert.That(d[Counter.IpiTargets], Is.Zero);
        Assert.That(d[Counter.IpiInvalidations], Is.Zero);
        Assert.That(d[Counter.ShootdownTargetPages], Is.Zero);
    }

    [Test]
    public void OnePageToARunningTargetIsOneInstructionAndOneWaitWithNoIpi([Values(MachineTime.Real, MachineTime.Virtual)] MachineTime time)
    {
        using var m = new SimMachine(time == MachineTime.Real ? Real(2) : Virtual(2));
        var (d, _, _, _) = RemapAndShoot(m, ShootdownKind.Page, 1);

        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(1));
        Assert.That(d[Counter.BroadcastInvalidations], Is.EqualTo(1));
        Assert.That(d[Counter.BroadcastPages], Is.EqualTo(1));
        Assert.That(d[Counter.BroadcastSyncs], Is.EqualTo(1));
        Assert.That(d[Counter.BroadcastTargets], Is.EqualTo(1));
        Assert.That(d[Counter.IdleTargetsDeferred], Is.Zero);
        Assert.That(d.OnCpu(1, Counter.LocalInvalidations), Is.Zero, "the hardware, not the target, invalidated");
        AssertNoIpis(d);
    }

    [Test]
    public void ARangeOfTenPagesToThreeRunningTargetsIsTwoInstructionsOfAtMostEightPages([Values(MachineTime.Real, MachineTime.Virtual)] MachineTime time)
    {
        using var m = new SimMachine(time == MachineTime.Real ? Real(4) : Virtual(4));
        var (d, _, _, _) = RemapAndShoot(m, ShootdownKind.Range, 10);

        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(1));
        Assert.That(d[Counter.BroadcastInvalidations], Is.EqualTo(2), "ceil(10 / 8)");
        Assert.That(d[Counter.BroadcastPages], Is.EqualTo(10));
        Assert.That(d[Counter.BroadcastSyncs], Is.EqualTo(1));
        Assert.That(d[Counter.BroadcastTargets], Is.EqualTo(3));
        AssertNoIpis(d);
    }

    [Test]
    public void TheSameRangeByIpiInterruptsEveryTargetAndCountsNoBroadcast()
    {
        using var m = new SimMachine(Real(4, ShootdownMechanism.Ipi));
        var (d, _, _, _) = RemapAndShoot(m, ShootdownKind.Range, 10);

        Assert.That(d[Counter.IpisSent], Is.EqualTo(3));
        Assert.That(d[Counter.IpisReceived], Is.EqualTo(3));
        Assert.That(d[Counter.IpiTargets], Is.EqualTo(3));
        Assert.That(d[Counter.IpiInvalidations], Is.EqualTo(30));
        Assert.That(d[Counter.BroadcastInvalidations] + d[Counter.BroadcastPages] + d[Counter.BroadcastSyncs] + d[Counter.BroadcastTargets], Is.Zero);
    }

    [Test]
    public void VirtualTimeAdvancesTheInitiatorByTheIssuesAndTheWaitAndNoTargetClock()
    {
        using var m = new SimMachine(Virtual(3));
        var (d, before, after, initiatorNs) = RemapAndShoot(m, ShootdownKind.Range, 20);

        Assert.That(d[Counter.BroadcastInvalidations], Is.EqualTo(3), "ceil(20 / 8)");
        Assert.That(initiatorNs, Is.EqualTo((3 * (long)P.BroadcastIssueNs) + (long)P.BroadcastSyncNs));
        Assert.That(d.OnCpu(0, Counter.ChargedNanoseconds), Is.EqualTo(initiatorNs), "the issues and the wait are all the initiator was charged");
        Assert.That(after[1], Is.EqualTo(before[1]), "a running target's clock does not move");
        Assert.That(after[2], Is.EqualTo(before[2]));
        Assert.That(d.OnCpu(1, Counter.ChargedNanoseconds) + d.OnCpu(2, Counter.ChargedNanoseconds), Is.Zero);
        AssertNoIpis(d);
    }

    [Test]
    public void RealTimeChargesTheInitiatorTheIssuesAndTheWaitAndNoTarget()
    {
        using var m = new SimMachine(Real(3) with { Cost = P });
        var (d, _, _, _) = RemapAndShoot(m, ShootdownKind.Range, 20);

        Assert.That(d[Counter.BroadcastInvalidations], Is.EqualTo(3));
        Assert.That(d.OnCpu(0, Counter.ChargedNanoseconds), Is.EqualTo((3 * (long)P.BroadcastIssueNs) + (long)P.BroadcastSyncNs),
            "busy-waited: the issues, then at least the completion price");
        Assert.That(d.OnCpu(1, Counter.ChargedNanoseconds) + d.OnCpu(2, Counter.ChargedNanoseconds), Is.Zero, "no handler, no invalidation charged to a target");
        AssertNoIpis(d);
    }

    [Test]
    public void AnIdleTargetIsNotWaitedForAndFlushesWhenItNextRunsUnpriced([Values(MachineTime.Real, MachineTime.Virtual)] MachineTime time)
    {
        using var m = new SimMachine(time == MachineTime.Real ? Real(2) : Virtual(2));
        ulong va = m.Layout.KernelMap.Start;
        m.Run(0, () => m.KernelPmap.KEnter(va, Sim.NewPage(m, OldMarker)));
        var newPage = Sim.NewPage(m, NewMarker);
        m.Run(1, () => Assert.That(m.CurrentCpu.ReadUInt64(va), Is.EqualTo(OldMarker)));
        Assert.That(m.Cpus[1].IsIdle, Is.True);
        long idleClock = m.Cpus[1].VirtualTimeNs;

        var start = m.Counters();
        long took = 0;
        m.Run(0, () =>
        {
            m.KernelPmap.KEnter(va, newPage);
            long t0 = m.CurrentCpu.VirtualTimeNs;
            m.CurrentCpu.Shootdown(m.Cpus[1].Mask, ShootdownKind.Page, va);
            took = m.CurrentCpu.VirtualTimeNs - t0;
        });
        var shot = m.Counters() - start;

        Assert.That(shot[Counter.IdleTargetsDeferred], Is.EqualTo(1));
        Assert.That(shot[Counter.BroadcastSyncs], Is.EqualTo(1));
        Assert.That(shot[Counter.BroadcastTargets], Is.EqualTo(1));
        Assert.That(shot.OnCpu(1, Counter.FullFlushes), Is.Zero, "an idle CPU does nothing until it runs");
        Assert.That(m.Cpus[1].TestHookOwedNanoseconds(), Is.Zero, "the hardware charges the target nothing");
        Assert.That(m.Cpus[1].VirtualTimeNs, Is.EqualTo(idleClock));
        if (time == MachineTime.Virtual)
        {
            Assert.That(took, Is.EqualTo((long)(P.BroadcastIssueNs + P.BroadcastSyncNs)));
        }

        bool held = true;
        ulong read = 0;
        m.Run(1, () =>
        {
            held = m.CurrentCpu.TestHookTlbHolds(va);
            read = m.CurrentCpu.ReadUInt64(va);
        });
        var all = m.Counters() - start;
        Assert.That(held, Is.False, "the deferred flush ran before the thread");
        Assert.That(read, Is.EqualTo(NewMarker));
        Assert.That(all.OnCpu(1, Counter.IpiFlushes), Is.EqualTo(1));
        AssertNoIpis(all);
        Assert.That(all[Counter.StaleAccesses] + all[Counter.LatentStaleAccesses], Is.Zero);
    }

    [Test]
    public void AFullFlushIsOneInstructionCoveringNoNamedPage()
    {
        using var m = new SimMachine(Real(3));
        var (d, _, _, _) = RemapAndShoot(m, ShootdownKind.All, 1);

        Assert.That(d[Counter.BroadcastInvalidations], Is.EqualTo(1));
        Assert.That(d[Counter.BroadcastPages], Is.Zero);
        Assert.That(d[Counter.BroadcastSyncs], Is.EqualTo(1));
        Assert.That(d.OnCpu(1, Counter.IpiFlushes) + d.OnCpu(2, Counter.IpiFlushes), Is.EqualTo(2), "each running target's TLB was flushed");
        AssertNoIpis(d);
    }

    [Test]
    public void ABroadcastThatSkipsATargetLeavesItAStaleTranslationTheOracleCatches([Values(MachineTime.Real, MachineTime.Virtual)] MachineTime time)
    {
        using var m = new SimMachine(time == MachineTime.Real ? Real(2) : Virtual(2));
        m.TestHookPlant(PlantedBug.BroadcastSkipsOneTarget);
        var error = Assert.Catch(() => RemapAndShoot(m, ShootdownKind.Page, 1));

        Assert.That(error, Is.InstanceOf<StaleTranslationException>().Or.InnerException.InstanceOf<StaleTranslationException>(), error?.ToString());
        Assert.That(m.Counters().OnCpu(1, Counter.StaleAccesses), Is.EqualTo(1));
    }

    [Test]
    public void TheModelledCostOfABroadcastRoundIsItsInstructionsAndItsWait()
    {
        var counts = new Dictionary<Counter, long>
        {
            [Counter.ShootdownRounds] = 2,
            [Counter.BroadcastSyncs] = 2,
            [Counter.BroadcastInvalidations] = 3,
            [Counter.BroadcastTargets] = 6,
        };
        var cost = MappingCost.Of(c => counts.GetValueOrDefault(c), P);
        Assert.That(cost.ShootdownNs, Is.EqualTo((3 * P.BroadcastIssueNs) + (2 * P.BroadcastSyncNs)));

        // An IPI round is priced as before: the new prices do not enter it.
        var ipi = new Dictionary<Counter, long> { [Counter.ShootdownRounds] = 1, [Counter.IpiTargets] = 1, [Counter.ShootdownTargetPages] = 1 };
        Assert.That(MappingCost.Of(c => ipi.GetValueOrDefault(c), P).ShootdownNs,
            Is.EqualTo(P.IpiDeliveryNs + P.IpiHandlerNs + P.IpiSendNs + P.IpiHandlerNs + P.LocalInvalidateNs));
    }
}
