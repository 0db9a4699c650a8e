using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>
/// <c>sendfile(2)</c> with FreeBSD's 2006 semantics (<c>uipc_syscalls.c</c> rev 1.224): file
/// pages go from the page cache to the socket without a copy, each mapped by a shared sf_buf
/// (<c>sf_buf_alloc(pg, SFB_CATCH)</c>) and attached to an mbuf as external storage
/// (<c>EXT_SFBUF</c>), so that the NIC, on another CPU, reads the page through that address.
/// The mbuf's free routine, <see cref="SfBufMext(SimKernel, SfBuf)"/>, frees the sf_buf and
/// unwires the page once the NIC has transmitted it.
/// <para>
/// With <c>original</c> the pages go through sendfile's pre-paper pool instead
/// (<see cref="OriginalMapper.SendfileAlloc"/>: a fixed page of KVA per buffer, <c>pmap_qenter</c>
/// at alloc and <c>pmap_qremove</c> at free, two broadcast shootdowns per page), as
/// <c>uipc_syscalls.c</c> did before the sf_buf interface; the free routine is the same.
/// </para>
/// </summary>
public static class Sendfile
{
    private static readonly MbufExtFree s_sfBufMext = SfBufMext;

    /// <summary>
    /// Sends <paramref name="length"/> bytes of <paramref name="file"/> from
    /// <paramref name="offset"/> on <paramref name="so"/>; a length of 0 means "to end of file",
    /// as sendfile's <c>nbytes</c>. Must run on a kernel thread.
    /// </summary>
    /// <param name="kernel">The kernel.</param>
    /// <param name="file">The file (its vnode).</param>
    /// <param name="so">The socket.</param>
    /// <param name="offset">First byte of the file to send.</param>
    /// <param name="length">Bytes to send; 0 for the rest of the file.</param>
    /// <param name="signal">A signal (PCATCH): interrupts the sleeps for an sf_buf, for socket space or for the socket.</param>
    /// <param name="sent">Bytes queued on the socket (<c>sbytes</c>), also on error.</param>
    /// <returns>
    /// 0; EINVAL for a negative argument or a range that runs beyond end of file (checked before
    /// anything is touched: nothing is read in or queued); EINTR when interrupted, including when
    /// the sf_buf pool is exhausted and the wait for one is interrupted (counted as
    /// <c>sf_allocfail</c>); EPIPE when the socket is closed.
    /// </returns>
    public static int Send(SimKernel kernel, Vnode file, Socket so, long offset, long length, CancellationToken signal, out long sent)
    {
        KernelThread.CurrentOrNull?.Cpu?.EnterKernel();
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(file);
        ArgumentNullException.ThrowIfNull(so);
        sent = 0;

        // Beyond EOF is an error, not a short send: a caller asking for bytes the file does not
        // have gets nothing queued rather than part of it.
        if (offset < 0 || length < 0 || offset > file.Size || length > file.Size - offset)
        {
            return Errno.EINVAL;
        }

        long end = length == 0 ? file.Size : offset + length;
        int error = so.SbLock(signal);
        if (error != Errno.OK)
        {
            return error;
        }

        try
        {
            long off = offset;
            while (off < end)
            {
                int pageOffset = (int)(off & (long)Pte.PageMask);
                int xfsize = (int)Math.Min(Pte.PageSize - pageOffset, end - off);

                // retry_space: wait for room before taking the page, so no sf_buf is held asleep.
                error = so.WaitForSpace(xfsize, signal);
                if (error != Errno.OK)
                {
                    return error;
                }

                // The page, wired for us; the vnode pager reads it in if it is not cached.
                error = VnodePager.GetPage(kernel, file, off >> Pte.PageShift, out var page);
                if (error != Errno.OK)
                {
                    return error;
                }

                // Before sf_buf (original): sendfile's own pool of fixed-KVA buffers.
                var sf = kernel.IsOriginal
                    ? kernel.Original.SendfileAlloc(page, SfBufFlags.Catch, signal)
                    : kernel.SfBufs.Alloc(page, SfBufFlags.Catch | SfBufFlags.ReadOnly, signal); // the NIC only reads the page
                if (sf.IsNone)
                {
                    kernel.SfBufs.RecordAllocFail();
                    kernel.Machine.Physical.Unwire(page);
                    return Errno.EINTR;
                }

                var m = Mbuf.ExtAdd(sf.Kva, Pte.PageSize, pageOffset, xfsize, MbufExtType.SfBuf, s_sfBufMext, kernel, sf, readOnly: true);
                error = so.Append(m, signal);
                if (error != Errno.OK)
                {
                    m.Free();
                    return error;
                }

                sent += xfsize;
                off += xfsize;
            }

            return Errno.OK;
        }
        finally
        {
            so.SbUnlock();
        }
    }

    /// <summary>
    /// <c>sf_buf_mext</c>: the free routine of sendfile's mbufs: <c>sf_buf_free</c>, then drop
    /// the wiring sendfile took on the page. The page stays in the page cache (FreeBSD also
    /// frees it here if it has lost its object; the simulated page cache never orphans a wired
    /// page, so that case cannot arise).
    /// </summary>
    public static void SfBufMext(SimKernel kernel, SfBuf sf)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        var page = SfBufMapper.Page(sf);
        kernel.SfBufs.Free(sf);
        kernel.Machine.Physical.Unwire(page);
    }

    private static void SfBufMext(Mbuf m) => SfBufMext((SimKernel)m.ExtArg!, m.SfBuf);
}
