namespace Native.PageTable;

/// <summary>
/// The modelled cost of the ephemeral-mapping machinery alone: the counts of a run priced by a
/// <see cref="CostModel"/>, summed over CPUs, with the shootdown rule <see cref="CostModel"/>
/// states (the same for running and idle targets). It depends only on counts, so wherever the
/// counts are deterministic so is the cost, whatever the host was doing and however many host
/// cores the simulated CPUs shared.
/// <para>
/// Priced: kernel PTE stores of ephemeral mappings (<c>pte_writes + pte_clears</c>; kmem is
/// permanent and excluded); the initiator's own <c>invlpg</c>s and full flushes (those done for
/// a shootdown are priced with the shootdown) and the non-global flushes a mechanism does for its
/// own mappings (emap's consume); per shootdown round the round trip (delivery +
/// handler entry), per target the send, the handler and the invalidation asked for; per broadcast
/// round (<see cref="ShootdownMechanism.Broadcast"/>) its instructions and its completion wait
/// and nothing for the targets; and the page
/// walks of TLB misses on ephemeral-mapping addresses. Not priced: address-space switches and
/// user or kmem TLB misses, which are not the mapping machinery's.
/// </para>
/// </summary>
/// <param name="PteNs">PTE stores.</param>
/// <param name="InvalidationNs">Local invalidations and flushes by the CPU that changed the mapping, and mapping flushes by the CPU that uses it.</param>
/// <param name="ShootdownNs">Shootdown rounds: sends, round trips, target handlers and target invalidations; broadcast instructions and completion waits.</param>
/// <param name="WalkNs">Page walks after misses on ephemeral mappings.</param>
public sealed record MappingCost(double PteNs, double InvalidationNs, double ShootdownNs, double WalkNs)
{
    /// <summary>The whole modelled cost in nanoseconds.</summary>
    public double TotalNs => PteNs + InvalidationNs + ShootdownNs + WalkNs;

    /// <summary>The modelled cost of the events in <paramref name="counts"/> under <paramref name="profile"/>.</summary>
    public static MappingCost Of(CounterSnapshot counts, CostModel profile)
    {
        ArgumentNullException.ThrowIfNull(counts);
        return Of(c => counts[c], profile);
    }

    /// <summary>The modelled cost of the events <paramref name="count"/> reports, under <paramref name="profile"/>.</summary>
    public static MappingCost Of(Func<Counter, long> count, CostModel profile)
    {
        ArgumentNullException.ThrowIfNull(count);
        ArgumentNullException.ThrowIfNull(profile);
        long ownInvalidations = count(Counter.LocalInvalidations) - count(Counter.IpiInvalidations);
        long ownFlushes = count(Counter.FullFlushes) - count(Counter.IpiFlushes);
        // A broadcast round has exactly one completion wait; the rest were IPI rounds.
        long broadcastRounds = count(Counter.BroadcastSyncs);
        long rounds = count(Counter.ShootdownRounds) - broadcastRounds;
        long targets = count(Counter.IpiTargets);
        return new MappingCost(
            PteNs: profile.PteWriteNs * (count(Counter.KernelPteWrites) + count(Counter.KernelPteClears)),
            InvalidationNs: (profile.LocalInvalidateNs * ownInvalidations) + (profile.FullFlushNs * (ownFlushes + count(Counter.MappingFlushes))),
            ShootdownNs: ((profile.IpiDeliveryNs + profile.IpiHandlerNs) * rounds)
                + ((profile.IpiSendNs + profile.IpiHandlerNs) * targets)
                + (profile.LocalInvalidateNs * count(Counter.ShootdownTargetPages))
                + (profile.FullFlushNs * count(Counter.ShootdownTargetFlushes))
                + (profile.BroadcastIssueNs * count(Counter.BroadcastInvalidations))
                + (profile.BroadcastSyncNs * broadcastRounds),
            WalkNs: profile.TlbMissWalkNs * count(Counter.MappingTlbMisses));
    }

    /// <summary>This cost divided by <paramref name="units"/> (MiB or operations).</summary>
    public MappingCost Per(double units) => units <= 0
        ? throw new ArgumentOutOfRangeException(nameof(units), units, "a cost is divided by a positive number of units")
        : new MappingCost(PteNs / units, InvalidationNs / units, ShootdownNs / units, WalkNs / units);
}
