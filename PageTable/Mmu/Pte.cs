namespace Native.PageTable;

/// <summary>
/// x86 page-table-entry bits, as FreeBSD's <c>pmap.h</c> names them. A PTE is a 64-bit word:
/// flags in the low 12 bits, the physical frame number from bit 12 up.
/// </summary>
public static class Pte
{
    /// <summary>Valid (present).</summary>
    public const ulong PG_V = 0x001;

    /// <summary>Writable.</summary>
    public const ulong PG_RW = 0x002;

    /// <summary>User accessible.</summary>
    public const ulong PG_U = 0x004;

    /// <summary>Accessed: set by the MMU, atomically, when a walk caches the entry.</summary>
    public const ulong PG_A = 0x020;

    /// <summary>Modified (dirty): set by the MMU on the first write through the entry.</summary>
    public const ulong PG_M = 0x040;

    /// <summary>Large page (the direct map's 1 GiB pages).</summary>
    public const ulong PG_PS = 0x080;

    /// <summary>Global: survives address-space switches (kernel mappings).</summary>
    public const ulong PG_G = 0x100;

    /// <summary>The physical frame bits.</summary>
    public const ulong PG_FRAME = 0x000F_FFFF_FFFF_F000;

    /// <summary>log2 of the page size.</summary>
    public const int PageShift = 12;

    /// <summary>Bytes in a page.</summary>
    public const int PageSize = 1 << PageShift;

    /// <summary>Mask of the offset within a page.</summary>
    public const ulong PageMask = PageSize - 1;

    /// <summary>A PTE mapping <paramref name="frame"/> with <paramref name="flags"/>.</summary>
    public static ulong Make(uint frame, ulong flags) => ((ulong)frame << PageShift) | flags;

    /// <summary>The frame number in <paramref name="pte"/>.</summary>
    public static uint Frame(ulong pte) => (uint)((pte & PG_FRAME) >> PageShift);

    /// <summary>True when <paramref name="pte"/> has <see cref="PG_V"/>.</summary>
    public static bool IsValid(ulong pte) => (pte & PG_V) != 0;

    /// <summary>Renders a PTE as <c>frame 0x1234 [V RW A M G]</c>.</summary>
    public static string Describe(ulong pte)
    {
        if (!IsValid(pte))
        {
            return pte == 0 ? "invalid" : $"invalid (0x{pte:x})";
        }

        var bits = new List<string>(6) { "V" };
        if ((pte & PG_RW) != 0)
        {
            bits.Add("RW");
        }

        if ((pte & PG_U) != 0)
        {
            bits.Add("U");
        }

        if ((pte & PG_A) != 0)
        {
            bits.Add("A");
        }

        if ((pte & PG_M) != 0)
        {
            bits.Add("M");
        }

        if ((pte & PG_G) != 0)
        {
            bits.Add("G");
        }

        return $"frame 0x{Frame(pte):x} [{string.Join(' ', bits)}]";
    }
}
