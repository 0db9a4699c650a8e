using Native.PageTable;

namespace Native.SfBufNative.Strategies.Linux;

/// <summary>
/// <c>linux-kmap-atomic</c>: <c>kmap_atomic</c> for private users (per-CPU LIFO fixmap slots,
/// preemption off while held, local invalidation at unmap), <c>kmap</c> for shared ones.
/// </summary>
public sealed class LinuxKmapAtomicMapper : LinuxHighmemMapper
{
    private readonly KmapAtomic _atomic;

    internal LinuxKmapAtomicMapper(Machine machine, int? lastPkmap)
        : base(machine, lastPkmap)
    {
        _atomic = new KmapAtomic(machine);
    }

    /// <inheritdoc/>
    public override string Name => LinuxKmapAtomic;

    /// <summary>Depth of <paramref name="cpu"/>'s kmap_atomic stack (tests).</summary>
    internal int AtomicDepth(int cpu) => _atomic.Depth(cpu);

    private protected override long PrivateMaps => _atomic.Maps;

    private protected override SfBuf MapPrivate(KernelThread td, VmPage page)
    {
        ulong va = _atomic.Map(td, page, out int slot);
        return new SfBuf(va, page, slot, Id);
    }

    private protected override bool UnmapPrivate(KernelThread td, SfBuf sf)
    {
        if (!_atomic.Owns(sf.Kva))
        {
            return false;
        }

        _atomic.Unmap(td, sf);
        return true;
    }

    private protected override void AddDetails(Dictionary<string, long> details) => details["kmap_atomic.maps"] = _atomic.Maps;
}
