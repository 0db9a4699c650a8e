using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Native.PageTable;

namespace Native.SfBufNative.Strategies.Asi;

/// <summary>
/// Address Space Isolation's ephemeral map (<c>mm/ephmap.c</c> in the public ASI branch:
/// <c>ephmap_get</c>, <c>ephmap_put</c>, <c>ephmap_setup</c>).
/// <para>
/// Every address space has one region per CPU (<c>EPHMAP_CPU_REGION_SIZE</c>, the largest folio;
/// here <see cref="RegionPages"/>) and an in-use flag per CPU (<c>mm-&gt;mml_cpu-&gt;in_use</c>).
/// <c>ephmap_get</c> requires migration off, exchanges the flag and returns NULL when it was
/// already set: another thread of the same address space holds this CPU's region (a thread of
/// another address space has its own region). Otherwise it writes the PTEs; no invalidation,
/// since the last <c>ephmap_put</c> left the region invalid in this CPU's TLB and no other CPU
/// uses it. <c>ephmap_put</c> clears the PTEs, invalidates on this CPU only (an <c>invlpg</c> per
/// page below 33 pages, else one full flush, <c>invpcid_flush_all</c>) and clears the flag.
/// </para>
/// <para>
/// Address spaces: ephmap's regions live in each mm's own page tables at the same address. The
/// simulated machine has one kernel page table, so each address space (a thread's
/// <see cref="VmSpace"/>; threads without one share the kernel's) gets its own range of
/// <c>kernel_map</c>, taken at its first <c>ephmap_get</c> (<c>ephmap_setup</c>). ephmap itself
/// returns NULL for a thread with no mm (a kernel thread); the model gives those threads the
/// kernel's address space instead, so that the kernel subsystems' threads use it.
/// </para>
/// <para>
/// Per-CPU state (flag, holder, pages, generation) is native, one 64-byte line per CPU, written
/// only by the thread holding that CPU; a get or put allocates nothing managed.
/// </para>
/// </summary>
internal sealed unsafe class Ephmap : IDisposable
{
    /// <summary>Default region size in pages: both sides of the 33-page flush threshold fit.</summary>
    public const int DefaultRegionPages = 64;

    /// <summary>From this many pages <c>ephmap_put</c> flushes the whole TLB instead of one <c>invlpg</c> per page.</summary>
    public const int FullFlushPages = 33;

    private const ulong EphmapProt = Pte.PG_V | Pte.PG_RW | Pte.PG_G;

    private readonly Machine _machine;
    private readonly int _cpus;
    private readonly Lock _setupLock = new();
    private readonly ConditionalWeakTable<VmSpace, EphmapMm> _byVmSpace = new();
    private readonly List<EphmapMm> _all = [];
    private readonly EphmapMm _kernelMm;
    private readonly PerCpuCount _gets;
    private readonly PerCpuCount _failures;
    private readonly PerCpuCount _invlpgs;
    private readonly PerCpuCount _fullFlushes;
    private long _setupFailures;
    private bool _disposed;

