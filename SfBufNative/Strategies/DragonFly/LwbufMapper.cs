using Native.PageTable;

namespace Native.SfBufNative.Strategies.DragonFly;

/// <summary>
/// <c>dragonfly-lwbuf</c>: DragonFly's own split, behind the sf_buf interface. Private short
/// users (<see cref="SfBufFlags.CpuPrivate"/>) get a plain lwbuf, the API DragonFly made for them;
/// shared users get DragonFly's sf_buf, which is an lwbuf made global with <c>lwbuf_set_global</c>
/// (<c>kern_sfbuf.c</c>): every shared allocation invalidates on the other CPUs, since nothing
/// is reused by page. <see cref="SfBufMapper.Kva"/> is <c>lwbuf_kva</c> and must be called on the
/// CPU that accesses the page: a CPU that has not synchronised the object before invalidates its
/// own TLB entry there.
/// <para>
/// Waits are DragonFly's: a one-tick uninterruptible <c>tsleep</c> while <c>kernel_map</c> has no
/// page for a new object, so <see cref="SfBufFlags.Catch"/> cannot end them;
/// <see cref="SfBufFlags.NoWait"/> (no DragonFly caller has it) tries once.
/// </para>
/// </summary>
public sealed class LwbufMapper : SfBufMapper
{
    private readonly Lwbuf _lwbuf;
    private long _sharedAllocs;

    internal LwbufMapper(Machine machine)
        : base(machine, kvaOnAccessingCpu: true)
    {
        _lwbuf = new Lwbuf(machine);
    }

    /// <inheritdoc/>
    public override string Name => DragonFlyLwbuf;

    /// <summary>Planted bug (tests): a remap ORs into the old cpumask instead of resetting it.</summary>
    internal bool PlantOredMask
    {
        get => _lwbuf.PlantOredMask;
        set => _lwbuf.PlantOredMask = value;
    }

    /// <inheritdoc/>
    protected override SfBuf AllocCore(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        Machine.Physical.CheckFrame(page.Frame);
        CheckAlloc(page, flags);
        var td = KernelThread.Current;
        int id = _lwbuf.Alloc(td, page, (flags & SfBufFlags.NoWait) != 0);
        if (id < 0)
        {
            return SfBuf.None;
        }

        if ((flags & SfBufFlags.CpuPrivate) == 0)
        {
            // sf_buf_alloc: lwbuf_alloc + lwbuf_set_global.
            _lwbuf.SetGlobal(td.Cpu!, id);
            Interlocked.Increment(ref _sharedAllocs);
        }

        var (kva, generation) = _lwbuf.Describe(id);
        return new SfBuf(kva, page, id, Id, generation);
    }

    /// <inheritdoc/>
    protected override void FreeCore(SfBuf sf)
    {
        CheckOwner(sf);
        _lwbuf.Free(KernelThread.Current, sf);
    }

    /// <inheritdoc/>
    public override SfBufStats Stats() => new()
    {
        Strategy = Name,
        Nsfbufs = _lwbuf.Objects,
        NsfbufsUsed = _lwbuf.Count,
        NsfbufsPeak = _lwbuf.Peak,
        AllocWait = _lwbuf.Tsleeps,
        AllocFail = AllocFailCount,
        Misses = _lwbuf.Allocs,
        Failures = _lwbuf.Failures,
        Details = new Dictionary<string, long>(StringComparer.Ordinal)
        {
            ["lwbuf.objects"] = _lwbuf.Objects,
            ["lwbuf.allocs"] = _lwbuf.Allocs,
            ["lwbuf.shared_allocs"] = Interlocked.Read(ref _sharedAllocs),
            ["lwbuf.set_global_syncs"] = _lwbuf.SetGlobalSyncs,
            ["lwbuf.kva_syncs"] = _lwbuf.KvaSyncs,
            ["lwbuf.tsleeps"] = _lwbuf.Tsleeps,
        },
    };

    /// <summary>The cpumask of the object behind <paramref name="sf"/> (tests).</summary>
    internal CpuSet MaskOf(SfBuf sf) => _lwbuf.MaskOf(sf.Slot);

    /// <summary><c>lwbuf_kva</c> on the calling thread's CPU.</summary>
    protected override ulong KvaOnCpu(SfBuf sf)
    {
        CheckOwner(sf);
        return _lwbuf.Kva(Machine.CurrentCpu, sf);
    }
}
