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
}
