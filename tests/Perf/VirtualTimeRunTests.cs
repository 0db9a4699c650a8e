using System.Text.Json;
using Native.PageTable;
using Native.Perf.Paper;
using Native.Perf.Scale;
using NUnit.Framework;

namespace Native.Tests.Perf;

/// <summary>
/// Experiments in virtual time: the rows of a small sweep are identical from run to run, whether
/// the cells run one at a time or side by side, and while another thread keeps a host core busy;
/// they say they are virtual, carry their quantum, and keep every exact relation.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class VirtualTimeRunTests
{
    private static readonly string[] s_experiments = ["pipe", "md-rand", "exec", "vnode-pagein", "build"];
    private static readonly string[] s_strategies = ["original", "sfbuf-i386", "epoch-cache", "linux-kmap"];

    private static PaperPlan Plan(int[] cpus) => new(s_experiments, s_strategies, cpus, CostModel.Default, CostModel.Default, TrialSize.Check, 1,
        CheckedTiming: false, Time: MachineTime.Virtual, Loads: [LoadForm.Paper, LoadForm.All]);

    /// <summary>Every field of every row as JSON, minus the host's wall-clock ones.</summary>
    private static List<string> Deterministic(IEnumerable<PaperRow> rows) =>
        [.. rows.Select(r =>
        {
            var node = JsonSerializer.SerializeToNode(r, PaperReport.Json)!.AsObject();
            node.Remove("host_seconds");
            return node.ToJsonString();
        })];

    private static List<PaperRow> Rows(PaperPlan plan, int degree)
    {
        var (timed, verification) = ScaleCommand.RunCells(plan, degree, verify: true);
        Assert.That(timed.Concat(verification).SelectMany(PaperChecks.Check), Is.Empty, "every exact relation holds");
        return PaperRunner.Aggregate(plan, timed, verification);
    }

    [Test]
    public void ASweepGivesIdenticalRowsOneAtATimeSideBySideAndBesideABusyCore()
    {
        var plan = Plan([1, 2, 4]);
        var first = Deterministic(Rows(plan, degree: 1));
        var second = Deterministic(Rows(plan, degree: 2));

        List<string> third;
        using (var busy = new CancellationTokenSource())
        {
            var spinner = new Thread(() =>
            {
                while (!busy.IsCancellationRequested)
                {
                    Thread.SpinWait(1000);
                }
            })
            { IsBackground = true };
            spinner.Start();
            third = Deterministic(Rows(plan, degree: 2));
            busy.Cancel();
            spinner.Join();
        }

        Assert.That(first, Has.Count.EqualTo(plan.Cells().Count));
        Assert.That(second, Is.EqualTo(first));
        Assert.That(third, Is.EqualTo(first));
    }

    [TestCase("original", "sfbuf-i386")]
    public void VirtualRowsSayWhatTimedThemAndKeepTheirCountsAtEightCpus(string broadcaster, string privateMapper)
    {
        var rows = Rows(Plan([8]), degree: 2);
        Assert.That(rows.All(r => r.TimeMode == PaperRow.VirtualTime && r.QuantumNs == (long)MachineOptions.DefaultQuantum.TotalNanoseconds), Is.True);
        Assert.That(rows.All(r => r.VirtualNs > 0 && r.Seconds == r.VirtualNs / 1e9 && r.CiLow == null), Is.True, "one deterministic round: no interval");
        Assert.That(rows.All(r => r["stale_accesses"] == 0 && r["latent_stale_accesses"] == 0 && r.CheckedTrials == 1), Is.True);

        // The all-CPU pipe form: four pairs on eight CPUs, and a private-mapping strategy still sends no IPI.
        var pairs = rows.Single(r => r.Experiment == "pipe" && r.Load == PaperRow.AllLoad && r.Strategy == privateMapper);
        Assert.That(JsonValues.Number(pairs.Params["pairs"]), Is.EqualTo(4));
        Assert.That(pairs["ipis_sent"], Is.Zero);

        // The build mix on every CPU: original broadcasts its shootdowns, sfbuf-i386 shoots down far fewer.
        var original = rows.Single(r => r.Experiment == "build" && r.Strategy == broadcaster);
        var i386 = rows.Single(r => r.Experiment == "build" && r.Strategy == privateMapper);
        Assert.That(original["ipis_sent"], Is.GreaterThan(10 * Math.Max(1, i386["ipis_sent"])));
        Assert.That(original.Ops, Is.EqualTo(i386.Ops));
    }

    [TestCase("original", "sfbuf-i386")]
    public void SendfileOnEveryCpuKeepsItsRelationsAndRepeatsExactly(string broadcaster, string cache)
    {
        // Two connections on four CPUs, each with its own file, at the checked size.
        var plan = new PaperPlan(["sendfile-hot", "sendfile-cold"], s_strategies, [4], CostModel.Default, CostModel.Default, TrialSize.Check, 1,
            CheckedTiming: false, Time: MachineTime.Virtual, Loads: [LoadForm.All]);
        var rows = Rows(plan, degree: 2);
        Assert.That(Deterministic(Rows(plan, degree: 1)), Is.EqualTo(Deterministic(rows)), "the NICs end inside the window, so nothing runs while it is read");
        Assert.That(rows, Has.Count.EqualTo(2 * s_strategies.Length));
        Assert.That(rows.All(r => r.Load == PaperRow.AllLoad && JsonValues.Number(r.Params["pairs"]) == 2 && r["stale_accesses"] == 0), Is.True);
        Assert.That(rows.All(r => r.Bytes % Pte.PageSize == 0), Is.True, "whole pages per connection keep the per-page relations exact");

        // Hot: the two files together fit the pool and stay mapped; cold: each page misses once.
        var hot = rows.Single(r => r.Experiment == "sendfile-hot" && r.Strategy == cache);
        Assert.That(hot["mappings"] + hot["shootdowns"], Is.Zero);
        var cold = rows.Single(r => r.Experiment == "sendfile-cold" && r.Strategy == cache);
        Assert.That(cold["mappings"], Is.EqualTo(cold.Bytes / Pte.PageSize));
        Assert.That(cold.Bytes, Is.EqualTo(JsonValues.Number(cold.Params["nsfbufs"]) * Pte.PageSize), "one turn: the first halves, together the pool");
        var original = rows.Single(r => r.Experiment == "sendfile-cold" && r.Strategy == broadcaster);
        Assert.That(original["mappings"], Is.EqualTo(original.Bytes / Pte.PageSize));
        Assert.That(original.Bytes, Is.EqualTo(cold.Bytes));
    }

    [Test]
    public void VirtualTimeRefusesAProfileWithoutPricesAndAHostBackend()
    {
        Assert.That(() => new Native.PageTable.Machine(new MachineOptions { Time = MachineTime.Virtual, Cost = CostModel.Zero }),
            Throws.ArgumentException.With.Message.Contains("positive prices"));
        Assert.That(() => new Native.PageTable.Machine(new MachineOptions { Time = MachineTime.Virtual, Cost = CostModel.Default, Quantum = TimeSpan.FromSeconds(1) }),
            Throws.InstanceOf<ArgumentOutOfRangeException>());
    }
}
