using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Native.Interop;
using Native.PageTable;
using Native.Perf.Stats;

namespace Native.Perf.Paper;

/// <summary>What <c>perf paper</c> was asked to run.</summary>
/// <param name="Experiments">Experiment names, expanded, in canonical order.</param>
/// <param name="Strategies">Strategy names.</param>
/// <param name="CpuCounts">CPU counts.</param>
/// <param name="Cost">The profile the machine charges.</param>
/// <param name="Model">The profile the modelled mapping cost is priced with.</param>
/// <param name="Size">Trial size of the timed trials.</param>
/// <param name="Rounds">Timed trials per cell (<c>--repeat</c>).</param>
/// <param name="CheckedTiming">Timed trials run with the stale-translation oracle on (<c>--checked</c>).</param>
/// <param name="Backend">The machine backend: the simulation, or the host's MMU (<c>perf real</c>).</param>
/// <param name="SharedHost">Other processes keep the host's cores busy: the simulated machines run as oversubscribed, with unpinned threads (<c>--host</c>).</param>
/// <param name="Time">Real or virtual time (<c>--time</c>).</param>
/// <param name="Quantum">Virtual time's quantum (<c>--quantum</c>); null for the default.</param>
/// <param name="Loads">The load forms (<c>--load</c>); null for the paper's.</param>
/// <param name="Shootdown">How the machine delivers shootdowns (<c>--shootdown</c>).</param>
internal sealed record PaperPlan(
    string[] Experiments,
    string[] Strategies,
    int[] CpuCounts,
    CostModel Cost,
    CostModel Model,
    TrialSize Size,
    int Rounds,
    bool CheckedTiming,
    MachineBackend Backend = MachineBackend.Simulated,
    bool SharedHost = false,
    MachineTime Time = MachineTime.Real,
    TimeSpan? Quantum = null,
    LoadForm[]? Loads = null,
    ShootdownMechanism Shootdown = ShootdownMechanism.Ipi)
{
    /// <summary>True in virtual time: one deterministic round, no interval.</summary>
    public bool IsVirtual => Time == MachineTime.Virtual;

    /// <summary>The load forms to run (the paper's by default).</summary>
    public LoadForm[] LoadForms => Loads ?? [LoadForm.Paper];

    /// <summary>
    /// One verification trial per cell, checked, at the check size; not needed when the timed
    /// trials are checked, nor on the host backend, which has no oracle to verify with (its
    /// trials' relations are checked in every timed trial).
    /// </summary>
    public bool Verify => !CheckedTiming && Backend == MachineBackend.Simulated;

    /// <summary>
    /// The cells, grouped so that each (experiment, CPU count)'s strategies are adjacent. Asked for
    /// its every-CPU form, an experiment without a separate one runs its paper form once, which
    /// already keeps every CPU it uses busy (md, exec, ptrace, vnode, build) or is a one-thread
    /// microbenchmark (lru, memcpy).
    /// </summary>
    public IReadOnlyList<Cell> Cells() =>
        [.. from e in Experiments
            from l in LoadForms.Select(l => Paper.Experiments.Get(e).HasAllCpuForm ? l : LoadForm.Paper).Distinct()
            from c in CpuCounts from s in Strategies select new Cell(e, s, c, l)];
}

/// <summary>One cell: an experiment (in one load form) with one strategy on one CPU count.</summary>
internal sealed record Cell(string Experiment, string Strategy, int Cpus, LoadForm Load = LoadForm.Paper)
{
    /// <summary>The cells compared with each other: the strategies of one experiment at one CPU count.</summary>
    public (string, int, LoadForm) Group => (Experiment, Cpus, Load);

    public override string ToString() => $"{Experiment}{(Load == LoadForm.All ? " (all CPUs)" : string.Empty)} {Strategy} {Cpus}cpu";
}

/// <summary>Everything one <c>perf paper</c> run produced.</summary>
internal sealed record PaperRun(
    List<PaperRow> Rows,
    List<Measurement> Timed,
    List<Measurement> Verification,
    List<string> Problems,
    List<string> Warnings,
    TimeSpan Elapsed);

/// <summary>
/// Runs <c>perf paper</c>'s plan: one checked verification trial per cell at the check size,
/// then <see cref="PaperPlan.Rounds"/> rounds of timed trials with the strategies interleaved
/// (<see cref="RepeatedTrials"/>), each round in a fresh process unless asked otherwise, so that
/// whatever a process fixes at start-up (where its memory and code landed) varies between rounds
/// and shows in the CIs instead of biasing every trial of a run alike. Then it aggregates the
/// rows with their statistics and checks every trial's exact relations.
/// </summary>
internal static class PaperRunner
{
    /// <summary>A run whose cross-core round trips differ by more than this factor is warned about.</summary>
    public const double RoundTripDrift = 1.5;

