using System.Diagnostics;

namespace Native.PageTable;

/// <summary>
/// Simulated invalidation fences: busy-wait time charged on top of what the simulation really
/// costs (the cross-core handshake already pays for real cache-line transfers). Every result
/// names the profile that produced it.
/// </summary>
/// <param name="Name">Profile name printed next to every result.</param>
/// <param name="LocalInvalidateNs">One <c>invlpg</c> on the local CPU.</param>
/// <param name="FullFlushNs">A full TLB flush (CR3 reload, or a flush including global entries).</param>
/// <param name="TlbMissWalkNs">A page walk on a TLB miss.</param>
/// <param name="PteWriteNs">One kernel PTE store.</param>
/// <param name="IpiSendNs">Sending one IPI (charged to the initiator per target).</param>
/// <param name="IpiDeliveryNs">Latency before a target can see the IPI (the initiator waits at least this long).</param>
/// <param name="IpiHandlerNs">Interrupt entry and exit on the target, per IPI serviced.</param>
/// <param name="Source">Where the numbers come from.</param>
public sealed record CostModel(
    string Name,
    double LocalInvalidateNs,
    double FullFlushNs,
    double TlbMissWalkNs,
    double PteWriteNs,
    double IpiSendNs,
    double IpiDeliveryNs,
    double IpiHandlerNs,
    string Source)
{
    /// <summary>No charges: functional tests and counting experiments.</summary>
    public static CostModel Zero { get; } = new("zero", 0, 0, 0, 0, 0, 0, 0, "no simulated charges; only the real cost of the simulation");

    /// <summary>
    /// Literature values for an x86 SMP machine, each with its source:
    /// <list type="bullet">
    /// <item><c>invlpg</c> 100 ns: "on the order of 100 cycles plus the refill miss" (N. Amit,
    /// "Optimizing the TLB Shootdown Algorithm with Page Access Tracking", USENIX ATC 2017).</item>
    /// <item>Full flush 400 ns: a CR3 reload plus refilling a 64-entry TLB, derived as 4 × invlpg.</item>
    /// <item>Page walk 30 ns: a four-level walk hitting the caches (about 60-100 cycles).</item>
    /// <item>PTE write 5 ns: one store to a cached line.</item>
    /// <item>IPI send 300 ns + delivery 1000 ns + handler 700 ns = a 2 us round trip: shootdown round
    /// trips are quoted at 1-3 us (Amit, ATC 2017; https://unseel.com/cs/tlb-shootdown).</item>
    /// </list>
    /// <c>perf calibrate</c> measures a <c>host</c> profile instead.
    /// </summary>
    public static CostModel Default { get; } = new("default", 100, 400, 30, 5, 300, 1000, 700,
        "invlpg 100 ns ('~100 cycles plus the refill miss', Amit, USENIX ATC 2017); full flush 400 ns (4 x invlpg, derived); "
        + "walk 30 ns (four-level walk in cache); PTE write 5 ns (one cached store); IPI send 300 + delivery 1000 + handler 700 ns "
        + "= 2 us round trip (shootdowns quoted at 1-3 us: Amit, ATC 2017; unseel.com/cs/tlb-shootdown)");

    /// <summary>The built-in profiles by name.</summary>
    public static IReadOnlyDictionary<string, CostModel> Builtin { get; } = new Dictionary<string, CostModel>(StringComparer.Ordinal)
    {
        [Zero.Name] = Zero,
        [Default.Name] = Default,
    };

    /// <summary>Looks a built-in profile up by name.</summary>
    public static CostModel Named(string name) =>
        Builtin.TryGetValue(name, out var model)
            ? model
            : throw new ArgumentException($"unknown cost profile '{name}'; known: {string.Join(", ", Builtin.Keys)}", nameof(name));

    /// <summary>One line: the name and every charge.</summary>
    public override string ToString() =>
        $"{Name}: invlpg {LocalInvalidateNs} ns, flush {FullFlushNs} ns, walk {TlbMissWalkNs} ns, pte write {PteWriteNs} ns, "
        + $"ipi send {IpiSendNs} ns, delivery {IpiDeliveryNs} ns, handler {IpiHandlerNs} ns";
}

/// <summary>A <see cref="CostModel"/> converted once to <see cref="Stopwatch"/> ticks.</summary>
internal readonly struct CostTicks
{
    public readonly long LocalInvalidate;
    public readonly long FullFlush;
    public readonly long TlbMissWalk;
    public readonly long PteWrite;
    public readonly long IpiSend;
    public readonly long IpiDelivery;
    public readonly long IpiHandler;

    public CostTicks(CostModel model)
    {
        LocalInvalidate = ToTicks(model.LocalInvalidateNs);
        FullFlush = ToTicks(model.FullFlushNs);
        TlbMissWalk = ToTicks(model.TlbMissWalkNs);
        PteWrite = ToTicks(model.PteWriteNs);
        IpiSend = ToTicks(model.IpiSendNs);
        IpiDelivery = ToTicks(model.IpiDeliveryNs);
        IpiHandler = ToTicks(model.IpiHandlerNs);
    }

    private static long ToTicks(double ns)
    {
        if (ns < 0 || double.IsNaN(ns))
        {
            throw new ArgumentOutOfRangeException(nameof(ns), ns, "a cost must be zero or positive");
        }

        return (long)Math.Round(ns * Stopwatch.Frequency / 1e9);
    }

    /// <summary>Busy-waits <paramref name="ticks"/>; zero costs nothing but the branch.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public static void Charge(long ticks)
    {
        if (ticks > 0)
        {
            Spin(ticks);
        }
    }

    private static void Spin(long ticks)
    {
        long end = Stopwatch.GetTimestamp() + ticks;
        while (Stopwatch.GetTimestamp() < end)
        {
        }
    }
}
