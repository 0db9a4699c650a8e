using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>Shootdown rounds carry a generation; a watchdog timeout fails the machine; teardown waits keep answering IPIs.</summary>
[TestFixture]
[NonParallelizable]
public sealed class ShootdownRoundTests
{
    [Test]
    public void AWatchdogTimeoutFailsTheMachineAndALateAcknowledgementIsIgnored()
    {
        var m = new SimMachine(Sim.Small() with { ShootdownWatchdog = TimeSpan.FromMilliseconds(200) });
        using var hostEvent = new ManualResetEventSlim(false);
        var blocking = new Flag();
        var stuck = m.StartThread("stuck", () =>
        {
            blocking.Set();
            hostEvent.Wait(Sim.Patience); // blocks its host thread without giving the CPU up: a bug
        }, cpu: 1, bound: true);
        Sim.WaitUntil(() => blocking.IsSet, "the stuck thread blocks");

        Exception? first = null;
        m.Run(0, () =>
        {
            first = Assert.Catch(() => m.CurrentCpu.Shootdown(m.Cpus[1].Mask, ShootdownKind.Page, m.Layout.KernelMap.Start));
            Assert.That(m.TestHookAckWord(0), Is.EqualTo((2u, 0u)), "the abandoned round 1 was closed: round 2 owes nothing");
        });

        // The target lets go late and services the old request: its acknowledgement names round 1.
        hostEvent.Set();
        Sim.Join(stuck);

        Assert.That(first, Is.TypeOf<ShootdownTimeoutException>());
        Assert.That(m.Counters().OnCpu(1, Counter.IpisReceived), Is.EqualTo(1), "the late target serviced the request");
        Assert.That(m.TestHookAckWord(0), Is.EqualTo((2u, 0u)), "the late acknowledgement was ignored, not counted against a later round");
        Assert.That(m.Failure, Is.SameAs(first));
        Assert.That(() => m.Run(0, () => { }), Throws.TypeOf<MachineFailedException>().With.Message.Contains("failed"));
        Assert.That(() => m.CreateVmSpace(), Throws.TypeOf<MachineFailedException>());
        Assert.That(() => m.Counters(), Throws.Nothing, "the counters of a failed machine can still be read");
        m.Dispose();
        Assert.That(m.NativeBytes, Is.Zero);
    }

    [Test]
    public void AFailedMachineRefusesMemoryAccessFromThreadsAlreadyRunning()
    {
        using var m = new SimMachine(Sim.Small(cpus: 3) with { ShootdownWatchdog = TimeSpan.FromMilliseconds(100) });
        using var hostEvent = new ManualResetEventSlim(false);
        var blocking = new Flag();
        Exception? refused = null;
        var stuck = m.StartThread("stuck", () =>
        {
            blocking.Set();
            hostEvent.Wait(Sim.Patience);
        }, cpu: 1, bound: true);
        var bystander = m.StartThread("bystander", () =>
        {
            // Runs kernel code (poll points) until the machine refuses it.
            refused = Assert.Catch(() => Sim.SpinOnCpu(m, () => false, "the failure"));
        }, cpu: 2);
        Sim.WaitUntil(() => blocking.IsSet, "the stuck thread blocks");
        var initiator = m.StartThread("initiator", () =>
        {
            m.CurrentCpu.Shootdown(m.Cpus[1].Mask, ShootdownKind.All, serialize: false);
        }, cpu: 0);
        Assert.That(() => initiator.Join(Sim.Patience), Throws.TypeOf<ShootdownTimeoutException>());
        hostEvent.Set();
        Sim.Join(stuck, bystander);

        Assert.That(refused, Is.TypeOf<MachineFailedException>());
    }

