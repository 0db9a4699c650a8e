using Native.SfBufNative;

namespace Native.Perf.Paper;

/// <summary>
/// The exact relations every trial's counts must satisfy. Common to every experiment and every
/// strategy (peers included): no stale and no latent stale access (checked trials); every kernel
/// PTE write is a page of a mapping the mechanism recorded (<c>pte_writes = mapped_pages</c>), so a
/// mapping made without being counted fails here; every shootdown target got an IPI or was
/// deferred idle, no round targets more CPUs than there are others, and a uniprocessor shoots
/// nothing down. Then what the strategy's registry entry declares (<see cref="SfBufStrategyInfo"/>),
/// never its name: a strategy that needs the direct map maps nothing; one that maps per use
/// (<c>original</c>) unmaps everything it maps and on SMP sends exactly the rounds its kernel paths
/// imply (<see cref="Experiment.OriginalRounds"/>), each a broadcast to N-1 CPUs, so IPIs = rounds ×
/// (N-1) less idle deferrals; every other one makes one mapping per miss; one that never unmaps
/// clears no PTE; one whose private users shoot nothing down sends no shootdown and no IPI in an
/// experiment of private users; one that declares the counter of its shootdowns sends, on SMP,
/// exactly those. Then the relations of the mechanisms' own counters, wherever published
/// (<see cref="CheckMechanismCounters"/>), and each experiment's own relations
/// (<see cref="Experiment.Relations"/>).
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

        var info = SfBufMapper.Describe(m.Strategy);
        long rounds = m["shootdowns"];
        long targets = m["ipi_targets"];
        Expect(m["stale_accesses"] == 0, $"{m["stale_accesses"]} stale accesses");
        Expect(m["latent_stale_accesses"] == 0, $"{m["latent_stale_accesses"]} latent stale accesses");
        Expect(m["pte_writes"] == m["mapped_pages"],
            $"{m["pte_writes"]} kernel PTE writes but {m["mapped_pages"]} pages of recorded mappings (a mapping made without being counted?)");
        if (m.Backend == PaperRow.HostBackend)
        {
            // The host's MMU: the host kernel shoots down, so no simulated IPI is sent; instead
            // every kernel PTE write is one host mmap, and the direct map and sf_buf's private
            // users never unmap.
            Expect(m["ipis_sent"] == 0, $"{m["ipis_sent"]} simulated IPIs on the host backend");
            Expect(m["host_maps"] == m["pte_writes"], $"{m["host_maps"]} host mmaps for {m["pte_writes"]} kernel PTE writes");
            Expect(m["host_unmaps"] <= m["pte_clears"], $"{m["host_unmaps"]} host unmaps for {m["pte_clears"]} kernel PTE clears");
            Expect(!info.NeedsDirectMap || m["host_remaps"] == 0, $"the direct map made {m["host_remaps"]} host remaps");
            Expect(!info.NeverUnmaps || m["host_unmaps"] == 0, $"a strategy that never removes a mapping unmapped {m["host_unmaps"]} times");
        }
        else if (m.Shootdown == PaperRow.BroadcastShootdown)
        {
            // Broadcast hardware: no IPI at all, one completion wait per round, every target named.
            targets = m["broadcast_targets"];
            Expect(m["ipis_sent"] == 0 && m["ipi_targets"] == 0, $"{m["ipis_sent"]} IPIs sent to {m["ipi_targets"]} targets with broadcast shootdowns");
            Expect(m["broadcast_syncs"] == rounds, $"{m["broadcast_syncs"]} completion waits for {rounds} broadcast shootdowns");
            Expect(m["idle_targets_deferred"] <= targets, $"{m["idle_targets_deferred"]} idle targets deferred of {targets} targets");
        }
        else
        {
            Expect(m["ipis_sent"] + m["idle_targets_deferred"] == targets,
                $"{m["ipis_sent"]} IPIs sent + {m["idle_targets_deferred"]} idle targets deferred != {targets} targets");
        }

        Expect(targets <= rounds * (m.Cpus - 1), $"{targets} shootdown targets in {rounds} rounds on {m.Cpus} CPUs");

        if (info.NeedsDirectMap)
        {
            Expect(m["mappings"] == 0 && m["pte_writes"] == 0 && rounds == 0,
                $"the direct map made {m["mappings"]} mappings, wrote {m["pte_writes"]} kernel PTEs and sent {rounds} shootdowns");
        }
        else if (info.MapsPerUse)
        {
            Expect(m["pte_clears"] == m["mapped_pages"], $"{m["pte_clears"]} PTEs cleared for {m["mapped_pages"]} mapped (each mapping is removed again)");
            if (m.Cpus > 1)
            {
                if (experiment.OriginalRounds(m) is var expected && expected >= 0)
                {
                    Expect(rounds == expected, $"{rounds} shootdown rounds for {m["mappings"]} mappings (expected {expected})");
                }

                Expect(targets == rounds * (m.Cpus - 1), $"{targets} targets in {rounds} broadcast rounds (expected {rounds * (m.Cpus - 1)}): IPIs = rounds x (N-1) less idle deferrals");
            }
        }
        else
        {
            long restores = m["kmap_local.restores"];
            Expect(m["mappings"] == m["sfbuf_misses"] + restores,
                $"{m["mappings"]} mappings for {m["sfbuf_misses"]} sf_buf misses{(restores > 0 ? $" and {restores} kmap_local restores" : string.Empty)} (one each)");
        }

        if (m.Cpus == 1)
        {
            Expect(rounds == 0, $"{rounds} shootdowns on a uniprocessor");
        }

        if (info.NeverUnmaps)
        {
            Expect(m["pte_clears"] == 0, $"{m["pte_clears"]} PTEs cleared (the strategy never removes a mapping: a reused slot's PTE is overwritten)");
        }

        if (info.PrivateShootdowns == SfBufShootdowns.None && experiment.PrivateMappings)
        {
            Expect(rounds == 0 && m["ipis_sent"] == 0, $"private mappings sent {rounds} shootdowns and {m["ipis_sent"]} IPIs where the algorithm sends none");
        }

        if (info.ShootdownCounter is { } counter && m.Cpus > 1)
        {
            Expect(rounds == m[counter], $"{rounds} shootdowns but {m[counter]} {counter} (the strategy's only shootdowns)");
        }

        CheckMechanismCounters(m, experiment, Expect);

        problems.AddRange(experiment.Relations(m).Select(p => $"{where}: {p}"));
        return problems;
    }

    /// <summary>
    /// The relations of the mechanisms' own counters, checked wherever a strategy publishes them
    /// (each counter is a mechanism's, whichever strategy uses it):
    /// <list type="bullet">
    /// <item>epoch-cache's fallback (<see cref="EpochCacheMapper.DetailFallbackShootdowns"/>): one PTE
    /// clear per retired slot and nothing else unmapped; the fallback is the only shootdown, one round
    /// each, so without it not one IPI, and a round goes to at most the N-1 other CPUs;</item>
    /// <item>emap's writers (<c>emap.kenter_shootdowns</c>): the only shootdowns are the
    /// <c>pmap_update</c>s that remove writers' used <c>pmap_kenter_pa</c> mappings, at most one per
    /// writer's mapping (readers' emap mappings cause none: consumers flush their own TLB);</item>
    /// <item>the kmap pool (<c>pkmap.global_flushes</c>): at most one global flush per wrap of the clock
    /// hand, so between two flushes at least <c>LAST_PKMAP</c> minus the slots in use new mappings,
    /// <c>(flushes - 1) x (LAST_PKMAP - peak in use) &lt;= new mappings</c>; and the global flush is
    /// its only shootdown;</item>
    /// <item>lwbuf (<c>lwbuf.set_global_syncs</c>): every shootdown is an <c>lwbuf_set_global</c>, one
    /// per shared allocation on SMP; private users none;</item>
    /// <item>emap's consumers (<c>emap.consume_flushes</c>): every mapping flush is a consume or a
    /// switch flush;</item>
    /// <item>kmap_local (<c>kmap_local.saves</c>): every map saved at a switch-out is restored at the
    /// switch-in.</item>
    /// </list>
    /// </summary>
    private static void CheckMechanismCounters(Measurement m, Experiment experiment, Action<bool, string> expect)
    {
        long rounds = m["shootdowns"];
        if (m.Counters.TryGetValue(EpochCacheMapper.DetailFallbackShootdowns, out long fallbacks))
        {
            expect(m["pte_clears"] == m["sfbuf_recycles"],
                $"{m["pte_clears"]} PTEs cleared for {m["sfbuf_recycles"]} retired slots (retiring is the only unmap)");
            expect(rounds == fallbacks, $"{rounds} shootdowns but {fallbacks} epoch fallbacks (the fallback is the only shootdown)");
            expect(fallbacks > 0 || m["ipis_sent"] == 0, $"{m["ipis_sent"]} IPIs sent without an epoch fallback");
            expect(m["ipis_sent"] <= fallbacks * (m.Cpus - 1), $"{m["ipis_sent"]} IPIs for {fallbacks} fallbacks on {m.Cpus} CPUs");
        }

        if (m.Counters.TryGetValue("emap.kenter_shootdowns", out long kenterShootdowns))
        {
            expect(rounds == kenterShootdowns, $"{rounds} shootdowns but {kenterShootdowns} removals of writers' used kernel mappings (emap itself sends none)");
            expect(kenterShootdowns <= m["emap.kenter_maps"], $"{kenterShootdowns} kremove shootdowns for {m["emap.kenter_maps"]} writers' mappings");
            expect(m["ipis_sent"] <= kenterShootdowns * (m.Cpus - 1), $"{m["ipis_sent"]} IPIs for {kenterShootdowns} kremove shootdowns on {m.Cpus} CPUs");
        }

        if (m.Counters.TryGetValue("pkmap.global_flushes", out long flushes))
        {
            long lastPkmap = m["pkmap.last_pkmap"], peak = m["pkmap.peak_in_use"], newMappings = m["pkmap.new_mappings"];
            expect(flushes <= m["pkmap.wraps"], $"{flushes} global flushes in {m["pkmap.wraps"]} wraps of the clock hand");
            expect(peak >= lastPkmap || flushes <= 1 || (flushes - 1) * (lastPkmap - peak) <= newMappings,
                $"{flushes} global flushes for {newMappings} new mappings (LAST_PKMAP {lastPkmap}, at most {peak} in use)");
            expect(rounds == (m.Cpus > 1 ? flushes : 0), $"{rounds} shootdowns for {flushes} global pkmap flushes (the flush is kmap's only shootdown)");
        }

        if (m.Counters.TryGetValue("lwbuf.set_global_syncs", out long syncs))
        {
            expect(rounds == syncs, $"{rounds} shootdowns but {syncs} lwbuf_set_global invalidations");
            expect(syncs == (m.Cpus > 1 ? m["lwbuf.shared_allocs"] : 0),
                $"{syncs} cross-CPU invalidations for {m["lwbuf.shared_allocs"]} shared allocations (expected one each on SMP, none on a uniprocessor)");
            if (experiment.PrivateMappings)
            {
                expect(syncs == 0, $"private users caused {syncs} cross-CPU invalidations");
            }
        }

        if (m.Counters.TryGetValue("emap.consume_flushes", out long consumeFlushes))
        {
            long switchFlushes = m["emap.switch_flushes"];
            expect(m["mapping_flushes"] == consumeFlushes + switchFlushes,
                $"{m["mapping_flushes"]} mapping flushes for {consumeFlushes} consume and {switchFlushes} switch flushes (the flush is emap's only invalidation)");
        }

        if (m.Counters.TryGetValue("kmap_local.saves", out long saves))
        {
            long restores = m["kmap_local.restores"];
            expect(saves == restores, $"{saves} kmap_local maps saved at switch-out, {restores} restored");
        }
    }
}
