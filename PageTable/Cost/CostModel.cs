using System.Diagnostics;

namespace Native.PageTable;

/// <summary>
/// Simulated invalidation fences: busy-wait time charged on top of what the simulation really
/// costs (the cross-core handshake already pays for real cache-line transfers). Every result
/// names the profile that produced it.
/// <para>
/// The rule for a shootdown round with T targets, whether each target is running or idle:
/// the initiator pays <see cref="IpiSendNs"/> per target, then waits for the acknowledgements and
/// at least <see cref="IpiDeliveryNs"/> + <see cref="IpiHandlerNs"/> after the last send (the
/// round trip: delivery, then the target's interrupt entry). Every target pays
/// <see cref="IpiHandlerNs"/> plus the invalidation it was asked for (<see cref="LocalInvalidateNs"/>
/// per page, or <see cref="FullFlushNs"/>): a running target when it services the IPI, an idle one
/// when it next runs (it then flushes its whole TLB, but is charged what it was asked, as the
/// modelled kernels interrupted idle CPUs too). <see cref="MappingCost"/> applies the same rule to counts.
/// </para>
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

/// <summary>One charge of a <see cref="CostModel"/>: <see cref="Stopwatch"/> ticks to busy-wait and the nanoseconds they stand for.</summary>
internal readonly struct CostCharge
{
    public readonly long Ticks;
    public readonly long Ns;

    public CostCharge(double ns)
    {
        if (ns < 0 || double.IsNaN(ns))
        {
            throw new ArgumentOutOfRangeException(nameof(ns), ns, "a cost must be zero or positive");
        }

        Ticks = (long)Math.Round(ns * Stopwatch.Frequency / 1e9);
        Ns = (long)Math.Round(ns);
    }

    public CostCharge(long ticks, long ns)
    {
        Ticks = ticks;
        Ns = ns;
    }

    /// <summary>Two charges paid one after the other.</summary>
    public static CostCharge operator +(CostCharge a, CostCharge b) => new(a.Ticks + b.Ticks, a.Ns + b.Ns);

    /// <summary>A charge paid <paramref name="n"/> times.</summary>
    public CostCharge Times(long n) => new(Ticks * n, Ns * n);
}

/// <summary>A <see cref="CostModel"/> converted once to <see cref="Stopwatch"/> ticks.</summary>
internal readonly struct CostTicks
{
    public readonly CostCharge LocalInvalidate;
    public readonly CostCharge FullFlush;
    public readonly CostCharge TlbMissWalk;
    public readonly CostCharge PteWrite;
    public readonly CostCharge IpiSend;
    public readonly CostCharge IpiDelivery;
    public readonly CostCharge IpiHandler;

    public CostTicks(CostModel model)
    {
        LocalInvalidate = new CostCharge(model.LocalInvalidateNs);
        FullFlush = new CostCharge(model.FullFlushNs);
        TlbMissWalk = new CostCharge(model.TlbMissWalkNs);
        PteWrite = new CostCharge(model.PteWriteNs);
        IpiSend = new CostCharge(model.IpiSendNs);
        IpiDelivery = new CostCharge(model.IpiDeliveryNs);
        IpiHandler = new CostCharge(model.IpiHandlerNs);
    }

    /// <summary>Busy-waits <paramref name="ticks"/>; zero costs nothing but the branch.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public static void Spin(long ticks)
    {
        if (ticks > 0)
        {
            SpinUntil(Stopwatch.GetTimestamp() + ticks);
        }
    }

    private static void SpinUntil(long end)
    {
        while (Stopwatch.GetTimestamp() < end)
        {
        }
    }
}
