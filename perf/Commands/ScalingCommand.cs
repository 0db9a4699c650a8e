using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Native.PageTable;
using Native.Perf.Benchmarks;
using Native.Perf.Stats;
using Native.SfBufNative;
using Spectre.Console;

namespace Native.Perf.Commands;

/// <summary>
/// <c>perf scaling</c>: what two CPUs running sf_buf alloc + kva + free at once deliver against
/// one, as paired ratios with a within-run confidence interval (<see cref="WithinRun"/>). BenchmarkDotNet measures the one-thread and
/// two-thread cases minutes apart, in separate processes, and on a VM whose host moves its cores
/// the two can land in different host phases, which moves their ratio by ±20 % from run to run.
/// Here both cases run in one machine, alternately, batch after batch, so that each pair's ratio
/// is taken within one host phase (the paired-speedup design of <c>perf paper</c>); for the same
/// reason the interval leaves out the host's between-run variation.
/// </summary>
internal static class ScalingCommand
{
    /// <summary>The paths measured: the BenchmarkDotNet suite's <c>Hit</c> and <c>Miss</c>.</summary>
    public static readonly string[] Paths = ["hit", "miss"];

    /// <summary>The legend under the table: what the interval is and what it leaves out.</summary>
    public const string Legend = WithinRun.Interval + ": the spread of this run's pairs of batches, all on one host phase; "
        + "it does not include the host's between-run variation (phases lasting minutes).";

    private const int DefaultPairs = 20;
    private const int DefaultOps = 500_000;

