using System.Runtime.InteropServices;

namespace Native.Interop;

/// <summary>
/// Thread affinity and CPU identity of the host, through libc's <c>sched_setaffinity</c>,
/// <c>sched_getaffinity</c> and <c>sched_getcpu</c>.
/// <para>
/// On a platform without them (anything but Linux), <see cref="IsPinningAvailable"/> is false and
/// the pinning calls throw <see cref="PlatformNotSupportedException"/>: pinning is reported as
/// unavailable, never pretended.
/// </para>
/// </summary>
public static class HostCpu
{
    private static readonly Lazy<bool> s_available = new(Probe);

    /// <summary>True when the calling platform can pin threads and report the current CPU.</summary>
    public static bool IsPinningAvailable => s_available.Value;

    /// <summary>
    /// The host CPUs this process may run on (its affinity mask at the time of the call), in
    /// increasing order. Without affinity support, <c>0 .. ProcessorCount-1</c>.
    /// </summary>
    public static unsafe int[] AllowedCpus()
    {
        if (!IsPinningAvailable)
        {
            return Enumerable.Range(0, Environment.ProcessorCount).ToArray();
        }

        ulong* mask = stackalloc ulong[Libc.CpuSetBytes / sizeof(ulong)];
        new Span<ulong>(mask, Libc.CpuSetBytes / sizeof(ulong)).Clear();
        if (Libc.sched_getaffinity(0, Libc.CpuSetBytes, mask) != 0)
        {
            throw new AffinityException("sched_getaffinity", -1, Marshal.GetLastPInvokeError());
        }

        var cpus = new List<int>();
        for (int word = 0; word < Libc.CpuSetBytes / sizeof(ulong); word++)
        {
            for (int bit = 0; bit < 64; bit++)
            {
                if ((mask[word] & (1UL << bit)) != 0)
                {
                    cpus.Add((word * 64) + bit);
                }
            }
        }

        return cpus.ToArray();
    }

    /// <summary>
    /// Pins the calling thread to one host CPU. Throws <see cref="AffinityException"/> carrying
    /// errno when the kernel refuses (for example a CPU that does not exist: EINVAL).
    /// </summary>
    public static unsafe void PinCurrentThread(int hostCpu)
    {
        RequireAvailable();
        if (hostCpu < 0 || hostCpu >= Libc.CpuSetBytes * 8)
        {
            throw new AffinityException("sched_setaffinity", hostCpu, Libc.EINVAL);
        }

        ulong* mask = stackalloc ulong[Libc.CpuSetBytes / sizeof(ulong)];
        new Span<ulong>(mask, Libc.CpuSetBytes / sizeof(ulong)).Clear();
        mask[hostCpu / 64] = 1UL << (hostCpu % 64);
        if (Libc.sched_setaffinity(0, Libc.CpuSetBytes, mask) != 0)
        {
            throw new AffinityException("sched_setaffinity", hostCpu, Marshal.GetLastPInvokeError());
        }
    }

    /// <summary>Lets the calling thread run on every CPU in <paramref name="hostCpus"/> again.</summary>
    public static unsafe void SetCurrentThreadAffinity(ReadOnlySpan<int> hostCpus)
    {
        RequireAvailable();
        ulong* mask = stackalloc ulong[Libc.CpuSetBytes / sizeof(ulong)];
        new Span<ulong>(mask, Libc.CpuSetBytes / sizeof(ulong)).Clear();
        foreach (int cpu in hostCpus)
        {
            if (cpu < 0 || cpu >= Libc.CpuSetBytes * 8)
            {
                throw new AffinityException("sched_setaffinity", cpu, Libc.EINVAL);
            }

            mask[cpu / 64] |= 1UL << (cpu % 64);
        }

        if (Libc.sched_setaffinity(0, Libc.CpuSetBytes, mask) != 0)
        {
            throw new AffinityException("sched_setaffinity", -1, Marshal.GetLastPInvokeError());
        }
    }

    /// <summary>The host CPU the calling thread is running on right now (<c>sched_getcpu</c>).</summary>
    public static int CurrentCpu()
    {
        RequireAvailable();
        int cpu = Libc.sched_getcpu();
        if (cpu < 0)
        {
            throw new AffinityException("sched_getcpu", -1, Marshal.GetLastSystemError());
        }

        return cpu;
    }

    private static void RequireAvailable()
    {
        if (!IsPinningAvailable)
        {
            throw new PlatformNotSupportedException(
                "thread pinning needs Linux's sched_setaffinity and sched_getcpu; this platform has neither");
        }
    }

    private static bool Probe()
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }

        try
        {
            return Libc.sched_getcpu() >= 0;
        }
        catch (DllNotFoundException)
        {
            return false;
        }
        catch (EntryPointNotFoundException)
        {
            return false;
        }
    }
}
