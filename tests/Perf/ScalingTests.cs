using Native.Perf.Commands;
using NUnit.Framework;

namespace Native.Tests.Perf;

/// <summary>
/// <c>perf scaling</c>: every pair runs a one-thread batch and a two-thread batch, after one
/// warm-up pair, and the ratios are paired. Counts only; the times belong to the command's output.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class ScalingTests
{
    [TestCase("epoch-cache", "hit")]
    [TestCase("sfbuf-i386", "miss")]
    public void EveryPairRunsOneBatchOnOneCpuAndOneOnEachOfTwo(string strategy, string path)
    {
        const int pairs = 3, ops = 2_000;
        var r = ScalingCommand.Measure(strategy, path, pairs, ops);

        // (1 warm-up + 3) pairs x (1 one-thread batch + 2 two-thread batches) x ops.
        Assert.That(r.Operations, Is.EqualTo((1 + pairs) * 3L * ops));
        Assert.That(r.OneThreadNs, Has.Count.EqualTo(pairs).And.All.GreaterThan(0));
        Assert.That(r.TwoThreadNs, Has.Count.EqualTo(pairs).And.All.GreaterThan(0));
        Assert.That(r.Aggregate.Count, Is.EqualTo(pairs));
        Assert.That(r.Aggregate.CiLow, Is.Not.Null, "a paired interval");
        for (int i = 0; i < pairs; i++)
        {
            Assert.That(r.Aggregate.Samples[i], Is.EqualTo(2 * r.OneThreadNs[i] / r.TwoThreadNs[i]).Within(1e-9), "aggregate = 2 x one-thread time / two-thread time per thread");
        }
    }

    [Test]
    public void AnUnknownPathIsRefused() =>
        Assert.That(() => ScalingCommand.Measure("epoch-cache", "warm", 2, 10), Throws.ArgumentException.With.Message.Contains("hit or miss"));
}
