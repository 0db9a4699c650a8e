using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Native.PageTable;

namespace Native.SfBufNative.Strategies.Linux;

/// <summary>
/// The mermap of the February 2026 <c>__GFP_UNMAPPED</c> RFC (<c>mm/mermap.c</c>:
/// <c>mermap_get</c> / <c>__mermap_get</c>, <c>mermap_alloc</c>, <c>mermap_put</c> /
/// <c>__mermap_put</c>, <c>mermap_flush_tlb</c>; <c>include/linux/mermap_types.h</c>:
/// <c>struct mermap_cpu</c>, <c>struct mermap_alloc</c>; x86 <c>arch_mermap_flush_tlb</c> in
/// <c>arch/x86/include/asm/mermap.h</c>).
/// <para>
/// Each CPU owns a region of kernel VA and bumps <c>next_addr</c> through it. Get: migration off
/// (the holder may sleep, but resumes on this CPU), then, with preemption off, the bump: if the
/// page does not fit below the region's end, the region wraps: the new start is the end of the
/// highest allocation still in use (the region's base when none is), nothing fits after it
/// means failure (no flush), otherwise this CPU's TLB is flushed whole, once, and the bump
/// restarts there. A free tracking entry (<see cref="MERMAP_ALLOCS"/> per CPU) is taken, or the
/// get fails; then the PTE is written, with no invalidation (the slot was flushed at the last
/// wrap and never mapped since). Put: the PTE is cleared, <em>not</em> flushed, the entry freed
/// (after the clear, so a wrap that sees it free flushes a cleared PTE), migration on.
/// </para>
/// <para>
/// So a slot held at a wrap is never reused: the bump restarts above the highest held one, and
/// what lies below it waits for the next wrap (and its flush). Never an IPI: the region is this
/// CPU's, and no other CPU may access it. The last page of each region is kept for the RFC's
/// <c>mermap_get_reserved</c> (preemption off, single page), which the sf_buf interface has no
/// user for: ordinary gets bump up to the page before it.
/// </para>
/// <para>
/// Per-CPU state (<c>struct mermap_cpu</c> and this CPU's counts) lives in native memory, each CPU
/// on its own cache lines, read and written only by the thread holding that CPU; the map path
/// allocates nothing managed.
/// </para>
/// </summary>
internal sealed unsafe class Mermap
{
    /// <summary><c>ARRAY_SIZE(mermap_cpu.allocs)</c>: allocations a CPU can track at once.</summary>
    public const int MERMAP_ALLOCS = 4;

    /// <summary>The default region per CPU: the whole per-CPU fixmap (the RFC's is the largest folio, <c>PAGE_SIZE &lt;&lt; MAX_PAGECACHE_ORDER</c>).</summary>
    public const int DefaultRegionPages = VmLayout.FixmapPagesPerCpu;

    // Pages at the end of each region that ordinary gets leave to mermap_get_reserved.
    private const int ReservedPages = 1;

    // The RFC maps mm-local, non-global PTEs; the simulated kernel has one address space, so the
    // PTE is global and the wrap flushes global entries too (__flush_tlb_all).
    private const ulong MermapProt = Pte.PG_V | Pte.PG_RW | Pte.PG_G;

    // This CPU's counts, indices into MermapCpu.Counts.
    private const int CountMaps = 0;
    private const int CountWraps = 1;
    private const int CountFlushes = 2;
    private const int CountFailures = 3;
    private const int CountHeldAtWrap = 4;
    private const int CountSkippedPages = 5;
    private const int Ncounts = 6;

    private static readonly int s_stride = (sizeof(MermapCpu) + 63) & ~63;

    private readonly Machine _machine;
    private readonly byte* _cpus;
    private readonly int _ncpus;

    public Mermap(Machine machine, int regionPages)
    {
        if (regionPages < ReservedPages + 1 || regionPages > VmLayout.FixmapPagesPerCpu)
        {
            throw new ArgumentOutOfRangeException(nameof(regionPages), regionPages, $"a mermap region has 2 to {VmLayout.FixmapPagesPerCpu} pages (the per-CPU fixmap)");
        }

        _machine = machine;
        _ncpus = machine.Options.Cpus;
        RegionPages = regionPages;
        _cpus = (byte*)machine.Ledger.AllocZeroed((nuint)(_ncpus * s_stride), 64);
        for (int c = 0; c < _ncpus; c++)
        {
            Cpu(c)->NextAddr = RegionBase(c); // mermap_mm_prepare
        }
    }

