using System.Numerics;
using System.Runtime.InteropServices;
using Native.PageTable;

namespace Native.SfBufNative;

/// <summary>
/// <c>sfbuf-i386</c>: FreeBSD's 2006 i386 algorithm (<c>vm_machdep.c</c> rev 1.269), every branch.
/// <para>
/// A pool of <c>nsfbufs</c> sf_bufs, each owning one fixed page of the sf_buf window. A hash
/// keyed by frame (the largest power of two ≤ nsfbufs buckets) finds a page's sf_buf; inactive
/// sf_bufs (reference count 0) keep their mapping and wait on an LRU free list (freed to the
/// tail, recycled from the head). Each sf_buf's <c>cpumask</c> is the set of CPUs known to hold
/// no stale translation for its address. One kernel mutex, <c>sf_buf</c>, protects everything
/// and is held across the PTE update and the shootdown, as in FreeBSD.
/// </para>
/// <para>
/// Deliberate deviations, both documented in docs/architecture.md: the old PTE is obtained with an atomic
/// exchange (FreeBSD reads then writes), and after sleeping for a free sf_buf the hash is probed
/// again, so a page mapped by another thread meanwhile is shared instead of mapped twice.
/// Free wakes every waiter (FreeBSD 2006 woke one and could lose wakeups).
/// </para>
/// </summary>
public sealed unsafe partial class I386Mapper : SfBufMapper
{
    private const int NoEntry = -1;
    private const ulong NewPteFlags = Pte.PG_V | Pte.PG_RW | Pte.PG_G;

    private readonly SfBufEntry* _entries;
    private readonly int* _buckets;
    private readonly uint _hashMask;
    private readonly KvaRegion _window;
    private readonly CpuSet _allCpus;
    private readonly KMutex _lock = new("sf_buf");
    private readonly object _freeListChannel = new();
    private int _freeHead = NoEntry;
    private int _freeTail = NoEntry;
    private int _used;
    private int _peak;
    private int _allocWant;
    private long _allocWait;
    private long _hits;
    private long _misses;
    private long _recycles;
    private long _failures;

    internal I386Mapper(Machine machine, int? nsfbufs, bool instruments = true)
        : base(machine, instruments: instruments)
    {
        _window = machine.Layout.SfBufWindow;
        _allCpus = machine.AllCpusMask;
        Nsfbufs = nsfbufs ?? machine.Options.EffectiveSfBufWindowPages; // FreeBSD's nsfbufs, not the window's per-CPU KVA
        if (Nsfbufs < 1 || Nsfbufs > _window.Pages)
        {
            Dispose();
            throw new ArgumentOutOfRangeException(nameof(nsfbufs), Nsfbufs, $"nsfbufs must be 1 to the sf_buf window's {_window.Pages} pages");
        }

        int buckets = (int)BitOperations.RoundUpToPowerOf2((uint)Nsfbufs + 1) >> 1; // largest power of two <= nsfbufs
        _hashMask = (uint)buckets - 1;
        try
        {
            _buckets = (int*)machine.Ledger.Alloc((nuint)buckets * sizeof(int));
            _entries = (SfBufEntry*)machine.Ledger.AllocZeroed((nuint)Nsfbufs * (nuint)sizeof(SfBufEntry));
        }
        catch
        {
            // Half built: give back what was allocated, and the instruments.
            if (_buckets != null)
            {
                machine.Ledger.Free(_buckets);
            }

            Dispose();
            throw;
        }

        new Span<int>(_buckets, buckets).Fill(NoEntry);
        for (int i = 0; i < Nsfbufs; i++)
        {
            _entries[i].HashNext = _entries[i].HashPrev = NoEntry;
            AppendFree(i);
        }
    }

    /// <summary><c>nsfbufs</c>: the pool size.</summary>
    public int Nsfbufs { get; }

    /// <summary>Hash buckets (largest power of two ≤ nsfbufs).</summary>
    public int HashBuckets => (int)_hashMask + 1;