    private static int s_prejitted;

    /// <summary>Host cores this process may run on.</summary>
    public static int HostCores => HostCpu.IsPinningAvailable ? HostCpu.AllowedCpus().Length : Environment.ProcessorCount;

    /// <summary>Runs the plan; <paramref name="progress"/> hears of every finished trial.</summary>
    public static PaperRun Run(PaperPlan plan, bool childProcesses, Action<string>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        var cells = plan.Cells();
        if (!childProcesses)
        {
            Prejit();
        }

        var load = HostLoad.Start(HostCores);
        var verification = new List<Measurement>();
        if (plan.Verify)
        {
            foreach (var cell in cells)
            {
                verification.AddRange(RunTrial(plan, cell, TrialSize.Check, isChecked: true));
                progress?.Invoke($"{cell} (check)");
            }
        }

        var timed = new List<Measurement>();
        for (int round = 0; round < plan.Rounds; round++)
        {
            var trials = childProcesses
                ? RunRoundInChild(plan, round, progress)
                : RunRound(plan, round, progress);
            timed.AddRange(trials.SelectMany(t => t));
        }

        var problems = verification.Concat(timed).SelectMany(PaperChecks.Check).ToList();
        var rows = Aggregate(plan, timed, verification);
        var warnings = Warnings(plan, rows, timed.Concat(verification), load);
        return new PaperRun(rows, timed, verification, problems, warnings, clock.Elapsed);
    }

    /// <summary>One round in this process: every cell once, strategies rotated by the round.</summary>
    public static List<IReadOnlyList<Measurement>> RunRound(PaperPlan plan, int round, Action<string>? progress = null)
    {
        var trials = new List<IReadOnlyList<Measurement>>();
        foreach (var cell in RepeatedTrials.RoundOrder(plan.Cells(), c => c.Group, round))
        {
            trials.Add(RunTrial(plan, cell, plan.Size, plan.CheckedTiming));
            progress?.Invoke($"{cell} (round {round + 1})");
        }

        return trials;
    }

    /// <summary>One trial of one cell on a freshly booted machine.</summary>
    public static IReadOnlyList<Measurement> RunTrial(PaperPlan plan, Cell cell, TrialSize size, bool isChecked)
    {
        var trial = new Trial(plan.Cost, cell.Strategy, cell.Cpus, size, isChecked, plan.Model, plan.Backend, plan.SharedHost, plan.Time, plan.Quantum, cell.Load, plan.Shootdown);
        IReadOnlyList<Measurement> result;
        try
        {
            result = Experiments.Run(cell.Experiment, trial);
        }
        catch (Exception ex)
        {
            // Not disposed: after a failure its threads may still be blocked.
            throw new ExperimentFailedException($"{cell.Experiment} with {cell.Strategy} on {cell.Cpus} CPU(s){(isChecked ? " (checked)" : string.Empty)} failed: {ex.Message}", ex);
        }

        trial.Dispose();
        return result;
    }

    /// <summary>The arguments of <c>perf paper-round</c> that runs round <paramref name="round"/> of <paramref name="plan"/>.</summary>
    public static List<string> RoundArguments(PaperPlan plan, int round)
    {
        var args = new List<string> { "paper-round", "--round", round.ToString(CultureInfo.InvariantCulture), "--size", plan.Size.ToString().ToLowerInvariant() };
        args.Add("--experiments");
        args.AddRange(plan.Experiments);
        args.Add("--strategies");
        args.AddRange(plan.Strategies);
        args.Add("--cpus");
        args.AddRange(plan.CpuCounts.Select(c => c.ToString(CultureInfo.InvariantCulture)));
        args.AddRange(["--cost", plan.Cost.Name, "--model", plan.Model.Name]);
        if (plan.CheckedTiming)
        {
            args.Add("--checked");
        }

        if (plan.Backend != MachineBackend.Simulated)
        {
            args.AddRange(["--backend", plan.Backend.ToString().ToLowerInvariant()]);
        }

        if (plan.Shootdown != ShootdownMechanism.Ipi)
        {
            args.AddRange(["--shootdown", plan.Shootdown.ToString().ToLowerInvariant()]);
        }

        args.AddRange(["--host", (plan.SharedHost ? HostMode.Shared : HostMode.Dedicated).ToString().ToLowerInvariant()]);
        args.Add("--load");
        args.AddRange(plan.LoadForms.Select(l => l.ToString().ToLowerInvariant()));

        return args;
    }

