using System.Globalization;
using System.Text;
using System.Text.Json;
using Native.Perf.Stats;
using Native.SfBufNative;
using Spectre.Console;

namespace Native.Perf.Paper;

/// <summary>
/// Renders <c>perf paper</c>'s rows: the terminal tables, the comparison with the original
/// mechanisms (paired speedups with their within-run intervals), warnings, JSON, CSV and Markdown.
/// Generic over the strategies: every strategy in the rows gets its rows and its comparison column.
/// Every table with an interval names it <see cref="WithinRun.Interval"/> and carries
/// <see cref="WithinRun.Legend"/>: the intervals leave out the host's between-run variation, so
/// nothing here calls a difference significant.
/// </summary>
internal static class PaperReport
{
    /// <summary>The strategy every other is compared with.</summary>
    public const string Baseline = SfBufMapper.Original;

    /// <summary>JSON options of every file and of the round protocol: snake_case where no name is given.</summary>
    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
    };

    /// <summary>The same, one object per line.</summary>
    public static readonly JsonSerializerOptions JsonLine = new(Json) { WriteIndented = false };

    private static readonly (string Key, string Header)[] s_perUnit =
    [
        ("pte_writes", "PTE wr"),
        ("local_invalidations", "invlpg"),
        ("full_flushes", "flushes"),
        ("shootdowns", "shootdn"),
        ("ipis_sent", "IPIs"),
        ("tlb_misses", "TLB miss"),
        ("sfbuf_hits", "hits"),
        ("sfbuf_misses", "misses"),
        ("sfbuf_waits", "waits"),
        ("sfbuf_fails", "fails"),
        ("stale_accesses", "stale"),
        ("latent_stale_accesses", "latent"),
    ];

    /// <summary>
    /// One table per experiment: median throughput with its within-run CI and CV, the modelled
    /// mapping cost, and per-MiB (or per-op) counts, side by side; the legend under each.
    /// </summary>
    public static void PrintTables(IReadOnlyList<PaperRow> rows)
    {
        foreach (var group in rows.GroupBy(r => r.Experiment))
        {
            var first = group.First();
            bool lru = first.Experiment == "lru";
            var table = new Table().Border(TableBorder.Rounded)
                .Title($"[bold]{first.Experiment}[/] ({(lru ? "per op" : $"per {first.Unit}")}, cost profile {Markup.Escape(first.CostProfile)}, shootdowns by {first.Shootdown})")
                .AddColumn("strategy").AddColumn(new TableColumn("cpus").RightAligned());
            if (lru)
            {
                table.AddColumn(new TableColumn("working set").RightAligned()).AddColumn(new TableColumn("hit rate").RightAligned());
            }

            table.AddColumn(new TableColumn(first.Bytes > 0 ? "MiB/s" : "ops/s").RightAligned())
                .AddColumn(new TableColumn(WithinRun.Interval).RightAligned())
                .AddColumn(new TableColumn("CV").RightAligned())
                .AddColumn(new TableColumn($"model/{first.Unit}").RightAligned());
            foreach (var (_, header) in s_perUnit)
            {
                table.AddColumn(new TableColumn(header).RightAligned());
            }

            // Exposure, from the checked trials: windows per unit; in virtual time CPU·µs per unit and the longest.
            bool exposure = group.Any(r => r.ExposuresPerUnit is not null);
            bool exposureTimed = group.Any(r => r.ExposedCpuUsPerUnit is not null);
            if (exposure)
            {
                table.AddColumn(new TableColumn("exposed").RightAligned());
            }

            if (exposureTimed)
            {
                table.AddColumn(new TableColumn("exp CPU·µs").RightAligned()).AddColumn(new TableColumn("longest µs").RightAligned());
            }

            foreach (var row in group)
            {
                var cells = new List<string> { row.Strategy, CpusCell(row) };
                if (lru)
                {
                    cells.Add($"{row.Params["working_set_pages"]} ({JsonValues.Number(row.Params["fraction_of_pool"]):0.##}x)");
                    cells.Add(JsonValues.Number(row.Params["hit_rate"]) is { } rate ? $"{rate:P1}" : "n/a");
                }

                cells.Add(Number(row.Throughput));
                cells.Add(Interval(row.CiLow, row.CiHigh, Number));
                cells.Add(row.Samples.Count < 2 ? "-" : $"{row.Cv:P1}");
                cells.Add(Nanoseconds(row.ModelledNs));
                foreach (var (key, _) in s_perUnit)
                {
                    cells.Add(PerUnit(row, key));
                }

                if (exposure)
                {
                    cells.Add(Optional(row.ExposuresPerUnit));
                }

                if (exposureTimed)
                {
                    cells.Add(Optional(row.ExposedCpuUsPerUnit));
                    cells.Add(Optional(row.LongestExposureUs));
                }

                table.AddRow(cells.Select(c => new Text(c)));
            }

            if (group.Any(r => r.CiLow is not null))
            {
                table.Caption(Markup.Escape(WithinRun.Legend));
            }

            AnsiConsole.Write(table);
        }
    }

    /// <summary>One paired comparison: a strategy's throughput over the baseline's, round by round.</summary>
    public sealed record Speedup(string Experiment, string Point, int Cpus, string Strategy, SampleSummary Ratio, double BaselineIpis, double Ipis, bool Oversubscribed)
    {
        /// <summary>
        /// The within-run interval excludes 1.0: a speedup (or slowdown) within this run. Whether it
        /// is the strategy's, not the host's, the row's counts must say (<see cref="WithinRun"/>).
        /// </summary>
        public bool ExcludesOne => Ratio.ExcludesOne;
    }

    /// <summary>The paired speedups of every strategy over <see cref="Baseline"/>, per experiment point and CPU count.</summary>
    public static List<Speedup> Speedups(IReadOnlyList<PaperRow> rows)
    {
        var result = new List<Speedup>();
        foreach (var group in rows.Where(r => r.Experiment != "memcpy").GroupBy(r => (r.Experiment, r.Point, r.Cpus)))
        {
            var baseline = group.FirstOrDefault(r => r.Strategy == Baseline);
            if (baseline is null || baseline.Samples.Count == 0 || baseline.Samples.Any(s => s <= 0))
            {
                continue;
            }

            foreach (var row in group.Where(r => r.Strategy != Baseline && r.Samples.Count == baseline.Samples.Count))
            {
                result.Add(new Speedup(group.Key.Experiment, group.Key.Point, group.Key.Cpus, row.Strategy,
                    SampleSummary.OfRatios(row.Samples, baseline.Samples),
                    baseline["ipis_sent"] / baseline.Units, row["ipis_sent"] / row.Units, row.Oversubscribed));
            }
        }

        return result;
    }

    /// <summary>
    /// The paper's comparison: per experiment and CPU count, each strategy's paired speedup over
    /// <c>original</c> (median of the per-round ratios, with its within-run 95% CI; marked
    /// <see cref="WithinRun.HoldsOne"/> when the interval holds 1.0) and how far its IPIs fell.
    /// </summary>
    public static void PrintComparison(IReadOnlyList<PaperRow> rows)
    {
        var speedups = Speedups(rows);
        if (speedups.Count == 0)
        {
            return;
        }

        var strategies = speedups.Select(s => s.Strategy).Distinct().ToList();
        var table = new Table().Border(TableBorder.Rounded)
            .Title($"[bold]against the original mechanisms[/]: paired speedup, median [[{WithinRun.Interval}]]; IPIs per unit (and how far they fell from original's)")
            .AddColumn("experiment").AddColumn(new TableColumn("cpus").RightAligned())
            .AddColumn(new TableColumn($"{Baseline} IPIs").RightAligned());
        foreach (var s in strategies)
        {
            table.AddColumn(new TableColumn(Markup.Escape(s)).RightAligned());
        }

        foreach (var group in speedups.GroupBy(s => (s.Experiment, s.Point, s.Cpus)))
        {
            var cells = new List<string>
            {
                group.Key.Experiment + (group.Key.Point.Length > 0 ? $" [{group.Key.Point}]" : string.Empty),
                group.Key.Cpus.ToString(CultureInfo.InvariantCulture) + (group.First().Oversubscribed ? "*" : string.Empty),
                Fmt(group.First().BaselineIpis),
            };
            foreach (var strategy in strategies)
            {
                var s = group.FirstOrDefault(x => x.Strategy == strategy);
                cells.Add(s is null ? "-" : $"{SpeedupText(s, "\n")}\nIPIs {IpiChange(s.BaselineIpis, s.Ipis)}");
            }

            table.AddRow(cells.Select(c => new Text(c)));
        }

        if (speedups.Any(s => s.Ratio.CiLow is not null))
        {
            table.Caption(Markup.Escape(WithinRun.Legend));
        }

        AnsiConsole.Write(table);
        AnsiConsole.WriteLine($"speedups: per-round ratios of paired trials; {WithinRun.HoldsOneLegend} * = oversubscribed.");
    }

    /// <summary>How a row's shootdown delivery reads in tables and headers.</summary>
    public static string ShootdownText(string mechanism) => mechanism == PaperRow.BroadcastShootdown
        ? "broadcast (invalidation instructions and a completion wait, no handler on the targets)"
        : "ipi (an IPI per running target, serviced by a handler)";

    /// <summary>
    /// A Markdown summary: median throughput with its within-run CI, shootdowns/IPIs and the
    /// modelled cost per unit for every experiment, strategy and CPU count, the paired speedups over
    /// <c>original</c>, each table with <see cref="WithinRun.Legend"/> under it, then the LRU hit rates.
    /// </summary>
    public static void WriteMarkdown(string path, IReadOnlyList<PaperRow> rows)
    {
        var strategies = rows.Select(r => r.Strategy).Distinct().ToList();
        var cpus = rows.Select(r => r.Cpus).Distinct().Order().ToList();
        var text = new StringBuilder();
        if (rows.Any(r => r.Shootdown != PaperRow.IpiShootdown))
        {
            // IPI tables keep the form they always had; any other delivery is named above them.
            text.AppendLine(CultureInfo.InvariantCulture, $"Shootdowns: {string.Join(", ", rows.Select(r => ShootdownText(r.Shootdown)).Distinct())}.").AppendLine();
        }

        text.Append("| experiment | unit |");
        foreach (var c in cpus)
        {
            foreach (var s in strategies)
            {
                text.Append(CultureInfo.InvariantCulture, $" {s} {c}cpu{(rows.Any(r => r.Cpus == c && r.Oversubscribed) ? "*" : string.Empty)} |");
            }
        }

        text.AppendLine();
        text.Append("|---|---|").AppendLine(string.Concat(Enumerable.Repeat("---:|", cpus.Count * strategies.Count)));
        foreach (var group in rows.Where(r => r.Experiment != "lru").GroupBy(r => r.Experiment))
        {
            var first = group.First();
            text.Append(CultureInfo.InvariantCulture, $"| {group.Key} | {(first.Bytes > 0 ? "MiB/s" : "ops/s")} [{WithinRun.Interval}]<br>shootdowns / IPIs per {first.Unit}<br>modelled cost per {first.Unit} |");
            foreach (var c in cpus)
            {
                foreach (var s in strategies)
                {
                    var r = group.FirstOrDefault(x => x.Cpus == c && x.Strategy == s);
                    text.Append(r == null
                        ? " - |"
                        : string.Create(CultureInfo.InvariantCulture, $" {Number(r.Throughput)} {Interval(r.CiLow, r.CiHigh, Number)}<br>{Fmt(r["shootdowns"] / r.Units)} / {Fmt(r["ipis_sent"] / r.Units)}<br>{Nanoseconds(r.ModelledNs)} |"));
                }
            }

            text.AppendLine();
        }

        if (rows.Any(r => r.Experiment != "lru" && r.CiLow is not null))
        {
            text.AppendLine().AppendLine(CultureInfo.InvariantCulture, $"*{WithinRun.Legend}*");
        }

        var speedups = Speedups(rows).Where(s => s.Point.Length == 0).ToList();
        if (speedups.Count > 0)
        {
            var others = speedups.Select(s => s.Strategy).Distinct().ToList();
            text.AppendLine().AppendLine("| experiment | cpus | " + string.Join(" | ", others.Select(s => $"{s} over {Baseline} [{WithinRun.Interval}]")) + " |");
            text.AppendLine("|---|---:|" + string.Concat(Enumerable.Repeat("---:|", others.Count)));
            foreach (var group in speedups.GroupBy(s => (s.Experiment, s.Cpus)))
            {
                text.Append(CultureInfo.InvariantCulture, $"| {group.Key.Experiment} | {group.Key.Cpus}{(group.First().Oversubscribed ? "*" : string.Empty)} |");
                foreach (var strategy in others)
                {
                    var s = group.FirstOrDefault(x => x.Strategy == strategy);
                    text.Append(CultureInfo.InvariantCulture, $" {(s is null ? "-" : SpeedupText(s))} |");
                }

                text.AppendLine();
            }

            if (speedups.Any(s => s.Ratio.CiLow is not null))
            {
                text.AppendLine().AppendLine(CultureInfo.InvariantCulture, $"*{WithinRun.Legend} {WithinRun.HoldsOneLegend}*");
            }
        }

        var lru = rows.Where(r => r.Experiment == "lru" && JsonValues.Number(r.Params["hit_rate"]) is not null).ToList();
        if (lru.Count > 0)
        {
            text.AppendLine().AppendLine("| LRU: working set / nsfbufs | " + string.Join(" | ", lru.Select(r => (r.Strategy, r.Cpus)).Distinct().Select(k => $"{k.Strategy} {k.Cpus}cpu hits")) + " |");
            text.AppendLine("|---|" + string.Concat(Enumerable.Repeat("---:|", lru.Select(r => (r.Strategy, r.Cpus)).Distinct().Count())));
            foreach (var f in lru.Select(r => JsonValues.Number(r.Params["fraction_of_pool"])!.Value).Distinct().Order())
            {
                text.Append(CultureInfo.InvariantCulture, $"| {f:0.##} |");
                foreach (var key in lru.Select(r => (r.Strategy, r.Cpus)).Distinct())
                {
                    var r = lru.FirstOrDefault(x => x.Strategy == key.Strategy && x.Cpus == key.Cpus && JsonValues.Number(x.Params["fraction_of_pool"]) == f);
                    text.Append(r == null ? " - |" : string.Create(CultureInfo.InvariantCulture, $" {JsonValues.Number(r.Params["hit_rate"]):P1} |"));
                }

                text.AppendLine();
            }
        }

        File.WriteAllText(path, text.ToString());
    }

    public static void WriteJson(string path, IReadOnlyList<PaperRow> rows) =>
        File.WriteAllText(path, JsonSerializer.Serialize(rows, Json));

    public static void WriteCsv(string path, IReadOnlyList<PaperRow> rows)
    {
        var text = new StringBuilder();
        text.Append("experiment,point,strategy,cpus,cost_profile,params,seconds,bytes,ops,mb_per_s,ops_per_s,samples,ci_low,ci_high,cv,modelled_ns,model_profile,oversubscribed,")
            .AppendLine(string.Join(',', PaperRow.CounterKeys));
        foreach (var r in rows)
        {
            string parameters = string.Join(';', r.Params.Select(p => $"{p.Key}={Convert.ToString(p.Value, CultureInfo.InvariantCulture)}"));
            string samples = string.Join(';', r.Samples.Select(s => s.ToString("0.###", CultureInfo.InvariantCulture)));
            text.Append(CultureInfo.InvariantCulture, $"{r.Experiment},{r.Point},{r.Strategy},{r.Cpus},{r.CostProfile},\"{parameters}\",{r.Seconds:0.######},{r.Bytes},{r.Ops},{r.MbPerS:0.###},{r.OpsPerS:0.###},")
                .Append(CultureInfo.InvariantCulture, $"\"{samples}\",{r.CiLow:0.###},{r.CiHigh:0.###},{r.Cv:0.####},{r.ModelledNs:0.###},{r.ModelProfile},{(r.Oversubscribed ? "true" : "false")},")
                .AppendLine(string.Join(',', PaperRow.CounterKeys.Select(k => r[k].ToString(CultureInfo.InvariantCulture))));
        }

        File.WriteAllText(path, text.ToString());
    }

    /// <summary>A speedup as text: <c>2.05x [1.90, 2.21]</c>, marked <see cref="WithinRun.HoldsOne"/> when its within-run interval holds 1.0; <paramref name="separator"/> between the median and the interval.</summary>
    public static string SpeedupText(Speedup s, string separator = " ")
    {
        var r = s.Ratio;
        string median = r.Median.ToString("0.00", CultureInfo.InvariantCulture) + "x";
        if (r.CiLow is null)
        {
            return $"{median} (1 round, no interval)";
        }

        return $"{median}{separator}{Interval(r.CiLow, r.CiHigh, v => v.ToString("0.00", CultureInfo.InvariantCulture))}{(s.ExcludesOne ? string.Empty : $" {WithinRun.HoldsOne}")}";
    }

    /// <summary>A modelled cost in ns, µs or ms.</summary>
    public static string Nanoseconds(double ns) => ns switch
    {
        0 => "0",
        < 1_000 => ns.ToString("0.#", CultureInfo.InvariantCulture) + " ns",
        < 1_000_000 => (ns / 1e3).ToString("0.##", CultureInfo.InvariantCulture) + " µs",
        _ => (ns / 1e6).ToString("0.##", CultureInfo.InvariantCulture) + " ms",
    };

    private static string CpusCell(PaperRow row) => row.Cpus.ToString(CultureInfo.InvariantCulture) + (row.Oversubscribed ? "*" : string.Empty);

    private static string Interval(double? low, double? high, Func<double, string> format) =>
        low is { } l && high is { } h ? $"[{format(l)}, {format(h)}]" : "-";

    /// <summary>A figure as every report prints it: thousands separated from 100 up, two decimals at most below; "n/a" for NaN.</summary>
    public static string Number(double v) =>
        double.IsNaN(v) ? "n/a" : v.ToString(Math.Abs(v) >= 100 ? "N0" : "0.##", CultureInfo.InvariantCulture);

    private static string PerUnit(PaperRow row, string key)
    {
        double v = row[key] / row.Units;
        return v == 0 ? "0" : v >= 100 ? v.ToString("N0", CultureInfo.InvariantCulture) : v.ToString("0.###", CultureInfo.InvariantCulture);
    }

    /// <summary>A figure the row may lack (exposure without a checked trial): "-" then.</summary>
    private static string Optional(double? v) => v is { } x ? Fmt(x) : "-";

    private static string Fmt(double v) => v == 0 ? "0" : v >= 100 ? v.ToString("N0", CultureInfo.InvariantCulture) : v.ToString("0.##", CultureInfo.InvariantCulture);

    private static string IpiChange(double before, double after) =>
        before == 0 || after == 0 ? Fmt(after) : $"{Fmt(after)} ({((after / before) - 1).ToString("+0%;-0%;0%", CultureInfo.InvariantCulture)})";
}
