using System.Diagnostics;
using Native.PageTable;

namespace Native.SfBufNative.Strategies.NetBsd;

/// <summary>
/// <c>netbsd-emap</c>: NetBSD's emap behind the sf_buf interface. NetBSD itself used emap only
/// for the pipe's direct writes, where the reader copies out of the writer's loaned pages through
/// an emap window mapped read-only (<c>pmap_emap_enter(va, pa, VM_PROT_READ)</c>), a whole write
/// under one generation. Here each reader's sf_buf (<see cref="SfBufFlags.ReadOnly"/>) is one page
/// of the window with its own generation (the handle carries it), and <see cref="SfBufMapper.Kva"/>
/// is <c>uvm_emap_consume</c> on the CPU that accesses the page, so subsystems call it where they
/// access. Shared and private readers are treated alike: a mapping is valid on any CPU that
/// consumes it. No reader ever causes an IPI; the price is a full flush of the non-global TLB on a
/// CPU that consumes a generation it has not reached.
/// <para>
/// A user that writes (no <see cref="SfBufFlags.ReadOnly"/>: the vnode pager's page-in, md's
/// writes, <c>uiomove_fromphys</c> into a page, ptrace's writes) cannot use an emap mapping, whose
/// PTE is read-only. It gets what every other NetBSD kernel user of a temporary mapping gets (as
/// <c>uvm_pagermapin</c> or <c>uvm_io</c> do): a page of <c>kernel_map</c>
/// (<c>uvm_km_alloc(..., UVM_KMF_VAONLY | UVM_KMF_WAITVA)</c>), <c>pmap_kenter_pa</c> with
/// read and write permission (a global PTE, no invalidation: the address was invalidated when it
/// was last removed), and at free <c>pmap_kremove</c> + <c>pmap_update</c>, which shoots the
/// address down on every CPU when the removed PTE had been used (<c>PG_U</c>, the accessed bit),
/// then <c>uvm_km_free</c>. Counted apart: <c>emap.kenter_maps</c>, <c>emap.kenter_shootdowns</c>.
/// </para>
/// <para>
/// Both allocators sleep uninterruptibly when full (vmem <c>VM_SLEEP</c>, <c>UVM_KMF_WAITVA</c>),
/// so <see cref="SfBufFlags.Catch"/> cannot end the wait; <see cref="SfBufFlags.NoWait"/> fails at once.
/// </para>
/// </summary>
public sealed class EmapMapper : SfBufMapper
{
    // pmap_kenter_pa(va, pa, VM_PROT_READ | VM_PROT_WRITE, 0) on x86: PG_k | PG_V | PG_RW | pmap_pg_g.
    private const ulong KenterProt = Pte.PG_V | Pte.PG_RW | Pte.PG_G;

    private readonly Emap _emap;
    private readonly KvaArena _kernelMap;
    private readonly unsafe int* _tags;
    private readonly unsafe int* _kenterTags;
    private int _nextTag;
    private int _kenterUsed;
    private int _kenterPeak;
    private long _kenterMaps;
    private long _kenterShootdowns;
    private long _kenterWaits;
    private long _kenterFailures;

    internal unsafe EmapMapper(Machine machine, int? windowPages)
        : base(machine, kvaOnAccessingCpu: true)
    {
        _emap = new Emap(machine, windowPages);
        _kernelMap = machine.KernelMap;
        try
        {
            _tags = (int*)machine.Ledger.AllocZeroed((nuint)_emap.WindowPages * sizeof(int));
            _kenterTags = (int*)machine.Ledger.AllocZeroed((nuint)_kernelMap.Region.Pages * sizeof(int));
        }
        catch
        {
            _emap.Dispose(); // its flush and context-switch hooks (its memory goes back with the failed set-up)
            throw;
        }
    }

    /// <inheritdoc/>
    public override string Name => NetBsdEmap;

    /// <summary>The global generation (tests).</summary>
    internal uint GlobalGeneration => _emap.GlobalGeneration;

    /// <summary>A CPU's generation (tests).</summary>
    internal uint CpuGeneration(int cpu) => _emap.CpuGeneration(cpu);

    /// <inheritdoc/>
    protected override SfBuf AllocCore(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        Machine.Physical.CheckFrame(page.Frame);
        CheckAlloc(page, flags);
        bool noWait = (flags & SfBufFlags.NoWait) != 0;
        ulong va;
        uint gen;
        if ((flags & SfBufFlags.ReadOnly) != 0)
        {
            va = _emap.Map(page, noWait, out gen);
        }
        else
        {
            va = Kenter(page, noWait);
            gen = Emap.Inactive; // consume has nothing to do for it
        }

        if (va == 0)
        {
            return SfBuf.None;
        }

        // The handle carries the generation (as the pipe's map descriptor did) and a tag for this
        // use of the page of KVA, so that a double free or a stale handle is refused. The tag only
        // catches misuse: the handle reaches another CPU through the caller's own synchronisation,
        // which orders the tag (and the PTE) before that CPU's check.
        int tag = Interlocked.Increment(ref _nextTag) & int.MaxValue;
        tag = tag == 0 ? 1 : tag;
        Volatile.Write(ref TagOf(va), tag);
        return new SfBuf(va, page, tag, Id, (int)gen);
    }

    /// <inheritdoc/>
    protected override void FreeCore(SfBuf sf)
    {
        CheckOwner(sf);
        bool kenter = _kernelMap.Region.Contains(sf.Kva);
        if (!kenter && !_emap.Owns(sf.Kva))
        {
            throw new ArgumentException($"{sf} is neither an emap address nor a kernel_map one", nameof(sf));
        }

        if (Interlocked.CompareExchange(ref TagOf(sf.Kva), 0, sf.Slot) != sf.Slot)
        {
            throw new InvalidOperationException($"double free of {sf} (or a stale handle: the page of KVA is no longer this mapping)");
        }

        if (kenter)
        {
            Interlocked.Decrement(ref _kenterUsed); // before the page can be handed out again
            Kremove(sf.Kva);
        }
        else
        {
            _emap.Unmap(sf.Kva);
        }
    }

