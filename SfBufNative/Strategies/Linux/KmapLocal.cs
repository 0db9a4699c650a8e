using Native.PageTable;

namespace Native.SfBufNative.Strategies.Linux;

/// <summary>
/// Linux's <c>kmap_local_page</c> (5.11, <c>mm/highmem.c</c>: <c>__kmap_local_pfn_prot</c>,
/// <c>kunmap_local_indexed</c>, <c>__kmap_local_sched_out</c>, <c>__kmap_local_sched_in</c>).
/// <para>
/// Every thread has a stack (<c>task_struct.kmap_ctrl</c>: an index and the PTE value of each
/// held map, <c>KM_MAX_IDX</c> deep); the slot of stack entry <c>i</c> on CPU <c>c</c> is fixmap
/// slot <c>i + KM_MAX_IDX * c</c>, so every thread on a CPU uses the same slots. Map: migration
/// off (the thread may sleep, but resumes on this CPU), push, check the PTE is empty, write it and
/// remember it; no invalidation. Unmap: strict LIFO (refused otherwise), clear the PTE, invalidate
/// on this CPU only, forget it, pop, migration back on.
/// </para>
/// <para>
/// Because other threads reuse the slots, a context switch saves and restores: a thread that
/// switches out holding maps has each PTE cleared and invalidated locally; when it switches back
/// in each saved PTE is written again (no invalidation: whoever used the slot meanwhile
/// invalidated it). Both are counted: <see cref="Saves"/> and <see cref="Restores"/>.
/// </para>
/// <para>
/// No barrier: the stack is the thread's own, and a CPU's slots are written only by the thread
/// holding that CPU (at map, unmap and its own switch-out and switch-in); successive holders of a
/// CPU are ordered by the scheduler's lock.
/// </para>
/// </summary>
internal sealed unsafe class KmapLocal : IContextSwitchHook, IDisposable
{
    /// <summary><c>KM_MAX_IDX</c>: slots per CPU and maps per thread.</summary>
    public const int KM_MAX_IDX = 16;

    private const ulong KmapProt = Pte.PG_V | Pte.PG_RW | Pte.PG_G;

    private readonly Machine _machine;
    private readonly ThreadLocal<KmapCtrl> _ctrl = new(() => new KmapCtrl());
    private readonly PerCpuCount _maps;
    private long _saves;
    private long _restores;
    private long _switchesWithMaps;

    public KmapLocal(Machine machine)
    {
        _machine = machine;
        _maps = new PerCpuCount(machine);
        machine.AddContextSwitchHook(this);
    }

    public long Maps => _maps.Value;

    /// <summary>PTEs cleared (and invalidated locally) because their thread switched out holding them.</summary>
    public long Saves => Interlocked.Read(ref _saves);

    /// <summary>PTEs written again because their thread switched back in.</summary>
    public long Restores => Interlocked.Read(ref _restores);

    /// <summary>Context switches out of a thread that held at least one map.</summary>
    public long SwitchesWithMaps => Interlocked.Read(ref _switchesWithMaps);

    /// <summary>True when <paramref name="va"/> is a kmap_local slot (of any CPU).</summary>
    public bool Owns(ulong va) => _machine.Layout.Fixmap.Contains(va);

    /// <summary>Maps the calling thread holds (tests).</summary>
    public int Depth => _ctrl.IsValueCreated ? _ctrl.Value!.Idx : 0;

    /// <summary><c>kmap_local_page</c>.</summary>
    public ulong Map(KernelThread td, VmPage page, out int slot)
    {
        var ctrl = _ctrl.Value!;
        int idx = ctrl.Idx;
        if (idx >= KM_MAX_IDX)
        {
            throw new InvalidOperationException($"kmap_local_page by {td}: it already holds {KM_MAX_IDX} maps (BUG_ON(idx >= KM_MAX_IDX))");
        }

        td.PinSelf(); // migrate_disable
        var cpu = td.Cpu!;
        ulong vaddr = _machine.Layout.FixmapAddress(cpu.Id, idx);
        ulong pteval = Pte.Make(page.Frame, KmapProt);
        if (Pte.IsValid(_machine.KernelPmap.ReadPte(vaddr)))
        {
            td.UnpinSelf();
            throw new InvalidOperationException($"kmap_local_page: slot {idx} of cpu {cpu.Id} was not empty (BUG_ON(!pte_none))");
        }

        _machine.KernelPmap.ExchangePte(vaddr, pteval);
        _machine.KernelPmap.CountMapping(1);

        ctrl.PteVal[idx] = pteval;
        ctrl.Idx = idx + 1;
        _maps.Increment(cpu);
        slot = (cpu.Id * KM_MAX_IDX) + idx;
        return vaddr;
    }

