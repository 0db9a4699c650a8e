using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>
/// The kernel the subsystems run in: a machine, its sf_buf strategy, and the historical
/// mechanisms the original kernels used (submaps of <c>kernel_map</c> such as <c>exec_map</c>
/// and <c>pager_map</c>), which subsystems rebuild when the strategy is <c>original</c>.
/// </summary>
public sealed class SimKernel : IDisposable
{
    /// <summary>Pages of the <c>exec_map</c> submap (FreeBSD sized it for a few concurrent execs).</summary>
    public const int ExecMapPages = 16;

    /// <summary>Pages of the <c>pager_map</c> submap.</summary>
    public const int PagerMapPages = 32;

    private readonly Lock _submapLock = new();
    private KvaArena? _execMap;
    private KvaArena? _pagerMap;
    private long _pagesIn;

    /// <summary>Boots a kernel on <paramref name="machine"/> with the sf_buf strategy called <paramref name="strategy"/>.</summary>
    public SimKernel(Machine machine, string strategy, int? nsfbufs = null)
    {
        Machine = machine ?? throw new ArgumentNullException(nameof(machine));
        SfBufs = SfBufMapper.Create(strategy, machine, nsfbufs);
    }

    /// <summary>The machine.</summary>
    public Machine Machine { get; }

    /// <summary>The sf_buf interface; subsystems use only this for ephemeral mappings.</summary>
    public SfBufMapper SfBufs { get; }

    /// <summary>The strategy's name.</summary>
    public string Strategy => SfBufs.Name;

    /// <summary>True when subsystems must rebuild the pre-sf_buf mechanisms.</summary>
    public bool IsOriginal => SfBufs is OriginalMapper;

    /// <summary>The original strategy's range primitives; throws for the other strategies.</summary>
    public OriginalMapper Original => SfBufs as OriginalMapper
        ?? throw new InvalidOperationException($"the {Strategy} kernel has no original mechanisms");

    /// <summary>True when the direct map gives every page a KVA (amd64): no sf_buf is needed at all.</summary>
    public bool HasDirectMap => SfBufs is DirectMapMapper;

    /// <summary><c>exec_map</c>: the submap execve took KVA from for the image header and the partial pages of segments (original kernels only); carved lazily.</summary>
    public KvaArena ExecMap => Submap(ref _execMap, "exec_map", ExecMapPages);

    /// <summary><c>pager_map</c>: the submap the vnode pager mapped pages in (original kernels only); carved lazily.</summary>
    public KvaArena PagerMap => Submap(ref _pagerMap, "pager_map", PagerMapPages);

    /// <summary>Pages the vnode pager has read in.</summary>
    public long PagesIn => Interlocked.Read(ref _pagesIn);

    /// <summary>The simulated file system.</summary>
    public SimFileSystem FileSystem { get; } = new();

    /// <summary>The calling kernel thread's CPU.</summary>
    public Cpu Cpu => Machine.CurrentCpu;

    internal void CountPageIn() => Interlocked.Increment(ref _pagesIn);

    /// <summary>Releases the sf_buf strategy.</summary>
    public void Dispose() => SfBufs.Dispose();

    /// <summary>
    /// Carves a submap out of <c>kernel_map</c> on first use (on a kernel thread), waiting for room
    /// if kernel_map is momentarily full; a failure is not remembered, the next use tries again.
    /// </summary>
    private KvaArena Submap(ref KvaArena? submap, string name, int pages)
    {
        if (Volatile.Read(ref submap) is { } existing)
        {
            return existing;
        }

        ulong va = Machine.KernelMap.Alloc(pages, wait: true);
        lock (_submapLock)
        {
            if (submap == null)
            {
                Volatile.Write(ref submap, new KvaArena(Machine, new KvaRegion(name, va, pages)));
                return submap;
            }
        }

        // Another thread carved it meanwhile: give our pages back.
        Machine.KernelMap.Free(va, pages);
        return submap;
    }
}
