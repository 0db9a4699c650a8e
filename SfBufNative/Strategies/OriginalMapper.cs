using Native.PageTable;

namespace Native.SfBufNative;

/// <summary>
/// <c>original</c>: the mechanisms the paper replaced. Every allocation takes a page of KVA
/// from the <c>kernel_map</c> arena (waiting, or failing, when it is full), maps the page with
/// <c>pmap_qenter</c> (PTE write, local <c>invlpg</c>, broadcast shootdown to every other CPU under
/// <c>smp_ipi_mtx</c>, wait for every acknowledgement); Free undoes it with <c>pmap_qremove</c>
/// (the same invalidation) and frees the KVA. Nothing is cached and <see cref="SfBufFlags.CpuPrivate"/>
/// changes nothing: the original code had no private mappings.
/// <para>
/// The range primitives (<see cref="KvaAlloc"/>, <see cref="QEnter"/>, <see cref="QRemove"/>,
/// <see cref="KvaFree"/>) let subsystems rebuild their own historical patterns (a per-pipe
/// window, <c>exec_map</c>, <c>pager_map</c>), and <see cref="SendfileAlloc"/> is sendfile's own
/// pre-paper pool (<c>uipc_syscalls.c</c>, 1998-2003): <c>nsfbufs</c> buffers, each with a
/// fixed page of KVA, <c>pmap_qenter</c> at alloc and <c>pmap_qremove</c> at free.
/// </para>
/// <para>
/// Every mapping made here is recorded with <see cref="KernelPmap.CountMapping"/>.
/// </para>
/// </summary>
public sealed unsafe class OriginalMapper : SfBufMapper
{
    private readonly KvaArena _arena;
    private readonly int* _tags;
    private int _nextTag;
    private int _used;
    private int _peak;
    private long _allocWait;
    private long _misses;
    private long _failures;
    private readonly KMutex _poolLock = new("sf_freelist");
    private readonly Stack<int> _poolFree = new();
    private ulong _poolStart;
    private int _poolPages;
    private int _poolWant;

    internal OriginalMapper(Machine machine)
        : base(machine)
    {
        _arena = machine.KernelMap;

        // One tag per kernel_map page: the handle carries it, so a double free or a stale handle
        // is caught even after the address has been handed to someone else.
        try
        {
            _tags = (int*)machine.Ledger.AllocZeroed((nuint)_arena.Region.Pages * sizeof(int));
        }
        catch
        {
            Dispose(); // the instruments
            throw;
        }
    }

    /// <inheritdoc/>
    public override string Name => Original;

    /// <inheritdoc/>
    protected override SfBuf AllocCore(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        Machine.Physical.CheckFrame(page.Frame);
        CheckAlloc(page, flags);
        ulong va = KvaAlloc(1, flags, cancellation);
        if (va == 0)
        {
            return SfBuf.None;
        }

        QEnter(va, new ReadOnlySpan<VmPage>(in page));
        if ((flags & SfBufFlags.CpuPrivate) != 0)
        {
            Machine.KernelPmap.TagPrivate(va, Machine.CurrentCpu.Id);
        }

        return Handle(va, page);
    }

    /// <summary>
    /// The pre-paper sendfile <c>sf_buf_alloc</c> (<c>uipc_syscalls.c</c>): takes a buffer from
    /// the pool's free list, sleeping ("sfbufa") while it is empty, and maps the page at the
    /// buffer's fixed address with <c>pmap_qenter</c> (a broadcast shootdown). The pool, carved
    /// from <c>kernel_map</c> on first use, has <c>nsfbufs</c> buffers. Returns
    /// <see cref="SfBuf.None"/> for NoWait with the pool empty or a cancelled Catch wait. Free
    /// it with <see cref="SfBufMapper.Free"/>, which unmaps it with <c>pmap_qremove</c>.
    /// </summary>
    public SfBuf SendfileAlloc(VmPage page, SfBufFlags flags = SfBufFlags.Catch, CancellationToken cancellation = default)
    {
        Machine.Physical.CheckFrame(page.Frame);
        CheckAlloc(page, flags);
        ulong poolStart = Pool();
        var token = (flags & SfBufFlags.Catch) != 0 ? cancellation : CancellationToken.None;
        int index;
        bool stoppedAsleep = false;
        _poolLock.Lock();
        try
        {
            while (!_poolFree.TryPop(out index))
            {
                if ((flags & SfBufFlags.NoWait) != 0)
                {
                    Interlocked.Increment(ref _failures);
                    return SfBuf.None;
                }

                _poolWant++;
                Interlocked.Increment(ref _allocWait);
                long waitStart = SfBufTrace.WaitBegin(this, page.Frame);
                var result = Machine.Sleep(_poolFree, _poolLock, cancellation: token);
                SfBufTrace.WaitEnd(this, page.Frame, waitStart, result == SleepResult.Interrupted);
                _poolWant--;
                if (result == SleepResult.Interrupted)
                {
                    Interlocked.Increment(ref _failures);
                    return SfBuf.None;
                }
            }
        }
        catch (MachineStoppedException)
        {
            stoppedAsleep = !_poolLock.IsOwned; // the sleep of a stopping machine throws without retaking the lock
            throw;
        }
        finally
        {
            if (!stoppedAsleep)
            {
                _poolLock.Unlock();
            }
        }

        ulong va = poolStart + ((ulong)index << Pte.PageShift);
        QEnter(va, new ReadOnlySpan<VmPage>(in page));
        return Handle(va, page);
    }

