using System.Runtime.InteropServices;

namespace Native.Interop;

/// <summary>The raw libc entry points. Callers use <see cref="HostCpu"/>, which turns errors into exceptions.</summary>
internal static partial class Libc
{
    /// <summary>Bytes in the <c>cpu_set_t</c> we pass: 1024 CPUs, glibc's default size.</summary>
    internal const int CpuSetBytes = 128;

    internal const int EINVAL = 22;

    // pid 0 is the calling thread: every Linux thread is a task with its own affinity mask.
    [LibraryImport("libc", SetLastError = true)]
    internal static unsafe partial int sched_setaffinity(int pid, nuint cpusetsize, ulong* mask);

    [LibraryImport("libc", SetLastError = true)]
    internal static unsafe partial int sched_getaffinity(int pid, nuint cpusetsize, ulong* mask);

    // Never blocks and never calls back into the runtime, so the GC transition can be skipped.
    [LibraryImport("libc", EntryPoint = "sched_getcpu", SetLastError = false)]
    [SuppressGCTransition]
    internal static partial int sched_getcpu();
}
