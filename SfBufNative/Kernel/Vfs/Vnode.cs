using Microsoft.Win32.SafeHandles;
using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>
/// A file of the simulated file system (<c>struct vnode</c>) with its VM object: the page cache
/// of its resident pages, by page index. Contents come from a host file (read at page-in time)
/// or from bytes given at creation.
/// </summary>
public sealed class Vnode
{
    private static long s_nextObjectId;

    private readonly Dictionary<long, VmPage> _pages = [];
    private readonly string? _hostPath;
    private readonly byte[]? _bytes;

    internal Vnode(string name, string? hostPath, byte[]? bytes)
    {
        Name = name;
        _hostPath = hostPath;
        _bytes = bytes;
        Size = hostPath != null ? new FileInfo(hostPath).Length : bytes!.LongLength;
        ObjectId = (ulong)Interlocked.Increment(ref s_nextObjectId);
        Lock = new KMutex($"vnode {name}");
    }

    /// <summary>The file's name in the simulated file system.</summary>
    public string Name { get; }

    /// <summary>File size in bytes.</summary>
    public long Size { get; }

    /// <summary>Pages the file spans.</summary>
    public long Pages => (Size + Pte.PageSize - 1) / Pte.PageSize;

    /// <summary>Id of the VM object recorded as the owner of its cached pages.</summary>
    public ulong ObjectId { get; }

    /// <summary>Pages currently in the page cache.</summary>
    public int ResidentPages
    {
        get
        {
            lock (_pages)
            {
                return _pages.Count;
            }
        }
    }

    /// <summary>Serialises page-in of this file's pages (the vnode lock).</summary>
    internal KMutex Lock { get; }

    internal bool TryGetCached(long index, out VmPage page)
    {
        lock (_pages)
        {
            return _pages.TryGetValue(index, out page);
        }
    }

    internal void Insert(long index, VmPage page)
    {
        lock (_pages)
        {
            _pages.Add(index, page);
        }
    }

    /// <summary>Removes and returns the cached pages nobody wires or holds (for eviction).</summary>
    internal List<VmPage> TakeUnused(PhysicalMemory physical)
    {
        var taken = new List<VmPage>();
        lock (_pages)
        {
            foreach (var (index, page) in _pages.ToArray())
            {
                if (!physical.IsWiredOrHeld(page))
                {
                    _pages.Remove(index);
                    taken.Add(page);
                }
            }
        }

        return taken;
    }

    /// <summary>Reads the file's bytes at <paramref name="offset"/> from its backing store (the "disk").</summary>
    internal int ReadBacking(long offset, Span<byte> destination)
    {
        int count = (int)Math.Max(0, Math.Min(destination.Length, Size - offset));
        if (count == 0)
        {
            return 0;
        }

        if (_bytes != null)
        {
            _bytes.AsSpan((int)offset, count).CopyTo(destination);
            return count;
        }

        using SafeFileHandle handle = File.OpenHandle(_hostPath!, FileMode.Open, FileAccess.Read, FileShare.Read);
        int done = 0;
        while (done < count)
        {
            int n = RandomAccess.Read(handle, destination.Slice(done, count - done), offset + done);
            if (n == 0)
            {
                break; // the host file shrank: the rest reads as zeroes
            }

            done += n;
        }

        return done;
    }
}
