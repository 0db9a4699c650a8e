using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>Bad input raises clear exceptions instead of corrupting the machine.</summary>
[TestFixture]
[NonParallelizable]
public sealed class BadInputTests
{
    [Test]
    public void MappingAFrameOutsidePhysicalMemoryThrowsArgumentOutOfRange()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;

        Assert.That(
            () => m.Run(0, () => m.KernelPmap.KEnter(va, new VmPage(uint.MaxValue))),
            Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("outside physical memory"));
        Assert.That(
            () => m.Run(0, () => m.KernelPmap.KEnter(va, new VmPage(m.Physical.FrameCount))),
            Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(
            () => m.Run(0, () => m.KernelPmap.ExchangePte(va, Pte.Make(m.Physical.FrameCount, Pte.PG_V))),
            Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(m.KernelPmap.ReadPte(va), Is.Zero, "nothing was mapped");
        Assert.That(m.Counters()[Counter.KernelPteWrites], Is.Zero);
    }

    [Test]
    public void PageOperationsOnAFrameOutsidePhysicalMemoryThrowArgumentOutOfRange()
    {
        using var m = new SimMachine(Sim.Small());
        var bogus = new VmPage(uint.MaxValue);

        Assert.That(() => m.Physical.Wire(bogus), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => m.Physical.Free(bogus), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => m.Physical.PhysicalBytes(bogus), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => m.Physical.IsFree(bogus), Throws.TypeOf<ArgumentOutOfRangeException>());
    }

    [Test]
    public void AnUnalignedKernelAddressThrowsArgumentException()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;
        var page = Sim.NewPage(m, 0);

        Assert.That(
            () => m.Run(0, () => m.KernelPmap.KEnter(va + 8, page)),
            Throws.TypeOf<ArgumentException>().With.Message.Contains("not page aligned"));
        Assert.That(() => m.KernelPmap.ReadPte(va + 1), Throws.TypeOf<ArgumentException>());
        Assert.That(
            () => m.Run(0, () =>
            {
                m.KernelPmap.KEnter(va, page);
                m.CurrentCpu.ReadUInt64(va + 4);
            }),
            Throws.TypeOf<ArgumentException>().With.Message.Contains("aligned"));
    }

