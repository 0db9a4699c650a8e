using Native.PageTable;
using Native.SfBufNative.Kernel;

namespace Native.Perf.Paper;

/// <summary>
/// A mixed workload in the spirit of a parallel kernel build (<c>make -j N</c>): on every CPU a
/// worker runs jobs, each one an <c>execve</c> of the compiler, a read of its source file from
/// the page cache, the page-in of a header evicted since, a write and read of its object file on
/// a memory disk, and its output through a pipe to a reader on the next CPU. Every mechanism the
/// paper converted runs at once on every CPU, so shootdowns meet busy targets.
/// </summary>
internal sealed class BuildExperiment : Experiment
{
    private const string Image = "/bin/true";
    private const int HeaderPages = 4;

    public override string Name => "build";

    public override string Workload =>
        "a parallel build's mix on every CPU: per job, execve, a cached 64 KiB source read, a 4-page header paged in, a 64 KiB object written and read on md, 64 KiB through a pipe to the next CPU";

    public override string Baseline => "each part as in its own experiment (exec, vnode-read, vnode-pagein, md-seq, pipe)";

    public override bool HasAllCpuForm => false;

    public override IReadOnlyList<Measurement> Run(Trial t)
    {
        var m = t.Machine;
        int jobs = (int)t.Share(t.Pick(4000, 200, 20));
        if (!File.Exists(Image))
        {
            throw new FileNotFoundException($"the build workload execs {Image}, which this host does not have", Image);
        }

        t.Kernel.FileSystem.AddHostFile(Image, Image);
        var rng = new Random(5);
        var sources = new Vnode[t.Cpus];
        var headers = new Vnode[t.Cpus];
        var disks = new MemoryDisk[t.Cpus];
        var buffers = new ulong[t.Cpus];
        var sinks = new ulong[t.Cpus];
        var pipes = new SfBufNative.Kernel.Pipe[t.Cpus];
        var workerSpaces = new VmSpace[t.Cpus];
        var readerSpaces = new VmSpace[t.Cpus];
        for (int c = 0; c < t.Cpus; c++)
        {
            var source = new byte[Chunk];
            rng.NextBytes(source);
            sources[c] = t.Kernel.FileSystem.AddFile($"src{c}.c", source);
            var header = new byte[HeaderPages * Pte.PageSize];
            rng.NextBytes(header);
            headers[c] = t.Kernel.FileSystem.AddFile($"hdr{c}.h", header);
        }

        m.Run(0, () =>
        {
            Check(Exec.Execve(t.Kernel, Image, out _), "warm-up exec");
            for (int c = 0; c < t.Cpus; c++)
            {
                disks[c] = MemoryDisk.Create(t.Kernel, 4 * Chunk);
                buffers[c] = m.KernelMemory.Alloc(Chunk);
                sinks[c] = m.KernelMemory.Alloc(Chunk);
                Check(VnodePager.Read(t.Kernel, sources[c], new Uio(sinks[c], Chunk, UioSegment.SystemSpace, UioDirection.Read, 0)), "source page-in");
                pipes[c] = SfBufNative.Kernel.Pipe.Create(t.Kernel);
                workerSpaces[c] = m.CreateVmSpace();
                workerSpaces[c].MapAnonymous(UserBase, Chunk);
                readerSpaces[c] = m.CreateVmSpace();
                readerSpaces[c].MapAnonymous(UserBase, Chunk);
            }
        });

        long pagesBefore = t.Kernel.PagesIn;
        t.Begin();
        var threads = new List<KernelThread>();
        for (int c = 0; c < t.Cpus; c++)
        {
            int cpu = c;
            threads.Add(m.StartThread($"make{cpu}", () =>
            {
                for (int j = 0; j < jobs; j++)
                {
                    // fork (a child space), exec the compiler there, then back to make's own space as
                    // the compiler exits; the job's pipe write is made from make's space.
                    var self = KernelThread.Current;
                    self.SwitchVmSpace(m.CreateVmSpace());
                    Check(Exec.Execve(t.Kernel, Image, out _), "execve");
                    var compiler = self.VmSpace;
                    self.SwitchVmSpace(workerSpaces[cpu]);
                    compiler?.Destroy();
                    Check(VnodePager.Read(t.Kernel, sources[cpu], new Uio(sinks[cpu], Chunk, UioSegment.SystemSpace, UioDirection.Read, 0)), "source read");
                    VnodePager.Evict(t.Kernel, headers[cpu]);
                    for (int i = 0; i < HeaderPages; i++)
                    {
                        Check(VnodePager.GetPage(t.Kernel, headers[cpu], i, out var page), "header page-in");
                        m.Physical.Unwire(page);
                    }

                    long off = j % 4 * (long)Chunk;
                    Check(disks[cpu].Strategy(BioCommand.Write, off, Chunk, buffers[cpu]), "object write");
                    Check(disks[cpu].Strategy(BioCommand.Read, off, Chunk, buffers[cpu]), "object read");
                    Check(pipes[cpu].Write(new Uio(UserBase, Chunk, UioSegment.UserSpace, UioDirection.Write)), "pipe write");
                }

                pipes[cpu].CloseWrite();
            }, cpu: cpu, bound: true, vmspace: workerSpaces[cpu]));
            threads.Add(m.StartThread($"as{cpu}", () =>
            {
                while (true)
                {
                    var uio = new Uio(UserBase, Chunk, UioSegment.UserSpace, UioDirection.Read);
                    Check(pipes[cpu].Read(uio), "pipe read");
                    if (uio.Resid == Chunk)
                    {
                        break;
                    }
                }
            }, cpu: (cpu + 1) % t.Cpus, bound: true, vmspace: readerSpaces[cpu]));
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
        long pagesIn = t.Kernel.PagesIn - pagesBefore;
        Require(pagesIn == (long)jobs * t.Cpus * HeaderPages, $"{pagesIn} page-ins, expected {HeaderPages} per job");
        return [t.Measure(Name, 0, (long)jobs * t.Cpus, new Dictionary<string, object>
        {
            ["image"] = Image,
            ["jobs_per_cpu"] = jobs,
            ["ops_are"] = "jobs",
        })];
    }

    /// <summary>A mix of mechanisms with different rounds per mapping: checked exactly in their own experiments.</summary>
    public override long OriginalRounds(Measurement m) => -1;
}