    /// <summary>Pages of each CPU's region, the reserved last one included.</summary>
    public int RegionPages { get; }

    /// <summary>Pages an ordinary get bumps through before the region wraps.</summary>
    public int UsablePages => RegionPages - ReservedPages;

    /// <summary>Successful gets (mappings made).</summary>
    public long Maps => Sum(CountMaps);

    /// <summary>Times a region's bump pointer went back to its start (or past its highest held allocation).</summary>
    public long Wraps => Sum(CountWraps);

    /// <summary>Local full TLB flushes made at wraps (<c>arch_mermap_flush_tlb</c>).</summary>
    public long Flushes => Sum(CountFlushes);

    /// <summary>Gets that returned NULL: no room after a wrap, or no free tracking entry.</summary>
    public long Failures => Sum(CountFailures);

    /// <summary>Allocations still in use at a wrap, which the bump skipped instead of reusing.</summary>
    public long HeldAtWrap => Sum(CountHeldAtWrap);

    /// <summary>Freed pages below the highest held allocation that a wrap left unused until the next one.</summary>
    public long SkippedPages => Sum(CountSkippedPages);

    /// <summary>True when <paramref name="va"/> is in a mermap region (of any CPU).</summary>
    public bool Owns(ulong va) => _machine.Layout.Fixmap.Contains(va);

    /// <summary>Tracking entries of <paramref name="cpu"/> in use (tests).</summary>
    public int InUse(int cpu)
    {
        var mc = Cpu(cpu);
        int n = 0;
        for (int i = 0; i < MERMAP_ALLOCS; i++)
        {
            n += Volatile.Read(ref mc->Allocs[i].InUse);
        }

        return n;
    }

    /// <summary><c>next_addr</c> of <paramref name="cpu"/> as a page index in its region (tests).</summary>
    public int NextPage(int cpu) => (int)((Cpu(cpu)->NextAddr - RegionBase(cpu)) >> Pte.PageShift);

    /// <summary>
    /// <c>mermap_get</c> of one page: returns its address, or 0 (NULL) when the region has no room
    /// even after a wrap or every tracking entry is in use. On success migration stays disabled
    /// until <see cref="Put"/>.
    /// </summary>
    public ulong Get(KernelThread td, VmPage page, out int slot, out int generation)
    {
        td.PinSelf(); // migrate_disable
        td.CriticalEnterSelf(); // guard(preempt) in mermap_alloc
        var cpu = td.Cpu!;
        var mc = Cpu(cpu.Id);
        ulong regionBase = RegionBase(cpu.Id);
        ulong end = regionBase + ((ulong)UsablePages << Pte.PageShift); // cpu_end - PAGE_SIZE
        slot = -1;
        generation = 0;

        if (mc->NextAddr + Pte.PageSize > end)
        {
            // Out of already-flushed space: restart after the highest allocation still in use.
            ulong newNext = regionBase;
            int held = 0;
            for (int i = 0; i < MERMAP_ALLOCS; i++)
            {
                ref var a = ref mc->Allocs[i];
                if (Volatile.Read(ref a.InUse) != 0)
                {
                    held++;
                    newNext = Math.Max(newNext, a.End);
                }
            }

            if (Pte.PageSize > end - newNext)
            {
                mc->Counts[CountFailures]++;
                td.CriticalExitSelf();
                td.UnpinSelf();
                return 0;
            }

            // mermap_flush_tlb: everything from the region's base to next_addr that is not held
            // was cleared by mermap_put but may still be cached here; drop it before any reuse.
            if (!_machine.Planted(PlantedBug.MermapWrapFlushSkipped))
            {
                cpu.FlushTlb();
                mc->Counts[CountFlushes]++;
            }

            mc->Counts[CountWraps]++;
            mc->Counts[CountHeldAtWrap] += held;
            mc->Counts[CountSkippedPages] += (long)((newNext - regionBase) >> Pte.PageShift) - held;
            mc->NextAddr = newNext;
        }

        int index = -1;
        for (int i = 0; i < MERMAP_ALLOCS; i++)
        {
            if (Volatile.Read(ref mc->Allocs[i].InUse) == 0)
            {
                index = i;
                break;
            }
        }

        if (index < 0)
        {
            mc->Counts[CountFailures]++;
            td.CriticalExitSelf();
            td.UnpinSelf();
            return 0;
        }

        ref var alloc = ref mc->Allocs[index];
        ulong va = mc->NextAddr;
        alloc.InUse = 1;
        alloc.Base = va;
        alloc.End = va + Pte.PageSize;
        alloc.Owner = td.Id;
        generation = ++alloc.Generation;
        mc->NextAddr = alloc.End;
        td.CriticalExitSelf();

        // __mermap_get: set the PTE, no invalidation (apply_to_existing_page_range + do_set_pte).
        ulong old = _machine.KernelPmap.ExchangePte(va, Pte.Make(page.Frame, MermapProt));
        if (Pte.IsValid(old))
        {
            throw new InvalidOperationException($"mermap_get on cpu {cpu.Id}: 0x{va:x} still maps {Pte.Describe(old)} (a put did not clear it)");
        }

        _machine.KernelPmap.CountMapping(1);
        _machine.KernelPmap.TagPrivate(va, cpu.Id); // logically local to this CPU
        mc->Counts[CountMaps]++;
        slot = (cpu.Id * MERMAP_ALLOCS) + index;
        return va;
    }

