using Native.PageTable;

namespace Native.SfBufNative.Strategies.Linux;

/// <summary>
/// <c>linux-kmap-local</c>: <c>kmap_local_page</c> for private users (per-thread LIFO stack of
/// per-CPU slots, migration off while held, saved and restored at context switches), <c>kmap</c>
/// for shared ones.
/// </summary>
public sealed class LinuxKmapLocalMapper : LinuxHighmemMapper
{
    private readonly KmapLocal _local;

    internal LinuxKmapLocalMapper(Machine machine, int? lastPkmap)
        : base(machine, lastPkmap)
    {
        _local = new KmapLocal(machine);
    }

    /// <inheritdoc/>
    public override string Name => LinuxKmapLocal;

    /// <summary>Maps the calling thread holds (tests).</summary>
    internal int LocalDepth => _local.Depth;

    private protected override long PrivateMaps => _local.Maps;

    private protected override SfBuf MapPrivate(KernelThread td, VmPage page)
    {
        ulong va = _local.Map(td, page, out int slot);
        return new SfBuf(va, page, slot, Id);
    }

    private protected override bool UnmapPrivate(KernelThread td, SfBuf sf)
    {
        if (!_local.Owns(sf.Kva))
        {
            return false;
        }

        _local.Unmap(td, sf);
        return true;
    }

    private protected override void AddDetails(Dictionary<string, long> details)
    {
        details["kmap_local.maps"] = _local.Maps;
        details["kmap_local.saves"] = _local.Saves;
        details["kmap_local.restores"] = _local.Restores;
        details["kmap_local.switches_with_maps"] = _local.SwitchesWithMaps;
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _local.Dispose();
        }

        base.Dispose(disposing);
    }
}
