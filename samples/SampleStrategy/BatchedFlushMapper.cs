using Native.PageTable;
using Native.SfBufNative;

namespace Native.SampleStrategy;

/// <summary>
/// <c>sample-batched</c>: an sf_buf strategy written outside <c>SfBufNative</c>, against its public
/// API only (<c>docs/adding-a-strategy.md</c> walks through it). A fixed pool of slots, the first
/// pages of the sf_buf window, under one lock. A clean slot has no PTE and no TLB caches it, so
/// Alloc maps a page there with one PTE write and no invalidation. Free leaves the mapping in place
/// and puts the slot on a dirty list. When no clean slot is left, every dirty slot's PTE is cleared
/// and all of them are invalidated at once, locally and on every other CPU by one shootdown (Linux
/// kmap's <c>flush_all_zero_pkmaps</c>, without its page hash: nothing is cached, every Alloc maps).
/// With every slot in use, Alloc waits, fails with NoWait, or ends when a Catch wait is cancelled.
/// </summary>
public sealed class BatchedFlushMapper : SfBufMapper
{
    /// <summary>The strategy's name.</summary>
    public const string StrategyName = "sample-batched";

    /// <summary>Batched flushes (one shootdown round each on SMP), in <see cref="SfBufStats.Details"/>.</summary>
    public const string DetailFlushes = "batched.flushes";

    /// <summary>Dirty slots cleared by the batched flushes, in <see cref="SfBufStats.Details"/>.</summary>
    public const string DetailFlushedSlots = "batched.flushed_slots";

    private readonly KvaRegion _window;
    private readonly KMutex _lock = new("sample_batched");
    private readonly object _slotFreed = new();
    private readonly int[] _generation;
    private readonly bool[] _inUse;
    private readonly int[] _clean;
    private readonly int[] _dirty;
    private int _cleanCount;
    private int _dirtyCount;
    private int _waiters;
    private long _flushes;
    private long _flushedSlots;

    /// <summary>Creates the strategy with a pool of <paramref name="nsfbufs"/> slots (null: the whole sf_buf window).</summary>
    /// <param name="machine">The machine.</param>
    /// <param name="nsfbufs">The pool size, 1 to the sf_buf window's pages.</param>
    public BatchedFlushMapper(Machine machine, int? nsfbufs = null)
        : base(machine)
    {
        _window = machine.Layout.SfBufWindow;
        Nsfbufs = nsfbufs ?? _window.Pages;
        ArgumentOutOfRangeException.ThrowIfLessThan(Nsfbufs, 1, nameof(nsfbufs));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(Nsfbufs, _window.Pages, nameof(nsfbufs));
        (_generation, _inUse, _clean, _dirty) = (new int[Nsfbufs], new bool[Nsfbufs], new int[Nsfbufs], new int[Nsfbufs]);
        for (int slot = Nsfbufs - 1; slot >= 0; slot--)
        {
            _clean[_cleanCount++] = slot;
        }
    }

    /// <summary>The registry entry: <c>SfBufStrategyInfo.Register(BatchedFlushMapper.Info)</c> makes the strategy known by name.</summary>
    public static SfBufStrategyInfo Info { get; } = new(
        StrategyName, "sample", "Linux kmap's batched flush_all_zero_pkmaps (mm/highmem.c), without page_address: samples/SampleStrategy/",
        SfBufStrategyGroup.Sample, HasPool: true, InterruptibleWait: true, KvaOnAccessingCpu: false,
        PrivateUsers: "a pool slot, like shared users (the hint is ignored)", SharedUsers: "a clean pool slot: one PTE write, no IPI; one batched shootdown per refill",
        SfBufPrivateRules.None, PerCpuPrivateSlots: 0, FreesReachWaitersOnAnyCpu: true, (machine, nsfbufs) => new BatchedFlushMapper(machine, nsfbufs))
    {
        Capacity = (mapper, _) => ((BatchedFlushMapper)mapper).Nsfbufs,
        PoolSizeIsParameter = true,
        PrivateShootdowns = SfBufShootdowns.WhenRecycling,
        ShootdownCounter = DetailFlushes,
        ShootdownsOnlyWhenRecycling = true,
        NotOnHost = "its saving is leaving freed slots' translations in place until one batched shootdown; the host kernel flushes every remap on every CPU",
    };

