using System.Runtime.CompilerServices;
using Native.PageTable;

namespace Native.SfBufNative;

/// <summary>
/// <c>epoch-cache</c>: a cache of mappings whose hits take no lock and whose recycled slots wait
/// out an epoch instead of sending a shootdown, so that every mapping is valid on every CPU from
/// the moment it is made, with no IPI, no caller hint and no invalidation at map time. As in
/// <c>sfbuf-i386</c>, each of <c>nsfbufs</c> slots owns one page of the sf_buf window, and an
/// inactive slot (reference count 0) keeps its mapping, so that the next use of its page hits.
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
/// <para>
/// Safety facts the code relies on: (a) a hit whose re-check fails never runs under the pool
/// lock (only the lock's holder takes a retired slot back to clean, so a slot read from the index
/// under the lock cannot be reinstalled for another page meanwhile; <see cref="TryHit"/> checks
/// it), which is why its release may take the lock; (b) a non-spin kernel mutex and a sleep can
/// give the CPU up, so every path reads its CPU again after one (checked mode refuses per-CPU work
/// on a CPU the caller does not hold); (c) a caller whose needed slots are retired never sleeps
/// for them: no free is coming, so it waits out (or forces) their epoch; (d) a waiter sleeps only
/// while too few slots are inactive, retired or clean, and every release to 0 and every clean
/// slot given back wakes the waiters.
/// </para>
/// <para>
/// The mechanisms, one file each: the interface and the lock-free hit path (this file); misses,
/// the lock-free install and <see cref="SfBufMapper.AllocMany"/> (<c>.Misses.cs</c>); epochs, flush points,
/// retire and the fallback shootdown (<c>.Epochs.cs</c>); partitions, magazines and reclaim
/// (<c>.Partitions.cs</c>); the wait queue (<c>.Waiting.cs</c>); the native layouts
/// (<c>EpochCacheTypes.cs</c>). Each lock-free path states its memory-ordering argument beside
/// it, for weakly ordered hosts (Arm64) as for x86. The design and its measured history are in
/// <c>docs/epoch-cache.md</c>.
/// </para>
/// </summary>
public sealed unsafe partial class EpochCacheMapper : SfBufMapper, IContextSwitchHook, IPollHook
{
    /// <summary>Retired batches above this many pages are invalidated with one full flush.</summary>
    public const int FlushCeiling = 32;

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

    /// <summary>
    /// <see cref="SfBufStats.Details"/> key: 1 when <c>nsfbufspeak</c> is exact (checked mode: every
    /// reference that makes a slot busy counts on one shared word), 0 when it is sampled (the sum
    /// of the per-CPU use counts, read under the pool lock and by <see cref="Stats"/>, which a
    /// lock-free hit or miss does not raise: a shared word would cost the hit path its scaling).
    /// A sample is neither a lower nor an upper bound: the per-CPU counts are read one after
    /// another, and a reference taken on one CPU and dropped on another can make their sum, read
    /// so, exceed every value the pool really held.
    /// </summary>
    public const string DetailPeakExact = "epoch.peak_exact";

    /// <summary><see cref="SfBufStats.Details"/> key: waits for an epoch passed again because a CPU left idle after the fallback looked for laggards.</summary>
    public const string DetailEpochRetries = "epoch.wait_retries";

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
    private readonly PoolPartition* _parts;
    private int _cleanCount;    // clean slots on every partition's stack (pool lock)
    private long _nextTicket;
    private long _servingTicket;
    private int _peak;
    private long _busyExact;
    private long _allocWait;
    private long _failures;
    private long _recycles;
    private long _fallbackShootdowns;
    private long _batchesRetired;
    private long _steals;
    private long _epochRetries;
    private volatile bool _retireAhead;
    private readonly long _dormantEpochs;

