using System.Diagnostics;
using System.Numerics;
using Native.PageTable;

namespace Native.SfBufNative.Strategies.Linux;

/// <summary>
/// Linux's persistent kmap pool (<c>mm/highmem.c</c>, x86-32): <c>kmap_high</c>,
/// <c>map_new_virtual</c>, <c>flush_all_zero_pkmaps</c>, <c>kunmap_high</c>.
/// <para>
/// <c>LAST_PKMAP</c> slots (1024, or the largest power of two that fits a smaller sf_buf window,
/// which tests shrink to exhaust the pool) at the start of the sf_buf window. Each slot's
/// <c>pkmap_count</c> is 0 (unmapped and flushed everywhere since: usable), 1 (no user, but
/// mapped since the last flush: not usable, another TLB may still cache it) or n (n-1 users). A
/// page's slot is found through <c>page_address</c>: 128 hash buckets with a spin lock each, over
/// one record per slot. One global spin lock, <c>kmap_lock</c>, covers every map and unmap.
/// </para>
/// <para>
/// No invalidation at map or at unmap: the clock hand <c>last_pkmap_nr</c> looks for a count-0
/// slot, and each time it wraps to 0 every count-1 slot is cleared and, if any was, the whole
/// window is flushed on every CPU at once (<c>flush_tlb_kernel_range</c>: above 33 pages a full
/// flush by IPI, below it one <c>invlpg</c> per page by IPI). A full sweep that finds nothing waits
/// uninterruptibly on <c>pkmap_map_wait</c>, then checks whether someone mapped its page meanwhile.
/// </para>
/// <para>
/// Every count, record and the clock hand are read and written under <c>kmap_lock</c> (the
/// <c>page_address</c> records under their bucket's lock too), which orders them; only the
/// statistics are read without it, as snapshots.
/// </para>
/// </summary>
internal sealed unsafe class PkmapPool
{
    /// <summary>x86-32 without PAE.</summary>
    public const int DefaultLastPkmap = 1024;

    /// <summary><c>tlb_single_page_flush_ceiling</c>: above this many pages a range flush is a full flush.</summary>
    public const int SinglePageFlushCeiling = 33;

    private const int PaHashOrder = 7;
    private const int NoSlot = -1;
    private const ulong KmapProt = Pte.PG_V | Pte.PG_RW | Pte.PG_G;

    private readonly Machine _machine;
    private readonly KvaRegion _window;
    private readonly int _mask;
    private readonly int* _count;
    private readonly uint* _frame;
    private readonly int* _hashNext;
    private readonly int* _generation;
    private readonly int* _buckets;
    private readonly KMutex[] _bucketLocks;
    private readonly KMutex _kmapLock = new("kmap_lock", spinOnly: true);
    private readonly object _pkmapMapWait = new();
    private int _lastPkmapNr;
    private int _waiters;
    private int _used;
    private int _peak;
    private long _hits;
    private long _newMappings;
    private long _probes;
    private long _wraps;
    private long _globalFlushes;
    private long _purged;
    private long _waits;
    private long _failures;
    private long _unmaps;

    public PkmapPool(Machine machine, int? lastPkmap)
    {
        _machine = machine;
        var window = machine.Layout.SfBufWindow;
        int fits = (int)BitOperations.RoundUpToPowerOf2((uint)machine.Options.EffectiveSfBufWindowPages + 1) >> 1; // largest power of two <= nsfbufs (not the window's per-CPU KVA)
        LastPkmap = lastPkmap ?? Math.Min(DefaultLastPkmap, fits);
        if (LastPkmap < 1 || LastPkmap > window.Pages || !BitOperations.IsPow2(LastPkmap))
        {
            throw new ArgumentOutOfRangeException(nameof(lastPkmap), LastPkmap, $"LAST_PKMAP must be a power of two of at most the sf_buf window's {window.Pages} pages");
        }

        _window = new KvaRegion("pkmap", window.Start, LastPkmap);
        _mask = LastPkmap - 1;
        _count = (int*)machine.Ledger.AllocZeroed((nuint)LastPkmap * sizeof(int));
        _frame = (uint*)machine.Ledger.AllocZeroed((nuint)LastPkmap * sizeof(uint));
        _hashNext = (int*)machine.Ledger.AllocZeroed((nuint)LastPkmap * sizeof(int));
        _generation = (int*)machine.Ledger.AllocZeroed((nuint)LastPkmap * sizeof(int));
        _buckets = (int*)machine.Ledger.Alloc((nuint)(1 << PaHashOrder) * sizeof(int));
        new Span<int>(_buckets, 1 << PaHashOrder).Fill(NoSlot);
        _bucketLocks = new KMutex[1 << PaHashOrder];
        for (int b = 0; b < _bucketLocks.Length; b++)
        {
            _bucketLocks[b] = new KMutex("page_address_htable", spinOnly: true);
        }

        HungTaskTimeout = TimeSpan.FromSeconds(60);
    }

