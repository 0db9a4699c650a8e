using System.Buffers;
using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>What a bio asks of a disk (<c>bio_cmd</c>).</summary>
public enum BioCommand
{
    /// <summary><c>BIO_READ</c>: from the disk into the bio's buffer.</summary>
    Read,

    /// <summary><c>BIO_WRITE</c>: from the bio's buffer onto the disk.</summary>
    Write,
}

/// <summary>
/// A swap/malloc-backed memory disk (md(4), <c>MD_SWAP</c>): the disk's bytes live in pages
/// allocated on first write (wired, zeroed) and kept until <see cref="Destroy"/>; sectors never
/// written read as zeroes without allocating anything.
/// <para>
/// Each bio is served page by page as FreeBSD's <c>mdstart_swap</c> does: per page
/// <c>sched_pin</c>, <c>sf_buf_alloc(m, SFB_CPUPRIVATE)</c>, a copy between the sf_buf's KVA and
/// the bio's kernel buffer, <c>sf_buf_free</c>, <c>sched_unpin</c>. The code is the same for every
/// strategy: with <c>original</c> the sf_buf is the original mechanism itself (a
/// <c>kernel_map</c> page plus <c>pmap_qenter</c>/<c>pmap_qremove</c>, two broadcast shootdowns
/// per page on SMP); with <c>sfbuf-i386</c> a private mapping that sends no IPI; with
/// <c>sfbuf-amd64</c> the direct map, which writes no PTE.
/// </para>
/// <para>
/// Requests are checked before anything moves: a request that is not inside the disk, not
/// sector aligned (offset or length), or empty fails with <see cref="Errno.EINVAL"/> and changes
/// nothing. This is stricter than GEOM's <c>g_io_check</c>, which returns EIO for an offset past
/// the end, truncates a request that runs past it, and completes a zero-length request at once.
/// </para>
/// </summary>
public sealed class MemoryDisk
{
    /// <summary><c>DEV_BSIZE</c>: the default and smallest sector size.</summary>
    public const int DEV_BSIZE = 512;

    private readonly SimKernel _kernel;

    // The md's VM object: page index -> page. It guards the dictionary only; the copies run
    // without it, because a page stays wired and in place until Destroy.
    private readonly KMutex _lock = new("md");
    private readonly Dictionary<long, VmPage> _pages = [];
    private int _resident;
    private long _reads;
    private long _writes;
    private long _pagesMapped;
    private long _pagesZeroFilled;
    private bool _destroyed;

    private MemoryDisk(SimKernel kernel, long mediaSize, int sectorSize)
    {
        _kernel = kernel;
        MediaSize = mediaSize;
        SectorSize = sectorSize;
    }

    /// <summary>Size of the disk in bytes (<c>md_mediasize</c>).</summary>
    public long MediaSize { get; }

    /// <summary>Sector size in bytes (<c>md_sectorsize</c>).</summary>
    public int SectorSize { get; }

    /// <summary>Pages allocated now (written at least once since creation).</summary>
    public int PagesAllocated => Volatile.Read(ref _resident);

    /// <summary>Read bios completed.</summary>
    public long Reads => Volatile.Read(ref _reads);

    /// <summary>Write bios completed.</summary>
    public long Writes => Volatile.Read(ref _writes);

    /// <summary>Pages mapped with an sf_buf to copy (one per page a bio touched that had a page).</summary>
    public long PagesMapped => Volatile.Read(ref _pagesMapped);

    /// <summary>Page pieces of reads served by zero-filling the buffer, because the page was never written.</summary>
    public long PagesZeroFilled => Volatile.Read(ref _pagesZeroFilled);

