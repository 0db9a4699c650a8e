using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>The counters equal the events of scripted scenarios.</summary>
[TestFixture]
[NonParallelizable]
public sealed class CounterTests
{
    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    public void OneShootdownToKRunningCpusCountsOneRoundAndKIpisSentTargetedAndReceived(int k)
    {
        using var m = new SimMachine(Sim.Small(cpus: 4));
        var stop = new Flag();
        int running = 0;
        var pollers = new List<KernelThread>();
        CounterSnapshot? d = null;
        int targeted = -1;
        var targets = default(CpuSet);
        for (int c = 1; c <= k; c++)
        {
            targets.Add(c);
        }

        try
        {
            for (int c = 1; c < 4; c++)
            {
                pollers.Add(m.StartThread($"poller{c}", () =>
                {
                    Interlocked.Increment(ref running);
                    Sim.SpinOnCpu(m, () => stop.IsSet, "the poller is stopped");
                }, cpu: c, bound: true));
            }

            Sim.WaitUntil(() => Volatile.Read(ref running) == 3, "three pollers run");
            m.Run(0, () =>
            {
                var before = m.Counters();
                targeted = m.CurrentCpu.Shootdown(targets, ShootdownKind.Page, m.Layout.KernelMap.Start);
                d = m.Counters() - before;
            });
        }
        finally
        {
            stop.Set();
            Sim.Join([.. pollers]);
        }

        Assert.That(targeted, Is.EqualTo(k));
        Assert.That(d![Counter.ShootdownRounds], Is.EqualTo(1));
        Assert.That(d.OnCpu(0, Counter.ShootdownRounds), Is.EqualTo(1));
        Assert.That(d[Counter.IpisSent], Is.EqualTo(k));
        Assert.That(d[Counter.IpiTargets], Is.EqualTo(k));
        Assert.That(d[Counter.IpisReceived], Is.EqualTo(k));
        Assert.That(d[Counter.IdleTargetsDeferred], Is.Zero);
        Assert.That(d[Counter.LocalInvalidations], Is.EqualTo(k));
        Assert.That(d.OnCpu(0, Counter.LocalInvalidations), Is.Zero, "the initiator is never its own target");
        for (int c = 1; c < 4; c++)
        {
            Assert.That(d.OnCpu(c, Counter.IpisReceived), Is.EqualTo(c <= k ? 1 : 0), $"cpu {c}");
        }

        Assert.That(d[Counter.LockAcquisitions], Is.EqualTo(1), "smp_ipi_mtx, once");
    }

    [TestCase(1, false)]
    [TestCase(5, false)]
    [TestCase(5, true)]
    public void QEnterOfNPagesCountsNPteWritesNLocalInvalidationsAndOneRound(int n, bool otherCpuRunning)
    {
        using var m = new SimMachine(Sim.Small());
        var pages = Enumerable.Range(0, n).Select(i => Sim.NewPage(m, (ulong)i)).ToArray();
        var stop = new Flag();
        var running = new Flag();
        KernelThread? poller = null;
        CounterSnapshot? d = null;

        try
        {
            if (otherCpuRunning)
            {
                poller = m.StartThread("poller", () =>
                {
                    running.Set();
                    Sim.SpinOnCpu(m, () => stop.IsSet, "the poller is stopped");
                }, cpu: 1, bound: true);
                Sim.WaitUntil(() => running.IsSet, "the poller runs");
            }

            m.Run(0, () =>
            {
                var before = m.Counters();
                m.KernelPmap.QEnter(m.Layout.SfBufWindow.Start, pages);
                d = m.Counters() - before;
            });
        }
        finally
        {
            stop.Set();
            if (poller != null)
            {
                Sim.Join(poller);
            }
        }

        Assert.That(d![Counter.KernelPteWrites], Is.EqualTo(n));
        Assert.That(d[Counter.KernelPteClears], Is.Zero);
        Assert.That(d.OnCpu(0, Counter.LocalInvalidations), Is.EqualTo(n));
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(1));
        Assert.That(d[Counter.IpiTargets], Is.EqualTo(1));
        if (otherCpuRunning)
        {
            Assert.That(d[Counter.IpisSent], Is.EqualTo(1));
            Assert.That(d.OnCpu(1, Counter.IpisReceived), Is.EqualTo(1));
            Assert.That(d.OnCpu(1, Counter.LocalInvalidations), Is.EqualTo(n), "a range shootdown invalidates page by page");
        }
        else
        {
            Assert.That(d[Counter.IpisSent], Is.Zero);
            Assert.That(d[Counter.IdleTargetsDeferred], Is.EqualTo(1));
            Assert.That(d.OnCpu(1, Counter.LocalInvalidations), Is.Zero);
        }

