using Native.SfBufNative.Kernel;

namespace Native.Perf.Paper;

/// <summary>execve of a real ELF file (the host's <c>/bin/true</c>) in a loop, one process per CPU.</summary>
/// <param name="image">The host file to exec.</param>
internal sealed class ExecExperiment(string image = "/bin/true") : Experiment
{
    private string Image => image;

    public override string Name => "exec";

    public override string Workload =>
        "`execve` of the host's `/bin/true` on each CPU: file pages mapped copy-on-write from the page cache; the header (shared) and the partial .data page (private) through ephemeral mappings";

    public override string Baseline =>
        "`exec_map_first_page` with `exec_map` KVA and `pmap_qenter`/`pmap_qremove` for the header; `elf_load_section`'s partial page through `exec_map` (`vm_map_find`, then `vm_map_remove`: one shootdown)";

    public override IReadOnlyList<Measurement> Run(Trial t)
    {
        var m = t.Machine;
        int perCpu = (int)t.Share(t.Pick(8000, 200, 20));
        if (!File.Exists(Image))
        {
            throw new FileNotFoundException($"the exec experiment execs {Image}, which this host does not have", Image);
        }

        t.Kernel.FileSystem.AddHostFile(Image, Image);
        int fragments = 0;
        m.Run(0, () =>
        {
            Check(Exec.Execve(t.Kernel, Image, out var warm), "warm-up exec");
            fragments = warm!.FragmentCopies;
        });
        t.Begin();
        var workers = Enumerable.Range(0, t.Cpus).Select(cpu => m.StartThread($"exec{cpu}", () =>
        {
            for (int i = 0; i < perCpu; i++)
            {
                Check(Exec.Execve(t.Kernel, Image, out _), "execve");
            }
        }, cpu: cpu, bound: true, vmspace: null)).ToArray();
        Trial.JoinAll(workers);
        t.End();
        return [t.Measure(Name, 0, perCpu * t.Cpus, new Dictionary<string, object>
        {
            ["image"] = Image,
            ["partial_pages"] = fragments,
        })];
    }

    /// <summary>The header: qenter and qremove (2); each partial page: one shootdown at vm_map_remove.</summary>
    public override long OriginalRounds(Measurement m) => (2 * m.Ops) + (m["mappings"] - m.Ops);

    public override IEnumerable<string> Relations(Measurement m)
    {
        long perExec = 1 + Convert.ToInt64(m.Params["partial_pages"], System.Globalization.CultureInfo.InvariantCulture);
        return MapsPerUse(m)
            ? Expect(m["mappings"] == m.Ops * perExec, $"{m["mappings"]} mappings for {m.Ops} execs ({perExec} each: the header and the partial pages)")
            : Expect(m["mappings"] <= m.Ops * perExec, $"{m["mappings"]} mappings for {m.Ops} execs (at most {perExec} each)");
    }
}