    public Ephmap(Machine machine, int regionPages = DefaultRegionPages)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(regionPages, 1);
        _machine = machine;
        _cpus = machine.Options.Cpus;
        RegionPages = regionPages;
        _gets = new PerCpuCount(machine);
        _failures = new PerCpuCount(machine);
        _invlpgs = new PerCpuCount(machine);
        _fullFlushes = new PerCpuCount(machine);
        _kernelMm = Setup();
    }

    /// <summary><c>EPHMAP_CPU_REGION_SIZE</c> in pages.</summary>
    public int RegionPages { get; }

    /// <summary>Successful <c>ephmap_get</c> calls.</summary>
    public long Gets => _gets.Value;

    /// <summary><c>ephmap_get</c> calls that returned NULL (region in use, too large, or no region).</summary>
    public long Failures => _failures.Value;

    /// <summary>Pages invalidated one by one by <c>ephmap_put</c> (below 33 pages).</summary>
    public long Invlpgs => _invlpgs.Value;

    /// <summary>Full local flushes by <c>ephmap_put</c> (33 pages or more).</summary>
    public long FullFlushes => _fullFlushes.Value;

    /// <summary>Address spaces whose region could not be set up (<c>kernel_map</c> exhausted): their gets all fail.</summary>
    public long SetupFailures => Interlocked.Read(ref _setupFailures);

    /// <summary>True when <paramref name="va"/> lies in an ephmap region (every region comes from <c>kernel_map</c>).</summary>
    public bool Owns(ulong va) => _machine.Layout.KernelMap.Contains(va);

    /// <summary>True when the calling thread's address space holds the region of <paramref name="cpu"/> (tests).</summary>
    public bool InUse(KernelThread td, int cpu) => MmOf(td) is { Region: not 0 } mm && mm.Line(cpu)->InUse != 0;

    /// <summary>
    /// <c>ephmap_get</c>: maps <paramref name="pages"/> contiguously in this CPU's region of the
    /// calling thread's address space. The caller has migration off. Returns 0 (NULL) when the
    /// region is held by another thread of the same address space, or is too small.
    /// </summary>
    public ulong Get(KernelThread td, ReadOnlySpan<VmPage> pages, out int slot, out int generation)
    {
        var cpu = td.Cpu!;
        slot = cpu.Id;
        generation = 0;
        if (td.RequiredCpu != cpu.Id)
        {
            throw new InvalidOperationException($"ephmap_get by {td} with migration enabled (lockdep_assert(is_migration_disabled(current)))");
        }

        var mm = MmOf(td);
        if (pages.Length == 0 || pages.Length > RegionPages || mm.Region == 0)
        {
            _failures.Increment(cpu);
            return 0;
        }

        var line = mm.Line(cpu.Id);
        if (Interlocked.Exchange(ref line->InUse, 1) != 0)
        {
            // Another thread in this mm is using it.
            _failures.Increment(cpu);
            return 0;
        }

        ulong addr = mm.Region + ((ulong)(cpu.Id * RegionPages) << Pte.PageShift);
        for (int i = 0; i < pages.Length; i++)
        {
            ulong va = addr + ((ulong)i << Pte.PageShift);
            ulong old = _machine.KernelPmap.ExchangePte(va, Pte.Make(pages[i].Frame, EphmapProt));
            if (Pte.IsValid(old))
            {
                throw new InvalidOperationException($"ephmap_get: page {i} of cpu {cpu.Id}'s region was still mapped ({Pte.Describe(old)}): remapping already mapped page");
            }
        }

        _machine.KernelPmap.CountMapping(pages.Length);
        line->Holder = td.Id;
        line->Pages = pages.Length;
        generation = ++line->Generation;
        _gets.Increment(cpu);
        return addr;
    }

    /// <summary>
    /// <c>ephmap_put</c>: clears the <paramref name="pages"/> PTEs of the region at
    /// <paramref name="va"/>, invalidates them on this CPU only and releases the region. Refuses
    /// a region the calling thread does not hold on its CPU, a wrong size and a stale generation.
    /// </summary>
    public void Put(KernelThread td, ulong va, int pages, int generation)
    {
        var cpu = td.Cpu!;
        var mm = MmOf(td);
        ulong addr = mm.Region + ((ulong)(cpu.Id * RegionPages) << Pte.PageShift);
        var line = mm.Region == 0 ? null : mm.Line(cpu.Id);
        if (line == null || va != addr)
        {
            throw new InvalidOperationException(
                $"ephmap_put of 0x{va:x} by {td} on cpu {cpu.Id}: not this CPU's region of its address space (0x{addr:x}); "
                + "a region is released by the thread that got it, on the same CPU (migration off)");
        }

        if (line->InUse == 0 || line->Holder != td.Id || line->Generation != generation)
        {
            throw new InvalidOperationException($"ephmap_put of 0x{va:x} by {td} on cpu {cpu.Id}: the region is not held by this get (a double put, a stale handle, or another thread's region)");
        }

        if (pages != line->Pages)
        {
            throw new InvalidOperationException($"ephmap_put of {pages} pages at 0x{va:x}: the get mapped {line->Pages}");
        }

        // unmap_page_range_noflush: clear every PTE first, then invalidate, so that no walk
        // between the two can refill the TLB from a live PTE.
        for (int i = 0; i < pages; i++)
        {
            _machine.KernelPmap.ExchangePte(va + ((ulong)i << Pte.PageShift), 0);
        }

        if (!_machine.Planted(PlantedBug.EphmapPutSkipsInvalidation))
        {
            if (pages < FullFlushPages)
            {
                for (int i = 0; i < pages; i++)
                {
                    cpu.InvalidateLocal((va >> Pte.PageShift) + (ulong)i);
                    _invlpgs.Increment(cpu);
                }
            }
            else
            {
                cpu.FlushLocal(); // invpcid_flush_all
                _fullFlushes.Increment(cpu);
            }
        }

        line->Pages = 0;
        line->Holder = 0;
        Volatile.Write(ref line->InUse, 0);
    }

    public void Dispose()
    {
        lock (_setupLock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            foreach (var mm in _all)
            {
                if (mm.Region != 0 && !_machine.IsDisposed)
                {
                    _machine.KernelMap.Free(mm.Region, _cpus * RegionPages);
                }
            }

            _all.Clear();
        }
    }

    private EphmapMm MmOf(KernelThread td)
    {
        var space = td.VmSpace;
        if (space == null)
        {
            return _kernelMm;
        }

        if (_byVmSpace.TryGetValue(space, out var mm))
        {
            return mm;
        }

        lock (_setupLock)
        {
            if (!_byVmSpace.TryGetValue(space, out mm))
            {
                mm = Setup();
                _byVmSpace.Add(space, mm);
            }

            return mm;
        }
    }

    /// <summary><c>ephmap_setup</c>: an address space's regions, one per CPU, and its per-CPU lines.</summary>
    private EphmapMm Setup()
    {
        ulong region = _machine.KernelMap.Alloc(_cpus * RegionPages, wait: false);
        if (region == 0)
        {
            Interlocked.Increment(ref _setupFailures);
        }

        var lines = (CpuLine*)_machine.Ledger.AllocZeroed((nuint)(sizeof(CpuLine) * _cpus), 64);
        var mm = new EphmapMm(region, lines);
        lock (_setupLock)
        {
            _all.Add(mm);
        }

        return mm;
    }

    /// <summary>One CPU's state in one address space (<c>mml_cpu</c>), alone on its cache line.</summary>
    [StructLayout(LayoutKind.Sequential, Size = 64)]
    private struct CpuLine
    {
        public int InUse;
        public int Holder;
        public int Pages;
        public int Generation;
    }

    /// <summary>An address space's ephmap: its regions and per-CPU lines.</summary>
    private sealed class EphmapMm(ulong region, CpuLine* lines)
    {
        public ulong Region { get; } = region;

        public CpuLine* Line(int cpu) => lines + cpu;
    }
}
