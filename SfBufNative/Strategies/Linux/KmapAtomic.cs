using Native.PageTable;

namespace Native.SfBufNative.Strategies.Linux;

/// <summary>
/// Linux's <c>kmap_atomic</c> / <c>__kunmap_atomic</c> in their stack form (2.6.37 to 5.10,
/// <c>arch/x86/mm/highmem_32.c</c>, <c>mm/highmem.c</c>): <c>KM_TYPE_NR</c> fixmap slots per CPU
/// used as a stack whose pointer is the per-CPU <c>__kmap_atomic_idx</c>.
/// <para>
/// Map: preemption off (a critical section: the holder may not sleep, block or yield), push,
/// check that the slot's PTE is empty, write it; no invalidation (x86 only flushes lazy MMU
/// mode). Unmap: the address must be the top slot's (strict LIFO; Linux warns with
/// <c>CONFIG_DEBUG_HIGHMEM</c>, here it is refused), clear the PTE and invalidate it on this CPU
/// only (<c>kpte_clear_flush</c>), and only then pop ("mm: Fix race in kunmap_atomic()"), then
/// preemption back on. No lock, and never an IPI: the slot is this CPU's and its holder cannot leave.
/// </para>
/// <para>
/// No barrier either: a CPU's stack index and slots are read and written only by the thread
/// holding that CPU, inside its critical section; successive holders of a CPU are ordered by the
/// scheduler's lock.
/// </para>
/// </summary>
internal sealed unsafe class KmapAtomic
{
    /// <summary><c>KM_TYPE_NR</c>: slots per CPU (the generic header's 20).</summary>
    public const int KM_TYPE_NR = 20;

    private const int IdxStride = 16; // ints: one cache line per CPU
    private const ulong KmapProt = Pte.PG_V | Pte.PG_RW | Pte.PG_G;

    private readonly Machine _machine;
    private readonly int* _idx;
    private readonly PerCpuCount _maps;

    public KmapAtomic(Machine machine)
    {
        _machine = machine;
        _idx = (int*)machine.Ledger.AllocZeroed((nuint)(machine.Options.Cpus * IdxStride * sizeof(int)), 64);
        _maps = new PerCpuCount(machine);
    }

    public long Maps => _maps.Value;

    /// <summary>True when <paramref name="va"/> is a kmap_atomic slot (of any CPU).</summary>
    public bool Owns(ulong va) => _machine.Layout.Fixmap.Contains(va);

    /// <summary>The stack depth of <paramref name="cpu"/> (tests).</summary>
    public int Depth(int cpu) => _idx[cpu * IdxStride];

    /// <summary><c>kmap_atomic</c>: maps <paramref name="page"/> in this CPU's next slot; the caller's critical section begins.</summary>
    public ulong Map(KernelThread td, VmPage page, out int slot)
    {
        td.CriticalEnterSelf(); // preempt_disable + pagefault_disable
        var cpu = td.Cpu!;
        int* idx = _idx + (cpu.Id * IdxStride);
        int type = *idx;
        if (type >= KM_TYPE_NR)
        {
            td.CriticalExitSelf();
            throw new InvalidOperationException($"kmap_atomic on cpu {cpu.Id}: all {KM_TYPE_NR} slots are in use (BUG_ON(idx >= KM_TYPE_NR))");
        }

        ulong vaddr = _machine.Layout.FixmapAddress(cpu.Id, type);
        if (Pte.IsValid(_machine.KernelPmap.ReadPte(vaddr)))
        {
            td.CriticalExitSelf();
            throw new InvalidOperationException($"kmap_atomic: slot {type} of cpu {cpu.Id} was not empty (BUG_ON(!pte_none))");
        }

        *idx = type + 1; // kmap_atomic_idx_push
        _machine.KernelPmap.ExchangePte(vaddr, Pte.Make(page.Frame, KmapProt));
        _machine.KernelPmap.CountMapping(1);
        _maps.Increment(cpu);
        slot = (cpu.Id * KM_TYPE_NR) + type;
        return vaddr;
    }

    /// <summary><c>__kunmap_atomic</c>: <paramref name="sf"/> must be this CPU's top slot.</summary>
    public void Unmap(KernelThread td, SfBuf sf)
    {
        var cpu = td.Cpu!;
        int* idx = _idx + (cpu.Id * IdxStride);
        int type = *idx - 1; // kmap_atomic_idx(): read, not popped yet
        if (type < 0)
        {
            throw new InvalidOperationException($"kunmap_atomic of {sf} on cpu {cpu.Id}, which holds no kmap_atomic (double kunmap, or another CPU's mapping)");
        }

        ulong vaddr = _machine.Layout.FixmapAddress(cpu.Id, type);
        if (sf.Kva != vaddr)
        {
            throw new InvalidOperationException(
                $"kunmap_atomic of {sf} on cpu {cpu.Id} out of LIFO order: the top of the stack is slot {type} at 0x{vaddr:x} "
                + "(kmap_atomic mappings must be released in the reverse order of mapping)");
        }

        ulong pte = _machine.KernelPmap.ReadPte(vaddr);
        if (!Pte.IsValid(pte) || Pte.Frame(pte) != sf.Page.Frame)
        {
            throw new InvalidOperationException($"kunmap_atomic of {sf}: slot {type} of cpu {cpu.Id} maps {Pte.Describe(pte)} (a stale handle)");
        }

        // kpte_clear_flush: clear, invalidate locally, and only then pop the slot.
        _machine.KernelPmap.ExchangePte(vaddr, 0);
        cpu.InvalidateLocal(vaddr >> Pte.PageShift);
        *idx = type;
        td.CriticalExitSelf();
    }
}
