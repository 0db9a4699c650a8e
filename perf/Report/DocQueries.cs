using System.Globalization;
using Native.Perf.Paper;
using Native.Perf.Real;

namespace Native.Perf.Report;

/// <summary>
/// The value an inline mark quotes: <c>FILE KEY FIELD FORMAT</c>.
/// <list type="bullet">
/// <item>FILE: a <c>perf paper --json</c> or <c>perf real --json</c> file under <c>docs/results</c>;
/// <c>MEASURED~SIMULATED</c> for the comparison <c>perf real --simulated</c> prints;
/// <c>REAL+VIRTUAL</c> for the comparison of real and virtual time (<see cref="TimeValidation"/>).</item>
/// <item>KEY: <c>experiment/strategy/cpus</c> (plus <c>/point</c> for the LRU points) for one row,
/// or <c>all</c> for a figure of the whole run.</item>
/// <item>FIELD of a row: <c>throughput</c> (MiB/s or ops/s, the median), <c>ns_per_unit</c> and
/// <c>us_per_unit</c> (its inverse: the time per MiB or operation), <c>ci_low</c>,
/// <c>ci_high</c>, <c>cv</c> (a fraction), <c>modelled_ns</c> and <c>modelled_us</c> (per MiB or
/// operation), <c>per_unit:COUNTER</c>, <c>count:COUNTER</c>, <c>speedup</c>, <c>speedup_low</c>,
/// <c>speedup_high</c> (paired, over <c>original</c>), <c>hit_rate</c> (percent),
/// <c>param:NAME</c>; of a comparison row: <c>simulated</c>, <c>measured</c>, <c>factor</c>; of a
/// validation cell: <c>real</c>, <c>virtual</c> (the two speedups), <c>factor</c> (virtual / real).
/// FIELD of <c>all</c>: <c>rows</c>, <c>checked_trials</c>, <c>stale</c> (stale and latent stale
/// accesses summed), <c>cv_above:X</c> (rows whose CV exceeds X), <c>round_trip_p10</c>,
/// <c>round_trip_p50</c>, <c>round_trip_p90</c> (ns, over the rows' trials); of a comparison:
/// <c>cells</c>, <c>agree</c>; of a validation: <c>cells</c>, <c>agree</c>, <c>agree_percent</c>,
/// <c>best</c> (experiments and CPU counts), <c>best_same</c>.</item>
/// <item>FORMAT: a .NET numeric format (<c>N0</c>, <c>F2</c>, <c>0.##</c>), invariant culture.</item>
/// </list>
/// </summary>
internal static class DocQueries
{
    /// <summary>The formatted value of one mark's arguments.</summary>
    public static string Render(string args, DocResults results)
    {
        var parts = args.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length != 4)
        {
            throw new ArgumentException($"an inline mark takes FILE KEY FIELD FORMAT, not '{args}'");
        }

