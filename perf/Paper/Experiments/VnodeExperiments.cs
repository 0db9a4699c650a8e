using Native.PageTable;
using Native.SfBufNative.Kernel;

namespace Native.Perf.Paper;

/// <summary>
/// Vnode-pager page-in alone: evict a file's pages, then bring each back into the page cache
/// (the pager's mapping fills it), no copy to a reader; one file per CPU.
/// </summary>
internal sealed class VnodePageInExperiment : Experiment
{
    public override string Name => "vnode-pagein";

    public override string Workload => "vnode-pager page-in alone: evict a file, then page each page back in (shared mappings), one file per CPU";

    public override string Baseline =>
        "`vm_pager_map_page`: a page of `pager_map` (`kmem_alloc_wait`) and `pmap_kenter`; `vm_pager_unmap_page`: `pmap_kremove`, a global invalidation, `kmem_free_wakeup`";

    public override IReadOnlyList<Measurement> Run(Trial t)
    {
        var m = t.Machine;
        long fileBytes = t.Share(t.Pick(32L << 20, 8L << 20, 2L << 20), Chunk);
        int passes = t.Pick(8, 2, 1);
        var files = VnodeFiles.Create(t, fileBytes);
        long pagesBefore = t.Kernel.PagesIn;
        t.Begin();
        var workers = Enumerable.Range(0, t.Cpus).Select(cpu => m.StartThread($"pagein{cpu}", () =>
        {
            for (int pass = 0; pass < passes; pass++)
            {
                VnodePager.Evict(t.Kernel, files[cpu]);
                for (long index = 0; index < files[cpu].Pages; index++)
                {
                    Check(VnodePager.GetPage(t.Kernel, files[cpu], index, out var page), "page-in");
                    m.Physical.Unwire(page);
                }
            }
        }, cpu: cpu, bound: true)).ToArray();
        Trial.JoinAll(workers);
        t.End();
        long pagesIn = t.Kernel.PagesIn - pagesBefore;
        Require(pagesIn == fileBytes / Pte.PageSize * passes * t.Cpus, $"{pagesIn} page-ins, expected every page of every pass");
        return [t.Measure(Name, fileBytes * passes * t.Cpus, pagesIn, new Dictionary<string, object>
        {
            ["file_bytes"] = fileBytes,
            ["passes"] = passes,
            ["ops_are"] = "page-ins",
        })];
    }

    /// <summary><c>pmap_kenter</c> does not invalidate; only the unmap does.</summary>
    public override long OriginalRounds(Measurement m) => m["mappings"];

    public override IEnumerable<string> Relations(Measurement m) =>
        MapsPerUse(m)
            ? Expect(m["mappings"] == m.Ops, $"{m["mappings"]} pager_map mappings for {m.Ops} page-ins (one each)")
            : Expect(m["mappings"] <= m.Ops, $"{m["mappings"]} mappings for {m.Ops} page-ins (at most one each)");
}

/// <summary>
/// The read copy alone: a file whose pages are all in the page cache, read through
/// <c>vn_read</c> (<c>uiomove_fromphys</c> from the cached pages), one file per CPU.
/// </summary>
internal sealed class VnodeReadExperiment : Experiment
{
    public override string Name => "vnode-read";

    public override string Workload => "the read copy alone: read files whose pages are all cached, through `uiomove_fromphys` (private mappings), one file per CPU";

    public override string Baseline =>
        "no FreeBSD 5.x equivalent (its reads copied from the buffer cache's own long-lived mappings, not modelled): the generic per-use mapping, a `kernel_map` page with `pmap_qenter`/`pmap_qremove` per page";

    public override bool PrivateMappings => true;

    public override IReadOnlyList<Measurement> Run(Trial t)
    {
        var m = t.Machine;
        long fileBytes = t.Share(t.Pick(32L << 20, 8L << 20, 2L << 20), Chunk);
        int passes = t.Pick(32, 2, 1);
        var files = VnodeFiles.Create(t, fileBytes);
        var sinks = new ulong[t.Cpus];
        m.Run(0, () =>
        {
            for (int c = 0; c < t.Cpus; c++)
            {
                sinks[c] = m.KernelMemory.Alloc(Chunk);
                for (long off = 0; off < fileBytes; off += Chunk)
                {
                    Check(VnodePager.Read(t.Kernel, files[c], new Uio(sinks[c], Chunk, UioSegment.SystemSpace, UioDirection.Read, off)), "page-in");
                }
            }
        });
        long pagesBefore = t.Kernel.PagesIn;
        t.Begin();
        var workers = Enumerable.Range(0, t.Cpus).Select(cpu => m.StartThread($"reader{cpu}", () =>
        {
            for (int pass = 0; pass < passes; pass++)
            {
                for (long off = 0; off < fileBytes; off += Chunk)
                {
                    Check(VnodePager.Read(t.Kernel, files[cpu], new Uio(sinks[cpu], Chunk, UioSegment.SystemSpace, UioDirection.Read, off)), "vnode read");
                }
            }
        }, cpu: cpu, bound: true)).ToArray();
        Trial.JoinAll(workers);
        t.End();
        Require(t.Kernel.PagesIn == pagesBefore, "a cached read paged something in");
        long bytes = fileBytes * passes * t.Cpus;
        return [t.Measure(Name, bytes, bytes / Pte.PageSize, new Dictionary<string, object>
        {
            ["file_bytes"] = fileBytes,
            ["passes"] = passes,
            ["ops_are"] = "pages read",
        })];
    }

    public override IEnumerable<string> Relations(Measurement m) =>
        MapsPerUse(m)
            ? Expect(m["mappings"] == m.Ops, $"{m["mappings"]} mappings for {m.Ops} pages read (one each)")
            : [];
}

/// <summary>The files of the vnode experiments: one of random bytes per CPU.</summary>
internal static class VnodeFiles
{
    public static Vnode[] Create(Trial t, long fileBytes)
    {
        var rng = new Random(3);
        var files = new Vnode[t.Cpus];
        for (int c = 0; c < t.Cpus; c++)
        {
            var contents = new byte[fileBytes];
            rng.NextBytes(contents);
            files[c] = t.Kernel.FileSystem.AddFile($"file{c}", contents);
        }

        return files;
    }
}
