using System.Diagnostics;
using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Exploration;

/// <summary>
/// Systematic interleaving exploration: runs a scenario under the machine's controlled
/// scheduler once per seed, alternating random walk (even seeds) and PCT (odd seeds), and
/// reports the first schedule that fails (a kernel thread's exception, an oracle, a deadlock, a
/// livelock, or the scenario's own invariant) with the seed that replays it.
/// <para>
/// A schedule never hangs the run. Every blocking wait of a kernel thread (sleep, a contended
/// mutex, waiting for a CPU, a cross-CPU wait) is a condition the controlled scheduler
/// evaluates: when no thread can take a step and none waits with a timeout, the scheduler
/// abandons the schedule and reports it as a deadlock naming the blocked threads (with the
/// scenario's <see cref="Scenario.Describe"/>); a schedule that keeps stepping past
/// <see cref="Scenario.MaxSteps"/> is reported as a livelock, and one that does neither within
/// 60 s of wall-clock time is abandoned and reported as such.
/// </para>
/// <para>
/// <c>SFBUF_EXPLORE_SCHEDULES=N</c> sets the schedules per scenario (default: the CI budget);
/// <c>SFBUF_EXPLORE_SEED=S</c> replays exactly one schedule.
/// </para>
/// </summary>
internal static class Explorer
{
    /// <summary>Schedules per scenario in the default (CI) run.</summary>
    public const int CiSchedules = 300;

    /// <summary>Schedules the CI run gives the explorer to find a planted bug.</summary>
    public const int CiBugBudget = 2000;

    /// <summary>The schedules to run: SFBUF_EXPLORE_SCHEDULES, else <paramref name="ciDefault"/>.</summary>
    public static int Schedules(int ciDefault = CiSchedules) =>
        int.TryParse(Environment.GetEnvironmentVariable("SFBUF_EXPLORE_SCHEDULES"), out int n) && n > 0 ? n : ciDefault;

    /// <summary>Explores <paramref name="scenario"/>; returns the first failure, or null after every schedule passed.</summary>
    public static ExplorationFailure? Explore(Scenario scenario, int schedules, PlantedBug bug = PlantedBug.None, int firstSeed = 1)
    {
        var replay = Environment.GetEnvironmentVariable("SFBUF_EXPLORE_SEED");
        IEnumerable<int> seeds = int.TryParse(replay, out int only) ? [only] : Enumerable.Range(firstSeed, schedules);
        int ran = 0;
        var clock = Stopwatch.StartNew();
        foreach (int seed in seeds)
        {
            ran++;
            string? failure = RunOne(scenario, seed, bug, out string strategy, out int steps);
            if (failure != null)
            {
                var found = new ExplorationFailure(scenario.Name, seed, strategy, ran, steps, failure);
                TestContext.Progress.WriteLine(found.ToString());
                return found;
            }
        }

        TestContext.Progress.WriteLine($"{scenario.Name}: {ran} schedules passed in {clock.Elapsed.TotalSeconds:0.0} s");
        return null;
    }

    /// <summary>Explores and fails the test with the replayable seed if any schedule fails.</summary>
    public static int AssertAllPass(Scenario scenario, int schedules)
    {
        var failure = Explore(scenario, schedules);
        Assert.That(failure, Is.Null, () => failure!.ToString());
        return schedules;
    }

    /// <summary>Runs one schedule; null when it passed.</summary>
    public static string? RunOne(Scenario scenario, int seed, PlantedBug bug, out string strategyName, out int steps)
    {
        ScheduleStrategy strategy = seed % 2 == 0
            ? new RandomWalkStrategy(seed)
            : new PctStrategy(seed, depth: 3, scenario.ExpectedSteps);
        strategyName = seed % 2 == 0 ? "random walk" : "PCT depth 3";
        var controller = new ControlledScheduler(strategy, scenario.MaxSteps);
        var m = new SimMachine(scenario.Options with { Controlled = controller, PinThreads = false });
        string? failure = null;
        ExploreRun? run = null;
        try
        {
            if (bug != PlantedBug.None)
            {
                m.TestHookPlant(bug);
            }

            run = new ExploreRun(m, seed);
            scenario.Setup(run);
            controller.Start();
            if (!controller.Finished.WaitOne(TimeSpan.FromSeconds(60)))
            {
                controller.Abort("the schedule did not end within 60 s of wall-clock time");
            }

            foreach (var td in m.LiveThreads())
            {
                td.WaitExited(TimeSpan.FromSeconds(10));
            }

            failure = controller.Failure
                ?? m.Faults.Select(f => f.Fault).Where(f => f is not ScheduleAbortedException and not MachineStoppedException)
                    .Select(f => $"{f.GetType().Name}: {f.Message}").FirstOrDefault()
                ?? run.Violation;
            if (failure == null)
            {
                scenario.Check?.Invoke(run);
                failure = run.Violation;
            }

            var counts = m.Counters();
            if (failure == null && (counts[Counter.StaleAccesses] != 0 || counts[Counter.LatentStaleAccesses] != 0))
            {
                failure = $"stale accesses {counts[Counter.StaleAccesses]}, latent stale accesses {counts[Counter.LatentStaleAccesses]}";
            }

            if (failure != null && scenario.Describe != null)
            {
                failure += $" [{scenario.Describe(run)}]";
            }
        }
        finally
        {
            steps = controller.Steps;
            m.Dispose();
            foreach (var disposable in run?.State.Values.OfType<IDisposable>() ?? [])
            {
                disposable.Dispose();
            }
        }

        return failure;
    }
}

/// <summary>A scenario: the machine it needs, the threads it starts, and what must hold at the end.</summary>
internal sealed record Scenario(string Name, MachineOptions Options, Action<ExploreRun> Setup)
{
    /// <summary>Runs on the test thread after every kernel thread has ended; report with <see cref="ExploreRun.Fail"/>.</summary>
    public Action<ExploreRun>? Check { get; init; }

    /// <summary>
    /// The state worth knowing about a failed schedule (for instance a pool's slots when every
    /// thread is blocked), appended to its failure; runs on the test thread before the machine is
    /// disposed, so it must not assume the kernel threads finished their work.
    /// </summary>
    public Func<ExploreRun, string>? Describe { get; init; }

    /// <summary>PCT's estimate of a schedule's length (where its priority change points fall).</summary>
    public int ExpectedSteps { get; init; } = 400;

    /// <summary>A schedule longer than this is reported as a livelock.</summary>
    public int MaxSteps { get; init; } = 50_000;
}

/// <summary>One schedule's machine, its seed-derived randomness, and the first violation seen.</summary>
internal sealed class ExploreRun(SimMachine machine, int seed)
{
    public SimMachine M { get; } = machine;

    public int Seed { get; } = seed;

    public Dictionary<string, object> State { get; } = [];

    public string? Violation { get; private set; }

    /// <summary>A random source for thread <paramref name="index"/>, fixed by the seed in every process (threads run one at a time, so use is deterministic).</summary>
    public Random RandomFor(int index) => new(unchecked((Seed * 1_000_003) + (index * 7_919) + 0x5f));

    public void Fail(string what) => Violation ??= what;
}

/// <summary>A failing schedule and how to replay it.</summary>
internal sealed record ExplorationFailure(string Scenario, int Seed, string Strategy, int Schedule, int Steps, string What)
{
    public override string ToString() =>
        $"{Scenario}: schedule {Schedule} (seed {Seed}, {Strategy}, {Steps} steps) failed: {What}{Environment.NewLine}"
        + $"replay it with SFBUF_EXPLORE_SEED={Seed} and a --filter naming this test";
}
