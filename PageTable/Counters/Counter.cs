namespace Native.PageTable;

/// <summary>
/// The events the machine counts, per CPU. Names in <see cref="CounterNames"/> follow the
/// experiment schema (<c>pte_writes</c>, <c>ipis_sent</c>, ...).
/// </summary>
public enum Counter
{
    /// <summary>Kernel PTE stores that install a mapping.</summary>
    KernelPteWrites,

    /// <summary>Kernel PTE stores that remove a mapping.</summary>
    KernelPteClears,

    /// <summary>User page-table updates (counted apart from the kernel's ephemeral mappings).</summary>
    UserPteWrites,

    /// <summary>Single-page invalidations on the local CPU (<c>invlpg</c>), own or on behalf of an IPI.</summary>
    LocalInvalidations,

    /// <summary>Full TLB flushes, including global entries.</summary>
    FullFlushes,

    /// <summary>Flushes of non-global entries (address-space switches).</summary>
    NonGlobalFlushes,

    /// <summary>Shootdown rounds initiated (one per call with at least one target).</summary>
    ShootdownRounds,

    /// <summary>IPIs posted to running CPUs.</summary>
    IpisSent,

    /// <summary>IPIs serviced by this CPU.</summary>
    IpisReceived,

    /// <summary>Target CPUs named by IPI shootdowns (running or idle).</summary>
    IpiTargets,

    /// <summary>Targets that were idle: marked flush-pending instead of interrupted.</summary>
    IdleTargetsDeferred,

    /// <summary>Nanoseconds spent waiting for shootdown acknowledgements.</summary>
    AckWaitNanoseconds,

    /// <summary>TLB lookups that hit.</summary>
    TlbHits,

    /// <summary>TLB lookups that missed and walked the page table.</summary>
    TlbMisses,

    /// <summary>Walks that found no valid PTE.</summary>
    PageFaults,

    /// <summary>Kernel mutex acquisitions.</summary>
    LockAcquisitions,

    /// <summary>Kernel mutex acquisitions that found the mutex held.</summary>
    LockContentions,

    /// <summary>Sleeps (<c>msleep</c>) and blocks on a mutex.</summary>
    Sleeps,

    /// <summary>Threads woken by <c>wakeup</c>.</summary>
    Wakeups,

    /// <summary>Accesses through a TLB entry whose frame no longer matches the PTE (the oracle).</summary>
    StaleAccesses,

    /// <summary>A kernel thread started running on this CPU.</summary>
    ContextSwitches,

    /// <summary>A thread resumed on a different CPU than it last ran on.</summary>
    Migrations,

    /// <summary>
    /// Ephemeral mappings made (an sf_buf miss, a peer's new mapping, one <c>pmap_qenter</c> of a
    /// historical mechanism, a <c>pager_map</c> <c>pmap_kenter</c>), recorded by the mechanism that makes them.
    /// </summary>
    Mappings,

    /// <summary>Pages those mappings covered: every kernel PTE write should be one of them.</summary>
    MappedPages,

    /// <summary>
    /// Kernel PTE stores in kmem (permanently mapped kernel memory), installs and removals, and
    /// under exclusive page ownership the page allocator's direct-map stores (<c>xpfo_alloc_pages</c>,
    /// <c>xpfo_free_pages</c>); not ephemeral.
    /// </summary>
    KmemPteWrites,

    /// <summary>TLB misses on ephemeral-mapping addresses (the sf_buf window, the fixmap and <c>kernel_map</c> with its submaps; the direct map when it is page-mapped, where XPFO maps pages).</summary>
    MappingTlbMisses,

    /// <summary>Single-page invalidations done in IPI handlers (a subset of <see cref="LocalInvalidations"/>).</summary>
    IpiInvalidations,

    /// <summary>Full flushes done for a shootdown: in an IPI handler, or deferred to an idle CPU's wake-up (a subset of <see cref="FullFlushes"/>).</summary>
    IpiFlushes,

    /// <summary>Pages shootdowns asked their targets to invalidate, summed over targets (running or idle).</summary>
    ShootdownTargetPages,

    /// <summary>Full flushes shootdowns asked their targets for, summed over targets (running or idle).</summary>
    ShootdownTargetFlushes,

