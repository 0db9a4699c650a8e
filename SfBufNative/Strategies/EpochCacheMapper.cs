using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Native.PageTable;

namespace Native.SfBufNative;

/// <summary>
/// <c>epoch-cache</c>: a cache of mappings whose hits take no lock and whose recycled slots wait
/// out an epoch instead of sending a shootdown, so that every mapping is valid on every CPU from
/// the moment it is made, with no IPI, no caller hint and no invalidation at map time.
/// <para>
/// Like <c>sfbuf-i386</c>, a pool of <c>nsfbufs</c> slots each owns one fixed page of the sf_buf
/// window, and an inactive slot (reference count 0) keeps its mapping so that the next
/// allocation of its page is a hit. Unlike it:
/// </para>
/// <list type="bullet">
/// <item><b>Lock-free hits.</b> A per-frame index (<c>page → slot</c>, the role of Linux's
/// <c>page_address</c> slot with <c>WANT_PAGE_VIRTUAL</c>) is read without a lock; the slot's
/// reference count is taken with increment-if-not-negative and the slot's page re-checked after
/// the increment. Statistics are per CPU. A hit writes only the slot's own cache line.</item>
/// <item><b>Quarantine instead of shootdowns.</b> A slot is recycled in two steps. <i>Retire</i>
/// (a batch at a time, chosen by a second-chance clock): the reference count goes 0 → retired,
/// the slot leaves the index, its PTE is cleared, and the batch is stamped with a new global
/// epoch. <i>Clean</i>: once every CPU has passed a flush point since that epoch, no TLB can hold
/// the old translation, and the slot may be mapped to a new page with a PTE write and nothing
/// else. A CPU passes a flush point whenever it runs an sf_buf operation, switches a thread in,
/// or polls (<see cref="Cpu.Poll"/>, and on its return from an idle park): it invalidates the
/// slots retired since the epoch it last observed (one <c>invlpg</c> each, or one full flush
/// above <see cref="FlushCeiling"/> pages, Linux's <c>tlb_single_page_flush_ceiling</c>) and
/// publishes the epoch it read before flushing. An idle CPU is not waited for: it passes a flush
/// point before it runs a thread again.</item>
/// <item><b>A partition per CPU.</b> The slots are split into one partition per CPU, each with
/// its own clean stack, retired queue and clock. A CPU takes clean slots from its own partition
/// first and retires ahead from it only, and it retires outside the pool lock (holding only its
/// partition's retire right; a short lock serializes the epoch's publication), so that CPUs
/// streaming private misses install, free, retire and reclaim slots only they write, and never
/// wait at the pool lock for each other's retire.</item>
/// <item><b>Misses without a lock.</b> Each CPU keeps a magazine of clean slots; a miss takes
/// one with an atomic exchange, claims the page's index entry with a compare-and-swap (so two
/// CPUs missing on one page never map it twice: the loser hits the winner's slot), writes the
/// PTE and publishes. Only when the magazine is empty (or waiters are queued) does a miss take
/// the pool lock, which reclaims, refills the magazine and serves waiters; after releasing it
/// the CPU retires a batch of its partition ahead if the partition runs low.</item>
/// <item><b>Fallback.</b> Only when a miss finds no clean slot and a running CPU has not passed
/// the epoch that makes enough retired slots clean within the machine's cross-CPU spin does the
/// pool send one full-flush
/// shootdown to the laggards, which advances them all at once. It is the only IPI this strategy
/// sends.</item>
/// <item><b>No hint.</b> Because a new mapping is valid everywhere, <c>SFB_CPUPRIVATE</c> changes
/// nothing (it is still checked for its pin, as the interface requires).</item>
/// <item><b>Exhaustion.</b> Waiters for a slot are served first come, first served (tickets;
/// a miss goes to the queue instead of its magazine while anyone waits), clean slots idle in
/// magazines are taken back before the pool counts as exhausted, and <see cref="AllocMany"/>
/// takes several mappings all or nothing, so that a caller needing two never holds one while
/// waiting for the other (the <c>kmap</c> deadlock).</item>
/// </list>
/// <para>
/// Invariants (checked by the stale-translation and latent-staleness oracles in every test, by
/// <c>TestHookCheckInvariants</c>, and under the interleaving explorer):
/// I1: a clean slot (on a clean stack or in a magazine) has an invalid PTE and no CPU that is
/// running a thread holds a translation for its address (kept by <see cref="ReclaimClean"/> with
/// I2; so <see cref="Install"/> needs no invalidation). I2: a CPU's published epoch E means it has
/// invalidated every slot retired at an epoch ≤ E; published epochs only grow (kept by
/// <see cref="CatchUp"/>: read before, publish after). I3: an indexed slot with reference count
/// ≥ 0 maps the page it is indexed under, and no two slots map one page while either is
/// referenced or inactive (kept by <see cref="TryHit"/>'s re-check and by <see cref="MapOrHit"/>,
/// which installs only after claiming the page's index entry). I4: a clean slot has exactly one
/// owner: its partition's clean stack (moved only by the pool lock's holder), one CPU's magazine
/// entry (taken by atomic exchange), or the install it was taken for; only the holder of a
/// partition's retire right moves its slots into the retired state and appends them to its
/// queue (after their epoch is published), only the pool lock's holder moves a slot out of the
/// retired state (head first, then the state), and only the holder of the last reference moves
/// it to 0.
/// </para>
/// </summary>
public sealed unsafe partial class EpochCacheMapper : SfBufMapper, IContextSwitchHook, IPollHook
{
    /// <summary>Retired batches above this many pages are invalidated with one full flush.</summary>
    public const int FlushCeiling = 32;

    /// <summary><see cref="SfBufStats.Details"/> key: slots retired (unmapped, PTE cleared), one per recycle.</summary>
    public const string DetailRetiredSlots = "epoch.retired_slots";

    /// <summary><see cref="SfBufStats.Details"/> key: batches retired, one new global epoch each.</summary>
    public const string DetailBatches = "epoch.batches";

    /// <summary><see cref="SfBufStats.Details"/> key: fallback shootdowns, the strategy's only IPIs.</summary>
    public const string DetailFallbackShootdowns = "epoch.fallback_shootdowns";

    /// <summary><see cref="SfBufStats.Details"/> key: flush points that found retired slots to invalidate.</summary>
    public const string DetailFlushPoints = "epoch.flush_points";

    /// <summary><see cref="SfBufStats.Details"/> key: misses that took the pool lock (the rest took a clean slot from their CPU's magazine).</summary>
    public const string DetailLockedMisses = "epoch.locked_misses";

    /// <summary><see cref="SfBufStats.Details"/> key: clean slots taken back from CPUs' magazines when the pool ran short.</summary>
    public const string DetailSteals = "epoch.magazine_steals";

    private const int BatchRing = 8;
    private const long CleanState = -1;
    private const long RetiredState = -2;
    private const int Empty = -1;            // a magazine entry without a slot
    private const int InstallingEntry = -1;  // an index entry claimed by an install in progress (entries are slot + 1)
    private const ulong NewPteFlags = Pte.PG_V | Pte.PG_RW | Pte.PG_G;

