using System.Runtime.InteropServices;

namespace Native.Perf.Paper;

/// <summary>Raw memcpy of the pipe experiment's bytes in 64 KiB chunks: the physical limit for one copy.</summary>
internal sealed unsafe class MemcpyExperiment : Experiment
{
    public override string Name => "memcpy";

    public override string Workload => "raw 64 KiB memcpy of the pipe's bytes: the physical limit for one copy (strategy-independent)";

    public override string Baseline => "none: no mapping is made by any strategy";

    public override IReadOnlyList<Measurement> Run(Trial t)
    {
        long total = t.Pick(1L << 30, 16L << 20, 2L << 20);
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

        return [t.Measure(Name, total, total / Chunk, new Dictionary<string, object>
        {
            ["copy_bytes"] = Chunk,
            ["note"] = "strategy-independent baseline",
        })];
    }

    public override IEnumerable<string> Relations(Measurement m) =>
        Expect(m["mappings"] == 0 && m["pte_writes"] == 0 && m["shootdowns"] == 0, "memcpy made mappings");
}
