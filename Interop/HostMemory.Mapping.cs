using System.Runtime.InteropServices;

namespace Native.Interop;

/// <summary>
/// The calls the host backend builds its memory from: a <c>memfd</c> as physical memory,
/// shared mappings of its pages, and <c>PROT_NONE</c> reservations that keep a range of
/// addresses owned (never a hole another mapping could land in).
/// </summary>
public static unsafe partial class HostMemory
{
    private const int PROT_NONE = 0;
    private const int MAP_SHARED = 0x01;
    private const int MAP_FIXED = 0x10;
    private const int MAP_NORESERVE = 0x4000;
    private const uint MFD_CLOEXEC = 1;

    /// <summary>
    /// <c>memfd_create</c> + <c>ftruncate</c>: an anonymous file of <paramref name="bytes"/>
    /// (sparse: pages are allocated on first touch), closed on exec. Returns the descriptor.
    /// </summary>
    public static int CreateMemoryFile(string name, ulong bytes)
    {
        ArgumentNullException.ThrowIfNull(name);
        int fd = memfd_create(name, MFD_CLOEXEC);
        if (fd < 0)
        {
            throw new HostMemoryException("memfd_create", Marshal.GetLastPInvokeError());
        }

        if (ftruncate(fd, checked((long)bytes)) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            _ = close(fd);
            throw new HostMemoryException("ftruncate", errno);
        }

        return fd;
    }

    /// <summary>Closes a descriptor made by <see cref="CreateMemoryFile"/>.</summary>
    public static void CloseFile(int fd)
    {
        if (close(fd) != 0)
        {
            throw new HostMemoryException("close", Marshal.GetLastPInvokeError());
        }
    }

    /// <summary>Maps [<paramref name="offset"/>, +<paramref name="bytes"/>) of a file read-write and shared, anywhere.</summary>
    public static byte* MapFile(int fd, ulong offset, nuint bytes)
    {
        void* p = mmap(null, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, checked((nint)offset));
        return p != (void*)-1 ? (byte*)p : throw new HostMemoryException("mmap", Marshal.GetLastPInvokeError());
    }

    /// <summary>
    /// Maps one range of a file read-write and shared at exactly <paramref name="address"/>,
    /// replacing whatever was mapped there (<c>MAP_FIXED</c>): the host kernel removes the old
    /// translations from every CPU that may cache them before the call returns.
    /// </summary>
    public static void MapFileAt(byte* address, int fd, ulong offset, nuint bytes)
    {
        void* p = mmap(address, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, checked((nint)offset));
        if (p != address)
        {
            throw new HostMemoryException("mmap(MAP_FIXED)", p == (void*)-1 ? Marshal.GetLastPInvokeError() : 0);
        }
    }

    /// <summary>Reserves <paramref name="bytes"/> of address space with no access and no backing.</summary>
    public static byte* Reserve(nuint bytes)
    {
        void* p = mmap(null, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        return p != (void*)-1 ? (byte*)p : throw new HostMemoryException("mmap(PROT_NONE)", Marshal.GetLastPInvokeError());
    }

    /// <summary>
    /// Re-reserves [<paramref name="address"/>, +<paramref name="bytes"/>) with no access,
    /// replacing what was mapped (the host kernel invalidates the old translations everywhere).
    /// Unlike <c>munmap</c> this leaves no hole: the range stays ours, and a stray access is a
    /// fault at a known address, never a write into whatever the process maps next.
    /// </summary>
    public static void ReserveAt(byte* address, nuint bytes)
    {
        void* p = mmap(address, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
        if (p != address)
        {
            throw new HostMemoryException("mmap(PROT_NONE, MAP_FIXED)", p == (void*)-1 ? Marshal.GetLastPInvokeError() : 0);
        }
    }

    /// <summary>The calling thread's host thread id (<c>gettid</c>).</summary>
    public static int CurrentThreadId() => gettid();

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int memfd_create(string name, uint flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ftruncate(int fd, long length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);

    [LibraryImport("libc")]
    private static partial int gettid();
}