    /// <summary><c>mermap_put</c>: by the thread that made <paramref name="sf"/>, on its CPU; clears the PTE without a flush.</summary>
    public void Put(KernelThread td, SfBuf sf, int slot, int generation)
    {
        int owner = slot / MERMAP_ALLOCS;
        var cpu = td.Cpu!;
        if ((uint)slot >= (uint)(_ncpus * MERMAP_ALLOCS))
        {
            throw new InvalidOperationException($"mermap_put of {sf}: no mermap allocation {slot} (a foreign or forged handle)");
        }

        if (owner != cpu.Id)
        {
            throw new InvalidOperationException(
                $"mermap_put of {sf} by {td} on cpu {cpu.Id}: it was made on cpu {owner} (a mermap mapping is used and released only on the CPU that made it)");
        }

        ref var alloc = ref Cpu(owner)->Allocs[slot % MERMAP_ALLOCS];
        if (Volatile.Read(ref alloc.InUse) == 0 || alloc.Generation != generation || alloc.Base != sf.Kva)
        {
            throw new InvalidOperationException($"mermap_put of {sf}: allocation {slot % MERMAP_ALLOCS} of cpu {owner} is not this mapping (WARN_ON_ONCE(!alloc->in_use): a double put or a stale handle)");
        }

        if (alloc.Owner != td.Id)
        {
            throw new InvalidOperationException($"mermap_put of {sf} by {td}: another thread made it (its migrate_disable is that thread's)");
        }

        ulong old = _machine.KernelPmap.ExchangePte(sf.Kva, 0); // set_unmapped_pte: no flush
        if (!Pte.IsValid(old) || Pte.Frame(old) != sf.Page.Frame)
        {
            throw new InvalidOperationException($"mermap_put of {sf}: 0x{sf.Kva:x} mapped {Pte.Describe(old)}");
        }

        _machine.KernelPmap.UntagPrivate(sf.Kva);
        Volatile.Write(ref alloc.InUse, 0); // WRITE_ONCE(alloc->in_use, false), after the clear
        td.UnpinSelf(); // migrate_enable
    }

    private ulong RegionBase(int cpu) => _machine.Layout.FixmapAddress(cpu, 0);

    private MermapCpu* Cpu(int cpu) => (MermapCpu*)(_cpus + ((nuint)cpu * (nuint)s_stride));

    private long Sum(int count)
    {
        long sum = 0;
        for (int c = 0; c < _ncpus; c++)
        {
            sum += Volatile.Read(ref Cpu(c)->Counts[count]);
        }

        return sum;
    }

    /// <summary><c>struct mermap_alloc</c>, with the handle's generation and the holder.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct MermapAlloc
    {
        public int InUse;
        public int Generation;
        public ulong Base;
        public ulong End;
        public int Owner;
    }

    /// <summary>The <c>allocs</c> array of <c>struct mermap_cpu</c>.</summary>
    [InlineArray(MERMAP_ALLOCS)]
    private struct MermapAllocs
    {
        private MermapAlloc _first;
    }

    /// <summary><c>struct mermap_cpu</c>, and this CPU's counts (written only by its holder).</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct MermapCpu
    {
        public ulong NextAddr;
        public MermapAllocs Allocs;
        public fixed long Counts[Ncounts];
    }
}
