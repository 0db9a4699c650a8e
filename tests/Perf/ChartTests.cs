using System.Text.RegularExpressions;
using Native.Perf.Charting;
using Native.Perf.Paper;
using Native.SfBufNative;
using NUnit.Framework;

namespace Native.Tests.Perf;

/// <summary>
/// The rules every chart keeps, checked on the chart descriptions without looking at pixels:
/// a distinct, stable style per registered strategy however many there are; a log axis where the
/// values span more than a decade; MiB, never MB; titles that say the CPU count, the cost profile
/// and the time mode; intervals on throughput bars; a 1× line on speedups; layouts whose labels
/// have room; and the committed charts are exactly those the regeneration command writes.
/// </summary>
[TestFixture]
public sealed partial class ChartTests
{
    /// <summary>The documented regeneration of every committed chart: <c>perf plot --json ... --real-json ... --simulated ... --plot docs/results</c>.</summary>
    private const string PaperJson = "paper-default.json";
    private const string RealJson = "real.json";
    private const string SimulatedJson = "paper-host.json";

    private static List<IChart>? s_committed;

    private static string Results => Path.Combine(TestRepository.Root, "docs", "results");

    /// <summary>The charts of the committed runs, as the regeneration command plans them.</summary>
    private static List<IChart> Committed() => s_committed ??= PlotCommand.Plan(
        Path.Combine(Results, PaperJson), Path.Combine(Results, RealJson), Path.Combine(Results, SimulatedJson));

    [TestCase(12)]
    [TestCase(20)]
    [TestCase(21)]
    [TestCase(40)]
    [TestCase(80)]
    [TestCase(160)]
    public void EveryStrategyGetsADistinctStyle(int strategies)
    {
        var styles = Enumerable.Range(0, strategies).Select(StrategyPalette.At).ToList();
        Assert.That(styles.Select(s => s.BarKey).Distinct().Count(), Is.EqualTo(strategies), "bar styles");
        Assert.That(styles.Select(s => s.LineKey).Distinct().Count(), Is.EqualTo(strategies), "line styles");
        Assert.That(styles.Take(StrategyPalette.Colors.Count).Select(s => s.Color).Distinct().Count(), Is.EqualTo(Math.Min(strategies, StrategyPalette.Colors.Count)),
            "the first 20 strategies differ by colour alone");
    }

    [Test]
    public void TwelveStrategiesGetTwelveColours()
    {
        Assert.That(StrategyPalette.Colors, Has.Count.GreaterThanOrEqualTo(20));
        Assert.That(Enumerable.Range(0, 12).Select(i => StrategyPalette.At(i).Color).Distinct().Count(), Is.EqualTo(12));
    }

    [Test]
    public void AStrategyKeepsItsRegistryStyleWhateverElseAChartHolds()
    {
        var all = StrategyPalette.For(SfBufMapper.StrategyNames);
        for (int i = 0; i < SfBufStrategyInfo.All.Count; i++)
        {
            string name = SfBufStrategyInfo.All[i].Name;
            Assert.That(all[name].Index, Is.EqualTo(i), name);
            Assert.That(StrategyPalette.For([name])[name], Is.EqualTo(all[name]), $"{name} alone");
            Assert.That(StrategyPalette.For([.. Enumerable.Reverse(SfBufMapper.StrategyNames)])[name], Is.EqualTo(all[name]), $"{name} among the others in reverse order");
        }
    }

    [Test]
    public void StrategiesTheRegistryDoesNotKnowComeAfterItAndDifferFromEveryOne()
    {
        var names = SfBufMapper.StrategyNames.Concat(["zz-later", "aa-later", "mm-later"]).ToList();
        var styles = StrategyPalette.For(names);
        int registered = SfBufStrategyInfo.All.Count;
        Assert.That(styles["aa-later"].Index, Is.EqualTo(registered));
        Assert.That(styles["mm-later"].Index, Is.EqualTo(registered + 1));
        Assert.That(styles["zz-later"].Index, Is.EqualTo(registered + 2));
        Assert.That(styles.Values.Select(s => s.BarKey).Distinct().Count(), Is.EqualTo(names.Count));
        Assert.That(StrategyPalette.Ordered(names).Take(registered), Is.EqualTo(SfBufMapper.StrategyNames));
    }

