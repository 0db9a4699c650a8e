using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;
using SfBufHandle = Native.SfBufNative.SfBuf;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>
/// The latent-staleness oracle (a never-evicting shadow of every translation a CPU filled and
/// did not invalidate) and the CPU-private ownership check: both catch what the TLB-only oracle
/// misses when the stale entry happens to have been evicted or was never cached.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class LatentStalenessTests
{
    private const ulong OldMarker = 0x0a0a_0a0a_0a0a_0a0a;
    private const ulong NewMarker = 0x0b0b_0b0b_0b0b_0b0b;

    // 8 entries, 2 ways: 4 sets, so pages 0, 4 and 8 of a region share a set and the third evicts the first.
    private static MachineOptions TinyTlb() => Sim.Small() with { TlbEntries = 8, TlbWays = 2 };

    [Test]
    public void ASkippedInvalidationWhoseEntryWasEvictedIsCaughtByTheLatentOracleAndMissedByTheTlbOracle()
    {
        using var m = new SimMachine(TinyTlb());
        var (va, newPage) = FillEvictAndRemapSilently(m);

        var thrown = Assert.Throws<LatentStaleTranslationException>(() => m.Run(1, () => m.CurrentCpu.ReadUInt64(va)));

        Assert.That(thrown!.Cpu, Is.EqualTo(1));
        Assert.That(thrown.Address, Is.EqualTo(va));
        Assert.That(thrown.CurrentFrame, Is.EqualTo((long)newPage.Frame));
        Assert.That(thrown.Message, Does.Contain("cpu 1").And.Contain($"0x{va:x}"));
        var counts = m.Counters();
        Assert.That(counts[Counter.StaleAccesses], Is.Zero, "the TLB no longer held the entry: the TLB-only oracle saw nothing");
        Assert.That(counts.OnCpu(1, Counter.LatentStaleAccesses), Is.EqualTo(1));
    }

    [Test]
    public void WithTheLatentOracleOffTheSameBugPassesSilently()
    {
        // What the TLB-only oracle saw before: the access succeeds and reads the new page, by luck.
        using var m = new SimMachine(TinyTlb());
        var (va, _) = FillEvictAndRemapSilently(m);
        ulong read = 0;

        m.Run(1, () =>
        {
            m.CurrentCpu.TestHookForgetShadow();
            read = m.CurrentCpu.ReadUInt64(va);
        });

        Assert.That(read, Is.EqualTo(NewMarker));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void AnInvalidationAfterTheRemapSatisfiesBothOracles()
    {
        using var m = new SimMachine(TinyTlb());
        var (va, newPage) = FillEvictAndRemapSilently(m);
        ulong read = 0;

        m.Run(0, () => m.KernelPmap.InvalidatePage(va)); // local + shootdown of CPU 1 (idle: flush pending)
        m.Run(1, () => read = m.CurrentCpu.ReadUInt64(va));

        Assert.That(read, Is.EqualTo(NewMarker));
        Assert.That(newPage.Frame, Is.Not.Zero);
        Assert.That(m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
    }

    [Test]
    public void ARunningTargetsShootdownClearsItsShadowToo()
    {
        using var m = new SimMachine(TinyTlb());
        ulong va = m.Layout.KernelMap.Start;
        var oldPage = Sim.NewPage(m, OldMarker);
        var newPage = Sim.NewPage(m, NewMarker);
        m.Run(0, () =>
        {
            m.KernelPmap.KEnter(va, oldPage);
            m.KernelPmap.KEnter(va + (4 * Pte.PageSize), Sim.NewPage(m, 4));
            m.KernelPmap.KEnter(va + (8 * Pte.PageSize), Sim.NewPage(m, 8));
        });
        var filled = new Flag();
        var remapped = new Flag();
        ulong read = 0;
        var reader = m.StartThread("reader", () =>
        {
            m.CurrentCpu.ReadUInt64(va);
            Evict(m, va);
            filled.Set();
            Sim.SpinOnCpu(m, () => remapped.IsSet, "the remap");
            read = m.CurrentCpu.ReadUInt64(va);
        }, cpu: 1, bound: true);
        m.Run(0, () =>
        {
            Sim.SpinOnCpu(m, () => filled.IsSet, "the fill");
            m.KernelPmap.KEnter(va, newPage);
            m.KernelPmap.InvalidatePage(va); // CPU 1 runs: it services the IPI
            remapped.Set();
        });
        Sim.Join(reader);

        Assert.That(read, Is.EqualTo(NewMarker));
        Assert.That(m.Counters().OnCpu(1, Counter.IpisReceived), Is.EqualTo(1));
        Assert.That(m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
    }

    [Test]
    public void AnAddressSpaceSwitchDropsUserShadowsButKeepsKernelOnes()
    {
        using var m = new SimMachine(TinyTlb());
        const ulong userVa = 0x40_0000;
        ulong kva = m.Layout.KernelMap.Start;
        var one = m.CreateVmSpace();
        var two = m.CreateVmSpace();
        m.Run(0, () =>
        {
            m.KernelPmap.KEnter(kva, Sim.NewPage(m, OldMarker));
            one.MapAnonymous(userVa, Pte.PageSize);
            two.MapAnonymous(userVa, Pte.PageSize);
            m.CurrentCpu.ReadUInt64(userVa);
            m.CurrentCpu.ReadUInt64(kva);
            int before = m.CurrentCpu.TestHookShadowCount();
            KernelThread.Current.SwitchVmSpace(two);

            // The same user address now means another frame: not latent, because the CR3 load dropped it.
            m.CurrentCpu.ReadUInt64(userVa);
            Assert.That(before, Is.EqualTo(2));
        }, one);

        Assert.That(m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
    }

    [TestCaseSource(typeof(AllStrategies), nameof(AllStrategies.Names))]
    public void ACpuPrivateMappingUsedOnAnotherCpuIsAnErrorNamingBothCpusEvenWithNoStaleEntry(string strategy)
    {
        using var m = new SimMachine(Sim.Small() with { Flavor = SfBufMapper.Describe(strategy).Flavor });
        using var mapper = SfBufMapper.Create(strategy, m);
        var page = Sim.NewPage(m, OldMarker);
        SfBufHandle sf = SfBufHandle.None;
        bool mapped = false, release = false;

        // One thread holds the mapping throughout and frees it itself, without sleeping: what
        // every strategy's private API allows (kmap_local's mappings are its thread's, kmap_atomic
        // and the quick page forbid sleeping while held).
        var holder = m.StartThread("holder", () =>
        {
            KernelThread.Current.SchedPin();
            sf = mapper.Alloc(page, SfBufFlags.CpuPrivate);
            Assert.That(m.CurrentCpu.ReadUInt64(mapper.Kva(sf)), Is.EqualTo(OldMarker), "its own CPU may use it");
            Volatile.Write(ref mapped, true);
            while (!Volatile.Read(ref release))
            {
                m.CurrentCpu.Poll();
                Thread.Yield();
            }

            mapper.Free(sf);
        }, cpu: 0, bound: true);
        Sim.WaitUntil(() => Volatile.Read(ref mapped) || holder.HasExited, "the holder has mapped the page");

        if (sf.Kva >= VmLayout.DMAP_BASE)
        {
            Volatile.Write(ref release, true);
            holder.Join(Sim.Patience);
            Assert.Pass("a direct-map address is permanent and global: there is no private mapping to misuse");
        }

        // CPU 1 never cached the address: there is no stale entry for the TLB oracle to find.
        PrivateMappingViolationException? thrown;
        try
        {
            thrown = Assert.Throws<PrivateMappingViolationException>(() => m.Run(1, () => m.CurrentCpu.ReadUInt64(sf.Kva)));
        }
        finally
        {
            Volatile.Write(ref release, true);
        }

        Assert.That(thrown!.OwnerCpu, Is.Zero);
        Assert.That(thrown.AccessingCpu, Is.EqualTo(1));
        Assert.That(thrown.Message, Does.Contain("cpu 1").And.Contain("cpu 0"));

        // Freed, the address is no longer anybody's private mapping.
        holder.Join(Sim.Patience);
        Assert.That(m.KernelPmap.PrivateOwner(sf.Kva), Is.EqualTo(-1));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void AnI386MappingSharedByAnotherUserIsNoLongerPrivate()
    {
        using var m = new SimMachine(Sim.Small() with { Flavor = MachineFlavor.I386 });
        using var mapper = SfBufMapper.Create(SfBufMapper.I386, m, 8);
        var page = Sim.NewPage(m, OldMarker);
        SfBufHandle mine = SfBufHandle.None, shared = SfBufHandle.None;
        m.Run(0, () =>
        {
            KernelThread.Current.SchedPin();
            mine = mapper.Alloc(page, SfBufFlags.CpuPrivate);
        });
        ulong read = 0;
        m.Run(1, () =>
        {
            shared = mapper.Alloc(page); // a shared user: every CPU is made clean
            read = m.CurrentCpu.ReadUInt64(shared.Kva);
            mapper.Free(shared);
        });
        m.Run(0, () => mapper.Free(mine));

        Assert.That(shared.Kva, Is.EqualTo(mine.Kva));
        Assert.That(read, Is.EqualTo(OldMarker));
    }

    /// <summary>CPU 1 fills a translation of a kernel_map page, evicts it, and CPU 0 remaps the page without any invalidation.</summary>
    private static (ulong Va, VmPage NewPage) FillEvictAndRemapSilently(SimMachine m)
    {
        ulong va = m.Layout.KernelMap.Start;
        var oldPage = Sim.NewPage(m, OldMarker);
        var newPage = Sim.NewPage(m, NewMarker);
        m.Run(0, () =>
        {
            m.KernelPmap.KEnter(va, oldPage);
            m.KernelPmap.KEnter(va + (4 * Pte.PageSize), Sim.NewPage(m, 4));
            m.KernelPmap.KEnter(va + (8 * Pte.PageSize), Sim.NewPage(m, 8));
        });
        m.Run(1, () =>
        {
            Assert.That(m.CurrentCpu.ReadUInt64(va), Is.EqualTo(OldMarker));
            Evict(m, va);
        });
        m.Run(0, () => m.KernelPmap.KEnter(va, newPage)); // the bug: no invalidation
        return (va, newPage);
    }

    private static void Evict(SimMachine m, ulong va)
    {
        m.CurrentCpu.ReadUInt64(va + (4 * Pte.PageSize));
        m.CurrentCpu.ReadUInt64(va + (8 * Pte.PageSize));
        Assert.That(m.CurrentCpu.TestHookTlbHolds(va), Is.False, "the set conflict evicted the entry");
    }
}
