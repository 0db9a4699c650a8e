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
    /// Provisional order-of-magnitude values for an x86 SMP machine: hundreds of cycles for an
    /// <c>invlpg</c>, a few microseconds for an IPI round trip. They are estimates, not
    /// measurements; <c>host</c> profiles measured on the machine replace them.
    /// </summary>
    public static CostModel Default { get; } = new("default", 100, 400, 30, 5, 300, 1000, 700,
        "provisional estimates: invlpg ~100 ns, full flush ~400 ns, IPI round trip ~2-3 us on x86 SMP");

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
