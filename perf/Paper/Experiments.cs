using System.Runtime.InteropServices;
using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Kernel;

namespace Native.Perf.Paper;

/// <summary>
/// The paper's experiments. Each boots nothing itself: it gets a <see cref="Trial"/> (a fresh
/// machine and kernel), sets up outside the measurement window, and measures only the workload.
/// Sizes shrink with <c>--quick</c>; the shape stays.
/// </summary>
internal static unsafe class Experiments
{
    /// <summary>Experiment names in the order they run and print.</summary>
    public static readonly string[] Names =
        ["pipe", "pipe-huge", "md-seq", "md-rand", "sendfile-hot", "sendfile-cold", "exec", "ptrace-word", "ptrace-page", "vnode", "lru", "memcpy"];

    /// <summary>Group names accepted by <c>--experiments</c>.</summary>
    public static readonly IReadOnlyDictionary<string, string[]> Groups = new Dictionary<string, string[]>(StringComparer.Ordinal)
    {
        ["md"] = ["md-seq", "md-rand"],
        ["sendfile"] = ["sendfile-hot", "sendfile-cold"],
        ["ptrace"] = ["ptrace-word", "ptrace-page"],
    };

    private const ulong UserBase = 0x1000_0000;
    private const int Chunk = 64 << 10;
    private const string ExecImage = "/bin/true";

    public static IEnumerable<PaperRow> Run(string name, Trial t) => name switch
    {
        "pipe" => [Pipe(t, huge: false)],
        "pipe-huge" => [Pipe(t, huge: true)],
        "md-seq" => [Md(t, random: false)],
        "md-rand" => [Md(t, random: true)],
        "sendfile-hot" => [Sendfile(t, hot: true)],
        "sendfile-cold" => [Sendfile(t, hot: false)],
        "exec" => [Exec(t)],
        "ptrace-word" => [PtraceWords(t)],
        "ptrace-page" => [PtracePages(t)],
        "vnode" => [Vnode(t)],
        "lru" => Lru(t),
        "memcpy" => [Memcpy(t)],
        _ => throw new ArgumentException($"unknown experiment '{name}'", nameof(name)),
    };

    /// <summary>The default pool: FreeBSD's nsfbufs for the default machine.</summary>
    private static int Nsfbufs(Trial t) => t.Machine.Options.EffectiveSfBufWindowPages;

    private static long PipeBytes(Trial t) => t.Quick ? 16L << 20 : 1L << 30;

    /// <summary>
    /// lmbench bw_pipe: the writer writes 64 KiB chunks from one reused buffer, the reader reads
    /// them; on two CPUs they run on different CPUs. The huge variant writes from a buffer twice
    /// the sf_buf pool, so no page is still mapped when it comes round again.
    /// </summary>
    private static PaperRow Pipe(Trial t, bool huge)
    {
        var m = t.Machine;
        long total = PipeBytes(t);
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
        return t.Row(huge ? "pipe-huge" : "pipe", total, total / Chunk, new Dictionary<string, object>
        {
            ["write_bytes"] = Chunk,
            ["writer_buffer_bytes"] = window,
            ["direct_writes"] = pipe.DirectWrites,
        });
    }

    /// <summary>
    /// md: each CPU runs a worker on its own memory disk: sequential 64 KiB writes then reads of
    /// the whole disk, or random 4 KiB writes and reads.
    /// </summary>
    private static PaperRow Md(Trial t, bool random)
    {
        var m = t.Machine;
        long diskBytes = t.Quick ? 8L << 20 : 32L << 20;
        long perWorker = random ? (t.Quick ? 8L << 20 : 128L << 20) : (t.Quick ? 16L << 20 : 512L << 20);
        int request = random ? Pte.PageSize : Chunk;
        var disks = new MemoryDisk[t.Cpus];
        var buffers = new ulong[t.Cpus];
        for (int c = 0; c < t.Cpus; c++)
        {
            int cpu = c;
            m.Run(cpu, () =>
            {
                disks[cpu] = MemoryDisk.Create(t.Kernel, diskBytes);
                buffers[cpu] = m.KernelMemory.Alloc(request);

                // Populate the disk so reads copy real pages, not zero-fill.
                for (long off = 0; off < diskBytes; off += request)
                {
                    Check(disks[cpu].Strategy(BioCommand.Write, off, request, buffers[cpu]), "md populate");
                }
            });
        }

        t.Begin();
        var workers = Enumerable.Range(0, t.Cpus).Select(cpu => m.StartThread($"md{cpu}", () =>
        {
            var rng = new Random(cpu + 1);
            long done = 0;
            long off = 0;
            bool write = true;
            while (done < perWorker)
            {
                if (random)
                {
                    off = rng.NextInt64(diskBytes / request) * request;
                }

                Check(disks[cpu].Strategy(write ? BioCommand.Write : BioCommand.Read, off, request, buffers[cpu]), "md request");
                done += request;
                if (random)
                {
                    write = !write;
                }
                else if ((off += request) == diskBytes)
                {
                    off = 0;
                    write = !write;
                }
            }
        }, cpu: cpu, bound: true)).ToArray();
        Trial.JoinAll(workers);
        t.End();
        long bytes = perWorker * t.Cpus;
        return t.Row(random ? "md-rand" : "md-seq", bytes, bytes / request, new Dictionary<string, object>
        {
            ["request_bytes"] = request,
            ["disk_bytes"] = diskBytes,
            ["workers"] = t.Cpus,
        });
    }