        for (int i = 0; i < n; i++)
        {
            Assert.That(Pte.Frame(m.KernelPmap.ReadPte(m.Layout.SfBufWindow.PageAddress(i))), Is.EqualTo(pages[i].Frame));
        }
    }

    [Test]
    public void QRemoveCountsPteClearsAndOneRound()
    {
        using var m = new SimMachine(Sim.Small());
        var pages = Enumerable.Range(0, 3).Select(i => Sim.NewPage(m, (ulong)i)).ToArray();
        CounterSnapshot? d = null;

        m.Run(0, () =>
        {
            m.KernelPmap.QEnter(m.Layout.SfBufWindow.Start, pages);
            var before = m.Counters();
            m.KernelPmap.QRemove(m.Layout.SfBufWindow.Start, 3);
            d = m.Counters() - before;
        });

        Assert.That(d![Counter.KernelPteClears], Is.EqualTo(3));
        Assert.That(d[Counter.KernelPteWrites], Is.Zero);
        Assert.That(d[Counter.LocalInvalidations], Is.EqualTo(3));
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(1));
        Assert.That(m.KernelPmap.ReadPte(m.Layout.SfBufWindow.Start), Is.Zero);
    }

    [Test]
    public void AShootdownToAnEmptyMaskOrToItselfCountsNothing()
    {
        using var m = new SimMachine(Sim.Small(cpus: 4));
        CounterSnapshot? d = null;
        var results = new List<int>();

        m.Run(2, () =>
        {
            var cpu = m.CurrentCpu;
            var before = m.Counters();
            results.Add(cpu.Shootdown(CpuSet.Empty, ShootdownKind.All));
            results.Add(cpu.Shootdown(cpu.Mask, ShootdownKind.Page, m.Layout.KernelMap.Start));
            results.Add(cpu.Shootdown(CpuSet.Of(40, 255), ShootdownKind.All)); // no such CPUs
            d = m.Counters() - before;
        });

        Assert.That(results, Is.EqualTo(new[] { 0, 0, 0 }));
        Assert.That(d!.ToDictionary().Values, Has.All.Zero, d.ToString());
        Assert.That(d.ToString(), Is.Empty);
    }

    [Test]
    public void TlbHitsAndMissesCountEveryTranslation()
    {
        using var m = new SimMachine(Sim.Small());
        var pages = Enumerable.Range(0, 4).Select(i => Sim.NewPage(m, (ulong)i)).ToArray();
        CounterSnapshot? d = null;

        m.Run(1, () =>
        {
            ulong va = m.Layout.KernelMap.Start;
            for (int i = 0; i < pages.Length; i++)
            {
                m.KernelPmap.KEnter(va + ((ulong)i << Pte.PageShift), pages[i]);
            }

            var before = m.Counters();
            for (int round = 0; round < 3; round++)
            {
                for (int i = 0; i < pages.Length; i++)
                {
                    m.CurrentCpu.ReadUInt64(va + ((ulong)i << Pte.PageShift));
                }
            }

            // A read spanning two pages translates twice.
            Span<byte> twoPages = stackalloc byte[16];
            m.CurrentCpu.Read(va + Pte.PageSize - 8, twoPages);
            d = m.Counters() - before;
        });

        Assert.That(d![Counter.TlbMisses], Is.EqualTo(4));
        Assert.That(d[Counter.TlbHits], Is.EqualTo(8 + 2));
        Assert.That(d.OnCpu(0, Counter.TlbHits) + d.OnCpu(0, Counter.TlbMisses), Is.Zero, "counted on the CPU that translated");
    }

    [Test]
    public void EveryThreadStartCountsAContextSwitchOnItsCpu()
    {
        using var m = new SimMachine(Sim.Small());
        var start = m.Counters();

        m.Run(0, () => { });
        m.Run(1, () => { });
        m.Run(1, () => { });
        var d = m.Counters() - start;

        Assert.That(d.OnCpu(0, Counter.ContextSwitches), Is.EqualTo(1));
        Assert.That(d.OnCpu(1, Counter.ContextSwitches), Is.EqualTo(2));
        Assert.That(d[Counter.Migrations], Is.Zero, "a first start is not a migration");
    }

    [Test]
    public void SnapshotsSubtractPerCpuAndNameTheirCountersInTheExperimentSchema()
    {
        using var m = new SimMachine(Sim.Small());
        var before = m.Counters();
        m.Run(1, () => m.CurrentCpu.FlushTlb());
        var d = m.Counters() - before;
        var named = d.ToDictionary();

        Assert.That(named, Has.Count.EqualTo(CounterNames.Count));
        Assert.That(named["full_flushes"], Is.EqualTo(1));
        Assert.That(named["context_switches"], Is.EqualTo(1));
        Assert.That(d.OnCpu(1, Counter.FullFlushes), Is.EqualTo(1));
        Assert.That(d.OnCpu(0, Counter.FullFlushes), Is.Zero);
        Assert.That(CounterSnapshot.Subtract(m.Counters(), before)[Counter.FullFlushes], Is.EqualTo(1));
        Assert.That(d.ToString(), Does.Contain("full_flushes=1"));
        Assert.That(CounterNames.All.Select(CounterNames.Of), Is.Unique);
        using var small = new SimMachine(Sim.Small(cpus: 1));
        Assert.That(() => m.Counters() - small.Counters(), Throws.ArgumentException);
    }
}
