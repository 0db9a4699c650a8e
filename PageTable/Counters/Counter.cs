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

    /// <summary>Target CPUs named by shootdowns (running or idle).</summary>
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

    /// <summary>Accesses of a page whose never-invalidated translation on this CPU no longer matches the PTE (the latent-staleness oracle).</summary>
    LatentStaleAccesses,

    /// <summary>Cross-CPU waits that outlasted their spin and parked the host thread (the CPU published idle meanwhile).</summary>
    CrossCpuParks,
}

/// <summary>Schema names of <see cref="Counter"/> values.</summary>
public static class CounterNames
{
    /// <summary>Number of counters.</summary>
    public const int Count = (int)Counter.CrossCpuParks + 1;

    private static readonly string[] s_names =
    [
        "pte_writes", "pte_clears", "user_pte_writes", "local_invalidations", "full_flushes", "nonglobal_flushes",
        "shootdowns", "ipis_sent", "ipis_received", "ipi_targets", "idle_targets_deferred", "ack_wait_ns",
        "tlb_hits", "tlb_misses", "page_faults", "lock_acquisitions", "lock_contentions", "sleeps", "wakeups",
        "stale_accesses", "context_switches", "migrations", "latent_stale_accesses", "cross_cpu_parks",
    ];

    /// <summary>The schema name of <paramref name="counter"/>.</summary>
    public static string Of(Counter counter) => s_names[(int)counter];

    /// <summary>All counters in declaration order.</summary>
    public static IReadOnlyList<Counter> All { get; } = Enumerable.Range(0, Count).Select(i => (Counter)i).ToArray();
}
