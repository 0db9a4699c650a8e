using System.Globalization;
using System.Text;
using System.Text.Json;
using Native.SfBufNative;
using Spectre.Console;

namespace Native.Perf.Paper;

/// <summary>Renders <c>perf paper</c>'s rows: the terminal tables, the paper comparison, the checks, JSON and CSV.</summary>
internal static class PaperReport
{
    private static readonly JsonSerializerOptions s_json = new() { WriteIndented = true };

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
    ];

    /// <summary>One table per experiment: throughput and per-MB (or per-op) counts, side by side.</summary>
    public static void PrintTables(IReadOnlyList<PaperRow> rows)
    {
        foreach (var group in rows.GroupBy(r => r.Experiment))
        {
            var first = group.First();
            bool lru = first.Experiment == "lru";
            var table = new Table().Border(TableBorder.Rounded)
                .Title($"[bold]{first.Experiment}[/] ({(lru ? "per op" : $"per {first.Unit}")}, cost profile {Markup.Escape(first.CostProfile)})")
                .AddColumn("strategy").AddColumn(new TableColumn("cpus").RightAligned());
            if (lru)
            {
                table.AddColumn(new TableColumn("working set").RightAligned()).AddColumn(new TableColumn("hit rate").RightAligned());
            }

            table.AddColumn(new TableColumn(first.Bytes > 0 ? "MB/s" : "ops/s").RightAligned());
            foreach (var (_, header) in s_perUnit)
            {
                table.AddColumn(new TableColumn(header).RightAligned());
            }

            foreach (var row in group)
            {
                var cells = new List<string> { row.Strategy, row.Cpus.ToString(CultureInfo.InvariantCulture) };
                if (lru)
                {
                    cells.Add($"{row.Params["working_set_pages"]} ({(double)row.Params["fraction_of_pool"]:0.##}x)");
                    cells.Add(row.Params["hit_rate"] is double rate ? $"{rate:P1}" : "n/a");
                }

                cells.Add(row.Bytes > 0 ? row.MbPerS.ToString("N0", CultureInfo.InvariantCulture) : row.OpsPerS.ToString("N0", CultureInfo.InvariantCulture));
                foreach (var (key, _) in s_perUnit)
                {
                    cells.Add(PerUnit(row, key));
                }

                table.AddRow(cells.Select(c => new Text(c)));
            }

            AnsiConsole.Write(table);
        }
    }

    /// <summary>
    /// The paper's comparison, one column per strategy: speedup over <c>original</c> and IPIs per
    /// MiB (or per operation), per experiment and CPU count.
    /// </summary>
    public static void PrintComparison(IReadOnlyList<PaperRow> rows)
    {
        var strategies = SfBufMapper.StrategyNames.Where(s => s != SfBufMapper.Original && rows.Any(r => r.Strategy == s)).ToList();
        var table = new Table().Border(TableBorder.Rounded).Title("[bold]against the original mechanisms[/]: speedup / IPIs per unit (original's IPIs per unit in its column)")
            .AddColumn("experiment").AddColumn(new TableColumn("cpus").RightAligned())
            .AddColumn(new TableColumn("original IPIs").RightAligned());
        foreach (var s in strategies)
        {
            table.AddColumn(new TableColumn(Markup.Escape(s)).RightAligned());
        }

        foreach (var group in rows.Where(r => r.Experiment is not ("lru" or "memcpy")).GroupBy(r => (r.Experiment, r.Cpus)))
        {
            var original = group.FirstOrDefault(r => r.Strategy == SfBufMapper.Original);
            if (original is null)
            {
                continue;
            }

            var cells = new List<string>
            {
                group.Key.Experiment,
                group.Key.Cpus.ToString(CultureInfo.InvariantCulture),
                Fmt(original["ipis_sent"] / original.Units),
            };
            foreach (var s in strategies)
            {
                var row = group.FirstOrDefault(r => r.Strategy == s);
                cells.Add(row is null ? "-" : $"{Speedup(row, original)} / {Fmt(row["ipis_sent"] / row.Units)}");
            }

            table.AddRow(cells.Select(c => new Text(c)));
        }

        AnsiConsole.Write(table);
    }

    /// <summary>
    /// The invariants every run must show; returns the violations (empty when all hold).
    /// </summary>
    public static List<string> Check(IReadOnlyList<PaperRow> rows)
    {
        var problems = new List<string>();
        foreach (var r in rows)
        {
            string where = $"{r.Experiment}/{r.Strategy}/{r.Cpus}cpu";
            if (r["stale_accesses"] != 0)
            {
                problems.Add($"{where}: {r["stale_accesses"]} stale accesses");
            }

            if (r.Strategy == SfBufMapper.Amd64 && (r["pte_writes"] != 0 || r["shootdowns"] != 0))
            {
                problems.Add($"{where}: the direct map wrote {r["pte_writes"]} kernel PTEs and sent {r["shootdowns"]} shootdowns");
            }

            if (r.Strategy == SfBufMapper.I386 && r.Experiment is "pipe" or "pipe-huge" or "md-seq" or "md-rand" or "ptrace-word" or "ptrace-page"
                && r["ipis_sent"] != 0)
            {
                problems.Add($"{where}: private mappings sent {r["ipis_sent"]} IPIs");
            }

            if (r.Strategy == SfBufMapper.Original && r.Cpus > 1)
            {
                long mappings = r.Experiment is "pipe" or "pipe-huge" ? Convert.ToInt64(r.Params["direct_writes"], CultureInfo.InvariantCulture) : r["sfbuf_misses"];
                if (r["shootdowns"] < 2 * mappings)
                {
                    problems.Add($"{where}: {r["shootdowns"]} shootdown rounds for {mappings} mappings (expected at least 2 each)");
                }
            }
        }

        foreach (var r in rows.Where(r => SfBufMapper.StrategyNames.Contains(r.Strategy) && SfBufMapper.Describe(r.Strategy).IsPeer))
        {
            CheckPeer(r, problems);
        }

        foreach (var cpus in rows.Where(r => r.Experiment == "sendfile-hot").Select(r => r.Cpus).Distinct())
        {
            var i386 = rows.FirstOrDefault(r => r.Experiment == "sendfile-hot" && r.Cpus == cpus && r.Strategy == SfBufMapper.I386);
            var original = rows.FirstOrDefault(r => r.Experiment == "sendfile-hot" && r.Cpus == cpus && r.Strategy == SfBufMapper.Original);
            if (i386 != null && original != null && i386["shootdowns"] / i386.Units > 0.01 * (original["shootdowns"] / original.Units))
            {
                problems.Add($"sendfile-hot/{cpus}cpu: sfbuf-i386 sent more than 1% of original's shootdowns per MB");
            }
        }

        return problems;
    }

    /// <summary>Experiments whose sf_buf users are all private (<see cref="SfBufFlags.CpuPrivate"/>).</summary>
    public static bool IsPrivateOnly(string experiment) => experiment is "pipe" or "pipe-huge" or "md-seq" or "md-rand" or "ptrace-word" or "ptrace-page" or "lru";

    /// <summary>Experiments with shared sf_buf users (sendfile, the vnode pager, the exec header).</summary>
    public static bool HasSharedUsers(string experiment) => experiment is "sendfile-hot" or "sendfile-cold" or "vnode" or "exec";

    /// <summary>
    /// The counts each peer's algorithm fixes, checked on one row:
    /// <list type="bullet">
    /// <item><c>netbsd-emap</c>: no IPI and no shootdown anywhere (consumers flush their own TLB).</item>
    /// <item><c>linux-kmap-atomic</c>, <c>linux-kmap-local</c>, <c>freebsd-quick</c>: none for private users.</item>
    /// <item>the kmap pool: at most one global flush per wrap of the clock hand, and between two
    /// flushes at least <c>LAST_PKMAP</c> minus the slots in use new mappings, so
    /// <c>(flushes - 1) x (LAST_PKMAP - peak in use) &lt;= new mappings</c>.</item>
    /// <item><c>dragonfly-lwbuf</c>: every shootdown is an <c>lwbuf_set_global</c>, one per shared
    /// allocation on SMP; private users none.</item>
    /// <item><c>linux-kmap-local</c>: every map saved at a switch-out is restored at the switch-in.</item>
    /// </list>
    /// </summary>
    public static void CheckPeer(PaperRow r, List<string> problems)
    {
        ArgumentNullException.ThrowIfNull(r);
        ArgumentNullException.ThrowIfNull(problems);
        string where = $"{r.Experiment}/{r.Strategy}/{r.Cpus}cpu";
        bool perCpuPrivate = r.Strategy is SfBufMapper.LinuxKmapAtomic or SfBufMapper.LinuxKmapLocal or SfBufMapper.FreeBsdQuick;
        if ((r.Strategy == SfBufMapper.NetBsdEmap || (perCpuPrivate && IsPrivateOnly(r.Experiment))) && (r["ipis_sent"] != 0 || r["shootdowns"] != 0))
        {
            problems.Add($"{where}: {r["shootdowns"]} shootdowns and {r["ipis_sent"]} IPIs where the algorithm sends none");
        }

        if (r.Counters.TryGetValue("pkmap.global_flushes", out long flushes))
        {
            long lastPkmap = r["pkmap.last_pkmap"], peak = r["pkmap.peak_in_use"], newMappings = r["pkmap.new_mappings"];
            if (flushes > r["pkmap.wraps"])
            {
                problems.Add($"{where}: {flushes} global flushes in {r["pkmap.wraps"]} wraps of the clock hand");
            }

            if (peak < lastPkmap && flushes > 1 && (flushes - 1) * (lastPkmap - peak) > newMappings)
            {
                problems.Add($"{where}: {flushes} global flushes for {newMappings} new mappings (LAST_PKMAP {lastPkmap}, at most {peak} in use)");
            }
        }

        if (r.Strategy == SfBufMapper.DragonFlyLwbuf)
        {
            long syncs = r["lwbuf.set_global_syncs"];
            if (r["shootdowns"] != syncs)
            {
                problems.Add($"{where}: {r["shootdowns"]} shootdowns but {syncs} lwbuf_set_global invalidations");
            }

            if (r.Cpus > 1 && syncs != r["lwbuf.shared_allocs"])
            {
                problems.Add($"{where}: {syncs} cross-CPU invalidations for {r["lwbuf.shared_allocs"]} shared allocations (expected one each)");
            }

            if (IsPrivateOnly(r.Experiment) && syncs != 0)
            {
                problems.Add($"{where}: private users caused {syncs} cross-CPU invalidations");
            }
        }

        if (r.Counters.TryGetValue("kmap_local.saves", out long saves) && saves != r["kmap_local.restores"])
        {
            problems.Add($"{where}: {saves} kmap_local maps saved at switch-out, {r["kmap_local.restores"]} restored");
        }
    }

    /// <summary>
    /// A Markdown summary: throughput and shootdowns/IPIs per unit for every experiment, strategy
    /// and CPU count (the README's results table), then the LRU hit rates.
    /// </summary>
    public static void WriteMarkdown(string path, IReadOnlyList<PaperRow> rows)
    {
        var strategies = rows.Select(r => r.Strategy).Distinct().ToList();
        var cpus = rows.Select(r => r.Cpus).Distinct().Order().ToList();
        var text = new StringBuilder();
        text.Append("| experiment | unit |");
        foreach (var c in cpus)
        {
            foreach (var s in strategies)
            {
                text.Append(CultureInfo.InvariantCulture, $" {s} {c}cpu |");
            }
        }

        text.AppendLine();
        text.Append("|---|---|").AppendLine(string.Concat(Enumerable.Repeat("---:|", cpus.Count * strategies.Count)));
        foreach (var group in rows.Where(r => r.Experiment != "lru").GroupBy(r => r.Experiment))
        {
            var first = group.First();
            text.Append(CultureInfo.InvariantCulture, $"| {group.Key} | {(first.Bytes > 0 ? "MiB/s" : "ops/s")}<br>shootdowns / IPIs per {first.Unit} |");
            foreach (var c in cpus)
            {
                foreach (var s in strategies)
                {
                    var r = group.FirstOrDefault(x => x.Cpus == c && x.Strategy == s);
                    text.Append(r == null
                        ? " - |"
                        : string.Create(CultureInfo.InvariantCulture, $" {Throughput(r):N0}<br>{Fmt(r["shootdowns"] / r.Units)} / {Fmt(r["ipis_sent"] / r.Units)} |"));
                }
            }

            text.AppendLine();
        }

        var lru = rows.Where(r => r.Experiment == "lru" && r.Params["hit_rate"] is double).ToList();
        if (lru.Count > 0)
        {
            text.AppendLine().AppendLine("| LRU: working set / nsfbufs | " + string.Join(" | ", lru.Select(r => (r.Strategy, r.Cpus)).Distinct().Select(k => $"{k.Strategy} {k.Cpus}cpu hits")) + " |");
            text.AppendLine("|---|" + string.Concat(Enumerable.Repeat("---:|", lru.Select(r => (r.Strategy, r.Cpus)).Distinct().Count())));
            foreach (var f in lru.Select(r => (double)r.Params["fraction_of_pool"]).Distinct().Order())
            {
                text.Append(CultureInfo.InvariantCulture, $"| {f:0.##} |");
                foreach (var key in lru.Select(r => (r.Strategy, r.Cpus)).Distinct())
                {
                    var r = lru.FirstOrDefault(x => x.Strategy == key.Strategy && x.Cpus == key.Cpus && (double)x.Params["fraction_of_pool"] == f);
                    text.Append(r == null ? " - |" : string.Create(CultureInfo.InvariantCulture, $" {(double)r.Params["hit_rate"]:P1} |"));
                }

                text.AppendLine();
            }
        }

        File.WriteAllText(path, text.ToString());
    }

    public static void WriteJson(string path, IReadOnlyList<PaperRow> rows) =>
        File.WriteAllText(path, JsonSerializer.Serialize(rows, s_json));

    public static void WriteCsv(string path, IReadOnlyList<PaperRow> rows)
    {
        var text = new StringBuilder();
        text.Append("experiment,strategy,cpus,cost_profile,params,seconds,bytes,ops,mb_per_s,ops_per_s,")
            .AppendLine(string.Join(',', PaperRow.CounterKeys));
        foreach (var r in rows)
        {
            string parameters = string.Join(';', r.Params.Select(p => $"{p.Key}={Convert.ToString(p.Value, CultureInfo.InvariantCulture)}"));
            text.Append(CultureInfo.InvariantCulture, $"{r.Experiment},{r.Strategy},{r.Cpus},{r.CostProfile},\"{parameters}\",{r.Seconds:0.######},{r.Bytes},{r.Ops},{r.MbPerS:0.###},{r.OpsPerS:0.###},")
                .AppendLine(string.Join(',', PaperRow.CounterKeys.Select(k => r[k].ToString(CultureInfo.InvariantCulture))));
        }

        File.WriteAllText(path, text.ToString());
    }

    private static string PerUnit(PaperRow row, string key)
    {
        double v = row[key] / row.Units;
        return v == 0 ? "0" : v >= 100 ? v.ToString("N0", CultureInfo.InvariantCulture) : v.ToString("0.###", CultureInfo.InvariantCulture);
    }

    private static string Fmt(double v) => v == 0 ? "0" : v >= 100 ? v.ToString("N0", CultureInfo.InvariantCulture) : v.ToString("0.##", CultureInfo.InvariantCulture);

    private static double Throughput(PaperRow r) => r.Bytes > 0 ? r.MbPerS : r.OpsPerS;

    private static string Speedup(PaperRow? candidate, PaperRow original) =>
        candidate is null || Throughput(original) <= 0 ? "-" : $"{Throughput(candidate) / Throughput(original):0.00}x";
}
