using Native.Interop;

namespace Native.PageTable;

/// <summary>
/// The host backend's machine-dependent layer, what FreeBSD's <c>pmap</c> is to
/// <c>vm_machdep.c</c>: the same three services the simulation gives the strategies (PTE
/// update, local invalidation, shootdown), carried out by the host's MMU.
/// <list type="bullet">
/// <item>Physical memory is a <c>memfd</c>; the direct map (and every physical access) is one
/// shared mapping of it, so frame <c>f</c> lives at <see cref="DirectMap"/> + f × 4 KiB.</item>
/// <item>The kernel's page-mapped regions (sf_buf window, <c>kernel_map</c>, kmem, guard pages)
/// are one <c>PROT_NONE</c> reservation: kernel address <c>KERNBASE + x</c> is host address
/// <c>kernel base + x</c>. A PTE write maps the frame's page of the <c>memfd</c> there with
/// <c>mmap(MAP_FIXED)</c>; a clear re-reserves it <c>PROT_NONE</c>, so the range never has a hole.</item>
/// <item>Invalidation, local and remote, happens inside those calls: the host kernel flushes
/// every CPU that may cache the old translation before <c>mmap</c> returns.</item>
/// </list>
/// Calls come from <see cref="KernelPmap"/> (PTE updates), <see cref="Cpu"/> (translation,
/// shootdowns) and <see cref="PhysicalMemory"/> (frames); the strategies never see it.
/// </summary>
internal sealed unsafe partial class HostMmu : IDisposable
{
    private const string MemoryFileName = "sfbuf-physmem";

    private readonly int _fd;
    private readonly ulong _physicalBytes;
    private byte* _kernel;
    private nuint _kernelBytes;
    private KvaRegion _kmem;
    private long _maps;
    private long _unmaps;
    private long _unmappedPages;
    private long _kmemMaps;
    private long _kmemUnmaps;
    private int _disposed;

    private HostMmu(ulong physicalBytes)
    {
        _physicalBytes = physicalBytes;
        _fd = HostMemory.CreateMemoryFile(MemoryFileName, physicalBytes);
        try
        {
            DirectMap = HostMemory.MapFile(_fd, 0, (nuint)physicalBytes);
        }
        catch
        {
            HostMemory.CloseFile(_fd);
            throw;
        }
    }

    /// <summary>Host address of frame 0: physical memory as the process sees it.</summary>
    public byte* DirectMap { get; }

    /// <summary>The <c>tlb:tlb_flush</c> counts of this machine's kernel threads.</summary>
    public HostFlushCounters Flushes { get; } = new();

    /// <summary>
    /// Checks that <paramref name="options"/> can run on the host MMU and creates physical memory;
    /// <see cref="ReserveKernel"/> follows once the layout is known.
    /// </summary>
    public static HostMmu Create(MachineOptions options)
    {
        HostBackend.ThrowIfUnavailable();
        ulong bytes = options.PhysicalMemoryBytes;
        if (bytes < 16 * (ulong)Pte.PageSize || bytes % (ulong)Pte.PageSize != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), bytes, "physical memory must be a whole number of pages, at least 16");
        }

        int cores = HostBackend.HostCores;
        if (options.Cpus > cores)
        {
            throw new ArgumentException(
                $"the host backend runs one CPU per host core and this process may use {cores}; {options.Cpus} CPUs cannot be expressed", nameof(options));
        }

        if (options.Controlled != null)
        {
            throw new ArgumentException(
                "the host backend runs real concurrency: controlled scheduling cannot order the host kernel's flushes, and its checks read a shadow TLB the host does not have",
                nameof(options));
        }

        if (!options.PinThreads)
        {
            throw new ArgumentException("the host backend pins kernel threads to host cores: PinThreads must stay on", nameof(options));
        }

        var c = options.Cost;
        if (c.LocalInvalidateNs != 0 || c.FullFlushNs != 0 || c.TlbMissWalkNs != 0 || c.PteWriteNs != 0
            || c.IpiSendNs != 0 || c.IpiDeliveryNs != 0 || c.IpiHandlerNs != 0)
        {
            throw new ArgumentException(
                $"the host backend pays the host's real costs; the '{c.Name}' cost profile would charge them twice (use the zero profile)", nameof(options));
        }

        return new HostMmu(bytes);
    }

    /// <summary>Reserves the kernel's page-mapped regions, all inaccessible until mapped.</summary>
    public void ReserveKernel(VmLayout layout)
    {
        _kernelBytes = (nuint)layout.KernelPages << Pte.PageShift;
        _kernel = HostMemory.Reserve(_kernelBytes);
        _kmem = layout.KernelMemory;
    }

    /// <summary>The host address of kernel virtual address <paramref name="va"/> (in the kernel regions).</summary>
    public byte* KernelAddress(ulong va) => _kernel + (va - VmLayout.KERNBASE);

    /// <summary>Maps <paramref name="frame"/> at kernel page <paramref name="va"/>, replacing what was there.</summary>
    public void Enter(ulong va, uint frame)
    {
        HostMemory.MapFileAt(KernelAddress(va), _fd, (ulong)frame << Pte.PageShift, (nuint)Pte.PageSize);
        Interlocked.Increment(ref _kmem.Contains(va) ? ref _kmemMaps : ref _maps);
    }

    /// <summary>Unmaps <paramref name="pages"/> kernel pages from <paramref name="va"/> in one call (one flush for the range).</summary>
    public void Remove(ulong va, int pages)
    {
        HostMemory.ReserveAt(KernelAddress(va), (nuint)pages << Pte.PageShift);
        if (_kmem.Contains(va))
        {
            Interlocked.Increment(ref _kmemUnmaps);
            return;
        }

        Interlocked.Increment(ref _unmaps);
        Interlocked.Add(ref _unmappedPages, pages);
    }

    /// <summary>What the backend has done so far.</summary>
    public HostMmuCounts Counts()
    {
        var (sent, received) = Flushes.Read();
        return new HostMmuCounts(
            Volatile.Read(ref _maps),
            Volatile.Read(ref _unmaps),
            Volatile.Read(ref _unmappedPages),
            Volatile.Read(ref _kmemMaps),
            Volatile.Read(ref _kmemUnmaps),
            sent,
            received,
            Flushes.Unavailable);
    }

    /// <summary>Unmaps everything and closes the memfd; idempotent.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        Flushes.Dispose();
        if (_kernel != null)
        {
            HostMemory.Unmap(_kernel, _kernelBytes);
        }

        HostMemory.Unmap(DirectMap, (nuint)_physicalBytes);
        HostMemory.CloseFile(_fd);
    }
}

