using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>
/// <c>execve(2)</c> (<c>kern_exec.c</c> <c>do_execve</c> with the ELF image activator of
/// <c>imgact_elf.c</c>) for ELF64 x86-64 images, loading segments as FreeBSD 5.x's
/// <c>elf_load_section</c> did.
/// <para>
/// <c>exec_map_first_page</c> pages in the file's first page (wired) and maps it with a
/// <b>shared</b> sf_buf (<c>sf_buf_alloc(m, 0)</c>: the exec thread is not pinned and may sleep
/// and migrate); the header and the program headers are read through that mapping
/// (<c>image_header</c>) and validated (<see cref="ElfImage.Parse"/>). A new address space is
/// then built beside the caller's. For each <c>PT_LOAD</c> segment, the whole file pages
/// (all of them when <c>p_memsz</c> = <c>p_filesz</c>, the partial last one included) are
/// page-cache pages mapped into it directly, read-only, copy-on-write for a writable segment
/// (<c>vm_map_insert</c> of the vnode's object with <c>MAP_COPY_ON_WRITE</c>): no copy, no
/// kernel mapping. When <c>p_memsz</c> &gt; <c>p_filesz</c>, the rest is anonymous zeroed
/// memory (the <c>.bss</c>, zeroed by being fresh pages) and the file bytes of the partial last
/// page are copied into its first page through an ephemeral mapping of the file page. A page
/// two segments would share is anonymous and receives each segment's bytes that way
/// (<c>elf_map_partial</c>). Then a small stack is mapped below <see cref="StackTop"/>.
/// </para>
/// <para>
/// Only when all of this succeeded does the thread switch to the new space and the old one get
/// destroyed (after switching away, so no CPU runs in it); the partial pages are then copied out
/// into the new space, whose file pages were wired beforehand so that nothing can fail after the
/// switch. On any failure before it the half-built space is destroyed and the caller is untouched.
/// <c>exec_unmap_first_page</c> frees the header's sf_buf and unwires the page.
/// </para>
/// <para>
/// Ephemeral mappings per exec, therefore: the header, and one per partial page. With
/// <c>original</c> they are the pre-sf_buf ones: the header at a page of <c>exec_map</c>
/// (<c>kmem_alloc_wait</c>) with <c>pmap_qenter</c>/<c>pmap_qremove</c> (two broadcast
/// shootdowns), each partial page at a page of <c>exec_map</c> entered without invalidation and
/// removed with one (<c>vm_map_find</c>/<c>vm_map_remove</c>: one broadcast shootdown). With an
/// sf_buf strategy the partial page is <c>vm_imgact_map_page</c>'s: pinned, a private sf_buf.
/// </para>
/// <para>
/// Differences from FreeBSD, deliberate: <c>exec_new_vmspace</c> happens last instead of
/// first, so a malformed segment never kills the caller; PIEs go at the fixed
/// <see cref="PieBase"/>; <c>PT_INTERP</c> is ignored (no run-time linker), there are no
/// arguments or environment on the stack, and the caller must be its process's only thread
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
        KernelThread.CurrentOrNull?.Cpu?.EnterKernel();
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
            var fragments = new List<Fragment>();
            int mapped = 0;
            int shared = 0;
            try
            {
                error = ReadImageHeader(kernel, header, vnode.Size, out image, out reason);
                if (error == Errno.OK)
                {
                    space = kernel.Machine.CreateVmSpace();
                    error = Load(kernel, vnode, image!, space, fragments, out mapped, out shared, out reason);
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

            // The partial pages, now that the new space is the current one: a copyout each.
            foreach (var fragment in fragments)
            {
                CopyFragment(kernel, fragment);
            }

            fragments.Clear();
            result = new ExecResult(image!, space!, mapped, shared, FragmentCount(image!));
            reason = null;
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
            // Shared: the thread is not pinned and may migrate while the header is mapped. Read only.
            var sf = kernel.SfBufs.Alloc(page, SfBufFlags.ReadOnly);
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

    /// <summary>
    /// Builds the image in <paramref name="space"/> as <c>elf_load_section</c> lays it out: file
    /// pages mapped shared (copy-on-write where writable), anonymous pages for the rest and the
    /// stack, and, in <paramref name="fragments"/>, the partial pages still to copy, their file
    /// pages wired. On failure the wired pages are unwired again.
    /// </summary>
    private static int Load(SimKernel kernel, Vnode vnode, ElfImage image, VmSpace space, List<Fragment> fragments, out int mapped, out int shared, out string? reason)
    {
        mapped = 0;
        shared = 0;
        var plan = Plan(image);

        // An upper bound of the pages exec allocates (anonymous pages, page-cache pages, stack),
        // computed before anything is allocated so that a huge p_memsz fails cleanly.
        long needed = StackPages + plan.Sum(p => p.Value.FilePage >= 0 ? 1L : 1L + p.Value.Fragments.Count);
        if (needed > kernel.Machine.Physical.FreePages)
        {
            reason = $"the image needs up to {needed} pages, {kernel.Machine.Physical.FreePages} are free";
            return Errno.ENOMEM;
        }

        try
        {
            foreach (var (va, page) in plan)
            {
                if (page.FilePage >= 0)
                {
                    int error = VnodePager.GetPage(kernel, vnode, page.FilePage, out var filePage);
                    if (error != Errno.OK)
                    {
                        reason = $"cannot read file page {page.FilePage} (errno {error})";
                        return error;
                    }

                    space.MapShared(va, filePage, page.Writable);
                    shared++;
                    continue;
                }

                space.MapAnonymous(va, Pte.PageSize, page.Writable);
                foreach (var (inPage, fileOffset, length) in page.Fragments)
                {
                    int error = VnodePager.GetPage(kernel, vnode, fileOffset >> Pte.PageShift, out var filePage);
                    if (error != Errno.OK)
                    {
                        reason = $"cannot read the file page at offset 0x{fileOffset:x} (errno {error})";
                        return error;
                    }

                    fragments.Add(new Fragment(va + (ulong)inPage, filePage, (int)(fileOffset & (long)Pte.PageMask), length));
                }
            }

            space.MapAnonymous(StackBottom, (long)(StackTop - StackBottom));
            mapped = plan.Count + StackPages;
            reason = null;
            return Errno.OK;
        }
        finally
        {
            if (mapped == 0)
            {
                foreach (var fragment in fragments)
                {
                    kernel.Machine.Physical.Unwire(fragment.FilePage);
                }

                fragments.Clear();
            }
        }
    }

    /// <summary>
    /// The pages of the image, in address order, as FreeBSD 5.x's <c>elf_load_section</c> maps
    /// them: per segment, the file pages [trunc(p_vaddr), +map_len) with map_len running to
    /// trunc(p_offset + p_filesz) when there is a .bss and to round(p_offset + p_filesz)
    /// otherwise; with a .bss, anonymous pages from trunc(p_vaddr + p_filesz) and the partial
    /// page's file bytes [trunc(p_offset + p_filesz), p_offset + p_filesz) copied to its start.
    /// A page two segments claim becomes anonymous, holding each segment's own bytes.
    /// </summary>
    private static SortedDictionary<ulong, PlannedPage> Plan(ElfImage image)
    {
        var plan = new SortedDictionary<ulong, PlannedPage>();
        var claims = new Dictionary<ulong, int>();
        foreach (var s in image.LoadSegments)
        {
            if (s.MemorySize == 0)
            {
                continue;
            }

            ulong start = image.MemoryRange(s).Start;
            ulong mapAddr = TruncPage(start);
            ulong fileAddr = TruncPage(s.Offset);
            ulong fileEnd = s.Offset + s.FileSize;
            ulong mapLen = (s.MemorySize > s.FileSize ? TruncPage(fileEnd) : RoundPage(fileEnd)) - fileAddr;
            for (ulong k = 0; k < mapLen; k += (ulong)Pte.PageSize)
            {
                Claim(plan, claims, mapAddr + k, s.IsWritable).FilePage = (long)((fileAddr + k) >> Pte.PageShift);
            }

            if (s.MemorySize > s.FileSize)
            {
                ulong anonStart = TruncPage(start + s.FileSize);
                for (ulong va = anonStart; va < RoundPage(start + s.MemorySize); va += (ulong)Pte.PageSize)
                {
                    Claim(plan, claims, va, s.IsWritable);
                }

                int copyLen = (int)(fileEnd - TruncPage(fileEnd));
                if (copyLen != 0)
                {
                    plan[anonStart].Fragments.Add((0, (long)TruncPage(fileEnd), copyLen));
                }
            }
        }

        // Pages claimed twice: anonymous, with exactly each segment's file bytes on them.
        foreach (var (va, count) in claims)
        {
            if (count < 2)
            {
                continue;
            }

            var page = plan[va];
            page.FilePage = -1;
            page.Fragments.Clear();
            foreach (var s in image.LoadSegments)
            {
                ulong start = image.MemoryRange(s).Start;
                ulong from = Math.Max(va, start);
                ulong to = Math.Min(va + (ulong)Pte.PageSize, start + s.FileSize);
                if (from < to)
                {
                    page.Fragments.Add(((int)(from - va), (long)(s.Offset + (from - start)), (int)(to - from)));
                }
            }
        }

        return plan;
    }

    private static PlannedPage Claim(SortedDictionary<ulong, PlannedPage> plan, Dictionary<ulong, int> claims, ulong va, bool writable)
    {
        if (!plan.TryGetValue(va, out var page))
        {
            plan[va] = page = new PlannedPage();
        }

        page.Writable |= writable;
        claims[va] = claims.GetValueOrDefault(va) + 1;
        return page;
    }

    /// <summary>Partial pages (fragments) an image's load copies through an ephemeral mapping.</summary>
    internal static int FragmentCount(ElfImage image) => Plan(image).Values.Sum(p => p.Fragments.Count);

    /// <summary>
    /// Copies one partial page's file bytes out to the new (current) address space through an
    /// ephemeral mapping of the file page, then unwires it: with <c>original</c> a page of
    /// <c>exec_map</c> entered without invalidation and removed with one (<c>vm_map_find</c>,
    /// <c>vm_map_remove</c>); otherwise <c>vm_imgact_map_page</c>: pinned, a private sf_buf.
    /// </summary>
    private static void CopyFragment(SimKernel kernel, in Fragment fragment)
    {
        var td = KernelThread.Current;
        try
        {
            if (kernel.IsOriginal)
            {
                var pmap = kernel.Machine.KernelPmap;
                ulong va = kernel.ExecMap.Alloc(1, wait: true);
                pmap.KEnter(va, fragment.FilePage);
                pmap.CountMapping(1);
                kernel.Cpu.Copy(fragment.UserVa, va + (ulong)fragment.FileInPage, fragment.Length);

                // vm_map_remove: the unmap and its invalidation are one mapping operation.
                pmap.EnterOperation();
                try
                {
                    pmap.KRemove(va);
                    pmap.InvalidatePage(va);
                }
                finally
                {
                    pmap.LeaveOperation();
                }

                kernel.ExecMap.Free(va, 1);
                return;
            }

            td.SchedPin();
            try
            {
                var sf = kernel.SfBufs.Alloc(fragment.FilePage, SfBufFlags.CpuPrivate | SfBufFlags.ReadOnly); // copied from, never written
                try
                {
                    // sf_buf_kva here, on the CPU that copies (lwbuf and emap do work on the accessing CPU).
                    td.Cpu!.Copy(fragment.UserVa, kernel.SfBufs.Kva(sf) + (ulong)fragment.FileInPage, fragment.Length);
                }
                finally
                {
                    kernel.SfBufs.Free(sf);
                }
            }
            finally
            {
                td.SchedUnpin();
            }
        }
        finally
        {
            kernel.Machine.Physical.Unwire(fragment.FilePage);
        }
    }

    private static ulong TruncPage(ulong va) => va & ~Pte.PageMask;

    private static ulong RoundPage(ulong va) => (va + Pte.PageMask) & ~Pte.PageMask;

    /// <summary>The mapping of <c>image_header</c>: the sf_buf, or none with <c>exec_map</c> KVA (original).</summary>
    private readonly record struct ImageHeaderMapping(VmPage Page, ulong Kva, SfBuf Sf);

    /// <summary>A partial page to copy: bytes [FileInPage, +Length) of the wired file page to user address UserVa.</summary>
    private readonly record struct Fragment(ulong UserVa, VmPage FilePage, int FileInPage, int Length);

    /// <summary>One page of the new image: a file page to map shared (FilePage ≥ 0) or an anonymous page with fragments to copy.</summary>
    private sealed class PlannedPage
    {
        public bool Writable { get; set; }

        public long FilePage { get; set; } = -1;

        public List<(int InPage, long FileOffset, int Length)> Fragments { get; } = [];
    }
}
