namespace Native.PageTable;

/// <summary>
/// A process's address space (FreeBSD's <c>vmspace</c>): its user page table and the pages it
/// owns. Kernel threads run in it (<see cref="KernelThread.SwitchVmSpace"/>), which is what
/// makes <c>copyin</c>, pipes and ptrace cross real address spaces.
/// </summary>
public sealed class VmSpace
{
    private readonly Machine _machine;
    private readonly HashSet<uint> _ownedFrames = [];

    internal VmSpace(Machine machine, int pid, UserPmap pmap)
    {
        _machine = machine;
        Pid = pid;
        Pmap = pmap;
    }

    /// <summary>Process id.</summary>
    public int Pid { get; }

    /// <summary>The user page table.</summary>
    public UserPmap Pmap { get; }

    /// <summary>Pages currently owned (mapped anonymous memory).</summary>
    public int ResidentPages
    {
        get
        {
            lock (_ownedFrames)
            {
                return _ownedFrames.Count;
            }
        }
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

            var page = _machine.Physical.Alloc(AllocFlags.Zero | AllocFlags.Wired);
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
            if (Pmap.Remove(va + ((ulong)i << Pte.PageShift)) is { } page)
            {
                ReleaseOwned(page);
            }
        }
    }

    /// <summary>Unmaps everything and frees the page table (the process exits).</summary>
    public void Destroy()
    {
        uint[] frames;
        lock (_ownedFrames)
        {
            frames = [.. _ownedFrames];
            _ownedFrames.Clear();
        }

        // CPUs that loaded it (lazily, too) may still cache its entries: flush them before its
        // pages are reused. Idle ones are marked flush-pending by the shootdown.
        var cpu = _machine.CurrentCpu;
        ulong active = Pmap.Active;
        if ((active & cpu.Mask) != 0)
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
    }

    private void ReleaseOwned(VmPage page)
    {
        bool owned;
        lock (_ownedFrames)
        {
            owned = _ownedFrames.Remove(page.Frame);
        }

        if (owned)
        {
            _machine.Physical.Unwire(page);
            _machine.Physical.Free(page);
        }
    }
}
