using System.Runtime.InteropServices;
using Native.Interop;

namespace Native.PageTable;

/// <summary>
/// Whether this host can run a machine on its own MMU (<see cref="MachineBackend.Host"/>), and
/// what that backend can and cannot express.
/// <para>
/// It runs the same strategy code as the simulation, through the same calls: a kernel PTE
/// update becomes an <c>mmap(MAP_FIXED)</c> of the page's frame of the <c>memfd</c> (or a
/// <c>PROT_NONE</c> re-reservation for a clear), and memory accesses go through the host MMU and
/// its real TLBs. What user space cannot express degrades, always in the same direction (more
/// invalidation, never less):
/// </para>
/// <list type="bullet">
/// <item>Local invalidations (<c>invlpg</c>) are no-ops: the host kernel invalidated the local
/// TLB inside the <c>mmap</c> that changed the mapping. They are still counted as requested.</item>
/// <item>Shootdowns, masked or broadcast, are the host kernel's own: it flushes every CPU that
/// may cache the old translation, whatever mask the strategy computed. The strategy's requested
/// rounds are counted; nothing is posted to the simulated mailboxes.</item>
/// <item>CPU-private mappings become shared: all threads share one host page table, so a
/// remap invalidates on every CPU that ran the process.</item>
/// <item>The accessed bit is kept in software: the first access through a kernel mapping sets
/// <c>PG_A</c> in the pmap's PTE word (the host kernel keeps its own equivalent: it flushes no
/// CPU for a slot that was never touched).</item>
/// <item>No stale-translation oracles: user space cannot inspect the real TLBs, so checked mode
/// keeps no shadow TLB (the latent-staleness oracle and the explorer's round-completion check
/// find nothing to read, and stale_accesses stays 0 by construction). Correctness is checked end
/// to end instead (every word read through a remapped slot on the other core). What is software
/// stays: checked mode still refuses a translation of another CPU's live CPU-private mapping.</item>
/// <item>No controlled scheduling (exploration): the host kernel's flushes cannot be ordered.</item>
/// <item>Peers run where their mechanism is expressible (the strategy registry
/// says which, and why not: <c>SfBufStrategyInfo.NotOnHost</c>); one whose saving rests on leaving
/// other CPUs' translations stale is refused with its reason.</item>
/// <item>User address spaces stay simulated page tables, walked in software on every access
/// and never cached, so they cannot go stale; their frames are read through the direct map.</item>
/// <item>No more CPUs than host cores, threads always pinned, and no cost profile: the costs
/// are the host's.</item>
/// </list>
/// </summary>
public static class HostBackend
{
    private static readonly Lazy<string?> s_unavailable = new(Probe);

    /// <summary>True when <see cref="MachineBackend.Host"/> machines can be booted here.</summary>
    public static bool IsAvailable => s_unavailable.Value == null;

    /// <summary>Why the host backend cannot run here, or null when it can.</summary>
    public static string? UnavailableReason => s_unavailable.Value;

    /// <summary>Host cores this process may run on (the most CPUs a host machine can have).</summary>
    public static int HostCores => HostCpu.IsPinningAvailable ? HostCpu.AllowedCpus().Length : 0;

    /// <summary>
    /// True when the host kernel's TLB flushes can be counted per kernel thread (the
    /// <c>tlb:tlb_flush</c> tracepoint through <c>perf_event_open</c>).
    /// </summary>
    public static bool CanCountFlushes => HostFlushCounters.TracepointUnavailable == null;

    /// <summary>Why flushes cannot be counted, or null when they can.</summary>
    public static string? FlushCountUnavailableReason => HostFlushCounters.TracepointUnavailable;

    /// <summary>Throws <see cref="PlatformNotSupportedException"/> with the reason when unavailable.</summary>
    public static void ThrowIfUnavailable()
    {
        if (s_unavailable.Value is { } reason)
        {
            throw new PlatformNotSupportedException($"the host backend is unavailable: {reason}");
        }
    }

    private static string? Probe()
    {
        if (!OperatingSystem.IsLinux())
        {
            return "it needs Linux (memfd_create, mmap MAP_FIXED, sched_setaffinity); this is " + RuntimeInformation.OSDescription;
        }

        if (RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            return $"it is built for x86-64 page tables and system calls; this process is {RuntimeInformation.ProcessArchitecture}";
        }

        if (!HostCpu.IsPinningAvailable)
        {
            return "thread pinning (sched_setaffinity, sched_getcpu) is unavailable";
        }

        try
        {
            int fd = HostMemory.CreateMemoryFile("sfbuf-probe", (ulong)Pte.PageSize);
            HostMemory.CloseFile(fd);
            return null;
        }
        catch (HostMemoryException ex)
        {
            return $"memfd_create does not work here ({ex.Message})";
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException)
        {
            return $"libc lacks a call the backend needs ({ex.Message})";
        }
    }
}
