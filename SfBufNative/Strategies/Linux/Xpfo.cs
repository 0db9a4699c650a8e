using System.Runtime.CompilerServices;
using Native.PageTable;

namespace Native.SfBufNative.Strategies.Linux;

/// <summary>When XPFO flushes the direct-map translations it removes.</summary>
public enum XpfoFlushPolicy
{
    /// <summary>
    /// The RFC up to v6 (2016-2018): <c>xpfo_flush_kernel_tlb</c> is <c>flush_tlb_kernel_range</c>,
    /// a local invalidation and a shootdown to every other CPU, at every <c>xpfo_kunmap</c> to
    /// mapcount 0 and every allocation that takes a page out of the direct map. A freed user page
    /// goes back into the direct map (<c>xpfo_free_pages</c>).
    /// </summary>
    Immediate,

    /// <summary>
    /// v7 (Jan 2019, "Defer TLB flushes for non-current CPUs"): <c>xpfo_flush_tlb_kernel_range</c>
    /// invalidates the page on this CPU only and sets every other CPU's bit in the
    /// <c>pending_xpfo_flush</c> cpumask; a CPU whose bit is set does a full flush
    /// (<c>__flush_tlb_all</c>) at its next <c>switch_mm_irqs_off</c>. Frees as <see cref="Immediate"/>.
    /// </summary>
    Deferred,

    /// <summary>
    /// v9 (Apr 2019, "Optimize XPFO TLB flushes by batching them together"), on top of
    /// <see cref="Deferred"/>. What the patch batches, read in its diff: not <c>xpfo_kunmap</c>'s
    /// flush, which stays per unmap and deferred, but the removal of pages from the direct map at
    /// allocation: when <c>__rmqueue_pcplist</c> refills a CPU's list of MOVABLE (user) pages,
    /// <c>xpfo_pcp_refill</c> takes every page of the batch out at once and one
    /// <c>xpfo_flush_tlb_all</c> follows (a full local flush and pending bits on the others); and
    /// <c>xpfo_free_pages</c> no longer restores a freed user page, so its next allocation to user
    /// space costs nothing (a kernel allocation restores it, with no flush).
    /// </summary>
    Batched,
}

/// <summary>
/// eXclusive Page Frame Ownership (the Linux XPFO RFC, <c>mm/xpfo.c</c>,
/// <c>include/linux/xpfo.h</c>, <c>arch/x86/mm/xpfo.c</c>, <c>arch/x86/mm/tlb.c</c>, v6-v9) on a
/// machine whose direct map is page-mapped and holds no user page
/// (<see cref="MachineFlavor.Amd64Xpfo"/>): the direct map is the only kernel address of a page, and
/// a user page is put back into it around each kernel access.
/// <para>
/// <c>xpfo_kmap</c>: a kernel page needs nothing; for a user page the mapcount is raised under
/// the page's <c>xpfo_lock</c> and, on 0 to 1 with the page out of the direct map
/// (<c>TestClearPageXpfoUnmapped</c>), <c>set_kpte</c> restores the PTE, with no flush (invalid to
/// valid). <c>xpfo_kunmap</c>: on 1 to 0, <c>SetPageXpfoUnmapped</c>, <c>set_kpte(..., 0)</c> and
/// <c>xpfo_flush_kernel_tlb</c> as the <see cref="XpfoFlushPolicy"/> says, still under the lock.
/// The allocator's half (<c>xpfo_alloc_pages</c>, <c>xpfo_free_pages</c>, v9's
/// <c>xpfo_pcp_refill</c>) is the machine's (<see cref="PhysicalMemory"/>); this class is its
/// <see cref="IPageOwnershipPolicy"/> and flushes what it removes.
/// </para>
/// <para>
/// The mapcount (<c>page-&gt;xpfo_mapcount</c>) is a native int per frame; the per-page spin lock
/// is one of <see cref="LockStripes"/> spin-only mutexes, chosen by frame. <c>pending_xpfo_flush</c>
/// is a cpumask of four words set with interlocked ORs and tested-and-cleared by each CPU at its
/// context switches (<see cref="IContextSwitchHook.SwitchIn"/>: the simulated machine switches
/// address space at every thread switch, where Linux's <c>switch_mm_irqs_off</c> runs only when
/// the mm changes). Not modelled: the split of 2 MiB direct-map pages (the direct map here is 4 KiB
/// pages from boot), the v9 fast paths that skip the lock (<c>atomic_inc_not_zero</c>), and
/// <c>tlb_single_page_flush_ceiling</c> (every flush here is one page or everything).
/// </para>
/// </summary>
internal sealed unsafe class Xpfo : IPageOwnershipPolicy, IContextSwitchHook, IDisposable
{
    /// <summary>Per-page locks, shared by frames with the same remainder.</summary>
    public const int LockStripes = 64;

