using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>
/// <c>execve(2)</c> (<c>kern_exec.c</c> <c>do_execve</c> with the ELF image activator of
/// <c>imgact_elf.c</c>) for ELF64 x86-64 images.
/// <para>
/// <c>exec_map_first_page</c> pages in the file's first page (wired) and maps it with a
/// <b>shared</b> sf_buf (<c>sf_buf_alloc(m, 0)</c>: the exec thread is not pinned and may sleep
/// and migrate); the header and the program headers are read through that mapping
/// (<c>image_header</c>) and validated (<see cref="ElfImage.Parse"/>). A new address space is
/// then built beside the caller's: every page of every <c>PT_LOAD</c> segment becomes a zeroed
/// anonymous page (a page two segments share is mapped once, writable if either segment is),
/// and the file bytes are copied in page by page as <c>vm_imgact_map_page</c> does: the file
/// page from the page cache under <c>sched_pin</c> and an <c>SFB_CPUPRIVATE</c> sf_buf, and the
/// new user page under a second private sf_buf (not through the new space's user mapping, so
/// the caller's address space is never switched, not even briefly, until the exec has
/// succeeded). Bytes of a page that no segment's file part covers keep the zeroes of the fresh
/// page, which is the <c>.bss</c> clearing. Then a small stack is mapped below
/// <see cref="StackTop"/>. Only when all of this succeeded does the thread switch to the new
/// space and the old one get destroyed (after switching away, so no CPU runs in it); on any
/// failure the half-built space is destroyed and the caller is untouched.
/// <c>exec_unmap_first_page</c> frees the sf_buf and unwires the page.
/// </para>
/// <para>
/// With the <c>original</c> strategy the first page is mapped the pre-sf_buf way: a page of
/// KVA from <c>exec_map</c> (<c>kmem_alloc_wait</c>), <c>pmap_qenter</c>, and at the end
/// <c>pmap_qremove</c> and <c>kmem_free_wakeup</c>: two broadcast shootdowns. The segment copies
/// go through <see cref="SfBufMapper"/>, which for <c>original</c> is a <c>kernel_map</c> page and
/// <c>pmap_qenter</c>/<c>pmap_qremove</c> per mapping: four broadcast shootdowns per page copy.
/// </para>
/// <para>
/// Differences from FreeBSD, deliberate: the loader copies instead of mapping file pages
/// copy-on-write (the prototype has no VM objects in user space); <c>exec_new_vmspace</c>
/// happens last instead of first, so a malformed segment never kills the caller; PIEs go at
/// the fixed <see cref="PieBase"/>; <c>PT_INTERP</c> is ignored (no run-time linker), there are
/// no arguments or environment on the stack, and the caller must be its process's only thread
/// (FreeBSD single-threads the process first).
/// </para>
/// </summary>
public static class Exec
{
    /// <summary>
    /// Where a PIE (<c>ET_DYN</c>) is placed: 0x0040_0000, the traditional x86-64 link address of
    /// <c>ET_EXEC</c> images, fixed (no ASLR) so results are reproducible. FreeBSD's amd64
    /// default is <c>kern.elf64.pie_base</c> = 0x0102_1000; any page-aligned address works.
    /// </summary>
    public const ulong PieBase = 0x0040_0000;

    /// <summary><c>USRSTACK</c>: the top of the stack, the top of user space.</summary>
    public const ulong StackTop = VmLayout.UserMax;

    /// <summary>Pages of stack mapped at exec (FreeBSD grows it on demand; here it is fixed).</summary>
    public const int StackPages = 8;

    /// <summary>The lowest stack address; image segments must end at or below it.</summary>
    public const ulong StackBottom = StackTop - ((ulong)StackPages << Pte.PageShift);

    /// <summary>
    /// <c>execve</c> of the file at <paramref name="path"/> on the calling kernel thread, which
    /// may run in an address space (the calling process) or none. Returns 0 with the result
    /// (the thread now runs in <see cref="ExecResult.VmSpace"/> and its old space is destroyed),
    /// or an errno with the caller unchanged: <c>ENOENT</c>, <c>ENOEXEC</c> for anything
    /// that is not a loadable ELF64 x86-64 image, <c>ENOMEM</c> when physical memory cannot hold it.
    /// </summary>
    public static int Execve(SimKernel kernel, string path, out ExecResult? result) =>
        Execve(kernel, path, out result, out _);

