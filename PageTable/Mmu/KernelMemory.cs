namespace Native.PageTable;

/// <summary>
/// Permanently mapped kernel memory (<c>kmem_malloc</c>): wired pages mapped into the kmem
/// region for as long as the allocation lives, for pipe buffers and memory-disk storage.
/// </summary>
public sealed class KernelMemory
{
    private readonly Machine _machine;
    private readonly KvaArena _arena;

    internal KernelMemory(Machine machine, KvaRegion region)
    {
        _machine = machine;
        _arena = new KvaArena(machine, region);
    }

    /// <summary>Free pages of the kmem region.</summary>
    public int FreePages => _arena.FreePages;

    /// <summary>Allocates and maps zeroed wired pages; returns the kernel address, or 0 when the region is full.</summary>
    public ulong Alloc(long bytes)
    {
        int pages = PagesOf(bytes);
        ulong va = _arena.Alloc(pages, wait: false);
        if (va == 0)
        {
            return 0;
        }

        for (int i = 0; i < pages; i++)
        {
            // Fresh kmem addresses were invalidated everywhere when last freed: no flush needed.
            _machine.KernelPmap.KEnter(va + ((ulong)i << Pte.PageShift), _machine.Physical.Alloc(AllocFlags.Zero | AllocFlags.Wired));
        }

        return va;
    }

    /// <summary>Unmaps (with a global invalidation), frees the pages and the addresses.</summary>
    public void Free(ulong va, long bytes)
    {
        int pages = PagesOf(bytes);
        var frames = new VmPage[pages];
        for (int i = 0; i < pages; i++)
        {
            ulong pte = _machine.KernelPmap.ReadPte(va + ((ulong)i << Pte.PageShift));
            if (!Pte.IsValid(pte))
            {
                throw new InvalidOperationException($"kmem page 0x{va + ((ulong)i << Pte.PageShift):x} is not mapped (double free?)");
            }

            frames[i] = new VmPage(Pte.Frame(pte));
        }

        _machine.KernelPmap.QRemove(va, pages);
        foreach (var page in frames)
        {
            _machine.Physical.Unwire(page);
            _machine.Physical.Free(page);
        }

        _arena.Free(va, pages);
    }

    private static int PagesOf(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        return checked((int)((bytes + Pte.PageSize - 1) / Pte.PageSize));
    }
}
