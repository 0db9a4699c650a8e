namespace Native.PageTable;

/// <summary>White-box views for tests (internal; reached through InternalsVisibleTo). Call them on the CPU's own thread.</summary>
public sealed unsafe partial class Cpu
{
    /// <summary>True when this CPU's TLB holds an entry for the page of <paramref name="va"/>.</summary>
    internal bool TestHookTlbHolds(ulong va) => _tlb.Lookup(va >> Pte.PageShift) != null;

    /// <summary>Translations in the latent-staleness shadow.</summary>
    internal int TestHookShadowCount() => _shadow?.Count ?? 0;

    /// <summary>Empties the shadow without touching the TLB: the machine as it was with only the TLB oracle.</summary>
    internal void TestHookForgetShadow() => _shadow?.Clear();

    /// <summary>Exposure windows open on this CPU (0 outside checked mode).</summary>
    internal int TestHookOpenExposures() => Volatile.Read(ref _openWindows);

    /// <summary>Cost-model nanoseconds shootdowns deferred to this CPU and it has not paid yet.</summary>
    internal long TestHookOwedNanoseconds() => Volatile.Read(ref _shared->DeferredChargeNs);
}