    /// <summary>
    /// sendfile of a file set that fits the sf_buf pool (hot) or is twice its size (cold) to a
    /// socket whose NIC runs on the other CPU; the page cache is warm and one pass runs before
    /// the measurement, so the hot case measures the steady state.
    /// </summary>
    private static PaperRow Sendfile(Trial t, bool hot)
    {
        var m = t.Machine;
        long fileBytes = hot ? Math.Min(4L << 20, Nsfbufs(t) * (long)Pte.PageSize / 2) : 2L * Nsfbufs(t) * Pte.PageSize;
        long total = hot ? (t.Quick ? 32L << 20 : 1L << 30) : (t.Quick ? fileBytes : 8 * fileBytes);
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

            Check(SfBufNative.Kernel.Sendfile.Send(t.Kernel, file, so, 0, fileBytes, default, out _), "warm-up sendfile");
            Check(so.WaitDrained(), "drain");
        });

        t.Begin();
        var sender = m.StartThread("sendfile", () =>
        {
            for (long sent = 0; sent < total; sent += fileBytes)
            {
                Check(SfBufNative.Kernel.Sendfile.Send(t.Kernel, file, so, 0, fileBytes, default, out long n), "sendfile");
                Require(n == fileBytes, "short sendfile");
            }

            Check(so.WaitDrained(), "drain");
        }, cpu: 0, bound: true);
        Trial.JoinAll(sender);
        t.End();
        nic.Stop();
        nic.Join(TimeSpan.FromMinutes(1));
        return t.Row(hot ? "sendfile-hot" : "sendfile-cold", total, total / Pte.PageSize, new Dictionary<string, object>
        {
            ["file_bytes"] = fileBytes,
            ["nsfbufs"] = Nsfbufs(t),
        });
    }

    /// <summary>execve of a real ELF file in a loop, one process per CPU.</summary>
    private static PaperRow Exec(Trial t)
    {
        var m = t.Machine;
        int perCpu = t.Quick ? 100 : 2000;
        if (!File.Exists(ExecImage))
        {
            return t.Row("exec", 0, 0, new Dictionary<string, object> { ["skipped"] = $"{ExecImage} is missing" });
        }

        t.Kernel.FileSystem.AddHostFile(ExecImage, ExecImage);
        m.Run(0, () => Check(SfBufNative.Kernel.Exec.Execve(t.Kernel, ExecImage, out _), "warm-up exec"));
        t.Begin();
        var workers = Enumerable.Range(0, t.Cpus).Select(cpu => m.StartThread($"exec{cpu}", () =>
        {
            for (int i = 0; i < perCpu; i++)
            {
                Check(SfBufNative.Kernel.Exec.Execve(t.Kernel, ExecImage, out _), "execve");
            }
        }, cpu: cpu, bound: true, vmspace: null)).ToArray();
        Trial.JoinAll(workers);
        t.End();
        return t.Row("exec", 0, perCpu * t.Cpus, new Dictionary<string, object> { ["image"] = ExecImage });
    }

    /// <summary>ptrace PT_READ_D/PT_WRITE_D pairs against a target, one tracer per CPU.</summary>
    private static PaperRow PtraceWords(Trial t)
    {
        var m = t.Machine;
        int perCpu = t.Quick ? 20_000 : 200_000;
        var (target, tracer) = PtraceSetup(t, 16);
        t.Begin();
        var workers = Enumerable.Range(0, t.Cpus).Select(cpu => m.StartThread($"tracer{cpu}", () =>
        {
            for (int i = 0; i < perCpu; i += 2)
            {
                ulong va = UserBase + (ulong)(cpu * 8 * Pte.PageSize) + (ulong)((i * 8) % (8 * Pte.PageSize));
                Check(tracer.PokeWord(target, va, (ulong)i), "poke");
                Check(tracer.PeekWord(target, va, out ulong v), "peek");
                Require(v == (ulong)i, "peek returned another value than poked");
            }
        }, cpu: cpu, bound: true)).ToArray();
        Trial.JoinAll(workers);
        t.End();
        return t.Row("ptrace-word", 0, (long)perCpu * t.Cpus, new Dictionary<string, object> { ["word_bytes"] = 8 });
    }

    /// <summary>ptrace PIOD_READ_D/PIOD_WRITE_D of whole pages, one tracer per CPU.</summary>
    private static PaperRow PtracePages(Trial t)
    {
        var m = t.Machine;
        int perCpu = t.Quick ? 4000 : 40_000;
        var (target, tracer) = PtraceSetup(t, 16);
        var spaces = new VmSpace[t.Cpus];
        m.Run(0, () =>
        {
            for (int c = 0; c < t.Cpus; c++)
            {
                spaces[c] = m.CreateVmSpace();
                spaces[c].MapAnonymous(UserBase, Pte.PageSize);
            }
        });
        t.Begin();
        var workers = Enumerable.Range(0, t.Cpus).Select(cpu => m.StartThread($"tracer{cpu}", () =>
        {
            for (int i = 0; i < perCpu; i++)
            {
                ulong va = UserBase + ((ulong)((cpu * 8) + (i % 8)) << Pte.PageShift);
                int error = i % 2 == 0
                    ? tracer.WriteMemory(target, va, UserBase, Pte.PageSize, out long moved)
                    : tracer.ReadMemory(target, va, UserBase, Pte.PageSize, out moved);
                Check(error, "ptrace page transfer");
                Require(moved == Pte.PageSize, "short ptrace transfer");
            }
        }, cpu: cpu, bound: true, vmspace: spaces[cpu])).ToArray();
        Trial.JoinAll(workers);
        t.End();
        long ops = (long)perCpu * t.Cpus;
        return t.Row("ptrace-page", ops * Pte.PageSize, ops, new Dictionary<string, object> { ["transfer_bytes"] = Pte.PageSize });
    }

    private static (VmSpace Target, Ptrace Tracer) PtraceSetup(Trial t, int pages)
    {
        VmSpace target = null!;
        Ptrace tracer = null!;
        t.Machine.Run(0, () =>
        {
            target = t.Machine.CreateVmSpace();
            target.MapAnonymous(UserBase, (long)pages * Pte.PageSize);
            tracer = Ptrace.Create(t.Kernel);
        });
        return (target, tracer);
    }

    /// <summary>Vnode-pager page-in: evict a file's pages, then read it through the page cache; one file per CPU.</summary>
    private static PaperRow Vnode(Trial t)
    {
        var m = t.Machine;
        long fileBytes = t.Quick ? 4L << 20 : 16L << 20;
        int passes = t.Quick ? 2 : 8;
        var files = new Vnode[t.Cpus];
        var sinks = new ulong[t.Cpus];
        var rng = new Random(3);
        for (int c = 0; c < t.Cpus; c++)
        {
            var contents = new byte[fileBytes];
            rng.NextBytes(contents);
            files[c] = t.Kernel.FileSystem.AddFile($"file{c}", contents);
        }

        m.Run(0, () =>
        {
            for (int c = 0; c < t.Cpus; c++)
            {
                sinks[c] = m.KernelMemory.Alloc(Chunk);
            }
        });
        long pagesBefore = t.Kernel.PagesIn;
        t.Begin();
        var workers = Enumerable.Range(0, t.Cpus).Select(cpu => m.StartThread($"reader{cpu}", () =>
        {
            for (int pass = 0; pass < passes; pass++)
            {
                VnodePager.Evict(t.Kernel, files[cpu]);
                for (long off = 0; off < fileBytes; off += Chunk)
                {
                    Check(VnodePager.Read(t.Kernel, files[cpu], new Uio(sinks[cpu], Chunk, UioSegment.SystemSpace, UioDirection.Read, off)), "vnode read");
                }
            }
        }, cpu: cpu, bound: true)).ToArray();
        Trial.JoinAll(workers);
        t.End();
        long bytes = fileBytes * passes * t.Cpus;
        return t.Row("vnode", bytes, t.Kernel.PagesIn - pagesBefore, new Dictionary<string, object>
        {
            ["file_bytes"] = fileBytes,
            ["passes"] = passes,
            ["ops_are"] = "page-ins",
        });
    }

    /// <summary>
    /// The LRU cliff: private alloc/free cycling over a working set of K pages, for K below and
    /// above nsfbufs; one row per K with the hit rate.
    /// </summary>
    private static List<PaperRow> Lru(Trial t)
    {
        var m = t.Machine;
        int n = Nsfbufs(t);
        double[] fractions = t.Quick ? [0.5, 0.95, 1.05, 2.0] : [0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0];
        int passes = t.Quick ? 2 : 5;
        var pages = new VmPage[2 * n];
        for (int i = 0; i < pages.Length; i++)
        {
            pages[i] = m.Physical.Alloc(AllocFlags.Wired);
        }

        var rows = new List<PaperRow>();
        foreach (double f in fractions)
        {
            int k = (int)Math.Round(f * n);
            var sfbufs = t.Kernel.SfBufs;
            m.Run(0, () => Cycle(m, sfbufs, pages, k, 1)); // warm-up pass
            t.Begin();
            m.Run(0, () => Cycle(m, sfbufs, pages, k, passes));
            t.End();
            var row = t.Row("lru", 0, (long)k * passes, new Dictionary<string, object>
            {
                ["working_set_pages"] = k,
                ["nsfbufs"] = n,
                ["pool_pages"] = t.Kernel.SfBufs.Stats().Nsfbufs,
                ["fraction_of_pool"] = f,
            });
            long hits = row["sfbuf_hits"];
            long misses = row["sfbuf_misses"];
            var withRate = new Dictionary<string, object>(row.Params)
            {
                ["hit_rate"] = hits + misses == 0 ? "n/a (no mapping cache)" : hits / (double)(hits + misses),
            };
            rows.Add(row with { Params = withRate });
        }

        return rows;
    }

    private static void Cycle(Machine m, SfBufMapper sfbufs, VmPage[] pages, int k, int passes)
    {
        var td = KernelThread.Current;
        for (int pass = 0; pass < passes; pass++)
        {
            for (int i = 0; i < k; i++)
            {
                td.SchedPin();
                var sf = sfbufs.Alloc(pages[i], SfBufFlags.CpuPrivate);
                m.CurrentCpu.ReadUInt64(sfbufs.Kva(sf));
                sfbufs.Free(sf);
                td.SchedUnpin();
            }
        }
    }

    /// <summary>Raw memcpy of the pipe experiment's bytes in 64 KiB chunks: the physical limit for one copy.</summary>
    private static PaperRow Memcpy(Trial t)
    {
        long total = PipeBytes(t);
        byte* src = (byte*)NativeMemory.AlignedAlloc(Chunk, 4096);
        byte* dst = (byte*)NativeMemory.AlignedAlloc(Chunk, 4096);
        try
        {
            new Span<byte>(src, Chunk).Fill(0x5a);
            t.Begin();
            for (long done = 0; done < total; done += Chunk)
            {
                Buffer.MemoryCopy(src, dst, Chunk, Chunk);
            }

            t.End();
            Require(dst[Chunk - 1] == 0x5a, "memcpy did not copy");
        }
        finally
        {
            NativeMemory.AlignedFree(src);
            NativeMemory.AlignedFree(dst);
        }

        return t.Row("memcpy", total, total / Chunk, new Dictionary<string, object>
        {
            ["copy_bytes"] = Chunk,
            ["note"] = "strategy-independent baseline",
        });
    }

    private static void Check(int errno, string what)
    {
        if (errno != Errno.OK)
        {
            throw new InvalidOperationException($"{what} failed with errno {errno}");
        }
    }

    private static void Require(bool condition, string what)
    {
        if (!condition)
        {
            throw new InvalidOperationException(what);
        }
    }
}
