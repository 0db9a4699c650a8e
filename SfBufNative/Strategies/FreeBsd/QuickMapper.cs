using Native.PageTable;

namespace Native.SfBufNative.Strategies.FreeBsd;

/// <summary>
/// <c>freebsd-quick</c>: FreeBSD after 2015 on a machine without a direct map. Private short
/// users (<see cref="SfBufFlags.CpuPrivate"/>) get <c>pmap_quick_enter_page</c>; shared users, and
/// a private user whose CPU's quick page is already in use (the second of two nested mappings),
/// get <c>sfbuf-i386</c>, the sf_buf FreeBSD kept for them.
/// <para>
/// One deviation, counted (<c>quick.nested_fallbacks</c>): the nested user's sf_buf path takes the
/// <c>sf_buf</c> sleep mutex and may sleep for a free sf_buf, neither of which the outer quick
/// mapping's critical section allows. The adapter steps out of the critical section for that
/// call and back in afterwards. The outer mapping survives: the thread is pinned to its CPU, and
/// while its quick page is in use nobody else may enter it (others fall back to sf_bufs too).
/// </para>
/// </summary>
public sealed class QuickMapper : SfBufMapper
{
    private readonly QuickEnter _quick;
    private readonly I386Mapper _sfbuf;
    private long _nestedFallbacks;
    private long _sharedAllocs;

    internal QuickMapper(Machine machine, int? nsfbufs)
        : base(machine)
    {
        _quick = new QuickEnter(machine);
        _sfbuf = new I386Mapper(machine, nsfbufs, instruments: false);
    }

    /// <inheritdoc/>
    public override string Name => FreeBsdQuick;

    /// <summary>The sf_buf pool shared and nested users fall back to.</summary>
    public I386Mapper SfBufPool => _sfbuf;

    /// <inheritdoc/>
    protected override SfBuf AllocCore(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        Machine.Physical.CheckFrame(page.Frame);
        CheckAlloc(page, flags);
        var td = KernelThread.Current;
        if ((flags & SfBufFlags.CpuPrivate) == 0)
        {
            Interlocked.Increment(ref _sharedAllocs);
            return td.CriticalNesting == 0 ? _sfbuf.Alloc(page, flags, cancellation) : AllocOutsideCriticalSection(td, page, flags, cancellation);
        }

        if (!_quick.IsBusy(td.Cpu!.Id))
        {
            ulong qaddr = _quick.Enter(td, page, out int generation);
            return new SfBuf(qaddr, page, td.Cpu!.Id, Id, generation);
        }

        Interlocked.Increment(ref _nestedFallbacks);
        return AllocOutsideCriticalSection(td, page, flags, cancellation);
    }

    /// <inheritdoc/>
    protected override void FreeCore(SfBuf sf)
    {
        if (sf.Mapper == _sfbuf.Id && !sf.IsNone)
        {
            // A nested user frees its sf_buf while the outer quick mapping is still held: the
            // sf_buf mutex is taken outside the critical section, as in AllocNested.
            var self = KernelThread.Current;
            int depth = self.CriticalNesting;
            for (int i = 0; i < depth; i++)
            {
                self.CriticalExitSelf();
            }

            try
            {
                _sfbuf.Free(sf);
            }
            finally
            {
                for (int i = 0; i < depth; i++)
                {
                    self.CriticalEnterSelf();
                }
            }

            return;
        }

        CheckOwner(sf);
        if (!_quick.Owns(sf.Kva))
        {
            throw new ArgumentException($"{sf} is not a quick-map address", nameof(sf));
        }

        _quick.Remove(KernelThread.Current, sf);
    }

    /// <inheritdoc/>
    public override SfBufStats Stats()
    {
        var pool = _sfbuf.Stats();
        return pool with
        {
            Strategy = Name,
            AllocFail = AllocFailCount,
            Misses = pool.Misses + _quick.Enters,
            Details = new Dictionary<string, long>(StringComparer.Ordinal)
            {
                ["quick.enters"] = _quick.Enters,
                ["quick.nested_fallbacks"] = Interlocked.Read(ref _nestedFallbacks),
                ["sfbuf.shared_allocs"] = Interlocked.Read(ref _sharedAllocs),
            },
        };
    }

    /// <summary><c>pmap_quick_enter_page</c> itself, without the adapter's fallback (tests).</summary>
    internal SfBuf TestHookQuickEnterPage(VmPage page)
    {
        var td = KernelThread.Current;
        ulong qaddr = _quick.Enter(td, page, out int generation);
        return new SfBuf(qaddr, page, td.Cpu!.Id, Id, generation);
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _sfbuf.Dispose();
        }

        base.Dispose(disposing);
    }

    private SfBuf AllocOutsideCriticalSection(KernelThread td, VmPage page, SfBufFlags flags, CancellationToken cancellation)
    {
        // The sf_buf path takes a sleep mutex and may sleep for a free sf_buf, neither of which the
        // outer quick mapping's critical section allows: step out of it for the fallback (see the
        // class remarks). A CPU-private user stays pinned.
        int depth = td.CriticalNesting;
        for (int i = 0; i < depth; i++)
        {
            td.CriticalExitSelf();
        }

        try
        {
            return _sfbuf.Alloc(page, flags, cancellation);
        }
        finally
        {
            for (int i = 0; i < depth; i++)
            {
                td.CriticalEnterSelf();
            }
        }
    }
}
