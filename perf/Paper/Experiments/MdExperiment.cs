using Native.PageTable;
using Native.SfBufNative.Kernel;

namespace Native.Perf.Paper;

/// <summary>
/// md: each CPU runs a worker on its own memory disk: sequential 64 KiB writes then reads of
/// the whole disk, or random 4 KiB writes and reads.
/// </summary>
internal sealed class MdExperiment(bool random) : Experiment
{
    public override string Name => random ? "md-rand" : "md-seq";

    public override string Workload => random
        ? "a memory disk per CPU: 4 KiB random reads and writes (private mappings)"
        : "a memory disk per CPU: 64 KiB sequential reads and writes (private mappings)";

    public override string Baseline =>
        "no historical md path is known (the paper's md baseline was not recovered): the generic per-use mapping, a `kernel_map` page (`kmem_alloc_nofault`) with `pmap_qenter`/`pmap_qremove` per page";

    public override bool PrivateMappings => true;

    public override IReadOnlyList<Measurement> Run(Trial t)
    {
        var m = t.Machine;
        int request = random ? Pte.PageSize : Chunk;
        long diskBytes = t.Share(t.Pick(64L << 20, 16L << 20, 2L << 20), Chunk);
        long perWorker = t.Share(random ? t.Pick(256L << 20, 16L << 20, 2L << 20) : t.Pick(1L << 30, 32L << 20, 4L << 20), Chunk);
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
        return [t.Measure(Name, bytes, bytes / request, new Dictionary<string, object>
        {
            ["request_bytes"] = request,
            ["disk_bytes"] = diskBytes,
            ["workers"] = t.Cpus,
        })];
    }

    public override IEnumerable<string> Relations(Measurement m) =>
        MapsPerUse(m)
            ? Expect(m["mappings"] == m.Bytes / Pte.PageSize, $"{m["mappings"]} mappings for {m.Bytes / Pte.PageSize} pages moved (one each)")
            : [];
}
