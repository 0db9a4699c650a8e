using System.Collections.Concurrent;
using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;
using SfBufHandle = Native.SfBufNative.SfBuf;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>
/// Every strategy on a short random stress under each shootdown mechanism, in real and virtual
/// time: two CPUs allocate, read, write, free and hand shared mappings to each other with both
/// oracles on. The strategies are the same; only the machine delivers their shootdowns
/// differently, and neither oracle may fire with either delivery.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class ShootdownMechanismStressTests
{
    private const int Nsfbufs = 64;
    private const int PageCount = 3 * Nsfbufs;
    private const int MaxHeld = 4;
    private const int OperationsPerCpu = 3000;

    public static IEnumerable<TestCaseData> Cases() =>
        from strategy in AllStrategies.Names
        from mechanism in new[] { ShootdownMechanism.Ipi, ShootdownMechanism.Broadcast }
        from time in new[] { MachineTime.Real, MachineTime.Virtual }
        select new TestCaseData(strategy, mechanism, time);

    [TestCaseSource(nameof(Cases))]
    public void NoStaleAndNoLatentStaleAccess(string strategy, ShootdownMechanism mechanism, MachineTime time)
    {
        var info = SfBufMapper.Describe(strategy);
        var options = SfBufRig.Small(flavor: info.Flavor) with { Shootdown = mechanism, Time = time };
        if (time == MachineTime.Virtual)
        {
            options = options with { Cost = CostModel.Default };
        }

        using var m = new SimMachine(options);
        using var sfbufs = SfBufMapper.Create(strategy, m, info.PoolSizeIsParameter ? Nsfbufs : null);
        var pages = SfBufRig.NewPages(m, PageCount);
        var inbox = new[] { new ConcurrentQueue<SfBufHandle>(), new ConcurrentQueue<SfBufHandle>() };
        var badReads = new long[2];
        var before = m.Counters();
        var threads = Enumerable.Range(0, 2).Select(cpu => m.StartThread($"stress-cpu{cpu}", () =>
        {
            var random = new Random(0x5f00 + cpu);
            var c = m.CurrentCpu;
            var held = new List<(SfBufHandle Sf, bool Shared, bool ReadOnly)>(MaxHeld);
            void Check(SfBufHandle sf) =>
                badReads[cpu] += c.ReadUInt64(sfbufs.Kva(sf) + (ulong)(8 * random.Next(512))) == SfBufRig.Stamp(sf.Page) ? 0 : 1;

            for (int op = 0; op < OperationsPerCpu; op++)
            {
                if (inbox[cpu].TryDequeue(out var delivered))
                {
                    Check(delivered);
                    sfbufs.Free(delivered);
                }

                int choice = random.Next(16);
                if (held.Count == 0 || (held.Count < MaxHeld && choice < 5))
                {
                    bool shared = random.Next(2) == 0;
                    bool readOnly = random.Next(2) == 0;
                    var flags = (shared ? SfBufFlags.Default : SfBufFlags.CpuPrivate) | (readOnly ? SfBufFlags.ReadOnly : 0);
                    var sf = sfbufs.Alloc(pages[random.Next(PageCount)], SfBufRig.WhileHolding(info, held.Exists(h => !h.Shared), flags));
                    if (!sf.IsNone)
                    {
                        held.Add((sf, shared, readOnly));
                    }
                }
                else if (choice < 11)
                {
                    var (sf, _, readOnly) = held[random.Next(held.Count)];
                    if (random.Next(4) == 0 && !readOnly)
                    {
                        c.WriteUInt64(sfbufs.Kva(sf) + (ulong)(8 * random.Next(512)), SfBufRig.Stamp(sf.Page));
                    }
                    else
                    {
                        Check(sf);
                    }
                }
                else if (choice == 11 && inbox[1 - cpu].Count < MaxHeld && held.Find(h => h.Shared) is { Sf.IsNone: false } share)
                {
                    var again = sfbufs.Alloc(share.Sf.Page, SfBufRig.WhileHolding(info, held.Exists(h => !h.Shared), SfBufFlags.ReadOnly));
                    if (!again.IsNone)
                    {
                        inbox[1 - cpu].Enqueue(again);
                    }
                }
                else
                {
                    int victim = SfBufRig.ReleaseIndex(info, held, h => !h.Shared, random.Next(held.Count));
                    sfbufs.Free(held[victim].Sf);
                    held.RemoveAt(victim);
                }
            }

            foreach (var (sf, _, _) in SfBufRig.ReleaseAll(info, held))
            {
                sfbufs.Free(sf);
            }
        }, cpu, bound: true)).ToArray();
        SfBufRig.JoinAll(threads, TimeSpan.FromMinutes(5));
        m.Run(0, () =>
        {
            foreach (var queue in inbox)
            {
                while (queue.TryDequeue(out var left))
                {
                    sfbufs.Free(left);
                }
            }
        });

        var d = m.Counters() - before;
        TestContext.Out.WriteLine($"{strategy} {mechanism} {time}: shootdowns {d[Counter.ShootdownRounds]}, broadcast instructions {d[Counter.BroadcastInvalidations]}, ipis {d[Counter.IpisSent]}");
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        Assert.That(d[Counter.LatentStaleAccesses], Is.Zero);
        Assert.That(badReads, Is.All.EqualTo(0), "every read through an sf_buf saw its page's stamp");
        if (mechanism == ShootdownMechanism.Broadcast)
        {
            Assert.That(d[Counter.IpisSent] + d[Counter.IpisReceived] + d[Counter.IpiTargets], Is.Zero, "no IPI and no handler");
            Assert.That(d[Counter.BroadcastSyncs], Is.EqualTo(d[Counter.ShootdownRounds]), "one completion wait per shootdown");
        }
        else
        {
            Assert.That(d[Counter.BroadcastInvalidations] + d[Counter.BroadcastSyncs], Is.Zero);
        }
    }
}
