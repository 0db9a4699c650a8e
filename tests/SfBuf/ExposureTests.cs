using Native.PageTable;
using Native.SfBufNative;
using Native.Tests.Machine;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>
/// Exposure (<see cref="Counter.Exposures"/>, <see cref="Counter.ExposedNanoseconds"/>): exact
/// counts on small cases. A design that invalidates everywhere before its call returns opens no
/// window; one that defers opens one per CPU still caching the removed translation, which closes
/// at that CPU's flush, or at the trial's end.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class ExposureTests
{
    private static CostModel P => CostModel.Default;

    private static long Ns(double ns) => (long)Math.Round(ns);

    // A one-page window: the second mapping reuses the first one's address.
    private static MachineOptions OnePage(int cpus, bool isVirtual = false, bool isChecked = true) => Sim.Small(cpus) with
    {
        SfBufWindowPages = 1,
        Checked = isChecked,
        Time = isVirtual ? MachineTime.Virtual : MachineTime.Real,
        Cost = isVirtual ? P : CostModel.Zero,
    };

    [Test]
    public void Sfbufi386RecyclingASlotAnIdleCpuCachesDefersItsFlushAndOpensNoWindow()
    {
        using var m = new SimMachine(OnePage(cpus: 2));
        using var sf = SfBufMapper.Create(SfBufMapper.I386, m);
        var p1 = Sim.NewPage(m, 0x1111);
        var p2 = Sim.NewPage(m, 0x2222);
        Native.SfBufNative.SfBuf first = default;
        m.Run(0, () => first = sf.Alloc(p1));
        m.Run(1, () => m.CurrentCpu.ReadUInt64(sf.Kva(first))); // cpu 1 caches the translation, then goes idle
        var before = m.Counters();
        m.Run(0, () =>
        {
            sf.Free(first);
            sf.Free(sf.Alloc(p2)); // recycles the slot: the PTE now maps p2, cpu 1 is shot down
        });
        m.CloseExposures();

        var d = m.Counters() - before;
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(1));
        Assert.That(d[Counter.IdleTargetsDeferred], Is.EqualTo(1), "cpu 1 was idle: marked flush-pending");
        Assert.That(d[Counter.Exposures], Is.Zero, "a flush-pending CPU flushes before it runs anything");
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void Sfbufi386RecyclingASlotARunningCpuCachesSendsAnIpiAndOpensNoWindow()
    {
        using var m = new SimMachine(OnePage(cpus: 2));
        using var sf = SfBufMapper.Create(SfBufMapper.I386, m);
        var p1 = Sim.NewPage(m, 0x1111);
        var p2 = Sim.NewPage(m, 0x2222);
        Native.SfBufNative.SfBuf first = default;
        m.Run(0, () => first = sf.Alloc(p1));
        var cached = new Flag();
        var recycled = new Flag();
        var before = m.Counters();
        var reader = m.StartThread("reader", () =>
        {
            m.CurrentCpu.ReadUInt64(sf.Kva(first));
            cached.Set();
            Sim.SpinOnCpu(m, () => recycled.IsSet, "the slot is recycled"); // running: takes the IPI
        }, cpu: 1, bound: true);
        var recycler = m.StartThread("recycler", () =>
        {
            Sim.SpinOnCpu(m, () => cached.IsSet, "cpu 1 caches the translation");
            sf.Free(first);
            sf.Free(sf.Alloc(p2));
            recycled.Set();
        }, cpu: 0, bound: true);
        Sim.Join(reader, recycler);
        m.CloseExposures();

        var d = m.Counters() - before;
        Assert.That(d[Counter.IpisSent], Is.EqualTo(1), "cpu 1 was running: an IPI, acknowledged before Alloc returned");
        Assert.That(d[Counter.Exposures], Is.Zero);
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [TestCase(2, TestName = "{m}(one other CPU caches it)")]
    [TestCase(4, TestName = "{m}(three other CPUs cache it)")]
    public void EmapFreeingAMappingOtherCpusCacheOpensOneWindowPerCachingCpu(int cpus)
    {
        using var m = new SimMachine(OnePage(cpus));
        using var emap = SfBufMapper.Create(SfBufMapper.NetBsdEmap, m);
        var p1 = Sim.NewPage(m, 0x1111);
        var p2 = Sim.NewPage(m, 0x2222);
        Native.SfBufNative.SfBuf first = default, second = default;
        m.Run(0, () => first = emap.Alloc(p1, SfBufFlags.ReadOnly));
        for (int cpu = 1; cpu < cpus; cpu++)
        {
            m.Run(cpu, () => m.CurrentCpu.ReadUInt64(emap.Kva(first)));
        }

        m.Run(0, () => emap.Free(first)); // the PTE is cleared, nothing is invalidated
        Assert.That(m.Counters()[Counter.Exposures], Is.EqualTo(cpus - 1), "every other CPU still caches the old translation");
        Assert.That(m.Counters().OnCpu(0, Counter.Exposures), Is.EqualTo(cpus - 1), "counted where the operation ran");

        m.Run(0, () => second = emap.Alloc(p2, SfBufFlags.ReadOnly)); // installs over an invalid PTE: removes nothing
        m.Run(1, () => Assert.That(m.CurrentCpu.ReadUInt64(emap.Kva(second)), Is.EqualTo(0x2222UL))); // consume flushes cpu 1
        m.Run(0, () => emap.Free(second)); // only cpu 1 caches the new translation
        m.CloseExposures();

        Assert.That(m.Counters()[Counter.Exposures], Is.EqualTo(cpus), "one more window: cpu 1's entry for p2");
        Assert.That(m.Counters()[Counter.ExposedNanoseconds], Is.Zero, "real time measures no window lengths");
        Assert.That(m.LongestExposureNs, Is.Zero);
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void InVirtualTimeAnEmapWindowRunsFromTheFreesReturnToTheExposedCpusFlush()
    {
        using var m = new SimMachine(OnePage(cpus: 2, isVirtual: true));
        using var emap = SfBufMapper.Create(SfBufMapper.NetBsdEmap, m);
        var flushes = new FlushClock();
        m.AddTlbFlushHook(flushes);
        var p1 = Sim.NewPage(m, 0x1111);
        var p2 = Sim.NewPage(m, 0x2222);
        Native.SfBufNative.SfBuf first = default, second = default;
        long returnedAt = -1;
        m.Run(0, () => first = emap.Alloc(p1, SfBufFlags.ReadOnly));
        m.Run(1, () => m.CurrentCpu.ReadUInt64(emap.Kva(first)));
        m.Run(0, () =>
        {
            emap.Free(first);
            returnedAt = m.CurrentCpu.VirtualTimeNs;
            second = emap.Alloc(p2, SfBufFlags.ReadOnly);
        });

        Assert.That(m.Counters()[Counter.Exposures], Is.EqualTo(1));
        Assert.That(m.Counters()[Counter.ExposedNanoseconds], Is.Zero, "the window is open: cpu 1 still caches p1");

        flushes.Reset();
        long machineNow = m.VirtualNowNs, startedAt = -1;
        m.Run(1, () =>
        {
            startedAt = m.CurrentCpu.VirtualTimeNs;
            m.CurrentCpu.ReadUInt64(emap.Kva(second)); // consume: cpu 1 is behind and flushes
        });
        Assert.That(flushes.Count, Is.EqualTo(1));
        Assert.That(flushes.Cpu, Is.EqualTo(1));

        // The clock rules: cpu 0 went on for the second Alloc (its lock and its PTE store), then
        // cpu 1, idle since its read, took a thread a context switch after the machine's time and
        // flushed at once (consume, before anything else priced).
        Assert.That(machineNow - returnedAt, Is.EqualTo(Ns(P.LockNs + P.PteWriteNs)));
        Assert.That(startedAt, Is.EqualTo(machineNow + Ns(P.ContextSwitchNs)));
        Assert.That(flushes.AtNs, Is.EqualTo(startedAt));
        long window = flushes.AtNs - returnedAt;
        Assert.That(window, Is.EqualTo(Ns(P.LockNs + P.PteWriteNs + P.ContextSwitchNs)));

        var counts = m.Counters();
        Assert.That(counts.OnCpu(1, Counter.ExposedNanoseconds), Is.EqualTo(window), "closed at cpu 1's clock when it flushed");
        Assert.That(m.LongestExposureNs, Is.EqualTo(window));
        m.CloseExposures();
        Assert.That(m.Counters()[Counter.ExposedNanoseconds], Is.EqualTo(window), "nothing was left open");
        m.Run(0, () => emap.Free(second));
    }

    [Test]
    public void InVirtualTimeAWindowStillOpenAtTheEndRunsToTheLatestClock()
    {
        using var m = new SimMachine(OnePage(cpus: 2, isVirtual: true));
        using var emap = SfBufMapper.Create(SfBufMapper.NetBsdEmap, m);
        var p1 = Sim.NewPage(m, 0x1111);
        Native.SfBufNative.SfBuf first = default;
        long returnedAt = -1;
        m.Run(0, () => first = emap.Alloc(p1, SfBufFlags.ReadOnly));
        m.Run(1, () => m.CurrentCpu.ReadUInt64(emap.Kva(first)));
        m.Run(0, () =>
        {
            emap.Free(first);
            returnedAt = m.CurrentCpu.VirtualTimeNs;
            m.CurrentCpu.EnterKernel(); // time passes on cpu 0 while cpu 1 sits idle, still caching p1
        });

        m.CloseExposures();
        long window = m.VirtualNowNs - returnedAt;
        Assert.That(window, Is.EqualTo(Ns(P.KernelEntryNs)));
        Assert.That(m.Counters()[Counter.Exposures], Is.EqualTo(1));
        Assert.That(m.Counters().OnCpu(1, Counter.ExposedNanoseconds), Is.EqualTo(window));
        Assert.That(m.LongestExposureNs, Is.EqualTo(window));
    }

    [TestCase(false, TestName = "{m}(invlpg)")]
    [TestCase(true, TestName = "{m}(evicted)")]
    public void AWindowClosesWhenTheCpuDropsItsEntry(bool evict)
    {
        // 8 entries, 2 ways: 4 sets, so kernel_map pages 4 and 8 fill the set of page 0 and evict it.
        using var m = new SimMachine(OnePage(cpus: 2) with { TlbEntries = 8, TlbWays = 2 });
        using var emap = SfBufMapper.Create(SfBufMapper.NetBsdEmap, m);
        var p1 = Sim.NewPage(m, 0x1111);
        Native.SfBufNative.SfBuf first = default;
        m.Run(0, () => first = emap.Alloc(p1, SfBufFlags.ReadOnly));
        m.Run(1, () => m.CurrentCpu.ReadUInt64(emap.Kva(first)));
        m.Run(0, () => emap.Free(first));
        Assert.That(m.Cpus[1].TestHookOpenExposures(), Is.EqualTo(1));

        m.Run(1, () =>
        {
            if (!evict)
            {
                m.CurrentCpu.InvalidatePage(first.Kva);
                return;
            }

            // Two other pages of the same set (the window's one page plus kernel_map's) push it out.
            ulong set = (first.Kva >> Pte.PageShift) & 3;
            int filled = 0;
            for (ulong va = m.Layout.KernelMap.Start; filled < 2; va += Pte.PageSize)
            {
                if (((va >> Pte.PageShift) & 3) == set)
                {
                    m.KernelPmap.KEnter(va, Sim.NewPage(m, 0x3333));
                    m.CurrentCpu.ReadUInt64(va);
                    filled++;
                }
            }

            Assert.That(m.CurrentCpu.TestHookTlbHolds(first.Kva), Is.False, "evicted");
        });

        Assert.That(m.Cpus[1].TestHookOpenExposures(), Is.Zero, "the entry is gone: so is the window");
        Assert.That(m.Counters()[Counter.Exposures], Is.EqualTo(1));
    }

    [Test]
    public void UncheckedMachinesTrackNothing()
    {
        using var m = new SimMachine(OnePage(cpus: 2, isChecked: false));
        using var emap = SfBufMapper.Create(SfBufMapper.NetBsdEmap, m);
        var p1 = Sim.NewPage(m, 0x1111);
        Native.SfBufNative.SfBuf first = default;
        m.Run(0, () => first = emap.Alloc(p1, SfBufFlags.ReadOnly));
        m.Run(1, () => m.CurrentCpu.ReadUInt64(emap.Kva(first)));
        m.Run(0, () => emap.Free(first));
        m.CloseExposures();

        Assert.That(m.Counters()[Counter.Exposures], Is.Zero);
        Assert.That(m.Cpus[1].TestHookOpenExposures(), Is.Zero);
    }

    /// <summary>Records the clock of the last flush announced and how many there were.</summary>
    private sealed class FlushClock : ITlbFlushHook
    {
        public int Count { get; private set; }

        public int Cpu { get; private set; } = -1;

        public long AtNs { get; private set; } = -1;

        public void Reset() => Count = 0;

        public long Flushing(Cpu cpu, bool global)
        {
            Count++;
            Cpu = cpu.Id;
            AtNs = cpu.VirtualTimeNs;
            return 0;
        }

        public void Flushed(Cpu cpu, bool global, long token)
        {
        }
    }
}
