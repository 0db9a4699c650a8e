namespace Native.PageTable;

/// <summary>
/// What an XPFO strategy tells the page allocator of a machine with exclusive page ownership
/// (<see cref="MachineFlavor.Amd64Xpfo"/>, <see cref="PhysicalMemory.InstallOwnershipPolicy"/>):
/// how it flushes the direct-map translations <c>xpfo_alloc_pages</c> removes, whether freed user
/// pages go back into the direct map, and whether user pages come from per-CPU batches.
/// </summary>
public interface IPageOwnershipPolicy
{
    /// <summary>
    /// Pages per refill of a CPU's list of free user pages, all taken out of the direct map at the
    /// refill with one <see cref="Removed"/> (v9's <c>xpfo_pcp_refill</c>); 0 for none: each user
    /// allocation takes its page out of the direct map itself.
    /// </summary>
    int RefillBatch { get; }

    /// <summary>
    /// True when a freed user page goes back into the direct map (v6/v7's <c>xpfo_free_pages</c>),
    /// so that its next allocation to user space removes it and flushes again; false when it stays
    /// out until a kernel allocation takes it (v9).
    /// </summary>
    bool RestoresAtFree { get; }

    /// <summary>
    /// The allocator has cleared the direct-map PTEs of <paramref name="pages"/>, which were valid
    /// and may be cached: flush them as the policy does (<c>xpfo_flush_kernel_tlb</c>). Called on
    /// <paramref name="cpu"/>'s thread, or with null when the allocation came from outside the
    /// machine (set-up), where no CPU can invalidate.
    /// </summary>
    void Removed(Cpu? cpu, ReadOnlySpan<VmPage> pages);
}
