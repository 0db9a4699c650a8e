using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Native.PageTable;

namespace Native.SfBufNative.Strategies.Asi;

/// <summary>
/// Address Space Isolation's ephemeral map (<c>mm/ephmap.c</c> in the public ASI branch:
/// <c>ephmap_get</c>, <c>ephmap_put</c>, <c>ephmap_setup</c>).
/// <para>
/// Every address space has one region per CPU (<c>EPHMAP_CPU_REGION_SIZE</c>, the largest folio;
/// here <see cref="RegionPages"/>) at the same address in every address space, and an in-use flag
/// per CPU (<c>mm-&gt;mml_cpu-&gt;in_use</c>). <c>ephmap_get</c> requires migration off, exchanges
/// the flag and returns NULL when it was already set: another thread of the same address space
/// holds this CPU's region. Otherwise it writes the PTEs, with no invalidation: the last
/// <c>ephmap_put</c> on this CPU left the region invalid in its TLB, and no other CPU uses it.
/// <c>ephmap_put</c> clears the PTEs, invalidates on this CPU only (an <c>invlpg</c> per page
/// below 33 pages, else one full flush, <c>invpcid_flush_all</c>) and clears the flag.
/// </para>
/// <para>
/// Address spaces: a thread's <see cref="VmSpace"/>, and the kernel's for every thread without
/// one (ephmap itself returns NULL for a thread with no mm, a kernel thread; the model gives those
/// threads the kernel's address space so that the kernel subsystems' threads use ephmap). The
/// regions live in each mm's own page tables; the simulated machine has one kernel page table,
/// so a switch between threads does what the CR3 switch does to these non-global PTEs: a thread
/// switching out holding a region has its PTEs cleared and invalidated on its CPU, and written
/// again when it switches back in (counted in <see cref="SwitchSaves"/> and
/// <see cref="SwitchRestores"/>). Threads of the same address space never hold one CPU's region
/// together (the flag), so the save and restore only separate address spaces.
/// </para>
/// <para>
/// Per-CPU state (flag, holder, pages, generation) is native, one 64-byte line per CPU per
/// address space, written only by the thread holding that CPU; a get or put allocates nothing
/// managed once the thread and its address space have been seen.
/// </para>
/// </summary>
internal sealed unsafe class Ephmap : IContextSwitchHook, IDisposable
{
    /// <summary>
    /// Default region size in pages: <c>EPHMAP_CPU_REGION_SIZE</c> is the largest folio, and the
    /// simulated page cache has order-0 folios only.
    /// </summary>
    public const int DefaultRegionPages = 1;

    /// <summary>From this many pages <c>ephmap_put</c> flushes the whole TLB instead of one <c>invlpg</c> per page.</summary>
    public const int FullFlushPages = 33;

    private const ulong EphmapProt = Pte.PG_V | Pte.PG_RW;

    private readonly Machine _machine;
    private readonly KvaRegion _area;
    private readonly int _cpus;
    private readonly Lock _setupLock = new();
    private readonly ConditionalWeakTable<VmSpace, EphmapMm> _byVmSpace = new();
    private readonly EphmapMm _kernelMm;
    private readonly ThreadLocal<Held> _held;
    private readonly PerCpuCount _gets;
    private readonly PerCpuCount _failures;
    private readonly PerCpuCount _invlpgs;
    private readonly PerCpuCount _fullFlushes;
    private long _saves;
    private long _restores;

