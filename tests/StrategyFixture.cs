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

    /// <summary>
    /// The counts a private sf_buf user (md, ptrace, uiomove_fromphys) must show for
    /// <paramref name="mappedPages"/> page mappings, <paramref name="writtenPages"/> of them made
    /// to write the page: <c>original</c> broadcasts at qenter and at qremove of every page;
    /// <c>sfbuf-i386</c> sends no IPI; the direct map writes no PTE; <c>netbsd-emap</c> shoots
    /// down, on SMP, only the writers' kernel mappings, once each at removal (its readers' emap
    /// mappings never); the other peers but <c>linux-kmap</c> (whose pool may wrap and flush)
    /// send no shootdown; and every strategy records every kernel PTE write as a page of a mapping.
    /// </summary>
    protected void AssertPrivateUserCounts(CounterSnapshot d, long mappedPages, long writtenPages)
    {
        ArgumentNullException.ThrowIfNull(d);
        Assert.That(mappedPages, Is.GreaterThan(0));
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(d[Counter.MappedPages]), "every kernel PTE write is a recorded mapping page");
        switch (Strategy)
        {
            case SfBufMapper.Original:
                Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(Cpus > 1 ? 2 * mappedPages : 0));
                Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(mappedPages));
                break;
            case SfBufMapper.I386:
                Assert.That(d[Counter.IpisSent], Is.Zero, "private mappings send no IPI");
                Assert.That(d[Counter.ShootdownRounds], Is.Zero);
                break;
            case SfBufMapper.EpochCache:
                Assert.That(d[Counter.IpisSent], Is.Zero, "no hint needed: recycled slots wait out an epoch instead");
                Assert.That(d[Counter.ShootdownRounds], Is.Zero);
                Assert.That(d[Counter.KernelPteWrites], Is.LessThanOrEqualTo(mappedPages));
                break;
            case SfBufMapper.Amd64:
                Assert.That(d[Counter.KernelPteWrites], Is.Zero, "the direct map writes no PTE");
                Assert.That(d[Counter.KernelPteClears], Is.Zero);
                Assert.That(d[Counter.ShootdownRounds], Is.Zero);
                break;
            case SfBufMapper.LinuxKmap:
                break;
            case SfBufMapper.NetBsdEmap:
                // Every page mapped for writing was written, so its PTE was used (PG_A):
                // pmap_kremove + pmap_update shoot it down on the other CPU.
                Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(Cpus > 1 ? writtenPages : 0), "a shootdown per written page's kernel mapping, none for readers");
                break;
            default:
                if (SfBufMapper.Describe(Strategy).IsPeer)
                {
                    Assert.That(d[Counter.ShootdownRounds], Is.Zero, "the peer's private users send no shootdown");
                }

                break;
        }
    }
}