    /// <summary><c>LAST_PKMAP</c>.</summary>
    public int LastPkmap { get; }

    /// <summary>The pkmap window (<c>PKMAP_BASE</c>, <c>LAST_PKMAP</c> pages).</summary>
    public KvaRegion Window => _window;

    /// <summary>
    /// How long a waiter may see no <c>kunmap</c> at all, with every slot still in use, before it
    /// reports the deadlock (Linux's hung-task watchdog reports a task blocked this way).
    /// </summary>
    public TimeSpan HungTaskTimeout { get; set; }

    /// <summary>Slots with at least one user (count >= 2).</summary>
    public int Used => Volatile.Read(ref _used);

    /// <summary>High-water mark of <see cref="Used"/>.</summary>
    public int Peak => Volatile.Read(ref _peak);

    public long Hits => Volatile.Read(ref _hits);

    public long NewMappings => Volatile.Read(ref _newMappings);

    public long Waits => Volatile.Read(ref _waits);

    public long Failures => Volatile.Read(ref _failures);

    /// <summary>Cached mappings purged by a wrap (count-1 slots cleared).</summary>
    public long Purged => Volatile.Read(ref _purged);

    /// <summary>The pool's own counts, for <see cref="SfBufStats.Details"/>.</summary>
    public void AddDetails(Dictionary<string, long> details)
    {
        details["pkmap.last_pkmap"] = LastPkmap;
        details["pkmap.new_mappings"] = NewMappings;
        details["pkmap.hits"] = Hits;
        details["pkmap.probes"] = Volatile.Read(ref _probes);
        details["pkmap.wraps"] = Volatile.Read(ref _wraps);
        details["pkmap.global_flushes"] = Volatile.Read(ref _globalFlushes);
        details["pkmap.purged"] = Purged;
        details["pkmap.waits"] = Waits;
        details["pkmap.peak_in_use"] = Peak;
    }

    /// <summary>
    /// <c>kmap</c> of a page (<c>kmap_high</c>): its address, 0 when <paramref name="noWait"/> and
    /// no slot is usable. <paramref name="slot"/> and <paramref name="generation"/> identify the
    /// mapping for <see cref="Kunmap"/>.
    /// </summary>
    public ulong Kmap(KernelThread td, VmPage page, bool noWait, out int slot, out int generation)
    {
        bool stoppedAsleep = false;
        _kmapLock.Lock(td);
        try
        {
            slot = PageAddress(td, page.Frame);
            if (slot == NoSlot)
            {
                slot = MapNewVirtual(td, page, noWait);
                if (slot == NoSlot)
                {
                    generation = 0;
                    _failures++;
                    return 0;
                }
            }
            else
            {
                _hits++;
            }

            if (++_count[slot] < 2)
            {
                throw new InvalidOperationException($"kmap_high: pkmap_count[{slot}] is {_count[slot]} after the increment (BUG)");
            }

            if (_count[slot] == 2 && ++_used > _peak)
            {
                _peak = _used;
            }

            generation = _generation[slot];
            return _window.PageAddress(slot);
        }
        catch (MachineStoppedException)
        {
            stoppedAsleep = !_kmapLock.IsOwned; // the sleep of a stopping machine throws without retaking the lock
            throw;
        }
        finally
        {
            if (!stoppedAsleep)
            {
                _kmapLock.Unlock(td);
            }
        }
    }

