using Native.PageTable;

namespace Native.SfBufNative;

/// <summary>Flags of <see cref="SfBufMapper.Alloc"/>, with FreeBSD's values (<c>SFB_*</c>).</summary>
[Flags]
public enum SfBufFlags
{
    /// <summary><c>SFB_DEFAULT</c>: a shared mapping, valid on every CPU; may sleep, uninterruptibly.</summary>
    Default = 0,

    /// <summary><c>SFB_CATCH</c>: a sleep for a free sf_buf can be interrupted (cancelled); Alloc then returns none.</summary>
    Catch = 1,

    /// <summary><c>SFB_CPUPRIVATE</c>: the mapping need only be valid on the current CPU; the caller must be pinned.</summary>
    CpuPrivate = 2,

    /// <summary><c>SFB_NOWAIT</c>: never sleep; return none at once if no sf_buf is free.</summary>
    NoWait = 4,

    /// <summary>
    /// Not a FreeBSD flag (its value is above theirs): the caller promises to only read the page
    /// through this mapping. A strategy may then map it read-only, and a write through it faults.
    /// Only <c>netbsd-emap</c> acts on it: NetBSD enters emap mappings read-only
    /// (<c>pmap_emap_enter(va, pa, VM_PROT_READ)</c>), so only readers get an emap mapping and any
    /// other user an ordinary writable kernel mapping. Every other strategy ignores it.
    /// </summary>
    ReadOnly = 0x100,
}

/// <summary>
/// An sf_buf handle (<c>struct sf_buf *</c>): the kernel virtual address that maps a page, and
/// the page. A plain value: allocating one creates no managed object.
/// <see cref="IsNone"/> is FreeBSD's NULL return.
/// </summary>
public readonly struct SfBuf : IEquatable<SfBuf>
{
    internal SfBuf(ulong kva, VmPage page, int slot, int mapper, int generation = 0)
    {
        Kva = kva;
        Page = page;
        Slot = slot;
        Mapper = mapper;
        Generation = generation;
    }

    /// <summary>"No sf_buf" (FreeBSD's NULL).</summary>
    public static SfBuf None => default;

    /// <summary><c>sf_buf_kva</c>: the kernel virtual address of the mapped page.</summary>
    public ulong Kva { get; }

    /// <summary><c>sf_buf_page</c>: the page passed to Alloc.</summary>
    public VmPage Page { get; }

    /// <summary>True for the "no sf_buf" result.</summary>
    public bool IsNone => Kva == 0;

    /// <summary>The mapper's slot (sf_buf index or allocation slot); -1 where there is none.</summary>
    internal int Slot { get; }

    /// <summary>Id of the mapper that made the handle, to refuse foreign handles.</summary>
    internal int Mapper { get; }

    /// <summary>The slot's mapping generation when the handle was made, to refuse handles from before a recycle.</summary>
    internal int Generation { get; }

    /// <summary>Equality of all fields.</summary>
    public static bool operator ==(SfBuf left, SfBuf right) => left.Equals(right);

    /// <summary>Inequality.</summary>
    public static bool operator !=(SfBuf left, SfBuf right) => !left.Equals(right);

    /// <inheritdoc/>
    public bool Equals(SfBuf other) => Kva == other.Kva && Page == other.Page && Slot == other.Slot && Mapper == other.Mapper && Generation == other.Generation;

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is SfBuf other && Equals(other);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Kva, Page, Slot, Mapper, Generation);

    /// <summary>Renders as <c>sf_buf kva 0x... page 0x...</c>.</summary>
    public override string ToString() => IsNone ? "no sf_buf" : $"sf_buf kva 0x{Kva:x} {Page}";
}
