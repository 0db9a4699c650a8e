namespace Native.SfBufNative.Strategies.Linux;

/// <summary>White-box views for tests (internal; reached through InternalsVisibleTo).</summary>
public sealed partial class LinuxMermapMapper
{
    /// <summary>Tracking entries of <paramref name="cpu"/> in use.</summary>
    internal int TestHookInUse(int cpu) => _mermap.InUse(cpu);

    /// <summary>The bump pointer of <paramref name="cpu"/>, as a page index in its region.</summary>
    internal int TestHookNextPage(int cpu) => _mermap.NextPage(cpu);

    /// <summary>
    /// Gives every CPU a region of <paramref name="pages"/> pages (the reserved last one included)
    /// before anything is mapped, so that a generic driver's few operations wrap it.
    /// </summary>
    internal void TestHookUseRegion(int pages)
    {
        if (_mermap.Maps != 0)
        {
            throw new InvalidOperationException("the mermap region is resized only before its first mapping");
        }

        _mermap = new Mermap(Machine, pages);
    }
}
