using Native.PageTable;

namespace Native.SfBufNative;

/// <summary>White-box views for tests (internal; reached through InternalsVisibleTo).</summary>
public sealed unsafe partial class I386Mapper
{
    /// <summary>One sf_buf's state.</summary>
    internal (bool HasPage, uint Frame, int RefCount, CpuSet CpuMask) TestHookEntry(int i)
    {
        var e = _entries[i];
        return (e.HasPage != 0, e.Frame, e.RefCount, e.CpuMask);
    }

    /// <summary>The free list, head (next victim) first.</summary>
    internal List<int> TestHookFreeList()
    {
        var list = new List<int>();
        for (int i = _freeHead; i != NoEntry; i = _entries[i].FreeNext)
        {
            list.Add(i);
        }

        return list;
    }

    /// <summary>The sf_buf index the hash finds for a frame, or -1.</summary>
    internal int TestHookLookup(uint frame) => Lookup(frame);

    /// <summary>Number of sf_bufs reachable from the hash.</summary>
    internal int TestHookHashCount()
    {
        int n = 0;
        for (int b = 0; b < HashBuckets; b++)
        {
            for (int i = _buckets[b]; i != NoEntry; i = _entries[i].HashNext)
            {
                n++;
            }
        }

        return n;
    }

    /// <summary>Forces a reference count (to test overflow handling).</summary>
    internal void TestHookSetRefCount(int i, int value) => _entries[i].RefCount = value;
}
