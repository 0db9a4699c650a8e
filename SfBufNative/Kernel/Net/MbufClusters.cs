using System.Runtime.CompilerServices;
using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>
/// The socket layer's cluster zone (<c>zone_clust</c>, <c>nmbclusters</c>): a small fixed set of
/// <see cref="MCLBYTES"/>-byte clusters in permanently mapped kernel memory (kmem), used by plain
/// <c>sosend</c> to copy user data in. No sf_buf is involved: clusters are always mapped.
/// <para>
/// One zone per kernel (<see cref="Of"/>). Its kmem is taken on the first allocation (which is
/// on a kernel thread) and, like a UMA zone, never given back: the machine's teardown frees it.
/// An allocation sleeps (<c>M_WAITOK</c>, interruptibly) while every cluster is in use.
/// </para>
/// </summary>
public sealed class MbufClusters
{
    /// <summary><c>MCLBYTES</c>: bytes per cluster.</summary>
    public const int MCLBYTES = 2048;

    /// <summary>Clusters of the per-kernel zone (a small <c>nmbclusters</c>: 512 KiB).</summary>
    public const int DefaultClusters = 256;

    private static readonly ConditionalWeakTable<SimKernel, MbufClusters> s_zones = new();
    private static readonly MbufExtFree s_extFree = ExtFree;

    private readonly SimKernel _kernel;
    private readonly KMutex _mtx = new("mbuf_cluster");
    private readonly int[] _free;
    private readonly bool[] _inUse;
    private ulong _base;
    private int _freeCount;
    private int _peak;
    private long _waits;

    /// <summary>A zone of <paramref name="clusters"/> clusters for <paramref name="kernel"/>; no memory is taken yet.</summary>
    public MbufClusters(SimKernel kernel, int clusters = DefaultClusters)
    {
        _kernel = kernel ?? throw new ArgumentNullException(nameof(kernel));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(clusters);
        Clusters = clusters;
        _free = new int[clusters];
        _inUse = new bool[clusters];
        for (int i = 0; i < clusters; i++)
        {
            _free[i] = clusters - 1 - i; // lowest index on top
        }

        _freeCount = clusters;
    }

    /// <summary>Clusters in the zone.</summary>
    public int Clusters { get; }

    /// <summary>Clusters allocated now.</summary>
    public int InUse => Clusters - Volatile.Read(ref _freeCount);

    /// <summary>Most clusters ever allocated at once.</summary>
    public int Peak => Volatile.Read(ref _peak);

    /// <summary>Sleeps for a free cluster ("requests for mbufs delayed").</summary>
    public long Waits => Interlocked.Read(ref _waits);

    /// <summary>The kernel's cluster zone, created on first use.</summary>
    public static MbufClusters Of(SimKernel kernel)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        return s_zones.GetValue(kernel, static k => new MbufClusters(k));
    }

    /// <summary>
    /// <c>m_getcl(M_TRYWAIT)</c> without the mbuf: a cluster's kernel address, sleeping while none
    /// is free; 0 when <paramref name="signal"/> interrupts the sleep. Must run on a kernel thread.
    /// </summary>
    public ulong Alloc(CancellationToken signal = default)
    {
        _mtx.Lock();
        try
        {
            if (_base == 0)
            {
                _base = _kernel.Machine.KernelMemory.Alloc((long)Clusters * MCLBYTES);
                if (_base == 0)
                {
                    throw new InvalidOperationException($"kmem is full: no room for {Clusters} mbuf clusters");
                }
            }

            while (_freeCount == 0)
            {
                _waits++;
                if (_kernel.Machine.Sleep(this, _mtx, cancellation: signal) == SleepResult.Interrupted)
                {
                    return 0;
                }
            }

            int i = _free[--_freeCount];
            _inUse[i] = true;
            _peak = Math.Max(_peak, Clusters - _freeCount);
            return _base + ((ulong)i * MCLBYTES);
        }
        finally
        {
            _mtx.Unlock();
        }
    }

    /// <summary>Returns a cluster to the zone and wakes its waiters. Must run on a kernel thread.</summary>
    public void Free(ulong cluster)
    {
        _mtx.Lock();
        try
        {
            ulong offset = cluster - _base;
            if (_base == 0 || offset >= (ulong)Clusters * MCLBYTES || offset % MCLBYTES != 0)
            {
                throw new ArgumentException($"0x{cluster:x} is not a cluster of this zone", nameof(cluster));
            }

            int i = (int)(offset / MCLBYTES);
            if (!_inUse[i])
            {
                throw new InvalidOperationException($"double free of mbuf cluster 0x{cluster:x}");
            }

            _inUse[i] = false;
            _free[_freeCount++] = i;
            _kernel.Machine.Wakeup(this);
        }
        finally
        {
            _mtx.Unlock();
        }
    }

    /// <summary>An mbuf over <paramref name="length"/> bytes of <paramref name="cluster"/>, freed back to this zone.</summary>
    public Mbuf NewMbuf(ulong cluster, int length) =>
        Mbuf.ExtAdd(cluster, MCLBYTES, 0, length, MbufExtType.Cluster, s_extFree, this);

    private static void ExtFree(Mbuf m) => ((MbufClusters)m.ExtArg!).Free(m.ExtBuf);
}
