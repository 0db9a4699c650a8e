using System.Runtime.InteropServices;

namespace Native.Interop;

/// <summary>
/// Anonymous host memory and its protection (<c>mmap</c>, <c>mprotect</c>, <c>munmap</c>), for
/// measuring what the host kernel's own TLB shootdowns cost. Errors become
/// <see cref="HostMemoryException"/> carrying errno.
/// </summary>
public static unsafe partial class HostMemory
{
    /// <summary><c>PROT_READ</c>.</summary>
    public const int PROT_READ = 1;

    /// <summary><c>PROT_WRITE</c>.</summary>
    public const int PROT_WRITE = 2;

    private const int MAP_PRIVATE = 0x02;
    private const int MAP_ANONYMOUS = 0x20;

    /// <summary>Maps <paramref name="bytes"/> of anonymous read-write memory.</summary>
    public static byte* Map(nuint bytes)
    {
        void* p = mmap(null, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == (void*)-1)
        {
            throw new HostMemoryException("mmap", Marshal.GetLastPInvokeError());
        }

        return (byte*)p;
    }

    /// <summary>Changes the protection of [<paramref name="address"/>, +<paramref name="bytes"/>).</summary>
    public static void Protect(byte* address, nuint bytes, int protection)
    {
        if (mprotect(address, bytes, protection) != 0)
        {
            throw new HostMemoryException("mprotect", Marshal.GetLastPInvokeError());
        }
    }

    /// <summary>
    /// Asks the host not to back the range with transparent huge pages (<c>MADV_NOHUGEPAGE</c>),
    /// so that it is mapped with 4 KiB pages and TLB behaviour per page can be measured.
    /// </summary>
    public static void NoHugePages(byte* address, nuint bytes)
    {
        const int MADV_NOHUGEPAGE = 15;
        if (madvise(address, bytes, MADV_NOHUGEPAGE) != 0)
        {
            throw new HostMemoryException("madvise", Marshal.GetLastPInvokeError());
        }
    }

    /// <summary>Unmaps a mapping made by <see cref="Map"/>.</summary>
    public static void Unmap(byte* address, nuint bytes)
    {
        if (munmap(address, bytes) != 0)
        {
            throw new HostMemoryException("munmap", Marshal.GetLastPInvokeError());
        }
    }

    /// <summary>A cheap real system call (<c>getppid</c>), to subtract the kernel-entry cost from measurements.</summary>
    public static int NullSyscall() => getppid();

    [LibraryImport("libc", SetLastError = true)]
    private static partial void* mmap(void* addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int mprotect(void* addr, nuint len, int prot);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(void* addr, nuint length);

    [LibraryImport("libc")]
    private static partial int getppid();

    [LibraryImport("libc", SetLastError = true)]
    private static partial int madvise(void* addr, nuint length, int advice);
}

/// <summary>A host memory call failed; carries the call and errno.</summary>
public sealed class HostMemoryException : Exception
{
    /// <summary>Creates the exception for <paramref name="call"/> failing with <paramref name="errno"/>.</summary>
    public HostMemoryException(string call, int errno)
        : base($"{call} failed: errno {errno} ({Marshal.GetPInvokeErrorMessage(errno)})")
    {
        Call = call;
        Errno = errno;
    }

    /// <summary>The libc function that failed.</summary>
    public string Call { get; }

    /// <summary>The errno it left.</summary>
    public int Errno { get; }
}
