using Native.PageTable;
using NUnit.Framework;

namespace Native.Tests.Host;

/// <summary>
/// Where the host backend's tests may run: Linux x64 with at least two host cores for this
/// process. Elsewhere they are skipped (ignored) with the reason, never faked.
/// </summary>
internal static class HostGate
{
    /// <summary>Skips the calling test unless the host backend runs here with at least <paramref name="cores"/> cores.</summary>
    public static void Require(int cores = 2)
    {
        if (!HostBackend.IsAvailable)
        {
            Assert.Ignore($"host backend unavailable: {HostBackend.UnavailableReason}");
        }

        if (HostBackend.HostCores < cores)
        {
            Assert.Ignore($"needs {cores} host cores; this process may use {HostBackend.HostCores}");
        }
    }

    /// <summary>Skips the calling test unless the host kernel's TLB flushes can be counted per thread.</summary>
    public static void RequireFlushCounts()
    {
        Require();
        if (!HostBackend.CanCountFlushes)
        {
            Assert.Ignore($"the host's TLB flushes cannot be counted here: {HostBackend.FlushCountUnavailableReason}");
        }
    }

    /// <summary>A small host-backed machine: 16 MiB, 64-page sf_buf window and kernel_map, 256 pages of kmem.</summary>
    public static MachineOptions Small(int cpus = 2) => new()
    {
        Backend = MachineBackend.Host,
        Cpus = cpus,
        PhysicalMemoryBytes = 16UL << 20,
        SfBufWindowPages = 64,
        KernelMapPages = 64,
        KernelMemoryPages = 256,
    };
}
