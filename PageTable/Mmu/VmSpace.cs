namespace Native.PageTable;

/// <summary>
/// A process's address space (FreeBSD's <c>vmspace</c>): its user page table, the pages it
/// owns (anonymous memory) and the pages it shares (file pages mapped from the page cache, read
/// only or copy-on-write). Kernel threads run in it (<see cref="KernelThread.SwitchVmSpace"/>),
/// which is what makes <c>copyin</c>, pipes and ptrace cross real address spaces.
/// </summary>
public sealed class VmSpace
{
    private readonly Machine _machine;
    private readonly HashSet<uint> _ownedFrames = [];
    private readonly Dictionary<ulong, (uint Frame, bool Writable)> _sharedPages = [];

    internal VmSpace(Machine machine, int pid, UserPmap pmap)
    {
        _machine = machine;
        Pid = pid;
        Pmap = pmap;
        pmap.Owner = this;
    }

    /// <summary>Process id.</summary>
    public int Pid { get; }

    /// <summary>The user page table.</summary>
    public UserPmap Pmap { get; }

    /// <summary>Pages currently mapped: owned anonymous memory plus shared file pages.</summary>
    public int ResidentPages
    {
        get
        {
            lock (_ownedFrames)
            {
                return _ownedFrames.Count + _sharedPages.Count;
            }
        }
    }

    /// <summary>Shared pages currently mapped (file pages from the page cache).</summary>
    public int SharedPages
    {
        get
        {
            lock (_ownedFrames)
            {
                return _sharedPages.Count;
            }
        }
    }

    /// <summary>
    /// Maps a page this space does not own (a file page of the page cache) at
    /// <paramref name="va"/> copy-on-write (<c>vm_map_insert</c> of a vnode object with
    /// <c>MAP_COPY_ON_WRITE</c>): read-only until the first write, which gives the space a private
    /// copy (<see cref="ResolveWriteFault"/>), then <paramref name="writable"/>. The caller has wired
    /// <paramref name="page"/> once; the space takes that wiring over and drops it at unmap.
    /// </summary>
    public void MapShared(ulong va, VmPage page, bool writable)
    {
        if (Pmap.Extract(va) != null)
        {
            throw new InvalidOperationException($"0x{va:x} is already mapped in pid {Pid}");
        }

        Pmap.Enter(va, page, writable: false);
        lock (_ownedFrames)
        {
            _sharedPages.Add(va, (page.Frame, writable));
        }
    }

    /// <summary>
    /// The write-fault path of <c>vm_fault</c> for a shared copy-on-write page: replaces it by a
    /// private copy (invalidating the old translation wherever this space is loaded) and drops
    /// the shared page's wiring. A read-only mapping is copied only with
    /// <paramref name="overrideProtection"/> (ptrace's <c>VM_PROT_OVERRIDE_WRITE</c>) and stays
    /// read-only. Returns false when there is nothing to resolve (the fault stands). The copy is
    /// physical, as <c>pmap_copy_page</c> makes it through the direct map on amd64.
    /// </summary>
    public unsafe bool ResolveWriteFault(ulong va, bool overrideProtection = false)
    {
        va &= ~Pte.PageMask;
        (uint Frame, bool Writable) shared;
        lock (_ownedFrames)
        {
            if (!_sharedPages.TryGetValue(va, out shared) || !(shared.Writable || overrideProtection))
            {
                return false;
            }

            _sharedPages.Remove(va);
        }

        var copy = _machine.Physical.Alloc(AllocFlags.Wired | AllocFlags.User);
        Buffer.MemoryCopy(_machine.Physical.FrameAddress(shared.Frame), _machine.Physical.FrameAddress(copy.Frame), Pte.PageSize, Pte.PageSize);
        lock (_ownedFrames)
        {
            _ownedFrames.Add(copy.Frame);
        }

        Pmap.Enter(va, copy, shared.Writable);
        _machine.Physical.Unwire(new VmPage(shared.Frame));
        return true;
    }

    /// <summary>
    /// Allocates zeroed, wired pages and maps them at [<paramref name="va"/>,
    /// <paramref name="va"/> + <paramref name="length"/>) (an anonymous mapping, faulted in at once).
    /// </summary>
    public void MapAnonymous(ulong va, long length, bool writable = true)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        if ((va & Pte.PageMask) != 0)
        {
            throw new ArgumentException($"0x{va:x} is not page aligned", nameof(va));
        }

        long pages = (length + Pte.PageSize - 1) / Pte.PageSize;
        for (long i = 0; i < pages; i++)
        {
            ulong at = va + ((ulong)i << Pte.PageShift);
            if (Pmap.Extract(at) != null)
            {
                throw new InvalidOperationException($"0x{at:x} is already mapped in pid {Pid}");
            }

            var page = _machine.Physical.Alloc(AllocFlags.Zero | AllocFlags.Wired | AllocFlags.User);
            Pmap.Enter(at, page, writable);
            lock (_ownedFrames)
            {
                _ownedFrames.Add(page.Frame);
            }
        }
    }

    /// <summary>Unmaps [va, va + length) and frees the pages this space owned there.</summary>
    public void Unmap(ulong va, long length)
    {
        long pages = (length + Pte.PageSize - 1) / Pte.PageSize;
        for (long i = 0; i < pages; i++)
        {
            ulong at = va + ((ulong)i << Pte.PageShift);
            if (Pmap.Remove(at) is { } page)
            {
                ReleaseOwned(at, page);
            }
        }
    }

    /// <summary>Unmaps everything and frees the page table (the process exits).</summary>
    public void Destroy()
    {
        uint[] frames;
        uint[] shared;
        lock (_ownedFrames)
        {
            frames = [.. _ownedFrames];
            _ownedFrames.Clear();
            shared = [.. _sharedPages.Values.Select(p => p.Frame)];
            _sharedPages.Clear();
        }

        // CPUs that loaded it (lazily, too) may still cache its entries: flush them before its
        // pages are reused. Idle ones are marked flush-pending by the shootdown.
        var cpu = _machine.CurrentCpu;
        var active = Pmap.Active;
        if (active.Contains(cpu.Id))
        {
            cpu.FlushNonGlobalLocal();
        }

        cpu.Shootdown(active, ShootdownKind.All);

        // The page table goes before the frames: nobody may find a frame through it once the
        // frame is back on the free queue (a racing ptrace's pmap_extract_and_hold, say).
        Pmap.Destroy();
        foreach (uint frame in frames)
        {
            var page = new VmPage(frame);
            _machine.Physical.Unwire(page);
            _machine.Physical.Free(page);
        }

        // Shared pages belong to the page cache: only this space's wiring goes.
        foreach (uint frame in shared)
        {
            _machine.Physical.Unwire(new VmPage(frame));
        }
    }

    private void ReleaseOwned(ulong va, VmPage page)
    {
        bool owned;
        bool shared;
        lock (_ownedFrames)
        {
            shared = _sharedPages.Remove(va);
            owned = !shared && _ownedFrames.Remove(page.Frame);
        }

        if (shared)
        {
            _machine.Physical.Unwire(page);
        }
        else if (owned)
        {
            _machine.Physical.Unwire(page);
            _machine.Physical.Free(page);
        }
    }
}
