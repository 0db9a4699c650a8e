using Native.PageTable;

namespace Native.SfBufNative;

/// <summary>
/// What a strategy is, what it follows, which of the sf_buf interface's promises it keeps (the
/// documented exceptions tests and experiments consult instead of testing names), and how to
/// create it. The registry of strategies: <see cref="All"/>, in the order results list them, is
/// where a strategy is registered, once; every list of names is derived from it.
/// </summary>
/// <param name="Name">The strategy's name.</param>
/// <param name="Family">The kernel whose design it is (FreeBSD 2005, Linux, DragonFly, NetBSD, FreeBSD 11).</param>
/// <param name="Follows">The functions and files it follows.</param>
/// <param name="Group">The paper's, a peer, or one of the project's own designs.</param>
/// <param name="HasPool">True when allocations can run out of mappings (or of KVA) and wait, or fail with NoWait.</param>
/// <param name="InterruptibleWait">True when a <see cref="SfBufFlags.Catch"/> wait ends when cancelled; false where the kernel waits uninterruptibly.</param>
/// <param name="KvaOnAccessingCpu">True when <see cref="SfBufMapper.Kva"/> does work on the accessing CPU (lwbuf, emap).</param>
/// <param name="PrivateUsers">What private short users (<see cref="SfBufFlags.CpuPrivate"/>: pipe reader, md, ptrace, <c>uiomove_fromphys</c>) get.</param>
/// <param name="SharedUsers">What shared users (sendfile, vnode page-in, the exec header) get.</param>
/// <param name="Create">Creates the strategy on a machine with a pool of the given size (null: the sf_buf window).</param>
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
    Func<Machine, int?, SfBufMapper> Create)
{
    /// <summary>
    /// Every strategy, in the order results list them: the paper's three, the peers, then our own. A new
    /// strategy is one entry here (and its file or folder under <c>Strategies/</c>).
    /// </summary>
    public static IReadOnlyList<SfBufStrategyInfo> All { get; } =
    [
        new(SfBufMapper.Original, "FreeBSD 5", "kmem_alloc + pmap_qenter / pmap_qremove (vm_machdep.c, sys_pipe.c, kern_exec.c before 2004)",
            SfBufStrategyGroup.Paper, true, true, false, "per-use kernel_map KVA, broadcast shootdowns", "the same",
            (machine, _) => new OriginalMapper(machine)),
        new(SfBufMapper.I386, "FreeBSD 6", "sf_buf_alloc / sf_buf_free, i386 vm_machdep.c rev 1.269",
            SfBufStrategyGroup.Paper, true, true, false, "sf_buf with SFB_CPUPRIVATE: at most a local invlpg", "sf_buf: local invlpg + masked shootdown on a miss",
            (machine, nsfbufs) => new I386Mapper(machine, nsfbufs)),
        new(SfBufMapper.Amd64, "FreeBSD 6", "amd64 sf_buf.h: the direct map",
            SfBufStrategyGroup.Paper, false, true, false, "the direct map", "the direct map",
            (machine, _) => new DirectMapMapper(machine)),
        new(SfBufMapper.LinuxKmap, "Linux", "kmap_high / kunmap_high / flush_all_zero_pkmaps (mm/highmem.c, x86-32)",
            SfBufStrategyGroup.Peer, true, false, false, "kmap", "kmap",
            (machine, nsfbufs) => new Strategies.Linux.LinuxKmapMapper(machine, nsfbufs)),
        new(SfBufMapper.LinuxKmapAtomic, "Linux", "kmap_atomic / __kunmap_atomic (arch/x86/mm/highmem_32.c, 2.6.37-5.10); kmap for shared users",
            SfBufStrategyGroup.Peer, true, false, false, "kmap_atomic: per-CPU LIFO fixmap slot, preemption off", "kmap",
            (machine, nsfbufs) => new Strategies.Linux.LinuxKmapAtomicMapper(machine, nsfbufs)),
        new(SfBufMapper.LinuxKmapLocal, "Linux", "__kmap_local_pfn_prot / kunmap_local_indexed / __kmap_local_sched_out/in (mm/highmem.c, 5.11+); kmap for shared users",
            SfBufStrategyGroup.Peer, true, false, false, "kmap_local_page: per-thread LIFO stack of per-CPU slots, migration off", "kmap",
            (machine, nsfbufs) => new Strategies.Linux.LinuxKmapLocalMapper(machine, nsfbufs)),
        new(SfBufMapper.DragonFlyLwbuf, "DragonFly", "lwbuf_alloc / lwbuf_kva / lwbuf_set_global / lwbuf_free (sys/cpu/i386/misc/lwbuf.c); sf_buf_alloc (kern_sfbuf.c)",
            SfBufStrategyGroup.Peer, true, false, true, "lwbuf: PTE + local invlpg, lwbuf_kva on the accessing CPU", "lwbuf + lwbuf_set_global (DragonFly's sf_buf)",
            (machine, _) => new Strategies.DragonFly.LwbufMapper(machine)),
        new(SfBufMapper.NetBsdEmap, "NetBSD", "uvm_emap_alloc / enter / produce / consume / remove / switch (sys/uvm/uvm_emap.c, x86 pmap_emap_*)",
            SfBufStrategyGroup.Peer, true, false, true, "emap window: enter + produce; consume on the accessing CPU", "the same",
            (machine, nsfbufs) => new Strategies.NetBsd.EmapMapper(machine, nsfbufs)),
        new(SfBufMapper.FreeBsdQuick, "FreeBSD 11", "pmap_quick_enter_page / pmap_quick_remove_page (i386 pmap.c, r286296); sf_buf for the rest",
            SfBufStrategyGroup.Peer, true, true, false, "pmap_quick_enter_page (nested: sfbuf-i386 CPU-private)", "sfbuf-i386",
            (machine, nsfbufs) => new Strategies.FreeBsd.QuickMapper(machine, nsfbufs)),
        new(SfBufMapper.EpochCache, "this project", "sfbuf-i386's mapping cache with a lock-free page index (Linux's page_address) and epoch-deferred, batched recycling (NetBSD emap's generations, kmap's batched flush): EpochCacheMapper.cs",
            SfBufStrategyGroup.Own, true, true, false, "the shared cache: no hint needed, no IPI", "the same: lock-free hit, no IPI on a miss unless the epoch fallback runs",
            (machine, nsfbufs) => new EpochCacheMapper(machine, nsfbufs)),
    ];

    private static readonly Dictionary<string, SfBufStrategyInfo> s_byName = All.ToDictionary(i => i.Name, StringComparer.Ordinal);

    /// <summary>True for the peers: what Linux, DragonFly, NetBSD and later FreeBSD chose instead.</summary>
    public bool IsPeer => Group == SfBufStrategyGroup.Peer;

    /// <summary>The names of the strategies in <paramref name="group"/>, in registry order.</summary>
    public static IReadOnlyList<string> NamesOf(SfBufStrategyGroup group) => [.. All.Where(i => i.Group == group).Select(i => i.Name)];

    /// <summary>The description of <paramref name="name"/>.</summary>
    public static SfBufStrategyInfo Of(string name) =>
        s_byName.TryGetValue(name ?? throw new ArgumentNullException(nameof(name)), out var info)
            ? info
            : throw new ArgumentException($"unknown sf_buf strategy '{name}'; known: {string.Join(", ", All.Select(i => i.Name))}", nameof(name));
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
}
