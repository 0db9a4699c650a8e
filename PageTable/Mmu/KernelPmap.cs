namespace Native.PageTable;

/// <summary>
/// The kernel's page table (<c>kernel_pmap</c>): one flat native array of PTE words covering
/// every page-mapped kernel region, so <c>vtopte(va)</c> is an index. Kernel PTEs carry
/// <c>PG_G</c>. The operations keep FreeBSD's names and semantics; all run on the calling
/// kernel thread's CPU and count there.
/// </summary>
public sealed unsafe partial class KernelPmap
{
    private const ulong KernelFlags = Pte.PG_V | Pte.PG_RW | Pte.PG_G;

    private readonly Machine _machine;
    private readonly ulong* _ptes;
    private readonly int _pages;

    // The direct map's 4 KiB PTEs on a machine with exclusive page ownership (null otherwise:
    // amd64's 1 GiB pages are translated by the CPU's permanent fast path, i386 has none).
    private readonly ulong* _dmapPtes;
    private readonly ulong _dmapPages;

    // Checked mode: per kernel page, 1 + the CPU a live CpuPrivate mapping belongs to (0: none).
    private readonly int* _privateOwner;

    // Checked mode: exposure tracking, and the ephemeral-mapping regions (the sf_buf window, the
    // fixmap and kernel_map with its submaps, adjacent) whose removed translations it judges.
    private readonly bool _exposure;
    private readonly ulong _mappingStart;
    private readonly ulong _mappingBytes;

    internal KernelPmap(Machine machine, NativeLedger ledger, int pages)
    {
        _machine = machine;
        _pages = pages;
        _ptes = (ulong*)ledger.AllocZeroed((nuint)pages * sizeof(ulong));
        _host = machine.Host;
        if (machine.Options.Checked)
        {
            _privateOwner = (int*)ledger.AllocZeroed((nuint)pages * sizeof(int));
        }

        // Exposure needs the simulated TLBs to read (checked mode on the simulated MMU).
        _exposure = machine.Options.Checked && machine.Host == null;
        _mappingStart = machine.Layout.SfBufWindow.Start;
        _mappingBytes = machine.Layout.KernelMap.End - _mappingStart;

        if (machine.Layout.DirectMapIsPaged)
        {
            // Boot: every frame is in the direct map; xpfo_alloc_pages removes user pages from it.
            _dmapPages = (ulong)machine.Layout.DirectMapPages;
            _dmapPtes = (ulong*)ledger.Alloc((nuint)_dmapPages * sizeof(ulong));
            for (ulong i = 0; i < _dmapPages; i++)
            {
                _dmapPtes[i] = Pte.Make((uint)i, KernelFlags);
            }
        }
    }

    /// <summary>
    /// Enters a mapping operation on the calling kernel thread: a strategy call (<c>sf_buf_alloc</c>,
    /// <c>sf_buf_free</c>, ...) or a subsystem's own map/unmap sequence. Operations nest; PTE stores
    /// inside them that remove or replace an ephemeral translation are judged for exposure when the
    /// outermost one returns (<see cref="LeaveOperation"/>), after the invalidations it made.
    /// Outside checked mode it does nothing. Pair each call with <see cref="LeaveOperation"/> in a
    /// <c>finally</c>.
    /// </summary>
    public void EnterOperation()
    {
        if (_exposure && KernelThread.CurrentOrNull is { } td)
        {
            td.MappingDepth++;
        }
    }

    /// <summary>
    /// Leaves a mapping operation (<see cref="EnterOperation"/>). When the outermost one returns,
    /// every CPU whose TLB still caches a translation that a store of the operation removed (and
    /// that the PTE no longer gives) opens an exposure window (<see cref="Counter.Exposures"/>).
    /// </summary>
    public void LeaveOperation()
    {
        if (_exposure && KernelThread.CurrentOrNull is { } td && td.MappingDepth > 0 && --td.MappingDepth == 0
            && td.RemovedTranslations is { Count: > 0 } removed)
        {
            try
            {
                // A thread stopped by the machine's disposal holds no CPU and judges nothing.
                if (td.Cpu is { } cpu && !_machine.IsUnusable)
                {
                    foreach (var (vpn, frame) in removed)
                    {
                        Judge(cpu, vpn, frame);
                    }
                }
            }
            finally
            {
                removed.Clear();
            }
        }
    }

