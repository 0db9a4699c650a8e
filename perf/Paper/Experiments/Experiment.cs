using Native.PageTable;
using Native.SfBufNative;

namespace Native.Perf.Paper;

/// <summary>
/// One of the paper's experiments: its workload (run on a fresh <see cref="Trial"/>, set up
/// outside the measurement window), its sizes, what the <c>original</c> strategy does in it and
/// which FreeBSD function that follows, and the exact relations its counts must satisfy.
/// </summary>
internal abstract class Experiment
{
    /// <summary>64 KiB: lmbench's pipe write size, md's sequential request.</summary>
    protected const int Chunk = 64 << 10;

    /// <summary>Where user buffers are mapped.</summary>
    protected const ulong UserBase = 0x1000_0000;

    /// <summary>The name used on the command line, in JSON and in tables.</summary>
    public abstract string Name { get; }

    /// <summary>What the workload does, in a line.</summary>
    public abstract string Workload { get; }

    /// <summary>What <c>original</c> does here, naming the FreeBSD function it follows.</summary>
    public abstract string Baseline { get; }

    /// <summary>True when the experiment has a form in which every CPU works that differs from the paper's (<see cref="LoadForm.All"/>).</summary>
    public virtual bool HasAllCpuForm => false;

    /// <summary>True when every sf_buf of the workload is <c>SFB_CPUPRIVATE</c> (sfbuf-i386 then sends no IPI).</summary>
    public virtual bool PrivateMappings => false;

    /// <summary>Runs the workload on <paramref name="t"/> and returns what was measured (one measurement per point).</summary>
    public abstract IReadOnlyList<Measurement> Run(Trial t);

    /// <summary>
    /// The shootdown rounds <c>original</c> must send on SMP for what <paramref name="m"/> did:
    /// by default two per mapping (<c>pmap_qenter</c> and <c>pmap_qremove</c>); -1 when a mix of
    /// mechanisms makes no single rule (each is checked exactly in its own experiment).
    /// </summary>
    public virtual long OriginalRounds(Measurement m) => 2 * m["mappings"];

    /// <summary>The experiment's own exact relations, beyond the ones every experiment has; yields the violations.</summary>
    public virtual IEnumerable<string> Relations(Measurement m) => [];

    /// <summary>The default pool: FreeBSD's nsfbufs for the default machine.</summary>
    protected static int Nsfbufs(Trial t) => t.Machine.Options.EffectiveSfBufWindowPages;

    /// <summary>A relation as a violation message, or nothing when it holds.</summary>
    protected static IEnumerable<string> Expect(bool holds, string what)
    {
        if (!holds)
        {
            yield return what;
        }
    }

    protected static void Check(int errno, string what)
    {
        if (errno != Errno.OK)
        {
            throw new InvalidOperationException($"{what} failed with errno {errno}");
        }
    }

    protected static void Require(bool condition, string what)
    {
        if (!condition)
        {
            throw new InvalidOperationException(what);
        }
    }

    /// <summary>True when the strategy maps per use and the kernel takes its pre-sf_buf paths (<see cref="SfBufStrategyInfo.MapsPerUse"/>): its mappings are counted exactly.</summary>
    protected static bool MapsPerUse(Measurement m) => SfBufMapper.Describe(m.Strategy).MapsPerUse;

    /// <summary>A cache of mappings by page for every user, private and shared (<see cref="SfBufStrategyInfo.IsMappingCache"/>): a miss is one mapping.</summary>
    protected static bool IsMappingCache(Measurement m) => SfBufMapper.Describe(m.Strategy).IsMappingCache;

    /// <summary>True when the strategy caches shared users' mappings by page (<see cref="SfBufStrategyInfo.CachedUsers"/>).</summary>
    protected static bool CachesSharedMappings(Measurement m) => SfBufMapper.Describe(m.Strategy).CachedUsers.HasFlag(SfBufUsers.Shared);
}