    /// <summary>
    /// Pages per refill of a CPU's list for <see cref="XpfoFlushPolicy.Batched"/>: Linux's
    /// <c>pcp-&gt;batch</c> for a large zone (<c>zone_batchsize</c>: a quarter of the zone's pages
    /// over 1024, capped at 512 KiB, rounded to 2^n - 1).
    /// </summary>
    public const int PcpBatch = 63;

    private const ulong KernelProt = Pte.PG_V | Pte.PG_RW | Pte.PG_G;

    private readonly Machine _machine;
    private readonly PhysicalMemory _physical;
    private readonly KernelPmap _pmap;
    private readonly int* _mapcount;
    private readonly KMutex[] _locks;
    private readonly long[] _pending = new long[4];
    private readonly long[] _allWords = new long[4];
    private readonly int _cpus;
    private readonly PerCpuCount _kmaps;
    private readonly PerCpuCount _restores;
    private readonly PerCpuCount _unmaps;
    private readonly PerCpuCount _flushes;
    private readonly PerCpuCount _allocFlushes;
    private readonly PerCpuCount _shootdowns;
    private readonly PerCpuCount _pendingFlushes;
    private long _pendingPosts;
    private long _outsideRemovals;
    private int _disposed;

    public Xpfo(Machine machine, XpfoFlushPolicy policy)
    {
        if (!machine.Options.ExclusivePageOwnership)
        {
            throw new InvalidOperationException("XPFO needs a page-mapped direct map without user pages: boot the machine with MachineFlavor.Amd64Xpfo");
        }

        _machine = machine;
        _physical = machine.Physical;
        _pmap = machine.KernelPmap;
        Policy = policy;
        _cpus = machine.Options.Cpus;
        _mapcount = (int*)machine.Ledger.AllocZeroed((nuint)machine.Physical.FrameCount * sizeof(int));
        _locks = new KMutex[LockStripes];
        for (int i = 0; i < _locks.Length; i++)
        {
            _locks[i] = new KMutex("xpfo_lock", spinOnly: true);
        }

        for (int c = 0; c < _cpus; c++)
        {
            _allWords[c >> 6] |= 1L << (c & 63);
        }

        _kmaps = new PerCpuCount(machine);
        _restores = new PerCpuCount(machine);
        _unmaps = new PerCpuCount(machine);
        _flushes = new PerCpuCount(machine);
        _allocFlushes = new PerCpuCount(machine);
        _shootdowns = new PerCpuCount(machine);
        _pendingFlushes = new PerCpuCount(machine);
        machine.Physical.InstallOwnershipPolicy(this);

        // Every policy: an allocation from outside the machine leaves pending bits even under the immediate one.
        machine.AddContextSwitchHook(this);
    }

    /// <summary>When removed translations are flushed.</summary>
    public XpfoFlushPolicy Policy { get; }

    /// <inheritdoc/>
    public int RefillBatch => Policy == XpfoFlushPolicy.Batched ? PcpBatch : 0;

    /// <inheritdoc/>
    public bool RestoresAtFree => Policy != XpfoFlushPolicy.Batched;

    /// <summary>Direct-map PTEs the page allocator put back (a kernel allocation of a page out of it; v6/v7's free), counted with kmem's stores, not as mappings.</summary>
    public long AllocatorRestores => _physical.XpfoRestores;

    /// <summary><c>kmap</c> calls.</summary>
    public long Kmaps => _kmaps.Value;

    /// <summary>Direct-map PTEs <c>xpfo_kmap</c> restored (mapcount 0 to 1 on a page out of the direct map).</summary>
    public long Restores => _restores.Value;

    /// <summary>Direct-map PTEs <c>xpfo_kunmap</c> cleared (mapcount 1 to 0).</summary>
    public long Unmaps => _unmaps.Value;

    /// <summary><c>xpfo_flush_kernel_tlb</c> calls by <c>xpfo_kunmap</c>.</summary>
    public long Flushes => _flushes.Value;

