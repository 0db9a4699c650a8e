namespace Native.PageTable;

/// <summary>What carries out the machine's memory management: the simulation, or the host's own MMU.</summary>
public enum MachineBackend
{
    /// <summary>
    /// The simulated machine: software TLBs, PTE words walked in software, IPI mailboxes. The
    /// only backend with the stale-translation oracle, CPU-private invalidation and masked shootdowns.
    /// </summary>
    Simulated,

    /// <summary>
    /// The host's MMU (Linux x64): physical memory is a <c>memfd</c>, the direct map one
    /// <c>mmap</c> of it, kernel pages are remapped with <c>mmap(MAP_FIXED)</c>, and the host
    /// kernel performs the TLB shootdowns. See <see cref="HostBackend"/> for what degrades.
    /// </summary>
    Host,
}
