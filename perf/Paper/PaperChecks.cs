using Native.SfBufNative;

namespace Native.Perf.Paper;

/// <summary>
/// The exact relations every trial's counts must satisfy. Common to every experiment and every
/// strategy (peers included): no stale and no latent stale access (checked trials); every kernel
/// PTE write is a page of a mapping the mechanism recorded (<c>pte_writes = mapped_pages</c>), so a
/// mapping made without being counted fails here; every shootdown target got an IPI or was
/// deferred idle, and no round targets more CPUs than there are others. Per strategy: the direct map maps nothing; <c>original</c>
/// unmaps everything it maps and on SMP sends exactly the rounds its mechanisms imply
/// (<see cref="Experiment.OriginalRounds"/>), each a broadcast to N-1 CPUs, so IPIs = rounds × (N-1)
/// less idle deferrals; <c>sfbuf-i386</c> maps once per miss, never unmaps, and sends nothing for
/// private users. Then each experiment's own relations (<see cref="Experiment.Relations"/>).
/// </summary>
internal static class PaperChecks
{
    /// <summary>The violations in <paramref name="m"/>, each naming the trial; empty when every relation holds.</summary>
    public static List<string> Check(Measurement m)
    {
        ArgumentNullException.ThrowIfNull(m);
        var experiment = Experiments.Get(m.Experiment);
        string where = $"{m.Experiment}{(m.Point.Length > 0 ? $"[{m.Point}]" : string.Empty)}/{m.Strategy}/{m.Cpus}cpu{(m.Checked ? " (checked)" : string.Empty)}";
        var problems = new List<string>();
        void Expect(bool holds, string what)
        {
            if (!holds)
            {
                problems.Add($"{where}: {what}");
            }
        }

        long rounds = m["shootdowns"];
        long targets = m["ipi_targets"];
        Expect(m["stale_accesses"] == 0, $"{m["stale_accesses"]} stale accesses");
        Expect(m["latent_stale_accesses"] == 0, $"{m["latent_stale_accesses"]} latent stale accesses");
        Expect(m["pte_writes"] == m["mapped_pages"],
            $"{m["pte_writes"]} kernel PTE writes but {m["mapped_pages"]} pages of recorded mappings (a mapping made without being counted?)");
        Expect(m["ipis_sent"] + m["idle_targets_deferred"] == targets,
            $"{m["ipis_sent"]} IPIs sent + {m["idle_targets_deferred"]} idle targets deferred != {targets} targets");
        Expect(targets <= rounds * (m.Cpus - 1), $"{targets} shootdown targets in {rounds} rounds on {m.Cpus} CPUs");

        switch (m.Strategy)
        {
            case SfBufMapper.Amd64:
                Expect(m["mappings"] == 0 && m["pte_writes"] == 0 && rounds == 0,
                    $"the direct map made {m["mappings"]} mappings, wrote {m["pte_writes"]} kernel PTEs and sent {rounds} shootdowns");
                break;
            case SfBufMapper.Original:
                Expect(m["pte_clears"] == m["mapped_pages"], $"{m["pte_clears"]} PTEs cleared for {m["mapped_pages"]} mapped (each mapping is removed again)");
                if (m.Cpus == 1)
                {
                    Expect(rounds == 0, $"{rounds} shootdowns on a uniprocessor");
                }
                else
                {
                    long expected = experiment.OriginalRounds(m);
                    Expect(rounds == expected, $"{rounds} shootdown rounds for {m["mappings"]} mappings (expected {expected})");
                    Expect(targets == rounds * (m.Cpus - 1), $"{targets} targets in {rounds} broadcast rounds (expected {rounds * (m.Cpus - 1)}): IPIs = rounds x (N-1) less idle deferrals");
                }

                break;
            case SfBufMapper.I386:
                Expect(m["mappings"] == m["sfbuf_misses"], $"{m["mappings"]} mappings for {m["sfbuf_misses"]} sf_buf misses (one each)");
                Expect(m["pte_clears"] == 0, $"{m["pte_clears"]} PTEs cleared (inactive sf_bufs keep their mapping)");
                if (experiment.PrivateMappings)
                {
                    Expect(rounds == 0 && m["ipis_sent"] == 0, $"private mappings sent {rounds} shootdowns and {m["ipis_sent"]} IPIs");
                }

                break;
        }

        problems.AddRange(experiment.Relations(m).Select(p => $"{where}: {p}"));
        return problems;
    }
}