    /// <summary><c>kunmap</c> (<c>kunmap_high</c>): drops one user; the slot keeps its mapping (count 1).</summary>
    public void Kunmap(KernelThread td, SfBuf sf)
    {
        if ((uint)sf.Slot >= (uint)LastPkmap || sf.Kva != _window.PageAddress(sf.Slot))
        {
            throw new ArgumentException($"{sf} is not a pkmap address", nameof(sf));
        }

        bool needWakeup = false;
        _kmapLock.Lock(td);
        try
        {
            // kunmap_high finds the slot through page_address(page); a handle whose page no
            // longer owns its slot (a double kunmap, or one from before a purge) is refused.
            int nr = PageAddress(td, sf.Page.Frame);
            if (nr != sf.Slot || _generation[nr] != sf.Generation)
            {
                throw new InvalidOperationException($"kunmap of {sf}: the page is not kmapped at that address (double kunmap, or a stale handle)");
            }

            switch (_count[nr])
            {
                case <= 1:
                    throw new InvalidOperationException($"kunmap of {sf}: pkmap_count[{nr}] is {_count[nr]}, it has no user (double kunmap)");
                case 2:
                    // Last user gone: the slot stays mapped (count 1) until the next wrap purges it.
                    _count[nr] = 1;
                    _used--;
                    needWakeup = _waiters > 0;
                    break;
                default:
                    _count[nr]--;
                    break;
            }

            _unmaps++;
        }
        finally
        {
            _kmapLock.Unlock(td);
        }

        if (needWakeup)
        {
            _machine.Wakeup(_pkmapMapWait);
        }
    }

    /// <summary>The count of a slot (tests).</summary>
    internal int CountOf(int slot) => _count[slot];

    /// <summary>The slot a frame is kmapped in, or -1 (tests).</summary>
    internal int SlotOf(KernelThread td, uint frame)
    {
        _kmapLock.Lock(td);
        try
        {
            return PageAddress(td, frame);
        }
        finally
        {
            _kmapLock.Unlock(td);
        }
    }

    /// <summary><c>map_new_virtual</c>: the clock hand's next count-0 slot, mapped to <paramref name="page"/> with count 1.</summary>
    private int MapNewVirtual(KernelThread td, VmPage page, bool noWait)
    {
        while (true)
        {
            // start:
            int count = LastPkmap;
            int nr = NoSlot;
            while (true)
            {
                _lastPkmapNr = (_lastPkmapNr + 1) & _mask;
                _probes++;
                if (_lastPkmapNr == 0)
                {
                    FlushAllZeroPkmaps(td);
                    count = LastPkmap;
                }

                if (_count[_lastPkmapNr] == 0)
                {
                    nr = _lastPkmapNr; // found a usable entry
                    break;
                }

                if (--count > 0)
                {
                    continue;
                }

                if (noWait)
                {
                    return NoSlot;
                }

                // Sleep for somebody else to unmap their entries (TASK_UNINTERRUPTIBLE).
                int found = WaitForUnmap(td, page);
                if (found != NoSlot)
                {
                    return found; // somebody else mapped our page while we slept
                }

                break; // goto start
            }

            if (nr == NoSlot)
            {
                continue;
            }

            ulong vaddr = _window.PageAddress(nr);
            ulong old = _machine.KernelPmap.ExchangePte(vaddr, Pte.Make(page.Frame, KmapProt));
            Debug.Assert(!Pte.IsValid(old), "a count-0 pkmap slot has no PTE");
            _machine.KernelPmap.CountMapping(1);
            _count[nr] = 1;
            _generation[nr]++;
            SetPageAddress(td, page.Frame, nr);
            _newMappings++;
            return nr;
        }
    }

    /// <summary>The uninterruptible sleep on <c>pkmap_map_wait</c>; returns the page's slot if it got mapped meanwhile.</summary>
    private int WaitForUnmap(KernelThread td, VmPage page)
    {
        long unmapsBefore = _unmaps;
        long startedAt = Stopwatch.GetTimestamp();
        _waiters++;
        _waits++;
        var result = _machine.Sleep(_pkmapMapWait, _kmapLock, timeout: HungTaskTimeout);
        _waiters--;
        int mapped = PageAddress(td, page.Frame);
        if (mapped != NoSlot || result == SleepResult.Woken || _unmaps != unmapsBefore || AnyUsable())
        {
            return mapped;
        }

        // Woken by the watchdog: no kunmap at all since we went to sleep, and every slot is still
        // in use. Whoever holds them waits too (or leaked them): Andrew Morton's kmap deadlock of
        // threads that each hold one mapping and wait for a second.
        throw new KmapDeadlockException(
            $"kmap: every one of the {LastPkmap} pkmap slots has been in use for {Stopwatch.GetElapsedTime(startedAt).TotalSeconds:0.###} s "
            + $"with no kunmap, and {td} waits for one for {page} (uninterruptibly): the documented deadlock of threads that "
            + "each hold a kmap and wait for another when the pool is exhausted");
    }

