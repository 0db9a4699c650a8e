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
/// <para>
/// The rule for a round delivered by broadcast invalidation hardware
/// (<see cref="ShootdownMechanism.Broadcast"/>) with I instructions (one per page, per chunk of a
/// range, or one for a full flush): the initiator pays I × <see cref="BroadcastIssueNs"/> and then
/// <see cref="BroadcastSyncNs"/> for the completion wait, whatever the number of targets, and its
/// clock (virtual time) moves by exactly that; no target pays anything, running or idle, and no
/// target clock moves: the hardware invalidates without an interrupt or a handler. Real time
/// busy-waits the issue price, then waits for the targets and for at least the completion price.
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
    /// <summary>
    /// Bytes copied per nanosecond by kernel copies (<c>bcopy</c>, <c>copyin</c>/<c>copyout</c>,
    /// page copies): virtual time only, since in real time the host really copies. Default 10
    /// (10 GB/s: one core's in-cache copy bandwidth on current x86 servers, the order of STREAM's
    /// single-thread Copy figures).
    /// </summary>
    public double CopyBytesPerNs { get; init; } = 10;

    /// <summary>Entering and leaving the kernel once (<c>syscall</c>/<c>sysret</c>), virtual time only. Default 100 ns (FlexSC, Soares and Stumm, OSDI 2010: about 150 cycles direct, before the 2018 mitigations).</summary>
    public double KernelEntryNs { get; init; } = 100;

    /// <summary>An uncontended mutex acquire and its release (one locked read-modify-write and a store), virtual time only. Default 20 ns (Schweizer, Besta and Hoefler, PACT 2015: a local CAS is tens of cycles).</summary>
    public double LockNs { get; init; } = 20;

    /// <summary>
    /// A contended mutex passing to its next owner: the waiter acquires this long after the
    /// release (the lock's cache line moving between cores), virtual time only. Default 100 ns
    /// (Schweizer et al., PACT 2015: a cross-core cache-line transfer is about 100 ns).
    /// </summary>
    public double LockHandoffNs { get; init; } = 100;

    /// <summary>From <c>wakeup</c> until the woken thread can run (run-queue insertion and the reschedule), virtual time only. Default 1000 ns (Linux wakeup-to-run latencies of 1-5 us, as schbench reports them).</summary>
    public double WakeupNs { get; init; } = 1000;

    /// <summary>Switching a CPU to another thread (<c>mi_switch</c>/<c>cpu_switch</c>), virtual time only. Default 2000 ns (Li, Ding and Shen, "Quantifying the cost of context switch", ExpCS 2007: 2-4 us including cache effects).</summary>
    public double ContextSwitchNs { get; init; } = 2000;

    /// <summary>One iteration of a spin-wait loop (<c>pause</c> and a load of the shared word), virtual time only. Default 40 ns (<c>pause</c> is about 140 cycles on Skylake-SP, Intel optimization manual 2.5.4).</summary>
    public double SpinNs { get; init; } = 40;

    /// <summary>
    /// Issuing one broadcast invalidation instruction (<c>INVLPGB</c>, <c>TLBI ...IS</c>), charged to
    /// the initiator per instruction. Default 100 ns, derived: no per-instruction latency is
    /// published; the instruction does what a local <c>invlpg</c> does on the issuing core and hands
    /// the request to the fabric without waiting, so it is priced as one <c>invlpg</c> (Amit,
    /// USENIX ATC 2017, as <see cref="LocalInvalidateNs"/>).
    /// </summary>
    public double BroadcastIssueNs { get; init; } = 100;

    /// <summary>
    /// The completion wait after broadcast invalidations (<c>TLBSYNC</c>, <c>DSB ISH</c>), charged to
    /// the initiator once per round. Default 1000 ns, derived: no latency is published; the request
    /// and its completion cross the interconnect as an IPI does, without the send and the interrupt
    /// entry, so it is the default IPI round trip (2 us) less the send (300 ns) and the handler
    /// (700 ns). Cross-check: Rik van Riel's INVLPGB series (Linux, v7 2025) cut the CPU time spent
    /// in TLB invalidation from 40% to 4% on a 36-core Milan; with these prices a one-page round
    /// costs the machine 3.5 times less than by IPI with 2 targets and 36 times less with 35.
    /// </summary>
    public double BroadcastSyncNs { get; init; } = 1000;

    /// <summary>True when every price virtual time needs is positive (the zero profile's are not).</summary>
    public bool CanRunVirtualTime => CopyBytesPerNs > 0 && SpinNs > 0;

    /// <summary>No charges: functional tests and counting experiments.</summary>
    public static CostModel Zero { get; } = new("zero", 0, 0, 0, 0, 0, 0, 0, "no simulated charges; only the real cost of the simulation")
    {
        CopyBytesPerNs = 0,
        KernelEntryNs = 0,
        LockNs = 0,
        LockHandoffNs = 0,
        WakeupNs = 0,
        ContextSwitchNs = 0,
        SpinNs = 0,
        BroadcastIssueNs = 0,
        BroadcastSyncNs = 0,
    };

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
    /// <item>Broadcast issue 100 ns and completion wait 1000 ns: derived (see <see cref="BroadcastIssueNs"/>
    /// and <see cref="BroadcastSyncNs"/>); charged only on a machine with <see cref="ShootdownMechanism.Broadcast"/>.</item>
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
        + $"ipi send {IpiSendNs} ns, delivery {IpiDeliveryNs} ns, handler {IpiHandlerNs} ns; virtual time: copy {CopyBytesPerNs} B/ns, "
        + $"kernel entry {KernelEntryNs} ns, lock {LockNs} ns, hand-off {LockHandoffNs} ns, wakeup {WakeupNs} ns, switch {ContextSwitchNs} ns, spin {SpinNs} ns; "
        + $"broadcast: issue {BroadcastIssueNs} ns, completion {BroadcastSyncNs} ns";
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

    /// <summary>A price of work the host really does in real time (a copy, a lock, a switch): nanoseconds for virtual time, no busy-wait.</summary>
    public static CostCharge VirtualOnly(double ns) => new(0, new CostCharge(ns).Ns);

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
    public readonly CostCharge BroadcastIssue;
    public readonly CostCharge BroadcastSync;

    // Virtual time only (the host pays these for real in real time): nanoseconds, no ticks.
    public readonly CostCharge KernelEntry;
    public readonly CostCharge Lock;
    public readonly CostCharge LockHandoff;
    public readonly CostCharge Wakeup;
    public readonly CostCharge ContextSwitch;
    public readonly CostCharge SpinIteration;
    public readonly double CopyNsPerByte;

    public CostTicks(CostModel model)
    {
        KernelEntry = CostCharge.VirtualOnly(model.KernelEntryNs);
        Lock = CostCharge.VirtualOnly(model.LockNs);
        LockHandoff = CostCharge.VirtualOnly(model.LockHandoffNs);
        Wakeup = CostCharge.VirtualOnly(model.WakeupNs);
        ContextSwitch = CostCharge.VirtualOnly(model.ContextSwitchNs);
        SpinIteration = CostCharge.VirtualOnly(model.SpinNs);
        CopyNsPerByte = model.CopyBytesPerNs > 0 ? 1 / model.CopyBytesPerNs : 0;
        LocalInvalidate = new CostCharge(model.LocalInvalidateNs);
        FullFlush = new CostCharge(model.FullFlushNs);
        TlbMissWalk = new CostCharge(model.TlbMissWalkNs);
        PteWrite = new CostCharge(model.PteWriteNs);
        IpiSend = new CostCharge(model.IpiSendNs);
        IpiDelivery = new CostCharge(model.IpiDeliveryNs);
        IpiHandler = new CostCharge(model.IpiHandlerNs);
        BroadcastIssue = new CostCharge(model.BroadcastIssueNs);
        BroadcastSync = new CostCharge(model.BroadcastSyncNs);
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
