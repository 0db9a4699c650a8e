using Native.Perf.Paper;
using Native.Perf.Stats;
using NUnit.Framework;

namespace Native.Tests.Perf;

/// <summary>
/// The statistics <c>perf paper</c> reports, on data whose answers are worked out by hand here:
/// the median, the CI (Harrell-Davis median with Maritz-Jarrett standard error and Student t, on
/// the logarithms of positive samples), the CV, paired ratios and whether their interval holds 1.0, and the
/// interleaving of repeated trials.
/// </summary>
[TestFixture]
public sealed class StatisticsTests
{
    [Test]
    public void MedianCiAndCvOfThreeSamplesAreTheHandComputedOnes()
    {
        // Harrell-Davis weights for n = 3 are I_x(2,2) differences: 7/27, 13/27, 7/27. On the logs
        // of {1, 2, 4}, i.e. {0, L, 2L} with L = ln 2: the estimate is L (symmetric), the second
        // moment C2 = (13 L^2 + 7 (2L)^2) / 27 = 41 L^2 / 27, so SE = L sqrt(41/27 - 1) = L sqrt(14/27);
        // t(0.975, 2 df) = 4.302653.
        var s = SampleSummary.Of([1, 2, 4]);
        double l = Math.Log(2);
        double margin = 4.302652729749464 * l * Math.Sqrt(14.0 / 27.0);
        Assert.That(s.Median, Is.EqualTo(2));
        Assert.That(s.CiLow, Is.EqualTo(Math.Exp(l - margin)).Within(1e-6));
        Assert.That(s.CiHigh, Is.EqualTo(Math.Exp(l + margin)).Within(1e-6));

        // Mean 7/3, sample variance ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3.
        Assert.That(s.Cv, Is.EqualTo(Math.Sqrt(7.0 / 3.0) / (7.0 / 3.0)).Within(1e-12));
        Assert.That(s.Samples, Is.EqualTo(new double[] { 1, 2, 4 }));
    }

    [Test]
    public void SamplesThatAreNotAllPositiveGetTheIntervalOnTheValuesThemselves()
    {
        // {-1, 0, 1}: estimate 0, C2 = 14/27, SE = sqrt(14/27).
        var s = SampleSummary.Of([-1, 0, 1]);
        double margin = 4.302652729749464 * Math.Sqrt(14.0 / 27.0);
        Assert.That(s.Median, Is.Zero);
        Assert.That(s.CiLow, Is.EqualTo(-margin).Within(1e-6));
        Assert.That(s.CiHigh, Is.EqualTo(margin).Within(1e-6));
    }

    [Test]
    public void IdenticalSamplesHaveAPointIntervalAndNoVariation()
    {
        var s = SampleSummary.Of([5, 5, 5, 5, 5]);
        Assert.That(s.Median, Is.EqualTo(5));
        Assert.That(s.CiLow, Is.EqualTo(5).Within(1e-9));
        Assert.That(s.CiHigh, Is.EqualTo(5).Within(1e-9));
        Assert.That(s.Cv, Is.Zero);
    }

    [Test]
    public void OneSampleHasNoInterval()
    {
        var s = SampleSummary.Of([42]);
        Assert.That(s.Median, Is.EqualTo(42));
        Assert.That(s.CiLow, Is.Null);
        Assert.That(s.CiHigh, Is.Null);
        Assert.That(s.ExcludesOne, Is.False, "no interval, no claim");
    }

    [Test]
    public void TheMedianOfAnEvenCountIsTheMeanOfTheMiddleTwo() =>
        Assert.That(SampleSummary.Of([4, 1, 3, 2]).Median, Is.EqualTo(2.5));

    [Test]
    public void PairedRatiosAreTakenRoundByRound()
    {
        // Each round twice as fast as its own baseline, though the rounds drift by 3x: exactly 2.
        var steady = SampleSummary.OfRatios([200, 400, 600], [100, 200, 300]);
        Assert.That(steady.Samples, Is.EqualTo(new double[] { 2, 2, 2 }));
        Assert.That(steady.Median, Is.EqualTo(2));
        Assert.That(steady.ExcludesOne, Is.True);

        // Ratios 0.9, 1.1, 1.0: the CI includes 1.0, so no speedup is shown.
        var noise = SampleSummary.OfRatios([90, 110, 100], [100, 100, 100]);
        Assert.That(noise.Median, Is.EqualTo(1.0).Within(1e-12));
        Assert.That(noise.CiContains(1.0), Is.True);
        Assert.That(noise.ExcludesOne, Is.False);
    }

    [Test]
    public void RatiosRefuseUnpairedOrNonPositiveBaselines()
    {
        Assert.Throws<ArgumentException>(() => SampleSummary.OfRatios([1, 2], [1]));
        Assert.Throws<ArgumentException>(() => SampleSummary.OfRatios([1], [0]));
        Assert.Throws<ArgumentException>(() => SampleSummary.Of([]));
        Assert.Throws<ArgumentException>(() => SampleSummary.Of([double.NaN]));
    }