/// <summary>
/// What a host-backed machine has done to the host MMU, and the TLB flushes the host kernel
/// performed for its threads. Permanently mapped kernel memory (kmem) is counted apart, as the
/// machine counts its PTE writes apart: the other counts are the ephemeral mappings'.
/// </summary>
/// <param name="Maps"><c>mmap(MAP_FIXED)</c> calls that put a frame at a kernel page outside kmem (PTE writes).</param>
/// <param name="Unmaps">Re-reservations of kernel pages outside kmem (PTE clears; a <c>pmap_qremove</c> range is one call).</param>
/// <param name="UnmappedPages">Pages those re-reservations covered.</param>
/// <param name="KmemMaps">The same calls for kmem pages.</param>
/// <param name="KmemUnmaps">Re-reservations of kmem ranges.</param>
/// <param name="RemoteFlushesSent">Remote TLB flushes the host kernel started inside our threads' calls (<c>tlb:tlb_flush</c> reason "remote IPI send"), or -1 when uncounted.</param>
/// <param name="RemoteFlushesReceived">Flush IPIs our threads' CPUs handled while running them (reason "remote shootdown"), or -1 when uncounted.</param>
/// <param name="FlushCountUnavailable">Why the flushes are uncounted, or null.</param>
public sealed record HostMmuCounts(
    long Maps,
    long Unmaps,
    long UnmappedPages,
    long KmemMaps,
    long KmemUnmaps,
    long RemoteFlushesSent,
    long RemoteFlushesReceived,
    string? FlushCountUnavailable)
{
    /// <summary>System calls that changed the kernel's host mappings: maps plus unmaps.</summary>
    public long Remaps => Maps + Unmaps;

    /// <summary>The difference of two snapshots (an unavailable count stays -1).</summary>
    public static HostMmuCounts operator -(HostMmuCounts after, HostMmuCounts before)
    {
        ArgumentNullException.ThrowIfNull(after);
        ArgumentNullException.ThrowIfNull(before);
        return new HostMmuCounts(
            after.Maps - before.Maps,
            after.Unmaps - before.Unmaps,
            after.UnmappedPages - before.UnmappedPages,
            after.KmemMaps - before.KmemMaps,
            after.KmemUnmaps - before.KmemUnmaps,
            after.RemoteFlushesSent < 0 || before.RemoteFlushesSent < 0 ? -1 : after.RemoteFlushesSent - before.RemoteFlushesSent,
            after.RemoteFlushesReceived < 0 || before.RemoteFlushesReceived < 0 ? -1 : after.RemoteFlushesReceived - before.RemoteFlushesReceived,
            after.FlushCountUnavailable ?? before.FlushCountUnavailable);
    }

    /// <summary>The difference of two snapshots.</summary>
    public static HostMmuCounts Subtract(HostMmuCounts after, HostMmuCounts before) => after - before;
}
