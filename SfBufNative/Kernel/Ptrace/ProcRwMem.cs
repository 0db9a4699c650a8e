using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>
/// <c>proc_rwmem</c> (<c>sys_process.c</c>): reads or writes another process's memory for
/// ptrace and procfs, one target page at a time.
/// <para>
/// The uio's <see cref="Uio.Offset"/> is the target address and its buffer is in the caller's
/// space (user or kernel). Per page: look the page up in the target's page table
/// (<c>pmap_extract</c>), hold it (<c>vm_page_hold</c>), <c>uiomove_fromphys</c> (a private
/// sf_buf on i386, the direct map on amd64), unhold. With the <c>original</c> strategy it is the
/// pre-2004 code instead: one page of <c>kernel_map</c> KVA per call
/// (<c>kmem_alloc_pageable</c>), and per page <c>pmap_qenter</c>, <c>uiomove</c> from that KVA,
/// <c>pmap_qremove</c> (two broadcast shootdowns per page on SMP), then <c>kmem_free</c>.
/// </para>
/// <para>
/// Differences from FreeBSD, on purpose: there is no page-in <c>vm_fault</c> (the simulated
/// address spaces map their memory eagerly), so an unmapped target page is
/// <see cref="Errno.EFAULT"/>; a write to a read-only anonymous mapping is allowed, as ptrace's
/// <c>VM_PROT_OVERRIDE_WRITE</c> allows it; a write to a shared file page (an exec'd image)
/// copies it first, as the copy-on-write fault does.
/// </para>
/// </summary>
public static class ProcRwMem
{
    /// <summary>
    /// Moves <c>uio.Resid</c> bytes between the target's address <c>uio.Offset</c> and the uio's
    /// buffer. Returns 0, or <see cref="Errno.EFAULT"/> at the first target page that is not
    /// mapped (or a bad user buffer); as in FreeBSD the pages before it have moved and the uio
    /// says how far (<c>Resid</c>, <c>Offset</c>), and nothing after it is touched. Must run on a
    /// kernel thread.
    /// </summary>
    public static int Transfer(SimKernel kernel, VmSpace target, Uio uio)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(target);
        ArgumentNullException.ThrowIfNull(uio);
        if (uio.Resid == 0)
        {
            return Errno.OK;
        }

        var physical = kernel.Machine.Physical;
        ulong kva = 0;
        if (kernel.IsOriginal)
        {
            // kmem_alloc_pageable(kernel_map, PAGE_SIZE): may sleep while kernel_map is full.
            kva = kernel.Original.KvaAlloc(1);
            if (kva == 0)
            {
                return Errno.ENOMEM;
            }
        }

        try
        {
            int error;
            do
            {
                ulong uva = (ulong)uio.Offset;
                long pageOffset = (long)(uva & Pte.PageMask);
                long len = Math.Min(Pte.PageSize - pageOffset, uio.Resid);

                // vm_fault with VM_PROT_OVERRIDE_WRITE: a write to a shared file page (an exec'd
                // image) gives the target its own copy first, never touching the page cache.
                if (uio.Direction == UioDirection.Write && uio.Offset >= 0 && VmLayout.IsUser(uva))
                {
                    target.ResolveWriteFault(uva, overrideProtection: true);
                }

                // A negative offset or a kernel address is no user page: nothing is found.
                if (uio.Offset < 0 || target.Pmap.ExtractAndHold(uva) is not { } page)
                {
                    error = Errno.EFAULT;
                    break;
                }

                try
                {
                    error = kernel.IsOriginal
                        ? MoveThroughKernelMap(kernel, kva, page, pageOffset, len, uio)
                        : UioMove.FromPhys(kernel, new ReadOnlySpan<VmPage>(in page), pageOffset, len, uio);
                }
                finally
                {
                    physical.Unhold(page);
                }
            }
            while (error == Errno.OK && uio.Resid > 0);

            return error;
        }
        finally
        {
            if (kva != 0)
            {
                kernel.Original.KvaFree(kva, 1);
            }
        }
    }

    /// <summary>The original per-page step: <c>pmap_qenter</c>, <c>uiomove</c>, <c>pmap_qremove</c>.</summary>
    private static int MoveThroughKernelMap(SimKernel kernel, ulong kva, VmPage page, long pageOffset, long len, Uio uio)
    {
        var original = kernel.Original;
        original.QEnter(kva, new ReadOnlySpan<VmPage>(in page));
        try
        {
            return uio.Move(kernel.Cpu, kva + (ulong)pageOffset, len);
        }
        finally
        {
            original.QRemove(kva, 1);
        }
    }
}