    private readonly KvaRegion _window;
    private readonly EpochSlot* _slots;
    private readonly int* _slotOfFrame;
    private readonly EpochPerCpu* _perCpu;
    private readonly EpochShared* _shared;
    private readonly EpochBatch* _batches;
    private readonly int* _batchSlots;
    private readonly int* _cleanStack;
    private readonly int* _retiredQueue;
    private readonly int* _magazines;
    private readonly int _magazineStride;
    private readonly KMutex _lock = new("epoch_cache");
    private readonly KMutex _publishLock = new("epoch_cache_publish", spinOnly: true);
    private readonly object _waitChannel = new();
    private readonly HashSet<long> _abandonedTickets = [];
    private readonly int _cpuCount;
    private readonly PoolPartition[] _parts;
    private int _cleanCount;    // clean slots on every partition's stack (pool lock)
    private long _nextTicket;
    private long _servingTicket;
    private int _peak;
    private long _allocWait;
    private long _failures;
    private long _recycles;
    private long _fallbackShootdowns;
    private long _batchesRetired;
    private long _steals;
    private volatile bool _retireAhead;
    private readonly long _dormantEpochs;

    internal EpochCacheMapper(Machine machine, int? nsfbufs)
        : base(machine)
    {
        _window = machine.Layout.SfBufWindow;
        Nsfbufs = nsfbufs ?? _window.Pages;
        if (Nsfbufs < 1 || Nsfbufs > _window.Pages)
        {
            Dispose();
            throw new ArgumentOutOfRangeException(nameof(nsfbufs), Nsfbufs, $"nsfbufs must be 1 to the sf_buf window's {_window.Pages} pages");
        }

        int cpuCount = machine.Cpus.Count;
        BatchSize = Math.Clamp(Nsfbufs / 8, 1, 512);
        LowWater = Math.Max(1, BatchSize / 4);
        // A batch's worth across the CPUs: every refill takes the pool lock, so the fewer refills,
        // the fewer meetings there of CPUs streaming misses at the same rate (at nsfbufs / 16 per
        // CPU, two threads missing on two CPUs took 355 ns per miss; at nsfbufs / 8 / CPUs, 253 ns,
        // when the batch retire still ran under the pool lock).
        MagazineSize = Math.Clamp(BatchSize / cpuCount, 1, 256);
        _magazineStride = (1 + MagazineSize + 15) / 16 * 16; // whole 64-byte lines per CPU
        // One block, so that set-up either gets all of it or fails holding nothing (the per-CPU
        // and shared lines first, at 128-byte boundaries; then the 64-byte slots; then the ints,
        // the per-CPU magazines first so that each starts a cache line).
        nuint perCpuBytes = (nuint)cpuCount * (nuint)sizeof(EpochPerCpu);
        nuint slotBytes = (nuint)Nsfbufs * (nuint)sizeof(EpochSlot);
        nuint batchBytes = BatchRing * (nuint)sizeof(EpochBatch);
        nuint intCount = ((nuint)cpuCount * (nuint)_magazineStride) + (BatchRing * FlushCeiling) + machine.Physical.FrameCount + (2 * (nuint)Nsfbufs);
        byte* block;
        try
        {
            block = (byte*)machine.Ledger.AllocZeroed(perCpuBytes + (nuint)sizeof(EpochShared) + slotBytes + batchBytes + (intCount * sizeof(int)), alignment: 128);
        }
        catch
        {
            Dispose(); // the instruments the base published (Stats reads no CPU yet: _cpuCount is 0)
            throw;
        }

        _cpuCount = cpuCount;
        _dormantEpochs = 4L * cpuCount; // a CPU streaming misses refills a few times per batch it retires; every CPU's batches advance the epoch

        _perCpu = (EpochPerCpu*)block;
        _shared = (EpochShared*)(block + perCpuBytes);
        _slots = (EpochSlot*)(_shared + 1);
        _batches = (EpochBatch*)((byte*)_slots + slotBytes);
        _magazines = (int*)((byte*)_batches + batchBytes);
        _batchSlots = _magazines + (cpuCount * _magazineStride);
        _slotOfFrame = _batchSlots + (BatchRing * FlushCeiling);
        _cleanStack = _slotOfFrame + machine.Physical.FrameCount;
        _retiredQueue = _cleanStack + Nsfbufs;

        // One partition of the slots per CPU, each with its own clean stack, retired queue and
        // clock (see PoolPartition). Every slot starts clean: its PTE is invalid and no TLB has
        // ever seen its address. Pushed in reverse so that the lowest slot is used first, as
        // FreeBSD's free list hands them out.
        _parts = new PoolPartition[cpuCount];
        for (int c = 0; c < cpuCount; c++)
        {
            int start = (int)((long)c * Nsfbufs / cpuCount), end = (int)((long)(c + 1) * Nsfbufs / cpuCount);
            _parts[c] = new PoolPartition { Start = start, Size = end - start };
            for (int i = end - 1; i >= start; i--)
            {
                _slots[i].Ref = CleanState;
                _slots[i].Home = c;
                PushClean(i);
            }
        }

        for (int c = 0; c < cpuCount; c++)
        {
            new Span<int>(Magazine(c) + 1, MagazineSize).Fill(Empty);
        }

        machine.AddContextSwitchHook(this);
        machine.AddPollHook(this);
    }

    /// <summary><c>nsfbufs</c>: the pool size.</summary>
    public int Nsfbufs { get; }

    /// <summary>Slots retired at once when clean slots run low.</summary>
    public int BatchSize { get; }

    /// <summary>A CPU retires ahead when its partition has fewer clean and retired slots than this plus its next refill (a miss and a magazine).</summary>
    public int LowWater { get; }

    /// <summary>Clean slots a CPU keeps for misses that take no lock.</summary>
    public int MagazineSize { get; }

    /// <summary>The current global epoch (batches retired so far).</summary>
    public long GlobalEpoch => Volatile.Read(ref _shared->GlobalEpoch);

    /// <summary>Full-flush shootdowns sent because a running CPU lagged behind a needed epoch.</summary>
    public long FallbackShootdowns => Volatile.Read(ref _fallbackShootdowns);

    /// <inheritdoc/>
    public override string Name => EpochCache;

    /// <inheritdoc/>
    public override SfBuf Alloc(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        Machine.Physical.CheckFrame(page.Frame);
        CheckAlloc(page, flags);
        var td = KernelThread.Current;
        var cpu = td.Cpu!;
        FlushPoint(cpu);
        int slot = TryHit(page.Frame, cpu);
        if (slot >= 0)
        {
            _perCpu[cpu.Id].Hits++;
            return Handle(slot, page);
        }

        // A miss with a clean slot in this CPU's magazine takes no lock; with waiters queued it
        // joins the queue instead, so that they are served first.
        if (Volatile.Read(ref _shared->Waiters) == 0)
        {
            int clean = PopMagazine(cpu.Id);
            if (clean >= 0)
            {
                slot = MapOrHit(cpu, page.Frame, clean);
                if (slot != clean)
                {
                    PushBackMagazine(cpu.Id, clean);
                }

                return Handle(slot, page);
            }
        }

        return AllocSlow(td, page, flags, cancellation);
    }

