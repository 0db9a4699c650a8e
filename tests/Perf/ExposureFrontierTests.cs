using Native.Perf.Paper;
using Native.Perf.Scale;
using NUnit.Framework;

namespace Native.Tests.Perf;

/// <summary>The throughput-versus-exposure frontier and its chart, from rows made by hand.</summary>
[TestFixture]
public sealed class ExposureFrontierTests
{
    [Test]
    public void APointIsOnTheFrontierUnlessAnotherHasAtLeastItsThroughputWithAtMostItsExposure()
    {
        ExposureFrontier.Point[] points =
        [
            new("a", 0, 100),
            new("b", 0, 90),      // a: same exposure, more throughput
            new("c", 5, 200),
            new("d", 10, 150),    // c: less exposure, more throughput
            new("e", 20, 300),
            new("f", 20, 300),    // equal to e: neither dominates the other
        ];
        Assert.That(ExposureFrontier.Of(points), Is.EqualTo(new[] { "a", "c", "e", "f" }));
    }

    [Test]
    public void TheDirectMapIsTheReferenceNotACandidate()
    {
        ExposureFrontier.Point[] points = [new("sfbuf-amd64", 0, 1_000), new("epoch-cache", 0, 900), new("linux-mermap", 5, 800)];
        Assert.That(ExposureFrontier.IsReference("sfbuf-amd64"), Is.True);
        Assert.That(ExposureFrontier.Of(points), Is.EqualTo(new[] { "epoch-cache" }), "it would dominate everything while keeping every page mapped");
    }

    [Test]
    public void TheTradeOffIsShownAt64CpusWhenTheRowsReachItElseAtTheirLargestCount()
    {
        Assert.That(ExposureFrontier.CpusFor([1, 16, 64, 256]), Is.EqualTo(64));
        Assert.That(ExposureFrontier.CpusFor([1, 2, 4]), Is.EqualTo(4));
    }

    [Test]
    public void TheChartHasOnePointPerStrategyThatMeasuredExposureAndMarksTheFrontier()
    {
        List<PaperRow> rows =
        [
            Row("sfbuf-i386", 64, 0, 1_000),
            Row("netbsd-emap", 64, 50, 500),
            Row("linux-mermap", 64, 5, 2_000),
            Row("linux-mermap", 1, 3, 100),
            Row("original", 64, null, 10),
        ];
        var chart = ScaleCommand.TradeOff(rows);
        Assert.That(chart, Is.Not.Null);
        Assert.That(chart!.FileName, Is.EqualTo("scale-build-exposure.png"));
        Assert.That(chart.Title, Does.Contain("64 simulated CPUs").And.Contain("virtual time"));
        Assert.That(chart.Points, Has.Count.EqualTo(3), "the 1-CPU row and the row without a checked trial are left out");
        var onFrontier = chart.Points.Where(p => p.OnFrontier).Select(p => chart.Series[p.Series].Name);
        Assert.That(onFrontier, Is.EquivalentTo(new[] { "sfbuf-i386", "linux-mermap" }), "emap has more exposure and less throughput than mermap");
        Assert.That(chart.XLabel, Does.StartWith("exposed CPU·µs per op"));

        Assert.That(ScaleCommand.TradeOff([Row("original", 64, null, 10)]), Is.Null, "no exposure measured: no chart");
    }

    private static PaperRow Row(string strategy, int cpus, double? exposedUs, double opsPerSecond) => new()
    {
        Experiment = "build",
        Strategy = strategy,
        Cpus = cpus,
        CostProfile = "default",
        Params = new Dictionary<string, object>(),
        Seconds = 1,
        Bytes = 0,
        Ops = 100,
        MbPerS = 0,
        OpsPerS = opsPerSecond,
        Counters = new Dictionary<string, long>(),
        TimeMode = PaperRow.VirtualTime,
        ExposedCpuUsPerUnit = exposedUs,
    };
}
