using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>
/// <c>uiomove_fromphys</c>: copies between an array of physical pages (starting at a byte
/// offset) and a uio, one page at a time. Per page: pin, a <c>SFB_CPUPRIVATE</c> sf_buf, copy,
/// free, unpin (i386). With a direct map the page's direct-map address is used and no sf_buf is
/// made at all (amd64).
/// </summary>
public static class UioMove
{
    /// <summary>
    /// Moves up to <paramref name="n"/> bytes between <paramref name="pages"/> (from byte
    /// <paramref name="offset"/>) and <paramref name="uio"/>. Returns 0, or EFAULT for a bad
    /// user address in the uio.
    /// </summary>
    public static int FromPhys(SimKernel kernel, ReadOnlySpan<VmPage> pages, long offset, long n, Uio uio)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(uio);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        n = Math.Min(n, uio.Resid);
        if (offset + n > (long)pages.Length * Pte.PageSize)
        {
            throw new ArgumentOutOfRangeException(nameof(n), $"{n} bytes from offset {offset} run past {pages.Length} pages");
        }

        var td = KernelThread.Current;

        // A read (UIO_READ) copies out of the pages: their mappings are only read.
        var flags = uio.Direction == UioDirection.Read ? SfBufFlags.CpuPrivate | SfBufFlags.ReadOnly : SfBufFlags.CpuPrivate;
        while (n > 0)
        {
            var page = pages[(int)(offset >> Pte.PageShift)];
            long pageOffset = offset & (long)Pte.PageMask;
            long cnt = Math.Min(n, Pte.PageSize - pageOffset);
            int error;
            if (kernel.HasDirectMap)
            {
                error = uio.Move(td.Cpu!, kernel.Machine.Layout.DirectMap(page.PhysicalAddress) + (ulong)pageOffset, cnt);
            }
            else
            {
                td.SchedPin();
                var sf = kernel.SfBufs.Alloc(page, flags);
                try
                {
                    error = uio.Move(td.Cpu!, kernel.SfBufs.Kva(sf) + (ulong)pageOffset, cnt);
                }
                finally
                {
                    kernel.SfBufs.Free(sf);
                    td.SchedUnpin();
                }
            }

            if (error != Errno.OK)
            {
                return error;
            }

            offset += cnt;
            n -= cnt;
        }

        return Errno.OK;
    }
}
