using System.Globalization;
using Native.PageTable;
using Native.SfBufNative.Kernel;

namespace Native.Perf.Paper;

/// <summary>
/// lmbench bw_pipe: the writer writes 64 KiB chunks from one reused buffer, the reader reads
/// them; on two or more CPUs they run on different CPUs. The huge variant writes from a buffer
/// twice the sf_buf pool, so no page is still mapped when it comes round again.
/// </summary>
internal sealed class PipeExperiment(bool huge) : Experiment
{
    public override string Name => huge ? "pipe-huge" : "pipe";

    public override string Workload => huge
        ? "the same from a writer buffer twice the sf_buf pool: no page is still mapped when it comes round again"
        : "lmbench `bw_pipe`: 64 KiB writes from one reused user buffer, a reader on the other CPU (direct writes)";

    public override string Baseline =>
        "per-pipe KVA window: `pipe_build_write_buffer` maps the writer's pages with `pmap_qenter`, `pipe_destroy_write_buffer` unmaps them with `pmap_qremove`, both without the pipe mutex (`sys_pipe.c`)";

    public override bool PrivateMappings => true;

    public override bool HasAllCpuForm => true;

    public override IReadOnlyList<Measurement> Run(Trial t) => t.Load == LoadForm.All ? RunPairs(t) : RunOne(t);

    /// <summary>Every CPU works: N/2 writer and reader pairs (writer on CPU 2k, reader on 2k + 1; one pair on CPU 0 alone), the same total bytes.</summary>
    private List<Measurement> RunPairs(Trial t)
    {
        var m = t.Machine;
        int pairs = Math.Max(1, t.Cpus / 2);
        long perPair = Math.Max(Chunk, t.Pick(1L << 30, 16L << 20, 2L << 20) / pairs / Chunk * Chunk);
        // Huge: the pairs' writer buffers together are twice the pool, so still no page is mapped
        // when it comes round again, in memory that does not grow with the CPU count.
        long window = huge ? Math.Max(Chunk, ((2L * Nsfbufs(t) * Pte.PageSize / pairs) + Chunk - 1) / Chunk * Chunk) : Chunk;
        var pipes = new SfBufNative.Kernel.Pipe[pairs];
        var writerSpaces = new VmSpace[pairs];
        var readerSpaces = new VmSpace[pairs];
        m.Run(0, () =>
        {
            for (int p = 0; p < pairs; p++)
            {
                pipes[p] = SfBufNative.Kernel.Pipe.Create(t.Kernel);
                writerSpaces[p] = m.CreateVmSpace();
                writerSpaces[p].MapAnonymous(UserBase, window);
                readerSpaces[p] = m.CreateVmSpace();
                readerSpaces[p].MapAnonymous(UserBase, Chunk);
            }
        });

        var received = new long[pairs];
        t.Begin();
        var threads = new List<KernelThread>();
        for (int p = 0; p < pairs; p++)
        {
            int pair = p;
            int writerCpu = t.Cpus == 1 ? 0 : 2 * pair, readerCpu = t.Cpus == 1 ? 0 : (2 * pair) + 1;
            threads.Add(m.StartThread($"bw_pipe writer {pair}", () =>
            {
                long offset = 0;
                for (long sent = 0; sent < perPair; sent += Chunk)
                {
                    Check(pipes[pair].Write(new Uio(UserBase + (ulong)offset, Chunk, UioSegment.UserSpace, UioDirection.Write)), "pipe write");
                    offset = (offset + Chunk) % window;
                }

                pipes[pair].CloseWrite();
            }, cpu: writerCpu, bound: true, vmspace: writerSpaces[pair]));
            threads.Add(m.StartThread($"bw_pipe reader {pair}", () =>
            {
                while (true)
                {
                    var uio = new Uio(UserBase, Chunk, UioSegment.UserSpace, UioDirection.Read);
                    Check(pipes[pair].Read(uio), "pipe read");
                    long n = Chunk - uio.Resid;
                    if (n == 0)
                    {
                        break;
                    }

                    received[pair] += n;
                }
            }, cpu: readerCpu, bound: true, vmspace: readerSpaces[pair]));
        }

        Trial.JoinAll([.. threads]);
        t.End();
        m.Run(0, () =>
        {
            foreach (var pipe in pipes)
            {
                pipe.CloseRead();
            }
        });
        long total = perPair * pairs;
        Require(received.Sum() == total, $"the readers got {received.Sum()} of {total} bytes");
        return [t.Measure(Name, total, total / Chunk, new Dictionary<string, object>
        {
            ["write_bytes"] = Chunk,
            ["writer_buffer_bytes"] = window,
            ["direct_writes"] = pipes.Sum(p => p.DirectWrites),
            ["pairs"] = pairs,
        })];
    }