    /// <summary>Records a store that removed <paramref name="old"/>'s translation of <paramref name="va"/> (checked mode).</summary>
    private void Removed(Cpu cpu, ulong va, ulong old)
    {
        ulong vpn = va >> Pte.PageShift;
        uint frame = Pte.Frame(old);
        if (KernelThread.CurrentOrNull is { MappingDepth: > 0 } td)
        {
            (td.RemovedTranslations ??= []).Add((vpn, frame));
        }
        else
        {
            // A store outside any operation is its own operation, returning at once.
            Judge(cpu, vpn, frame);
        }
    }

    /// <summary>Opens an exposure window on every CPU that still caches <paramref name="vpn"/> to <paramref name="frame"/>.</summary>
    private void Judge(Cpu cpu, ulong vpn, uint frame)
    {
        ulong pte = Volatile.Read(ref *Vtopte(vpn << Pte.PageShift));
        if (Pte.IsValid(pte) && Pte.Frame(pte) == frame)
        {
            return; // mapped again to the same page: nothing old is cached
        }

        long startNs = cpu.ClockNs;

        // By index: a foreach over the IReadOnlyList boxes an enumerator unless the JIT removes it,
        // and this runs on every checked put that clears a translation.
        int cpus = _machine.Cpus.Count;
        for (int i = 0; i < cpus; i++)
        {
            if (_machine.CpuAt(i).TryOpenExposure(vpn, frame, startNs))
            {
                cpu.Count(Counter.Exposures);
            }
        }
    }

    /// <summary>
    /// Checked mode: records that the mapping at <paramref name="va"/> is CPU-private to
    /// <paramref name="cpu"/> (<c>SFB_CPUPRIVATE</c>) while it is live; a translation on any
    /// other CPU is then an error naming both. Strategies call it when they hand out a private
    /// mapping that no other user shares, and <see cref="UntagPrivate"/> when that ends.
    /// </summary>
    internal void TagPrivate(ulong va, int cpu)
    {
        if (_privateOwner != null && (va - VmLayout.KERNBASE) >> Pte.PageShift < (ulong)_pages)
        {
            _privateOwner[(va - VmLayout.KERNBASE) >> Pte.PageShift] = cpu + 1;
        }
    }

    /// <summary>Checked mode: the mapping at <paramref name="va"/> is no longer (only) CPU-private.</summary>
    internal void UntagPrivate(ulong va)
    {
        if (_privateOwner != null && (va - VmLayout.KERNBASE) >> Pte.PageShift < (ulong)_pages)
        {
            _privateOwner[(va - VmLayout.KERNBASE) >> Pte.PageShift] = 0;
        }
    }

    /// <summary>The CPU a live private mapping of <paramref name="va"/> belongs to, or -1.</summary>
    internal int PrivateOwner(ulong va)
    {
        ulong index = (va - VmLayout.KERNBASE) >> Pte.PageShift;
        return _privateOwner != null && index < (ulong)_pages ? _privateOwner[index] - 1 : -1;
    }

    /// <summary>
    /// <c>vtopte</c>: the PTE word of a kernel address, or null outside the kernel regions. The
    /// direct map has PTEs only when it is page-mapped (<see cref="VmLayout.DirectMapIsPaged"/>).
    /// </summary>
    internal ulong* Vtopte(ulong va)
    {
        ulong index = (va - VmLayout.KERNBASE) >> Pte.PageShift;
        if (index < (ulong)_pages)
        {
            return _ptes + index;
        }

        ulong dmapIndex = (va - VmLayout.DMAP_BASE) >> Pte.PageShift;
        return dmapIndex < _dmapPages ? _dmapPtes + dmapIndex : null;
    }