    /// <summary>Flushes for pages the allocator took out of the direct map (one per page, or one per refill batch).</summary>
    public long AllocFlushes => _allocFlushes.Value + Interlocked.Read(ref _outsideRemovals);

    /// <summary>Shootdowns started (<see cref="XpfoFlushPolicy.Immediate"/> on SMP).</summary>
    public long Shootdowns => _shootdowns.Value;

    /// <summary>Full flushes done at a context switch for a set <c>pending_xpfo_flush</c> bit.</summary>
    public long PendingFlushes => _pendingFlushes.Value;

    /// <summary>Bits set in <c>pending_xpfo_flush</c> (each CPU's bit counted when it was clear).</summary>
    public long PendingPosts => Interlocked.Read(ref _pendingPosts);

    /// <summary>True when <paramref name="cpu"/>'s <c>pending_xpfo_flush</c> bit is set.</summary>
    public bool IsPending(int cpu) => (Volatile.Read(ref _pending[cpu >> 6]) & (1L << (cpu & 63))) != 0;

    /// <summary>The mapcount of <paramref name="page"/>.</summary>
    public int MapCount(VmPage page) => Volatile.Read(ref _mapcount[page.Frame]);

    /// <summary>The per-page lock of <paramref name="page"/> (<c>page-&gt;xpfo_lock</c>).</summary>
    public KMutex LockOf(VmPage page) => _locks[page.Frame % LockStripes];

    /// <summary>
    /// <c>kmap</c> on 64-bit with XPFO: <c>page_address(page)</c> and <c>xpfo_kmap</c>. Returns the
    /// page's direct-map address and whether this call restored the PTE.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong Kmap(Cpu cpu, VmPage page, out bool restored)
    {
        _kmaps.Increment(cpu);
        ulong va = VmLayout.DMAP_BASE + page.PhysicalAddress;
        restored = false;
        if (!_physical.XpfoIsUser(page))
        {
            // A kernel page is always in the direct map; the count only catches double frees.
            Interlocked.Increment(ref _mapcount[page.Frame]);
            return va;
        }

        var mutex = LockOf(page);
        mutex.Lock();
        try
        {
            if (Interlocked.Increment(ref _mapcount[page.Frame]) == 1 && _physical.XpfoTestClearUnmapped(page))
            {
                _pmap.ExchangePte(va, Pte.Make(page.Frame, KernelProt)); // set_kpte(kaddr, page, PAGE_KERNEL)
                _restores.Increment(cpu);
                restored = true;
            }
        }
        finally
        {
            mutex.Unlock();
        }

        return va;
    }

    /// <summary><c>kunmap</c> with <c>xpfo_kunmap</c>: on mapcount 1 to 0 of a user page, out of the direct map and flushed.</summary>
    public void Kunmap(Cpu cpu, VmPage page)
    {
        if (!_physical.XpfoIsUser(page))
        {
            Release(page);
            return;
        }

        var mutex = LockOf(page);
        mutex.Lock();
        try
        {
            if (Release(page) == 0)
            {
                _physical.XpfoSetUnmapped(page);
                ulong va = VmLayout.DMAP_BASE + page.PhysicalAddress;
                _pmap.ExchangePte(va, 0); // set_kpte(kaddr, page, __pgprot(0))
                _unmaps.Increment(cpu);
                _flushes.Increment(cpu);
                FlushKernelTlb(cpu, va);
            }
        }
        finally
        {
            mutex.Unlock();
        }
    }

    private int Release(VmPage page)
    {
        int left = Interlocked.Decrement(ref _mapcount[page.Frame]);
        if (left < 0)
        {
            Interlocked.Increment(ref _mapcount[page.Frame]);
            throw new InvalidOperationException($"kunmap of {page}, which is not mapped (mapcount 0)");
        }

        return left;
    }

    /// <summary><c>xpfo_flush_kernel_tlb(page, 0)</c> after <c>xpfo_kunmap</c>'s or the allocator's <c>set_kpte</c>.</summary>
    private void FlushKernelTlb(Cpu cpu, ulong va)
    {
        if (Policy == XpfoFlushPolicy.Immediate)
        {
            // flush_tlb_kernel_range: this CPU and every other, now.
            _pmap.InvalidatePage(va);
            if (_cpus > 1)
            {
                _shootdowns.Increment(cpu);
            }

            return;
        }

        // xpfo_flush_tlb_kernel_range: the page on this CPU, a full flush owed by every other.
        cpu.InvalidatePage(va);
        PostPending(cpu.Id, skipOne: false);
    }

