using System.Runtime.InteropServices;
using System.Text;

namespace Native.Interop;

/// <summary>
/// Counts the hits of one kernel tracepoint (for example <c>tlb:tlb_flush</c>) that happen in the
/// context of one host thread, through <c>perf_event_open</c> in counting mode, optionally with a
/// tracepoint filter (<c>reason == 4</c>). Only Linux has it; it needs the tracepoint's id from
/// tracefs and the right to observe kernel events (root, <c>CAP_PERFMON</c>, or
/// <c>perf_event_paranoid</c> at most 1).
/// </summary>
public sealed unsafe partial class TracepointCounter : IDisposable
{
    private const long SysPerfEventOpen = 298;
    private const long SysFsOpen = 430;
    private const long SysFsConfig = 431;
    private const long SysFsMount = 432;
    private const uint PerfTypeTracepoint = 2;
    private const uint PerfAttrSizeVer0 = 64;
    private const ulong PerfFlagFdCloexec = 8;
    private const ulong PerfEventIocSetFilter = 0x40082406; // _IOW('$', 6, char *)
    private const uint FsOpenCloexec = 1;
    private const uint FsConfigCmdCreate = 6;
    private const uint FsMountCloexec = 1;
    private const int OpenReadOnlyCloexec = 0x80000; // O_RDONLY | O_CLOEXEC

    private static readonly string[] s_tracefsRoots = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

    private int _fd;

    private TracepointCounter(int fd) => _fd = fd;

    /// <summary>
    /// The id of tracepoint <paramref name="system"/>:<paramref name="name"/>, or -1 with the
    /// reason in <paramref name="unavailable"/>. Reads tracefs where it is mounted; where it is
    /// not and the process may mount file systems, reads it through a detached tracefs mount
    /// (<c>fsopen</c>/<c>fsmount</c>) that is attached nowhere and vanishes when closed, so the
    /// host's mount table is left as it was.
    /// </summary>
    public static int FindTracepointId(string system, string name, out string? unavailable)
    {
        ArgumentNullException.ThrowIfNull(system);
        ArgumentNullException.ThrowIfNull(name);
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            unavailable = "tracepoints are read through Linux x64's perf_event_open";
            return -1;
        }

        string relative = $"events/{system}/{name}/id";
        foreach (var root in s_tracefsRoots)
        {
            try
            {
                string path = Path.Combine(root, relative);
                if (File.Exists(path) && int.TryParse(File.ReadAllText(path).Trim(), out int id))
                {
                    unavailable = null;
                    return id;
                }
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                // Try the next root, then the detached mount.
            }
        }

        return ReadIdFromDetachedTracefs(relative, out unavailable);
    }

    /// <summary>
    /// Starts counting the tracepoint with id <paramref name="id"/> in the calling thread's
    /// context (on whatever CPU it runs). A <paramref name="filter"/> in the tracepoint filter
    /// language keeps only matching hits.
    /// </summary>
    public static TracepointCounter OpenForCurrentThread(int id, string? filter)
    {
        PerfEventAttr attr = default;
        attr.Type = PerfTypeTracepoint;
        attr.Size = PerfAttrSizeVer0;
        attr.Config = (ulong)id;
        long fd = syscall_perf_event_open(SysPerfEventOpen, &attr, 0, -1, -1, PerfFlagFdCloexec);
        if (fd < 0)
        {
            throw new HostMemoryException("perf_event_open", Marshal.GetLastPInvokeError());
        }

        var counter = new TracepointCounter((int)fd);
        if (filter != null)
        {
            byte[] text = Encoding.ASCII.GetBytes(filter + "\0");
            fixed (byte* p = text)
            {
                if (ioctl((int)fd, PerfEventIocSetFilter, p) != 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    counter.Dispose();
                    throw new HostMemoryException($"ioctl(PERF_EVENT_IOC_SET_FILTER, \"{filter}\")", errno);
                }
            }
        }

        return counter;
    }

    /// <summary>Hits counted so far (readable from any thread, also after the counted thread has exited).</summary>
    public long Read()
    {
        ObjectDisposedException.ThrowIf(_fd < 0, this);
        ulong value;
        if (read(_fd, &value, sizeof(ulong)) != sizeof(ulong))
        {
            throw new HostMemoryException("read(perf event)", Marshal.GetLastPInvokeError());
        }

        return (long)value;
    }

    /// <summary>Closes the counter.</summary>
    public void Dispose()
    {
        int fd = Interlocked.Exchange(ref _fd, -1);
        if (fd >= 0)
        {
            _ = close(fd);
        }
    }

    private static int ReadIdFromDetachedTracefs(string relative, out string? unavailable)
    {
        int fs = -1, mount = -1, file = -1;
        try
        {
            fixed (byte* type = "tracefs\0"u8)
            {
                fs = (int)syscall_fsopen(SysFsOpen, type, FsOpenCloexec);
            }

            if (fs < 0
                || syscall_fsconfig(SysFsConfig, fs, FsConfigCmdCreate, null, null, 0) < 0
                || (mount = (int)syscall_fsmount(SysFsMount, fs, FsMountCloexec, 0)) < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                unavailable = $"tracefs is not mounted and cannot be mounted by this process (errno {errno}: {Marshal.GetPInvokeErrorMessage(errno)}); "
                    + "mount it (mount -t tracefs nodev /sys/kernel/tracing) or run with CAP_SYS_ADMIN";
                return -1;
            }

            byte[] path = Encoding.ASCII.GetBytes(relative + "\0");
            fixed (byte* p = path)
            {
                file = openat(mount, p, OpenReadOnlyCloexec);
            }

            if (file < 0)
            {
                unavailable = $"this kernel has no {relative.Replace("/id", string.Empty, StringComparison.Ordinal)} tracepoint";
                return -1;
            }

            byte* buffer = stackalloc byte[32];
            nint n = read(file, buffer, 31);
            if (n > 0 && int.TryParse(Encoding.ASCII.GetString(buffer, (int)n).Trim(), out int id))
            {
                unavailable = null;
                return id;
            }

            unavailable = $"could not read {relative} from tracefs";
            return -1;
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException)
        {
            unavailable = $"libc lacks a call the tracepoint needs ({ex.Message})";
            return -1;
        }
        finally
        {
            foreach (int fd in new[] { file, mount, fs })
            {
                if (fd >= 0)
                {
                    _ = close(fd);
                }
            }
        }
    }

    // glibc's syscall(2) is a register shuffle written in assembly, so a fixed-argument
    // declaration per call is safe on x86-64; the kernel truncates each register to its argument type.
    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long syscall_perf_event_open(long number, PerfEventAttr* attr, long pid, long cpu, long groupFd, ulong flags);

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long syscall_fsopen(long number, byte* fsName, uint flags);

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long syscall_fsconfig(long number, long fd, uint command, byte* key, byte* value, long aux);

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long syscall_fsmount(long number, long fd, uint flags, uint attributes);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ioctl(int fd, ulong request, byte* argument);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int openat(int dirfd, byte* path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint read(int fd, void* buffer, nuint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);

    /// <summary><c>struct perf_event_attr</c> up to <c>PERF_ATTR_SIZE_VER0</c>.</summary>
    [StructLayout(LayoutKind.Sequential, Size = 64)]
    private struct PerfEventAttr
    {
        public uint Type;
        public uint Size;
        public ulong Config;
        public ulong SamplePeriod;
        public ulong SampleType;
        public ulong ReadFormat;
        public ulong Flags; // disabled = 0: counting starts at once
        public uint WakeupEvents;
        public uint BpType;
        public ulong Config1;
    }
}