    /// <summary>
    /// <c>set_kpte</c> of the page allocator's XPFO hooks (<c>xpfo_alloc_pages</c>,
    /// <c>xpfo_free_pages</c>): puts <paramref name="page"/> in the direct map or takes it out,
    /// with no invalidation (the installed <see cref="IPageOwnershipPolicy"/> flushes). On a kernel
    /// thread it is a kernel PTE store, priced and judged for exposure, and counted as a store of
    /// the permanent kernel map (<see cref="Counter.KmemPteWrites"/>), not as an ephemeral mapping:
    /// the allocator keeps the direct map, the strategy's kmap makes the mappings. From outside the
    /// machine (set-up, boot) the word is written alone. Returns the old PTE.
    /// </summary>
    internal ulong SetDirectMapPte(VmPage page, bool present)
    {
        ulong pte = present ? Pte.Make(page.Frame, KernelFlags) : 0;
        ulong va = VmLayout.DMAP_BASE + page.PhysicalAddress;
        if (KernelThread.CurrentOrNull is { } td && ReferenceEquals(td.Machine, _machine) && td.Cpu != null)
        {
            return ExchangePte(va, pte, permanentMap: true);
        }

        return Interlocked.Exchange(ref *Vtopte(va), pte);
    }

    /// <summary>The current PTE of a kernel page (0 when unmapped, guard pages included).</summary>
    public ulong ReadPte(ulong va)
    {
        _machine.ThrowIfDisposed();
        if ((va & Pte.PageMask) != 0)
        {
            throw new ArgumentException($"kernel address 0x{va:x} is not page aligned", nameof(va));
        }

        ulong* ptep = Vtopte(va);
        return ptep != null
            ? Volatile.Read(ref *ptep)
            : throw new ArgumentOutOfRangeException(nameof(va), $"0x{va:x} is not a page-mapped kernel address");
    }

    /// <summary>
    /// <c>pmap_kenter</c>: maps <paramref name="page"/> at <paramref name="va"/> with
    /// <c>PG_A</c> clear. No invalidation: the caller knows no TLB holds the old translation, or
    /// invalidates itself.
    /// </summary>
    public void KEnter(ulong va, VmPage page) => ExchangePte(va, Pte.Make(Checked(page), KernelFlags));

    /// <summary><c>pmap_kremove</c>: unmaps a kernel page, without invalidation.</summary>
    public void KRemove(ulong va) => ExchangePte(va, 0);

    /// <summary>
    /// Replaces a kernel PTE atomically and returns the old one, so a concurrent MMU walk
    /// setting <c>PG_A</c> cannot slip between the read and the write.
    /// </summary>
    public ulong ExchangePte(ulong va, ulong pte) => ExchangePte(va, pte, permanentMap: false);

    private ulong ExchangePte(ulong va, ulong pte, bool permanentMap)
    {
        ulong* ptep = Require(va);
        var cpu = _machine.CurrentCpu;
        if (Pte.IsValid(pte))
        {
            _machine.Physical.CheckFrame(Pte.Frame(pte));
        }

        cpu.SchedulingPoint();
        ulong old = _host == null ? Interlocked.Exchange(ref *ptep, pte) : HostExchange(va, ptep, pte);

        // kmem is permanently mapped kernel memory, not an ephemeral mapping: counted apart, so
        // that every pte_writes event is one of the pages CountMapping was told about.
        cpu.Count(permanentMap || _machine.Layout.KernelMemory.Contains(va) ? Counter.KmemPteWrites
            : Pte.IsValid(pte) ? Counter.KernelPteWrites : Counter.KernelPteClears);
        cpu.Charge(_machine.Cost.PteWrite);
        if (_exposure && Pte.IsValid(old) && (!Pte.IsValid(pte) || ((old ^ pte) & Pte.PG_FRAME) != 0)
            && (va - _mappingStart < _mappingBytes || (va - VmLayout.DMAP_BASE) >> Pte.PageShift < _dmapPages))
        {
            Removed(cpu, va, old);
        }

        return old;
    }