    /// <inheritdoc/>
    protected override void FreeCore(SfBuf sf)
    {
        CheckOwner(sf);
        if (!_arena.Region.Contains(sf.Kva))
        {
            throw new ArgumentException($"{sf} is not a kernel_map address", nameof(sf));
        }

        if (Interlocked.CompareExchange(ref _tags[PageIndex(sf.Kva)], 0, sf.Slot) != sf.Slot)
        {
            throw new InvalidOperationException($"double free of {sf} (or a stale handle: the address is no longer this allocation)");
        }

        Machine.KernelPmap.UntagPrivate(sf.Kva);
        QRemove(sf.Kva, 1);
        Interlocked.Decrement(ref _used);
        if (InPool(sf.Kva))
        {
            // Back on sendfile's free list; the buffer keeps its address (SLIST_INSERT_HEAD, wakeup_one).
            _poolLock.Lock();
            try
            {
                _poolFree.Push((int)((sf.Kva - _poolStart) >> Pte.PageShift));
                if (_poolWant > 0)
                {
                    Machine.WakeupOne(_poolFree);
                }
            }
            finally
            {
                _poolLock.Unlock();
            }

            return;
        }

        KvaFree(sf.Kva, 1);
    }

    /// <summary>
    /// Allocates <paramref name="pages"/> of KVA from <c>kernel_map</c> with the flag semantics of
    /// Alloc: NoWait fails at once when full, Catch waits cancellably, Default waits. 0 on failure.
    /// </summary>
    public ulong KvaAlloc(int pages, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        bool wait = (flags & SfBufFlags.NoWait) == 0;
        var token = (flags & SfBufFlags.Catch) != 0 ? cancellation : CancellationToken.None;
        ulong va = _arena.Alloc(pages, wait, out bool slept, token);
        if (slept)
        {
            Interlocked.Increment(ref _allocWait);
        }

        if (va == 0)
        {
            Interlocked.Increment(ref _failures);
        }

        return va;
    }

    /// <summary>Returns KVA to <c>kernel_map</c> and wakes its waiters.</summary>
    public void KvaFree(ulong va, int pages) => _arena.Free(va, pages);

    /// <summary>
    /// <c>pmap_qenter</c>: map pages at <paramref name="va"/>; local and broadcast invalidation.
    /// Recorded as one ephemeral mapping of that many pages.
    /// </summary>
    public void QEnter(ulong va, ReadOnlySpan<VmPage> pages)
    {
        Machine.KernelPmap.QEnter(va, pages);
        if (pages.Length > 0)
        {
            Machine.KernelPmap.CountMapping(pages.Length);
        }
    }

    /// <summary><c>pmap_qremove</c>: unmap pages at <paramref name="va"/>; local and broadcast invalidation.</summary>
    public void QRemove(ulong va, int pages) => Machine.KernelPmap.QRemove(va, pages);

    /// <inheritdoc/>
    public override SfBufStats Stats() => new()
    {
        Strategy = Name,
        Nsfbufs = _arena.Region.Pages,
        NsfbufsUsed = Volatile.Read(ref _used),
        NsfbufsPeak = Volatile.Read(ref _peak),
        AllocWait = Volatile.Read(ref _allocWait),
        AllocFail = AllocFailCount,
        Misses = Volatile.Read(ref _misses),
        Failures = Volatile.Read(ref _failures),
    };

    private int PageIndex(ulong va) => (int)((va - _arena.Region.Start) >> Pte.PageShift);

    private SfBuf Handle(ulong va, VmPage page)
    {
        int tag = Interlocked.Increment(ref _nextTag) & int.MaxValue;
        tag = tag == 0 ? 1 : tag;

        // The tag catches misuse only: a Free on another CPU compares it with an interlocked
        // exchange, and the handle gets there through the caller's own synchronisation.
        Volatile.Write(ref _tags[PageIndex(va)], tag);
        Interlocked.Increment(ref _misses);
        SfBufTrace.Alloc(this, page.Frame, va, hit: false);
        SfBufTrace.Miss(this, page.Frame, va);
        int used = Interlocked.Increment(ref _used);
        HighWater.Raise(ref _peak, used);

        return new SfBuf(va, page, tag, Id);
    }

    /// <summary>True when <paramref name="va"/> is one of sendfile's pool buffers.</summary>
    private bool InPool(ulong va)
    {
        // Pages are published after the start: a reader that sees them sees the start too.
        int pages = Volatile.Read(ref _poolPages);
        return pages > 0 && va - _poolStart < (ulong)pages << Pte.PageShift;
    }

    /// <summary>sendfile's pool (<c>sf_buf_init</c>): nsfbufs pages of <c>kernel_map</c>, carved on first use; returns its start.</summary>
    private ulong Pool()
    {
        if (Volatile.Read(ref _poolPages) > 0)
        {
            return _poolStart;
        }

        _poolLock.Lock();
        try
        {
            if (_poolPages == 0)
            {
                // sf_buf_init took it at boot; here kernel_map must have room at first use.
                int n = Machine.Options.EffectiveSfBufWindowPages;
                _poolStart = _arena.Alloc(n, wait: false);
                if (_poolStart == 0)
                {
                    throw new InvalidOperationException($"kernel_map has no room for sendfile's pool of {n} pages (nsfbufs)");
                }

                for (int i = n - 1; i >= 0; i--)
                {
                    _poolFree.Push(i);
                }

                Volatile.Write(ref _poolPages, n);
            }

            return _poolStart;
        }
        finally
        {
            _poolLock.Unlock();
        }
    }
}