    [Test]
    public void RoundsRotateTheMembersOfEachGroup()
    {
        string[] cells = ["a/x", "a/y", "a/z", "b/x", "b/y", "b/z"];
        string Group(string c) => c[..1];
        Assert.That(RepeatedTrials.RoundOrder(cells, Group, 0), Is.EqualTo(new[] { "a/x", "a/y", "a/z", "b/x", "b/y", "b/z" }));
        Assert.That(RepeatedTrials.RoundOrder(cells, Group, 1), Is.EqualTo(new[] { "a/y", "a/z", "a/x", "b/y", "b/z", "b/x" }));
        Assert.That(RepeatedTrials.RoundOrder(cells, Group, 2), Is.EqualTo(new[] { "a/z", "a/x", "a/y", "b/z", "b/x", "b/y" }));
        Assert.That(RepeatedTrials.RoundOrder(cells, Group, 3), Is.EqualTo(RepeatedTrials.RoundOrder(cells, Group, 0)));

        // Run: every cell once per round, results in round order.
        var order = new List<(string, int)>();
        var results = RepeatedTrials.Run(cells, Group, 3, (c, r) => $"{c}#{r}", (c, r) => order.Add((c, r)));
        Assert.That(order, Has.Count.EqualTo(18));
        Assert.That(results["b/y"], Is.EqualTo(new[] { "b/y#0", "b/y#1", "b/y#2" }));
    }

    [Test]
    public void TheComparisonMarksASpeedupWhoseIntervalHoldsOne()
    {
        var rows = new List<PaperRow>
        {
            Row("original", [100, 100, 100]),
            Row("sfbuf-i386", [200, 210, 190]),
            Row("sfbuf-amd64", [95, 105, 100]),
        };
        var speedups = PaperReport.Speedups(rows);
        var byStrategy = speedups.ToDictionary(s => s.Strategy);
        var i386 = byStrategy["sfbuf-i386"];
        var amd64 = byStrategy["sfbuf-amd64"];
        Assert.That(i386.Ratio.Median, Is.EqualTo(2.0).Within(1e-12));
        Assert.That(i386.ExcludesOne, Is.True);
        Assert.That(PaperReport.SpeedupText(i386), Does.Not.Contain(WithinRun.HoldsOne));
        Assert.That(amd64.ExcludesOne, Is.False);
        Assert.That(PaperReport.SpeedupText(amd64), Does.EndWith(WithinRun.HoldsOne));
    }

    private static PaperRow Row(string strategy, double[] samples)
    {
        var s = SampleSummary.Of(samples);
        return new PaperRow
        {
            Experiment = "pipe",
            Strategy = strategy,
            Cpus = 2,
            CostProfile = "zero",
            Params = new Dictionary<string, object>(),
            Seconds = 1,
            Bytes = 1 << 20,
            Ops = 1,
            MbPerS = s.Median,
            OpsPerS = 1,
            Counters = new Dictionary<string, long>(),
            Samples = samples,
            CiLow = s.CiLow,
            CiHigh = s.CiHigh,
            Cv = s.Cv,
        };
    }

    [Test]
    public void TheHostCountsAsBusyFromAQuarterOfACoreOfOtherProcessesAndByTheLoadAverageOnlyWhenTheirCpuTimeIsUnknown()
    {
        Assert.That(HostLoad.Warning(others: 0.0, loadAverageAtStart: 0.1, cores: 2), Is.Null, "a quiet host");
        Assert.That(HostLoad.Warning(others: HostLoad.BusyCores - 0.01, loadAverageAtStart: null, cores: 2), Is.Null, "just under the threshold");
        Assert.That(HostLoad.Warning(others: HostLoad.BusyCores, loadAverageAtStart: null, cores: 2), Does.StartWith("host busy: other processes kept 0.25 of the 2 host cores busy"));

        // A load average above the cores still holds a run that just ended: where the CPU time
        // of other processes is measured, it alone decides.
        Assert.That(HostLoad.Warning(others: 0.1, loadAverageAtStart: 3.5, cores: 2), Is.Null, "the load average alone does not count where CPU time is known");
        Assert.That(HostLoad.Warning(others: 1.5, loadAverageAtStart: 3.5, cores: 2), Does.Contain("1.5 of the 2 host cores").And.Contain("load average 3.5 when it began"));

        // Where /proc/stat cannot tell, the load average at the start decides: busy above the cores.
        Assert.That(HostLoad.Warning(others: null, loadAverageAtStart: 2.0, cores: 2), Is.Null, "a load average equal to the cores is not above them");
        Assert.That(HostLoad.Warning(others: null, loadAverageAtStart: 2.5, cores: 2), Does.Contain("CPU use during the run is unknown").And.Contain("load average 2.5"));
        Assert.That(HostLoad.Warning(others: null, loadAverageAtStart: null, cores: 2), Is.Null, "nothing known, nothing claimed");
    }
}