    internal EpochCacheMapper(Machine machine, int? nsfbufs)
        : base(machine)
    {
        _window = machine.Layout.SfBufWindow;
        // The whole window by default: FreeBSD's nsfbufs up to MachineOptions.SfBufWindowCpus CPUs,
        // an eighth of it per CPU above, so that a partition never shrinks below what one CPU
        // keeps cached plus a retire batch as CPUs are added (docs/epoch-cache.md, "Scaling").
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
        // the fewer meetings there of CPUs streaming misses at the same rate (docs/epoch-cache.md).
        MagazineSize = Math.Clamp(BatchSize / cpuCount, 1, 256);
        _magazineStride = (1 + MagazineSize + 15) / 16 * 16; // whole 64-byte lines per CPU
        // One block, so that set-up either gets all of it or fails holding nothing (the per-CPU
        // and shared lines first, at 128-byte boundaries; then the 64-byte slots; then the ints,
        // the per-CPU magazines first so that each starts a cache line).
        nuint perCpuBytes = (nuint)cpuCount * (nuint)(sizeof(EpochPerCpu) + sizeof(PoolPartition));
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
        _parts = (PoolPartition*)(block + ((nuint)cpuCount * (nuint)sizeof(EpochPerCpu)));
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
        InitBound();
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
    protected override SfBuf AllocCore(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        Machine.Physical.CheckFrame(page.Frame);
        CheckAlloc(page, flags);
        var td = KernelThread.Current;
        var cpu = td.Cpu!;
        FlushPoint(cpu);
        int slot = TryHit(page.Frame, cpu);
        if (slot >= 0)
        {
            CountHit(cpu, slot, page.Frame);
            return Handle(slot, page);
        }

        // A miss with a clean slot in this CPU's magazine takes no lock; with waiters queued it
        // joins the queue instead, so that they are served first. The CPU is read again: a
        // failed hit may have blocked (see TryHit) and the thread resumed on another CPU.
        cpu = td.Cpu!;
        if (Volatile.Read(ref _shared->Waiters) == 0)
        {
            int clean = PopMagazine(cpu);
            if (clean >= 0)
            {
                slot = MapOrHit(td, page.Frame, clean);
                if (slot != clean)
                {
                    ReturnClean(td, clean);
                }

                return Handle(slot, page);
            }
        }

        return AllocSlow(td, page, flags, cancellation);
    }

    /// <inheritdoc/>
    protected override void FreeCore(SfBuf sf)
    {
        CheckOwner(sf);
        if ((uint)sf.Slot >= (uint)Nsfbufs || sf.Kva != _window.PageAddress(sf.Slot))
        {
            throw new ArgumentException($"{sf} is not an sf_buf of this pool", nameof(sf));
        }

        var td = KernelThread.Current;
        var cpu = td.Cpu!;
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
                    BecameInactive(s, cpu.Id); // may block waking waiters: the CPU is read again below
                }

                break;
            }
        }

        FlushPoint(td.Cpu!);
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
            NsfbufsUsed = (int)used, // a sum of per-CPU counts read one after another: exact when quiescent, never clamped
            NsfbufsPeak = Checked ? Volatile.Read(ref _peak) : Math.Max(Volatile.Read(ref _peak), (int)used),
            AllocWait = Volatile.Read(ref _allocWait),
            AllocFail = AllocFailCount,
            Hits = hits,
            Misses = misses,
            Recycles = Volatile.Read(ref _recycles),
            Failures = Volatile.Read(ref _failures),
            Details = new Dictionary<string, long>(StringComparer.Ordinal)
            {
                [DetailPeakExact] = Checked ? 1 : 0,
                [DetailBatches] = Volatile.Read(ref _batchesRetired),
                [DetailFallbackShootdowns] = Volatile.Read(ref _fallbackShootdowns),
                [DetailFlushPoints] = flushPoints,
                [DetailLockedMisses] = lockedMisses,
                [DetailSteals] = Volatile.Read(ref _steals),
                [DetailEpochRetries] = Volatile.Read(ref _epochRetries),
                [DetailEarlyFlushes] = Volatile.Read(ref _earlyFlushes),
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
            Machine.RemoveAlarmHook(this);
        }

        base.Dispose(disposing);
    }

    /// <summary>The slot indexed under <paramref name="frame"/>, or -1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int IndexedSlot(uint frame) => Volatile.Read(ref _slotOfFrame[frame]) - 1;

    /// <summary>The indexed slot if it is not retired (a hit will find it), else -1.</summary>
    private int LiveSlot(uint frame)
    {
        int slot = IndexedSlot(frame);
        return slot >= 0 && Volatile.Read(ref _slots[slot].Ref) >= 0 ? slot : -1;
    }

    /// <summary>
    /// Takes a reference on the slot mapping <paramref name="frame"/>, lock-free; -1 if there is none.
    /// Ordering: the index entry is read with acquire and the count taken by a compare-and-swap
    /// (a full fence), so the slot's frame, read after it, is at least as new as the count; an
    /// install writes the frame and PTE before it publishes the count (release) and the entry
    /// (release). A count of 1 or more then pins the slot's frame (only the last reference's
    /// holder can let it be retired), which is what the re-check after the increment relies on.
    /// </summary>
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
                    if (Checked)
                    {
                        CountBusyExactly(+1);
                    }
                }

                // I3 holds only while the count is held: re-check the page after taking it. A
                // mismatch means the index entry was read before the slot was retired and
                // reinstalled for another page (possible only across a long delay): give the
                // reference back as a free would.
                if (s->Frame == frame)
                {
                    return slot;
                }

                // Never under the pool lock: a slot read from the index while holding it can be
                // retired meanwhile but not reinstalled, since only the lock's holder takes a
                // retired slot back to clean (I4); so the count taken above was on a retired
                // slot, which the increment never revives. The release below may take the lock
                // (waking waiters), and block, so callers read their CPU again after a miss.
                if (_lock.IsOwned)
                {
                    throw new InvalidOperationException($"epoch-cache: slot {slot} was reinstalled for frame {s->Frame} while the pool lock's holder hit it for frame {frame} (I4 broken)");
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
        if (Checked)
        {
            CountBusyExactly(-1);
        }

        // The Interlocked that dropped the count is a full fence: a waiter registered before it
        // is seen here, and one registering after it sees the count at 0 when it scans.
        if (Volatile.Read(ref _shared->Waiters) != 0)
        {
            TestHooks?.BeforeWakeWaiters?.Invoke();
            WakeWaiters();
        }
    }

    private SfBuf Handle(int slot, VmPage page) =>
        new(_window.PageAddress(slot), page, slot, Id, Volatile.Read(ref _slots[slot].Generation));
}