    private List<Measurement> RunOne(Trial t)
    {
        var m = t.Machine;
        long total = t.Pick(1L << 30, 16L << 20, 2L << 20);
        long window = huge ? (2L * Nsfbufs(t) * Pte.PageSize + Chunk - 1) / Chunk * Chunk : Chunk;
        SfBufNative.Kernel.Pipe pipe = null!;
        VmSpace writerSpace = null!, readerSpace = null!;
        m.Run(0, () =>
        {
            pipe = SfBufNative.Kernel.Pipe.Create(t.Kernel);
            writerSpace = m.CreateVmSpace();
            writerSpace.MapAnonymous(UserBase, window);
            readerSpace = m.CreateVmSpace();
            readerSpace.MapAnonymous(UserBase, Chunk);
        });

        long received = 0;
        t.Begin();
        var writer = m.StartThread("bw_pipe writer", () =>
        {
            long offset = 0;
            for (long sent = 0; sent < total; sent += Chunk)
            {
                Check(pipe.Write(new Uio(UserBase + (ulong)offset, Chunk, UioSegment.UserSpace, UioDirection.Write)), "pipe write");
                offset = (offset + Chunk) % window;
            }

            pipe.CloseWrite();
        }, cpu: 0, bound: true, vmspace: writerSpace);
        var reader = m.StartThread("bw_pipe reader", () =>
        {
            while (true)
            {
                var uio = new Uio(UserBase, Chunk, UioSegment.UserSpace, UioDirection.Read);
                Check(pipe.Read(uio), "pipe read");
                long n = Chunk - uio.Resid;
                if (n == 0)
                {
                    break;
                }

                received += n;
            }
        }, cpu: t.PeerCpu, bound: true, vmspace: readerSpace);
        Trial.JoinAll(writer, reader);
        t.End();

        // Destroying the pipe unmaps its kmem buffer (a global invalidation): not part of bw_pipe.
        m.Run(0, pipe.CloseRead);
        Require(received == total, $"the reader got {received} of {total} bytes");
        return [t.Measure(Name, total, total / Chunk, new Dictionary<string, object>
        {
            ["write_bytes"] = Chunk,
            ["writer_buffer_bytes"] = window,
            ["direct_writes"] = pipe.DirectWrites,
        })];
    }

    public override IEnumerable<string> Relations(Measurement m)
    {
        long writes = Convert.ToInt64(m.Params["direct_writes"], CultureInfo.InvariantCulture);
        long pages = m.Bytes / Pte.PageSize;
        return (MapsPerUse(m), IsMappingCache(m)) switch
        {
            // One window mapping per direct write, of the 16 pages a page-aligned 64 KiB write spans.
            (true, _) => Expect(m["mappings"] == writes && m["mapped_pages"] == pages,
                $"{m["mappings"]} window mappings of {m["mapped_pages"]} pages for {writes} direct writes of {pages} pages"),

            // The reader maps each page it copies privately; the huge buffer cycles through twice the pool.
            (_, true) when huge => Expect(m["mappings"] == pages, $"{m["mappings"]} sf_buf mappings for {pages} pages, each of which should miss"),
            _ => [],
        };
    }
}
