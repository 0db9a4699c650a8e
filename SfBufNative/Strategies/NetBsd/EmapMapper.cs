using Native.PageTable;

namespace Native.SfBufNative.Strategies.NetBsd;

/// <summary>
/// <c>netbsd-emap</c>: NetBSD's emap behind the sf_buf interface, for every user. NetBSD itself
/// used emap only for the pipe's direct writes, mapping a whole write under one generation; here
/// each sf_buf is one page of the window with its own generation (the handle carries it), and
/// <see cref="SfBufMapper.Kva"/> is <c>uvm_emap_consume</c> on the CPU that accesses the page, so
/// subsystems call it where they access. Shared and private users are treated alike: a mapping is
/// valid on any CPU that consumes it. No IPI is ever sent; the price is a full flush of the
/// non-global TLB on a CPU that consumes a generation it has not reached.
/// <para>
/// The window allocator sleeps uninterruptibly when the window is full (vmem <c>VM_SLEEP</c>), so
/// <see cref="SfBufFlags.Catch"/> cannot end the wait; <see cref="SfBufFlags.NoWait"/> fails at once.
/// </para>
/// </summary>
public sealed class EmapMapper : SfBufMapper
{
    private readonly Emap _emap;
    private readonly unsafe int* _tags;
    private int _nextTag;

    internal unsafe EmapMapper(Machine machine, int? windowPages)
        : base(machine, kvaOnAccessingCpu: true)
    {
        _emap = new Emap(machine, windowPages);
        _tags = (int*)machine.Ledger.AllocZeroed((nuint)_emap.WindowPages * sizeof(int));
    }

    /// <inheritdoc/>
    public override string Name => NetBsdEmap;

    /// <summary>The global generation (tests).</summary>
    internal uint GlobalGeneration => _emap.GlobalGeneration;

    /// <summary>A CPU's generation (tests).</summary>
    internal uint CpuGeneration(int cpu) => _emap.CpuGeneration(cpu);

    /// <inheritdoc/>
    public override unsafe SfBuf Alloc(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        Machine.Physical.CheckFrame(page.Frame);
        CheckAlloc(page, flags);
        ulong va = _emap.Map(page, (flags & SfBufFlags.NoWait) != 0, out uint gen);
        if (va == 0)
        {
            return SfBuf.None;
        }

        // The handle carries the generation (as the pipe's map descriptor did) and a tag for this
        // use of the window page, so that a double free or a stale handle is refused.
        int tag = Interlocked.Increment(ref _nextTag) & int.MaxValue;
        tag = tag == 0 ? 1 : tag;
        Volatile.Write(ref _tags[PageIndex(va)], tag);
        return new SfBuf(va, page, tag, Id, (int)gen);
    }

    /// <inheritdoc/>
    public override unsafe void Free(SfBuf sf)
    {
        CheckOwner(sf);
        if (!_emap.Owns(sf.Kva))
        {
            throw new ArgumentException($"{sf} is not an emap address", nameof(sf));
        }

        if (Interlocked.CompareExchange(ref _tags[PageIndex(sf.Kva)], 0, sf.Slot) != sf.Slot)
        {
            throw new InvalidOperationException($"double free of {sf} (or a stale handle: the window page is no longer this mapping)");
        }

        _emap.Unmap(sf.Kva);
    }

    /// <inheritdoc/>
    public override SfBufStats Stats()
    {
        var details = new Dictionary<string, long>(StringComparer.Ordinal);
        _emap.AddDetails(details);
        return new SfBufStats
        {
            Strategy = Name,
            Nsfbufs = _emap.WindowPages,
            NsfbufsUsed = _emap.Used,
            NsfbufsPeak = _emap.Peak,
            AllocWait = _emap.Waits,
            AllocFail = AllocFailCount,
            Misses = _emap.Produces,
            Failures = _emap.Failures,
            Details = details,
        };
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _emap.Dispose();
        }

        base.Dispose(disposing);
    }

    /// <summary><c>uvm_emap_consume</c> of the handle's generation on the calling thread's CPU.</summary>
    private protected override unsafe ulong KvaOnCpu(SfBuf sf)
    {
        CheckOwner(sf);
        if (!_emap.Owns(sf.Kva) || Volatile.Read(ref _tags[PageIndex(sf.Kva)]) != sf.Slot)
        {
            throw new InvalidOperationException($"sf_buf_kva of {sf}, which is not a live emap mapping (freed, or a stale handle)");
        }

        _emap.Consume(Machine.CurrentCpu, (uint)sf.Generation);
        return sf.Kva;
    }

    private int PageIndex(ulong va) => (int)((va - Machine.Layout.SfBufWindow.Start) >> Pte.PageShift);
}
