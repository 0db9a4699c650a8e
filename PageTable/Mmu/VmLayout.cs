namespace Native.PageTable;

/// <summary>A contiguous range of kernel virtual pages with a purpose.</summary>
/// <param name="Name">What the region holds.</param>
/// <param name="Start">First virtual address (page aligned).</param>
/// <param name="Pages">Number of pages.</param>
public readonly record struct KvaRegion(string Name, ulong Start, int Pages)
{
    /// <summary>One past the last byte.</summary>
    public ulong End => Start + ((ulong)Pages << Pte.PageShift);

    /// <summary>True when <paramref name="va"/> lies in the region.</summary>
    public bool Contains(ulong va) => va >= Start && va < End;

    /// <summary>The virtual address of page <paramref name="index"/>.</summary>
    public ulong PageAddress(int index) => (uint)index < (uint)Pages
        ? Start + ((ulong)index << Pte.PageShift)
        : throw new ArgumentOutOfRangeException(nameof(index), index, $"{Name} has {Pages} pages");

    /// <summary>Renders as <c>name [start, end) N pages</c>.</summary>
    public override string ToString() => $"{Name} [0x{Start:x}, 0x{End:x}) {Pages} pages";
}

/// <summary>
/// The virtual address map, amd64-like: user space at the bottom, the direct map at FreeBSD's
/// <c>DMAP_MIN_ADDRESS</c>, and the kernel's own regions (sf_buf window, per-CPU fixmap,
/// <c>kernel_map</c> arena, permanently mapped kernel memory) above it, each followed by an
/// unmapped guard page.
/// </summary>
public sealed class VmLayout
{
    /// <summary>Lowest user address (page 0 is never mapped).</summary>
    public const ulong UserMin = 0x1000;

    /// <summary>One past the highest user address: 64 GiB of user space per process.</summary>
    public const ulong UserMax = 0x10_0000_0000;

    /// <summary>Base of the direct map (amd64 <c>DMAP_MIN_ADDRESS</c>): KVA = DMAP_BASE + physical address.</summary>
    public const ulong DMAP_BASE = 0xFFFF_F800_0000_0000;

    /// <summary>Base of the kernel's page-mapped regions (amd64 <c>VM_MIN_KERNEL_ADDRESS</c>).</summary>
    public const ulong KERNBASE = 0xFFFF_FE00_0000_0000;

    /// <summary>Pages of the fixmap region per CPU: room for Linux's 20 <c>kmap_atomic</c> or 16 <c>kmap_local</c> slots, or FreeBSD's one quick-map page.</summary>
    public const int FixmapPagesPerCpu = 32;

    internal VmLayout(int sfBufPages, int kernelMapPages, int kernelMemoryPages, ulong directMapBytes, int cpus = 1, bool pagedDirectMap = false)
    {
        DirectMapIsPaged = pagedDirectMap && directMapBytes != 0;
        ulong next = KERNBASE;
        // The ephemeral-mapping regions (sf_buf window, fixmap, kernel_map) first and adjacent,
        // so that one range check tells a TLB miss on an ephemeral mapping from any other.
        SfBufWindow = Carve("sf_buf window", sfBufPages, ref next);
        Fixmap = Carve("fixmap", FixmapPagesPerCpu * cpus, ref next);
        KernelMap = Carve("kernel_map", kernelMapPages, ref next);
        KernelMemory = Carve("kmem", kernelMemoryPages, ref next);
        KernelPages = checked((int)((next - KERNBASE) >> Pte.PageShift));
        DirectMapBytes = directMapBytes;
    }

    /// <summary>The sf_buf window: one fixed page per sf_buf.</summary>
    public KvaRegion SfBufWindow { get; }

    /// <summary>The <c>kernel_map</c> arena the original mechanisms allocate KVA from, per use.</summary>
    public KvaRegion KernelMap { get; }

    /// <summary>Permanently mapped kernel memory (pipe buffers, md storage).</summary>
    public KvaRegion KernelMemory { get; }

    /// <summary>
    /// Per-CPU fixed slots reserved at boot (Linux's fixmap, FreeBSD's per-CPU <c>qmap_addr</c>):
    /// CPU <c>c</c> owns pages <c>c * FixmapPagesPerCpu</c> onwards. Unused by the paper's strategies.
    /// </summary>
    public KvaRegion Fixmap { get; }

    /// <summary>The address of fixmap slot <paramref name="slot"/> of CPU <paramref name="cpu"/>.</summary>
    public ulong FixmapAddress(int cpu, int slot) => (uint)slot < FixmapPagesPerCpu
        ? Fixmap.PageAddress((cpu * FixmapPagesPerCpu) + slot)
        : throw new ArgumentOutOfRangeException(nameof(slot), slot, $"a CPU has {FixmapPagesPerCpu} fixmap slots");

    /// <summary>Pages from <see cref="KERNBASE"/> to the end of the last region, guards included.</summary>
    public int KernelPages { get; }

    /// <summary>Bytes covered by the direct map; 0 on the i386 flavour, which has none.</summary>
    public ulong DirectMapBytes { get; }

    /// <summary>
    /// True when the direct map is made of 4 KiB PTEs in the kernel page table
    /// (<see cref="MachineFlavor.Amd64Xpfo"/>): its addresses are then a page-mapped kernel region,
    /// walked and cached in the TLB. False for amd64's permanent 1 GiB pages and for i386.
    /// </summary>
    public bool DirectMapIsPaged { get; }

    /// <summary>Pages of the direct map when it is page-mapped (<see cref="DirectMapIsPaged"/>), else 0.</summary>
    public int DirectMapPages => DirectMapIsPaged ? checked((int)(DirectMapBytes >> Pte.PageShift)) : 0;

    /// <summary>True when <paramref name="va"/> lies in the direct map.</summary>
    public bool IsDirectMap(ulong va) => va - DMAP_BASE < DirectMapBytes;

    /// <summary>True when <paramref name="va"/> lies in one of the page-mapped kernel regions (guard pages excluded; the direct map when it is page-mapped).</summary>
    public bool IsKernelRegion(ulong va) => SfBufWindow.Contains(va) || KernelMap.Contains(va) || KernelMemory.Contains(va) || Fixmap.Contains(va)
        || (DirectMapIsPaged && IsDirectMap(va));

    /// <summary>True when <paramref name="va"/> is a user address.</summary>
    public static bool IsUser(ulong va) => va >= UserMin && va < UserMax;

    /// <summary>The direct-map address of a physical address.</summary>
    public ulong DirectMap(ulong physicalAddress) => physicalAddress < DirectMapBytes
        ? DMAP_BASE + physicalAddress
        : throw new InvalidOperationException(DirectMapBytes == 0
            ? "this machine has no direct map (i386 flavour)"
            : $"physical address 0x{physicalAddress:x} is beyond the direct map");

    private static KvaRegion Carve(string name, int pages, ref ulong next)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(pages, name);
        var region = new KvaRegion(name, next, pages);
        next = region.End + (ulong)Pte.PageSize; // guard page: overruns fault
        return region;
    }
}
