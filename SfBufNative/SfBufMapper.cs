using System.Diagnostics.Metrics;
using Native.PageTable;

namespace Native.SfBufNative;

/// <summary>
/// The sf_buf interface: <c>sf_buf_alloc</c>, <c>sf_buf_kva</c>, <c>sf_buf_page</c>,
/// <c>sf_buf_free</c>. Each mapping strategy is a sealed subclass, chosen by name
/// (<see cref="Create"/>). Subsystems talk to this class only.
/// <para>
/// The caller holds (wires) the page for as long as it holds the sf_buf. Alloc returns
/// <see cref="SfBuf.None"/>, not an exception, for <see cref="SfBufFlags.NoWait"/> with the pool
/// exhausted and for <see cref="SfBufFlags.Catch"/> when the wait is cancelled. Misuse (double
/// free, a foreign handle, an unwired page, <see cref="SfBufFlags.CpuPrivate"/> without a pin)
/// throws in checked mode. A stale handle, from before its sf_buf was recycled, is refused too;
/// one of several references to the same live mapping freed twice cannot be told apart from the
/// other reference's free (FreeBSD cannot either), so that is caught only when the count would drop
/// below zero.
/// </para>
/// </summary>
public abstract class SfBufMapper : IDisposable
{
    /// <summary>The original mechanisms: per-use KVA, <c>pmap_qenter</c>/<c>pmap_qremove</c> with broadcast shootdowns.</summary>
    public const string Original = "original";

    /// <summary>FreeBSD's 2006 i386 algorithm: a cache of mappings with CPU masks.</summary>
    public const string I386 = "sfbuf-i386";

    /// <summary>The amd64 direct map.</summary>
    public const string Amd64 = "sfbuf-amd64";

    /// <summary>Linux's persistent kmap pool (<c>kmap</c>/<c>kunmap</c>) for every user.</summary>
    public const string LinuxKmap = "linux-kmap";

    /// <summary>Linux: <c>kmap_atomic</c> for private users, <c>kmap</c> for shared ones.</summary>
    public const string LinuxKmapAtomic = "linux-kmap-atomic";

    /// <summary>Linux: <c>kmap_local_page</c> for private users, <c>kmap</c> for shared ones.</summary>
    public const string LinuxKmapLocal = "linux-kmap-local";

    /// <summary>DragonFly's lwbuf; shared users add <c>lwbuf_set_global</c> (DragonFly's sf_buf).</summary>
    public const string DragonFlyLwbuf = "dragonfly-lwbuf";

    /// <summary>NetBSD's <c>uvm_emap</c>: generation-based lazy invalidation, for every user.</summary>
    public const string NetBsdEmap = "netbsd-emap";

    /// <summary>FreeBSD's <c>pmap_quick_enter_page</c> for private users; shared or nested ones fall back to sfbuf-i386.</summary>
    public const string FreeBsdQuick = "freebsd-quick";

    /// <summary>Our own: lock-free hits, slots recycled after an epoch instead of a shootdown.</summary>
    public const string EpochCache = "epoch-cache";

    private static int s_nextId;
    private readonly bool _instruments;
    private readonly bool _kvaOnAccessingCpu;
    private Meter? _meter;
    private long _allocFail;

    /// <summary>Initialises the common part.</summary>
    /// <param name="machine">The machine.</param>
    /// <param name="kvaOnAccessingCpu">
    /// True when the address must be derived on the CPU that uses it (lwbuf's <c>lwbuf_kva</c>,
    /// emap's consume): <see cref="Kva"/> then calls <see cref="KvaOnCpu"/>.
    /// </param>
    /// <param name="instruments">False for a strategy embedded in another one (its counts are reported by the outer one).</param>
    private protected SfBufMapper(Machine machine, bool kvaOnAccessingCpu = false, bool instruments = true)
    {
        Machine = machine ?? throw new ArgumentNullException(nameof(machine));
        Id = Interlocked.Increment(ref s_nextId);
        Checked = machine.Options.Checked;
        _kvaOnAccessingCpu = kvaOnAccessingCpu;
        _instruments = instruments;
    }

    /// <summary>Every strategy, by name, in the order results list them (<see cref="SfBufStrategyInfo.All"/>): the paper's three, the peers, then our own.</summary>
    public static IReadOnlyList<string> StrategyNames { get; } = [.. SfBufStrategyInfo.All.Select(i => i.Name)];

    /// <summary>The paper's three strategies.</summary>
    public static IReadOnlyList<string> PaperStrategyNames { get; } = SfBufStrategyInfo.NamesOf(SfBufStrategyGroup.Paper);

    /// <summary>The peers: what Linux, DragonFly, NetBSD and later FreeBSD chose instead.</summary>
    public static IReadOnlyList<string> PeerNames { get; } = SfBufStrategyInfo.NamesOf(SfBufStrategyGroup.Peer);

    /// <summary>The project's own strategies.</summary>
    public static IReadOnlyList<string> OwnNames { get; } = SfBufStrategyInfo.NamesOf(SfBufStrategyGroup.Own);

    /// <summary>The strategy's name.</summary>
    public abstract string Name { get; }

    /// <summary>The machine it maps on.</summary>
    public Machine Machine { get; }