    /// <summary><c>kunmap_local</c>: <paramref name="sf"/> must be the calling thread's most recent map.</summary>
    public void Unmap(KernelThread td, SfBuf sf)
    {
        var ctrl = _ctrl.Value!;
        int idx = ctrl.Idx - 1;
        var cpu = td.Cpu!;
        if (idx < 0)
        {
            throw new InvalidOperationException($"kunmap_local of {sf} by {td}, which holds no kmap_local (double kunmap, or another thread's mapping)");
        }

        ulong vaddr = _machine.Layout.FixmapAddress(cpu.Id, idx);
        if (sf.Kva != vaddr)
        {
            throw new InvalidOperationException(
                $"kunmap_local of {sf} by {td} on cpu {cpu.Id} out of LIFO order: its most recent map is slot {idx} at 0x{vaddr:x} "
                + "(kmap_local mappings must be released in the reverse order of mapping, by the thread that made them)");
        }

        if (Pte.Frame(ctrl.PteVal[idx]) != sf.Page.Frame)
        {
            throw new InvalidOperationException($"kunmap_local of {sf}: slot {idx} holds {Pte.Describe(ctrl.PteVal[idx])} (a stale handle)");
        }

        _machine.KernelPmap.ExchangePte(vaddr, 0);
        cpu.InvalidateLocal(vaddr >> Pte.PageShift); // x86 arch_kmap_local_post_unmap
        ctrl.PteVal[idx] = 0;
        ctrl.Idx = idx;
        td.UnpinSelf(); // migrate_enable
    }

    /// <inheritdoc/>
    public void SwitchOut(Cpu cpu, KernelThread thread)
    {
        // __kmap_local_sched_out: the thread switching out is the calling host thread.
        if (!_ctrl.IsValueCreated || _ctrl.Value!.Idx == 0)
        {
            return;
        }

        var ctrl = _ctrl.Value;
        for (int i = 0; i < ctrl.Idx; i++)
        {
            ulong vaddr = _machine.Layout.FixmapAddress(cpu.Id, i);
            _machine.KernelPmap.ExchangePte(vaddr, 0);
            cpu.InvalidateLocal(vaddr >> Pte.PageShift);
        }

        Interlocked.Add(ref _saves, ctrl.Idx);
        Interlocked.Increment(ref _switchesWithMaps);
    }

    /// <inheritdoc/>
    public void SwitchIn(Cpu cpu, KernelThread thread, int migratedFrom)
    {
        if (!_ctrl.IsValueCreated || _ctrl.Value!.Idx == 0)
        {
            return;
        }

        var ctrl = _ctrl.Value;
        if (migratedFrom >= 0)
        {
            // migrate_disable makes this impossible; a saved PTE on another CPU's slot would be wrong.
            throw new InvalidOperationException($"{thread} migrated from cpu {migratedFrom} to cpu {cpu.Id} holding {ctrl.Idx} kmap_local maps");
        }

        // __kmap_local_sched_in: no invalidation; the slot was invalidated when last released.
        // Each restored PTE maps the page again: recorded like any other mapping.
        for (int i = 0; i < ctrl.Idx; i++)
        {
            ulong vaddr = _machine.Layout.FixmapAddress(cpu.Id, i);
            ulong old = _machine.KernelPmap.ExchangePte(vaddr, ctrl.PteVal[i]);
            if (Pte.IsValid(old))
            {
                throw new InvalidOperationException($"kmap_local restore for {thread}: slot {i} of cpu {cpu.Id} still maps {Pte.Describe(old)}");
            }

            _machine.KernelPmap.CountMapping(1);
        }

        Interlocked.Add(ref _restores, ctrl.Idx);
    }

    public void Dispose()
    {
        _machine.RemoveContextSwitchHook(this);
        _ctrl.Dispose();
    }

    /// <summary><c>task_struct.kmap_ctrl</c>.</summary>
    private sealed class KmapCtrl
    {
        public int Idx;
        public readonly ulong[] PteVal = new ulong[KM_MAX_IDX];
    }
}