    /// <inheritdoc/>
    public override SfBufStats Stats()
    {
        var details = new Dictionary<string, long>(StringComparer.Ordinal);
        _emap.AddDetails(details);
        long kenterMaps = Interlocked.Read(ref _kenterMaps);
        details["emap.kenter_maps"] = kenterMaps;
        details["emap.kenter_shootdowns"] = Interlocked.Read(ref _kenterShootdowns);
        details["emap.kenter_waits"] = Interlocked.Read(ref _kenterWaits);
        int kenterUsed = Volatile.Read(ref _kenterUsed);
        details["emap.kenter_in_use"] = kenterUsed;
        details["emap.kenter_peak"] = Volatile.Read(ref _kenterPeak);

        // The pool (nsfbufs, its peak) is the emap window; pages in use also count the writers'
        // kernel_map pages, so that a leaked mapping of either kind shows.
        return new SfBufStats
        {
            Strategy = Name,
            Nsfbufs = _emap.WindowPages,
            NsfbufsUsed = _emap.Used + kenterUsed,
            NsfbufsPeak = _emap.Peak,
            AllocWait = _emap.Waits + Interlocked.Read(ref _kenterWaits),
            AllocFail = AllocFailCount,
            Misses = _emap.Produces + kenterMaps,
            Failures = _emap.Failures + Interlocked.Read(ref _kenterFailures),
            Details = details,
        };
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _emap.Dispose();
        }

        base.Dispose(disposing);
    }

    /// <summary><c>uvm_emap_consume</c> of the handle's generation on the calling thread's CPU (nothing for a writer's mapping).</summary>
    protected override ulong KvaOnCpu(SfBuf sf)
    {
        CheckOwner(sf);
        if (!(_emap.Owns(sf.Kva) || _kernelMap.Region.Contains(sf.Kva)) || Volatile.Read(ref TagOf(sf.Kva)) != sf.Slot)
        {
            throw new InvalidOperationException($"sf_buf_kva of {sf}, which is not a live emap mapping (freed, or a stale handle)");
        }

        _emap.Consume(Machine.CurrentCpu, (uint)sf.Generation);
        return sf.Kva;
    }

    /// <summary>
    /// A writer's mapping: <c>uvm_km_alloc</c> of a page of <c>kernel_map</c> (sleeping for it
    /// unless <paramref name="noWait"/>), then <c>pmap_kenter_pa</c>. 0 when no KVA is free and
    /// <paramref name="noWait"/>.
    /// </summary>
    private ulong Kenter(VmPage page, bool noWait)
    {
        // A try first, so that a wait is counted as it begins (as sf_allocwait is), while it lasts.
        ulong va = _kernelMap.Alloc(1, wait: false);
        if (va == 0 && !noWait)
        {
            Interlocked.Increment(ref _kenterWaits);
            va = _kernelMap.Alloc(1, wait: true);
        }

        if (va == 0)
        {
            Interlocked.Increment(ref _kenterFailures);
            return 0;
        }

        // pmap_kenter_pa: no invalidation, unless the address still held a used mapping (which
        // NetBSD reports as "mapping already present" and shoots down).
        ulong old = Machine.KernelPmap.ExchangePte(va, Pte.Make(page.Frame, KenterProt));
        Debug.Assert((old & (Pte.PG_V | Pte.PG_A)) != (Pte.PG_V | Pte.PG_A), "a free page of kernel_map holds no used mapping");
        if ((old & (Pte.PG_V | Pte.PG_A)) == (Pte.PG_V | Pte.PG_A))
        {
            Machine.KernelPmap.InvalidatePage(va);
        }

        Machine.KernelPmap.CountMapping(1);
        Interlocked.Increment(ref _kenterMaps);
        int used = Interlocked.Increment(ref _kenterUsed);
        HighWater.Raise(ref _kenterPeak, used);

        return va;
    }

    /// <summary>
    /// <c>pmap_kremove</c> + <c>pmap_update</c> + <c>uvm_km_free</c>: a removed PTE that was used
    /// (<c>PG_U</c>) may be cached by any CPU, so it is invalidated here and shot down on every
    /// other CPU; an unused one is cached nowhere and needs nothing.
    /// </summary>
    private void Kremove(ulong va)
    {
        ulong old = Machine.KernelPmap.ExchangePte(va, 0);
        if ((old & (Pte.PG_V | Pte.PG_A)) == (Pte.PG_V | Pte.PG_A))
        {
            // Read here, after the PTE store and before anything that can block: the KVA free
            // below takes kernel_map's sleep mutex and may resume the thread on another CPU.
            var cpu = Machine.CurrentCpu;
            cpu.InvalidatePage(va);
            if (cpu.ShootdownAllButSelf(ShootdownKind.Page, va) > 0)
            {
                Interlocked.Increment(ref _kenterShootdowns);
            }
        }

        _kernelMap.Free(va, 1);
    }

    /// <summary>The tag slot of a page of the emap window or of <c>kernel_map</c>.</summary>
    private unsafe ref int TagOf(ulong va) => ref _emap.Owns(va)
        ? ref _tags[(int)((va - Machine.Layout.SfBufWindow.Start) >> Pte.PageShift)]
        : ref _kenterTags[(int)((va - _kernelMap.Region.Start) >> Pte.PageShift)];
}
