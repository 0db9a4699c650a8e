using Native.PageTable;

namespace Native.SfBufNative;

/// <summary>
/// What a strategy is, what it follows, which of the sf_buf interface's promises it keeps (the
/// documented exceptions tests and experiments consult instead of testing names), and how to
/// create it. The registry of strategies: <see cref="All"/>, in the order results list them, is
/// where a strategy is registered, once; every list of names is derived from it. A strategy
/// built into this assembly is one entry of the built-in list; one from another assembly is added
/// with <see cref="Register"/> before any list is read.
/// </summary>
/// <param name="Name">The strategy's name.</param>
/// <param name="Family">The kernel whose design it is (FreeBSD 2005, Linux, DragonFly, NetBSD, FreeBSD 11).</param>
/// <param name="Follows">The functions and files it follows.</param>
/// <param name="Group">The paper's, a peer, one of the project's own designs, or a sample registered from another assembly.</param>
/// <param name="HasPool">True when allocations can run out of mappings (or of KVA) and wait, or fail with NoWait.</param>
/// <param name="InterruptibleWait">True when a <see cref="SfBufFlags.Catch"/> wait ends when cancelled; false where the kernel waits uninterruptibly.</param>
/// <param name="KvaOnAccessingCpu">True when <see cref="SfBufMapper.Kva"/> does work on the accessing CPU (lwbuf, emap).</param>
/// <param name="PrivateUsers">What private short users (<see cref="SfBufFlags.CpuPrivate"/>: pipe reader, md, ptrace, <c>uiomove_fromphys</c>) get.</param>
/// <param name="SharedUsers">What shared users (sendfile, vnode page-in, the exec header) get.</param>
/// <param name="PrivateRules">
/// What a thread holding a private mapping (<see cref="SfBufFlags.CpuPrivate"/>) must respect, as
/// the strategy's API documents it: generic drivers (stress, exploration) consult it and keep to
/// it instead of tripping the strategy's own checks (<see cref="SfBufPrivateRules"/>).
/// </param>
/// <param name="PerCpuPrivateSlots">
/// Private mappings each CPU (or thread) makes outside the pool, in per-CPU slots (kmap_atomic's
/// and kmap_local's fixmap slots, the quick page); the pool's <see cref="SfBufStats.NsfbufsUsed"/>
/// does not count them. 0 when every private mapping comes from the pool.
/// </param>
/// <param name="FreesReachWaitersOnAnyCpu">
/// True when a buffer freed on one CPU can end a wait on another. False for lwbuf: objects freed
/// on a CPU stay in its magazines and DragonFly's objcache never takes from another CPU's, so with
/// <c>kernel_map</c> exhausted a waiter on a CPU whose magazines are empty waits for ever (drivers
/// keep such a strategy's waiters on the CPU that frees).
/// </param>
/// <param name="Create">Creates the strategy on a machine with a pool of the given size (null: the sf_buf window); <see cref="SfBufMapper.Create"/> calls it and then publishes the instruments.</param>
public sealed record SfBufStrategyInfo(
    string Name,
    string Family,
    string Follows,
    SfBufStrategyGroup Group,
    bool HasPool,
    bool InterruptibleWait,
    bool KvaOnAccessingCpu,
    string PrivateUsers,
    string SharedUsers,
    SfBufPrivateRules PrivateRules,
    int PerCpuPrivateSlots,
    bool FreesReachWaitersOnAnyCpu,
    Func<Machine, int?, SfBufMapper> Create)
{
    // What the host backend turns every peer with per-CPU slots into (see HostBackend).
    // Why the XPFO peers do not run on the host backend.
    private const string XpfoNotOnHost =
        "its mechanism is the kernel's own direct map: the host backend's direct map is one user-space mmap whose pages cannot leave it while user space owns them, "
        + "and removing one page would be a munmap flushed on every CPU by the host kernel, whatever the policy";

    private const string HostFlushesEverywhere =
        "user space cannot leave another CPU's translation in place: every mmap(MAP_FIXED) is flushed by the host kernel on every CPU that ran the process, "
        + "so this would run correctly but measure a remap with a broadcast shootdown per use, not this mechanism";

    /// <summary>
    /// The built-in strategies, in the order results list them: the paper's three, the peers, then our own. A new
    /// built-in strategy is one entry here (and its file or folder under <c>Strategies/</c>).
    /// </summary>
    private static readonly SfBufStrategyInfo[] s_builtIns =
    [
        new(SfBufMapper.Original, "FreeBSD 5", "kmem_alloc + pmap_qenter / pmap_qremove (vm_machdep.c, sys_pipe.c, kern_exec.c before 2004)",
            SfBufStrategyGroup.Paper, true, true, false, "per-use kernel_map KVA, broadcast shootdowns", "the same", SfBufPrivateRules.None, 0, true,
            (machine, _) => new OriginalMapper(machine))
        {
            MapsPerUse = true,
            PrivateShootdowns = SfBufShootdowns.PerUse,
            Capacity = (m, _) => m.Machine.KernelMap.Region.Pages,
        },
        new(SfBufMapper.I386, "FreeBSD 6", "sf_buf_alloc / sf_buf_free, i386 vm_machdep.c rev 1.269",
            SfBufStrategyGroup.Paper, true, true, false, "sf_buf with SFB_CPUPRIVATE: at most a local invlpg", "sf_buf: local invlpg + masked shootdown on a miss", SfBufPrivateRules.None, 0, true,
            (machine, nsfbufs) => new I386Mapper(machine, nsfbufs))
        {
            CachedUsers = SfBufUsers.All,
            PoolSizeIsParameter = true,
            NeverUnmaps = true,
            Capacity = (m, _) => ((I386Mapper)m).Nsfbufs,
        },
        new(SfBufMapper.Amd64, "FreeBSD 6", "amd64 sf_buf.h: the direct map",
            SfBufStrategyGroup.Paper, false, true, false, "the direct map", "the direct map", SfBufPrivateRules.None, 0, true,
            (machine, _) => new DirectMapMapper(machine))
        {
            NeedsDirectMap = true,
            NeverUnmaps = true,
            Capacity = (_, _) => int.MaxValue,
        },
        new(SfBufMapper.LinuxKmap, "Linux", "kmap_high / kunmap_high / flush_all_zero_pkmaps (mm/highmem.c, x86-32)",
            SfBufStrategyGroup.Peer, true, false, false, "kmap", "kmap", SfBufPrivateRules.None, 0, true,
            (machine, nsfbufs) => new Strategies.Linux.LinuxKmapMapper(machine, nsfbufs))
        {
            CachedUsers = SfBufUsers.All,
            PoolSizeIsParameter = true,
            ShootdownsOnlyWhenRecycling = true,
            PrivateShootdowns = SfBufShootdowns.WhenRecycling,
            ShootdownCounter = "pkmap.global_flushes",
            Capacity = (m, _) => ((Strategies.Linux.LinuxHighmemMapper)m).LastPkmap,
        },
        new(SfBufMapper.LinuxKmapAtomic, "Linux", "kmap_atomic / __kunmap_atomic (arch/x86/mm/highmem_32.c, 2.6.37-5.10); kmap for shared users",
            SfBufStrategyGroup.Peer, true, false, false, "kmap_atomic: per-CPU LIFO fixmap slot, preemption off", "kmap", SfBufPrivateRules.ReleaseLifo | SfBufPrivateRules.SameThread | SfBufPrivateRules.NoSleep, Strategies.Linux.KmapAtomic.KM_TYPE_NR, true,
            (machine, nsfbufs) => new Strategies.Linux.LinuxKmapAtomicMapper(machine, nsfbufs))
        {
            CachedUsers = SfBufUsers.Shared,
            PoolSizeIsParameter = true,
            ShootdownsOnlyWhenRecycling = true,
            ShootdownCounter = "pkmap.global_flushes",
            PrivateMapCounters = ["kmap_atomic.maps"],
            Capacity = (m, isPrivate) => isPrivate ? Strategies.Linux.KmapAtomic.KM_TYPE_NR : ((Strategies.Linux.LinuxHighmemMapper)m).LastPkmap,
            PrivateNeverWaits = true,
            NotOnHost = "its saving is the per-CPU fixmap slot invalidated with a local invlpg only; " + HostFlushesEverywhere,
        },
        new(SfBufMapper.LinuxKmapLocal, "Linux", "__kmap_local_pfn_prot / kunmap_local_indexed / __kmap_local_sched_out/in (mm/highmem.c, 5.11+); kmap for shared users",
            SfBufStrategyGroup.Peer, true, false, false, "kmap_local_page: per-thread LIFO stack of per-CPU slots, migration off", "kmap", SfBufPrivateRules.ReleaseLifo | SfBufPrivateRules.SameThread | SfBufPrivateRules.NoMigration, Strategies.Linux.KmapLocal.KM_MAX_IDX, true,
            (machine, nsfbufs) => new Strategies.Linux.LinuxKmapLocalMapper(machine, nsfbufs))
        {
            CachedUsers = SfBufUsers.Shared,
            PoolSizeIsParameter = true,
            ShootdownsOnlyWhenRecycling = true,
            ShootdownCounter = "pkmap.global_flushes",
            PrivateMapCounters = ["kmap_local.maps"],
            Capacity = (m, isPrivate) => isPrivate ? Strategies.Linux.KmapLocal.KM_MAX_IDX : ((Strategies.Linux.LinuxHighmemMapper)m).LastPkmap,
            PrivateNeverWaits = true,
            NotOnHost = "its saving is the per-CPU slot invalidated with a local invlpg only, remapped at context switches; " + HostFlushesEverywhere,
        },
        new(SfBufMapper.LinuxMermap, "Linux", "mermap_get / mermap_alloc / mermap_put (mm/mermap.c, the Feb 2026 __GFP_UNMAPPED RFC) with arch_mermap_flush_tlb (arch/x86/include/asm/mermap.h); kmap for shared users and when mermap_get fails",
            SfBufStrategyGroup.Peer, true, false, false, "mermap_get: per-CPU bump allocator of KVA, migration off, put without a flush, one local flush when the region wraps", "kmap", SfBufPrivateRules.SameThread | SfBufPrivateRules.NoMigration, Strategies.Linux.Mermap.MERMAP_ALLOCS, true,
            (machine, nsfbufs) => new Strategies.Linux.LinuxMermapMapper(machine, nsfbufs))
        {
            CachedUsers = SfBufUsers.Shared,
            PoolSizeIsParameter = true,
            ShootdownsOnlyWhenRecycling = true,
            ShootdownCounter = "pkmap.global_flushes",
            PrivateMapCounters = ["mermap.maps"],
            Capacity = (m, isPrivate) => (isPrivate ? ((Strategies.Linux.LinuxMermapMapper)m).MermapCapacity : 0) + ((Strategies.Linux.LinuxHighmemMapper)m).LastPkmap,
            NotOnHost = "its saving is the per-CPU region put without a flush and flushed on the local CPU only when it wraps; " + HostFlushesEverywhere,
        },
        new(SfBufMapper.DragonFlyLwbuf, "DragonFly", "lwbuf_alloc / lwbuf_kva / lwbuf_set_global / lwbuf_free (sys/cpu/i386/misc/lwbuf.c); sf_buf_alloc (kern_sfbuf.c)",
            SfBufStrategyGroup.Peer, true, false, true, "lwbuf: PTE + local invlpg, lwbuf_kva on the accessing CPU", "lwbuf + lwbuf_set_global (DragonFly's sf_buf)", SfBufPrivateRules.None, 0, false,
            (machine, _) => new Strategies.DragonFly.LwbufMapper(machine))
        {
            ShootdownCounter = "lwbuf.set_global_syncs",
            Capacity = (m, _) => m.Machine.KernelMap.Region.Pages,
            NotOnHost = "its saving is the per-CPU invalidation recorded in a cpumask (lwbuf_kva invalidates lazily, only on the accessing CPU); " + HostFlushesEverywhere,
        },
        new(SfBufMapper.NetBsdEmap, "NetBSD", "uvm_emap_alloc / enter / produce / consume / remove / switch (sys/uvm/uvm_emap.c, x86 pmap_emap_*)",
            SfBufStrategyGroup.Peer, true, false, true,
            "readers: emap window, read-only enter + produce, consume on the accessing CPU; writers: kernel_map + pmap_kenter_pa, pmap_kremove + pmap_update",
            "the same", SfBufPrivateRules.None, 0, true,
            (machine, nsfbufs) => new Strategies.NetBsd.EmapMapper(machine, nsfbufs))
        {
            PoolSizeIsParameter = true,
            PrivateShootdowns = SfBufShootdowns.PerWrittenPage,
            ShootdownCounter = "emap.kenter_shootdowns",
            // Readers map in the emap window, writers in kernel_map: the smaller bounds a request
            // that may hold both kinds.
            Capacity = (m, _) => Math.Min(m.Stats().Nsfbufs, m.Machine.KernelMap.Region.Pages),
            NotOnHost = "its saving is deferred invalidation: generations, consumed on the accessing CPU, piggybacked on non-global TLB flushes; user space can neither defer the host kernel's flush nor cause or observe a non-global flush, so this would not measure emap",
        },
        new(SfBufMapper.FreeBsdQuick, "FreeBSD 11", "pmap_quick_enter_page / pmap_quick_remove_page (i386 pmap.c, r286296); sf_buf for the rest",
            SfBufStrategyGroup.Peer, true, true, false, "pmap_quick_enter_page (nested: sfbuf-i386 CPU-private)", "sfbuf-i386", SfBufPrivateRules.SameThread | SfBufPrivateRules.NoSleep, 1, true,
            (machine, nsfbufs) => new Strategies.FreeBsd.QuickMapper(machine, nsfbufs))
        {
            CachedUsers = SfBufUsers.Shared,
            PoolSizeIsParameter = true,
            PrivateMapCounters = ["quick.enters", "quick.nested_fallbacks"],
            Capacity = (m, isPrivate) => (isPrivate ? 1 : 0) + ((Strategies.FreeBsd.QuickMapper)m).SfBufPool.Nsfbufs,
            NotOnHost = "its saving is the per-CPU quick-map page invalidated with a local invlpg only (pmap_quick_enter_page); " + HostFlushesEverywhere,
        },
        new(SfBufMapper.AsiEphmap, "Linux ASI", "ephmap_get / ephmap_put / ephmap_setup (mm/ephmap.c, Address Space Isolation branch); kmap for shared users",
            SfBufStrategyGroup.Peer, true, false, false,
            "ephmap: one region per CPU per address space, migration off, local invlpg (full flush from 33 pages); kmap when the region is in use",
            "kmap", SfBufPrivateRules.SameThread | SfBufPrivateRules.NoMigration, 1, true,
            (machine, nsfbufs) => new Strategies.Asi.AsiEphmapMapper(machine, nsfbufs))
        {
            CachedUsers = SfBufUsers.Shared,
            PoolSizeIsParameter = true,
            ShootdownsOnlyWhenRecycling = true,
            PrivateShootdowns = SfBufShootdowns.WhenRecycling,
            ShootdownCounter = "pkmap.global_flushes",
            PrivateMapCounters = ["ephmap.gets", "ephmap.fallbacks"],
            Capacity = (m, isPrivate) => (isPrivate ? 1 : 0) + ((Strategies.Linux.LinuxHighmemMapper)m).LastPkmap,
            NotOnHost = "its saving is the per-CPU region invalidated with a local invlpg only; " + HostFlushesEverywhere,
        },
        new(SfBufMapper.LinuxXpfo, "Linux XPFO", "xpfo_kmap / xpfo_kunmap / xpfo_alloc_pages / xpfo_free_pages (mm/xpfo.c, RFC v6) with xpfo_flush_kernel_tlb = flush_tlb_kernel_range (arch/x86/mm/xpfo.c), behind 64-bit kmap",
            SfBufStrategyGroup.Peer, false, true, false,
            "kmap: the direct-map address, the PTE restored for a user page; kunmap to mapcount 0: PTE cleared, shootdown to every CPU",
            "the same", SfBufPrivateRules.None, 0, true,
            (machine, _) => new Strategies.Linux.LinuxXpfoMapper(machine, Strategies.Linux.XpfoFlushPolicy.Immediate))
        {
            NeedsExclusivePageOwnership = true,
            PrivateShootdowns = SfBufShootdowns.PerUserPage,
            ShootdownCounter = "xpfo.shootdowns",
            Capacity = (_, _) => int.MaxValue,
            NotOnHost = XpfoNotOnHost,
        },
        new(SfBufMapper.LinuxXpfoDeferred, "Linux XPFO", "v7: xpfo_kunmap with xpfo_flush_tlb_kernel_range, pending_xpfo_flush flushed in switch_mm_irqs_off (arch/x86/mm/tlb.c)",
            SfBufStrategyGroup.Peer, false, true, false,
            "kmap as linux-xpfo; kunmap to mapcount 0: PTE cleared, local invlpg, a full flush owed by every other CPU at its next context switch",
            "the same", SfBufPrivateRules.None, 0, true,
            (machine, _) => new Strategies.Linux.LinuxXpfoMapper(machine, Strategies.Linux.XpfoFlushPolicy.Deferred))
        {
            NeedsExclusivePageOwnership = true,
            ShootdownsOnlyWhenRecycling = true,
            Capacity = (_, _) => int.MaxValue,
            NotOnHost = XpfoNotOnHost,
        },
        new(SfBufMapper.LinuxXpfoBatched, "Linux XPFO", "v9: v7 plus xpfo_pcp_refill in __rmqueue_pcplist (mm/page_alloc.c): user pages leave the direct map a per-CPU batch at a time, one xpfo_flush_tlb_all per batch; freed user pages stay out",
            SfBufStrategyGroup.Peer, false, true, false,
            "as linux-xpfo-deferred",
            "the same", SfBufPrivateRules.None, 0, true,
            (machine, _) => new Strategies.Linux.LinuxXpfoMapper(machine, Strategies.Linux.XpfoFlushPolicy.Batched))
        {
            NeedsExclusivePageOwnership = true,
            BatchesUserAllocations = true,
            ShootdownsOnlyWhenRecycling = true,
            Capacity = (_, _) => int.MaxValue,
            NotOnHost = XpfoNotOnHost,
        },
        new(SfBufMapper.EpochCache, "this project", "sfbuf-i386's mapping cache with a lock-free page index (Linux's page_address) and epoch-deferred, batched recycling (NetBSD emap's generations, kmap's batched flush): SfBufNative/Strategies/EpochCache/",
            SfBufStrategyGroup.Own, true, true, false, "the shared cache: no hint needed, no IPI", "the same: lock-free hit, no IPI on a miss unless the epoch fallback runs", SfBufPrivateRules.None, 0, true,
            (machine, nsfbufs) => new EpochCacheMapper(machine, nsfbufs))
        {
            CachedUsers = SfBufUsers.All,
            PoolSizeIsParameter = true,
            ShootdownsOnlyWhenRecycling = true,
            PrivateShootdowns = SfBufShootdowns.WhenRecycling,
            ShootdownCounter = EpochCacheMapper.DetailFallbackShootdowns,
            RecyclesPerCpu = true,
            CheckInvariants = m => ((EpochCacheMapper)m).TestHookCheckInvariants(),
            Capacity = (m, _) => ((EpochCacheMapper)m).Nsfbufs,
            NotOnHost = "its saving is invalidation deferred to the flush points every CPU passes anyway (context switch, idle, epoch catch-up); user space cannot defer the host kernel's flush of a retired slot, so this would measure a broadcast shootdown per recycled slot, not this mechanism",
        },
    ];

    private static readonly Lock s_registerLock = new();
    private static Registry s_registry = new(s_builtIns);

    /// <summary>
    /// Every strategy, in the order results list them: the paper's three, the peers, our own,
    /// then those added with <see cref="Register"/>, in the order they were registered. A snapshot:
    /// a later registration does not change a list already read.
    /// </summary>
    public static IReadOnlyList<SfBufStrategyInfo> All => Volatile.Read(ref s_registry).All;

    /// <summary>The names of <see cref="All"/>, in the same order (a snapshot, like it).</summary>
    public static IReadOnlyList<string> Names => Volatile.Read(ref s_registry).Names;

    /// <summary>
    /// Adds a strategy from another assembly to the registry (<see cref="All"/>, every list of
    /// names, <see cref="SfBufMapper.Create"/>). Register before anything enumerates the
    /// strategies (test discovery, a command's options): one line per strategy, called at start-up.
    /// Thread-safe.
    /// </summary>
    /// <param name="info">The strategy's description; its <see cref="Create"/> constructs it with the pool size it is given.</param>
    /// <exception cref="ArgumentException">The name is empty or already in use (built in or registered before), or Create or Capacity is missing.</exception>
    public static void Register(SfBufStrategyInfo info)
    {
        ArgumentNullException.ThrowIfNull(info);
        if (string.IsNullOrWhiteSpace(info.Name))
        {
            throw new ArgumentException("a strategy needs a name", nameof(info));
        }

        if (info.Create == null || info.Capacity == null)
        {
            throw new ArgumentException($"sf_buf strategy '{info.Name}' needs Create and Capacity", nameof(info));
        }

        lock (s_registerLock)
        {
            var registry = s_registry;
            if (registry.ByName.TryGetValue(info.Name, out var existing))
            {
                throw new ArgumentException(
                    ReferenceEquals(existing, info) || s_builtIns.All(b => b.Name != info.Name)
                        ? $"sf_buf strategy '{info.Name}' is already registered"
                        : $"sf_buf strategy name '{info.Name}' is in use by a built-in strategy",
                    nameof(info));
            }

            Volatile.Write(ref s_registry, new Registry([.. registry.All, info]));
        }
    }

    /// <summary>
    /// Why the strategy does not run on the host backend (<see cref="MachineBackend.Host"/>), or
    /// null when it does. A strategy runs there when its mechanism is expressible in user space:
    /// PTE updates, the host kernel's broadcast shootdown and a mapping cache. One whose saving
    /// rests on leaving other CPUs' translations stale (local-only invalidation of per-CPU slots,
    /// cpumasks, deferred generations) is refused with this reason rather than measured as
    /// something it is not.
    /// </summary>
    public string? NotOnHost { get; init; }

    /// <summary>
    /// How many mappings one caller can hold at once from a mapper of this strategy, for shared
    /// users (false) and private ones (true): what <see cref="SfBufMapper.Capacity"/> reports.
    /// </summary>
    public required Func<SfBufMapper, bool, int> Capacity { get; init; }

    /// <summary>
    /// True when private users' mappings come from per-CPU slots and never wait (kmap_atomic,
    /// kmap_local): <see cref="SfBufMapper.AllocMany"/> takes them without its gate.
    /// </summary>
    public bool PrivateNeverWaits { get; init; }

    /// <summary>
    /// True when the strategy needs the direct map (amd64's DMAP): every physical page already has
    /// a kernel address, so it maps nothing, writes no kernel PTE and sends no shootdown; it runs
    /// only on a machine of flavor <see cref="MachineFlavor.Amd64"/> (<see cref="Flavor"/>).
    /// </summary>
    public bool NeedsDirectMap { get; init; }

    /// <summary>
    /// True when the strategy is XPFO's: it runs only on a machine with exclusive page ownership
    /// (<see cref="MachineFlavor.Amd64Xpfo"/>), whose page-mapped direct map it maps user pages into
    /// and out of (<see cref="Flavor"/>). It maps, unmaps and invalidates, unlike <see cref="NeedsDirectMap"/>.
    /// </summary>
    public bool NeedsExclusivePageOwnership { get; init; }

    /// <summary>
    /// True when the strategy makes the machine hand out user pages from per-CPU lists refilled in
    /// batches (XPFO v9's <c>xpfo_pcp_refill</c>): a user allocation then need not take the page at
    /// the free queue's head.
    /// </summary>
    public bool BatchesUserAllocations { get; init; }

    /// <summary>
    /// The machine flavor the strategy runs on: amd64 when it needs the direct map, amd64 with
    /// exclusive page ownership for XPFO, i386 otherwise.
    /// </summary>
    public MachineFlavor Flavor => NeedsExclusivePageOwnership ? MachineFlavor.Amd64Xpfo : NeedsDirectMap ? MachineFlavor.Amd64 : MachineFlavor.I386;

    /// <summary>
    /// The flavor to boot for this strategy where the caller would otherwise boot
    /// <paramref name="preferred"/>: the strategy's own when it needs one (the direct map, exclusive
    /// page ownership), else <paramref name="preferred"/> (every other strategy runs on any flavor).
    /// </summary>
    public MachineFlavor FlavorOr(MachineFlavor preferred) =>
        NeedsExclusivePageOwnership ? MachineFlavor.Amd64Xpfo : NeedsDirectMap ? MachineFlavor.Amd64 : preferred;

    /// <summary>
    /// True when nothing is kept between uses: every allocation maps fresh <c>kernel_map</c> KVA
    /// (<c>pmap_qenter</c>) and every free removes it (<c>pmap_qremove</c>), each a broadcast
    /// shootdown on SMP; with it the simulated kernel's subsystems take their pre-sf_buf (FreeBSD 5)
    /// paths (the pipe's window, <c>exec_map</c>, <c>pager_map</c>, sendfile's fixed KVA per buffer),
    /// whose mappings and shootdowns the tests and experiments count exactly.
    /// </summary>
    public bool MapsPerUse { get; init; }

    /// <summary>
    /// Whose freed mappings stay cached by page (<see cref="SfBufUsers"/>): a freed mapping stays
    /// valid until its slot is recycled (taken for another page; for kmap, flushed when the clock
    /// hand wraps), and a later allocation of the same page hits, with the same address, no PTE
    /// write and no invalidation; a miss is one mapping. So while the working set fits the pool
    /// each page is mapped once (sf_buf's inactive list, kmap's <c>page_address</c>, epoch-cache's
    /// index). <see cref="SfBufUsers.None"/> when every allocation maps anew (or, for the direct
    /// map, maps nothing).
    /// </summary>
    public SfBufUsers CachedUsers { get; init; }

    /// <summary>
    /// True when the cached slots are recycled CPU by CPU (epoch-cache's partitions, each with its
    /// own clock hand): a CPU missing alone cycles through the whole pool as LRU would, but while
    /// many CPUs miss at once the order is LRU only approximately, so a page of a working set
    /// larger than the pool may still be cached when it comes round. False when one order spans
    /// the pool (sf_buf's inactive list, kmap's clock hand).
    /// </summary>
    public bool RecyclesPerCpu { get; init; }

    /// <summary>True when every allocation, private and shared, goes through the cache of mappings (<see cref="CachedUsers"/> is <see cref="SfBufUsers.All"/>).</summary>
    public bool IsMappingCache => CachedUsers == SfBufUsers.All;

    /// <summary>
    /// True when the pool's size is a parameter of <see cref="Create"/> (<c>nsfbufs</c>,
    /// <c>LAST_PKMAP</c>, the emap window); false when the strategy takes what the machine has
    /// (<c>kernel_map</c>, the direct map). Generic drivers (stress, exploration) give such a
    /// strategy a small pool, so that exhaustion, waits and recycling are exercised.
    /// </summary>
    public bool PoolSizeIsParameter { get; init; }

    /// <summary>
    /// What private users' (<see cref="SfBufFlags.CpuPrivate"/>) mappings cost in shootdowns
    /// (<see cref="SfBufShootdowns"/>): none for the strategies whose private mappings are
    /// invalidated on the local CPU only, or never.
    /// </summary>
    public SfBufShootdowns PrivateShootdowns { get; init; }

    /// <summary>
    /// The <see cref="SfBufStats.Details"/> counter that counts the strategy's shootdowns, its only
    /// source of them: on SMP every shootdown round it starts is one of these (kmap's global flush
    /// at a wrap of the clock hand, <c>lwbuf_set_global</c>, emap's removal of writers' used kernel
    /// mappings, epoch-cache's fallback), and on a uniprocessor it starts none. Null when its
    /// shootdowns are not counted apart (sf_buf's masked shootdown on a miss, the per-use
    /// mechanisms) or it sends none.
    /// </summary>
    public string? ShootdownCounter { get; init; }

    /// <summary>
    /// True when the strategy starts no shootdown, for any user, while its pool recycles nothing
    /// (<see cref="SfBufStats.Recycles"/> stays 0): every new mapping is valid on every CPU when made,
    /// and invalidating others' translations is deferred to the recycling of slots (kmap's global
    /// flush when the clock hand wraps, epoch-cache's fallback for a CPU whose epoch lags).
    /// </summary>
    public bool ShootdownsOnlyWhenRecycling { get; init; }

    /// <summary>
    /// True when no mapping is ever removed: a slot taken for another page has its PTE overwritten
    /// (sf_buf's inactive list), so no kernel PTE is cleared and, on the host backend, nothing is
    /// unmapped. True also for the direct map, which maps nothing.
    /// </summary>
    public bool NeverUnmaps { get; init; }

    /// <summary>
    /// The <see cref="SfBufStats.Details"/> counters whose sum is the number of private mappings the
    /// strategy made in its per-CPU slots (<see cref="PerCpuPrivateSlots"/>), each counted on the CPU
    /// that made it (kmap_atomic's and kmap_local's maps; the quick page's enters and its nested
    /// sf_bufs). Empty when private mappings come from the pool.
    /// </summary>
    public IReadOnlyList<string> PrivateMapCounters { get; init; } = [];

    /// <summary>
    /// The strategy's own check of its structural invariants, with no operation in flight
    /// (epoch-cache's slots, index, epochs and partitions); returns the violations, empty when
    /// sound. Generic drivers run it when they end quiescent. Null when the strategy has none.
    /// </summary>
    public Func<SfBufMapper, IReadOnlyList<string>>? CheckInvariants { get; init; }

    /// <summary>True when the strategy runs on the host backend.</summary>
    public bool RunsOnHost => NotOnHost == null;

    /// <summary>Throws <see cref="NotSupportedException"/> with the reason when <paramref name="machine"/> is host-backed and the strategy does not run there.</summary>
    public void ThrowIfNotRunnableOn(Machine machine)
    {
        ArgumentNullException.ThrowIfNull(machine);
        if (machine.Backend == MachineBackend.Host && NotOnHost is { } reason)
        {
            throw new NotSupportedException($"{Name} does not run on the host backend: {reason}");
        }
    }

    /// <summary>True for the peers: what Linux, DragonFly, NetBSD and later FreeBSD chose instead.</summary>
    public bool IsPeer => Group == SfBufStrategyGroup.Peer;

    /// <summary>The names of the strategies in <paramref name="group"/>, in registry order.</summary>
    public static IReadOnlyList<string> NamesOf(SfBufStrategyGroup group) => [.. All.Where(i => i.Group == group).Select(i => i.Name)];

    /// <summary>The description of <paramref name="name"/>.</summary>
    public static SfBufStrategyInfo Of(string name) =>
        Volatile.Read(ref s_registry).ByName.TryGetValue(name ?? throw new ArgumentNullException(nameof(name)), out var info)
            ? info
            : throw new ArgumentException($"unknown sf_buf strategy '{name}'; known: {string.Join(", ", Names)}", nameof(name));

    /// <summary>One immutable state of the registry, replaced whole by <see cref="Register"/>.</summary>
    private sealed class Registry(SfBufStrategyInfo[] all)
    {
        public IReadOnlyList<SfBufStrategyInfo> All { get; } = Array.AsReadOnly(all);

        public IReadOnlyList<string> Names { get; } = [.. all.Select(i => i.Name)];

        public Dictionary<string, SfBufStrategyInfo> ByName { get; } = all.ToDictionary(i => i.Name, StringComparer.Ordinal);
    }
}