    /// <summary>Sets every CPU's <c>pending_xpfo_flush</c> bit but <paramref name="self"/>'s (-1: every CPU's).</summary>
    private void PostPending(int self, bool skipOne)
    {
        int skipped = -1;
        if (skipOne)
        {
            skipped = self == _cpus - 1 ? _cpus - 2 : _cpus - 1;
        }

        for (int w = 0; w < _pending.Length; w++)
        {
            long mask = _allWords[w];
            if (self >= 0 && self >> 6 == w)
            {
                mask &= ~(1L << (self & 63));
            }

            if (skipped >= 0 && skipped >> 6 == w)
            {
                mask &= ~(1L << (skipped & 63));
            }

            if (mask != 0)
            {
                long before = Interlocked.Or(ref _pending[w], mask);
                Interlocked.Add(ref _pendingPosts, long.PopCount(mask & ~before));
            }
        }
    }

    /// <inheritdoc/>
    public void Removed(Cpu? cpu, ReadOnlySpan<VmPage> pages)
    {
        if (cpu == null)
        {
            // An allocation from outside the machine (set-up): no CPU can invalidate now, so every
            // CPU owes a full flush at its next switch, whatever the policy.
            Interlocked.Increment(ref _outsideRemovals);
            PostPending(-1, skipOne: false);
            return;
        }

        _allocFlushes.Increment(cpu);
        if (Policy == XpfoFlushPolicy.Batched)
        {
            // xpfo_flush_tlb_all: do_flush_tlb_all here, pending bits for the others.
            cpu.FlushLocal();
            PostPending(cpu.Id, skipOne: _cpus > 1 && _machine.Planted(PlantedBug.XpfoBatchSkipsOneCpu));
            return;
        }

        for (int i = 0; i < pages.Length; i++)
        {
            FlushKernelTlb(cpu, VmLayout.DMAP_BASE + pages[i].PhysicalAddress);
        }
    }

    /// <summary><c>switch_mm_irqs_off</c>: a CPU whose <c>pending_xpfo_flush</c> bit is set clears it and flushes everything.</summary>
    public void SwitchIn(Cpu cpu, KernelThread thread, int migratedFrom)
    {
        int id = cpu.Id;
        long bit = 1L << (id & 63);
        if ((Volatile.Read(ref _pending[id >> 6]) & bit) == 0 || (Interlocked.And(ref _pending[id >> 6], ~bit) & bit) == 0)
        {
            return;
        }

        _pendingFlushes.Increment(cpu);
        if (!_machine.Planted(PlantedBug.XpfoSwitchFlushSkipped))
        {
            cpu.FlushLocal(); // __flush_tlb_all
        }
    }

    /// <inheritdoc/>
    public void SwitchOut(Cpu cpu, KernelThread thread)
    {
    }

    /// <summary>
    /// The promise XPFO exists for, checked with no operation in flight: no CPU that owes no flush
    /// (no <c>pending_xpfo_flush</c> bit, not an idle CPU a shootdown marked) can still reach a page
    /// out of the direct map through its TLB (or the latent-staleness shadow of it). Call with
    /// every CPU idle or from the machine's only running thread; returns the breaches.
    /// </summary>
    public IReadOnlyList<string> CheckExclusive()
    {
        var breaches = new List<string>();
        for (uint f = 0; f < _physical.FrameCount; f++)
        {
            var page = new VmPage(f);
            if (!_physical.XpfoIsUnmapped(page))
            {
                continue;
            }

            ulong vpn = (VmLayout.DMAP_BASE + page.PhysicalAddress) >> Pte.PageShift;
            for (int c = 0; c < _cpus; c++)
            {
                var cpu = _machine.CpuAt(c);
                if (!IsPending(c) && !cpu.IsFlushPending && cpu.HoldsStale(vpn))
                {
                    breaches.Add($"cpu {c} owes no flush but still translates {page}'s direct-map address, out of the direct map");
                }
            }
        }

        return breaches;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _machine.RemoveContextSwitchHook(this);
        _physical.UninstallOwnershipPolicy(this);
    }
}
