namespace Native.PageTable;

/// <summary>
/// A page fault: a walk found no valid PTE (or a write met a read-only one). In kernel code
/// this is a kernel bug (FreeBSD would panic); <c>copyin</c>/<c>copyout</c> turn user faults into EFAULT.
/// </summary>
public sealed class PageFaultException : Exception
{
    /// <summary>Creates the fault for <paramref name="cpu"/> touching <paramref name="address"/>.</summary>
    public PageFaultException(int cpu, ulong address, bool write, string reason)
        : base($"page fault on cpu {cpu} at 0x{address:x} ({(write ? "write" : "read")}): {reason}")
    {
        Cpu = cpu;
        Address = address;
        IsWrite = write;
    }

    /// <summary>The CPU that faulted.</summary>
    public int Cpu { get; }

    /// <summary>The virtual address that faulted.</summary>
    public ulong Address { get; }

    /// <summary>True for a write access.</summary>
    public bool IsWrite { get; }
}

/// <summary>
/// The stale-translation oracle fired: a TLB entry was used whose frame is not the frame the
/// page table now maps. On real hardware this is silent corruption caused by a missed invalidation.
/// </summary>
public sealed class StaleTranslationException : Exception
{
    /// <summary>Creates the report; <paramref name="currentFrame"/> is -1 when the PTE is now invalid.</summary>
    public StaleTranslationException(int cpu, ulong address, uint cachedFrame, long currentFrame)
        : base($"stale translation on cpu {cpu} at 0x{address:x}: the TLB maps frame 0x{cachedFrame:x}, the page table "
            + (currentFrame < 0 ? "no longer maps the page" : $"maps frame 0x{currentFrame:x}"))
    {
        Cpu = cpu;
        Address = address;
        CachedFrame = cachedFrame;
        CurrentFrame = currentFrame;
    }

    /// <summary>The CPU whose TLB held the stale entry.</summary>
    public int Cpu { get; }

    /// <summary>The virtual address accessed.</summary>
    public ulong Address { get; }

    /// <summary>The frame in the TLB entry.</summary>
    public uint CachedFrame { get; }

    /// <summary>The frame the PTE maps now, or -1 when the PTE is invalid.</summary>
    public long CurrentFrame { get; }
}

/// <summary>A shootdown waited longer than the machine's watchdog for an acknowledgement.</summary>
public sealed class ShootdownTimeoutException : Exception
{
    /// <summary>Creates the report naming the initiator and the CPUs it waited for.</summary>
    public ShootdownTimeoutException(int initiator, CpuSet targets, TimeSpan waited)
        : base($"cpu {initiator} waited {waited.TotalSeconds:0.#} s for shootdown acknowledgements from CPUs {targets}: "
            + "a kernel thread on a target CPU is blocked outside the kernel's wait primitives")
    {
        Initiator = initiator;
    }

    /// <summary>The CPU that sent the shootdown.</summary>
    public int Initiator { get; }
}

/// <summary>errno values the simulated kernel returns, FreeBSD's numbers.</summary>
public static class Errno
{
    /// <summary>Success.</summary>
    public const int OK = 0;

    /// <summary>No such file or directory.</summary>
    public const int ENOENT = 2;

    /// <summary>Interrupted system call.</summary>
    public const int EINTR = 4;

    /// <summary>Exec format error.</summary>
    public const int ENOEXEC = 8;

    /// <summary>Cannot allocate memory.</summary>
    public const int ENOMEM = 12;

    /// <summary>Bad address.</summary>
    public const int EFAULT = 14;

    /// <summary>Invalid argument.</summary>
    public const int EINVAL = 22;

    /// <summary>Broken pipe.</summary>
    public const int EPIPE = 32;

    /// <summary>Resource temporarily unavailable (also a timed-out sleep).</summary>
    public const int EWOULDBLOCK = 35;
}

/// <summary>
/// The latent-staleness oracle fired: this CPU filled a translation that was never invalidated
/// and whose frame the page table no longer maps. The TLB may have evicted the entry (so the
/// access itself was correct by luck); a bigger TLB would have used it.
/// </summary>
public sealed class LatentStaleTranslationException : Exception
{
    /// <summary>Creates the report; <paramref name="currentFrame"/> is -1 when the PTE is now invalid.</summary>
    public LatentStaleTranslationException(int cpu, ulong address, uint cachedFrame, long currentFrame)
        : base($"latent stale translation on cpu {cpu} at 0x{address:x}: the cpu filled frame 0x{cachedFrame:x} and never invalidated it, the page table "
            + (currentFrame < 0 ? "no longer maps the page" : $"maps frame 0x{currentFrame:x}"))
    {
        Cpu = cpu;
        Address = address;
        CachedFrame = cachedFrame;
        CurrentFrame = currentFrame;
    }

    /// <summary>The CPU that holds the never-invalidated translation.</summary>
    public int Cpu { get; }

    /// <summary>The virtual address accessed.</summary>
    public ulong Address { get; }

    /// <summary>The frame the CPU filled.</summary>
    public uint CachedFrame { get; }

    /// <summary>The frame the PTE maps now, or -1 when the PTE is invalid.</summary>
    public long CurrentFrame { get; }
}

/// <summary>A live <c>SFB_CPUPRIVATE</c> mapping was translated on a CPU other than its own (checked mode).</summary>
public sealed class PrivateMappingViolationException : Exception
{
    /// <summary>Creates the report naming both CPUs.</summary>
    public PrivateMappingViolationException(ulong address, int ownerCpu, int accessingCpu)
        : base($"cpu {accessingCpu} translated 0x{address:x}, a CPU-private mapping of cpu {ownerCpu}: only cpu {ownerCpu} may use it while it is live")
    {
        Address = address;
        OwnerCpu = ownerCpu;
        AccessingCpu = accessingCpu;
    }

    /// <summary>The address.</summary>
    public ulong Address { get; }

    /// <summary>The CPU the private mapping belongs to.</summary>
    public int OwnerCpu { get; }

    /// <summary>The CPU that translated it.</summary>
    public int AccessingCpu { get; }
}

/// <summary>A shootdown round completed while a target still cached a stale translation (controlled mode checks this).</summary>
public sealed class IncompleteShootdownException(int initiator, int target, ulong address)
    : Exception($"cpu {initiator}'s shootdown round completed, but cpu {target} still caches a stale translation of 0x{address:x} (acknowledged before invalidating?)");

/// <summary>The machine failed (a shootdown watchdog fired) and refuses further operations.</summary>
public sealed class MachineFailedException(string message, Exception cause) : Exception(message, cause);

/// <summary>Thrown in a kernel thread whose machine is being disposed: its waits end and its operations refuse.</summary>
public sealed class MachineStoppedException(string message) : Exception(message);

/// <summary>The host refused native memory the machine needed (boot, a mapper, a page table): nothing was half built.</summary>
public sealed class NativeAllocationException(nuint bytes)
    : Exception($"a native allocation of {bytes} bytes was refused (out of native memory); whatever was being built was released");
