namespace Native.PageTable;

/// <summary>
/// A process's user page table: a two-level radix tree in native memory (a directory of
/// pointers to 512-entry PTE pages, like x86's page directory), covering
/// [<see cref="VmLayout.UserMin"/>, <see cref="VmLayout.UserMax"/>). PTE pages are allocated on
/// first use. <see cref="Active"/> is FreeBSD's <c>pm_active</c>: the CPUs that have it loaded
/// and so may cache its translations.
/// </summary>
public sealed unsafe class UserPmap
{
    private const int PtesPerPage = 512;
    private const int DirectoryEntries = (int)(VmLayout.UserMax >> Pte.PageShift) / PtesPerPage;

    private readonly Machine _machine;
    private readonly NativeLedger _ledger;
    private readonly nint* _directory;
    private readonly Lock _growLock = new();
    private CpuSet _active;
    private volatile bool _destroyed;
    private int _foreignUsers;

    internal UserPmap(Machine machine, NativeLedger ledger)
    {
        _machine = machine;
        _ledger = ledger;
        _directory = (nint*)ledger.AllocZeroed((nuint)DirectoryEntries * (nuint)sizeof(nint));
    }

    /// <summary>The address space this page table belongs to (its write faults resolve copy-on-write there).</summary>
    internal VmSpace? Owner { get; set; }

    /// <summary><c>pm_active</c>: cpumask of CPUs with this page table loaded (each word read atomically).</summary>
    public CpuSet Active => CpuSet.VolatileRead(ref _active);

    /// <summary>The PTE word of a user address, or null when no PTE page covers it.</summary>
    internal ulong* PteAddress(ulong va)
    {
        if (!VmLayout.IsUser(va) || _destroyed)
        {
            return null;
        }

        ulong vpn = va >> Pte.PageShift;
        ulong* leaf = (ulong*)Volatile.Read(ref _directory[vpn / PtesPerPage]);
        return leaf == null ? null : leaf + (vpn % PtesPerPage);
    }

    /// <summary>The current PTE of a user page (0 when unmapped).</summary>
    public ulong ReadPte(ulong va)
    {
        ulong* ptep = PteAddress(va);
        return ptep == null ? 0 : Volatile.Read(ref *ptep);
    }

    /// <summary>
    /// Maps <paramref name="page"/> at user address <paramref name="va"/>. Replacing a valid
    /// mapping invalidates it on every CPU that has this page table loaded.
    /// </summary>
    public void Enter(ulong va, VmPage page, bool writable)
    {
        RequireUserPage(va);
        _machine.Physical.CheckFrame(page.Frame);
        ulong* ptep = PteAddress(va);
        if (ptep == null)
        {
            ptep = Grow(va);
        }

        ulong pte = Pte.Make(page.Frame, Pte.PG_V | Pte.PG_U | (writable ? Pte.PG_RW : 0));
        ulong old = Interlocked.Exchange(ref *ptep, pte);
        _machine.CurrentCpu.Count(Counter.UserPteWrites);
        if (Pte.IsValid(old))
        {
            Invalidate(va);
        }
    }

    /// <summary>Unmaps a user page; returns the page it mapped, or null. Invalidates where loaded.</summary>
    public VmPage? Remove(ulong va)
    {
        RequireUserPage(va);
        ulong* ptep = PteAddress(va);
        if (ptep == null)
        {
            return null;
        }

        ulong old = Interlocked.Exchange(ref *ptep, 0);
        if (!Pte.IsValid(old))
        {
            return null;
        }

        _machine.CurrentCpu.Count(Counter.UserPteWrites);
        Invalidate(va);
        return new VmPage(Pte.Frame(old));
    }

    /// <summary>The page mapped at <paramref name="va"/> (<c>pmap_extract</c>), or null.</summary>
    public VmPage? Extract(ulong va)
    {
        ulong pte = ReadPte(va & ~Pte.PageMask);
        return Pte.IsValid(pte) ? new VmPage(Pte.Frame(pte)) : null;
    }

