using System.Globalization;
using Native.PageTable;
using Native.SfBufNative;

namespace Native.Perf.Paper;

/// <summary>
/// The LRU cliff: private alloc/free cycling over a working set of K pages, for K below and
/// above nsfbufs; one point per K with the hit rate.
/// </summary>
internal sealed class LruExperiment : Experiment
{
    public override string Name => "lru";

    public override string Workload => "private alloc/free cycling over K pages, K from 0.25 to 2 × `nsfbufs`: the hit-rate cliff";

    public override string Baseline => "the generic per-use mapping (`kernel_map` page, `pmap_qenter`/`pmap_qremove`): nothing is cached";

    public override bool PrivateMappings => true;

    public override IReadOnlyList<Measurement> Run(Trial t)
    {
        var m = t.Machine;
        int n = Nsfbufs(t);
        double[] fractions = t.Pick<double[]>([0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0], [0.5, 0.95, 1.05, 2.0], [0.5, 2.0]);
        int passes = t.Pick(5, 1, 1);
        var pages = new VmPage[2 * n];
        for (int i = 0; i < pages.Length; i++)
        {
            pages[i] = m.Physical.Alloc(AllocFlags.Wired);
        }

        var rows = new List<Measurement>();
        foreach (double f in fractions)
        {
            int k = (int)Math.Round(f * n);
            var sfbufs = t.Kernel.SfBufs;
            m.Run(0, () => Cycle(m, sfbufs, pages, k, 1)); // warm-up pass
            t.Begin();
            m.Run(0, () => Cycle(m, sfbufs, pages, k, passes));
            t.End();
            var row = t.Measure(Name, 0, (long)k * passes, new Dictionary<string, object>
            {
                ["working_set_pages"] = k,
                ["nsfbufs"] = n,
                ["pool_pages"] = t.Kernel.SfBufs.Stats().Nsfbufs,
                ["fraction_of_pool"] = f,
            }, point: f.ToString("0.##", CultureInfo.InvariantCulture));
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

    public override IEnumerable<string> Relations(Measurement m) =>
        MapsPerUse(m)
            ? Expect(m["mappings"] == m.Ops, $"{m["mappings"]} mappings for {m.Ops} allocations (one each)")
            : [];

    private static void Cycle(Machine m, SfBufMapper sfbufs, VmPage[] pages, int k, int passes)
    {
        var td = KernelThread.Current;
        for (int pass = 0; pass < passes; pass++)
        {
            for (int i = 0; i < k; i++)
            {
                td.SchedPin();
                var sf = sfbufs.Alloc(pages[i], SfBufFlags.CpuPrivate | SfBufFlags.ReadOnly);
                m.CurrentCpu.ReadUInt64(sfbufs.Kva(sf));
                sfbufs.Free(sf);
                td.SchedUnpin();
            }
        }
    }
}