    [Test]
    public void AChartOfMoreStrategiesThanTheRegistryHoldsDrawsEachDistinctly()
    {
        var rows = Committed().OfType<BarChart>().First(c => c.FileName == "throughput-pipe.png");
        var extra = PlotCommand.Load(Path.Combine(Results, PaperJson)).Where(r => r.Experiment == "pipe").ToList();
        // Twelve more strategies, each a copy of the last row's values under a new name.
        string last = extra[^1].Strategy;
        extra.AddRange(extra.Where(r => r.Strategy == last).SelectMany(r => Enumerable.Range(1, 12).Select(i => r with { Strategy = $"variant-{i:00}" })).ToList());
        var chart = Charts.Throughput("throughput-pipe.png", "pipe", extra);
        Assert.That(chart.Series, Has.Count.EqualTo(rows.Series.Count + 12));
        Assert.That(chart.Series.Select(s => (s.Color, s.Hatch?.GetType(), s.HatchColor)).Distinct().Count(), Is.EqualTo(chart.Series.Count));
        Assert.That(chart.Series.Take(rows.Series.Count), Is.EqualTo(rows.Series), "the registered strategies keep their colours");
    }

    [TestCase(new[] { 1.0, 10.0 }, false)]
    [TestCase(new[] { 1.0, 10.5 }, true)]
    [TestCase(new[] { 10.6, 35.8, 200.0 }, true)]
    [TestCase(new[] { 0.25, 3.56 }, true)]
    [TestCase(new[] { 2363.0, 7650.0 }, false)]
    [TestCase(new[] { 0.0, 3.0, 20.0 }, false)]
    [TestCase(new[] { 0.0, 0.2, 500.0 }, true)]
    [TestCase(new[] { -1.0, 100.0 }, false)]
    [TestCase(new[] { 0.0, 0.0 }, false)]
    public void TheAxisIsLogarithmicWhenTheValuesSpanMoreThanADecade(double[] values, bool log)
    {
        var scale = AxisScale.For(values);
        Assert.That(scale.IsLog, Is.EqualTo(log));
        Assert.That(AxisScale.For(Enumerable.Reverse(values)).IsLog, Is.EqualTo(log), "whatever the order");
        Assert.That(AxisLabel.With("MiB/s", scale), log ? Does.Contain("log scale") : Is.EqualTo("MiB/s"));
    }

    [Test]
    public void LogTicksReadInTheOriginalUnitsAndZeroSitsAtTheFloor()
    {
        var scale = AxisScale.For([0, 0.25, 3.56, 1500]);
        Assert.That(scale.IsLog && scale.HasZero, Is.True);
        Assert.That(scale.Map(0), Is.EqualTo(scale.Bottom));
        Assert.That(scale.Map(1500), Is.EqualTo(Math.Log10(1500)).Within(1e-12));
        var labels = scale.LogTicks(scale.Bottom, 4).Where(t => t.IsMajor).Select(t => t.Label).ToList();
        Assert.That(labels, Is.EqualTo(new[] { "0", "0.1", "1", "10", "100", "1,000", "10,000" }));

        var narrow = AxisScale.For([12, 150]);
        Assert.That(narrow.LogTicks(narrow.Bottom, narrow.Top).Where(t => t.IsMajor).Select(t => t.Label), Is.EqualTo(new[] { "10", "20", "50", "100" }),
            "over fewer than three decades 2 and 5 are labelled too");
    }

    [Test]
    public void ChartsChooseTheirAxisFromTheirData()
    {
        var charts = Committed().ToDictionary(c => c.FileName);
        Assert.That(charts["throughput-md-seq.png"].Scale.IsLog, Is.True, "413 to 28,544 MiB/s");
        Assert.That(charts["throughput-memcpy.png"].Scale.IsLog, Is.False, "within 1.2x");
        Assert.That(charts["real-vs-simulated-2cpu.png"].Scale.IsLog, Is.True, "0.25x beside 902x");
        Assert.That(charts["modelled-md-seq.png"].Scale.IsLog, Is.True, "10.6 beside 1,480 us");
        Assert.That(charts["lru.png"].Scale.IsLog, Is.False, "a hit rate of 0 or 100 %");
        foreach (var chart in charts.Values)
        {
            Assert.That(chart.YLabel.Contains("log scale", StringComparison.Ordinal), Is.EqualTo(chart.Scale.IsLog), chart.FileName);
        }
    }