    /// <summary>The pool size.</summary>
    public int Nsfbufs { get; }

    /// <inheritdoc/>
    public override string Name => StrategyName;

    /// <inheritdoc/>
    protected override SfBuf AllocCore(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        CheckPage(page, flags);
        var token = (flags & SfBufFlags.Catch) != 0 ? cancellation : CancellationToken.None;
        _lock.Lock();
        try
        {
            while (_cleanCount == 0)
            {
                if (_dirtyCount > 0)
                {
                    FlushDirty();
                }
                else if ((flags & SfBufFlags.NoWait) != 0)
                {
                    CountFailure();
                    return SfBuf.None;
                }
                else
                {
                    CountWait();
                    _waiters++;
                    var result = Machine.Sleep(_slotFreed, _lock, cancellation: token);
                    _waiters--;
                    if (result == SleepResult.Interrupted)
                    {
                        CountFailure();
                        return SfBuf.None;
                    }
                }
            }

            int slot = _clean[--_cleanCount];
            _inUse[slot] = true;
            CountTaken();
            ulong kva = _window.PageAddress(slot);
            MapPage(kva, page); // a clean slot: no CPU caches its address, so nothing to invalidate
            return NewHandle(kva, page, slot, ++_generation[slot]);
        }
        finally
        {
            // A sleep ended by the machine stopping throws without retaking the lock.
            if (_lock.IsOwned)
            {
                _lock.Unlock();
            }
        }
    }

    /// <inheritdoc/>
    protected override void FreeCore(SfBuf sf)
    {
        CheckOwner(sf);
        int slot = SlotOf(sf);
        if ((uint)slot >= (uint)Nsfbufs || sf.Kva != _window.PageAddress(slot))
        {
            throw new ArgumentException($"{sf} is not a slot of this pool", nameof(sf));
        }

        _lock.Lock();
        try
        {
            if (!_inUse[slot] || _generation[slot] != GenerationOf(sf))
            {
                throw new InvalidOperationException($"double free of {sf} (or a stale handle: its slot was freed since)");
            }

            // The mapping stays until the next batched flush: other TLBs may still cache it.
            _inUse[slot] = false;
            _dirty[_dirtyCount++] = slot;
            CountReturned();
            if (_waiters > 0)
            {
                Machine.Wakeup(_slotFreed);
            }
        }
        finally
        {
            _lock.Unlock();
        }
    }

    /// <inheritdoc/>
    public override SfBufStats Stats() => CountedStats(Nsfbufs, new Dictionary<string, long>(StringComparer.Ordinal)
    {
        [DetailFlushes] = Interlocked.Read(ref _flushes),
        [DetailFlushedSlots] = Interlocked.Read(ref _flushedSlots),
    });

    /// <summary>Under the lock: clears every dirty slot's PTE, invalidates the range they span on every CPU at once, and makes them clean.</summary>
    private void FlushDirty()
    {
        int lowest = int.MaxValue, highest = -1;
        for (int i = 0; i < _dirtyCount; i++)
        {
            int slot = _dirty[i];
            Machine.KernelPmap.KRemove(_window.PageAddress(slot));
            CountRecycle(); // the slot's old mapping is evicted so that it can map another page
            (lowest, highest) = (Math.Min(lowest, slot), Math.Max(highest, slot));
            _clean[_cleanCount++] = slot;
        }

        Interlocked.Add(ref _flushedSlots, _dirtyCount);
        Interlocked.Increment(ref _flushes);
        _dirtyCount = 0;

        // Local invlpg of each page and one broadcast range shootdown, acknowledged before any slot is reused.
        var td = KernelThread.Current;
        td.SchedPin();
        try
        {
            Machine.KernelPmap.InvalidateRange(_window.PageAddress(lowest), highest - lowest + 1);
        }
        finally
        {
            td.SchedUnpin();
        }
    }
}
