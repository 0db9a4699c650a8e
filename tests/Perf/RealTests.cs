using Native.PageTable;
using Native.Perf.Paper;
using Native.Perf.Real;
using Native.Perf.Stats;
using Native.SfBufNative;
using Native.Tests.Host;
using NUnit.Framework;

namespace Native.Tests.Perf;

/// <summary>
/// <c>perf real</c>: <c>perf paper</c>'s runner on the host backend (gated like every host test),
/// whose trials must keep the host's relations, and its comparison with a simulated run.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class RealTests
{
    // The paper's three and the peers whose mechanism the host expresses.
    private static readonly string[] s_hostStrategies = [.. SfBufMapper.StrategyNames.Where(s => SfBufMapper.Describe(s).RunsOnHost)];

    private static PaperRun? s_run;

    private static PaperRun HostRun()
    {
        HostGate.Require();
        if (s_run == null)
        {
            var plan = new PaperPlan(["pipe", "md-rand"], s_hostStrategies, [1, 2], CostModel.Zero, CostModel.Default,
                TrialSize.Quick, Rounds: 2, CheckedTiming: false, MachineBackend.Host);
            s_run = PaperRunner.Run(plan, childProcesses: false);
        }

        return s_run;
    }

    [Test]
    public void TheExperimentsRunOnTheHostMmuAndKeepEveryRelation()
    {
        var run = HostRun();
        Assert.That(run.Problems, Is.Empty);
        Assert.That(run.Verification, Is.Empty, "no oracle on the host: nothing to verify separately");
        Assert.That(run.Rows, Has.Count.EqualTo(2 * s_hostStrategies.Length * 2));
        Assert.That(run.Timed.Select(m => m.Backend), Is.All.EqualTo(PaperRow.HostBackend));
        Assert.That(run.Rows.Select(r => r.Backend), Is.All.EqualTo(PaperRow.HostBackend));
        Assert.That(run.Timed.Select(m => m["ipis_sent"]), Is.All.Zero, "the host kernel shoots down; no simulated IPI");
        Assert.That(run.Timed.Where(m => SfBufMapper.Describe(m.Strategy).NeedsDirectMap).Select(m => m["host_remaps"]), Is.All.Zero);

        foreach (var md in run.Timed.Where(m => m.Experiment == "md-rand" && SfBufMapper.Describe(m.Strategy).MapsPerUse))
        {
            Assert.That(md["host_maps"], Is.EqualTo(md["mappings"]), "one mmap per mapping");
            Assert.That(md["host_unmaps"], Is.EqualTo(md["mappings"]), "one re-reservation per mapping");
            Assert.That(md["shootdowns"], Is.EqualTo(md.Cpus > 1 ? 2 * md["mappings"] : 0), "the strategy asked for its two rounds per mapping on SMP");
        }

        foreach (var pipe in run.Timed.Where(m => m.Experiment == "pipe" && SfBufMapper.Describe(m.Strategy).IsMappingCache))
        {
            Assert.That(pipe["host_remaps"], Is.LessThanOrEqualTo(16), "the writer's reused 64 KiB buffer is mapped once, then hit");
        }

        Assert.That(run.Timed.Select(m => JsonValues.Number(m.Params["round_trip_ns"])), Is.All.GreaterThan(0), "every trial records the round trip");
    }

    [Test]
    public void SpeedupsArePairedByRoundAndTheComparisonFlagsDifferencesOverHalf()
    {
        List<PaperRow> measured = [Row(SfBufMapper.Original, [10, 20, 40]), Row(SfBufMapper.I386, [40, 80, 160]), Row(SfBufMapper.Amd64, [30, 60, 120])];
        List<PaperRow> simulated = [Row(SfBufMapper.Original, [10, 10, 10]), Row(SfBufMapper.I386, [20, 20, 20]), Row(SfBufMapper.Amd64, [20, 20, 20])];
        var comparison = RealReport.Compare(measured, simulated);
        var byStrategy = comparison.ToDictionary(c => c.Strategy);
        var i386 = byStrategy[SfBufMapper.I386];
        var amd64 = byStrategy[SfBufMapper.Amd64];

        // Each round's trial over the same round's original: 4x every time, though the host slowed down 4x across the rounds.
        Assert.That(i386.Measured.Ratio.Median, Is.EqualTo(4.0).Within(1e-12));
        Assert.That(i386.Simulated, Is.EqualTo(2.0).Within(1e-12));
        Assert.That(i386.Agrees, Is.False, "4x measured against 2x simulated");
        Assert.That(i386.SimulatedInsideCi, Is.False, "every round measured 4x: the CI is 4x exactly");
        Assert.That(i386.Verdict, Is.EqualTo("differ"));
        Assert.That(amd64.Factor, Is.EqualTo(1.5).Within(1e-12));
        Assert.That(amd64.Agrees, Is.True, "within a factor of 1.5");
    }

    [Test]
    public void AHostRunIsWrittenInPaperSchemaAndSummarisedAgain()
    {
        var run = HostRun();
        string dir = Path.Combine(Path.GetTempPath(), $"perf-real-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        try
        {
            string json = Path.Combine(dir, "real.json");
            PaperReport.WriteJson(json, run.Rows);
            var back = PlotCommand.Load(json);
            Assert.That(back.Select(r => (r.Experiment, r.Strategy, r.Cpus, r.Backend)), Is.EqualTo(run.Rows.Select(r => (r.Experiment, r.Strategy, r.Cpus, r.Backend))));
            Assert.That(back[0].Counters.Keys, Is.SupersetOf(HostWindow.CounterKeys));
            Assert.That(back.Select(r => r.Samples.Count), Is.All.EqualTo(2));

            var comparison = RealReport.Compare(back, [.. run.Rows.Select(r => r with { Backend = PaperRow.SimulatedBackend })]);
            Assert.That(comparison.Select(c => c.Factor), Is.All.EqualTo(1.0).Within(1e-9), "a run compared with itself agrees exactly");
            RealReport.PrintTables(back);
            RealReport.PrintComparison(comparison);
            string markdown = Path.Combine(dir, "real.md");
            RealReport.WriteMarkdown(markdown, RealCommand.Describe(2, true, 100, 110), back, comparison);
            Assert.That(File.ReadAllText(markdown), Does.Contain("| pipe | 2 | sfbuf-i386 |").And.Contain("round trip      100 ns before, 110 ns after"));
            var charts = RealCharts.Write(dir, back, comparison);
            Assert.That(charts, Has.Count.EqualTo(2 + 2));
            Assert.That(charts.Select(f => new FileInfo(f).Length), Is.All.GreaterThan(0));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static PaperRow Row(string strategy, double[] samples)
    {
        var summary = SampleSummary.Of(samples);
        return new PaperRow
        {
            Experiment = "pipe",
            Strategy = strategy,
            Cpus = 2,
            CostProfile = "zero",
            Backend = PaperRow.HostBackend,
            Params = new Dictionary<string, object>(),
            Seconds = 1,
            Bytes = 1 << 20,
            Ops = 16,
            MbPerS = summary.Median,
            OpsPerS = summary.Median * 16,
            Counters = new Dictionary<string, long>(),
            Samples = samples,
            CiLow = summary.CiLow,
            CiHigh = summary.CiHigh,
            Cv = summary.Cv,
        };
    }
}
