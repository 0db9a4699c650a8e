using System.Text.Json;
using Native.PageTable;
using Native.Perf.Paper;
using Native.Perf.Real;
using Native.SfBufNative;
using Native.Tests.Host;
using NUnit.Framework;

namespace Native.Tests.Perf;

/// <summary>
/// <c>perf real</c>: its statistics, its summaries, and a small run of its experiments on the
/// host backend (gated like every host test) whose rows must satisfy the run's invariants.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class RealTests
{
    private static List<PaperRow>? s_rows;

    private static List<PaperRow> HostRows()
    {
        HostGate.Require();
        if (s_rows == null)
        {
            var settings = new PaperSettings(CostModel.Zero, Quick: true, Checked: true, MachineBackend.Host);
            s_rows = RealCommand.RunTrials(settings, 1, ["pipe", "md-rand"], [.. SfBufMapper.StrategyNames], [1, 2]);
        }

        return s_rows;
    }

    [Test]
    public void TheMedianIntervalUsesOrderStatisticsAndSaysWhatItCovers()
    {
        Assert.That(RealStatistics.Coverage(5, 1), Is.EqualTo(1 - (2.0 / 32)).Within(1e-12));
        var nine = RealStatistics.Median([9, 1, 8, 2, 7, 3, 6, 4, 5]);
        Assert.That((nine.Median, nine.Low, nine.High), Is.EqualTo((5.0, 2.0, 8.0)), "n = 9: [x(2), x(8)] covers 96%");
        Assert.That(nine.Confidence, Is.GreaterThanOrEqualTo(0.95));
        var two = RealStatistics.Median([3, 1]);
        Assert.That((two.Median, two.Low, two.High), Is.EqualTo((2.0, 1.0, 3.0)));
        Assert.That(two.Confidence, Is.EqualTo(0.5), "two samples: the range covers the median only half the time, and says so");
        Assert.That(two.Excludes(1.5), Is.False);
        Assert.That(two.Excludes(3.5), Is.True);
    }

    [Test]
    public void SpeedupsPairTrialsOfTheSameRepetition()
    {
        List<PaperRow> rows =
        [
            Row(SfBufMapper.Original, trial: 0, seconds: 2), Row(SfBufMapper.I386, trial: 0, seconds: 1),
            Row(SfBufMapper.Original, trial: 1, seconds: 4), Row(SfBufMapper.I386, trial: 1, seconds: 2),
            Row(SfBufMapper.Original, trial: 2, seconds: 1), Row(SfBufMapper.I386, trial: 2, seconds: 0.5),
        ];
        var i386 = RealSummary.Cells(rows).Single(c => c.Strategy == SfBufMapper.I386);

        // Unpaired, the medians would give 2.0 too, but the spread of each trial pair is 0: the host's slow phase hit both.
        Assert.That(i386.Speedup!.Value.Median, Is.EqualTo(2.0));
        Assert.That((i386.Speedup.Value.Low, i386.Speedup.Value.High), Is.EqualTo((2.0, 2.0)));
    }

    [Test]
    public void TheComparisonFlagsSpeedupsThatDifferByMoreThanHalf()
    {
        List<PaperRow> measured = [Row(SfBufMapper.Original, 0, 4), Row(SfBufMapper.I386, 0, 1), Row(SfBufMapper.Amd64, 0, 3)];
        List<PaperRow> simulated = [Row(SfBufMapper.Original, 0, 2), Row(SfBufMapper.I386, 0, 1), Row(SfBufMapper.Amd64, 0, 1)];
        var comparison = RealReport.Compare(RealSummary.Cells(measured), simulated);
        var i386 = comparison.Single(c => c.Strategy == SfBufMapper.I386);
        var amd64 = comparison.Single(c => c.Strategy == SfBufMapper.Amd64);

        Assert.That((i386.Simulated, i386.Measured.Median), Is.EqualTo((2.0, 4.0)));
        Assert.That(i386.Agrees, Is.False, "4x measured against 2x simulated");
        Assert.That(amd64.Factor, Is.EqualTo((4.0 / 3) / 2).Within(1e-12));
        Assert.That(amd64.Agrees, Is.True);
    }

    [Test]
    public void TheExperimentsRunOnTheHostMmuAndKeepTheRunsInvariants()
    {
        var rows = HostRows();
        Assert.That(rows, Has.Count.EqualTo(2 * SfBufMapper.StrategyNames.Count * 2));
        Assert.That(rows.Select(r => r.Backend), Is.All.EqualTo(PaperRow.HostBackend));
        Assert.That(RealSummary.Check(rows), Is.Empty);
        Assert.That(rows.Where(r => r.Strategy == SfBufMapper.Amd64).Select(r => r["host_remaps"]), Is.All.Zero);

        var mdOriginal = rows.Single(r => r.Experiment == "md-rand" && r.Strategy == SfBufMapper.Original && r.Cpus == 2);
        Assert.That(mdOriginal["host_maps"], Is.EqualTo(mdOriginal["sfbuf_misses"]), "one mmap per mapping");
        Assert.That(mdOriginal["host_unmaps"], Is.EqualTo(mdOriginal["sfbuf_misses"]), "one re-reservation per mapping");
        Assert.That(mdOriginal["shootdowns"], Is.EqualTo(2 * mdOriginal["sfbuf_misses"]), "the strategy asked for its two rounds per mapping");

        var pipeI386 = rows.Single(r => r.Experiment == "pipe" && r.Strategy == SfBufMapper.I386 && r.Cpus == 2);
        Assert.That(pipeI386["host_remaps"], Is.LessThanOrEqualTo(16), "the writer's reused 64 KiB buffer is mapped once, then hit");
        Assert.That(rows.Select(r => r.Params["round_trip_ns"]), Is.All.Not.Null);
    }

    [Test]
    public void AHostRunIsWrittenInPaperSchemaAndReadBack()
    {
        var rows = HostRows();
        string dir = Path.Combine(Path.GetTempPath(), $"perf-real-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        try
        {
            string json = Path.Combine(dir, "real.json");
            File.WriteAllText(json, JsonSerializer.Serialize(rows));
            var back = PlotCommand.Load(json);
            Assert.That(back.Select(r => (r.Experiment, r.Strategy, r.Cpus, r.Backend)), Is.EqualTo(rows.Select(r => (r.Experiment, r.Strategy, r.Cpus, r.Backend))));
            Assert.That(back[0].Counters.Keys, Is.SupersetOf(HostWindow.CounterKeys));

            var cells = RealSummary.Cells(back);
            var comparison = RealReport.Compare(cells, rows.Select(r => r with { Backend = PaperRow.SimulatedBackend }).ToList());
            Assert.That(comparison.Select(c => c.Factor), Is.All.EqualTo(1.0).Within(1e-9), "a run compared with itself agrees exactly");
            string markdown = Path.Combine(dir, "real.md");
            RealReport.WriteMarkdown(markdown, RealCommand.Describe(1, true, 100, 110), cells, comparison);
            Assert.That(File.ReadAllText(markdown), Does.Contain("| pipe | 2 | sfbuf-i386 |").And.Contain("round trip      100 ns before, 110 ns after"));
            RealReport.PrintTables(cells);
            RealReport.PrintComparison(comparison);
            var charts = RealCharts.Write(dir, cells, comparison);
            Assert.That(charts, Has.Count.EqualTo(2 + 2));
            Assert.That(charts.Select(f => new FileInfo(f).Length), Is.All.GreaterThan(0));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static PaperRow Row(string strategy, int trial, double seconds) => new()
    {
        Experiment = "pipe",
        Strategy = strategy,
        Cpus = 2,
        CostProfile = "zero",
        Backend = PaperRow.HostBackend,
        Params = new Dictionary<string, object> { ["trial"] = trial },
        Seconds = seconds,
        Bytes = 1 << 20,
        Ops = 16,
        Counters = new Dictionary<string, long>(),
    };
}
