using System.Buffers;
using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>
/// The vnode pager: brings file pages into the page cache. Page-in maps the new page with a
/// shared sf_buf (<c>sf_buf_alloc(m, 0)</c>: the I/O may complete on any CPU) and "reads the
/// disk" into it; the partial last page is zero-filled beyond EOF. With the <c>original</c>
/// strategy it uses <c>pager_map</c>: <c>kmem_alloc_wait</c> + <c>pmap_kenter</c>, then
/// <c>pmap_kremove</c> with a global invalidation at unmap.
/// </summary>
public static class VnodePager
{
    /// <summary>
    /// <c>vnode_pager_getpages</c> for one page: returns the page of <paramref name="vnode"/>
    /// at <paramref name="index"/>, paged in if not cached, <b>wired once for the caller</b>
    /// (unwire it when done). A page wholly beyond EOF is EINVAL.
    /// </summary>
    public static int GetPage(SimKernel kernel, Vnode vnode, long index, out VmPage page)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(vnode);
        page = default;
        if (index < 0 || index >= vnode.Pages)
        {
            return Errno.EINVAL;
        }

        var physical = kernel.Machine.Physical;
        vnode.Lock.Lock();
        try
        {
            if (vnode.TryGetCached(index, out page))
            {
                physical.Wire(page);
                return Errno.OK;
            }

            page = physical.Alloc(AllocFlags.Wired | AllocFlags.User);
            PageIn(kernel, vnode, index, page);
            physical.SetOwner(page, vnode.ObjectId, (ulong)index << Pte.PageShift);
            vnode.Insert(index, page);
            kernel.CountPageIn();
            return Errno.OK;
        }
        finally
        {
            vnode.Lock.Unlock();
        }
    }

    /// <summary>
    /// Frees the vnode's cached pages that nobody wires or holds; returns how many. Runs under the
    /// vnode lock, so a concurrent <see cref="GetPage"/> either wires a page first or misses it.
    /// </summary>
    public static int Evict(SimKernel kernel, Vnode vnode)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(vnode);
        List<VmPage> pages;
        vnode.Lock.Lock();
        try
        {
            pages = vnode.TakeUnused(kernel.Machine.Physical);
        }
        finally
        {
            vnode.Lock.Unlock();
        }

        foreach (var page in pages)
        {
            kernel.Machine.Physical.Free(page);
        }

        return pages.Count;
    }

    /// <summary>
    /// <c>vn_read</c> through the page cache: copies file bytes from the uio's offset into it,
    /// stopping at EOF (a read at or past EOF moves nothing and succeeds).
    /// </summary>
    public static int Read(SimKernel kernel, Vnode vnode, Uio uio)
    {
        KernelThread.CurrentOrNull?.Cpu?.EnterKernel();
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(vnode);
        ArgumentNullException.ThrowIfNull(uio);
        while (uio.Resid > 0 && uio.Offset < vnode.Size)
        {
            long index = uio.Offset >> Pte.PageShift;
            long inPage = uio.Offset & (long)Pte.PageMask;
            long n = Math.Min(Math.Min(uio.Resid, Pte.PageSize - inPage), vnode.Size - uio.Offset);
            int error = GetPage(kernel, vnode, index, out var page);
            if (error != Errno.OK)
            {
                return error;
            }

            try
            {
                error = UioMove.FromPhys(kernel, new ReadOnlySpan<VmPage>(in page), inPage, n, uio);
            }
            finally
            {
                kernel.Machine.Physical.Unwire(page);
            }

            if (error != Errno.OK)
            {
                return error;
            }
        }

        return Errno.OK;
    }

    private static void PageIn(SimKernel kernel, Vnode vnode, long index, VmPage page)
    {
        byte[] data = ArrayPool<byte>.Shared.Rent(Pte.PageSize);
        try
        {
            int count = vnode.ReadBacking(index << Pte.PageShift, data.AsSpan(0, Pte.PageSize));

            // The CPU is read after the mapping is made: either allocation may sleep, and an
            // unpinned thread can wake up on another CPU.
            if (kernel.IsOriginal)
            {
                // vm_pager_map_page: pager_map KVA + pmap_kenter; unmap with a global invalidation.
                ulong va = kernel.PagerMap.Alloc(1, wait: true);
                kernel.Machine.KernelPmap.KEnter(va, page);
                kernel.Machine.KernelPmap.CountMapping(1);
                Fill(kernel.Cpu, va, data, count);

                // vm_pager_unmap_page: the unmap and its invalidation are one mapping operation.
                kernel.Machine.KernelPmap.EnterOperation();
                try
                {
                    kernel.Machine.KernelPmap.KRemove(va);
                    kernel.Machine.KernelPmap.InvalidatePage(va);
                }
                finally
                {
                    kernel.Machine.KernelPmap.LeaveOperation();
                }

                kernel.PagerMap.Free(va, 1);
            }
            else
            {
                var sf = kernel.SfBufs.Alloc(page, SfBufFlags.Default);
                try
                {
                    Fill(kernel.Cpu, kernel.SfBufs.Kva(sf), data, count);
                }
                finally
                {
                    kernel.SfBufs.Free(sf);
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(data);
        }
    }

    private static void Fill(Cpu cpu, ulong kva, byte[] data, int count)
    {
        cpu.Write(kva, data.AsSpan(0, count));
        if (count < Pte.PageSize)
        {
            cpu.Fill(kva + (ulong)count, Pte.PageSize - count, 0);
        }
    }
}