    /// <summary>
    /// <c>mdconfig -a -t swap</c>: creates a memory disk of <paramref name="sizeBytes"/> bytes.
    /// Allocates no page yet. The size must be a positive multiple of the sector size, which must
    /// be a power of two from <see cref="DEV_BSIZE"/> to the page size (as md(4) requires).
    /// </summary>
    public static MemoryDisk Create(SimKernel kernel, long sizeBytes, int sectorSize = DEV_BSIZE)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        if (sectorSize < DEV_BSIZE || sectorSize > Pte.PageSize || (sectorSize & (sectorSize - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(sectorSize), sectorSize, $"the sector size must be a power of two from {DEV_BSIZE} to {Pte.PageSize}");
        }

        if (sizeBytes <= 0 || sizeBytes % sectorSize != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(sizeBytes), sizeBytes, $"the size must be a positive multiple of the {sectorSize}-byte sector");
        }

        return new MemoryDisk(kernel, sizeBytes, sectorSize);
    }

    /// <summary>
    /// <c>mdstart_swap</c>: serves one bio of <paramref name="length"/> bytes at disk offset
    /// <paramref name="offset"/>, to or from <paramref name="kernelBuffer"/> (a mapped kernel
    /// virtual address, e.g. from <c>KernelMemory.Alloc</c>; a bad one faults, as it would panic
    /// FreeBSD). Returns 0; <see cref="Errno.EINVAL"/> for a request outside the disk, not sector
    /// aligned, empty, or with an unknown command; <see cref="Errno.ENOMEM"/> when a write cannot
    /// get its pages. A failed request changes nothing. Must run on a kernel thread. Throws
    /// <see cref="ArgumentException"/> for a user-space buffer.
    /// </summary>
    public int Strategy(BioCommand cmd, long offset, long length, ulong kernelBuffer)
    {
        KernelThread.CurrentOrNull?.Cpu?.EnterKernel();
        if ((cmd != BioCommand.Read && cmd != BioCommand.Write)
            || length <= 0
            || offset < 0
            || offset % SectorSize != 0
            || length % SectorSize != 0
            || length > MediaSize - offset)
        {
            return Errno.EINVAL;
        }

        if (VmLayout.IsUser(kernelBuffer))
        {
            // bio_data is a kernel address; a user address here is a caller bug, not an I/O error.
            throw new ArgumentException($"0x{kernelBuffer:x} is a user address; a bio's buffer is kernel memory", nameof(kernelBuffer));
        }

        long first = offset >> Pte.PageShift;
        long last = (offset + length - 1) >> Pte.PageShift;
        int count = checked((int)(last - first + 1));
        var pages = ArrayPool<VmPage>.Shared.Rent(count);
        var present = ArrayPool<bool>.Shared.Rent(count);
        try
        {
            // Look the pages up (a write allocates the missing ones) before any byte moves, so a
            // write that cannot get its pages fails without having written part of the request.
            int error = cmd == BioCommand.Write
                ? GrabForWrite(first, count, pages, present)
                : LookupForRead(first, count, pages, present);
            if (error != Errno.OK)
            {
                return error;
            }

            Copy(cmd, offset, length, kernelBuffer, pages, present);
        }
        finally
        {
            ArrayPool<bool>.Shared.Return(present);
            ArrayPool<VmPage>.Shared.Return(pages);
        }

        if (cmd == BioCommand.Read)
        {
            Interlocked.Increment(ref _reads);
        }
        else
        {
            Interlocked.Increment(ref _writes);
        }

        return Errno.OK;
    }

    /// <summary>
    /// <c>mdconfig -d</c>: unwires and frees every page of the disk. No bio may be in progress
    /// or start afterwards. Must run on a kernel thread.
    /// </summary>
    public void Destroy()
    {
        VmPage[] pages;
        _lock.Lock();
        try
        {
            ObjectDisposedException.ThrowIf(_destroyed, this);
            _destroyed = true;
            pages = [.. _pages.Values];
            _pages.Clear();
            Volatile.Write(ref _resident, 0);
        }
        finally
        {
            _lock.Unlock();
        }

        var physical = _kernel.Machine.Physical;
        foreach (var page in pages)
        {
            physical.Unwire(page);
            physical.Free(page);
        }
    }

    private int LookupForRead(long first, int count, VmPage[] pages, bool[] present)
    {
        _lock.Lock();
        try
        {
            ObjectDisposedException.ThrowIf(_destroyed, this);
            for (int i = 0; i < count; i++)
            {
                present[i] = _pages.TryGetValue(first + i, out pages[i]);
            }
        }
        finally
        {
            _lock.Unlock();
        }

        return Errno.OK;
    }

    private int GrabForWrite(long first, int count, VmPage[] pages, bool[] present)
    {
        var physical = _kernel.Machine.Physical;
        _lock.Lock();
        try
        {
            ObjectDisposedException.ThrowIf(_destroyed, this);
            for (int i = 0; i < count; i++)
            {
                if (_pages.TryGetValue(first + i, out pages[i]))
                {
                    present[i] = false; // not new: kept if a later allocation fails
                    continue;
                }

                if (!physical.TryAlloc(out pages[i], AllocFlags.Zero | AllocFlags.Wired))
                {
                    // Undo this request's allocations: the disk must look untouched.
                    for (int j = 0; j < i; j++)
                    {
                        if (present[j])
                        {
                            _pages.Remove(first + j);
                            physical.Unwire(pages[j]);
                            physical.Free(pages[j]);
                        }
                    }

                    Volatile.Write(ref _resident, _pages.Count);
                    return Errno.ENOMEM;
                }

                _pages.Add(first + i, pages[i]);
                present[i] = true; // new in this request
            }

            Volatile.Write(ref _resident, _pages.Count);
        }
        finally
        {
            _lock.Unlock();
        }

        // From here on every page of the request exists.
        Array.Fill(present, true, 0, count);
        return Errno.OK;
    }

    /// <summary>The per-page loop of <c>mdstart_swap</c>.</summary>
    private void Copy(BioCommand cmd, long offset, long length, ulong buffer, VmPage[] pages, bool[] present)
    {
        var td = KernelThread.Current;
        var sfbufs = _kernel.SfBufs;
        long offs = offset & (long)Pte.PageMask;
        long last = (offset + length - 1) >> Pte.PageShift;
        long lastEnd = ((offset + length - 1) & (long)Pte.PageMask) + 1;
        int count = (int)(last - (offset >> Pte.PageShift) + 1);
        ulong p = buffer;
        for (int i = 0; i < count; i++)
        {
            long len = (i == count - 1 ? lastEnd : Pte.PageSize) - offs;
            if (!present[i])
            {
                // Never written: the sector reads as zeroes and no page is allocated for it.
                _kernel.Cpu.Fill(p, len, 0);
                Interlocked.Increment(ref _pagesZeroFilled);
            }
            else
            {
                td.SchedPin();
                var sf = sfbufs.Alloc(pages[i], cmd == BioCommand.Read ? SfBufFlags.CpuPrivate | SfBufFlags.ReadOnly : SfBufFlags.CpuPrivate);
                try
                {
                    if (sf.IsNone)
                    {
                        throw new InvalidOperationException($"sf_buf_alloc({pages[i]}, SFB_CPUPRIVATE) returned no sf_buf although it may sleep");
                    }

                    var cpu = td.Cpu!;
                    if (cmd == BioCommand.Read)
                    {
                        cpu.Copy(p, sfbufs.Kva(sf) + (ulong)offs, len);
                    }
                    else
                    {
                        cpu.Copy(sfbufs.Kva(sf) + (ulong)offs, p, len);
                    }
                }
                finally
                {
                    if (!sf.IsNone)
                    {
                        sfbufs.Free(sf);
                    }

                    td.SchedUnpin();
                }

                Interlocked.Increment(ref _pagesMapped);
            }

            p += (ulong)len;
            offs = 0;
        }
    }
}
