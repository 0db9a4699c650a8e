using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;

namespace Native.Tests;

/// <summary>
/// Base of the fixtures that run once per sf_buf strategy on 1 and 2 CPUs:
/// <c>[TestFixtureSource(typeof(StrategyFixture), nameof(StrategyFixture.StrategiesAndCpus))]</c>.
/// </summary>
public abstract class StrategyFixture(string strategy, int cpus)
{
    /// <summary>The strategy under test.</summary>
    protected string Strategy { get; } = strategy;

    /// <summary>The machine's CPU count.</summary>
    protected int Cpus { get; } = cpus;

    /// <summary>Every strategy on 1 and 2 CPUs, named like <c>(sfbuf-i386,2cpu)</c>.</summary>
    public static IEnumerable<TestFixtureData> StrategiesAndCpus() =>
        from s in SfBufMapper.StrategyNames
        from c in new[] { 1, 2 }
        select new TestFixtureData(s, c).SetArgDisplayNames(s, $"{c}cpu");

    /// <summary>What the registry declares of the strategy under test.</summary>
    protected SfBufStrategyInfo Info => SfBufMapper.Describe(Strategy);

    /// <summary>
    /// The counts a private sf_buf user (md, ptrace, uiomove_fromphys) must show for
    /// <paramref name="mappedPages"/> page mappings, <paramref name="writtenPages"/> of them made
    /// to write the page, from what the registry declares of the strategy: every strategy records
    /// every kernel PTE write as a page of a mapping; one that needs the direct map writes and
    /// clears no PTE; a cache of mappings writes at most one PTE per mapping; and the shootdowns
    /// its private users cost (<see cref="SfBufStrategyInfo.PrivateShootdowns"/>): none (sfbuf-i386,
    /// the direct map, the per-CPU slots, lwbuf); on SMP one per written page's kernel mapping and
    /// none for readers (netbsd-emap); none while <paramref name="sfbufs"/>' pool has recycled
    /// nothing (kmap's wrap flush, epoch-cache's fallback); or a broadcast at qenter and at qremove
    /// of every page (original, which also writes exactly one PTE per page).
    /// </summary>
    protected void AssertPrivateUserCounts(CounterSnapshot d, long mappedPages, long writtenPages, SfBufMapper sfbufs)
    {
        ArgumentNullException.ThrowIfNull(d);
        ArgumentNullException.ThrowIfNull(sfbufs);
        Assert.That(mappedPages, Is.GreaterThan(0));
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(d[Counter.MappedPages]), "every kernel PTE write is a recorded mapping page");
        var info = Info;
        if (info.NeedsDirectMap)
        {
            Assert.That(d[Counter.KernelPteWrites], Is.Zero, "the direct map writes no PTE");
            Assert.That(d[Counter.KernelPteClears], Is.Zero);
        }

        if (info.IsMappingCache)
        {
            Assert.That(d[Counter.KernelPteWrites], Is.LessThanOrEqualTo(mappedPages), "a cache of mappings writes at most one PTE per mapping");
        }

        switch (info.PrivateShootdowns)
        {
            case SfBufShootdowns.None:
                Assert.That(d[Counter.IpisSent], Is.Zero, "private mappings send no IPI");
                Assert.That(d[Counter.ShootdownRounds], Is.Zero, "private mappings send no shootdown");
                break;
            case SfBufShootdowns.PerWrittenPage:
                // Every page mapped for writing was written, so its PTE was used (PG_A):
                // pmap_kremove + pmap_update shoot it down on the other CPU.
                Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(Cpus > 1 ? writtenPages : 0), "a shootdown per written page's kernel mapping, none for readers");
                break;
            case SfBufShootdowns.WhenRecycling:
                if (sfbufs.Stats().Recycles == 0)
                {
                    Assert.That(d[Counter.IpisSent], Is.Zero, "nothing recycled: no batched invalidation, no IPI");
                    Assert.That(d[Counter.ShootdownRounds], Is.Zero);
                }

                break;
            case SfBufShootdowns.PerUse:
                Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(Cpus > 1 ? 2 * mappedPages : 0));
                Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(mappedPages));
                break;
            case SfBufShootdowns.PerUserPage:
                // XPFO: at most one per user page's last unmap (a restore is one PTE write) plus the
                // allocations to user space; none on a uniprocessor.
                if (Cpus == 1)
                {
                    Assert.That(d[Counter.ShootdownRounds], Is.Zero);
                }

                break;
        }
    }
}
