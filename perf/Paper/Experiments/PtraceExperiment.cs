using Native.PageTable;
using Native.SfBufNative.Kernel;

namespace Native.Perf.Paper;

/// <summary>
/// ptrace against a target process, one tracer per CPU, each on its own 8 pages of the target:
/// PT_WRITE_D/PT_READ_D word pairs, or PIOD_WRITE_D/PIOD_READ_D of whole pages.
/// </summary>
internal sealed class PtraceExperiment(bool pages) : Experiment
{
    private const int PagesPerTracer = 8;

    public override string Name => pages ? "ptrace-page" : "ptrace-word";

    public override string Workload => pages
        ? "page-sized `PIOD_WRITE_D`/`PIOD_READ_D` transfers (private, via `uiomove_fromphys`)"
        : "`PT_WRITE_D`/`PT_READ_D` pairs (private, via `uiomove_fromphys`)";

    public override string Baseline =>
        "`proc_rwmem` before 2004: a page of `kernel_map` KVA per call (`kmem_alloc_pageable`), `pmap_qenter`/`pmap_qremove` per page, `kmem_free`";

    public override bool PrivateMappings => true;

    public override IReadOnlyList<Measurement> Run(Trial t) => [pages ? Pages(t) : Words(t)];

    public override IEnumerable<string> Relations(Measurement m) =>
        MapsPerUse(m)
            ? Expect(m["mappings"] == m.Ops, $"{m["mappings"]} mappings for {m.Ops} transfers of one page each")
            : [];

    private static ulong TracerPage(int cpu, int i) => UserBase + ((ulong)((cpu * PagesPerTracer) + (i % PagesPerTracer)) << Pte.PageShift);

    private Measurement Words(Trial t)
    {
        var m = t.Machine;
        int perCpu = (int)t.Share(t.Pick(400_000, 40_000, 4_000), 2);
        var (target, tracer) = Setup(t);
        t.Begin();
        var workers = Enumerable.Range(0, t.Cpus).Select(cpu => m.StartThread($"tracer{cpu}", () =>
        {
            for (int i = 0; i < perCpu; i += 2)
            {
                ulong va = TracerPage(cpu, 0) + (ulong)(i * 8 % (PagesPerTracer * Pte.PageSize));
                Check(tracer.PokeWord(target, va, (ulong)i), "poke");
                Check(tracer.PeekWord(target, va, out ulong v), "peek");
                Require(v == (ulong)i, "peek returned another value than poked");
            }
        }, cpu: cpu, bound: true)).ToArray();
        Trial.JoinAll(workers);
        t.End();
        return t.Measure(Name, 0, (long)perCpu * t.Cpus, new Dictionary<string, object> { ["word_bytes"] = 8 });
    }

    private Measurement Pages(Trial t)
    {
        var m = t.Machine;
        int perCpu = (int)t.Share(t.Pick(320_000, 8_000, 800), 2);
        var (target, tracer) = Setup(t);
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
                ulong va = TracerPage(cpu, i);
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
        return t.Measure(Name, ops * Pte.PageSize, ops, new Dictionary<string, object> { ["transfer_bytes"] = Pte.PageSize });
    }

    /// <summary>The target maps 8 pages per tracer (tracer c uses pages 8c to 8c + 7), whatever the CPU count.</summary>
    private static (VmSpace Target, Ptrace Tracer) Setup(Trial t)
    {
        VmSpace target = null!;
        Ptrace tracer = null!;
        t.Machine.Run(0, () =>
        {
            target = t.Machine.CreateVmSpace();
            target.MapAnonymous(UserBase, (long)PagesPerTracer * t.Cpus * Pte.PageSize);
            tracer = Ptrace.Create(t.Kernel);
        });
        return (target, tracer);
    }
}
