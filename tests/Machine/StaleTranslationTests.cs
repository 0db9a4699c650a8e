using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>The stale-translation oracle fires exactly when an invalidation is omitted.</summary>
[TestFixture]
[NonParallelizable]
public sealed class StaleTranslationTests
{
    private const ulong OldMarker = 0x0a0a_0a0a_0a0a_0a0a;
    private const ulong NewMarker = 0x0b0b_0b0b_0b0b_0b0b;

    [Test]
    public void ReadingThroughATranslationCachedBeforeASilentRemapRaisesStaleTranslationException()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;
        var oldPage = Sim.NewPage(m, OldMarker);
        var newPage = Sim.NewPage(m, NewMarker);

        m.Run(0, () => m.KernelPmap.KEnter(va, oldPage));
        ulong first = 0;
        m.Run(1, () => first = m.CurrentCpu.ReadUInt64(va));
        m.Run(0, () => m.KernelPmap.KEnter(va, newPage)); // no invalidation anywhere

        Assert.That(first, Is.EqualTo(OldMarker));
        Assert.That(() => m.Run(1, () => m.CurrentCpu.ReadUInt64(va)), Throws.TypeOf<StaleTranslationException>());
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.EqualTo(1));
        Assert.That(m.Counters().OnCpu(1, Counter.StaleAccesses), Is.EqualTo(1));
    }

    [Test]
    public void TheOracleNamesTheCpuTheAddressTheCachedFrameAndTheCurrentFrame()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.PageAddress(3);
        var oldPage = Sim.NewPage(m, OldMarker);
        var newPage = Sim.NewPage(m, NewMarker);
        StaleTranslationException? stale = null;

        m.Run(0, () => m.KernelPmap.KEnter(va, oldPage));
        m.Run(1, () => m.CurrentCpu.ReadUInt64(va + 8));
        m.Run(0, () => m.KernelPmap.KEnter(va, newPage));
        m.Run(1, () =>
        {
            try
            {
                m.CurrentCpu.ReadUInt64(va + 8);
            }
            catch (StaleTranslationException e)
            {
                stale = e;
            }
        });

        Assert.That(stale, Is.Not.Null);
        Assert.That(oldPage.Frame, Is.Not.EqualTo(newPage.Frame));
        Assert.That(stale!.Cpu, Is.EqualTo(1));
        Assert.That(stale.Address, Is.EqualTo(va + 8));
        Assert.That(stale.CachedFrame, Is.EqualTo(oldPage.Frame));
        Assert.That(stale.CurrentFrame, Is.EqualTo((long)newPage.Frame));
        Assert.That(stale.Message, Does.Contain("cpu 1"));
        Assert.That(stale.Message, Does.Contain($"0x{va + 8:x}"));
        Assert.That(stale.Message, Does.Contain($"frame 0x{oldPage.Frame:x}"));
        Assert.That(stale.Message, Does.Contain($"frame 0x{newPage.Frame:x}"));
    }

    [Test]
    public void ReadingThroughATranslationWhosePteWasRemovedWithoutInvalidationIsStaleWithNoCurrentFrame()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;
        var page = Sim.NewPage(m, OldMarker);
        StaleTranslationException? stale = null;

        m.Run(0, () =>
        {
            m.KernelPmap.KEnter(va, page);
            m.CurrentCpu.ReadUInt64(va);
            m.KernelPmap.KRemove(va);
            try
            {
                m.CurrentCpu.ReadUInt64(va);
            }
            catch (StaleTranslationException e)
            {
                stale = e;
            }
        });

        Assert.That(stale, Is.Not.Null);
        Assert.That(stale!.CachedFrame, Is.EqualTo(page.Frame));
        Assert.That(stale.CurrentFrame, Is.EqualTo(-1));
        Assert.That(stale.Message, Does.Contain("no longer maps"));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.EqualTo(1));
    }

    [Test]
    public void AWriteThroughAStaleCleanEntryIsCaughtBeforeTheReWalk()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;
        var oldPage = Sim.NewPage(m, OldMarker);
        var newPage = Sim.NewPage(m, NewMarker);

        Assert.That(
            () => m.Run(0, () =>
            {
                m.KernelPmap.KEnter(va, oldPage);
                m.CurrentCpu.ReadUInt64(va); // a clean entry: a write must re-walk
                m.KernelPmap.KEnter(va, newPage);
                m.CurrentCpu.WriteUInt64(va, 1);
            }),
            Throws.TypeOf<StaleTranslationException>().With.Property(nameof(StaleTranslationException.CachedFrame)).EqualTo(oldPage.Frame));
        Assert.That(m.Physical.PhysicalBytes(newPage)[0], Is.EqualTo(0x0b), "the faulting write must not land");
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.EqualTo(1));
    }

    [Test]
    public void WithCheckedModeOffAMissedInvalidationSilentlyReadsTheOldPage()
    {
        using var m = new SimMachine(Sim.Small() with { Checked = false });
        ulong va = m.Layout.KernelMap.Start;
        var oldPage = Sim.NewPage(m, OldMarker);
        var newPage = Sim.NewPage(m, NewMarker);
        ulong stale = 0;

        m.Run(0, () =>
        {
            m.KernelPmap.KEnter(va, oldPage);
            m.CurrentCpu.ReadUInt64(va);
            m.KernelPmap.KEnter(va, newPage);
            stale = m.CurrentCpu.ReadUInt64(va);
        });

        Assert.That(stale, Is.EqualTo(OldMarker), "the TLB, not the page table, decides what a hit reads");
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero, "the oracle is off");
    }

    [Test]
    public void ALocalInvalidationAfterTheRemapOnTheSameCpuPreventsTheStaleAccess()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;
        var oldPage = Sim.NewPage(m, OldMarker);
        var newPage = Sim.NewPage(m, NewMarker);
        ulong before = 0, after = 0;

        m.Run(0, () =>
        {
            var cpu = m.CurrentCpu;
            m.KernelPmap.KEnter(va, oldPage);
            before = cpu.ReadUInt64(va);
            m.KernelPmap.KEnter(va, newPage);
            cpu.InvalidatePage(va);
            after = cpu.ReadUInt64(va);
        });

        Assert.That(before, Is.EqualTo(OldMarker));
        Assert.That(after, Is.EqualTo(NewMarker));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
        Assert.That(m.Counters().OnCpu(0, Counter.LocalInvalidations), Is.EqualTo(1));
    }

    [Test]
    public void AShootdownFromTheOtherCpuPreventsTheStaleAccess()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;
        var oldPage = Sim.NewPage(m, OldMarker);
        var newPage = Sim.NewPage(m, NewMarker);
        m.Run(0, () => m.KernelPmap.KEnter(va, oldPage));

        var cached = new Flag();
        var remapped = new Flag();
        ulong before = 0, after = 0;
        var reader = m.StartThread("reader", () =>
        {
            before = m.CurrentCpu.ReadUInt64(va);
            cached.Set();
            Sim.SpinOnCpu(m, () => remapped.IsSet, "the remap and shootdown are done");
            after = m.CurrentCpu.ReadUInt64(va);
        }, cpu: 1, bound: true);

        Sim.WaitUntil(() => cached.IsSet, "the reader cached the old translation");
        var start = m.Counters();
        m.Run(0, () =>
        {
            m.KernelPmap.KEnter(va, newPage);
            m.CurrentCpu.Shootdown(m.Cpus[1].Mask, ShootdownKind.Page, va);
        });
        var shot = m.Counters() - start;
        remapped.Set();
        Sim.Join(reader);

        Assert.That(before, Is.EqualTo(OldMarker));
        Assert.That(after, Is.EqualTo(NewMarker));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
        Assert.That(shot.OnCpu(0, Counter.IpisSent), Is.EqualTo(1), "the reader was running: it must have been interrupted");
        Assert.That(shot.OnCpu(1, Counter.IpisReceived), Is.EqualTo(1));
        Assert.That(shot.OnCpu(1, Counter.LocalInvalidations), Is.EqualTo(1));
    }
}
