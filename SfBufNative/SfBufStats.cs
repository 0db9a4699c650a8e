using System.Text;

namespace Native.SfBufNative;

/// <summary>
/// sf_buf statistics under FreeBSD's names. Pool sizes are 0 where a strategy has no pool
/// (the direct map); counts a strategy cannot have (hits on the direct map) are 0.
/// </summary>
public sealed record SfBufStats
{
    /// <summary>The strategy's name.</summary>
    public required string Strategy { get; init; }

    /// <summary><c>kern.ipc.nsfbufs</c>: the pool size (0 without a pool).</summary>
    public int Nsfbufs { get; init; }

    /// <summary><c>kern.ipc.nsfbufsused</c>: sf_bufs with a reference (mappings in use).</summary>
    public int NsfbufsUsed { get; init; }

    /// <summary><c>kern.ipc.nsfbufspeak</c>: the high-water mark of <see cref="NsfbufsUsed"/>.</summary>
    public int NsfbufsPeak { get; init; }

    /// <summary><c>sfstat.sf_allocwait</c>: sleeps waiting for a free sf_buf ("requests for sfbufs delayed").</summary>
    public long AllocWait { get; init; }

    /// <summary><c>sfstat.sf_allocfail</c>: callers (sendfile) that got no sf_buf ("requests for sfbufs denied").</summary>
    public long AllocFail { get; init; }

    /// <summary>Allocations that found the page already mapped.</summary>
    public long Hits { get; init; }

    /// <summary>Allocations that had to create a mapping.</summary>
    public long Misses { get; init; }

    /// <summary>Misses that replaced another page's cached mapping (an LRU eviction).</summary>
    public long Recycles { get; init; }

    /// <summary>Alloc calls that returned no sf_buf (NoWait with the pool exhausted, or a cancelled Catch).</summary>
    public long Failures { get; init; }

    /// <summary>
    /// Counts particular to a strategy's algorithm, by name (<c>pkmap.global_flushes</c>,
    /// <c>kmap_local.saves</c>, <c>lwbuf.set_global_syncs</c>, <c>emap.consume_flushes</c>, ...);
    /// empty for the paper's strategies.
    /// </summary>
    public IReadOnlyDictionary<string, long> Details { get; init; } = s_noDetails;

    private static readonly IReadOnlyDictionary<string, long> s_noDetails = new Dictionary<string, long>(StringComparer.Ordinal);

    /// <summary>The values by sysctl name.</summary>
    public IReadOnlyDictionary<string, long> Sysctl() => new Dictionary<string, long>(StringComparer.Ordinal)
    {
        ["kern.ipc.nsfbufs"] = Nsfbufs,
        ["kern.ipc.nsfbufsused"] = NsfbufsUsed,
        ["kern.ipc.nsfbufspeak"] = NsfbufsPeak,
        ["kern.ipc.sfstat.sf_allocwait"] = AllocWait,
        ["kern.ipc.sfstat.sf_allocfail"] = AllocFail,
    };

    /// <summary>The sf_buf lines of <c>netstat -m</c>.</summary>
    public string NetstatM()
    {
        var text = new StringBuilder();
        text.Append(NsfbufsUsed).Append('/').Append(NsfbufsPeak).Append('/').Append(Nsfbufs).AppendLine(" sfbufs in use (current/peak/max)");
        text.Append(AllocFail).AppendLine(" requests for sfbufs denied");
        text.Append(AllocWait).AppendLine(" requests for sfbufs delayed");
        return text.ToString();
    }
}