    /// <summary>
    /// Maps every page of <paramref name="pages"/> or none: the allocation waits (or fails, per
    /// <paramref name="flags"/>) holding nothing, so two callers that each need several mappings
    /// cannot deadlock holding part of what the other needs.
    /// </summary>
    /// <returns>True with every handle in <paramref name="result"/>; false (NoWait or a cancelled Catch) with none held.</returns>
    public override bool AllocMany(ReadOnlySpan<VmPage> pages, Span<SfBuf> result, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        if (result.Length < pages.Length)
        {
            throw new ArgumentException($"{result.Length} handles cannot hold {pages.Length} mappings", nameof(result));
        }

        if (pages.Length > Nsfbufs)
        {
            throw new ArgumentOutOfRangeException(nameof(pages), pages.Length, $"more pages than the pool's {Nsfbufs} slots can never be mapped at once");
        }

        foreach (var page in pages)
        {
            Machine.Physical.CheckFrame(page.Frame);
            CheckAlloc(page, flags);
        }

        var td = KernelThread.Current;
        FlushPoint(td.Cpu!);
        _lock.Lock(td);
        var wait = WaitState.None;
        try
        {
            while (true)
            {
                if (IsMyTurn(wait) && TryMapAll(td, pages, result))
                {
                    return true;
                }

                if (!WaitForSlot(td, flags, cancellation, ref wait))
                {
                    return false;
                }
            }
        }
        finally
        {
            LeaveQueue(ref wait);
            SamplePeak();
            _lock.Unlock(td);
            RetireAheadIfLow(td);
        }
    }

    /// <summary>
    /// Maps every page of <paramref name="pages"/> if enough slots can be made clean (pool lock
    /// held). Every partition's retire right is held throughout, so that no retire runs between
    /// the count and the installs: a page not indexed now, or indexed to a retired slot, then
    /// needs at most one clean slot (an install another CPU makes from its magazine meanwhile only
    /// turns one into a hit). EnsureClean may retire an inactive slot of one of these pages
    /// itself: count again after it, and ask for more while that left too few (each round the
    /// count grows, so it ends).
    /// </summary>
    private bool TryMapAll(KernelThread td, ReadOnlySpan<VmPage> pages, Span<SfBuf> result)
    {
        var cpu = td.Cpu!;
        int taken = 0;
        try
        {
            for (; taken < _cpuCount; taken++)
            {
                TakeRetireRight(cpu, taken);
            }

            bool ready;
            int needed;
            do
            {
                needed = Missing(pages);
                ready = EnsureClean(td, needed, holdsRetireRights: true);
            }
            while (ready && Missing(pages) > needed);

            if (!ready)
            {
                return false;
            }

            for (int i = 0; i < pages.Length; i++)
            {
                int slot = TryHit(pages[i].Frame, cpu);
                if (slot >= 0)
                {
                    _perCpu[cpu.Id].Hits++;
                }
                else
                {
                    slot = MapOrHitLocked(cpu, pages[i].Frame);
                }

                result[i] = Handle(slot, pages[i]);
            }

            return true;
        }
        finally
        {
            for (int c = 0; c < taken; c++)
            {
                Volatile.Write(ref _parts[c].RetireBusy, 0); // only the rights taken: a throw may end the loop early
            }
        }
    }

    /// <summary>Pages of <paramref name="pages"/> without a live slot: an upper bound on the installs they need (pool lock held).</summary>
    private int Missing(ReadOnlySpan<VmPage> pages)
    {
        int missing = 0;
        foreach (var page in pages)
        {
            missing += LiveSlot(page.Frame) < 0 ? 1 : 0;
        }

        return missing;
    }

    /// <inheritdoc/>
    public override void Free(SfBuf sf)
    {
        CheckOwner(sf);
        if ((uint)sf.Slot >= (uint)Nsfbufs || sf.Kva != _window.PageAddress(sf.Slot))
        {
            throw new ArgumentException($"{sf} is not an sf_buf of this pool", nameof(sf));
        }

        var cpu = KernelThread.Current.Cpu!;
        EpochSlot* s = _slots + sf.Slot;
        while (true)
        {
            long r = Volatile.Read(ref s->Ref);
            if (r <= 0 || s->Frame != sf.Page.Frame || Volatile.Read(ref s->Generation) != sf.Generation)
            {
                throw new InvalidOperationException(r == 0
                    ? $"double free of {sf}: its reference count is already 0"
                    : $"stale handle {sf}: the sf_buf now maps another page or was retired (double free?)");
            }

            cpu.SchedulingPoint(); // a retire may test the count between the read and the CAS
            if (Interlocked.CompareExchange(ref s->Ref, r - 1, r) == r)
            {
                if (r == 1)
                {
                    BecameInactive(s, cpu.Id);
                }

                break;
            }
        }

        FlushPoint(cpu);
    }

    /// <inheritdoc/>
    public override SfBufStats Stats()
    {
        long hits = 0, misses = 0, used = 0, flushPoints = 0, lockedMisses = 0;
        for (int i = 0; i < _cpuCount; i++)
        {
            lockedMisses += Volatile.Read(ref _perCpu[i].LockedMisses);
            hits += Volatile.Read(ref _perCpu[i].Hits);
            misses += Volatile.Read(ref _perCpu[i].Misses);
            used += Volatile.Read(ref _perCpu[i].Used);
            flushPoints += Volatile.Read(ref _perCpu[i].FlushPoints);
        }

        return new SfBufStats
        {
            Strategy = Name,
            Nsfbufs = Nsfbufs,
            NsfbufsUsed = (int)Math.Max(0, used),
            NsfbufsPeak = Math.Max(Volatile.Read(ref _peak), (int)Math.Max(0, used)),
            AllocWait = Volatile.Read(ref _allocWait),
            AllocFail = AllocFailCount,
            Hits = hits,
            Misses = misses,
            Recycles = Volatile.Read(ref _recycles),
            Failures = Volatile.Read(ref _failures),
            Details = new Dictionary<string, long>(StringComparer.Ordinal)
            {
                [DetailRetiredSlots] = Volatile.Read(ref _recycles),
                [DetailBatches] = Volatile.Read(ref _batchesRetired),
                [DetailFallbackShootdowns] = Volatile.Read(ref _fallbackShootdowns),
                [DetailFlushPoints] = flushPoints,
                [DetailLockedMisses] = lockedMisses,
                [DetailSteals] = Volatile.Read(ref _steals),
            },
        };
    }

    /// <summary>A thread starts running on <paramref name="cpu"/>: a flush point, before it touches memory.</summary>
    void IContextSwitchHook.SwitchIn(Cpu cpu, KernelThread thread, int migratedFrom) => FlushPoint(cpu);

    /// <summary>
    /// The CPU's thread polls (<see cref="Cpu.Poll"/>, a kernel loop that waits, as a CPU takes
    /// interrupts): a flush point, so that such a loop does not hold back the epoch a miss waits
    /// for until the fallback shootdown.
    /// </summary>
    void IPollHook.Polled(Cpu cpu) => FlushPoint(cpu);

    /// <summary>Nothing: a CPU without a thread accesses nothing, and is treated as flushed until it runs one.</summary>
    void IContextSwitchHook.SwitchOut(Cpu cpu, KernelThread thread)
    {
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            Machine.RemoveContextSwitchHook(this);
            Machine.RemovePollHook(this);
        }