    [Test]
    public void UnitsAreMiBNeverMB()
    {
        Assert.That(Committed().Count(c => Words(c).Any(w => w.Contains("MiB", StringComparison.Ordinal))), Is.GreaterThan(20));
        foreach (var chart in Committed())
        {
            foreach (string words in Words(chart))
            {
                Assert.That(MegaBytes().IsMatch(words), Is.False, $"{chart.FileName}: '{words}'");
            }
        }

        foreach (var chart in Committed().Where(c => c.FileName.Contains("throughput-", StringComparison.Ordinal)))
        {
            Assert.That(chart.YLabel, Does.StartWith("MiB/s").Or.StartWith("operations/s"), chart.FileName);
        }

        Assert.That(Committed().Single(c => c.FileName == "throughput-pipe.png").YLabel, Does.StartWith("MiB/s"));
        Assert.That(Committed().Single(c => c.FileName == "modelled-pipe.png").YLabel, Does.StartWith("µs per MiB"));
        Assert.That(Committed().Single(c => c.FileName == Charts.IpisPerMibFile).YLabel, Does.StartWith("IPIs per MiB"));
        Assert.That(new PaperRow
        {
            Experiment = "pipe",
            Strategy = "original",
            Cpus = 1,
            CostProfile = "zero",
            Params = new Dictionary<string, object>(),
            Seconds = 1,
            Bytes = 1 << 20,
            Ops = 1,
            MbPerS = 1,
            OpsPerS = 1,
            Counters = new Dictionary<string, long>(),
        }.Unit, Is.EqualTo("MiB"));
    }

    [Test]
    public void TitlesSayTheCpuCountTheCostProfileAndTheTimeMode()
    {
        var paper = PlotCommand.Load(Path.Combine(Results, PaperJson));
        var real = PlotCommand.Load(Path.Combine(Results, RealJson));
        foreach (var chart in Committed())
        {
            Assert.That(chart.Title, Does.Match(@"\d+ (simulated |host )?CPUs?\b|\d+ and \d+ (simulated|host) CPUs"), $"{chart.FileName}: CPU count");
            Assert.That(chart.Title, Does.Contain("cost profile "), $"{chart.FileName}: cost profile");
            Assert.That(chart.Title, Does.Contain(" time"), $"{chart.FileName}: time mode");
            bool modelled = chart.FileName.StartsWith("modelled-", StringComparison.Ordinal);
            Assert.That(chart.Title, modelled ? Does.Contain("modelled time") : Does.Contain(ChartText.TimeModeName(PaperRow.RealTime)), chart.FileName);
        }

        var charts = Committed().ToDictionary(c => c.FileName);
        Assert.That(charts["throughput-pipe.png"].Title, Does.Contain("1 and 2 simulated CPUs").And.Contain($"cost profile {paper[0].CostProfile}"));
        Assert.That(charts["lru.png"].Title, Does.Contain("1 simulated CPU,"));
        Assert.That(charts[Charts.IpisPerMibFile].Title, Does.Contain("2 simulated CPUs"));
        Assert.That(charts["modelled-pipe.png"].Title, Does.Contain($"cost profile {paper[0].ModelProfile}"));
        Assert.That(charts["real-throughput-pipe.png"].Title, Does.Contain("1 and 2 host CPUs").And.Contain($"cost profile {real[0].CostProfile}"));
        Assert.That(charts["real-vs-simulated-1cpu.png"].Title, Does.Contain("1 CPU;").And.Contain("cost profile host").And.Contain("cost profile zero"));
    }

    [Test]
    public void TheTimeModeIsReadFromTheRows()
    {
        var rows = PlotCommand.Load(Path.Combine(Results, PaperJson)).Where(r => r.Experiment == "pipe").ToList();
        Assert.That(rows.Select(r => r.TimeMode), Is.All.EqualTo(PaperRow.RealTime), "rows saved before the field are real time");
        var chart = Charts.Throughput("t.png", "pipe", [.. rows.Select(r => r with { TimeMode = "virtual" })]);
        Assert.That(chart.Title, Does.Contain("virtual time").And.Not.Contain("real time"));
    }

    [Test]
    public void CommittedRowsWithoutAShootdownFieldReadAsIpiRuns()
    {
        var rows = PlotCommand.Load(Path.Combine(Results, PaperJson));
        Assert.That(rows, Is.Not.Empty);
        Assert.That(rows.Select(r => r.Shootdown), Is.All.EqualTo(PaperRow.IpiShootdown), "rows saved before the field were IPI runs");
    }

