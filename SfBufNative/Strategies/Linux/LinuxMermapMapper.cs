using Native.PageTable;

namespace Native.SfBufNative.Strategies.Linux;

/// <summary>
/// <c>linux-mermap</c>: the <c>__GFP_UNMAPPED</c> RFC's mermap (<c>mermap_get</c> /
/// <c>mermap_put</c>, <c>mm/mermap.c</c>) for private users: a per-CPU bump allocator of KVA,
/// migration off while held, unmapped without a flush, this CPU's TLB flushed once when its region
/// wraps. <c>kmap</c> for shared users, and for a private user whose <c>mermap_get</c> fails (the
/// region full of held mappings, or every tracking entry in use): the RFC's get "doesn't try very
/// hard at all to actually succeed", and its caller must have another way.
/// </summary>
public sealed partial class LinuxMermapMapper : LinuxHighmemMapper
{
    private Mermap _mermap;

    internal LinuxMermapMapper(Machine machine, int? lastPkmap, int regionPages = Mermap.DefaultRegionPages)
        : base(machine, lastPkmap)
    {
        _mermap = new Mermap(machine, regionPages);
    }

    /// <inheritdoc/>
    public override string Name => LinuxMermap;

    /// <summary>Pages of each CPU's mermap region, the reserved last one included.</summary>
    public int RegionPages => _mermap.RegionPages;

    /// <summary>Private mappings one caller can hold from mermap before it falls back to <c>kmap</c>.</summary>
    internal int MermapCapacity => Math.Min(Mermap.MERMAP_ALLOCS, _mermap.UsablePages);

    private protected override long PrivateMaps => _mermap.Maps;

    private protected override SfBuf MapPrivate(KernelThread td, VmPage page)
    {
        ulong va = _mermap.Get(td, page, out int slot, out int generation);
        return va == 0 ? SfBuf.None : new SfBuf(va, page, slot, Id, generation);
    }

    private protected override bool UnmapPrivate(KernelThread td, SfBuf sf)
    {
        if (!_mermap.Owns(sf.Kva))
        {
            return false;
        }

        _mermap.Put(td, sf, SlotOf(sf), GenerationOf(sf));
        return true;
    }

    private protected override void AddDetails(Dictionary<string, long> details)
    {
        details["mermap.maps"] = _mermap.Maps;
        details["mermap.wraps"] = _mermap.Wraps;
        details["mermap.flushes"] = _mermap.Flushes;
        details["mermap.failures"] = _mermap.Failures;
        details["mermap.held_at_wrap"] = _mermap.HeldAtWrap;
        details["mermap.skipped_pages"] = _mermap.SkippedPages;
        details["mermap.region_pages"] = _mermap.RegionPages;
    }
}