    /// <inheritdoc/>
    public override string Name => I386;

    /// <inheritdoc/>
    protected override SfBuf AllocCore(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        Machine.Physical.CheckFrame(page.Frame);
        CheckAlloc(page, flags);
        var td = KernelThread.Current;
        var token = (flags & SfBufFlags.Catch) != 0 ? cancellation : CancellationToken.None;
        bool stoppedAsleep = false;
        _lock.Lock(td);
        try
        {
            int i;
            bool slept = false;
            bool hit;
            while (true)
            {
                // (A planted bug skips the probe after a sleep, as FreeBSD 2006 did.)
                i = slept && Machine.Planted(PlantedBug.WakeOneWithoutReprobe) ? NoEntry : Lookup(page.Frame);
                if (i != NoEntry)
                {
                    Hit(i);
                    hit = true;
                    break;
                }

                if (_freeHead != NoEntry)
                {
                    i = Recycle(page.Frame, td, flags);
                    hit = false;
                    break;
                }

                if ((flags & SfBufFlags.NoWait) != 0)
                {
                    _failures++;
                    return SfBuf.None;
                }

                // Pool exhausted: every sf_buf is in use. Sleep on the free list ("sfbufa"),
                // dropping the lock; count each sleep. Probe the hash again after waking.
                _allocWant++;
                _allocWait++;
                long waitStart = SfBufTrace.WaitBegin(this, page.Frame);
                var result = Machine.Sleep(_freeListChannel, _lock, cancellation: token);
                SfBufTrace.WaitEnd(this, page.Frame, waitStart, result == SleepResult.Interrupted);
                _allocWant--;
                slept = true;
                if (result == SleepResult.Interrupted)
                {
                    _failures++;
                    return SfBuf.None;
                }
            }

            Shootdown(td, i, (flags & SfBufFlags.CpuPrivate) != 0);
            if (Checked)
            {
                TagOwnership(td, i, flags);
            }

            ulong kva = _window.PageAddress(i);
            SfBufTrace.Alloc(this, page.Frame, kva, hit);
            return new SfBuf(kva, page, i, Id, _entries[i].Generation);
        }
        catch (MachineStoppedException)
        {
            stoppedAsleep = !_lock.IsOwned; // the sleep of a stopping machine throws without retaking the lock
            throw;
        }
        finally
        {
            if (!stoppedAsleep)
            {
                _lock.Unlock(td);
            }
        }
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
        _lock.Lock(td);
        try
        {
            SfBufEntry* e = _entries + sf.Slot;
            if (e->HasPage == 0 || e->Frame != sf.Page.Frame || e->Generation != sf.Generation)
            {
                throw new InvalidOperationException($"stale handle {sf}: the sf_buf now maps another page (double free?)");
            }

            if (e->RefCount == 0)
            {
                throw new InvalidOperationException($"double free of {sf}: its reference count is already 0");
            }

            // No PTE change and no invalidation: the inactive sf_buf keeps its mapping.
            if (--e->RefCount == 0)
            {
                AppendFree(sf.Slot);
                _used--;
                Machine.KernelPmap.UntagPrivate(sf.Kva);
                if (_allocWant > 0 && !Machine.Planted(PlantedBug.MissingWakeup))
                {
                    if (Machine.Planted(PlantedBug.WakeOneWithoutReprobe))
                    {
                        Machine.WakeupOne(_freeListChannel);
                    }
                    else
                    {
                        Machine.Wakeup(_freeListChannel);
                    }
                }
            }
        }
        finally
        {
            _lock.Unlock(td);
        }
    }