    [Test]
    public void ThroughputBarsCarryTheirIntervalsAndSpeedupsTheOneLine()
    {
        var bars = Committed().OfType<BarChart>().ToList();
        foreach (var chart in bars.Where(c => c.FileName.Contains("throughput-", StringComparison.Ordinal)))
        {
            Assert.That(chart.Values.All(v => v.Low is not null && v.High is not null && v.Low <= v.Value && v.Value <= v.High), Is.True, chart.FileName);
            Assert.That(chart.IntervalLegend, Is.EqualTo(ChartText.CiLegend), chart.FileName);
            Assert.That(chart.Title, Does.Contain(ChartText.MedianCi), chart.FileName);
            Assert.That(chart.Caption, Is.EqualTo(ChartText.IntervalCaption), $"{chart.FileName}: the caption says what the error bars leave out");
        }

        foreach (var chart in bars.Where(c => c.FileName.StartsWith("real-vs-simulated-", StringComparison.Ordinal)))
        {
            Assert.That(chart.Reference, Is.EqualTo(1.0), chart.FileName);
            Assert.That(chart.Values.Count(v => v.Low is not null), Is.EqualTo(chart.Values.Count), $"{chart.FileName}: both sides have intervals");
            Assert.That(chart.IntervalLegend, Is.EqualTo(ChartText.CiLegend), chart.FileName);
            Assert.That(chart.Caption, Is.EqualTo(ChartText.IntervalCaption), chart.FileName);
        }

        Assert.That(bars.Where(c => c.Values.All(v => v.Low is null)).Select(c => c.Caption), Is.All.Null, "no error bars, no caption about them");
    }

    [Test]
    public void LabelsHaveRoom()
    {
        foreach (var chart in Committed().OfType<BarChart>())
        {
            double groupPx = (chart.Series.Count + 1) * chart.SlotPx;
            Assert.That(groupPx, Is.GreaterThanOrEqualTo(7.5 * chart.Groups.Max(g => g.Split('\n').Max(l => l.Length))), $"{chart.FileName}: group labels");
            if (chart.ValueLabels && !chart.UprightLabels)
            {
                Assert.That(chart.SlotPx, Is.GreaterThanOrEqualTo(7.5 * chart.Values.Max(v => ChartText.Value(v.Value).Length)), $"{chart.FileName}: value labels");
            }
            else if (chart.UprightLabels)
            {
                Assert.That(chart.SlotPx, Is.GreaterThanOrEqualTo(20), $"{chart.FileName}: upright value labels, one line high");
            }
        }

        var ipis = Committed().OfType<BarChart>().Single(c => c.FileName == Charts.IpisPerMibFile);
        Assert.That(ipis.ValueLabels, Is.False, "nine experiments x ten strategies: the values are read off the axis");
        Assert.That(ipis.Width, Is.LessThanOrEqualTo(2000));
    }

    [Test]
    public void CoincidingLinesSaySo()
    {
        var lru = Committed().OfType<LineChart>().Single(c => c.FileName == "lru.png");
        var texts = lru.LegendTexts();
        Assert.That(texts, Has.Some.Contains("(= "), "strategies with the same hit-rate curve are named as such");
        Assert.That(texts.Select(t => t.Split(' ')[0]), Is.EqualTo(lru.Series.Select(s => s.Name)));
    }

    [Test]
    public void EveryCommittedChartIsWrittenByTheRegenerationCommand()
    {
        var planned = Committed().Select(c => c.FileName).ToList();
        Assert.That(planned, Is.Unique, "one file per chart");
        Assert.That(PlotCommand.Plan(Path.Combine(Results, PaperJson), Path.Combine(Results, RealJson), Path.Combine(Results, SimulatedJson)).Select(c => c.FileName),
            Is.EqualTo(planned), "the same files, in the same order, every time");
        var committed = Directory.GetFiles(Results, "*.png").Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        Assert.That(committed, Is.EqualTo(planned.Order(StringComparer.Ordinal).ToList()),
            $"docs/results holds exactly the charts of: perf plot --json docs/results/{PaperJson} --real-json docs/results/{RealJson} --simulated docs/results/{SimulatedJson} --plot docs/results");
    }

    [Test]
    public void AChartRendersTheSameBytesTwice()
    {
        var dir = Directory.CreateTempSubdirectory("chart-twice");
        try
        {
            foreach (string name in new[] { "real-vs-simulated-2cpu.png", "modelled-md-seq.png" })
            {
                var chart = Committed().Single(c => c.FileName == name);
                string first = chart.Save(Directory.CreateDirectory(Path.Combine(dir.FullName, "a")).FullName);
                string second = chart.Save(Directory.CreateDirectory(Path.Combine(dir.FullName, "b")).FullName);
                Assert.That(File.ReadAllBytes(second), Is.EqualTo(File.ReadAllBytes(first)), name);
            }
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private static IEnumerable<string> Words(IChart chart) =>
        new[] { chart.Title, chart.XLabel, chart.YLabel }.Concat(chart.Series.Select(s => s.Name))
            .Concat(chart is BarChart bars ? bars.Groups.Append(bars.IntervalLegend ?? string.Empty).Append(bars.Caption ?? string.Empty) : [])
            .Concat(chart is LineChart lines ? lines.LegendTexts() : []);

    [GeneratedRegex(@"\bMB\b")]
    private static partial Regex MegaBytes();
}
