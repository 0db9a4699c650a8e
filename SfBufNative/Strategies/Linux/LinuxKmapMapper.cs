using Native.PageTable;

namespace Native.SfBufNative.Strategies.Linux;

/// <summary>
/// <c>linux-kmap</c>: the persistent kmap pool for every user, private ones included (what
/// Linux code did before <c>kmap_atomic</c>, and what a page-cache user that may sleep still does).
/// </summary>
public sealed class LinuxKmapMapper : LinuxHighmemMapper
{
    internal LinuxKmapMapper(Machine machine, int? lastPkmap)
        : base(machine, lastPkmap)
    {
    }

    /// <inheritdoc/>
    public override string Name => LinuxKmap;
}
