namespace Native.PageTable;

/// <summary>
/// A physical page (FreeBSD's <c>vm_page_t</c>): a small handle naming a frame of the
/// machine's physical memory. The descriptor it names lives in native memory; there is no
/// managed object per page.
/// </summary>
/// <param name="Frame">The frame number; the physical address is <c>Frame * PAGE_SIZE</c>.</param>
public readonly record struct VmPage(uint Frame)
{
    /// <summary>The physical address of the page's first byte.</summary>
    public ulong PhysicalAddress => (ulong)Frame << Pte.PageShift;

    /// <summary>Renders as <c>page 0x1a2</c>.</summary>
    public override string ToString() => $"page 0x{Frame:x}";
}

/// <summary>Flags of a page descriptor.</summary>
[Flags]
public enum VmPageFlags : uint
{
    /// <summary>No flag.</summary>
    None = 0,

    /// <summary>On the free queue.</summary>
    Free = 1,

    /// <summary>Belongs to a VM object (the page cache).</summary>
    Owned = 2,

    /// <summary>Freed while held: goes to the free queue when the last hold is dropped (<c>PG_UNHOLDFREE</c>).</summary>
    UnholdFree = 4,
}

/// <summary>The native descriptor of one physical page (FreeBSD's <c>struct vm_page</c>).</summary>
internal struct VmPageDescriptor
{
    public uint Frame;
    public uint NextFree;
    public int WireCount;
    public int HoldCount;
    public uint Flags;
    public uint Reserved;
    public ulong Object;
    public ulong Offset;
}