    /// <summary>
    /// Records an ephemeral mapping of <paramref name="pages"/> pages made by the calling
    /// mechanism (an sf_buf miss, a <c>pmap_qenter</c> of a historical mechanism, a
    /// <c>pager_map</c> page). The machine cannot tell an ephemeral mapping from any other PTE
    /// store, so the mechanisms say so; the experiments check these counts against the PTE writes
    /// and shootdowns the machine observed (<see cref="Counter.Mappings"/>, <see cref="Counter.MappedPages"/>).
    /// </summary>
    public void CountMapping(int pages)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(pages);
        var cpu = _machine.CurrentCpu;
        cpu.Count(Counter.Mappings);
        cpu.Count(Counter.MappedPages, pages);
    }

    /// <summary>
    /// <c>pmap_qenter</c>: maps <paramref name="pages"/> at consecutive pages from
    /// <paramref name="va"/>, then invalidates the range locally and on every other CPU.
    /// </summary>
    public void QEnter(ulong va, ReadOnlySpan<VmPage> pages)
    {
        EnterOperation();
        try
        {
            for (int i = 0; i < pages.Length; i++)
            {
                KEnter(va + ((ulong)i << Pte.PageShift), pages[i]);
            }

            InvalidateRange(va, pages.Length);
        }
        finally
        {
            LeaveOperation();
        }
    }

    /// <summary><c>pmap_qremove</c>: unmaps <paramref name="count"/> pages, then the same invalidation.</summary>
    public void QRemove(ulong va, int count)
    {
        if (_host != null)
        {
            HostQRemove(va, count);
            InvalidateRange(va, count);
            return;
        }

        EnterOperation();
        try
        {
            for (int i = 0; i < count; i++)
            {
                KRemove(va + ((ulong)i << Pte.PageShift));
            }

            InvalidateRange(va, count);
        }
        finally
        {
            LeaveOperation();
        }
    }

    /// <summary><c>pmap_invalidate_page(kernel_pmap, va)</c>: local <c>invlpg</c> plus a broadcast shootdown.</summary>
    public void InvalidatePage(ulong va)
    {
        Require(va);
        var cpu = _machine.CurrentCpu;
        cpu.InvalidateLocal(va >> Pte.PageShift);
        cpu.ShootdownAllButSelf(ShootdownKind.Page, va & ~Pte.PageMask);
    }

    /// <summary><c>pmap_invalidate_range</c>: local <c>invlpg</c> per page plus a broadcast range shootdown.</summary>
    public void InvalidateRange(ulong va, int count)
    {
        if (count <= 0)
        {
            return;
        }

        Require(va);
        Require(va + ((ulong)(count - 1) << Pte.PageShift));
        var cpu = _machine.CurrentCpu;
        ulong first = va >> Pte.PageShift;
        for (int i = 0; i < count; i++)
        {
            cpu.InvalidateLocal(first + (ulong)i);
        }

        cpu.ShootdownAllButSelf(ShootdownKind.Range, va & ~Pte.PageMask, count);
    }

    /// <summary><c>pmap_invalidate_all</c>: flush locally and on every other CPU.</summary>
    public void InvalidateAll()
    {
        var cpu = _machine.CurrentCpu;
        cpu.FlushLocal();
        cpu.ShootdownAllButSelf(ShootdownKind.All);
    }

    private uint Checked(VmPage page)
    {
        _machine.Physical.CheckFrame(page.Frame);
        return page.Frame;
    }

    private ulong* Require(ulong va)
    {
        _machine.ThrowIfUnusable();
        if ((va & Pte.PageMask) != 0)
        {
            throw new ArgumentException($"kernel address 0x{va:x} is not page aligned", nameof(va));
        }

        // Guard pages between the regions stay unmapped so that overruns fault.
        ulong* ptep = Vtopte(va);
        return ptep != null && _machine.Layout.IsKernelRegion(va)
            ? ptep
            : throw new ArgumentOutOfRangeException(nameof(va), $"0x{va:x} is not in a page-mapped kernel region");
    }
}
