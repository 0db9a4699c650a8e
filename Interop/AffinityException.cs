using System.Runtime.InteropServices;

namespace Native.Interop;

/// <summary>A libc affinity call failed; carries the call, the CPU asked for and errno.</summary>
public sealed class AffinityException : Exception
{
    /// <summary>Creates the exception for <paramref name="call"/> failing with <paramref name="errno"/>.</summary>
    public AffinityException(string call, int hostCpu, int errno)
        : base($"{call}(cpu {hostCpu}) failed: errno {errno} ({Marshal.GetPInvokeErrorMessage(errno)})")
    {
        Call = call;
        HostCpu = hostCpu;
        Errno = errno;
    }

    /// <summary>The libc function that failed.</summary>
    public string Call { get; }

    /// <summary>The host CPU the call was about, or -1.</summary>
    public int HostCpu { get; }

    /// <summary>The errno the call left.</summary>
    public int Errno { get; }
}