    /// <summary>
    /// Non-global flushes a mapping mechanism does to make its own mappings valid on this CPU
    /// (NetBSD emap's consume and switch; a subset of <see cref="NonGlobalFlushes"/>): mapping
    /// work, unlike the flushes of address-space switches.
    /// </summary>
    MappingFlushes,

    /// <summary>Nanoseconds of simulated cost charged by the cost model on this CPU (see <see cref="CostModel"/>).</summary>
    ChargedNanoseconds,

    /// <summary>Accesses of a page whose never-invalidated translation on this CPU no longer matches the PTE (the latent-staleness oracle).</summary>
    LatentStaleAccesses,

    /// <summary>Cross-CPU waits that outlasted their spin and parked the host thread (published idle meanwhile on an oversubscribed machine).</summary>
    CrossCpuParks,

    /// <summary>System calls and traps entered (priced by the profile's kernel entry in virtual time).</summary>
    KernelEntries,

    /// <summary>Broadcast invalidation instructions issued by this CPU (<c>INVLPGB</c>, <c>TLBI ...IS</c>): one per page, per range chunk, or per full flush.</summary>
    BroadcastInvalidations,

    /// <summary>Pages those instructions covered (a full flush covers none by name).</summary>
    BroadcastPages,

    /// <summary>Completion waits issued by this CPU (<c>TLBSYNC</c>, <c>DSB ISH</c>): one per broadcast shootdown.</summary>
    BroadcastSyncs,

    /// <summary>Target CPUs named by broadcast shootdowns (running or idle); <see cref="IpiTargets"/> counts those of IPI shootdowns.</summary>
    BroadcastTargets,

    /// <summary>
    /// Checked mode: exposure windows opened, counted on the CPU whose mapping operation opened them.
    /// When a kernel PTE store removes or replaces the translation VA to P of an ephemeral mapping,
    /// every CPU (the storing one included) whose TLB still caches VA to P when that operation
    /// returns to its caller (the outermost strategy call on the thread,
    /// <see cref="KernelPmap.LeaveOperation"/>) is exposed: one window per such CPU, open until it
    /// drops the entry (<c>invlpg</c>, a full or non-global flush, an eviction) or the trial ends.
    /// A CPU found idle with a flush pending is not exposed: it flushes before it runs anything.
    /// Designs that invalidate everywhere before returning open none.
    /// </summary>
    Exposures,

    /// <summary>
    /// Checked mode in virtual time: the exposure windows' lengths summed, counted on the exposed
    /// CPU. A window runs from the storing CPU's clock at the operation's return to the exposed
    /// CPU's clock when it drops the entry (floored at 0), or to the latest CPU clock at the
    /// trial's end (<see cref="Machine.CloseExposures"/>).
    /// </summary>
    ExposedNanoseconds,
}

/// <summary>Schema names of <see cref="Counter"/> values.</summary>
public static class CounterNames
{
    /// <summary>Number of counters.</summary>
    public const int Count = (int)Counter.ExposedNanoseconds + 1;

    private static readonly string[] s_names =
    [
        "pte_writes", "pte_clears", "user_pte_writes", "local_invalidations", "full_flushes", "nonglobal_flushes",
        "shootdowns", "ipis_sent", "ipis_received", "ipi_targets", "idle_targets_deferred", "ack_wait_ns",
        "tlb_hits", "tlb_misses", "page_faults", "lock_acquisitions", "lock_contentions", "sleeps", "wakeups",
        "stale_accesses", "context_switches", "migrations", "mappings", "mapped_pages", "kmem_pte_writes",
        "mapping_tlb_misses", "ipi_invalidations", "ipi_flushes", "shootdown_target_pages", "shootdown_target_flushes",
        "mapping_flushes", "charged_ns", "latent_stale_accesses", "cross_cpu_parks",
        "kernel_entries", "broadcast_invalidations", "broadcast_pages", "broadcast_syncs", "broadcast_targets", "exposures", "exposed_ns",
    ];

    /// <summary>The schema name of <paramref name="counter"/>.</summary>
    public static string Of(Counter counter) => s_names[(int)counter];

    /// <summary>All counters in declaration order.</summary>
    public static IReadOnlyList<Counter> All { get; } = Enumerable.Range(0, Count).Select(i => (Counter)i).ToArray();
}