    /// <summary>Regions of <paramref name="regionPages"/> pages in <paramref name="area"/> (null: the fixmap, 32 pages per CPU).</summary>
    public Ephmap(Machine machine, int regionPages = DefaultRegionPages, KvaRegion? area = null)
    {
        _area = area ?? machine.Layout.Fixmap;
        _cpus = machine.Options.Cpus;
        ArgumentOutOfRangeException.ThrowIfLessThan(regionPages, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(regionPages, _area.Pages / _cpus);
        _machine = machine;
        RegionPages = regionPages;
        _held = new(() => new Held(regionPages));
        _gets = new PerCpuCount(machine);
        _failures = new PerCpuCount(machine);
        _invlpgs = new PerCpuCount(machine);
        _fullFlushes = new PerCpuCount(machine);
        _kernelMm = Setup();
        machine.AddContextSwitchHook(this);
    }

    /// <summary><c>EPHMAP_CPU_REGION_SIZE</c> in pages.</summary>
    public int RegionPages { get; }

    /// <summary>Successful <c>ephmap_get</c> calls.</summary>
    public long Gets => _gets.Value;

    /// <summary><c>ephmap_get</c> calls that returned NULL (region in use, or too small).</summary>
    public long Failures => _failures.Value;

    /// <summary>Pages invalidated one by one by <c>ephmap_put</c> (below 33 pages).</summary>
    public long Invlpgs => _invlpgs.Value;

    /// <summary>Full local flushes by <c>ephmap_put</c> (33 pages or more).</summary>
    public long FullFlushes => _fullFlushes.Value;

    /// <summary>PTEs cleared (and invalidated locally) because their holder switched out.</summary>
    public long SwitchSaves => Interlocked.Read(ref _saves);

    /// <summary>PTEs written again because their holder switched back in.</summary>
    public long SwitchRestores => Interlocked.Read(ref _restores);

    /// <summary>True when <paramref name="va"/> lies in the regions' area.</summary>
    public bool Owns(ulong va) => _area.Contains(va);

    /// <summary>The start of <paramref name="cpu"/>'s region (the same in every address space): the area is split evenly among the CPUs, so in the fixmap it is the CPU's first slot.</summary>
    public ulong RegionOf(int cpu) => _area.Start + ((ulong)(cpu * (_area.Pages / _cpus)) << Pte.PageShift);

    /// <summary>True when the calling thread's address space holds the region of <paramref name="cpu"/> (tests).</summary>
    public bool InUse(KernelThread td, int cpu) => Volatile.Read(ref MmOf(td).Line(cpu)->InUse) != 0;

    /// <summary>
    /// <c>ephmap_get</c>: maps <paramref name="pages"/> contiguously in this CPU's region of the
    /// calling thread's address space. The caller has migration off. Returns 0 (NULL) when the
    /// region is held by another thread of the same address space (or by this one), or is too
    /// small.
    /// </summary>
    public ulong Get(KernelThread td, ReadOnlySpan<VmPage> pages, out int slot, out int generation)
    {
        var cpu = td.Cpu!;
        slot = cpu.Id;
        generation = 0;
        if (td.PinCount == 0 && td.BoundCpu < 0)
        {
            throw new InvalidOperationException($"ephmap_get by {td} with migration enabled (lockdep_assert(is_migration_disabled(current)))");
        }

        var held = _held.Value!;
        if (pages.Length == 0 || pages.Length > RegionPages || held.Cpu >= 0)
        {
            // Too large, or this thread already holds a region (of another address space, after
            // a switch of its VmSpace): the flag below would not catch the latter.
            _failures.Increment(cpu);
            return 0;
        }

        var mm = MmOf(td);
        var line = mm.Line(cpu.Id);
        if (Interlocked.Exchange(ref line->InUse, 1) != 0)
        {
            // Another thread in this mm is using it.
            _failures.Increment(cpu);
            return 0;
        }

        ulong addr = RegionOf(cpu.Id);
        for (int i = 0; i < pages.Length; i++)
        {
            ulong va = addr + ((ulong)i << Pte.PageShift);
            ulong pte = Pte.Make(pages[i].Frame, EphmapProt);
            ulong old = _machine.KernelPmap.ExchangePte(va, pte);
            if (Pte.IsValid(old))
            {
                throw new InvalidOperationException($"ephmap_get: page {i} of cpu {cpu.Id}'s region was still mapped ({Pte.Describe(old)}): remapping already mapped page");
            }

            held.PteVal[i] = pte;
        }

        _machine.KernelPmap.CountMapping(pages.Length);
        line->Holder = td.Id;
        line->Pages = pages.Length;
        generation = ++line->Generation;
        held.Pages = pages.Length;
        held.Mm = mm;
        held.Cpu = cpu.Id;
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
        var held = _held.Value!;
        ulong addr = RegionOf(cpu.Id);
        if (held.Cpu != cpu.Id || va != addr)
        {
            throw new InvalidOperationException(
                $"ephmap_put of 0x{va:x} by {td} on cpu {cpu.Id}: it holds no region there (a double put, or another thread's region: "
                + "a region is released by the thread that got it, on the same CPU, migration off)");
        }

        var line = held.Mm!.Line(cpu.Id);
        if (line->InUse == 0 || line->Holder != td.Id || line->Generation != generation)
        {
            throw new InvalidOperationException($"ephmap_put of 0x{va:x} by {td} on cpu {cpu.Id}: a stale handle (generation {generation}, the region's is {line->Generation})");
        }

        if (pages != held.Pages)
        {
            throw new InvalidOperationException($"ephmap_put of {pages} pages at 0x{va:x}: the get mapped {held.Pages}");
        }

        // unmap_page_range_noflush: every PTE is cleared before the flush, so that nothing can
        // refill this CPU's TLB from a live PTE after it.
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

        held.Cpu = -1;
        held.Mm = null;
        held.Pages = 0;
        line->Pages = 0;
        line->Holder = 0;
        Volatile.Write(ref line->InUse, 0); // this_cpu_write(in_use, false)
    }

    /// <inheritdoc/>
    public void SwitchOut(Cpu cpu, KernelThread thread)
    {
        // The switching thread is the calling host thread.
        if (!_held.IsValueCreated || _held.Value!.Cpu < 0)
        {
            return;
        }

        var held = _held.Value;
        ulong addr = RegionOf(cpu.Id);
        for (int i = 0; i < held.Pages; i++)
        {
            ulong va = addr + ((ulong)i << Pte.PageShift);
            _machine.KernelPmap.ExchangePte(va, 0);
            cpu.InvalidateLocal(va >> Pte.PageShift);
        }

        Interlocked.Add(ref _saves, held.Pages);
    }

    /// <inheritdoc/>
    public void SwitchIn(Cpu cpu, KernelThread thread, int migratedFrom)
    {
        if (!_held.IsValueCreated || _held.Value!.Cpu < 0)
        {
            return;
        }

        var held = _held.Value;
        if (migratedFrom >= 0 || held.Cpu != cpu.Id)
        {
            throw new InvalidOperationException($"{thread} migrated from cpu {held.Cpu} to cpu {cpu.Id} holding an ephmap region (migration must be disabled)");
        }

        ulong addr = RegionOf(cpu.Id);
        for (int i = 0; i < held.Pages; i++)
        {
            ulong old = _machine.KernelPmap.ExchangePte(addr + ((ulong)i << Pte.PageShift), held.PteVal[i]);
            if (Pte.IsValid(old))
            {
                throw new InvalidOperationException($"ephmap restore for {thread}: page {i} of cpu {cpu.Id}'s region still maps {Pte.Describe(old)}");
            }
        }

        _machine.KernelPmap.CountMapping(held.Pages);
        Interlocked.Add(ref _restores, held.Pages);
    }

    public void Dispose()
    {
        _machine.RemoveContextSwitchHook(this);
        _held.Dispose();
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

    /// <summary><c>ephmap_setup</c>: an address space's per-CPU lines (its regions' page tables need nothing here).</summary>
    private EphmapMm Setup() => new((CpuLine*)_machine.Ledger.AllocZeroed((nuint)(sizeof(CpuLine) * _cpus), 64));

    /// <summary>One CPU's state in one address space (<c>mml_cpu</c>), alone on its cache line.</summary>
    [StructLayout(LayoutKind.Sequential, Size = 64)]
    private struct CpuLine
    {
        public int InUse;
        public int Holder;
        public int Pages;
        public int Generation;
    }

    /// <summary>An address space's ephmap state: its per-CPU lines.</summary>
    private sealed class EphmapMm(CpuLine* lines)
    {
        public CpuLine* Line(int cpu) => lines + cpu;
    }

    /// <summary>What the calling thread holds: the CPU (-1: nothing), its address space and the PTEs to restore.</summary>
    private sealed class Held(int regionPages)
    {
        public int Cpu = -1;
        public int Pages;
        public EphmapMm? Mm;
        public readonly ulong[] PteVal = new ulong[regionPages];
    }
}