    /// <summary>As <see cref="Execve(SimKernel, string, out ExecResult?)"/>; <paramref name="reason"/> says why it failed (FreeBSD's <c>uprintf</c>).</summary>
    public static int Execve(SimKernel kernel, string path, out ExecResult? result, out string? reason)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(path);
        result = null;
        var td = KernelThread.Current;
        var vnode = kernel.FileSystem.Lookup(path);
        if (vnode == null)
        {
            reason = $"{path}: no such file";
            return Errno.ENOENT;
        }

        if (vnode.Size == 0)
        {
            // There is no first page to map; FreeBSD's activators all decline an empty file.
            reason = $"{path}: empty file";
            return Errno.ENOEXEC;
        }

        VmSpace? space = null;
        bool committed = false;
        try
        {
            int error = MapFirstPage(kernel, vnode, out var header);
            if (error != Errno.OK)
            {
                reason = $"{path}: cannot read the first page (errno {error})";
                return error;
            }

            ElfImage? image;
            int mapped = 0;
            int copies = 0;
            try
            {
                error = ReadImageHeader(kernel, header, vnode.Size, out image, out reason);
                if (error == Errno.OK)
                {
                    space = kernel.Machine.CreateVmSpace();
                    error = Load(kernel, vnode, image!, space, out mapped, out copies, out reason);
                }
            }
            finally
            {
                UnmapFirstPage(kernel, header);
            }

            if (error != Errno.OK)
            {
                reason = $"{path}: {reason}";
                return error;
            }

            // The point of no return: switch first, then destroy the old space, so no CPU is
            // still running in it when its pages are freed.
            var old = td.VmSpace;
            td.SwitchVmSpace(space);
            committed = true;
            old?.Destroy();
            result = new ExecResult(image!, space!, mapped, copies);
            return Errno.OK;
        }
        finally
        {
            if (!committed)
            {
                space?.Destroy();
            }
        }
    }

    /// <summary>
    /// <c>exec_map_first_page</c>: page 0 of the file, wired, mapped shared; with the
    /// <c>original</c> strategy at <c>exec_map</c> KVA with <c>pmap_qenter</c>.
    /// </summary>
    private static int MapFirstPage(SimKernel kernel, Vnode vnode, out ImageHeaderMapping header)
    {
        header = default;
        int error = VnodePager.GetPage(kernel, vnode, 0, out var page);
        if (error != Errno.OK)
        {
            return error;
        }

        if (kernel.IsOriginal)
        {
            // kmem_alloc_wait(exec_map, PAGE_SIZE): sleeps while exec_map is full.
            ulong va = kernel.ExecMap.Alloc(1, wait: true);
            kernel.Original.QEnter(va, new ReadOnlySpan<VmPage>(in page));
            header = new ImageHeaderMapping(page, va, SfBuf.None);
        }
        else
        {
            // Shared: the thread is not pinned and may migrate while the header is mapped.
            var sf = kernel.SfBufs.Alloc(page, SfBufFlags.Default);
            header = new ImageHeaderMapping(page, sf.Kva, sf);
        }

        return Errno.OK;
    }

    /// <summary><c>exec_unmap_first_page</c>: drop the mapping, then the wiring.</summary>
    private static void UnmapFirstPage(SimKernel kernel, in ImageHeaderMapping header)
    {
        if (header.Sf.IsNone)
        {
            kernel.Original.QRemove(header.Kva, 1);
            kernel.ExecMap.Free(header.Kva, 1);
        }
        else
        {
            kernel.SfBufs.Free(header.Sf);
        }

        kernel.Machine.Physical.Unwire(header.Page);
    }

    /// <summary>Reads <c>image_header</c> through its kernel mapping and parses it.</summary>
    private static int ReadImageHeader(SimKernel kernel, in ImageHeaderMapping header, long fileSize, out ElfImage? image, out string? reason)
    {
        Span<byte> bytes = stackalloc byte[(int)Math.Min(fileSize, Pte.PageSize)];

        // The current CPU, whichever it is now: a shared mapping is valid on all of them once
        // sf_buf_kva has run here (lwbuf and emap do work on the accessing CPU).
        ulong kva = header.Sf.IsNone ? header.Kva : kernel.SfBufs.Kva(header.Sf);
        kernel.Cpu.Read(kva, bytes);
        return ElfImage.Parse(bytes, fileSize, out image, out reason);
    }

    /// <summary>Builds the image in <paramref name="space"/>: maps every segment page and the stack, then copies the file bytes.</summary>
    private static int Load(SimKernel kernel, Vnode vnode, ElfImage image, VmSpace space, out int mapped, out int copies, out string? reason)
    {
        mapped = 0;
        copies = 0;

        // An upper bound of the pages exec allocates (image pages, page-cache pages, stack),
        // computed before anything is allocated so that a huge p_memsz fails cleanly.
        long needed = StackPages;
        foreach (var s in image.LoadSegments)
        {
            if (s.MemorySize != 0)
            {
                var (start, end) = image.MemoryRange(s);
                needed += (long)((RoundPage(end) - TruncPage(start)) >> Pte.PageShift);
                needed += (long)(s.FileSize >> Pte.PageShift) + 2; // pages a range of FileSize bytes can touch
            }
        }

        if (needed > kernel.Machine.Physical.FreePages)
        {
            reason = $"the image needs up to {needed} pages, {kernel.Machine.Physical.FreePages} are free";
            return Errno.ENOMEM;
        }

        // Each page once, writable if any segment on it is (PF_W); in address order.
        var pages = new SortedDictionary<ulong, bool>();
        foreach (var s in image.LoadSegments)
        {
            if (s.MemorySize == 0)
            {
                continue;
            }

            var (start, end) = image.MemoryRange(s);
            for (ulong va = TruncPage(start); va < end; va += (ulong)Pte.PageSize)
            {
                pages[va] = (pages.TryGetValue(va, out bool w) && w) || s.IsWritable;
            }
        }

        foreach (var (va, writable) in pages)
        {
            space.MapAnonymous(va, Pte.PageSize, writable);
        }

        space.MapAnonymous(StackBottom, (long)(StackTop - StackBottom));
        mapped = pages.Count + StackPages;

        foreach (var s in image.LoadSegments)
        {
            int error = CopySegment(kernel, vnode, image, s, space, ref copies);
            if (error != Errno.OK)
            {
                reason = $"cannot read the segment at file offset 0x{s.Offset:x} (errno {error})";
                return error;
            }
        }

        reason = null;
        return Errno.OK;
    }

    /// <summary>
    /// Copies a segment's file bytes into its new pages, page by page, as
    /// <c>vm_imgact_map_page</c>/<c>vm_imgact_unmap_page</c> do: wire the file page, pin, map it
    /// and the destination privately, copy, unmap both, unpin, unwire.
    /// </summary>
    private static int CopySegment(SimKernel kernel, Vnode vnode, ElfImage image, in ElfProgramHeader segment, VmSpace space, ref int copies)
    {
        var td = KernelThread.Current;
        var physical = kernel.Machine.Physical;
        ulong start = image.MemoryRange(segment).Start;
        ulong done = 0;
        while (done < segment.FileSize)
        {
            ulong va = start + done;
            long fileOffset = (long)(segment.Offset + done);
            int inPage = (int)(va & Pte.PageMask); // equals fileOffset's: checked by the parser
            long chunk = (long)Math.Min((ulong)(Pte.PageSize - inPage), segment.FileSize - done);
            int error = VnodePager.GetPage(kernel, vnode, fileOffset >> Pte.PageShift, out var filePage);
            if (error != Errno.OK)
            {
                return error;
            }

            var userPage = space.Pmap.Extract(va) ?? throw new InvalidOperationException($"exec: 0x{va:x} was not mapped in pid {space.Pid}");
            td.SchedPin();
            try
            {
                var from = kernel.SfBufs.Alloc(filePage, SfBufFlags.CpuPrivate);
                try
                {
                    var to = kernel.SfBufs.Alloc(userPage, SfBufFlags.CpuPrivate);
                    try
                    {
                        td.Cpu!.Copy(kernel.SfBufs.Kva(to) + (ulong)inPage, kernel.SfBufs.Kva(from) + (ulong)inPage, chunk);
                    }
                    finally
                    {
                        kernel.SfBufs.Free(to);
                    }
                }
                finally
                {
                    kernel.SfBufs.Free(from);
                }
            }
            finally
            {
                td.SchedUnpin();
                physical.Unwire(filePage);
            }

            copies++;
            done += (ulong)chunk;
        }

        return Errno.OK;
    }

    private static ulong TruncPage(ulong va) => va & ~Pte.PageMask;

    private static ulong RoundPage(ulong va) => (va + Pte.PageMask) & ~Pte.PageMask;

    /// <summary>The mapping of <c>image_header</c>: the sf_buf, or none with <c>exec_map</c> KVA (original).</summary>
    private readonly record struct ImageHeaderMapping(VmPage Page, ulong Kva, SfBuf Sf);
}
