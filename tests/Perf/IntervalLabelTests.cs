using System.Text.RegularExpressions;
using Native.Perf.Charting;
using Native.Perf.Commands;
using Native.Perf.Paper;
using Native.Perf.Real;
using Native.Perf.Report;
using Native.Perf.Stats;
using Native.SfBufNative;
using NUnit.Framework;
using Spectre.Console;
using BarChart = Native.Perf.Charting.BarChart;

namespace Native.Tests.Perf;

/// <summary>
/// What every report says its intervals are. They are within-run intervals: the spread of one
/// run's paired rounds, on one host phase, without the host's between-run variation. So every
/// table, Markdown file, chart and docs block that shows one names it "within-run 95% CI", carries
/// the legend that says what it leaves out, and never calls a difference significant; checked on
/// the output of a small set of synthetic rows, and on the committed pages.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed partial class IntervalLabelTests
{
    private static readonly string[] s_experiments = ["pipe", "md-seq"];
    private static readonly double[] s_original = [100, 110, 90, 105, 95];

    /// <summary>The rows of a small run: two experiments at 1 and 2 CPUs; <c>sfbuf-i386</c> twice <c>original</c> (times <paramref name="i386Factor"/>), <c>sfbuf-amd64</c> within 5 % of it.</summary>
    private static List<PaperRow> Rows(double i386Factor = 1.0, string backend = PaperRow.SimulatedBackend)
    {
        double[] noise = [0.95, 1.05, 1.0, 1.02, 0.98];
        var rows = new List<PaperRow>();
        foreach (string experiment in s_experiments)
        {
            foreach (int cpus in new[] { 1, 2 })
            {
                rows.Add(Row(experiment, SfBufMapper.Original, cpus, s_original, cpus == 2 ? 512 : 0, 61_440, backend));
                rows.Add(Row(experiment, SfBufMapper.I386, cpus, [.. s_original.Select((s, i) => 2 * s * noise[(i + 1) % noise.Length] * i386Factor)], 0, 100, backend));
                rows.Add(Row(experiment, SfBufMapper.Amd64, cpus, [.. s_original.Select((s, i) => s * noise[i])], 0, 0, backend));
            }
        }

        return rows;
    }

    private static PaperRow Row(string experiment, string strategy, int cpus, double[] samples, long ipis, double modelledNs, string backend)
    {
        var s = SampleSummary.Of(samples);
        return new PaperRow
        {
            Experiment = experiment,
            Strategy = strategy,
            Cpus = cpus,
            CostProfile = "default",
            Backend = backend,
            Params = new Dictionary<string, object> { ["round_trip_ns"] = 50.0 },
            Seconds = 1,
            Bytes = 1 << 20,
            Ops = 16,
            MbPerS = s.Median,
            OpsPerS = 16 * s.Median,
            Counters = new Dictionary<string, long> { ["ipis_sent"] = ipis, ["shootdowns"] = ipis },
            Samples = samples,
            CiLow = s.CiLow,
            CiHigh = s.CiHigh,
            Cv = s.Cv,
            ModelledNs = modelledNs,
            ModelProfile = "default",
        };
    }

    /// <summary>What <paramref name="print"/> writes to the console, 400 columns wide, without colour.</summary>
    private static string Console(Action print)
    {
        var previous = AnsiConsole.Console;
        using var writer = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        console.Profile.Width = 400;
        AnsiConsole.Console = console;
        try
        {
            print();
        }
        finally
        {
            AnsiConsole.Console = previous;
        }

        return writer.ToString();
    }

    /// <summary>The text with every run of whitespace (a caption's line breaks and centring) made one space.</summary>
    private static string Flat(string text) => Whitespace().Replace(text, " ");

    /// <summary>Nothing calls a difference significant, and every "95% CI" is the within-run one.</summary>
    private static void AssertNoClaimOfSignificance(string text, string what)
    {
        text = Flat(text);
        Assert.That(text, Does.Not.Contain("significan").IgnoreCase, $"{what}: no difference is called significant on a within-run interval");
        Assert.That(text, Does.Not.Contain("n.s."), $"{what}: no \"not significant\" mark");
        Assert.That(BareInterval().IsMatch(text), Is.False, $"{what}: every 95% CI is named within-run");
    }

    [Test]
    public void PerfPapersTablesNameTheIntervalAndCarryTheLegend()
    {
        var rows = Rows();
        string tables = Console(() => PaperReport.PrintTables(rows));
        Assert.That(tables, Does.Contain(WithinRun.Interval), "the column header");
        Assert.That(Regex.Matches(Flat(tables), Regex.Escape(WithinRun.Legend)), Has.Count.EqualTo(s_experiments.Length), "the legend under each experiment's table");
        AssertNoClaimOfSignificance(tables, "the tables");

        string comparison = Console(() => PaperReport.PrintComparison(rows));
        Assert.That(Flat(comparison), Does.Contain($"paired speedup, median [{WithinRun.Interval}]"), "the title");
        Assert.That(Flat(comparison), Does.Contain(WithinRun.Legend).And.Contain(WithinRun.HoldsOneLegend));
        Assert.That(comparison, Does.Contain("1.00x").And.Contain($"] {WithinRun.HoldsOne}"), "sfbuf-amd64's speedup holds 1.0 and is marked so");
        AssertNoClaimOfSignificance(comparison, "the comparison");
        Assert.That(SampleSummary.CiMethod, Does.StartWith(WithinRun.Interval).And.Contain("between-run variation is not in it"), "the statistics line of the header");
    }

    [Test]
    public void WithoutIntervalsThereIsNoLegend()
    {
        // --repeat 1: one round per cell, so no interval to explain.
        var rows = Rows().Select(r => r with { Samples = [r.Samples[0]], CiLow = null, CiHigh = null }).ToList();
        string printed = Console(() =>
        {
            PaperReport.PrintTables(rows);
            PaperReport.PrintComparison(rows);
        });
        Assert.That(Flat(printed), Does.Not.Contain(WithinRun.Legend));
        Assert.That(printed, Does.Contain("(1 round, no interval)"));
        AssertNoClaimOfSignificance(printed, "one round");

        var dir = Directory.CreateTempSubdirectory("interval-none");
        try
        {
            string path = Path.Combine(dir.FullName, "out.md");
            PaperReport.WriteMarkdown(path, rows);
            Assert.That(File.ReadAllText(path), Does.Not.Contain(WithinRun.Legend));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Test]
    public void PerfPapersMarkdownNamesTheIntervalInItsHeadersAndHasTheLegendUnderEveryTable()
    {
        var dir = Directory.CreateTempSubdirectory("interval-md");
        try
        {
            string path = Path.Combine(dir.FullName, "out.md");
            PaperReport.WriteMarkdown(path, Rows());
            string text = File.ReadAllText(path);
            var lines = text.Split('\n');
            Assert.That(lines.Where(l => l.StartsWith("| pipe | MiB/s", StringComparison.Ordinal)).Single(), Does.Contain($"MiB/s [{WithinRun.Interval}]"));
            string speedupHeader = lines.Single(l => l.StartsWith("| experiment | cpus |", StringComparison.Ordinal));
            string i386Column = $"{SfBufMapper.I386} over {SfBufMapper.Original} [{WithinRun.Interval}]";
            Assert.That(speedupHeader, Does.Contain(i386Column));
            Assert.That(lines.Count(l => l.StartsWith($"*{WithinRun.Legend}", StringComparison.Ordinal)), Is.EqualTo(2), "under the throughput table and under the speedups");
            Assert.That(text, Does.Contain($"*{WithinRun.Legend} {WithinRun.HoldsOneLegend}*"));
            AssertNoClaimOfSignificance(text, "the Markdown");
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Test]
    public void ChartsWithErrorBarsSayTheyAreWithinRunAndWhatThatLeavesOut()
    {
        var rows = Rows();
        var charts = Charts.Plan(rows);
        var withBars = charts.OfType<BarChart>().Where(c => c.Values.Any(v => v.Low is not null)).ToList();
        Assert.That(withBars.Select(c => c.FileName), Is.EquivalentTo(s_experiments.Select(e => $"throughput-{e}.png")));
        foreach (var chart in withBars)
        {
            Assert.That(chart.Title, Does.Contain(WithinRun.Interval), chart.FileName);
            Assert.That(chart.IntervalLegend, Is.EqualTo(WithinRun.Interval), chart.FileName);
            Assert.That(chart.Caption, Is.EqualTo(WithinRun.ChartCaption), chart.FileName);
            Assert.That(chart.Caption, Does.Contain("between-run variation is not included"), chart.FileName);
            Assert.That(chart.Width, Is.GreaterThanOrEqualTo(6.5 * chart.Caption!.Length), $"{chart.FileName}: the caption has room");
        }

        Assert.That(charts.OfType<BarChart>().Where(c => c.Values.All(v => v.Low is null)).Select(c => c.Caption), Is.All.Null, "no error bars, no caption about them");

        var measured = Rows(backend: PaperRow.HostBackend);
        var real = RealCharts.Plan(measured, RealReport.Compare(measured, rows), rows).OfType<BarChart>().ToList();
        Assert.That(real.Select(c => c.Caption), Is.All.EqualTo(WithinRun.ChartCaption), "perf real's charts too");
        Assert.That(real.Where(c => !c.Title.Contains(WithinRun.Interval, StringComparison.Ordinal)).Select(c => c.FileName), Is.Empty, "their titles name the interval");
        foreach (var chart in charts.Concat<IChart>(real))
        {
            AssertNoClaimOfSignificance(string.Join("\n", new[] { chart.Title, chart.XLabel, chart.YLabel, (chart as BarChart)?.IntervalLegend ?? string.Empty, (chart as BarChart)?.Caption ?? string.Empty }), chart.FileName);
        }
    }

    [Test]
    public void PerfRealsTablesAndMarkdownNameTheIntervalAndCarryTheLegend()
    {
        var simulated = Rows();
        var measured = Rows(backend: PaperRow.HostBackend);
        var comparison = RealReport.Compare(measured, simulated);
        string printed = Console(() =>
        {
            RealReport.PrintTables(measured);
            RealReport.PrintComparison(comparison);
        });
        Assert.That(printed, Does.Contain($"x original [{WithinRun.Interval}]").And.Contain($"measured [{WithinRun.Interval}]"));
        Assert.That(Regex.Matches(Flat(printed), Regex.Escape(WithinRun.Legend)), Has.Count.EqualTo(s_experiments.Length + 1), "under each table and under the comparison");
        AssertNoClaimOfSignificance(printed, "perf real's tables");

        var dir = Directory.CreateTempSubdirectory("interval-real");
        try
        {
            string path = Path.Combine(dir.FullName, "real.md");
            var info = new RealRunInfo("rows of real.json", "as recorded", "as recorded", DateTime.UnixEpoch, 50, 60, "as recorded", "as recorded", 5, Quick: false);
            RealReport.WriteMarkdown(path, info, measured, comparison);
            string text = File.ReadAllText(path);
            Assert.That(text, Does.Contain($"throughput, median [{WithinRun.Interval}]").And.Contain($"measured speedup [{WithinRun.Interval}]"));
            Assert.That(text.Split('\n').Count(l => l == $"*{WithinRun.Legend} {WithinRun.HoldsOneLegend}*"), Is.EqualTo(2));
            AssertNoClaimOfSignificance(text, "perf real's Markdown");
        }
        finally
        {
            dir.Delete(recursive: true);
        }

        Assert.That(ScalingCommand.Legend, Does.StartWith(WithinRun.Interval).And.Contain("between-run variation"), "perf scaling's legend");
    }

    [Test]
    public void TheDocsBlocksNameTheIntervalAndCarryTheLegend()
    {
        var root = Directory.CreateTempSubdirectory("interval-docs");
        try
        {
            var results = WriteResults(root.FullName, ("a.json", Rows()), ("host.json", Rows(backend: PaperRow.HostBackend)));
            foreach (string block in new[] { "headline a.json 2", "throughput a.json 2", "speedups a.json", "real-vs-simulated host.json a.json" })
            {
                string text = DocTables.Render(block, results);
                Assert.That(text, Does.Contain(WithinRun.Interval), block);
                Assert.That(text.TrimEnd().Split('\n')[^1], Does.StartWith($"*{WithinRun.Legend}"), $"{block}: the legend is the table's last line");
                AssertNoClaimOfSignificance(text, block);
            }

            Assert.That(DocTables.Render("speedups a.json", results), Does.Contain($"1.00× {WithinRun.HoldsOne}").And.Contain(WithinRun.HoldsOneLegend));
            Assert.That(DocTables.Render("throughput a.json 2", results), Does.Contain($"MiB/s<br>{WithinRun.Interval}<br>IPIs/MiB"));
        }
        finally
        {
            root.Delete(recursive: true);
        }
    }

    [Test]
    public void BetweenRunsCountsTheIntervalsThatHoldTheOtherRunsMedian()
    {
        var root = Directory.CreateTempSubdirectory("interval-between");
        try
        {
            // B is A again but for sfbuf-i386, 1.5x faster: its throughput and speedup medians leave A's narrow intervals, and A's leave B's.
            var results = WriteResults(root.FullName, ("a.json", Rows()), ("b.json", Rows(i386Factor: 1.5)), ("c.json", Rows()));
            var lines = DocTables.Render("between-runs a.json b.json", results).Split('\n');
            Assert.That(lines[0], Does.StartWith("*2 runs of the same tree, `a.json` (A), `b.json` (B): "));
            Assert.That(lines, Does.Contain("| cells with an interval in every run | 12 | 8 |"));
            Assert.That(lines, Does.Contain("| intervals that hold the median of the other runs' medians | 16 of 24 (67 %) | 8 of 16 (50 %) |"), "original and sfbuf-amd64 are the same rows; sfbuf-i386 moved");
            Assert.That(lines, Does.Contain("| the same, per run: A, B | 8 of 12 (67 %), 8 of 12 (67 %) | 4 of 8 (50 %), 4 of 8 (50 %) |"));
            Assert.That(lines, Does.Contain("| cells whose intervals hold it in at least 80 % of the runs | 8 of 12 (67 %) | 4 of 8 (50 %) |"));
            Assert.That(lines, Does.Contain("| factor between a run's median and the others': median, 90th percentile, largest | 1.00×, 1.50×, 1.50× | 1.25×, 1.50×, 1.50× |"));
            Assert.That(lines, Does.Contain("| host's cross-core round trip, median over each run's trials | 50 ns, 50 ns | |"));
            Assert.That(lines.Where(l => l.Length > 0).Last(), Is.EqualTo($"*{WithinRun.Legend}*"));

            // Three runs, sfbuf-i386 moved in B only: A's and C's intervals miss the median of the others' (halfway), B's misses A's = C's.
            lines = DocTables.Render("between-runs a.json b.json c.json", results).Split('\n');
            Assert.That(lines, Does.Contain("| intervals that hold the median of the other runs' medians | 24 of 36 (67 %) | 12 of 24 (50 %) |"));
            Assert.That(lines, Does.Contain("| the same, per run: A, B, C | 8 of 12 (67 %), 8 of 12 (67 %), 8 of 12 (67 %) | 4 of 8 (50 %), 4 of 8 (50 %), 4 of 8 (50 %) |"));
            Assert.Throws<ArgumentException>(() => DocTables.Render("between-runs a.json", results), "one run has nothing to be compared with");
        }
        finally
        {
            root.Delete(recursive: true);
        }
    }

    [TestCase("paper-default")]
    [TestCase("paper-all-4-8")]
    public void TheCommittedMarkdownTablesAreTheirRowsRenderedNow(string run)
    {
        // perf plot --json docs/results/RUN.json --markdown docs/results/RUN.md
        string results = Path.Combine(TestRepository.Root, "docs", "results");
        var dir = Directory.CreateTempSubdirectory("interval-committed");
        try
        {
            string path = Path.Combine(dir.FullName, $"{run}.md");
            PaperReport.WriteMarkdown(path, PlotCommand.Load(Path.Combine(results, $"{run}.json")));
            Assert.That(File.ReadAllText(Path.Combine(results, $"{run}.md")), Is.EqualTo(File.ReadAllText(path)),
                $"re-render with: perf plot --json docs/results/{run}.json --markdown docs/results/{run}.md");
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Test]
    public void NoPageCallsADifferenceSignificant()
    {
        foreach (var page in DocMarkers.Pages(TestRepository.Root))
        {
            string text = File.ReadAllText(page);
            string name = Path.GetRelativePath(TestRepository.Root, page);
            Assert.That(text, Does.Not.Contain("significan").IgnoreCase, $"{name}: the intervals are within-run; say \"outside the within-run interval\" instead");
            Assert.That(text, Does.Not.Contain(" n.s."), $"{name}: no \"not significant\" mark");
        }
    }

    private static DocResults WriteResults(string root, params (string File, List<PaperRow> Rows)[] files)
    {
        string results = Directory.CreateDirectory(Path.Combine(root, "docs", "results")).FullName;
        foreach (var (file, rows) in files)
        {
            PaperReport.WriteJson(Path.Combine(results, file), rows);
        }

        return new DocResults(root);
    }

    [GeneratedRegex(@"\s+")]
    private static partial Regex Whitespace();

    [GeneratedRegex(@"(?<!within-run )95% CI")]
    private static partial Regex BareInterval();
}