    [Test]
    public void AKernelAddressOutsideTheKernelRegionsCannotBeMapped()
    {
        using var m = new SimMachine(Sim.Small());
        var page = Sim.NewPage(m, 0);

        Assert.That(
            () => m.Run(0, () => m.KernelPmap.KEnter(VmLayout.KERNBASE - Pte.PageSize, page)),
            Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(
            () => m.Run(0, () => m.KernelPmap.KEnter(VmLayout.KERNBASE + ((ulong)m.Layout.KernelPages << Pte.PageShift), page)),
            Throws.TypeOf<ArgumentOutOfRangeException>());
    }

    [Test]
    public void TheGuardPageAfterEachKernelRegionCannotBeMapped()
    {
        using var m = new SimMachine(Sim.Small());
        var page = Sim.NewPage(m, 0);
        var guards = new[] { m.Layout.SfBufWindow.End, m.Layout.KernelMap.End, m.Layout.KernelMemory.End };

        foreach (ulong guard in guards)
        {
            Assert.That(
                () => m.Run(0, () => m.KernelPmap.KEnter(guard, page)),
                Throws.TypeOf<ArgumentOutOfRangeException>(),
                $"guard page 0x{guard:x}");
        }

        Assert.That(guards.Select(g => m.KernelPmap.ReadPte(g)), Has.All.Zero, "no guard page was mapped");
    }

    [Test]
    public void TouchingAnUnmappedKernelAddressThrowsPageFault()
    {
        using var m = new SimMachine(Sim.Small());

        Assert.That(
            () => m.Run(0, () => m.CurrentCpu.Fill(m.Layout.KernelMemory.Start, 16, 0xff)),
            Throws.TypeOf<PageFaultException>().With.Property(nameof(PageFaultException.Address)).EqualTo(m.Layout.KernelMemory.Start));
    }

    [Test]
    public void FreeingAPageTwiceThrowsInvalidOperation()
    {
        using var m = new SimMachine(Sim.Small());
        var page = m.Physical.Alloc();
        int free = m.Physical.FreePages;
        m.Physical.Free(page);

        Assert.That(() => m.Physical.Free(page), Throws.InvalidOperationException.With.Message.Contains("double free"));
        Assert.That(m.Physical.FreePages, Is.EqualTo(free + 1), "the free queue holds the page once");
        Assert.That(m.Physical.IsFree(page), Is.True);
    }

    [Test]
    public void WiringOrHoldingAFreePageThrowsInvalidOperation()
    {
        using var m = new SimMachine(Sim.Small());
        var page = m.Physical.Alloc();
        m.Physical.Free(page);

        Assert.That(() => m.Physical.Wire(page), Throws.InvalidOperationException.With.Message.Contains("free"));
        Assert.That(() => m.Physical.Hold(page), Throws.InvalidOperationException);
        Assert.That(() => m.Physical.SetOwner(page, 1, 0), Throws.InvalidOperationException);
        Assert.That(m.Physical.WireCount(page), Is.Zero);
        Assert.That(m.Physical.HoldCount(page), Is.Zero);
    }

    [Test]
    public void FreeingAWiredPageThrowsAndAHeldPageIsFreedWhenItsLastHoldIsDropped()
    {
        using var m = new SimMachine(Sim.Small());
        var wired = m.Physical.Alloc(AllocFlags.Wired);
        var held = m.Physical.Alloc();
        m.Physical.Hold(held);
        int freeBefore = m.Physical.FreePages;

        Assert.That(() => m.Physical.Free(wired), Throws.InvalidOperationException.With.Message.Contains("wired"));
        Assert.That(m.Physical.IsFree(wired), Is.False);

        // PG_UNHOLDFREE: the free is deferred, the page cannot be held again, and it reaches
        // the free queue with the last unhold.
        m.Physical.Free(held);
        Assert.That(m.Physical.FreePages, Is.EqualTo(freeBefore), "still held: not on the free queue yet");
        Assert.That(m.Physical.TryHold(held), Is.False, "a page being freed cannot be held again");
        Assert.That(() => m.Physical.Free(held), Throws.InvalidOperationException, "freed twice");
        m.Physical.Unhold(held);
        Assert.That(m.Physical.FreePages, Is.EqualTo(freeBefore + 1));

        m.Physical.Unwire(wired);
        m.Physical.Free(wired);
        Assert.That(() => m.Physical.Unwire(wired), Throws.InvalidOperationException);
        Assert.That(m.Physical.IsFree(wired), Is.True);
        Assert.That(m.Physical.IsFree(held), Is.True);
    }

    [Test]
    public void AllocatingFromExhaustedPhysicalMemoryThrowsAndTryAllocReturnsFalse()
    {
        using var m = new SimMachine(Sim.Small() with { PhysicalMemoryBytes = 16 * Pte.PageSize });
        for (int i = 0; i < 16; i++)
        {
            m.Physical.Alloc();
        }

        Assert.That(m.Physical.FreePages, Is.Zero);
        Assert.That(m.Physical.TryAlloc(out _), Is.False);
        Assert.That(() => m.Physical.Alloc(), Throws.InvalidOperationException.With.Message.Contains("exhausted"));
    }

    [Test]
    public void TouchingADisposedMachineThrowsObjectDisposed()
    {
        var m = new SimMachine(Sim.Small());
        var page = m.Physical.Alloc();
        var arena = m.KernelMap;
        m.Dispose();

        Assert.That(() => m.Physical.Alloc(), Throws.TypeOf<ObjectDisposedException>());
        Assert.That(() => m.Physical.Free(page), Throws.TypeOf<ObjectDisposedException>());
        Assert.That(() => m.Physical.PhysicalBytes(page), Throws.TypeOf<ObjectDisposedException>());
        Assert.That(() => m.Counters(), Throws.TypeOf<ObjectDisposedException>());
        Assert.That(() => m.CreateVmSpace(), Throws.TypeOf<ObjectDisposedException>());
        Assert.That(() => m.StartThread("late", () => { }), Throws.TypeOf<ObjectDisposedException>());
        Assert.That(() => m.KernelPmap.ReadPte(m.Layout.KernelMap.Start), Throws.TypeOf<ObjectDisposedException>());
        Assert.That(() => arena.Alloc(1, wait: false), Throws.TypeOf<ObjectDisposedException>());
        Assert.That(() => m.CurrentCpu, Throws.TypeOf<ObjectDisposedException>());
        Assert.That(() => m.Cpus[0].ReadUInt64(m.Layout.KernelMap.Start), Throws.TypeOf<ObjectDisposedException>());
        Assert.That(m.Dispose, Throws.Nothing, "a second Dispose is a no-op");
    }

    [Test]
    public void CurrentCpuFromANonKernelThreadThrowsInvalidOperation()
    {
        using var m = new SimMachine(Sim.Small());

        Assert.That(() => m.CurrentCpu, Throws.InvalidOperationException.With.Message.Contains("kernel thread"));
        Assert.That(() => KernelThread.Current, Throws.InvalidOperationException);
        Assert.That(() => m.KernelPmap.KEnter(m.Layout.KernelMap.Start, Sim.NewPage(m, 0)), Throws.InvalidOperationException);
        Assert.That(m.KernelPmap.ReadPte(m.Layout.KernelMap.Start), Is.Zero, "the refused KEnter mapped nothing");
        Assert.That(() => new KMutex("m").Lock(), Throws.InvalidOperationException);
        Assert.That(() => m.Sleep(new object()), Throws.InvalidOperationException);
    }

    [Test]
    public void AnMmuAccessFromANonKernelThreadWhileAKernelThreadHoldsTheCpuThrowsInvalidOperation()
    {
        using var m = new SimMachine(Sim.Small());
        var holding = new Flag();
        var release = new Flag();
        var holder = m.StartThread("holder", () =>
        {
            holding.Set();
            Sim.SpinOnCpu(m, () => release.IsSet, "released");
        }, cpu: 0, bound: true);
        Sim.WaitUntil(() => holding.IsSet, "the holder runs");

        try
        {
            Assert.That(() => m.Cpus[0].ReadUInt64(m.Layout.KernelMap.Start), Throws.InvalidOperationException.With.Message.Contains("holder"));
            Assert.That(() => m.Cpus[0].InvalidatePage(m.Layout.KernelMap.Start), Throws.InvalidOperationException);
        }
        finally
        {
            release.Set();
            Sim.Join(holder);
        }
    }

    [Test]
    public void AnMmuAccessFromANonKernelThreadOnAnIdleCpuThrowsInvalidOperation()
    {
        using var m = new SimMachine(Sim.Small());
        ulong va = m.Layout.KernelMap.Start;
        var page = Sim.NewPage(m, 0x99);
        m.Run(0, () => m.KernelPmap.KEnter(va, page));
        var before = m.Counters();

        Assert.That(m.Cpus[0].IsIdle, Is.True);
        using (Assert.EnterMultipleScope())
        {
            Assert.That(() => m.Cpus[0].ReadUInt64(va), Throws.InvalidOperationException);
            Assert.That(() => m.Cpus[0].CopyIn(0x1000, new byte[8]), Throws.InvalidOperationException);
            Assert.That(() => m.Cpus[0].InvalidatePage(va), Throws.InvalidOperationException);
            Assert.That(() => m.Cpus[0].FlushTlb(), Throws.InvalidOperationException);
            Assert.That(() => m.Cpus[0].Shootdown(m.Cpus[1].Mask, ShootdownKind.Page, va, serialize: false), Throws.InvalidOperationException);
            Assert.That((m.Counters() - before).ToString(), Is.Empty, "a refused access changes no TLB and no counter");
        }
    }

    [Test]
    public void AnMmuAccessThroughAnotherCpuThanTheOneTheThreadHoldsThrowsInvalidOperation()
    {
        using var m = new SimMachine(Sim.Small());

        Assert.That(
            () => m.Run(0, () => m.Cpus[1].ReadUInt64(m.Layout.KernelMap.Start)),
            Throws.InvalidOperationException.With.Message.Contains("cpu 1"));
    }

    [Test]
    public void SchedUnpinWithoutSchedPinThrowsInvalidOperation()
    {
        using var m = new SimMachine(Sim.Small());

        Assert.That(() => m.Run(0, () => KernelThread.Current.SchedUnpin()), Throws.InvalidOperationException.With.Message.Contains("sched_unpin"));
    }

    [Test]
    public void BadThreadAndShootdownArgumentsThrow()
    {
        using var m = new SimMachine(Sim.Small());

        Assert.That(() => m.StartThread("t", () => { }, cpu: 2), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => m.StartThread("t", () => { }, cpu: -2), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => m.StartThread("t", () => { }, cpu: -1, bound: true), Throws.ArgumentException);
        Assert.That(() => m.StartThread("t", null!), Throws.ArgumentNullException);
        Assert.That(
            () => m.Run(0, () => m.CurrentCpu.Shootdown(m.AllCpusMask, ShootdownKind.Range, m.Layout.KernelMap.Start, pages: 0)),
            Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => m.Run(0, () => KernelThread.Current.Join()), Throws.InvalidOperationException.With.Message.Contains("itself"));
        Assert.That(m.LiveThreads(), Is.Empty);
    }

    [Test]
    public void BadMachineOptionsThrowAndLeakNothing()
    {
        long outstanding = NativeLedger.ProcessOutstandingBytes;

        Assert.That(() => new SimMachine(Sim.Small(cpus: 0)), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => new SimMachine(Sim.Small(cpus: MachineOptions.MaxCpus + 1)), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => new SimMachine(Sim.Small() with { PhysicalMemoryBytes = (16UL << 20) + 1 }), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => new SimMachine(Sim.Small() with { PhysicalMemoryBytes = 8 * Pte.PageSize }), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => new SimMachine(Sim.Small() with { TlbEntries = 48, TlbWays = 4 }), Throws.ArgumentException);
        Assert.That(() => new SimMachine(Sim.Small() with { KernelMapPages = -1 }), Throws.InstanceOf<ArgumentException>());
        Assert.That(() => new SimMachine(Sim.Small() with { Cost = CostModel.Zero with { IpiSendNs = -1 } }), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(NativeLedger.ProcessOutstandingBytes, Is.EqualTo(outstanding), "a failed boot returns every native byte");
    }
}