    /// <inheritdoc/>
    /// <remarks>
    /// Read without the lock, for statistics only: each field is read whole (a volatile word
    /// read), and together they may mix moments. The algorithm itself reads and writes every field
    /// of the pool (hash, free list, reference counts, cpumasks) under the <c>sf_buf</c> mutex,
    /// which orders them; no lock-free path reads a cpumask.
    /// </remarks>
    public override SfBufStats Stats() => new()
    {
        Strategy = Name,
        Nsfbufs = Nsfbufs,
        NsfbufsUsed = Volatile.Read(ref _used),
        NsfbufsPeak = Volatile.Read(ref _peak),
        AllocWait = Volatile.Read(ref _allocWait),
        AllocFail = AllocFailCount,
        Hits = Volatile.Read(ref _hits),
        Misses = Volatile.Read(ref _misses),
        Recycles = Volatile.Read(ref _recycles),
        Failures = Volatile.Read(ref _failures),
    };

    private int Lookup(uint frame)
    {
        for (int i = _buckets[frame & _hashMask]; i != NoEntry; i = _entries[i].HashNext)
        {
            if (_entries[i].Frame == frame)
            {
                return i;
            }
        }

        return NoEntry;
    }

    private void Hit(int i)
    {
        SfBufEntry* e = _entries + i;
        if (e->RefCount == int.MaxValue)
        {
            throw new OverflowException($"reference count of sf_buf {i} (frame 0x{e->Frame:x}) overflows");
        }

        // The PTE is not touched. A 0 -> 1 transition takes the sf_buf off the free list.
        if (++e->RefCount == 1)
        {
            RemoveFree(i);
            CountUse();
        }

        _hits++;
    }

    private int Recycle(uint frame, KernelThread td, SfBufFlags flags)
    {
        int i = _freeHead;
        SfBufEntry* e = _entries + i;
        RemoveFree(i);
        ulong kva = _window.PageAddress(i);
        if (e->HasPage != 0)
        {
            HashRemove(i);
            _recycles++;
            SfBufTrace.Recycle(this, kva, e->Frame, frame);
        }

        e->Frame = frame;
        e->HasPage = 1;
        e->Generation++;
        e->RefCount = 1;
        HashInsert(i);
        CountUse();
        _misses++;

        // New PTE with PG_A (and PG_M) clear, so the next recycle can tell whether this mapping
        // was ever used. The exchange returns the old PTE atomically (see the class remarks).
        ulong opte = Machine.KernelPmap.ExchangePte(kva, Pte.Make(frame, NewPteFlags));
        Machine.KernelPmap.CountMapping(1);
        SfBufTrace.Miss(this, frame, kva);
        if (Machine.Planted(PlantedBug.Mask2005))
        {
            Recycle2005(i, opte, td, flags);
            return i;
        }

        // The 2006 rule: only a used (valid and accessed) old mapping can be cached anywhere, so
        // only then is no CPU known clean. An unused one leaves the mask as it was.
        if ((opte & (Pte.PG_V | Pte.PG_A)) == (Pte.PG_V | Pte.PG_A))
        {
            e->CpuMask = default;
        }

        return i;
    }

    /// <summary>The planted bug: the earlier 2005 revision's mask rule (reference A.3.6), unsafe in one corner case.</summary>
    private void Recycle2005(int i, ulong opte, KernelThread td, SfBufFlags flags)
    {
        SfBufEntry* e = _entries + i;
        ulong kva = _window.PageAddress(i);
        bool used = (opte & (Pte.PG_V | Pte.PG_A)) == (Pte.PG_V | Pte.PG_A);
        var cpu = td.Cpu!;
        if ((flags & SfBufFlags.CpuPrivate) != 0)
        {
            e->CpuMask = used ? cpu.Mask : Machine.AllCpusMask;
            if (used)
            {
                cpu.InvalidateLocal(kva >> Pte.PageShift);
            }
        }
        else
        {
            e->CpuMask = Machine.AllCpusMask;
            if (used)
            {
                Machine.KernelPmap.InvalidatePage(kva);
            }
        }
    }

