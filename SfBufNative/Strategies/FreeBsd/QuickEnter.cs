using System.Runtime.InteropServices;
using Native.PageTable;

namespace Native.SfBufNative.Strategies.FreeBsd;

/// <summary>
/// FreeBSD's <c>pmap_quick_enter_page</c> / <c>pmap_quick_remove_page</c> (r286296, D3013), i386
/// form: one page of KVA per CPU (<c>qmap_addr</c>, here the CPU's first fixmap slot).
/// <para>
/// Enter: <c>critical_enter</c> (no preemption, no migration: the holder may not sleep, block or
/// yield), assert the PTE is empty ("PTE busy" otherwise: no nesting), write it with
/// <c>PG_A</c> and <c>PG_M</c> preset so the MMU never updates it, <c>invlpg</c> locally, return
/// the address. Remove: assert, zero the PTE without invalidating (the next enter on this CPU
/// invalidates), <c>critical_exit</c>. No lock, no descriptor, never an IPI.
/// </para>
/// <para>
/// No barrier: a CPU's slot is read and written only by the thread holding that CPU (in its
/// critical section, or pinned when the adapter checks <see cref="IsBusy"/>); successive holders
/// are ordered by the scheduler's lock.
/// </para>
/// </summary>
internal sealed unsafe class QuickEnter
{
    private const ulong QuickProt = Pte.PG_V | Pte.PG_RW | Pte.PG_A | Pte.PG_M;

    private readonly Machine _machine;
    private readonly QuickSlot* _slots;
    private readonly PerCpuCount _enters;

    public QuickEnter(Machine machine)
    {
        _machine = machine;
        _slots = (QuickSlot*)machine.Ledger.AllocZeroed((nuint)(machine.Options.Cpus * sizeof(QuickSlot)), 64);
        _enters = new PerCpuCount(machine);
    }

    public long Enters => _enters.Value;

    /// <summary><c>PCPU_GET(qmap_addr)</c> of <paramref name="cpu"/>.</summary>
    public ulong QmapAddr(int cpu) => _machine.Layout.FixmapAddress(cpu, 0);

    /// <summary>True when <paramref name="va"/> is some CPU's quick-map page.</summary>
    public bool Owns(ulong va) => _machine.Layout.Fixmap.Contains(va);

    /// <summary>True when <paramref name="cpu"/>'s quick-map page is in use.</summary>
    public bool IsBusy(int cpu) => _slots[cpu].Busy != 0;

    /// <summary><c>pmap_quick_enter_page</c>: maps <paramref name="page"/> at this CPU's page; the critical section begins.</summary>
    public ulong Enter(KernelThread td, VmPage page, out int generation)
    {
        td.CriticalEnterSelf();
        var cpu = td.Cpu!;
        QuickSlot* slot = _slots + cpu.Id;
        ulong qaddr = QmapAddr(cpu.Id);
        if (slot->Busy != 0)
        {
            td.CriticalExitSelf();
            throw new InvalidOperationException(
                $"pmap_quick_enter_page: PTE busy on cpu {cpu.Id} (frame 0x{slot->Frame:x} is quick-mapped): pmap_quick_enter_page does not nest");
        }

        _machine.KernelPmap.ExchangePte(qaddr, Pte.Make(page.Frame, QuickProt));
        _machine.KernelPmap.CountMapping(1);
        cpu.InvalidateLocal(qaddr >> Pte.PageShift);
        slot->Busy = 1;
        slot->Frame = page.Frame;
        generation = ++slot->Generation;
        _enters.Increment(cpu);
        return qaddr;
    }

    /// <summary><c>pmap_quick_remove_page</c>: on the CPU that entered it, which its holder never left.</summary>
    public void Remove(KernelThread td, SfBuf sf)
    {
        var cpu = td.Cpu!;
        QuickSlot* slot = _slots + cpu.Id;
        if (sf.Kva != QmapAddr(cpu.Id))
        {
            throw new InvalidOperationException($"pmap_quick_remove_page of {sf} on cpu {cpu.Id}: invalid address (this CPU's page is 0x{QmapAddr(cpu.Id):x})");
        }

        if (slot->Busy == 0 || slot->Frame != sf.Page.Frame || slot->Generation != sf.Generation)
        {
            throw new InvalidOperationException($"pmap_quick_remove_page of {sf}: PTE not in use by it (double remove, or a stale handle)");
        }

        // No invalidation: the next enter on this CPU invalidates before anyone uses the page.
        _machine.KernelPmap.ExchangePte(sf.Kva, 0);
        slot->Busy = 0;
        td.CriticalExitSelf();
    }

    [StructLayout(LayoutKind.Sequential, Size = 64)]
    private struct QuickSlot
    {
        public int Busy;
        public uint Frame;
        public int Generation;
    }
}