    [Test]
    public void IpiCrossFireDuringAnAddressSpaceTeardownFinishes()
    {
        using var m = new SimMachine(Sim.Small() with { ShootdownWatchdog = TimeSpan.FromSeconds(5) });
        const ulong userVa = 0x40_0000;
        var space = m.CreateVmSpace();
        var inside = new Flag();
        var destroying = new Flag();
        bool lookupFoundNothing = false;

        m.Run(0, () => space.MapAnonymous(userVa, Pte.PageSize), space);

        // A foreign lookup (ptrace's pmap_extract_and_hold) on CPU 1 that, while counted, shoots
        // CPU 0 down: CPU 0 is by then waiting for foreign lookups to drain in the teardown.
        space.Pmap.TestHookInsideForeignLookup = () =>
        {
            inside.Set();
            Sim.SpinOnCpu(m, () => destroying.IsSet, "the teardown");
            var until = DateTime.UtcNow + TimeSpan.FromMilliseconds(50);
            Sim.SpinOnCpu(m, () => DateTime.UtcNow > until, "CPU 0 to reach the teardown's wait");
            m.CurrentCpu.Shootdown(m.Cpus[0].Mask, ShootdownKind.Page, m.Layout.KernelMap.Start);
        };
        var tracer = m.StartThread("tracer", () => lookupFoundNothing = space.Pmap.ExtractAndHold(userVa) == null, cpu: 1, bound: true);
        var exiting = m.StartThread("exit", () =>
        {
            Sim.SpinOnCpu(m, () => inside.IsSet, "the lookup");
            destroying.Set();
            space.Destroy();
        }, cpu: 0, bound: true);
        Sim.Join(tracer, exiting);

        Assert.That(lookupFoundNothing, Is.True, "the lookup saw the cleared page table");
        Assert.That(m.Counters().OnCpu(0, Counter.IpisReceived), Is.EqualTo(1), "the tearing-down CPU answered the IPI while it waited");
        Assert.That(m.Failure, Is.Null);
    }

    [Test]
    public void EightCpusShootingAtEachOtherOnAFewHostCoresAllFinishWithConsistentCounts()
    {
        // More simulated CPUs than host cores (on the 2-core CI host): waits park, and a parked
        // CPU is published idle, so rounds defer to it instead of waiting for its host thread.
        using var m = new SimMachine(Sim.Small(cpus: 8) with { ShootdownWatchdog = TimeSpan.FromSeconds(60) });
        ulong va = m.Layout.KernelMap.Start;
        m.Run(0, () => m.KernelPmap.KEnter(va, Sim.NewPage(m, 42)));
        const int rounds = 1000;
        var threads = Enumerable.Range(0, 8).Select(cpu => m.StartThread($"shooter{cpu}", () =>
        {
            for (int i = 0; i < rounds; i++)
            {
                if (m.CurrentCpu.ReadUInt64(va) != 42)
                {
                    throw new InvalidOperationException("the page's marker changed");
                }

                m.CurrentCpu.ShootdownAllButSelf(ShootdownKind.Page, va, serialize: (i + cpu) % 2 == 0);
            }
        }, cpu, bound: true)).ToArray();
        foreach (var td in threads)
        {
            td.Join(TimeSpan.FromMinutes(2));
        }

        var d = m.Counters();
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(8 * rounds));
        Assert.That(d[Counter.IpiTargets], Is.EqualTo(8 * rounds * 7));
        Assert.That(d[Counter.IpisSent] + d[Counter.IdleTargetsDeferred], Is.EqualTo(d[Counter.IpiTargets]));
        Assert.That(d[Counter.IpisReceived], Is.EqualTo(d[Counter.IpisSent]));
        Assert.That(d[Counter.StaleAccesses] + d[Counter.LatentStaleAccesses], Is.Zero);
        TestContext.Out.WriteLine($"oversubscribed: {m.Oversubscribed}; parks {d[Counter.CrossCpuParks]}, idle deferrals {d[Counter.IdleTargetsDeferred]}, IPIs {d[Counter.IpisSent]}");
    }
}
