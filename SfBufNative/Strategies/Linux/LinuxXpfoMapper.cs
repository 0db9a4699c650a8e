using Native.PageTable;

namespace Native.SfBufNative.Strategies.Linux;

/// <summary>
/// <c>linux-xpfo</c>, <c>linux-xpfo-deferred</c>, <c>linux-xpfo-batched</c>: 64-bit Linux with
/// the XPFO RFC on a machine whose direct map holds no user page (<see cref="MachineFlavor.Amd64Xpfo"/>).
/// Every user, private or shared, gets <c>kmap</c>, which on 64-bit is <c>page_address</c> plus
/// <c>xpfo_kmap</c>: the page's direct-map address, put back into the direct map for a user page
/// not mapped already (<see cref="Xpfo.Kmap"/>); free is <c>kunmap</c> with <c>xpfo_kunmap</c>,
/// which takes it out again when the last mapping goes, flushed as the <see cref="XpfoFlushPolicy"/>
/// says. Never waits, never fails. Kernel pages (md's, kmem's) need nothing.
/// </summary>
public sealed class LinuxXpfoMapper : SfBufMapper
{
    private readonly Xpfo _xpfo;

    internal LinuxXpfoMapper(Machine machine, XpfoFlushPolicy policy)
        : base(machine)
    {
        _xpfo = new Xpfo(machine, policy);
    }

    /// <inheritdoc/>
    public override string Name => _xpfo.Policy switch
    {
        XpfoFlushPolicy.Immediate => LinuxXpfo,
        XpfoFlushPolicy.Deferred => LinuxXpfoDeferred,
        _ => LinuxXpfoBatched,
    };

    /// <summary>When removed translations are flushed.</summary>
    public XpfoFlushPolicy Policy => _xpfo.Policy;

    /// <summary>The XPFO state (mapcounts, locks, <c>pending_xpfo_flush</c>), for tests.</summary>
    internal Xpfo Xpfo => _xpfo;

    /// <inheritdoc/>
    protected override SfBuf AllocCore(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        CheckPage(page, flags);
        ulong va = _xpfo.Kmap(Machine.CurrentCpu, page, out bool restored);
        if (restored)
        {
            CountMiss(); // a new mapping: the restored PTE (pte_writes = mapped_pages)
        }
        else
        {
            CountHit(); // already in the direct map: a kernel page, or a user page another kmap holds
        }

        return NewHandle(va, page, -1);
    }

    /// <inheritdoc/>
    protected override void FreeCore(SfBuf sf)
    {
        CheckOwner(sf);
        if (sf.Kva != VmLayout.DMAP_BASE + sf.Page.PhysicalAddress)
        {
            throw new ArgumentException($"{sf} is not a direct-map handle", nameof(sf));
        }

        _xpfo.Kunmap(Machine.CurrentCpu, sf.Page);
    }

    /// <inheritdoc/>
    public override SfBufStats Stats() => CountedStats(0, new Dictionary<string, long>(StringComparer.Ordinal)
    {
        ["xpfo.kmaps"] = _xpfo.Kmaps,
        ["xpfo.restores"] = _xpfo.Restores,
        ["xpfo.unmaps"] = _xpfo.Unmaps,
        ["xpfo.flushes"] = _xpfo.Flushes,
        ["xpfo.alloc_flushes"] = _xpfo.AllocFlushes,
        ["xpfo.allocator_restores"] = _xpfo.AllocatorRestores,
        ["xpfo.shootdowns"] = _xpfo.Shootdowns,
        ["xpfo.pending_posts"] = _xpfo.PendingPosts,
        ["xpfo.pending_flushes"] = _xpfo.PendingFlushes,
    });

    /// <summary>The XPFO promise with no operation in flight (<see cref="Xpfo.CheckExclusive"/>).</summary>
    internal IReadOnlyList<string> CheckExclusive() => _xpfo.CheckExclusive();

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _xpfo.Dispose();
        }

        base.Dispose(disposing);
    }
}
