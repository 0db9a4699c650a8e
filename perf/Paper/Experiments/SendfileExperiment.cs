using Native.PageTable;
using Native.SfBufNative.Kernel;

namespace Native.Perf.Paper;

/// <summary>
/// sendfile of a file that fits the sf_buf pool (hot) or is twice its size (cold) to a socket
/// whose NIC runs on another CPU; the page cache is warm and one pass runs before the
/// measurement, so the hot case measures the steady state. The short forms of the cold case send
/// the first half of the file once: one pool's worth of pages, none of them still mapped after the
/// warm-up pass, which left the second half in the pool.
/// </summary>
internal sealed class SendfileExperiment(bool hot) : Experiment
{
    public override string Name => hot ? "sendfile-hot" : "sendfile-cold";

    public override string Workload => hot
        ? "sendfile of a file that fits the pool, to a NIC thread on the other CPU (shared mappings)"
        : "sendfile of a file twice the pool's size, to a NIC thread on the other CPU (shared mappings)";

    public override string Baseline =>
        "sendfile's own pool before sf_buf (`uipc_syscalls.c` `sf_buf_alloc`/`sf_buf_free`, 1998-2003): nsfbufs buffers with a fixed page of KVA each, `pmap_qenter` at alloc, `pmap_qremove` at free";

    public override IReadOnlyList<Measurement> Run(Trial t)
    {
        var m = t.Machine;
        long fileBytes = hot ? Math.Min(4L << 20, Nsfbufs(t) * (long)Pte.PageSize / 2) : 2L * Nsfbufs(t) * Pte.PageSize;
        long total = hot ? t.Pick(1L << 30, 16L << 20, 2 * fileBytes) : t.Pick(8 * fileBytes, fileBytes / 2, fileBytes / 2);
        var contents = new byte[fileBytes];
        new Random(42).NextBytes(contents);
        var file = t.Kernel.FileSystem.AddFile(hot ? "hot" : "cold", contents);
        Socket so = null!;
        Nic nic = null!;
        m.Run(0, () =>
        {
            so = new Socket(t.Kernel);
            nic = Nic.Start(t.Kernel, so, t.PeerCpu);
            var sink = m.KernelMemory.Alloc(Chunk);
            for (long off = 0; off < fileBytes; off += Chunk)
            {
                Check(VnodePager.Read(t.Kernel, file, new Uio(sink, Chunk, UioSegment.SystemSpace, UioDirection.Read, off)), "page-in");
            }

            Check(Sendfile.Send(t.Kernel, file, so, 0, fileBytes, default, out _), "warm-up sendfile");
            Check(so.WaitDrained(), "drain");
        });

        t.Begin();
        var sender = m.StartThread("sendfile", () =>
        {
            for (long sent = 0; sent < total; sent += fileBytes)
            {
                long length = Math.Min(fileBytes, total - sent);
                Check(Sendfile.Send(t.Kernel, file, so, 0, length, default, out long n), "sendfile");
                Require(n == length, "short sendfile");
            }

            Check(so.WaitDrained(), "drain");
        }, cpu: 0, bound: true);
        Trial.JoinAll(sender);
        t.End();
        nic.Stop();
        nic.Join(TimeSpan.FromMinutes(1));
        return [t.Measure(Name, total, total / Pte.PageSize, new Dictionary<string, object>
        {
            ["file_bytes"] = fileBytes,
            ["nsfbufs"] = Nsfbufs(t),
        })];
    }

    public override IEnumerable<string> Relations(Measurement m)
    {
        long pages = m.Bytes / Pte.PageSize;
        if (MapsPerUse(m))
        {
            return Expect(m["mappings"] == pages, $"{m["mappings"]} pool mappings for {pages} pages sent (one each)");
        }

        if (CachesSharedMappings(m))
        {
            // Hot: every page is still cached from the warm-up pass; cold: the file cycles through twice the pool.
            return hot
                ? Expect(m["mappings"] == 0 && m["shootdowns"] == 0, $"hot sendfile made {m["mappings"]} mappings and {m["shootdowns"]} shootdowns (expected none)")
                : Expect(m["mappings"] == pages, $"{m["mappings"]} mappings for {pages} pages of a file twice the pool (each should miss)");
        }

        return [];
    }
}