    /// <summary>Checked mode: a private mapping only this CPU uses is tagged with its CPU; any other user makes it shared.</summary>
    private void TagOwnership(KernelThread td, int i, SfBufFlags flags)
    {
        ulong kva = _window.PageAddress(i);
        int cpu = td.Cpu!.Id;
        var pmap = Machine.KernelPmap;
        if ((flags & SfBufFlags.CpuPrivate) != 0 && (_entries[i].RefCount == 1 || pmap.PrivateOwner(kva) == cpu))
        {
            pmap.TagPrivate(kva, cpu);
        }
        else
        {
            pmap.UntagPrivate(kva);
        }
    }

    private void Shootdown(KernelThread td, int i, bool cpuPrivate)
    {
        SfBufEntry* e = _entries + i;
        ulong kva = _window.PageAddress(i);
        td.PinSelf();
        try
        {
            var cpu = td.Cpu!;
            if (!e->CpuMask.Contains(cpu.Id))
            {
                e->CpuMask.Add(cpu.Id);
                cpu.InvalidateLocal(kva >> Pte.PageShift);
            }

            // This CPU is in the mask by now: the others are the CPUs outside it.
            if (!cpuPrivate && !e->CpuMask.ContainsAll(_allCpus))
            {
                var others = _allCpus.Except(e->CpuMask);
                e->CpuMask = _allCpus;
                cpu.Shootdown(others, ShootdownKind.Page, kva);
            }
        }
        finally
        {
            td.UnpinSelf();
        }
    }

    private void CountUse()
    {
        if (++_used > _peak)
        {
            _peak = _used;
        }
    }

    private void AppendFree(int i)
    {
        SfBufEntry* e = _entries + i;
        e->FreeNext = NoEntry;
        e->FreePrev = _freeTail;
        if (_freeTail != NoEntry)
        {
            _entries[_freeTail].FreeNext = i;
        }
        else
        {
            _freeHead = i;
        }

        _freeTail = i;
    }

    private void RemoveFree(int i)
    {
        SfBufEntry* e = _entries + i;
        if (e->FreePrev != NoEntry)
        {
            _entries[e->FreePrev].FreeNext = e->FreeNext;
        }
        else
        {
            _freeHead = e->FreeNext;
        }

        if (e->FreeNext != NoEntry)
        {
            _entries[e->FreeNext].FreePrev = e->FreePrev;
        }
        else
        {
            _freeTail = e->FreePrev;
        }

        e->FreeNext = e->FreePrev = NoEntry;
    }

    private void HashInsert(int i)
    {
        SfBufEntry* e = _entries + i;
        int* head = _buckets + (e->Frame & _hashMask);
        e->HashPrev = NoEntry;
        e->HashNext = *head;
        if (*head != NoEntry)
        {
            _entries[*head].HashPrev = i;
        }

        *head = i;
    }

    private void HashRemove(int i)
    {
        SfBufEntry* e = _entries + i;
        if (e->HashPrev != NoEntry)
        {
            _entries[e->HashPrev].HashNext = e->HashNext;
        }
        else
        {
            _buckets[e->Frame & _hashMask] = e->HashNext;
        }

        if (e->HashNext != NoEntry)
        {
            _entries[e->HashNext].HashPrev = e->HashPrev;
        }

        e->HashNext = e->HashPrev = NoEntry;
    }
}

/// <summary>One i386 <c>struct sf_buf</c> in native memory; its KVA is implied by its index.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct SfBufEntry
{
    /// <summary>CPUs known to hold no stale translation for this sf_buf's address (up to <see cref="CpuSet.Capacity"/>).</summary>
    public CpuSet CpuMask;

    /// <summary>The page mapped (or last mapped), valid when <see cref="HasPage"/> is 1.</summary>
    public uint Frame;

    public int RefCount;
    public int HashNext;
    public int HashPrev;
    public int FreeNext;
    public int FreePrev;
    public int HasPage;

    /// <summary>Bumped at every recycle: handles from an earlier mapping of this slot are stale.</summary>
    public int Generation;
}
