using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>
/// A machine of <see cref="MachineOptions.MaxCpus"/> (256) CPUs, unpinned, with threads on a few
/// CPUs in different words of the cpumask and the rest idle: shootdowns reach running targets
/// beyond CPU 63 with exact counts, idle ones are deferred, and many senders share one mailbox.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class ManyCpusTests
{
    private const ulong OldMarker = 0x0101_0101_0101_0101;
    private const ulong NewMarker = 0x0202_0202_0202_0202;

    private static MachineOptions Wide(int cpus = MachineOptions.MaxCpus) => Sim.Small(cpus) with { PinThreads = false };

    [Test]
    public void AMachineHasUpTo256CpusAndA257thIsRefused()
    {
        Assert.That(MachineOptions.MaxCpus, Is.EqualTo(256));
        using (var m = new SimMachine(Wide(256)))
        {
            Assert.That(m.Cpus, Has.Count.EqualTo(256));
            Assert.That(m.AllCpusMask, Is.EqualTo(CpuSet.AllBelow(256)));
            Assert.That(m.Cpus[255].Mask, Is.EqualTo(CpuSet.Single(255)));
            int ran = -1;
            m.Run(255, () => ran = m.CurrentCpu.Id);
            Assert.That(ran, Is.EqualTo(255));
        }

        Assert.That(
            () => new SimMachine(Wide(257)),
            Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("1 to 256 CPUs"));
    }

    [Test]
    public void AShootdownFromCpu255InterruptsTheRunningCpusInEveryWordAndDefersTheIdleOnes()
    {
        using var m = new SimMachine(Wide());
        ulong va = m.Layout.KernelMap.Start;
        var oldPage = Sim.NewPage(m, OldMarker);
        var newPage = Sim.NewPage(m, NewMarker);
        m.Run(0, () => m.KernelPmap.KEnter(va, oldPage));

        int[] running = [0, 65, 130];
        var before = new ulong[running.Length];
        var after = new ulong[running.Length];
        var stop = new Flag();
        int ready = 0;
        var readers = running.Select((cpu, i) => m.StartThread($"reader{cpu}", () =>
        {
            before[i] = m.CurrentCpu.ReadUInt64(va); // cached: only the IPI can drop it
            Interlocked.Increment(ref ready);
            Sim.SpinOnCpu(m, () => stop.IsSet, "the shootdown is over");
            after[i] = m.CurrentCpu.ReadUInt64(va);
        }, cpu: cpu, bound: true)).ToArray();

        CounterSnapshot? d = null;
        int targeted = -1;
        try
        {
            Sim.WaitUntil(() => Volatile.Read(ref ready) == running.Length, "every reader cached the old page");
            m.Run(255, () =>
            {
                m.KernelPmap.KEnter(va, newPage);
                var start = m.Counters();
                targeted = m.CurrentCpu.Shootdown(m.AllCpusMask, ShootdownKind.Page, va);
                d = m.Counters() - start;
            });
        }
        finally
        {
            stop.Set();
            Sim.Join(readers);
        }

        Assert.Multiple(() =>
        {
            Assert.That(targeted, Is.EqualTo(255), "every CPU but the initiator");
            Assert.That(d![Counter.ShootdownRounds], Is.EqualTo(1));
            Assert.That(d.OnCpu(255, Counter.ShootdownRounds), Is.EqualTo(1));
            Assert.That(d[Counter.IpiTargets], Is.EqualTo(255));
            Assert.That(d[Counter.IpisSent], Is.EqualTo(running.Length));
            Assert.That(d[Counter.IpisReceived], Is.EqualTo(running.Length));
            Assert.That(d[Counter.IdleTargetsDeferred], Is.EqualTo(255 - running.Length));
            foreach (int cpu in running)
            {
                Assert.That(d.OnCpu(cpu, Counter.IpisReceived), Is.EqualTo(1), $"cpu {cpu}");
                Assert.That(d.OnCpu(cpu, Counter.IpiInvalidations), Is.EqualTo(1), $"cpu {cpu}");
            }

            Assert.That(before, Has.All.EqualTo(OldMarker));
            Assert.That(after, Has.All.EqualTo(NewMarker), "each reader dropped the old translation at the IPI");
        });

        // An idle CPU in the last word flushes once before its first thread runs.
        var beforeIdle = m.Counters();
        ulong read = 0;
        m.Run(200, () => read = m.CurrentCpu.ReadUInt64(va));
        var ran = m.Counters() - beforeIdle;
        Assert.That(read, Is.EqualTo(NewMarker));
        Assert.That(ran.OnCpu(200, Counter.FullFlushes), Is.EqualTo(1));
        Assert.That(ran.OnCpu(200, Counter.IpiFlushes), Is.EqualTo(1));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
        Assert.That(m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
    }

    [Test]
    public void SendersInEveryWordShareOneMailboxAndEachRequestIsServedOnce()
    {
        const int Rounds = 100;
        using var m = new SimMachine(Wide());
        ulong va = m.Layout.KernelMap.Start;
        int[] targets = [3, 190];
        int[] senders = [70, 140, 250];
        var stop = new Flag();
        int ready = 0;
        var pollers = targets.Select(cpu => m.StartThread($"poller{cpu}", () =>
        {
            Interlocked.Increment(ref ready);
            Sim.SpinOnCpu(m, () => stop.IsSet, "the senders are done");
        }, cpu: cpu, bound: true)).ToArray();

        CounterSnapshot? d = null;
        try
        {
            Sim.WaitUntil(() => Volatile.Read(ref ready) == targets.Length, "the targets run");
            var start = m.Counters();
            var shooters = senders.Select(cpu => m.StartThread($"sender{cpu}", () =>
            {
                var self = m.CurrentCpu;
                for (int i = 0; i < Rounds; i++)
                {
                    self.Shootdown(CpuSet.Of(targets), ShootdownKind.Page, va + ((ulong)(i & 7) << Pte.PageShift), serialize: false);
                }
            }, cpu: cpu, bound: true)).ToArray();
            Sim.Join(shooters);
            d = m.Counters() - start;
        }
        finally
        {
            stop.Set();
            Sim.Join(pollers);
        }

        long rounds = (long)senders.Length * Rounds;
        Assert.Multiple(() =>
        {
            Assert.That(d![Counter.ShootdownRounds], Is.EqualTo(rounds));
            Assert.That(d[Counter.IpiTargets], Is.EqualTo(rounds * targets.Length));
            Assert.That(d[Counter.IpisSent], Is.EqualTo(rounds * targets.Length), "the targets never went idle");
            Assert.That(d[Counter.IdleTargetsDeferred], Is.Zero);
            foreach (int cpu in targets)
            {
                Assert.That(d.OnCpu(cpu, Counter.IpisReceived), Is.EqualTo(rounds), $"cpu {cpu} served every sender's every round once");
            }

            Assert.That(d[Counter.IpisReceived], Is.EqualTo(rounds * targets.Length));
        });
    }
}