/// <summary>
/// What a thread holding a private mapping must respect (the peers' documented APIs): a driver
/// that allocates and frees at random keeps to these for the strategies that declare them.
/// </summary>
[Flags]
public enum SfBufPrivateRules
{
    /// <summary>Private mappings are freed in any order, by any thread, and the holder may sleep and migrate (sf_buf, lwbuf, emap, kmap).</summary>
    None = 0,

    /// <summary>A thread's (or CPU's) private mappings are freed in the reverse order of allocation (kmap_atomic's per-CPU stack, kmap_local's per-thread stack).</summary>
    ReleaseLifo = 1,

    /// <summary>A private mapping is freed by the thread that made it (kmap_atomic, kmap_local, the quick page).</summary>
    SameThread = 2,

    /// <summary>The holder may not sleep, block or yield until it frees the mapping (kmap_atomic: preemption off; the quick page: a critical section).</summary>
    NoSleep = 4,

    /// <summary>The holder stays on its CPU until it frees the mapping (kmap_local: migration off; the strategy enforces it).</summary>
    NoMigration = 8,
}

/// <summary>Which users of the sf_buf interface a property concerns.</summary>
[Flags]
public enum SfBufUsers
{
    /// <summary>Nobody.</summary>
    None = 0,

    /// <summary>Private short users (<see cref="SfBufFlags.CpuPrivate"/>: the pipe reader, md, ptrace, <c>uiomove_fromphys</c>).</summary>
    Private = 1,

