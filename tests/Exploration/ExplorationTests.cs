using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;

namespace Native.Tests.Exploration;

/// <summary>
/// Systematic interleaving exploration of the IPI/idle protocol, the locks, sleep/wakeup with
/// cancellation and the sf_buf strategies under the machine's controlled scheduler (random walk
/// and PCT): every schedule passes with the real code, and each planted bug is found within the
/// CI budget. <c>SFBUF_EXPLORE_SCHEDULES=10000</c> runs the long form (category Long for the
/// sf_buf scenarios on every strategy, epoch-cache's on 2 and 3 CPUs included, and its
/// scenarios on unbound threads that migrate).
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class ExplorationTests
{
    private static readonly Dictionary<string, Func<Scenario>> s_scenarios = BuildScenarios();

    public static IEnumerable<string> ProtocolScenarios() => s_scenarios.Keys.Where(k => !k.StartsWith("sfbuf", StringComparison.Ordinal));

    public static IEnumerable<string> SfBufScenarios() => s_scenarios.Keys.Where(k => k.StartsWith("sfbuf", StringComparison.Ordinal));

    [TestCaseSource(nameof(ProtocolScenarios))]
    [TestCaseSource(nameof(SfBufScenarios))]
    public void EveryExploredScheduleOfTheRealCodePasses(string scenario) =>
        Explorer.AssertAllPass(s_scenarios[scenario](), Explorer.Schedules());

    [TestCaseSource(nameof(ProtocolScenarios))]
    [TestCaseSource(nameof(SfBufScenarios))]
    [Category("Long")]
    [Explicit("the long form: dotnet test --filter TestCategory=Long")]
    public void TenThousandExploredSchedulesOfTheRealCodePass(string scenario) =>
        Explorer.AssertAllPass(s_scenarios[scenario](), Explorer.Schedules(10_000));

    [TestCase("AckBeforeInvalidate")]
    [TestCase("IdleEntryNotAtomic")]
    [TestCase("Mask2005")]
    [TestCase("WakeOneWithoutReprobe")]
    [TestCase("MissingWakeup")]
    public void TheExplorerFindsEachPlantedBugWithinTheCiBudget(string plantedBug)
    {
        var bug = Enum.Parse<PlantedBug>(plantedBug);
        var scenario = bug switch
        {
            PlantedBug.AckBeforeInvalidate => Scenarios.IpiCrossFire(2),
            PlantedBug.IdleEntryNotAtomic => Scenarios.IdleVersusShootdown(),
            PlantedBug.Mask2005 => Scenarios.SfBufRemote(SfBufMapper.I386, 2),
            _ => Scenarios.SfBufExhaustion(SfBufMapper.I386, 3),
        };

        var found = Explorer.Explore(scenario, Explorer.CiBugBudget, bug);

        Assert.That(found, Is.Not.Null, $"{bug} survived {Explorer.CiBugBudget} schedules of {scenario.Name}");
        TestContext.Out.WriteLine($"{bug}: {found}");

        // The printed seed replays the same failure.
        string? again = Explorer.RunOne(scenario, found!.Seed, bug, out _, out int steps);
        Assert.That(again, Is.EqualTo(found.What), "the seed replays the failing schedule");
        Assert.That(steps, Is.EqualTo(found.Steps));
    }

    /// <summary>
    /// The same protocol and sf_buf scenarios on a machine whose shootdowns are broadcast
    /// invalidations (the request through the mailbox, applied without a handler, the initiator
    /// waiting for completion): every explored schedule passes, and a broadcast that skips a
    /// target is found within the CI budget, with a seed that replays it.
    /// </summary>
    [TestCase("ipi-crossfire-3cpu")]
    [TestCase("idle-vs-shootdown")]
    [TestCase("sfbuf-remote-sfbuf-i386-2cpu")]
    [TestCase("sfbuf-remote-epoch-cache-2cpu")]
    public void EveryExploredScheduleWithBroadcastShootdownsPasses(string scenario) =>
        Explorer.AssertAllPass(Broadcast(s_scenarios[scenario]()), Explorer.Schedules());

    [Test]
    public void TheExplorerFindsABroadcastThatSkipsATarget()
    {
        var scenario = Broadcast(Scenarios.IpiCrossFire(2));

        var found = Explorer.Explore(scenario, Explorer.CiBugBudget, PlantedBug.BroadcastSkipsOneTarget);

        Assert.That(found, Is.Not.Null, $"the skipped target survived {Explorer.CiBugBudget} schedules of {scenario.Name}");
        TestContext.Out.WriteLine($"BroadcastSkipsOneTarget: {found}");
        string? again = Explorer.RunOne(scenario, found!.Seed, PlantedBug.BroadcastSkipsOneTarget, out _, out int steps);
        Assert.That(again, Is.EqualTo(found.What), "the seed replays the failing schedule");
        Assert.That(steps, Is.EqualTo(found.Steps));
    }

    private static Scenario Broadcast(Scenario scenario) => scenario with
    {
        Name = scenario.Name + "-broadcast",
        Options = scenario.Options with { Shootdown = ShootdownMechanism.Broadcast },
    };

    /// <summary>
    /// epoch-cache's planted bug: a retired slot counts as clean one epoch early, so a CPU that
    /// still caches its old translation can be handed the slot's new mapping. The explorer must
    /// find it on the remote-caching scenario within the CI budget, with a seed that replays it.
    /// </summary>
    [Test]
    public void TheExplorerFindsEpochCacheRecyclingOneEpochEarly()
    {
        var scenario = Scenarios.SfBufRemote(SfBufMapper.EpochCache, 2, ("recycle-one-epoch-early", PlantRecycleOneEpochEarly));

        var found = Explorer.Explore(scenario, Explorer.CiBugBudget);

        Assert.That(found, Is.Not.Null, $"recycling one epoch early survived {Explorer.CiBugBudget} schedules of {scenario.Name}");
        TestContext.Out.WriteLine($"RecycleOneEpochEarly: {found}");
        Assert.That(found!.What, Does.Match("(?i)stale|expected page"), "found as a stale translation, not as some other failure");

        string? again = Explorer.RunOne(scenario, found.Seed, PlantedBug.None, out _, out int steps);
        Assert.That(again, Is.EqualTo(found.What), "the seed replays the failing schedule");
        Assert.That(steps, Is.EqualTo(found.Steps));
    }

    /// <summary>
    /// linux-mermap's planted bug: a wrap of a CPU's region skips the local flush, so a slot is
    /// mapped again while that CPU may still cache its old translation. On the remote scenario with
    /// a region of one usable page, every second private get wraps; the explorer finds the bug
    /// within the CI budget (a stale translation, with a seed that replays it), and every schedule
    /// of the real code passes.
    /// </summary>
    [TestCase(false)]
    [TestCase(true)]
    public void TheExplorerFindsMermapsSkippedWrapFlushAndTheRealCodePasses(bool planted)
    {
        var scenario = Scenarios.SfBufRemote(SfBufMapper.LinuxMermap, 2, ("one-page-region", m => ((Native.SfBufNative.Strategies.Linux.LinuxMermapMapper)m).TestHookUseRegion(2)));
        long wraps = 0, flushes = 0;
        scenario = scenario with
        {
            Check = run =>
            {
                var details = ((SfBufMapper)run.State["mapper"]).Stats().Details;
                wraps += details["mermap.wraps"];
                flushes += details["mermap.flushes"];
            },
        };
        if (!planted)
        {
            Explorer.AssertAllPass(scenario, Explorer.Schedules());
            TestContext.Out.WriteLine($"{wraps} wraps, {flushes} flushes");
            Assert.That(wraps, Is.GreaterThan(0), "the scenario wraps the region");
            Assert.That(flushes, Is.EqualTo(wraps));
            return;
        }

        var found = Explorer.Explore(scenario, Explorer.CiBugBudget, PlantedBug.MermapWrapFlushSkipped);

        Assert.That(found, Is.Not.Null, $"the skipped wrap flush survived {Explorer.CiBugBudget} schedules of {scenario.Name}");
        TestContext.Out.WriteLine($"MermapWrapFlushSkipped: {found}");
        Assert.That(found!.What, Does.Match("(?i)stale|expected page"), "found as a stale translation, not as some other failure");
        string? again = Explorer.RunOne(scenario, found.Seed, PlantedBug.MermapWrapFlushSkipped, out _, out int steps);
        Assert.That(again, Is.EqualTo(found.What), "the seed replays the failing schedule");
        Assert.That(steps, Is.EqualTo(found.Steps));
    }

    /// <summary>
    /// asi-ephmap's planted bug: <c>ephmap_put</c> clears the PTEs but skips the local
    /// invalidation, so the CPU keeps the old translation of its region and the next mapping at
    /// the same address reads the previous page. The explorer must find it on the remote-caching
    /// scenario within the CI budget, with a seed that replays it; the real code passes the same
    /// scenario (<see cref="EveryExploredScheduleOfTheRealCodePasses"/>).
    /// </summary>
    [Test]
    public void TheExplorerFindsEphmapPutSkippingItsLocalInvalidation()
    {
        var scenario = Scenarios.SfBufRemote(SfBufMapper.AsiEphmap, 2);

        var found = Explorer.Explore(scenario, Explorer.CiBugBudget, PlantedBug.EphmapPutSkipsInvalidation);

        Assert.That(found, Is.Not.Null, $"an ephmap_put without its invlpg survived {Explorer.CiBugBudget} schedules of {scenario.Name}");
        TestContext.Out.WriteLine($"EphmapPutSkipsInvalidation: {found}");
        Assert.That(found!.What, Does.Match("(?i)stale|expected page"), "found as a stale translation, not as some other failure");

        string? again = Explorer.RunOne(scenario, found.Seed, PlantedBug.EphmapPutSkipsInvalidation, out _, out int steps);
        Assert.That(again, Is.EqualTo(found.What), "the seed replays the failing schedule");
        Assert.That(steps, Is.EqualTo(found.Steps));
        Assert.That(Explorer.RunOne(scenario, found.Seed, PlantedBug.None, out _, out _), Is.Null, "the same schedule passes with the real code");
    }

    /// <summary>
    /// The epoch-cache scenarios reach what they exist to interleave: over their schedules slots
    /// are retired and recycled, misses take slots from magazines and the lock holder takes them
    /// back, the epoch fallback runs, and after every schedule the pool's
    /// structural invariants (I1, I3, the slot states and use counts) hold.
    /// </summary>
    [TestCase(2)]
    [TestCase(3)]
    public void TheEpochCacheScenariosRetireRecycleAndFallBackAndKeepTheInvariants(int cpus)
    {
        long retired = 0, batches = 0, fallbacks = 0, misses = 0, lockedMisses = 0, steals = 0;
        foreach (var make in new Func<string, int, Scenario>[] { (s, c) => Scenarios.SfBufRemote(s, c), Scenarios.SfBufExhaustion })
        {
            var scenario = make(SfBufMapper.EpochCache, cpus) with
            {
                Check = run =>
                {
                    var mapper = (EpochCacheMapper)run.State["mapper"];
                    var details = mapper.Stats().Details;
                    retired += mapper.Stats().Recycles;
                    batches += details[EpochCacheMapper.DetailBatches];
                    fallbacks += details[EpochCacheMapper.DetailFallbackShootdowns];
                    misses += mapper.Stats().Misses;
                    lockedMisses += details[EpochCacheMapper.DetailLockedMisses];
                    steals += details[EpochCacheMapper.DetailSteals];
                    foreach (var problem in mapper.TestHookCheckInvariants())
                    {
                        run.Fail(problem);
                    }
                },
            };
            Explorer.AssertAllPass(scenario, 100);
        }

        TestContext.Out.WriteLine($"{cpus} CPUs: {retired} slots retired in {batches} batches, {fallbacks} fallback shootdowns, {misses - lockedMisses} of {misses} misses without the lock, {steals} magazine steals");
        Assert.That(retired, Is.GreaterThan(0));
        Assert.That(batches, Is.GreaterThan(0));
        Assert.That(fallbacks, Is.GreaterThan(0), "some schedule left a running CPU behind the needed epoch");
        Assert.That(lockedMisses, Is.LessThan(misses), "some misses took a clean slot from their CPU's magazine");
        Assert.That(steals, Is.GreaterThan(0), "some schedule took clean slots back from a magazine");
    }

    /// <summary>
    /// The epoch-cache scenarios on unbound threads reach what they exist to interleave: over
    /// their schedules threads migrate between CPUs, allocations wait for slots, and slots are
    /// retired and installed again for other pages (recycled), and some calls block and return on
    /// another CPU than they were entered on; the fallback shootdowns and magazine steals are
    /// reported. Each schedule also checks that every thread finished (no deadlock) and the pool
    /// at rest (invariants, nothing in use).
    /// </summary>
    [Test]
    public void TheUnboundEpochCacheScenariosMigrateWaitAndRecycle()
    {
        long migrations = 0, migratedInCalls = 0, waits = 0, retired = 0, reinstalled = 0, fallbacks = 0, steals = 0;
        foreach (var make in UnboundEpochCacheScenarios())
        {
            var scenario = make();
            var check = scenario.Check;
            scenario = scenario with
            {
                Check = run =>
                {
                    check?.Invoke(run);
                    var mapper = (EpochCacheMapper)run.State["mapper"];
                    var stats = mapper.Stats();
                    migrations += run.M.Counters()[Counter.Migrations];
                    migratedInCalls += ((Scenarios.UnboundRig)run.State["rig"]).CallsThatMigrated;
                    waits += stats.AllocWait;
                    retired += stats.Recycles;
                    fallbacks += stats.Details[EpochCacheMapper.DetailFallbackShootdowns];
                    steals += stats.Details[EpochCacheMapper.DetailSteals];
                    for (int i = 0; i < mapper.Nsfbufs; i++)
                    {
                        reinstalled += Math.Max(0, mapper.TestHookSlot(i).Generation - 1); // installs after the first: a retired slot mapped again
                    }
                },
            };
            Explorer.AssertAllPass(scenario, 100);
        }

        TestContext.Out.WriteLine($"{migrations} migrations ({migratedInCalls} inside a call), {waits} waits, {retired} slots retired, {reinstalled} reinstalled, {fallbacks} fallback shootdowns, {steals} magazine steals");
        Assert.That(migrations, Is.GreaterThan(0), "some thread ran on another CPU than before");
        Assert.That(migratedInCalls, Is.GreaterThan(0), "some Alloc, AllocMany or Free blocked and returned on another CPU");
        Assert.That(waits, Is.GreaterThan(0), "some allocation slept for a slot");
        Assert.That(retired, Is.GreaterThan(0), "some slot was retired");
        Assert.That(reinstalled, Is.GreaterThan(0), "some retired slot was installed again for another page");
    }

    /// <summary>
    /// A schedule in which every kernel thread is blocked is reported as a failure, not a hang:
    /// two threads sleep on a channel nobody wakes, and the explorer returns the first schedule
    /// as a deadlock naming both, promptly and replayably.
    /// </summary>
    [Test]
    public void AScheduleInWhichEveryThreadIsBlockedIsReportedAsADeadlock()
    {
        var scenario = new Scenario("everyone-asleep", Native.Tests.Machine.Sim.Small(2), run =>
        {
            var channel = new object();
            run.M.StartThread("sleeper0", () => run.M.Sleep(channel));
            run.M.StartThread("sleeper1", () => run.M.Sleep(channel));
        })
        {
            Describe = _ => "nobody wakes the channel",
        };
        var clock = System.Diagnostics.Stopwatch.StartNew();

        var found = Explorer.Explore(scenario, 10);

        Assert.That(found, Is.Not.Null);
        Assert.That(found!.Schedule, Is.EqualTo(1));
        Assert.That(found.What, Does.StartWith("deadlock: no kernel thread can run").And.Contain("sleeper0").And.Contain("sleeper1").And.EndWith("[nobody wakes the channel]"));
        Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(30)), "reported when the threads blocked, not after a time-out");
        Assert.That(Explorer.RunOne(scenario, found.Seed, PlantedBug.None, out _, out _), Is.EqualTo(found.What));
    }

    /// <summary>
    /// The epoch-cache scenarios whose threads are unbound (more threads than CPUs, so they switch
    /// and migrate): pairs held by waiting threads, a random mix with NoWait, and AllocMany pairs.
    /// </summary>
    private static IEnumerable<Func<Scenario>> UnboundEpochCacheScenarios() =>
    [
        () => Scenarios.SfBufUnboundPairs(threads: 3, cpus: 2, pool: 4),
        () => Scenarios.SfBufUnboundPairs(threads: 4, cpus: 2, pool: 5),
        () => Scenarios.SfBufUnboundPairs(threads: 4, cpus: 3, pool: 5),
        () => Scenarios.SfBufUnboundMixed(threads: 3, cpus: 2, pool: 2),
        () => Scenarios.SfBufUnboundMixed(threads: 4, cpus: 3, pool: 3),
        () => Scenarios.SfBufUnboundAllocMany(threads: 4, cpus: 2, pool: 2),
        () => Scenarios.SfBufUnboundAllocMany(threads: 4, cpus: 3, pool: 4),
    ];

    private static void PlantRecycleOneEpochEarly(SfBufMapper mapper) =>
        ((EpochCacheMapper)mapper).TestHooks = new EpochCacheTestHooks { RecycleOneEpochEarly = true };

    private static Dictionary<string, Func<Scenario>> BuildScenarios()
    {
        var all = new Func<Scenario>[]
        {
            () => Scenarios.IpiCrossFire(2),
            () => Scenarios.IpiCrossFire(3),
            Scenarios.IdleVersusShootdown,
            () => Scenarios.MutexHandOff(spinOnly: false),
            () => Scenarios.MutexHandOff(spinOnly: true),
            Scenarios.SleepWakeupCancel,
        }.Concat(
            from strategy in SfBufMapper.StrategyNames
            from cpus in new[] { 2, 3 }
            from make in new Func<string, int, Scenario>[] { (s, c) => Scenarios.SfBufRemote(s, c), Scenarios.SfBufExhaustion }
            select (Func<Scenario>)(() => make(strategy, cpus)))
            .Concat(UnboundEpochCacheScenarios());
        return all.ToDictionary(f => f().Name);
    }
}
