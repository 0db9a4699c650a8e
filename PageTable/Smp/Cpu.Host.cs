using System.Runtime.CompilerServices;

namespace Native.PageTable;

/// <summary>The CPU's side of the host backend (<see cref="MachineBackend.Host"/>): translation by the host MMU, shootdowns by the host kernel.</summary>
public sealed unsafe partial class Cpu
{
    /// <summary>
    /// Translation on the host backend. Kernel addresses are translated by the host MMU (the
    /// address returned is the host address of the kernel page, so the access itself goes
    /// through the real TLB); user addresses are walked in the simulated user page table on
    /// every access and never cached, so a user remap cannot leave a stale software entry.
    /// The PTE word is checked first, so an access to an unmapped page is a clean
    /// <see cref="PageFaultException"/>, and <c>PG_A</c> (and <c>PG_M</c>) are set in it as the
    /// walk would, which keeps the strategies' accessed-bit bookkeeping meaningful.
    /// <para>
    /// Checked mode keeps what is software here: the ownership check of CPU-private mappings (a
    /// translation of another CPU's live private mapping is the same error as on the simulated
    /// backend, although the host would not go stale). The stale and latent-staleness oracles
    /// have nothing to inspect, since the TLBs are the host's: the shadow stays empty,
    /// <see cref="HoldsStale"/> answers false, and stale_accesses stays 0 by construction. Their
    /// place is taken by the end-to-end check of every word read through a remapped slot.
    /// </para>
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private byte* HostTranslate(ulong va, bool write)
    {
        if (_checked)
        {
            CheckPrivate(va);
        }

        ulong pte = Walk(va, write, out _);
        return va >= VmLayout.KERNBASE
            ? _machine.Host!.KernelAddress(va)
            : _frames + (pte & Pte.PG_FRAME) + (va & Pte.PageMask);
    }

    /// <summary>
    /// A shootdown on the host backend: the host kernel has already flushed every CPU that may
    /// cache the old translation, inside the <c>mmap</c> that changed it, whatever
    /// <paramref name="targets"/> says. The round the strategy asked for is counted as the
    /// simulation counts it (rounds, targets, target pages); nothing is posted to the simulated
    /// mailboxes and nothing is waited for.
    /// </summary>
    private int HostShootdown(in CpuSet targets, ShootdownKind kind, int pages)
    {
        int count = targets.Count;
        Count(Counter.ShootdownRounds);
        Count(Counter.IpiTargets, count);
        if (kind == ShootdownKind.All)
        {
            Count(Counter.ShootdownTargetFlushes, count);
        }
        else
        {
            Count(Counter.ShootdownTargetPages, (long)count * (kind == ShootdownKind.Range ? pages : 1));
        }

        return count;
    }
}