    /// <summary>Shared users (sendfile, vnode page-in, the exec header).</summary>
    Shared = 2,

    /// <summary>Both.</summary>
    All = Private | Shared,
}

/// <summary>What private users' mappings cost in shootdown rounds (<see cref="SfBufStrategyInfo.PrivateShootdowns"/>).</summary>
public enum SfBufShootdowns
{
    /// <summary>None ever: a private mapping is invalidated on the local CPU only (sf_buf's <c>SFB_CPUPRIVATE</c>, per-CPU slots, lwbuf), or never (the direct map).</summary>
    None,

    /// <summary>One on SMP per page mapped for writing, when its used kernel mapping is removed (emap's writers: <c>pmap_kremove</c> + <c>pmap_update</c>); none for readers.</summary>
    PerWrittenPage,

    /// <summary>
    /// None until the pool recycles: then a batched invalidation (kmap's global flush when the
    /// clock hand wraps, epoch-cache's fallback for a CPU whose epoch lags), counted in
    /// <see cref="SfBufStrategyInfo.ShootdownCounter"/>.
    /// </summary>
    WhenRecycling,

    /// <summary>Two broadcast rounds per mapping on SMP: at <c>pmap_qenter</c> and at <c>pmap_qremove</c>.</summary>
    PerUse,

    /// <summary>
    /// On SMP, one broadcast round per user (or page-cache) page whose last mapping goes
    /// (XPFO's <c>xpfo_kunmap</c> to mapcount 0) and per page allocated to user space; none for
    /// kernel pages. Counted in <see cref="SfBufStrategyInfo.ShootdownCounter"/>.
    /// </summary>
    PerUserPage,
}

/// <summary>Where a strategy comes from.</summary>
public enum SfBufStrategyGroup
{
    /// <summary>The paper's three: the original mechanisms, sf_buf on i386, the amd64 direct map.</summary>
    Paper,

    /// <summary>What other kernels chose (Linux, DragonFly, NetBSD, later FreeBSD).</summary>
    Peer,

    /// <summary>The project's own designs.</summary>
    Own,

    /// <summary>Examples of a strategy written outside the library (<c>samples/</c>), registered with <see cref="SfBufStrategyInfo.Register"/>.</summary>
    Sample,
}