    private bool AnyUsable()
    {
        for (int i = 0; i < LastPkmap; i++)
        {
            if (_count[i] <= 1)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// <c>flush_all_zero_pkmaps</c>: every slot with count 1 is cleared (PTE, page address, count
    /// 0); if any was, one <c>flush_tlb_kernel_range</c> over the whole window, on every CPU.
    /// </summary>
    private void FlushAllZeroPkmaps(KernelThread td)
    {
        _wraps++;
        bool needFlush = false;
        for (int i = 0; i < LastPkmap; i++)
        {
            if (_count[i] != 1)
            {
                continue;
            }

            _count[i] = 0;
            ulong old = _machine.KernelPmap.ExchangePte(_window.PageAddress(i), 0);
            if (!Pte.IsValid(old))
            {
                throw new InvalidOperationException($"flush_all_zero_pkmaps: slot {i} has count 1 and no PTE (BUG)");
            }

            SetPageAddress(td, Pte.Frame(old), NoSlot);
            _purged++;
            needFlush = true;
        }

        if (!needFlush)
        {
            return;
        }

        _globalFlushes++;
        var cpu = td.Cpu!;
        if (LastPkmap > SinglePageFlushCeiling)
        {
            // do_flush_tlb_all on each CPU.
            cpu.FlushLocal();
            cpu.ShootdownAllButSelf(ShootdownKind.All);
        }
        else
        {
            // do_kernel_range_flush on each CPU: one invlpg per page.
            ulong first = _window.Start >> Pte.PageShift;
            for (int i = 0; i < LastPkmap; i++)
            {
                cpu.InvalidateLocal(first + (ulong)i);
            }

            cpu.ShootdownAllButSelf(ShootdownKind.Range, _window.Start, LastPkmap);
        }
    }

    // ------------------------------------------------------------ page_address_htable

    private static int Bucket(uint frame) => (int)((frame * 0x9E3779B9u) >> (32 - PaHashOrder));

    /// <summary><c>page_address</c>: the slot that maps <paramref name="frame"/>, or -1.</summary>
    private int PageAddress(KernelThread td, uint frame)
    {
        int b = Bucket(frame);
        var lockb = _bucketLocks[b];
        lockb.Lock(td);
        try
        {
            for (int i = _buckets[b]; i != NoSlot; i = _hashNext[i])
            {
                if (_frame[i] == frame)
                {
                    return i;
                }
            }

            return NoSlot;
        }
        finally
        {
            lockb.Unlock(td);
        }
    }

    /// <summary><c>set_page_address</c>: records <paramref name="frame"/> at <paramref name="slot"/>, or forgets it (-1).</summary>
    private void SetPageAddress(KernelThread td, uint frame, int slot)
    {
        int b = Bucket(frame);
        var lockb = _bucketLocks[b];
        lockb.Lock(td);
        try
        {
            if (slot != NoSlot)
            {
                _frame[slot] = frame;
                _hashNext[slot] = _buckets[b];
                _buckets[b] = slot;
                return;
            }

            for (int* link = _buckets + b; *link != NoSlot; link = _hashNext + *link)
            {
                if (_frame[*link] == frame)
                {
                    *link = _hashNext[*link];
                    return;
                }
            }

            throw new InvalidOperationException($"set_page_address: frame 0x{frame:x} has no pkmap record (BUG)");
        }
        finally
        {
            lockb.Unlock(td);
        }
    }
}

/// <summary>
/// The kmap deadlock, detected: every pkmap slot has been in use, with no <c>kunmap</c>, for
/// longer than the pool's hung-task timeout while a thread waits uninterruptibly for one.
/// </summary>
public sealed class KmapDeadlockException(string message) : Exception(message);
