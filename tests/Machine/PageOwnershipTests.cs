using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>
/// Who may touch a page or a CPU: held pages outlive an unmap or an exiting process, a dead address
/// space hands out nothing, and only a CPU's owner services its mailbox.
/// </summary>
[NonParallelizable]
public sealed class PageOwnershipTests
{
    private const ulong Va = 0x1000_0000;

    private static MachineOptions Small(int cpus = 2) => new()
    {
        Cpus = cpus,
        PhysicalMemoryBytes = 16UL << 20,
        SfBufWindowPages = 16,
        KernelMapPages = 64,
        KernelMemoryPages = 64,
        ShootdownWatchdog = TimeSpan.FromSeconds(15),
    };

    /// <summary>
    /// An unmap of a page that a ptrace or a direct pipe write holds (ExtractAndHold) succeeds,
    /// and the frame reaches the free queue when the hold is dropped (FreeBSD's PG_UNHOLDFREE),
    /// instead of the unmap throwing and the frame being lost.
    /// </summary>
    [Test]
    public void UnmappingAPageHeldByExtractAndHoldNeitherThrowsNorLeaksTheFrame()
    {
        using var machine = new SimMachine(Small());
        int freeBefore = machine.Physical.FreePages;
        Exception? unmapError = null;
        machine.Run(0, () =>
        {
            var space = machine.CreateVmSpace();
            space.MapAnonymous(Va, Pte.PageSize);
            var held = space.Pmap.ExtractAndHold(Va)!.Value; // proc_rwmem / pipe_build_write_buffer
            try
            {
                space.Unmap(Va, Pte.PageSize); // another thread of the process unmaps meanwhile
            }
            catch (Exception ex)
            {
                unmapError = ex;
            }

            machine.Physical.Unhold(held); // the ptrace/pipe operation finishes
            space.Destroy();
        });

        Assert.That(unmapError, Is.Null, "munmap of a page a concurrent ptrace or direct pipe write holds");
        Assert.That(machine.Physical.FreePages, Is.EqualTo(freeBefore), "every frame is back on the free queue once the hold is dropped");
    }

    /// <summary>
    /// VmSpace.Destroy clears the page table before it frees the frames, so once a frame is back
    /// on the free queue and given to another owner, ExtractAndHold on the dead space cannot find
    /// it (it would pass its PTE re-check, since nothing changed the stale PTE).
    /// </summary>
    [Test]
    public void ExtractAndHoldNeverReturnsAFrameThatWasFreedAndReallocatedElsewhere()
    {
        using var machine = new SimMachine(Small());
        VmPage? leaked = null;
        VmPage other = default;
        machine.Run(0, () =>
        {
            var space = machine.CreateVmSpace();
            space.MapAnonymous(Va, 2 * Pte.PageSize);
            var held = space.Pmap.ExtractAndHold(Va + Pte.PageSize)!.Value; // a ptrace of the exiting process
            try
            {
                space.Destroy();
            }
            catch (InvalidOperationException)
            {
                // Free of the held page refused; the first frame is already free.
            }

            other = machine.Physical.Alloc(AllocFlags.Wired); // someone else gets a frame
            leaked = space.Pmap.ExtractAndHold(Va);
            machine.Physical.Unhold(held);
            if (leaked is { } p)
            {
                machine.Physical.Unhold(p);
            }
        });

        Assert.That(leaked, Is.Not.EqualTo((VmPage?)other), "a dead address space must not hand out a page another owner now has");
    }

    /// <summary>
    /// Cpu.Poll services the mailbox, which writes that CPU's TLB and counters: in checked mode a
    /// thread that does not hold the CPU is refused, as InvalidatePage and FlushTlb refuse it,
    /// instead of acknowledging the CPU's shootdown behind its owner's back.
    /// </summary>
    [Test]
    public void PollingACpuFromAThreadThatDoesNotHoldItIsRefusedInCheckedMode()
    {
        using var machine = new SimMachine(Small());
        var ownerHolding = new ManualResetEventSlim();
        var release = new ManualResetEventSlim();
        var owner = machine.StartThread("cpu1-owner", () =>
        {
            ownerHolding.Set();
            release.Wait(); // holds CPU 1 without polling (a host wait, only for the test)
        }, cpu: 1, bound: true);
        ownerHolding.Wait();

        Exception? pollError = null;
        long ipisBefore = machine.Counters().OnCpu(1, Counter.IpisReceived);
        var initiator = machine.StartThread("cpu0-initiator", () =>
        {
            machine.CurrentCpu.Shootdown(CpuSet.Single(1), ShootdownKind.Page, 0xffff_ffff_8000_0000);
        }, cpu: 0, bound: true);

        // Wait until the request is in CPU 1's mailbox, then serve it from this host thread.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!initiator.HasExited && DateTime.UtcNow < deadline)
        {
            try
            {
                machine.Cpus[1].Poll();
            }
            catch (Exception ex)
            {
                pollError = ex;
                break;
            }

            Thread.Yield();
        }

        release.Set();
        owner.Join(TimeSpan.FromSeconds(20));
        initiator.Join(TimeSpan.FromSeconds(20));
        long ipisAfter = machine.Counters().OnCpu(1, Counter.IpisReceived);

        Assert.That(pollError, Is.InstanceOf<InvalidOperationException>(),
            $"cpu 1's mailbox was served by a thread that does not hold it (ipis_received on cpu 1: {ipisBefore} -> {ipisAfter})");
    }
}