        base.Dispose(disposing);
    }

    // ---------------------------------------------------------------- hit path

    /// <summary>The slot indexed under <paramref name="frame"/>, or -1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int IndexedSlot(uint frame) => Volatile.Read(ref _slotOfFrame[frame]) - 1;

    /// <summary>The indexed slot if it is not retired (a hit will find it), else -1.</summary>
    private int LiveSlot(uint frame)
    {
        int slot = IndexedSlot(frame);
        return slot >= 0 && Volatile.Read(ref _slots[slot].Ref) >= 0 ? slot : -1;
    }

    /// <summary>Takes a reference on the slot mapping <paramref name="frame"/>, lock-free; -1 if there is none.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int TryHit(uint frame, Cpu cpu)
    {
        int slot = IndexedSlot(frame);
        if (slot < 0)
        {
            return -1;
        }

        EpochSlot* s = _slots + slot;

        // The index entry may be retired, and even reinstalled for another page, from here to
        // the increment: the explorer interleaves retire and install at this point.
        cpu.SchedulingPoint();
        TestHooks?.BeforeHitIncrement?.Invoke();
        while (true)
        {
            long r = Volatile.Read(ref s->Ref);
            if (r < 0)
            {
                return -1; // retired or clean: never revived
            }

            if (Interlocked.CompareExchange(ref s->Ref, r + 1, r) == r)
            {
                if (r == 0)
                {
                    _perCpu[cpu.Id].Used++;
                }

                // I3 holds only while the count is held: re-check the page after taking it. A
                // mismatch means the index entry was read before the slot was retired and
                // reinstalled for another page (possible only across a long delay): give the
                // reference back as a free would.
                if (s->Frame == frame)
                {
                    return slot;
                }

                Release(s, cpu.Id);
                return -1;
            }
        }
    }

    /// <summary>Drops one reference; the last one makes the slot inactive (mapping kept).</summary>
    private void Release(EpochSlot* s, int cpu)
    {
        if (Interlocked.Decrement(ref s->Ref) == 0)
        {
            BecameInactive(s, cpu);
        }
    }

    private void BecameInactive(EpochSlot* s, int cpu)
    {
        // The clock gives a slot that was just used a second chance.
        s->Referenced = 1;
        _perCpu[cpu].Used--;

        // The Interlocked that dropped the count is a full fence: a waiter registered before it
        // is seen here, and one registering after it sees the count at 0 when it scans.
        if (Volatile.Read(ref _shared->Waiters) != 0)
        {
            WakeWaiters();
        }
    }

    private SfBuf Handle(int slot, VmPage page) =>
        new(_window.PageAddress(slot), page, slot, Id, Volatile.Read(ref _slots[slot].Generation));

    // ---------------------------------------------------------------- flush points

    /// <summary>
    /// A flush point on <paramref name="cpu"/> (its own thread): invalidate what was retired since
    /// the epoch this CPU last observed, then publish the epoch read before invalidating.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void FlushPoint(Cpu cpu)
    {
        long global = Volatile.Read(ref _shared->GlobalEpoch);
        if (global != Volatile.Read(ref _perCpu[cpu.Id].ObservedEpoch))
        {
            CatchUp(cpu, global);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void CatchUp(Cpu cpu, long global)
    {
        EpochPerCpu* pc = _perCpu + cpu.Id;
        long observed = Volatile.Read(ref pc->ObservedEpoch);
        if (observed >= global)
        {
            return; // advanced by a fallback shootdown meanwhile
        }

        // Read before, publish after (I2): a batch retired from here on has a later epoch than
        // the one this CPU publishes, so it is never counted as invalidated here.
        cpu.SchedulingPoint();
        if (!InvalidateRetired(cpu, observed, global))
        {
            cpu.FlushLocal();
        }

        pc->FlushPoints++;
        cpu.SchedulingPoint();
        RaiseObserved(pc, global);
    }

    /// <summary>
    /// Invalidates page by page the slots of batches (<paramref name="from"/>, <paramref name="to"/>]
    /// if they are few enough and still described in the ring; false means "flush everything".
    /// </summary>
    private bool InvalidateRetired(Cpu cpu, long from, long to)
    {
        if (to - from > BatchRing)
        {
            return false;
        }

        int total = 0;
        for (long e = from + 1; e <= to; e++)
        {
            EpochBatch* b = _batches + (e % BatchRing);
            if (Volatile.Read(ref b->Epoch) != e)
            {
                return false;
            }

            total += b->Count;
            if (total > FlushCeiling)
            {
                return false;
            }
        }

        for (long e = from + 1; e <= to; e++)
        {
            EpochBatch* b = _batches + (e % BatchRing);
            int count = b->Count;
            int* slots = _batchSlots + ((e % BatchRing) * FlushCeiling);
            for (int i = 0; i < count; i++)
            {
                cpu.InvalidateLocal(_window.PageAddress(slots[i]) >> Pte.PageShift);
            }

            // Seqlock check: a descriptor rewritten for a later epoch while it was read may have
            // named other slots; then only a full flush is certain.
            if (Volatile.Read(ref b->Epoch) != e)
            {
                return false;
            }
        }

        return true;
    }

    private static void RaiseObserved(EpochPerCpu* pc, long epoch)
    {
        while (true)
        {
            long seen = Volatile.Read(ref pc->ObservedEpoch);
            if (seen >= epoch || Interlocked.CompareExchange(ref pc->ObservedEpoch, epoch, seen) == seen)
            {
                return;
            }
        }
    }

    // ---------------------------------------------------------------- miss path

    private SfBuf AllocSlow(KernelThread td, VmPage page, SfBufFlags flags, CancellationToken cancellation)
    {
        _lock.Lock(td);
        var wait = WaitState.None;
        bool refill = false;
        try
        {
            while (true)
            {
                // Another thread may have mapped the page while this one waited for the lock.
                int slot = TryHit(page.Frame, td.Cpu!);
                if (slot >= 0)
                {
                    _perCpu[td.Cpu!.Id].Hits++;
                    return Handle(slot, page);
                }

                // Only one slot is waited for; a magazine's worth more is taken below when nobody
                // else waits, so that the next misses on this CPU take no lock.
                if (IsMyTurn(wait) && EnsureClean(td, 1))
                {
                    refill = true;
                    return Handle(MapOrHitLocked(td.Cpu!, page.Frame), page);
                }

                if (!WaitForSlot(td, flags, cancellation, ref wait))
                {
                    return SfBuf.None;
                }
            }
        }
        finally
        {
            LeaveQueue(ref wait);
            if (refill && Volatile.Read(ref _shared->Waiters) == 0)
            {
                RefillMagazine(td.Cpu!.Id);
            }

            SamplePeak();

            _lock.Unlock(td);
            RetireAheadIfLow(td);
        }
    }

    /// <summary>
    /// Maps <paramref name="frame"/> with a slot from a clean stack (pool lock held), or hits the
    /// slot another CPU installed meanwhile and puts the clean one back.
    /// </summary>
    private int MapOrHitLocked(Cpu cpu, uint frame)
    {
        int clean = PopClean(cpu.Id);
        if (clean < 0)
        {
            throw new InvalidOperationException("epoch-cache: an install without a clean slot (EnsureClean must precede it)");
        }

        int slot = MapOrHit(cpu, frame, clean);
        if (slot != clean)
        {
            PushClean(clean);
        }
        else
        {
            _perCpu[cpu.Id].LockedMisses++;
        }

        return slot;
    }

    /// <summary>
    /// Maps <paramref name="frame"/> with <paramref name="clean"/>, a clean slot the caller owns,
    /// and returns it with one reference; or, when another CPU has mapped the frame meanwhile,
    /// takes a reference on that slot and returns it instead (the caller keeps the clean one).
    /// Lock-free: the frame's index entry is claimed first (I3: one slot per page), so two CPUs
    /// missing on one page never map it twice.
    /// </summary>
    private int MapOrHit(Cpu cpu, uint frame, int clean)
    {
        while (true)
        {
            int entry = Volatile.Read(ref _slotOfFrame[frame]);
            if (entry == InstallingEntry)
            {
                // Another CPU is between its claim and its publication: a few stores that never
                // wait for anything, so spin (servicing this CPU's mailbox) until it is done.
                cpu.Poll();
                Thread.SpinWait(1);
                continue;
            }

            if (entry > 0)
            {
                int hit = TryHit(frame, cpu);
                if (hit >= 0)
                {
                    _perCpu[cpu.Id].Hits++;
                    return hit;
                }
            }

            cpu.SchedulingPoint(); // another CPU may claim, publish or retire the entry here
            if (Interlocked.CompareExchange(ref _slotOfFrame[frame], InstallingEntry, entry) == entry)
            {
                Install(cpu, clean, frame);
                return clean;
            }
        }
    }

    /// <summary>
    /// Maps the clean slot <paramref name="slot"/> to <paramref name="frame"/>, whose index entry
    /// the caller has claimed: one PTE write, no invalidation anywhere (I1), then publication.
    /// </summary>
    private void Install(Cpu cpu, int slot, uint frame)
    {
        EpochSlot* s = _slots + slot;
        Debug.Assert(Volatile.Read(ref s->Ref) == CleanState, "only a clean slot is installed");
        s->Frame = frame;
        s->Referenced = 0;
        Interlocked.Increment(ref s->Generation);
        ulong old = Machine.KernelPmap.ExchangePte(_window.PageAddress(slot), Pte.Make(frame, NewPteFlags));
        Debug.Assert(!Pte.IsValid(old), "a clean slot's PTE is invalid");
        Machine.KernelPmap.CountMapping(1); // every miss is one mapping of one page (PaperChecks)
        Volatile.Write(ref s->Ref, 1);
        cpu.SchedulingPoint(); // hits on the claimed entry spin until it is published
        Volatile.Write(ref _slotOfFrame[frame], slot + 1);

        EpochPerCpu* pc = _perCpu + cpu.Id;
        pc->Misses++;
        pc->Used++;
    }

    /// <summary>
    /// Raises <c>nsfbufspeak</c> to the slots in use now. Sampled under the pool lock and by
    /// <see cref="Stats"/>, not at every install: summing the use counts reads every CPU's line,
    /// which a lock-free miss must not pull across.
    /// </summary>
    private int SamplePeak()
    {
        int used = CurrentUsed();
        for (int peak = Volatile.Read(ref _peak); used > peak; peak = Volatile.Read(ref _peak))
        {
            if (Interlocked.CompareExchange(ref _peak, used, peak) == peak)
            {
                break;
            }
        }

        return used;
    }

    // ---------------------------------------------------------------- per-CPU magazines

    /// <summary>
    /// CPU <paramref name="cpu"/>'s magazine: word 0 is its fill mark (written by the CPU's own
    /// thread only; every entry at or above it is empty), then <see cref="MagazineSize"/> entries,
    /// each a clean slot or empty. An entry is taken with an atomic exchange, by its CPU without
    /// the lock, or by a lock holder stealing when the pool runs short.
    /// </summary>
    private int* Magazine(int cpu) => _magazines + (cpu * _magazineStride);

    /// <summary>Takes a clean slot from this CPU's magazine, or -1 (its own thread, no lock).</summary>
    private int PopMagazine(int cpu)
    {
        int* m = Magazine(cpu);
        int n = m[0];
        while (n > 0)
        {
            n--;
            int slot = Interlocked.Exchange(ref m[1 + n], Empty);
            if (slot >= 0)
            {
                m[0] = n;
                return slot;
            }
        }

        m[0] = 0;
        return -1;
    }

    /// <summary>Returns an unused clean slot just taken by <see cref="PopMagazine"/> (its own thread, which has not blocked since).</summary>
    private void PushBackMagazine(int cpu, int slot)
    {
        int* m = Magazine(cpu);
        Volatile.Write(ref m[1 + m[0]], slot);
        m[0]++;
    }

    /// <summary>
    /// Fills this CPU's magazine from the clean stacks, its own partition's first (pool lock held,
    /// by the CPU's own thread). The slots go in top down, so that the CPU uses them in the order
    /// the stack gave them, lowest first: a CPU's mappings then cover a run of consecutive
    /// addresses, which spreads them evenly over the TLB's sets (filled bottom up, each magazine
    /// was used in reverse, and the slots a CPU left in its magazine were a run from the middle of
    /// what it had used, so that some sets held one more of its mappings than others).
    /// </summary>
    private void RefillMagazine(int cpu)
    {
        Volatile.Write(ref _parts[cpu].LastRefillEpoch, Volatile.Read(ref _shared->GlobalEpoch)); // not dormant (RetireAheadIfLow)
        int* m = Magazine(cpu);
        int n = m[0];
        int count = Math.Min(MagazineSize - n, _cleanCount);
        for (int i = n + count - 1; i >= n; i--)
        {
            Volatile.Write(ref m[1 + i], PopClean(cpu));
        }

        m[0] = n + count;
    }

    /// <summary>Takes every clean slot out of every CPU's magazine onto its partition's clean stack (pool lock held).</summary>
    private void StealMagazines(Cpu self)
    {
        for (int c = 0; c < _cpuCount; c++)
        {
            int* m = Magazine(c);
            for (int i = 0; i < MagazineSize; i++)
            {
                self.SchedulingPoint(); // the owner may pop the entry first
                int slot = Interlocked.Exchange(ref m[1 + i], Empty);
                if (slot >= 0)
                {
                    PushClean(slot);
                    _steals++;
                }
            }
        }
    }

    /// <summary>
    /// Makes at least <paramref name="needed"/> clean slots available (pool lock held): taking back
    /// the magazines' clean slots when every stack is short, retiring on demand (this CPU's
    /// partition first) when even the retired slots are too few, and waiting out (or, as the last
    /// resort, shooting down) the epochs of the retired batches. False when not enough slots are
    /// inactive: the caller waits.
    /// </summary>
    private bool EnsureClean(KernelThread td, int needed, bool holdsRetireRights = false)
    {
        if (needed == 0)
        {
            return true;
        }

        var cpu = td.Cpu!;
        int home = cpu.Id;
        ReclaimClean(cpu, home);
        if (_cleanCount >= needed)
        {
            return true;
        }

        // The other partitions' retired slots may be clean by now; then the clean slots idle in
        // other CPUs' magazines, which are cheaper than waiting for an epoch (the pool is
        // exhausted only when they are counted too).
        ReclaimClean(cpu, -1);
        if (_cleanCount >= needed)
        {
            return true;
        }

        StealMagazines(cpu);
        if (_cleanCount >= needed)
        {
            return true;
        }

        // Retire on demand, this CPU's partition first. A partition's retire right is waited for
        // (its owner may be retiring ahead: it never needs the pool lock, so this ends), and a
        // retire it just published is counted before retiring more. From now on misses have
        // outrun the clean slots, and each CPU retires ahead (RetireAheadIfLow).
        for (int k = 0; k < _cpuCount && _cleanCount + RetiredCount() < needed; k++)
        {
            _retireAhead = true;
            int c = (home + k) % _cpuCount;
            if (!holdsRetireRights)
            {
                TakeRetireRight(cpu, c);
            }

            try
            {
                int deficit = needed - _cleanCount - RetiredCount();
                if (deficit > 0)
                {
                    RetireBatch(cpu, c, Math.Max(BatchSize, deficit));
                }
            }
            finally
            {
                if (!holdsRetireRights)
                {
                    Volatile.Write(ref _parts[c].RetireBusy, 0);
                }
            }
        }

        if (RetiredCount() + _cleanCount < needed)
        {
            return false; // everything else is in use: the pool is exhausted
        }

        // The retired batches must become clean: wait briefly for the laggards to pass a flush
        // point on their own (they do at every sf_buf operation, context switch and poll), then
        // force them. This CPU passes its own first (another CPU may have published a batch
        // since), and only the epoch that makes enough slots clean is waited for.
        FlushPoint(cpu);
        WaitForEpoch(td, EpochMakingClean(needed - _cleanCount));
        ReclaimClean(cpu, -1);
        return _cleanCount >= needed;
    }

    /// <summary>
    /// The retire epoch of the <paramref name="count"/>-th oldest queued slot: once every running
    /// CPU has passed it, that many retired slots can be reclaimed (each partition's queue is in
    /// epoch order, so their heads are merged; pool lock held, and at least that many are queued).
    /// </summary>
    private long EpochMakingClean(int count)
    {
        Span<long> next = _cpuCount <= 64 ? stackalloc long[_cpuCount] : new long[_cpuCount];
        for (int c = 0; c < _cpuCount; c++)
        {
            next[c] = _parts[c].RetiredHead;
        }

        long epoch = 0;
        for (int taken = 0; taken < count; taken++)
        {
            int best = -1;
            for (int c = 0; c < _cpuCount; c++)
            {
                if (next[c] < Volatile.Read(ref _parts[c].RetiredTail)
                    && (best < 0 || _slots[RetiredAt(c, next[c])].RetireEpoch < _slots[RetiredAt(best, next[best])].RetireEpoch))
                {
                    best = c;
                }
            }

            if (best < 0)
            {
                break;
            }

            epoch = _slots[RetiredAt(best, next[best]++)].RetireEpoch;
        }

        return epoch;
    }

    /// <summary>
    /// After a locked allocation, with the pool lock released: once misses have outrun the clean
    /// slots, this CPU retires a batch of its own partition ahead while the partition has fewer
    /// clean and retired slots than its next refill takes (a miss and a magazine) plus
    /// <see cref="LowWater"/> (at most half the partition), so that the batch is clean by the
    /// time it is needed. The retire takes no lock but the short one of the epoch's publication,
    /// so the other CPUs keep refilling their magazines meanwhile (waiters are woken after it,
    /// under the pool lock). Skipped if the partition is being retired already.
    /// </summary>
    private void RetireAheadIfLow(KernelThread td)
    {
        var cpu = td.Cpu;
        if (!_retireAhead || cpu == null)
        {
            return;
        }

        // The partitions this CPU recycles: its own, and those of CPUs that have stopped taking
        // slots (no refill for 4 epochs per CPU), so that a CPU streaming alone cycles
        // through the whole pool, as LRU would, instead of leaving the others' cached mappings
        // in place forever. Retires rotate among them.
        int home = cpu.Id;
        long global = Volatile.Read(ref _shared->GlobalEpoch);
        int supply = 0, size = 0;
        for (int c = 0; c < _cpuCount; c++)
        {
            if (c == home || IsDormant(c, global))
            {
                supply += Volatile.Read(ref _parts[c].Clean) + RetiredIn(c);
                size += _parts[c].Size;
            }
        }

        if (size == 0 || supply >= Math.Min(LowWater + 1 + MagazineSize, size / 2))
        {
            return;
        }

        ref int cursor = ref _perCpu[home].RetireCursor;
        for (int k = 1; k <= _cpuCount; k++)
        {
            int c = (cursor + k) % _cpuCount;
            ref var part = ref _parts[c];
            if ((c != home && !IsDormant(c, global)) || part.Size == 0 || Interlocked.CompareExchange(ref part.RetireBusy, 1, 0) != 0)
            {
                continue;
            }

            cursor = c;
            try
            {
                // At most a quarter of the partition: with many CPUs a partition is smaller than a
                // batch, and retiring all of it would evict the CPU's whole cached set at once.
                RetireBatch(cpu, c, Math.Min(BatchSize, Math.Max(1, part.Size / 4)));
            }
            finally
            {
                Volatile.Write(ref part.RetireBusy, 0);
            }

            break;
        }

        if (Volatile.Read(ref _shared->Waiters) != 0)
        {
            WakeWaiters(); // the retired slots will be clean soon: let the waiters count them
        }
    }

    /// <summary>Whether CPU <paramref name="c"/> has taken no slots from the pool for 4 epochs per CPU.</summary>
    private bool IsDormant(int c, long global) => global - Volatile.Read(ref _parts[c].LastRefillEpoch) > _dormantEpochs;

    /// <summary>Takes partition <paramref name="c"/>'s retire right, waiting for a retire in progress (pool lock may be held: a retirer never takes it).</summary>
    private void TakeRetireRight(Cpu self, int c)
    {
        var spin = default(SpinWait);
        while (Interlocked.CompareExchange(ref _parts[c].RetireBusy, 1, 0) != 0)
        {
            self.Poll(); // a retirer publishes a few stores from now; let it run under the explorer
            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    /// <summary>
    /// Retired slots queued in partition <paramref name="c"/>: a lower bound (a retirer may
    /// append at any time), exact for the pool lock's holder once no retire is in progress.
    /// </summary>
    private int RetiredIn(int c)
    {
        long head = Volatile.Read(ref _parts[c].RetiredHead); // the head first: it never passes the tail read after it
        return (int)Math.Max(0, Volatile.Read(ref _parts[c].RetiredTail) - head);
    }

    /// <summary>Retired slots of every partition not yet reclaimed.</summary>
    private int RetiredCount()
    {
        int n = 0;
        for (int c = 0; c < _cpuCount; c++)
        {
            n += RetiredIn(c);
        }

        return n;
    }

    /// <summary>Partition <paramref name="c"/>'s retired-queue entry at <paramref name="position"/> (positions count up forever).</summary>
    private int RetiredAt(int c, long position) => _retiredQueue[_parts[c].Start + (int)(position % _parts[c].Size)];

    /// <summary>Puts clean slot <paramref name="slot"/> on its home partition's stack (pool lock held).</summary>
    private void PushClean(int slot)
    {
        ref var part = ref _parts[_slots[slot].Home];
        _cleanStack[part.Start + part.Clean] = slot;
        Volatile.Write(ref part.Clean, part.Clean + 1);
        Volatile.Write(ref _cleanCount, _cleanCount + 1);
    }

    /// <summary>A clean slot from <paramref name="cpu"/>'s partition, else from the next partition that has one; -1 if none (pool lock held).</summary>
    private int PopClean(int cpu)
    {
        for (int k = 0; k < _cpuCount; k++)
        {
            ref var part = ref _parts[(cpu + k) % _cpuCount];
            if (part.Clean > 0)
            {
                Volatile.Write(ref _cleanCount, _cleanCount - 1);
                Volatile.Write(ref part.Clean, part.Clean - 1);
                return _cleanStack[part.Start + part.Clean];
            }
        }

        return -1;
    }

    /// <summary>
    /// Moves retired slots whose epoch every running CPU has passed to the clean stacks, of
    /// partition <paramref name="only"/> or (-1) of every partition: by I2 each of those CPUs has
    /// invalidated the slot since its PTE was cleared, and an idle one will flush before it runs,
    /// so I1 holds for every slot moved (pool lock held: I4). A partition's queue is in epoch order.
    /// </summary>
    private void ReclaimClean(Cpu self, int only)
    {
        if (only >= 0 ? RetiredIn(only) == 0 : RetiredCount() == 0)
        {
            return;
        }

        FlushPoint(self);
        long safe = SafeEpoch(self);
        for (int c = only >= 0 ? only : 0; c < (only >= 0 ? only + 1 : _cpuCount); c++)
        {
            ref var part = ref _parts[c];
            long tail = Volatile.Read(ref part.RetiredTail);
            while (part.RetiredHead < tail)
            {
                int slot = RetiredAt(c, part.RetiredHead);
                EpochSlot* s = _slots + slot;
                if (!IsPast(s->RetireEpoch, safe))
                {
                    break;
                }

                // The head moves before the slot leaves the retired state: the retirer, which
                // never reads the head, can then never reuse an entry still to be read (entries
                // from the head on are distinct retired slots of the partition, never more than
                // its size).
                Volatile.Write(ref part.RetiredHead, part.RetiredHead + 1);
                Volatile.Write(ref s->Ref, CleanState);
                PushClean(slot);
            }
        }
    }

    /// <summary>The lowest epoch observed by any CPU that is running a thread (idle CPUs flush before they run).</summary>
    private long SafeEpoch(Cpu self)
    {
        long safe = long.MaxValue;
        var cpus = Machine.Cpus;
        for (int i = 0; i < _cpuCount; i++)
        {
            // Read the epoch first: a CPU seen idle afterwards will pass a flush point before it
            // runs, and one seen running has published at least this epoch.
            long observed = Volatile.Read(ref _perCpu[i].ObservedEpoch);
            self.SchedulingPoint();
            if (!cpus[i].IsIdle)
            {
                safe = Math.Min(safe, observed);
            }
        }

        return safe;
    }

    /// <summary>
    /// Waits for every running CPU to pass <paramref name="need"/> on its own, for the machine's
    /// cross-CPU spin (servicing this CPU's mailbox meanwhile), then forces the laggards.
    /// </summary>
    private void WaitForEpoch(KernelThread td, long need)
    {
        var cpu = td.Cpu!;
        var passed = new EpochPassed(this, cpu, need);
        if (!cpu.WaitUntil(ref passed, park: false))
        {
            ForceEpoch(cpu, need);
        }
    }

    /// <summary>The fallback: one full-flush shootdown to every running CPU that has not observed <paramref name="need"/>.</summary>
    private void ForceEpoch(Cpu self, long need)
    {
        ulong laggards = 0;
        var cpus = Machine.Cpus;
        for (int i = 0; i < _cpuCount; i++)
        {
            if (i != self.Id && Volatile.Read(ref _perCpu[i].ObservedEpoch) < need && !cpus[i].IsIdle)
            {
                laggards |= 1UL << i;
            }
        }

        if (laggards == 0)
        {
            return;
        }

        // Every target flushes its whole TLB after the batch was published (or is idle and
        // flushes before it runs), so it has passed the epoch: advance it on its behalf.
        long global = Volatile.Read(ref _shared->GlobalEpoch);
        var td = KernelThread.Current;
        td.PinSelf();
        try
        {
            self.Shootdown(laggards, ShootdownKind.All);
        }
        finally
        {
            td.UnpinSelf();
        }

        _fallbackShootdowns++;
        for (ulong rest = laggards; rest != 0; rest &= rest - 1)
        {
            RaiseObserved(_perCpu + System.Numerics.BitOperations.TrailingZeroCount(rest), global);
        }
    }

    /// <summary>
    /// Retires up to <paramref name="want"/> inactive slots of partition <paramref name="c"/>
    /// chosen by its second-chance clock: reference count 0 → retired, out of the index, PTE
    /// cleared; then one new epoch for the batch. The caller holds the partition's retire right
    /// (so it alone moves the hand and appends to the queue), not necessarily the pool lock; the
    /// publication of the epoch is serialized by a short lock of its own.
    /// </summary>
    private void RetireBatch(Cpu cpu, int c, int want)
    {
        ref var part = ref _parts[c];
        Debug.Assert(Volatile.Read(ref part.RetireBusy) == 1, "RetireBatch runs with the partition's retire right");
        long tail = part.RetiredTail;
        int retired = 0;
        for (int scanned = 0; retired < want && scanned < 2 * part.Size; scanned++)
        {
            int slot = part.Start + part.Hand;
            part.Hand = (part.Hand + 1) % part.Size;
            EpochSlot* s = _slots + slot;
            if (Volatile.Read(ref s->Ref) != 0)
            {
                continue;
            }

            if (s->Referenced != 0)
            {
                s->Referenced = 0;
                continue;
            }

            cpu.SchedulingPoint(); // a lock-free hit may take the slot between the test and the CAS
            if (Interlocked.CompareExchange(ref s->Ref, RetiredState, 0) != 0)
            {
                continue; // hit meanwhile
            }

            Interlocked.CompareExchange(ref _slotOfFrame[s->Frame], 0, slot + 1);
            Machine.KernelPmap.ExchangePte(_window.PageAddress(slot), 0);

            // Staged past the tail: the consumer reads only below it, and the entries from the
            // head on are distinct retired slots of this partition, so none is overwritten.
            _retiredQueue[part.Start + (int)((tail + retired) % part.Size)] = slot;
            retired++;
        }

        if (retired == 0)
        {
            return;
        }

        var td = KernelThread.Current;
        _publishLock.Lock(td);
        try
        {
            // Waiting for the lock on an oversubscribed host may have parked this CPU idle, and
            // reclaims skip idle CPUs: pass a flush point before going on.
            FlushPoint(cpu);
            long epoch = Volatile.Read(ref _shared->GlobalEpoch) + 1; // only the publish lock's holder advances it
            EpochBatch* batch = _batches + (epoch % BatchRing);
            int* batchSlots = _batchSlots + ((epoch % BatchRing) * FlushCeiling);
            Volatile.Write(ref batch->Epoch, 0);
            for (int i = 0; i < retired; i++)
            {
                int slot = _retiredQueue[part.Start + (int)((tail + i) % part.Size)];
                _slots[slot].RetireEpoch = epoch;
                if (i < FlushCeiling)
                {
                    batchSlots[i] = slot;
                }
            }

            _recycles += retired;
            _batchesRetired++;
            batch->Count = retired;
            Volatile.Write(ref batch->Epoch, epoch);
            cpu.SchedulingPoint(); // flush points racing the publication of the batch
            Interlocked.Exchange(ref _shared->GlobalEpoch, epoch);

            // The slots reach the queue only with their epoch published, so that whoever waits
            // for one of them waits for an epoch a fallback shootdown can force.
            cpu.SchedulingPoint(); // the pool lock's holder reclaiming from the queue meanwhile
            Volatile.Write(ref part.RetiredTail, tail + retired);
        }
        finally
        {
            _publishLock.Unlock(td);
        }

        FlushPoint(cpu);
    }

    /// <summary>
    /// I2 decides when a retired slot is clean: every running CPU has published an epoch at least
    /// the slot's retire epoch, so it has invalidated the slot since it was unmapped.
    /// </summary>
    private bool IsPast(long retireEpoch, long safe) => TestHooks is { RecycleOneEpochEarly: true }
        ? retireEpoch <= safe + 1
        : retireEpoch <= safe;

    // ---------------------------------------------------------------- waiting (pool lock held)

    private bool IsMyTurn(WaitState wait) => wait.Ticket < 0 ? _nextTicket == _servingTicket : wait.Ticket == _servingTicket;

    /// <summary>
    /// Queues for a slot, first come first served; false for NoWait or a cancelled Catch. The
    /// first call only registers as a waiter and returns for one more scan, so a free between
    /// the failed scan and the sleep is never missed (see <see cref="BecameInactive"/>).
    /// </summary>
    private bool WaitForSlot(KernelThread td, SfBufFlags flags, CancellationToken cancellation, ref WaitState wait)
    {
        if ((flags & SfBufFlags.NoWait) != 0)
        {
            _failures++;
            return false;
        }

        if (wait.Ticket < 0)
        {
            wait.Ticket = _nextTicket++;
        }

        if (!wait.Registered)
        {
            Interlocked.Increment(ref _shared->Waiters);
            wait.Registered = true;
            return true;
        }

        _allocWait++;
        var token = (flags & SfBufFlags.Catch) != 0 ? cancellation : CancellationToken.None;
        if (Machine.Sleep(_waitChannel, _lock, cancellation: token) == SleepResult.Interrupted)
        {
            _failures++;
            return false;
        }

        return true;
    }

    /// <summary>Leaves the queue (served, hit, failed or cancelled) and lets the next waiter in.</summary>
    private void LeaveQueue(ref WaitState wait)
    {
        if (wait.Registered)
        {
            Interlocked.Decrement(ref _shared->Waiters);
        }

        if (wait.Ticket >= 0)
        {
            _abandonedTickets.Add(wait.Ticket);
            while (_abandonedTickets.Remove(_servingTicket))
            {
                _servingTicket++;
            }

            if (_nextTicket != _servingTicket)
            {
                Machine.Wakeup(_waitChannel);
            }
        }

        wait = WaitState.None;
    }

    private void WakeWaiters()
    {
        var td = KernelThread.Current;
        _lock.Lock(td);
        try
        {
            Machine.Wakeup(_waitChannel);
        }
        finally
        {
            _lock.Unlock(td);
        }
    }

    private int CurrentUsed()
    {
        long used = 0;
        for (int i = 0; i < _cpuCount; i++)
        {
            used += Volatile.Read(ref _perCpu[i].Used);
        }

        return (int)used;
    }

    /// <summary>A cross-CPU wait for every running CPU to publish an epoch at least <c>Need</c>.</summary>
    private readonly struct EpochPassed(EpochCacheMapper mapper, Cpu self, long need) : ICrossCpuWait
    {
        public bool IsMet() => mapper.IsPast(need, mapper.SafeEpoch(self));

        public void Tick()
        {
        }
    }
}

/// <summary>A thread's place among the waiters for a slot.</summary>
internal struct WaitState
{
    public long Ticket;
    public bool Registered;

    public static WaitState None => new() { Ticket = -1 };
}

/// <summary>One epoch-cache slot on its own cache line; its KVA is implied by its index.</summary>
[StructLayout(LayoutKind.Explicit, Size = 64)]
internal struct EpochSlot
{
    /// <summary>≥ 0: references (0 = inactive, mapping kept); -1 clean; -2 retired.</summary>
    [FieldOffset(0)]
    public long Ref;

    [FieldOffset(8)]
    public uint Frame;

    /// <summary>Bumped at every install: handles from an earlier mapping are stale.</summary>
    [FieldOffset(12)]
    public int Generation;

    [FieldOffset(16)]
    public long RetireEpoch;

    /// <summary>The clock's second-chance bit, set when the slot goes inactive.</summary>
    [FieldOffset(24)]
    public int Referenced;

    /// <summary>The partition (a CPU's) whose stack, queue and clock the slot belongs to; fixed.</summary>
    [FieldOffset(28)]
    public int Home;
}

/// <summary>
/// One CPU's partition of the slots: its clean stack (moved under the pool lock), its retired
/// queue (a ring appended by the holder of the partition's retire right and consumed by the
/// pool lock's holder) and its clock hand (moved by the retire right's holder), stored in the
/// shared arrays at <c>Start</c>. A CPU takes clean slots from its own partition first and
/// retires ahead from it only, so that a CPU streaming private misses mostly installs, frees,
/// retires and reclaims slots whose cache lines (slot, PTE) only it writes (other partitions are
/// touched only when its own runs short), and retires without keeping the other CPUs from the
/// pool lock.
/// </summary>
internal struct PoolPartition
{
    public int Start;
    public int Size;
    public int Clean;
    public int Hand;
    public int RetireBusy;
    public long RetiredHead;
    public long RetiredTail;

    /// <summary>The global epoch at the owner's last magazine refill: long ago means the owner takes no slots, and other CPUs recycle the partition.</summary>
    public long LastRefillEpoch;
}

/// <summary>A CPU's epoch and statistics, on lines of their own.</summary>
[StructLayout(LayoutKind.Explicit, Size = 128)]
internal struct EpochPerCpu
{
    [FieldOffset(0)]
    public long ObservedEpoch;

    [FieldOffset(8)]
    public long Hits;

    [FieldOffset(16)]
    public long Misses;

    /// <summary>0 → 1 transitions minus 1 → 0 transitions made on this CPU.</summary>
    [FieldOffset(24)]
    public long Used;

    [FieldOffset(32)]
    public long FlushPoints;

    /// <summary>Misses that took the pool lock (no clean slot in the magazine, or waiters queued).</summary>
    [FieldOffset(40)]
    public long LockedMisses;

    /// <summary>The partition this CPU retired ahead from last (its own or a dormant CPU's).</summary>
    [FieldOffset(48)]
    public int RetireCursor;
}

/// <summary>The read-mostly words every operation reads: the global epoch and the waiter count.</summary>
[StructLayout(LayoutKind.Explicit, Size = 128)]
internal struct EpochShared
{
    [FieldOffset(0)]
    public long GlobalEpoch;

    [FieldOffset(8)]
    public int Waiters;
}

/// <summary>The description of a retired batch, for page-by-page invalidation at flush points.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct EpochBatch
{
    /// <summary>The batch's epoch; 0 while the descriptor is being rewritten.</summary>
    public long Epoch;

    public int Count;
}