    /// <summary>Checked mode (from the machine): misuse is detected and reported.</summary>
    protected bool Checked { get; }

    /// <summary>Unique id, stamped into handles.</summary>
    internal int Id { get; }

    /// <summary>Creates the strategy called <paramref name="name"/> on <paramref name="machine"/>.</summary>
    /// <param name="name">One of <see cref="StrategyNames"/>.</param>
    /// <param name="machine">The machine.</param>
    /// <param name="nsfbufs">Pool size for pooled strategies; null means the machine's sf_buf window (FreeBSD's default).</param>
    /// <exception cref="NotSupportedException">The machine is host-backed and the strategy does not run there (<see cref="SfBufStrategyInfo.NotOnHost"/>).</exception>
    public static SfBufMapper Create(string name, Machine machine, int? nsfbufs = null)
    {
        var info = SfBufStrategyInfo.Of(name);
        ArgumentNullException.ThrowIfNull(machine);
        info.ThrowIfNotRunnableOn(machine);

        // A construction refused part-way gives back what it allocated, and publishes nothing.
        SfBufMapper mapper;
        using (var setUp = machine.Ledger.BeginSetUp())
        {
            mapper = info.Create(machine, nsfbufs);
            setUp.Commit();
        }

        mapper.PublishInstruments();
        return mapper;
    }

    /// <summary>What the strategy called <paramref name="name"/> is and which of the interface's promises it keeps.</summary>
    public static SfBufStrategyInfo Describe(string name) => SfBufStrategyInfo.Of(name);

    /// <summary>
    /// <c>sf_buf_alloc</c>: a kernel virtual address for <paramref name="page"/>. Returns
    /// <see cref="SfBuf.None"/> for NoWait with the pool exhausted, or Catch with the wait cancelled.
    /// </summary>
    public abstract SfBuf Alloc(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default);

    /// <summary><c>sf_buf_free</c>: drops one reference to the mapping (never the page).</summary>
    public abstract void Free(SfBuf sf);

    /// <summary>
    /// <c>sf_buf_kva</c>, called on the CPU that is about to access the page, right where it
    /// accesses it: for most strategies the handle's address; for lwbuf and emap the call that
    /// makes the address valid on this CPU (a local <c>invlpg</c> the first time lwbuf is used
    /// here; emap's consume, a flush when this CPU is behind). Never a virtual call for the
    /// strategies that need no such step.
    /// </summary>
    public ulong Kva(SfBuf sf) => _kvaOnAccessingCpu ? KvaOnCpu(sf) : sf.Kva;

    /// <summary><c>sf_buf_page</c>.</summary>
    public static VmPage Page(SfBuf sf) => sf.Page;

    /// <summary>The statistics now.</summary>
    public abstract SfBufStats Stats();

    /// <summary>Counts a caller's failed allocation (<c>sfstat.sf_allocfail</c>), as sendfile does.</summary>
    public void RecordAllocFail() => Interlocked.Increment(ref _allocFail);

    /// <summary>Releases the strategy's instruments.</summary>
    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    /// <summary>Renders as the strategy's name.</summary>
    public override string ToString() => Name;

    /// <summary>The value of <see cref="RecordAllocFail"/>'s counter.</summary>
    protected long AllocFailCount => Volatile.Read(ref _allocFail);

    /// <summary>Disposes the meter.</summary>
    protected virtual void Dispose(bool disposing)
    {
        if (disposing && _meter != null)
        {
            SfBufMetrics.Retire(this);
            _meter.Dispose();
        }
    }

    /// <summary>
    /// Publishes the instruments once the mapper is fully built (a listener samples
    /// <see cref="Stats"/> at any time, so a half-built or failed mapper must never be published).
    /// </summary>
    private void PublishInstruments()
    {
        if (_instruments && _meter == null)
        {
            _meter = SfBufMetrics.Create(this);
        }
    }

    /// <summary>The accessing-CPU step of <see cref="Kva"/> for strategies that need one.</summary>
    private protected virtual ulong KvaOnCpu(SfBuf sf) => sf.Kva;

    /// <summary>Checked-mode validation shared by the strategies: the page is wired or held; CpuPrivate is pinned.</summary>
    private protected void CheckAlloc(VmPage page, SfBufFlags flags)
    {
        if (!Checked)
        {
            return;
        }

        if (!Machine.Physical.IsWiredOrHeld(page))
        {
            throw new InvalidOperationException($"sf_buf_alloc of {page}, which is neither wired nor held: the caller must hold the page");
        }

        if ((flags & SfBufFlags.CpuPrivate) != 0 && !KernelThread.Current.IsPinned)
        {
            throw new InvalidOperationException($"SFB_CPUPRIVATE from {KernelThread.Current}, which is not pinned (sched_pin first)");
        }
    }

    /// <summary>Refuses a handle this mapper did not make.</summary>
    private protected void CheckOwner(SfBuf sf)
    {
        if (sf.IsNone)
        {
            throw new ArgumentException("sf_buf_free of no sf_buf", nameof(sf));
        }

        if (sf.Mapper != Id)
        {
            throw new ArgumentException($"{sf} was not allocated by this {Name} mapper", nameof(sf));
        }
    }
}