    /// <summary>
    /// <c>pmap_extract_and_hold</c>: the page mapped at <paramref name="va"/>, held for the
    /// caller, or null when nothing is mapped. The hold and the PTE are checked against each
    /// other, so a concurrent unmap either happens first (null) or cannot free the page.
    /// </summary>
    public VmPage? ExtractAndHold(ulong va)
    {
        // Other processes' threads (ptrace) look pages up here without having the table loaded:
        // they count themselves in, so Destroy waits for them before freeing the table.
        Interlocked.Increment(ref _foreignUsers);
        try
        {
            TestHookInsideForeignLookup?.Invoke();
            while (true)
            {
                ulong* ptep = PteAddress(va & ~Pte.PageMask);
                ulong pte = ptep == null ? 0 : Volatile.Read(ref *ptep);
                if (!Pte.IsValid(pte))
                {
                    return null;
                }

                var page = new VmPage(Pte.Frame(pte));
                if (_machine.Physical.TryHold(page))
                {
                    if (((Volatile.Read(ref *ptep) ^ pte) & (Pte.PG_FRAME | Pte.PG_V)) == 0)
                    {
                        return page;
                    }

                    _machine.Physical.Unhold(page);
                }
            }
        }
        finally
        {
            Interlocked.Decrement(ref _foreignUsers);
        }
    }

    /// <summary>Tests: runs inside every foreign lookup, while it is counted (to drive races with teardown).</summary>
    internal Action? TestHookInsideForeignLookup { get; set; }

    internal void Activate(int cpu) => CpuSet.AtomicAdd(ref _active, cpu);

    internal void Deactivate(int cpu) => CpuSet.AtomicRemove(ref _active, cpu);

    /// <summary>Frees every PTE page. The caller has unloaded the page table everywhere.</summary>
    internal void Destroy()
    {
        if (_destroyed)
        {
            return;
        }

        // Clear every PTE, then refuse new walks, then wait out lookups already inside.
        for (int i = 0; i < DirectoryEntries; i++)
        {
            if (_directory[i] != 0)
            {
                new Span<ulong>((void*)_directory[i], PtesPerPage).Clear();
            }
        }

        _destroyed = true;
        Interlocked.MemoryBarrier(); // the flag must be visible before the count is read

        // A lookup in progress may itself be waiting for this CPU (a shootdown from its CPU):
        // the wait keeps servicing the mailbox.
        var done = new NoForeignUsers(this);
        _machine.CurrentCpu.WaitUntil(ref done, park: true);

        for (int i = 0; i < DirectoryEntries; i++)
        {
            if (_directory[i] != 0)
            {
                _ledger.Free((void*)_directory[i]);
                _directory[i] = 0;
            }
        }

        _ledger.Free(_directory);
    }

    private void Invalidate(ulong va)
    {
        var cpu = _machine.CurrentCpu;
        var active = Active;
        if (active.Contains(cpu.Id))
        {
            cpu.InvalidateLocal(va >> Pte.PageShift);
            active.Remove(cpu.Id);
        }

        if (!active.IsEmpty)
        {
            cpu.Shootdown(active, ShootdownKind.Page, va);
        }
    }

    private ulong* Grow(ulong va)
    {
        ulong vpn = va >> Pte.PageShift;
        lock (_growLock)
        {
            ref nint slot = ref _directory[vpn / PtesPerPage];
            if (slot == 0)
            {
                // Publish a zeroed PTE page; walkers read the slot with a volatile load.
                Volatile.Write(ref slot, (nint)_ledger.AllocZeroed(PtesPerPage * sizeof(ulong), (nuint)Pte.PageSize));
            }

            return (ulong*)slot + (vpn % PtesPerPage);
        }
    }

    private void RequireUserPage(ulong va)
    {
        _machine.ThrowIfUnusable();
        if (_destroyed)
        {
            throw new ObjectDisposedException(nameof(UserPmap), "this address space has been destroyed");
        }

        if ((va & Pte.PageMask) != 0)
        {
            throw new ArgumentException($"user address 0x{va:x} is not page aligned", nameof(va));
        }

        if (!VmLayout.IsUser(va))
        {
            throw new ArgumentOutOfRangeException(nameof(va), $"0x{va:x} is not a user address");
        }
    }

    private readonly struct NoForeignUsers(UserPmap pmap) : ICrossCpuWait
    {
        public bool IsMet() => Volatile.Read(ref pmap._foreignUsers) == 0;

        public void Tick()
        {
        }
    }
}
