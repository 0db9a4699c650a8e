using System.Diagnostics.Metrics;
using Native.PageTable;

namespace Native.SfBufNative;

/// <summary>
/// The sf_buf interface: <c>sf_buf_alloc</c>, <c>sf_buf_kva</c>, <c>sf_buf_page</c>,
/// <c>sf_buf_free</c>. Each mapping strategy is a sealed subclass, chosen by name
/// (<see cref="Create"/>). Subsystems talk to this class only.
/// <para>
/// A strategy may live in another assembly: it subclasses this class (the protected
/// constructor), overrides <see cref="Name"/>, <see cref="Alloc"/>, <see cref="Free"/> and
/// <see cref="Stats"/>, makes its handles with <see cref="NewHandle"/>, counts with the
/// <c>Count*</c> helpers (or <see cref="MapPage"/>, which writes the PTE and counts), and is
/// registered with <see cref="SfBufStrategyInfo.Register"/>; <c>docs/adding-a-strategy.md</c>
/// walks through a sample.
/// </para>
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
/// <para>
/// A caller that needs several mappings at once takes them together with <see cref="AllocMany"/>
/// (every strategy has it, natively or through a documented fallback). Two Alloc calls in a row
/// deadlock at exhaustion when every thread holds its first mapping and waits for its second;
/// the machine then reports the deadlock (<see cref="DeadlockException"/>) instead of hanging.
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

    /// <summary>Linux (the 2026 <c>__GFP_UNMAPPED</c> RFC): mermap's per-CPU bump allocator for private users, <c>kmap</c> for shared ones.</summary>
    public const string LinuxMermap = "linux-mermap";

    /// <summary>DragonFly's lwbuf; shared users add <c>lwbuf_set_global</c> (DragonFly's sf_buf).</summary>
    public const string DragonFlyLwbuf = "dragonfly-lwbuf";

    /// <summary>NetBSD's <c>uvm_emap</c>: generation-based lazy invalidation, for every user.</summary>
    public const string NetBsdEmap = "netbsd-emap";

    /// <summary>FreeBSD's <c>pmap_quick_enter_page</c> for private users; shared or nested ones fall back to sfbuf-i386.</summary>
    public const string FreeBsdQuick = "freebsd-quick";

    /// <summary>Our own: lock-free hits, slots recycled after an epoch instead of a shootdown.</summary>
    public const string EpochCache = "epoch-cache";

    /// <summary>Address Space Isolation's <c>ephmap</c> for private users (one region per CPU per address space, local flush only); kmap for shared ones.</summary>
    public const string AsiEphmap = "asi-ephmap";

    /// <summary>Linux XPFO (RFC v6): user pages out of the direct map, kmap restores them, kunmap removes them with a shootdown.</summary>
    public const string LinuxXpfo = "linux-xpfo";

    /// <summary>Linux XPFO v7: kunmap invalidates locally and leaves every other CPU a full flush at its next context switch.</summary>
    public const string LinuxXpfoDeferred = "linux-xpfo-deferred";

    /// <summary>Linux XPFO v9: v7, with user pages taken out of the direct map in batches when a CPU's free list is refilled.</summary>
    public const string LinuxXpfoBatched = "linux-xpfo-batched";

    private static int s_nextId;
    private readonly bool _instruments;
    private readonly bool _kvaOnAccessingCpu;

    // The fallback AllocMany's gate: a flag under a spin mutex (so that the gate's holder may
    // release it inside the critical section of a private mapping it took), waited for by
    // sleeping on a channel.
    private readonly KMutex _manyLock = new("sf_buf_many", spinOnly: true);
    private readonly object _manyChannel = new();
    private bool _manyBusy;
    private SfBufStrategyInfo? _info;

    // The counts kept by the Count* helpers for strategies that use them (CountedStats reports them).
    private long _countedHits;
    private long _countedMisses;
    private long _countedRecycles;
    private long _countedFailures;
    private long _countedWaits;
    private int _countedInUse;
    private int _countedPeak;
    private int _sharedCapacity;
    private int _privateCapacity;
    private Meter? _meter;
    private long _allocFail;

    /// <summary>
    /// Initialises the common part. A strategy's constructor takes its pool size (null: the
    /// machine's sf_buf window) and is called by its registry entry's
    /// <see cref="SfBufStrategyInfo.Create"/>; <see cref="Create"/> then publishes the instruments.
    /// A constructor that throws gives back what it took itself; nothing is published before
    /// construction ends.
    /// </summary>
    /// <param name="machine">The machine.</param>
    /// <param name="kvaOnAccessingCpu">
    /// True when the address must be derived on the CPU that uses it (lwbuf's <c>lwbuf_kva</c>,
    /// emap's consume): <see cref="Kva"/> then calls <see cref="KvaOnCpu"/>.
    /// </param>
    /// <param name="instruments">False for a strategy embedded in another one (its counts are reported by the outer one).</param>
    protected SfBufMapper(Machine machine, bool kvaOnAccessingCpu = false, bool instruments = true)
    {
        Machine = machine ?? throw new ArgumentNullException(nameof(machine));
        Id = Interlocked.Increment(ref s_nextId);
        Checked = machine.Options.Checked;
        _kvaOnAccessingCpu = kvaOnAccessingCpu;
        _instruments = instruments;
    }

    /// <summary>
    /// Every strategy, by name, in the order results list them (<see cref="SfBufStrategyInfo.All"/>):
    /// the paper's three, the peers, our own, then the registered ones in the order of registration.
    /// </summary>
    public static IReadOnlyList<string> StrategyNames => SfBufStrategyInfo.Names;

    /// <summary>The paper's three strategies.</summary>
    public static IReadOnlyList<string> PaperStrategyNames => SfBufStrategyInfo.NamesOf(SfBufStrategyGroup.Paper);

    /// <summary>The peers: what Linux, DragonFly, NetBSD and later FreeBSD chose instead.</summary>
    public static IReadOnlyList<string> PeerNames => SfBufStrategyInfo.NamesOf(SfBufStrategyGroup.Peer);

    /// <summary>The project's own strategies (registered ones of <see cref="SfBufStrategyGroup.Own"/> included).</summary>
    public static IReadOnlyList<string> OwnNames => SfBufStrategyInfo.NamesOf(SfBufStrategyGroup.Own);

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
    /// <remarks>
    /// The strategy's <see cref="AllocCore"/> runs as one mapping operation
    /// (<see cref="KernelPmap.EnterOperation"/>): in checked mode, a translation its PTE stores
    /// removed that some CPU still caches when it returns is an exposure (<see cref="Counter.Exposures"/>).
    /// </remarks>
    public SfBuf Alloc(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        if (!Checked)
        {
            return AllocCore(page, flags, cancellation);
        }

        Machine.KernelPmap.EnterOperation();
        try
        {
            return AllocCore(page, flags, cancellation);
        }
        finally
        {
            Machine.KernelPmap.LeaveOperation();
        }
    }

    /// <summary><c>sf_buf_free</c>: drops one reference to the mapping (never the page).</summary>
    /// <remarks>The strategy's <see cref="FreeCore"/> runs as one mapping operation, as <see cref="Alloc"/>'s does.</remarks>
    public void Free(SfBuf sf)
    {
        if (!Checked)
        {
            FreeCore(sf);
            return;
        }

        Machine.KernelPmap.EnterOperation();
        try
        {
            FreeCore(sf);
        }
        finally
        {
            Machine.KernelPmap.LeaveOperation();
        }
    }

    /// <summary>The strategy's <c>sf_buf_alloc</c>, behind <see cref="Alloc"/> (which documents the contract).</summary>
    /// <param name="page">The page, held (wired) by the caller.</param>
    /// <param name="flags">The allocation flags.</param>
    /// <param name="cancellation">Ends a <see cref="SfBufFlags.Catch"/> wait.</param>
    /// <returns>The handle, or <see cref="SfBuf.None"/> for NoWait with the pool exhausted or a cancelled Catch.</returns>
    protected abstract SfBuf AllocCore(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default);

    /// <summary>The strategy's <c>sf_buf_free</c>, behind <see cref="Free"/>.</summary>
    /// <param name="sf">A live handle of this mapper.</param>
    protected abstract void FreeCore(SfBuf sf);

    /// <summary>
    /// How many mappings one caller can hold at once with <paramref name="flags"/> (only
    /// <see cref="SfBufFlags.CpuPrivate"/> matters): the pool for pooled strategies (<c>nsfbufs</c>,
    /// <c>LAST_PKMAP</c>, the emap window, <c>kernel_map</c>'s pages for the strategies that take
    /// KVA there), the per-CPU slots for private users of <c>kmap_atomic</c> and <c>kmap_local</c>,
    /// and <see cref="int.MaxValue"/> for the direct map. <see cref="AllocMany"/> refuses more.
    /// </summary>
    public int Capacity(SfBufFlags flags = SfBufFlags.Default)
    {
        bool isPrivate = (flags & SfBufFlags.CpuPrivate) != 0;
        ref int cached = ref isPrivate ? ref _privateCapacity : ref _sharedCapacity;
        if (cached == 0)
        {
            cached = Info.Capacity(this, isPrivate);
        }

        return cached;
    }

    /// <summary>
    /// Maps every page of <paramref name="pages"/> or none, for a caller that needs several
    /// mappings at once (two Alloc calls in a row deadlock at exhaustion when every thread holds
    /// its first mapping and waits for its second, as <c>kmap</c> does). The handles go to
    /// <paramref name="result"/> in the order of the pages; each is freed with <see cref="Free"/>.
    /// <para>
    /// The fallback, for strategies without a native implementation: callers that may wait for
    /// several mappings pass one at a time through a per-mapper gate (a flag, waited for by
    /// sleeping on a channel; a cancelled <see cref="SfBufFlags.Catch"/> ends that wait too), and
    /// the gate's holder takes its pages one after the other with the caller's flags; when one
    /// cannot be had (NoWait, a cancelled Catch, or an exception) it frees what it took. A request
    /// that can never wait skips the gate and so never sleeps: <see cref="SfBufFlags.NoWait"/>, a
    /// strategy without a pool, private users of per-CPU slots (kmap_atomic, kmap_local), and a
    /// single page.
    /// </para>
    /// <para>
    /// Why the fallback cannot deadlock when every caller that holds mappings while it waits for
    /// more takes them through this method: only the gate's holder can wait holding part of a set;
    /// every other caller of this method waits for the gate holding nothing, and a single-mapping
    /// caller waits holding nothing; so every mapping the gate's holder waits for is held by a
    /// thread that frees it without waiting (Free never sleeps), and it needs at most
    /// <see cref="Capacity"/> of them. Its wait ends, it frees its set later, and the gate passes
    /// on. This assumes a free reaches a waiter on any CPU (not so for lwbuf's per-CPU magazines:
    /// <see cref="SfBufStrategyInfo.FreesReachWaitersOnAnyCpu"/>).
    /// </para>
    /// </summary>
    /// <param name="pages">The pages, each held (wired) by the caller; a page may appear twice (two references to one mapping).</param>
    /// <param name="result">Receives one handle per page; at least as long as <paramref name="pages"/>.</param>
    /// <param name="flags">As for <see cref="Alloc"/>, for every page.</param>
    /// <param name="cancellation">Ends a <see cref="SfBufFlags.Catch"/> wait.</param>
    /// <returns>True with every handle in <paramref name="result"/>; false (NoWait or a cancelled Catch) with none held.</returns>
    /// <exception cref="ArgumentException"><paramref name="result"/> is shorter than <paramref name="pages"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">More pages than <see cref="Capacity"/>: the request could never be satisfied.</exception>
    public bool AllocMany(ReadOnlySpan<VmPage> pages, Span<SfBuf> result, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        if (!Checked)
        {
            return AllocManyCore(pages, result, flags, cancellation);
        }

        Machine.KernelPmap.EnterOperation();
        try
        {
            return AllocManyCore(pages, result, flags, cancellation);
        }
        finally
        {
            Machine.KernelPmap.LeaveOperation();
        }
    }

    /// <summary>
    /// <see cref="AllocMany"/>'s work: the fallback described there, or a strategy's own
    /// implementation (which calls <see cref="CheckAllocMany"/> first).
    /// </summary>
    /// <param name="pages">The pages, each held (wired) by the caller.</param>
    /// <param name="result">Receives one handle per page.</param>
    /// <param name="flags">As for <see cref="Alloc"/>, for every page.</param>
    /// <param name="cancellation">Ends a <see cref="SfBufFlags.Catch"/> wait.</param>
    /// <returns>True with every handle in <paramref name="result"/>; false with none held.</returns>
    protected virtual bool AllocManyCore(ReadOnlySpan<VmPage> pages, Span<SfBuf> result, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        CheckAllocMany(pages, result, flags);
        bool gated = pages.Length > 1 && MayWait(flags);
        if (gated && !EnterManyGate(flags, cancellation))
        {
            return false;
        }

        try
        {
            return TakeEach(pages, result, flags, cancellation);
        }
        finally
        {
            // A thread stopped while asleep (the machine is being disposed) holds no CPU and
            // leaves the gate as it is: nothing runs on the machine any more.
            if (gated && KernelThread.Current.Cpu != null)
            {
                LeaveManyGate();
            }
        }
    }

    /// <summary>
    /// <c>sf_buf_kva</c>, called on the CPU that is about to access the page, right where it
    /// accesses it: for most strategies the handle's address; for lwbuf and emap the call that
    /// makes the address valid on this CPU (a local <c>invlpg</c> the first time lwbuf is used
    /// here; emap's consume, a flush when this CPU is behind). Never a virtual call for the
    /// strategies that need no such step.
    /// </summary>
    public ulong Kva(SfBuf sf) => _kvaOnAccessingCpu ? KvaOnAccessingCpu(sf) : sf.Kva;

    /// <summary>The accessing-CPU step as one mapping operation (in checked mode), as <see cref="Alloc"/>'s is.</summary>
    private ulong KvaOnAccessingCpu(SfBuf sf)
    {
        if (!Checked)
        {
            return KvaOnCpu(sf);
        }

        Machine.KernelPmap.EnterOperation();
        try
        {
            return KvaOnCpu(sf);
        }
        finally
        {
            Machine.KernelPmap.LeaveOperation();
        }
    }

    /// <summary><c>sf_buf_page</c>.</summary>
    public static VmPage Page(SfBuf sf) => sf.Page;

    /// <summary>
    /// The statistics now. Read at any time, from any thread, by instruments, experiments and
    /// tests: <see cref="SfBufStats.Misses"/>, <see cref="SfBufStats.Hits"/>,
    /// <see cref="SfBufStats.NsfbufsUsed"/> and <see cref="SfBufStats.Failures"/> must be exact
    /// (<c>perf paper</c> compares misses with the machine's recorded mappings, tests expect
    /// nothing in use after every free). A strategy that counts with the <c>Count*</c> helpers
    /// returns <see cref="CountedStats"/>.
    /// </summary>
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

    private SfBufStrategyInfo Info => _info ??= SfBufStrategyInfo.Of(Name);

    /// <summary>True when an allocation with <paramref name="flags"/> may wait for a mapping.</summary>
    private bool MayWait(SfBufFlags flags) =>
        (flags & SfBufFlags.NoWait) == 0 && Info.HasPool && !((flags & SfBufFlags.CpuPrivate) != 0 && Info.PrivateNeverWaits);

    /// <summary>Takes the gate, sleeping while another caller holds it; false when a Catch wait is cancelled.</summary>
    private bool EnterManyGate(SfBufFlags flags, CancellationToken cancellation)
    {
        var token = (flags & SfBufFlags.Catch) != 0 ? cancellation : CancellationToken.None;
        _manyLock.Lock();
        try
        {
            while (_manyBusy)
            {
                if (Machine.Sleep(_manyChannel, _manyLock, cancellation: token) == SleepResult.Interrupted)
                {
                    return false;
                }
            }

            _manyBusy = true;
            return true;
        }
        finally
        {
            // Not held when a stopping machine ended the sleep (it throws without retaking it).
            if (_manyLock.IsOwned)
            {
                _manyLock.Unlock();
            }
        }
    }

    /// <summary>Gives the gate up and wakes every caller waiting for it (one takes it; a cancelled or failed one cannot swallow the wakeup).</summary>
    private void LeaveManyGate()
    {
        _manyLock.Lock();
        try
        {
            _manyBusy = false;
            Machine.Wakeup(_manyChannel);
        }
        finally
        {
            _manyLock.Unlock();
        }
    }

    /// <summary>Allocates each page in turn; on a failure or an exception frees what it took, last first.</summary>
    private bool TakeEach(ReadOnlySpan<VmPage> pages, Span<SfBuf> result, SfBufFlags flags, CancellationToken cancellation)
    {
        int taken = 0;
        try
        {
            for (; taken < pages.Length; taken++)
            {
                var sf = Alloc(pages[taken], flags, cancellation);
                if (sf.IsNone)
                {
                    GiveBack(result, taken);
                    return false;
                }

                result[taken] = sf;
            }

            return true;
        }
        catch (Exception ex) when (ex is not MachineStoppedException and not MachineFailedException)
        {
            GiveBack(result, taken);
            throw;
        }
    }

    /// <summary>Frees the first <paramref name="count"/> handles of <paramref name="result"/>, last first (LIFO for the per-CPU stacks).</summary>
    private void GiveBack(Span<SfBuf> result, int count)
    {
        for (int i = count - 1; i >= 0; i--)
        {
            Free(result[i]);
            result[i] = SfBuf.None;
        }
    }

    /// <summary>
    /// The accessing-CPU step of <see cref="Kva"/>, called only for a strategy constructed with
    /// <c>kvaOnAccessingCpu</c> (whose registry entry says <see cref="SfBufStrategyInfo.KvaOnAccessingCpu"/>):
    /// makes <paramref name="sf"/>'s address valid on the calling CPU and returns it.
    /// </summary>
    /// <param name="sf">A live handle of this mapper.</param>
    protected virtual ulong KvaOnCpu(SfBuf sf) => sf.Kva;

    /// <summary>
    /// Makes a handle: what <see cref="Alloc"/> returns. Stamped with this mapper's identity, so
    /// <see cref="CheckOwner"/> refuses it in another mapper's <see cref="Free"/>.
    /// </summary>
    /// <param name="kva">The kernel address that maps <paramref name="page"/> (not 0: 0 is <see cref="SfBuf.None"/>).</param>
    /// <param name="page">The page, as passed to Alloc.</param>
    /// <param name="slot">The strategy's own index for the mapping (its slot or sf_buf), read back with <see cref="SlotOf"/>.</param>
    /// <param name="generation">
    /// The slot's generation, read back with <see cref="GenerationOf"/>: bump it whenever the slot
    /// is given to a new allocation, and compare in Free, so a double free or a handle from before
    /// a recycle is refused.
    /// </param>
    protected SfBuf NewHandle(ulong kva, VmPage page, int slot, int generation = 0) => new(kva, page, slot, Id, generation);

    /// <summary>The slot <see cref="NewHandle"/> stamped into <paramref name="sf"/>.</summary>
    protected static int SlotOf(SfBuf sf) => sf.Slot;

    /// <summary>The generation <see cref="NewHandle"/> stamped into <paramref name="sf"/>.</summary>
    protected static int GenerationOf(SfBuf sf) => sf.Generation;

    /// <summary>
    /// Installs a mapping and counts it, for a miss: writes a valid, writable, global kernel PTE
    /// for <paramref name="page"/> at <paramref name="kva"/> through the machine
    /// (<see cref="KernelPmap.ExchangePte"/>, with <c>PG_A</c> clear), records it as one page of
    /// an ephemeral mapping (<see cref="KernelPmap.CountMapping"/>) and counts one
    /// <see cref="SfBufStats.Misses"/> (<see cref="CountMiss"/>). It does not invalidate: the caller
    /// invalidates the old translation on every CPU that may cache it (or knows none does), before
    /// the handle is used.
    /// </summary>
    /// <param name="kva">A page of a kernel region the strategy owns (the sf_buf window, KVA from <c>kernel_map</c>).</param>
    /// <param name="page">The page to map.</param>
    /// <returns>The old PTE (its <c>PG_V | PG_A</c> tell whether the old translation may be cached anywhere).</returns>
    protected ulong MapPage(ulong kva, VmPage page)
    {
        ulong old = Machine.KernelPmap.ExchangePte(kva, Pte.Make(page.Frame, Pte.PG_V | Pte.PG_RW | Pte.PG_G));
        CountMiss();
        return old;
    }

    /// <summary>
    /// Counts an allocation that made a new mapping of one page: one <see cref="SfBufStats.Misses"/>
    /// and one page of an ephemeral mapping recorded with the machine
    /// (<see cref="KernelPmap.CountMapping"/>). Call it once per valid kernel PTE the strategy
    /// writes itself (<see cref="MapPage"/> calls it): the machine counts every such write
    /// (<c>pte_writes</c>) and <c>perf paper</c> fails a trial whose writes are not all recorded
    /// mappings (<c>pte_writes = mapped_pages</c>). PTE clears need no count.
    /// </summary>
    protected void CountMiss()
    {
        Machine.KernelPmap.CountMapping(1);
        Interlocked.Increment(ref _countedMisses);
    }

    /// <summary>Counts an allocation that found its page already mapped and wrote no PTE (<see cref="SfBufStats.Hits"/>).</summary>
    protected void CountHit() => Interlocked.Increment(ref _countedHits);

    /// <summary>Counts a slot whose mapping of one page was evicted so that it can map another (<see cref="SfBufStats.Recycles"/>): a cache's eviction, or a pool's invalidation of freed slots before their reuse. A strategy that unmaps at every free never calls it.</summary>
    protected void CountRecycle() => Interlocked.Increment(ref _countedRecycles);

    /// <summary>Counts an Alloc that returns <see cref="SfBuf.None"/> (NoWait with the pool exhausted, a cancelled Catch): <see cref="SfBufStats.Failures"/>.</summary>
    protected void CountFailure() => Interlocked.Increment(ref _countedFailures);

    /// <summary>Counts one sleep waiting for a free mapping (<c>sf_allocwait</c>, <see cref="SfBufStats.AllocWait"/>): call it before each sleep.</summary>
    protected void CountWait() => Interlocked.Increment(ref _countedWaits);

    /// <summary>
    /// Counts a mapping of the pool taken into use (<see cref="SfBufStats.NsfbufsUsed"/>, and the
    /// peak): call it when a slot gets its first reference, and <see cref="CountReturned"/> when
    /// it loses its last. Tests expect <see cref="SfBufStats.NsfbufsUsed"/> to be 0 once every
    /// handle is freed.
    /// </summary>
    protected void CountTaken() => HighWater.Raise(ref _countedPeak, Interlocked.Increment(ref _countedInUse));

    /// <summary>Counts a mapping of the pool no longer in use (its last reference freed): the converse of <see cref="CountTaken"/>.</summary>
    protected void CountReturned() => Interlocked.Decrement(ref _countedInUse);

    /// <summary>
    /// The statistics kept by the <c>Count*</c> helpers and <see cref="MapPage"/>, with the
    /// callers' <see cref="RecordAllocFail"/> count: what <see cref="Stats"/> returns for a strategy
    /// that counts with them.
    /// </summary>
    /// <param name="nsfbufs">The pool size (0 without a pool).</param>
    /// <param name="details">The strategy's own counts by name (<see cref="SfBufStats.Details"/>), or null for none.</param>
    protected SfBufStats CountedStats(int nsfbufs, IReadOnlyDictionary<string, long>? details = null)
    {
        var stats = new SfBufStats
        {
            Strategy = Name,
            Nsfbufs = nsfbufs,
            NsfbufsUsed = Volatile.Read(ref _countedInUse),
            NsfbufsPeak = Volatile.Read(ref _countedPeak),
            AllocWait = Interlocked.Read(ref _countedWaits),
            AllocFail = AllocFailCount,
            Hits = Interlocked.Read(ref _countedHits),
            Misses = Interlocked.Read(ref _countedMisses),
            Recycles = Interlocked.Read(ref _countedRecycles),
            Failures = Interlocked.Read(ref _countedFailures),
        };
        return details == null ? stats : stats with { Details = details };
    }

    /// <summary>
    /// The checks every Alloc starts with: the page is a frame of the machine's memory (in every
    /// mode), then <see cref="CheckAlloc"/> (checked mode).
    /// </summary>
    /// <param name="page">The page passed to Alloc.</param>
    /// <param name="flags">The flags passed to Alloc.</param>
    /// <exception cref="ArgumentOutOfRangeException">The page is outside physical memory.</exception>
    /// <exception cref="InvalidOperationException">Checked mode, and the page is not held or the private caller not pinned.</exception>
    protected void CheckPage(VmPage page, SfBufFlags flags)
    {
        Machine.Physical.CheckFrame(page.Frame);
        CheckAlloc(page, flags);
    }

    /// <summary>
    /// Checked-mode validation (<see cref="CheckPage"/> calls it): the page is wired or held, and
    /// a <see cref="SfBufFlags.CpuPrivate"/> caller is pinned. Nothing outside checked mode.
    /// </summary>
    /// <param name="page">The page passed to Alloc.</param>
    /// <param name="flags">The flags passed to Alloc.</param>
    /// <exception cref="InvalidOperationException">Checked mode, and the page is not held or the private caller not pinned.</exception>
    protected void CheckAlloc(VmPage page, SfBufFlags flags)
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

    /// <summary>
    /// <see cref="AllocMany"/>'s argument checks, shared by every implementation (a strategy that
    /// overrides AllocMany calls it first): room for the handles, no more different pages than
    /// <see cref="Capacity"/>, and each page valid for <see cref="CheckAlloc"/>.
    /// </summary>
    /// <param name="pages">The pages asked for.</param>
    /// <param name="result">Where the handles will go.</param>
    /// <param name="flags">The allocation flags.</param>
    /// <exception cref="ArgumentException"><paramref name="result"/> is shorter than <paramref name="pages"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">More different pages than <see cref="Capacity"/>.</exception>
    protected void CheckAllocMany(ReadOnlySpan<VmPage> pages, Span<SfBuf> result, SfBufFlags flags)
    {
        if (result.Length < pages.Length)
        {
            throw new ArgumentException($"{result.Length} handles cannot hold {pages.Length} mappings", nameof(result));
        }

        int capacity = Capacity(flags);
        int distinct = DistinctPages(pages);
        if (distinct > capacity)
        {
            throw new ArgumentOutOfRangeException(nameof(pages), distinct, $"{Name} can never map more than {capacity} pages at once");
        }

        foreach (var page in pages)
        {
            Machine.Physical.CheckFrame(page.Frame);
            CheckAlloc(page, flags);
        }
    }

    /// <summary>How many different pages <paramref name="pages"/> names (a page named twice needs one mapping, referenced twice).</summary>
    /// <param name="pages">The pages.</param>
    protected static int DistinctPages(ReadOnlySpan<VmPage> pages)
    {
        int distinct = 0;
        for (int i = 0; i < pages.Length; i++)
        {
            if (FirstIndexOf(pages, pages[i].Frame) == i)
            {
                distinct++;
            }
        }

        return distinct;
    }

    /// <summary>The index of the first page of <paramref name="pages"/> with frame <paramref name="frame"/>, or -1.</summary>
    /// <param name="pages">The pages.</param>
    /// <param name="frame">The frame looked for.</param>
    protected static int FirstIndexOf(ReadOnlySpan<VmPage> pages, uint frame)
    {
        for (int i = 0; i < pages.Length; i++)
        {
            if (pages[i].Frame == frame)
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>
    /// The check every Free starts with, in every mode: refuses <see cref="SfBuf.None"/> and a
    /// handle another mapper made (<see cref="NewHandle"/> stamps the maker). A double free or a
    /// stale handle is the strategy's to refuse, with <see cref="SlotOf"/> and <see cref="GenerationOf"/>.
    /// </summary>
    /// <param name="sf">The handle passed to Free.</param>
    /// <exception cref="ArgumentException">No sf_buf, or another mapper's.</exception>
    protected void CheckOwner(SfBuf sf)
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