    public static Command Create()
    {
        var strategies = new Option<string[]>("--strategies")
        {
            Description = "Strategies to measure",
            DefaultValueFactory = _ => [SfBufMapper.EpochCache, SfBufMapper.I386],
            AllowMultipleArgumentsPerToken = true,
        };
        strategies.AcceptOnlyFromAmong([.. SfBufMapper.StrategyNames]);

        var paths = new Option<string[]>("--paths")
        {
            Description = "hit: each CPU maps its own one page again and again; miss: each cycles through twice nsfbufs pages",
            DefaultValueFactory = _ => Paths,
            AllowMultipleArgumentsPerToken = true,
        };
        paths.AcceptOnlyFromAmong(Paths);

        var pairs = new Option<int>("--pairs")
        {
            Description = $"Pairs of one-thread and two-thread batches (default {DefaultPairs})",
            DefaultValueFactory = _ => DefaultPairs,
        };
        pairs.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<int>() < 2)
            {
                r.AddError("--pairs must be at least 2 (a confidence interval needs two)");
            }
        });

        var ops = new Option<int>("--ops")
        {
            Description = $"Operations per thread per batch (default {DefaultOps:N0})",
            DefaultValueFactory = _ => DefaultOps,
        };
        ops.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<int>() < 1)
            {
                r.AddError("--ops must be at least 1");
            }
        });

        var command = new Command("scaling", $"Two CPUs against one on sf_buf alloc + kva + free: paired batches, the aggregate ratio with its {WithinRun.Interval}.")
        {
            strategies, paths, pairs, ops,
        };
        command.SetAction(parse =>
        {
            AnsiConsole.MarkupLine($"[bold]perf scaling[/]: {parse.GetValue(pairs)} pairs of batches, {parse.GetValue(ops):N0} alloc + kva + free per thread per batch, "
                + "default 2-CPU machine, zero cost profile, checked mode off; one thread: CPU 0 runs the loop while CPU 1 polls; two threads: both run it");
            AnsiConsole.MarkupLine($"aggregate = (two-thread operations per second) / (one-thread operations per second), per pair; {Markup.Escape(SampleSummary.CiMethod)}");
            var table = new Table().AddColumns("strategy", "path", "1 thread, ns/op", "2 threads, ns/op per thread", "aggregate", WithinRun.Interval)
                .Caption(Markup.Escape(Legend));
            foreach (string strategy in parse.GetRequiredValue(strategies).Distinct())
            {
                foreach (string path in parse.GetRequiredValue(paths).Distinct())
                {
                    var r = Measure(strategy, path, parse.GetValue(pairs), parse.GetValue(ops));
                    table.AddRow(
                        strategy,
                        path,
                        Format(SampleSummary.Of(r.OneThreadNs).Median),
                        Format(SampleSummary.Of(r.TwoThreadNs).Median),
                        $"{r.Aggregate.Median:F2}x",
                        $"[[{r.Aggregate.CiLow:F2}, {r.Aggregate.CiHigh:F2}]]");
                }
            }

            AnsiConsole.Write(table);
            return 0;
        });
        return command;
    }

    /// <summary>
    /// Runs one warm-up pair and then <paramref name="pairs"/> measured pairs of <paramref name="strategy"/>
    /// on <paramref name="path"/>: a one-thread batch and a two-thread batch, in alternating order.
    /// </summary>
    public static ScalingResult Measure(string strategy, string path, int pairs, int ops)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pairs, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(ops, 1);
        if (!Paths.Contains(path))
        {
            throw new ArgumentException($"unknown path '{path}' (hit or miss)", nameof(path));
        }

        using var machine = new Machine(new MachineOptions { Cost = CostModel.Zero, Checked = false });
        using var cpu0 = new KernelServer(machine, 0);
        using var cpu1 = new KernelServer(machine, 1);
        using var mapper = SfBufMapper.Create(strategy, machine);
        int perThread = path == "hit" ? 1 : 2 * machine.Options.EffectiveSfBufWindowPages;
        var pages = new VmPage[2][];
        for (int t = 0; t < 2; t++)
        {
            pages[t] = new VmPage[perThread];
            for (int i = 0; i < perThread; i++)
            {
                pages[t][i] = machine.Physical.Alloc(AllocFlags.Wired);
            }
        }

        var elapsed = new double[2];
        void Loop(int t)
        {
            var mine = pages[t];
            ulong sum = 0;
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < ops; i++)
            {
                var sf = mapper.Alloc(mine[i % mine.Length]);
                sum += mapper.Kva(sf);
                mapper.Free(sf);
            }

            elapsed[t] = Stopwatch.GetElapsedTime(start).TotalNanoseconds;
            GC.KeepAlive(sum);
        }

        // Operations per nanosecond: one thread on CPU 0 while CPU 1 only polls (it answers any
        // shootdown), or both at once, each thread's rate from its own loop.
        double One()
        {
            cpu0.Run(_ => Loop(0));
            return ops / elapsed[0];
        }

        double Two()
        {
            cpu0.Start(_ => Loop(0));
            cpu1.Start(_ => Loop(1));
            cpu0.Wait();
            cpu1.Wait();
            return (ops / elapsed[0]) + (ops / elapsed[1]);
        }

        One();
        Two();
        var one = new List<double>(pairs);
        var two = new List<double>(pairs);
        for (int p = 0; p < pairs; p++)
        {
            // Alternating the order cancels a drift within the pair on average.
            if (p % 2 == 0)
            {
                one.Add(One());
                two.Add(Two());
            }
            else
            {
                two.Add(Two());
                one.Add(One());
            }
        }

        var stats = mapper.Stats();
        return new ScalingResult(
            strategy,
            path,
            ops,
            [.. one.Select(rate => 1 / rate)],
            [.. two.Select(rate => 2 / rate)],
            SampleSummary.OfRatios(two, one),
            stats.Hits + stats.Misses);
    }

    private static string Format(double ns) => ns.ToString(ns >= 100 ? "N0" : "F1", CultureInfo.InvariantCulture);
}

/// <summary>The outcome of <see cref="ScalingCommand.Measure"/>.</summary>
/// <param name="Strategy">The strategy measured.</param>
/// <param name="Path">hit or miss.</param>
/// <param name="Ops">Operations per thread per batch.</param>
/// <param name="OneThreadNs">Per pair: nanoseconds per operation with one thread.</param>
/// <param name="TwoThreadNs">Per pair: nanoseconds per operation per thread with two (2 / aggregate rate).</param>
/// <param name="Aggregate">Per pair: two threads' operations per second over one thread's, summarised.</param>
/// <param name="Operations">Every alloc the mapper served (hits and misses), warm-up pair included.</param>
internal sealed record ScalingResult(
    string Strategy,
    string Path,
    int Ops,
    IReadOnlyList<double> OneThreadNs,
    IReadOnlyList<double> TwoThreadNs,
    SampleSummary Aggregate,
    long Operations);