    /// <summary>Runs one round in a child <c>perf</c> process, which prints one JSON line per trial.</summary>
    private static List<IReadOnlyList<Measurement>> RunRoundInChild(PaperPlan plan, int round, Action<string>? progress)
    {
        // This perf executable, or `dotnet perf.dll` when running under dotnet or another host (tests).
        string self = Environment.ProcessPath ?? "dotnet";
        bool apphost = Path.GetFileNameWithoutExtension(self) == "perf";
        var start = new ProcessStartInfo(apphost ? self : Path.GetFileNameWithoutExtension(self) == "dotnet" ? self : "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (!apphost)
        {
            start.ArgumentList.Add(typeof(PaperRunner).Assembly.Location);
        }

        foreach (var arg in RoundArguments(plan, round))
        {
            start.ArgumentList.Add(arg);
        }

        using var child = Process.Start(start) ?? throw new InvalidOperationException("the round process did not start");
        var stderr = child.StandardError.ReadToEndAsync();
        var trials = new List<IReadOnlyList<Measurement>>();
        while (child.StandardOutput.ReadLine() is { } line)
        {
            var trial = ParseTrial(line);
            trials.Add(trial);
            var first = trial[0];
            progress?.Invoke($"{first.Experiment} {first.Strategy} {first.Cpus}cpu (round {round + 1})");
        }

        child.WaitForExit();
        if (child.ExitCode != 0)
        {
            throw new ExperimentFailedException($"round {round + 1} failed in its process (exit code {child.ExitCode}):{Environment.NewLine}{stderr.Result.Trim()}", null);
        }

        return trials;
    }

    /// <summary>
    /// Compiles the machine, the kernel and the experiments before a round process measures
    /// anything. Code is compiled fully at its first call (tiered compilation is off), so without
    /// this the first trial of each path in every round would pay for the compiler inside its
    /// measurement window. Once per process.
    /// </summary>
    public static void Prejit()
    {
        if (Interlocked.Exchange(ref s_prejitted, 1) != 0)
        {
            return;
        }

        var assemblies = new[] { typeof(Machine).Assembly, typeof(Native.SfBufNative.SfBufMapper).Assembly, typeof(PaperRunner).Assembly };
        foreach (var type in assemblies.SelectMany(a => a.GetTypes()))
        {
            if (type.ContainsGenericParameters || (type.Assembly == typeof(PaperRunner).Assembly && type.Namespace != typeof(PaperRunner).Namespace))
            {
                continue;
            }

            foreach (var method in type.GetMethods(BindingFlags.DeclaredOnly | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static)
                .Cast<MethodBase>().Concat(type.GetConstructors(BindingFlags.DeclaredOnly | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance)))
            {
                if (method.IsAbstract || method.ContainsGenericParameters || (method.MethodImplementationFlags & MethodImplAttributes.InternalCall) != 0)
                {
                    continue;
                }

                try
                {
                    RuntimeHelpers.PrepareMethod(method.MethodHandle);
                }
                catch (Exception ex) when (ex is ArgumentException or NotSupportedException or BadImageFormatException or InvalidOperationException)
                {
                    // Some methods (P/Invoke stubs, unusual signatures) cannot be prepared ahead: they compile at first call.
                }
            }
        }
    }

    /// <summary>One trial's measurements as <c>perf paper-round</c> prints them: one JSON line.</summary>
    public static string FormatTrial(IReadOnlyList<Measurement> trial) => JsonSerializer.Serialize(trial, PaperReport.JsonLine);

    /// <summary>Reads a line of <see cref="FormatTrial"/> back.</summary>
    public static IReadOnlyList<Measurement> ParseTrial(string line)
    {
        var trial = JsonSerializer.Deserialize<List<Measurement>>(line, PaperReport.JsonLine);
        if (trial is null || trial.Count == 0)
        {
            throw new InvalidDataException($"not a trial: '{line}'");
        }

        return [.. trial.Select(m => m with { Params = JsonValues.Plain(m.Params) })];
    }

    /// <summary>Rows with their statistics, in plan order: per cell and point, the timed trials summarised.</summary>
    public static List<PaperRow> Aggregate(PaperPlan plan, IReadOnlyList<Measurement> timed, IReadOnlyList<Measurement> verification)
    {
        int cores = HostCores;
        var rows = new List<PaperRow>();
        foreach (var cell in plan.Cells().OrderBy(c => Array.IndexOf(plan.Experiments, c.Experiment)).ThenBy(c => Array.IndexOf(plan.Strategies, c.Strategy)).ThenBy(c => c.Cpus))
        {
            string load = cell.Load == LoadForm.All ? PaperRow.AllLoad : PaperRow.PaperLoad;
            var mine = timed.Where(m => m.Experiment == cell.Experiment && m.Strategy == cell.Strategy && m.Cpus == cell.Cpus && m.Load == load).ToList();
            foreach (var point in mine.Select(m => m.Point).Distinct())
            {
                var trials = mine.Where(m => m.Point == point).ToList();
                var summary = SampleSummary.Of([.. trials.Select(m => m.Throughput)]);
                var median = trials.OrderBy(m => Math.Abs(m.Throughput - summary.Median)).First();
                var checkedTrials = trials.Where(m => m.Checked)
                    .Concat(verification.Where(m => m.Experiment == cell.Experiment && m.Strategy == cell.Strategy && m.Cpus == cell.Cpus && m.Point == point && m.Load == load))
                    .ToList();
                var counters = new Dictionary<string, long>(median.Counters, StringComparer.Ordinal)
                {
                    ["stale_accesses"] = checkedTrials.Sum(m => m["stale_accesses"]),
                    ["latent_stale_accesses"] = checkedTrials.Sum(m => m["latent_stale_accesses"]),
                };
                rows.Add(new PaperRow
                {
                    Experiment = cell.Experiment,
                    Strategy = cell.Strategy,
                    Cpus = cell.Cpus,
                    CostProfile = median.CostProfile,
                    Backend = median.Backend,
                    Shootdown = median.Shootdown,
                    Params = median.Params,
                    Seconds = SampleSummary.Of([.. trials.Select(m => m.Seconds)]).Median,
                    Bytes = median.Bytes,
                    Ops = median.Ops,
                    MbPerS = median.Bytes > 0 ? summary.Median : 0,
                    OpsPerS = SampleSummary.Of([.. trials.Select(m => m.OpsPerSecond)]).Median,
                    Counters = counters,
                    Samples = summary.Samples,
                    CiLow = summary.CiLow,
                    CiHigh = summary.CiHigh,
                    Cv = summary.Cv,
                    ModelledNs = SampleSummary.Of([.. trials.Select(m => m.Modelled.TotalNs / m.Units)]).Median,
                    Modelled = median.Modelled.Per(median.Units),
                    ModelProfile = plan.Model.Name,
                    Point = point,
                    Oversubscribed = !plan.IsVirtual && cell.Cpus > cores,
                    TimeMode = median.Time,
                    Load = load,
                    VirtualNs = median.VirtualNs,
                    QuantumNs = median.QuantumNs,
                    HostSeconds = median.HostSeconds,
                    SchedulingSteps = median.SchedulingSteps,
                    TimedChecked = plan.CheckedTiming,
                    CheckedTrials = checkedTrials.Count,
                    ExposuresPerUnit = Exposure(checkedTrials, Trial.ExposuresKey, 1),
                    ExposedCpuUsPerUnit = Exposure(checkedTrials, Trial.ExposedNsKey, 1e3),
                    LongestExposureUs = checkedTrials.Any(m => m.Counters.ContainsKey(Trial.LongestExposureNsKey))
                        ? checkedTrials.Max(m => m[Trial.LongestExposureNsKey]) / 1e3 : null,
                });
            }
        }

        return rows;
    }

    /// <summary>
    /// An exposure figure per unit over the checked trials that measured it (their counts over
    /// their units, divided by <paramref name="scale"/>), or null when none did.
    /// </summary>
    private static double? Exposure(List<Measurement> checkedTrials, string key, double scale)
    {
        var measured = checkedTrials.Where(m => m.Counters.ContainsKey(key)).ToList();
        return measured.Count == 0 ? null : measured.Sum(m => m[key]) / scale / measured.Sum(m => m.Units);
    }

    /// <summary>What the reader of the figures must know: noisy cells, a busy host, oversubscription, unpinned threads.</summary>
    internal static List<string> Warnings(PaperPlan plan, List<PaperRow> rows, IEnumerable<Measurement> trials, HostLoad? load)
    {
        var warnings = new List<string>();
        var noisy = rows.Where(r => r.Cv > 0.10).ToList();
        if (noisy.Count > 0)
        {
            warnings.Add($"{noisy.Count} of {rows.Count} rows vary by more than 10% between rounds (CV): "
                + string.Join(", ", noisy.Take(12).Select(r => $"{r.Experiment}{(r.Point.Length > 0 ? $"[{r.Point}]" : string.Empty)}/{r.Strategy}/{r.Cpus}cpu {r.Cv:P0}"))
                + (noisy.Count > 12 ? ", ..." : string.Empty)
                + $". Their medians are uncertain (see the {WithinRun.Interval}); more rounds (--repeat) or a quieter host narrow it, though no number of rounds in one run covers the host's between-run variation.");
        }

        // Virtual-time figures do not see the host: its load only lengthens the run.
        if (!plan.IsVirtual && load?.Warning() is { } busy)
        {
            warnings.Add(busy);
        }

        if (plan.SharedHost && plan.Backend == MachineBackend.Simulated)
        {
            warnings.Add("other processes kept the host's cores busy when the run began (or --host shared was given), so the simulated CPUs' threads ran unpinned "
                + "and parked after 5 us, as on an oversubscribed host; --host dedicated pins them regardless. Speedups are not comparable with a quiet run's: "
                + "work handed between CPUs (pipe, sendfile, shootdowns) waits for a host thread to be scheduled, which costs the strategies that hand off "
                + "the most, so their speedups shrink. Counts and the modelled mapping cost are comparable.");
        }

        // The 10th and 90th percentiles, so that one preempted measurement does not count as a move.
        var roundTrips = trials.Select(m => JsonValues.Number(m.Params.GetValueOrDefault("round_trip_ns")) ?? 0).Where(v => v > 0).Order().ToList();
        if (roundTrips.Count > 1)
        {
            double low = roundTrips[roundTrips.Count / 10], high = roundTrips[roundTrips.Count - 1 - (roundTrips.Count / 10)];
            if (high > RoundTripDrift * low)
            {
                warnings.Add($"the host's cross-core round trip, measured before each timed trial, ranged from {low:0} to {high:0} ns "
                    + $"(10th to 90th percentile; median {roundTrips[roundTrips.Count / 2]:0}): the host moved its cores (a VM's vCPUs between physical cores) during the run. "
                    + "Throughput of cross-CPU work moves with it, so runs made at different round trips differ by more than their CIs; compare the round_trip_ns of their rows.");
            }
        }

        var over = rows.Where(r => r.Oversubscribed).Select(r => r.Cpus).Distinct().Order().ToList();
        if (over.Count > 0)
        {
            warnings.Add($"rows at {string.Join(", ", over)} CPUs are oversubscribed (marked *): more simulated CPUs than the {HostCores} host cores, "
                + "so simulated CPUs time-share cores and wait for each other's host threads to be scheduled; their throughput measures the host "
                + "scheduler as much as the algorithm. Compare them by their counts and modelled cost, which do not depend on it.");
        }

        warnings.AddRange(trials.SelectMany(m => m.Warnings.Select(w => $"machine: {w}")).Distinct());
        if (plan.Cost.Name == CostModel.Zero.Name && plan.Model.Name != CostModel.Zero.Name)
        {
            warnings.Add($"the machine charged nothing (cost profile zero); the modelled cost is priced with the {plan.Model.Name} profile.");
        }

        return warnings;
    }
}

/// <summary>An experiment threw; carries which one.</summary>
internal sealed class ExperimentFailedException(string message, Exception? inner) : Exception(message, inner);

/// <summary>Values read back from JSON as plain numbers, strings and booleans.</summary>
internal static class JsonValues
{
    public static IReadOnlyDictionary<string, object> Plain(IReadOnlyDictionary<string, object> values) =>
        values.ToDictionary(p => p.Key, p => p.Value is JsonElement e ? Plain(e) : p.Value, StringComparer.Ordinal);

    /// <summary>A parameter as a number (rows read back from JSON hold whole numbers as longs), or null.</summary>
    public static double? Number(object? value) => value switch
    {
        double d => d,
        long l => l,
        int n => n,
        _ => null,
    };

    private static object Plain(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Number => e.TryGetInt64(out long l) && !e.GetRawText().Contains('.', StringComparison.Ordinal) ? l : e.GetDouble(),
        JsonValueKind.String => e.GetString()!,
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => e.GetRawText(),
    };
}