        double value = Value(parts[0], parts[1], parts[2], results);
        return value.ToString(parts[3], CultureInfo.InvariantCulture);
    }

    /// <summary>The value of FIELD for KEY in FILE.</summary>
    public static double Value(string file, string key, string field, DocResults results)
    {
        if (file.Split('~') is [var measuredFile, var simulatedFile])
        {
            var comparison = RealReport.Compare(results.Rows(measuredFile), results.Rows(simulatedFile));
            if (key == "all")
            {
                return field switch
                {
                    "cells" => comparison.Count,
                    "agree" => comparison.Count(c => c.Agrees),
                    _ => throw new ArgumentException($"unknown field '{field}' of a comparison"),
                };
            }

            var (experiment, strategy, cpus, _) = ParseKey(key);
            var cell = comparison.SingleOrDefault(c => c.Experiment == experiment && c.Strategy == strategy && c.Cpus == cpus)
                ?? throw new KeyNotFoundException($"no comparison cell {key}");
            return field switch
            {
                "simulated" => cell.Simulated,
                "measured" => cell.Measured.Ratio.Median,
                "factor" => cell.Factor,
                _ => throw new ArgumentException($"unknown field '{field}' of a comparison cell"),
            };
        }

        if (file.Split('+') is [var realFile, var virtualFile])
        {
            return Validation(TimeValidation.Compare(results.Rows(realFile), results.Rows(virtualFile)), key, field);
        }

        var rows = results.Rows(file);
        return key == "all" ? Whole(rows, field) : Row(rows, key, field);
    }

    private static double Validation(TimeValidation.Comparison comparison, string key, string field)
    {
        if (key == "all")
        {
            return field switch
            {
                "cells" => comparison.Cells.Count,
                "agree" => comparison.Agreeing,
                "agree_percent" => 100 * comparison.AgreeingShare,
                "best" => comparison.Bests.Count,
                "best_same" => comparison.SameBest,
                _ => throw new ArgumentException($"unknown field '{field}' of a validation"),
            };
        }

        var (experiment, strategy, cpus, point) = ParseKey(key);
        var cell = comparison.Cells.SingleOrDefault(c => c.Experiment == experiment && c.Strategy == strategy && c.Cpus == cpus && c.Point == point)
            ?? throw new KeyNotFoundException($"no validation cell {key}");
        return field switch
        {
            "real" => cell.Real.Ratio.Median,
            "virtual" => cell.Virtual,
            "factor" => cell.Factor,
            _ => throw new ArgumentException($"unknown field '{field}' of a validation cell"),
        };
    }

    private static double Row(IReadOnlyList<PaperRow> rows, string key, string field)
    {
        var (experiment, strategy, cpus, point) = ParseKey(key);
        var row = rows.SingleOrDefault(r => r.Experiment == experiment && r.Strategy == strategy && r.Cpus == cpus && r.Point == point)
            ?? throw new KeyNotFoundException($"no row {key}");
        switch (field)
        {
            case "throughput":
                return row.Throughput;
            case "ci_low":
                return row.CiLow ?? throw new KeyNotFoundException($"row {key} has no CI");
            case "ci_high":
                return row.CiHigh ?? throw new KeyNotFoundException($"row {key} has no CI");
            case "cv":
                return row.Cv;
            case "ns_per_unit":
                return 1e9 / row.Throughput;
            case "us_per_unit":
                return 1e6 / row.Throughput;
            case "modelled_ns":
                return row.ModelledNs;
            case "modelled_us":
                return row.ModelledNs / 1000;
            case "hit_rate":
                return 100.0 * (JsonValues.Number(row.Params.GetValueOrDefault("hit_rate")) ?? throw new KeyNotFoundException($"row {key} has no hit rate"));
            case "speedup" or "speedup_low" or "speedup_high":
                var speedup = PaperReport.Speedups(rows).SingleOrDefault(s => s.Experiment == experiment && s.Strategy == strategy && s.Cpus == cpus && s.Point == point)
                    ?? throw new KeyNotFoundException($"no paired speedup for {key}");
                return field switch
                {
                    "speedup" => speedup.Ratio.Median,
                    "speedup_low" => speedup.Ratio.CiLow ?? throw new KeyNotFoundException($"{key}'s speedup has no CI"),
                    _ => speedup.Ratio.CiHigh ?? throw new KeyNotFoundException($"{key}'s speedup has no CI"),
                };
        }

        if (field.StartsWith("over:", StringComparison.Ordinal))
        {
            // Time per unit over a reference strategy's in the same cell: its throughput over this row's.
            string reference = field["over:".Length..];
            var of = rows.SingleOrDefault(r => r.Experiment == experiment && r.Strategy == reference && r.Cpus == cpus && r.Point == point)
                ?? throw new KeyNotFoundException($"no row {experiment}/{reference}/{cpus} to compare {key} with");
            return of.Throughput / row.Throughput;
        }

        if (field is "exposures_per_unit" or "exposed_us" or "longest_exposure_us")
        {
            return (field switch
            {
                "exposures_per_unit" => row.ExposuresPerUnit,
                "exposed_us" => row.ExposedCpuUsPerUnit,
                _ => row.LongestExposureUs,
            }) ?? throw new KeyNotFoundException($"row {key} has no {field} (no checked trial measured it)");
        }

        if (field.StartsWith("per_unit:", StringComparison.Ordinal))
        {
            return Counter(row, field["per_unit:".Length..], key) / row.Units;
        }

        if (field.StartsWith("count:", StringComparison.Ordinal))
        {
            return Counter(row, field["count:".Length..], key);
        }

        if (field.StartsWith("param:", StringComparison.Ordinal))
        {
            string name = field["param:".Length..];
            return JsonValues.Number(row.Params.GetValueOrDefault(name)) ?? throw new KeyNotFoundException($"row {key} has no numeric parameter {name}");
        }

        throw new ArgumentException($"unknown field '{field}' of a row");
    }

    private static double Whole(IReadOnlyList<PaperRow> rows, string field)
    {
        switch (field)
        {
            case "rows":
                return rows.Count;
            case "checked_trials":
                return rows.Sum(r => r.CheckedTrials);
            case "stale":
                return rows.Sum(r => r["stale_accesses"] + r["latent_stale_accesses"]);
            case "host_ns_per_step":
                long steps = rows.Sum(r => r.SchedulingSteps ?? 0);
                return steps > 0 ? rows.Sum(r => r.HostSeconds) * 1e9 / steps : throw new KeyNotFoundException("no row records scheduling steps (not a virtual-time run)");
            case "max_cpus":
                return rows.Max(r => r.Cpus);
            case "round_trip_p10" or "round_trip_p50" or "round_trip_p90":
                var trips = rows.Select(r => JsonValues.Number(r.Params.GetValueOrDefault("round_trip_ns"))).OfType<double>().Order().ToList();
                if (trips.Count == 0)
                {
                    throw new KeyNotFoundException("no row records round_trip_ns");
                }

                return Percentile(trips, field[^2..] switch { "10" => 0.1, "50" => 0.5, _ => 0.9 });
        }

        if (field.StartsWith("cv_above:", StringComparison.Ordinal))
        {
            double bound = double.Parse(field["cv_above:".Length..], CultureInfo.InvariantCulture);
            return rows.Count(r => r.Samples.Count >= 2 && r.Cv > bound);
        }

        throw new ArgumentException($"unknown field '{field}' of a whole run");
    }

    /// <summary>Linear interpolation between the closest ranks of sorted values.</summary>
    public static double Percentile(IReadOnlyList<double> sorted, double p)
    {
        double rank = p * (sorted.Count - 1);
        int low = (int)Math.Floor(rank);
        int high = Math.Min(low + 1, sorted.Count - 1);
        return sorted[low] + ((rank - low) * (sorted[high] - sorted[low]));
    }

    private static long Counter(PaperRow row, string counter, string key) =>
        row.Counters.TryGetValue(counter, out long value) ? value : throw new KeyNotFoundException($"row {key} has no counter {counter}");

    private static (string Experiment, string Strategy, int Cpus, string Point) ParseKey(string key)
    {
        var parts = key.Split('/');
        if (parts.Length is not (3 or 4) || !int.TryParse(parts[2], CultureInfo.InvariantCulture, out int cpus))
        {
            throw new ArgumentException($"a row key is experiment/strategy/cpus[/point], not '{key}'");
        }

        return (parts[0], parts[1], cpus, parts.Length == 4 ? parts[3] : string.Empty);
    }
}
