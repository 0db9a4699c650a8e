using Native.PageTable;

namespace Native.SfBufNative.Strategies.Linux;

/// <summary>
/// The Linux adapters behind the sf_buf interface, 32-bit highmem form (no page is in lowmem, so
/// every page needs a mapping). Shared users (sendfile, the vnode pager, the exec header) get
/// <c>kmap</c>; private short users (<see cref="SfBufFlags.CpuPrivate"/>) get what each variant
/// names. <c>kmap</c> waits uninterruptibly (<c>TASK_UNINTERRUPTIBLE</c>): <see cref="SfBufFlags.Catch"/>
/// cannot end the wait. <see cref="SfBufFlags.NoWait"/>, which no Linux caller of <c>kmap</c> has,
/// makes one sweep (with its flush) and returns no sf_buf instead of sleeping.
/// </summary>
public abstract class LinuxHighmemMapper : SfBufMapper
{
    private readonly PkmapPool _pkmap;
    private long _kmapCalls;

    private protected LinuxHighmemMapper(Machine machine, int? lastPkmap)
        : base(machine)
    {
        _pkmap = new PkmapPool(machine, lastPkmap);
    }

    /// <summary><c>LAST_PKMAP</c>: the kmap pool's slots.</summary>
    public int LastPkmap => _pkmap.LastPkmap;

    /// <summary>
    /// How long a <c>kmap</c> waiter may see no <c>kunmap</c> with every slot in use before it
    /// reports the deadlock with a <see cref="KmapDeadlockException"/> (default 60 s).
    /// </summary>
    public TimeSpan HungTaskTimeout
    {
        get => _pkmap.HungTaskTimeout;
        set => _pkmap.HungTaskTimeout = value > TimeSpan.Zero ? value : throw new ArgumentOutOfRangeException(nameof(value));
    }

    /// <inheritdoc/>
    protected sealed override SfBuf AllocCore(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        Machine.Physical.CheckFrame(page.Frame);
        CheckAlloc(page, flags);
        var td = KernelThread.Current;
        if ((flags & SfBufFlags.CpuPrivate) != 0 && MapPrivate(td, page) is { IsNone: false } sf)
        {
            return sf;
        }

        // kmap: uninterruptible, so the cancellation token is not consulted.
        ulong va = _pkmap.Kmap(td, page, (flags & SfBufFlags.NoWait) != 0, out int slot, out int generation);
        if (va == 0)
        {
            return SfBuf.None;
        }

        Interlocked.Increment(ref _kmapCalls);
        if ((flags & SfBufFlags.CpuPrivate) != 0)
        {
            PrivateFellBack(td);
        }

        return new SfBuf(va, page, slot, Id, generation);
    }

    /// <inheritdoc/>
    protected sealed override void FreeCore(SfBuf sf)
    {
        CheckOwner(sf);
        var td = KernelThread.Current;
        if (!UnmapPrivate(td, sf))
        {
            _pkmap.Kunmap(td, sf);
        }
    }

    /// <inheritdoc/>
    public sealed override SfBufStats Stats()
    {
        var details = new Dictionary<string, long>(StringComparer.Ordinal)
        {
            ["kmap.calls"] = Interlocked.Read(ref _kmapCalls),
        };
        _pkmap.AddDetails(details);
        AddDetails(details);
        return new SfBufStats
        {
            Strategy = Name,
            Nsfbufs = _pkmap.LastPkmap,
            NsfbufsUsed = _pkmap.Used,
            NsfbufsPeak = _pkmap.Peak,
            AllocWait = _pkmap.Waits,
            AllocFail = AllocFailCount,
            Hits = _pkmap.Hits,
            Misses = _pkmap.NewMappings + PrivateMaps,
            Recycles = _pkmap.Purged,
            Failures = _pkmap.Failures,
            Details = details,
        };
    }

    /// <summary>Maps for private users made by the per-CPU mechanism (none for plain kmap).</summary>
    private protected virtual long PrivateMaps => 0;

    /// <summary>The per-CPU mechanism for a private user; none to use <c>kmap</c>.</summary>
    private protected virtual SfBuf MapPrivate(KernelThread td, VmPage page) => SfBuf.None;

    /// <summary>A private user got <c>kmap</c> because the per-CPU mechanism had no mapping for it (ephmap's NULL).</summary>
    private protected virtual void PrivateFellBack(KernelThread td)
    {
    }

    /// <summary>Releases <paramref name="sf"/> if the per-CPU mechanism made it.</summary>
    private protected virtual bool UnmapPrivate(KernelThread td, SfBuf sf) => false;

    /// <summary>Adds the per-CPU mechanism's counts.</summary>
    private protected virtual void AddDetails(Dictionary<string, long> details)
    {
    }
}
