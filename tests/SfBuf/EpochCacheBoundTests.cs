using Native.PageTable;
using Native.SfBufNative;
using Native.Tests.Machine;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>
/// epoch-cache's exposure bound (<see cref="EpochCacheMapper.ExposureBoundNs"/>): in virtual time,
/// no TLB keeps a retired slot's old translation longer than the bound, even on a CPU that never
/// reaches a flush point (one in a loop that only touches memory, or an idle one); the planted
/// bug that skips the early flush shows the check can fail.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class EpochCacheBoundTests
{
    private const int Pool = 64;

    /// <summary>
    /// CPU 1, four times over, caches a mapping and then runs a loop that only touches memory (no
    /// sf_buf call, no poll, no context switch: no flush point) for twenty times the bound, while
    /// CPU 0 maps three pools' worth of pages over and over, which retires CPU 1's slot. The
    /// cross-CPU spin is set far above the bound, so the slot-hungry fallback alone would leave
    /// CPU 1 exposed for milliseconds: the early flush (an alarm CPU 1 takes itself, in its loop)
    /// keeps the bound, and every miss that waits for CPU 1's epoch waits no longer than it.
    /// </summary>
    [Test]
    public void ACpuThatReachesNoFlushPointIsExposedNoLongerThanTheBound()
    {
        using var m = new SimMachine(Sim.Small(2) with
        {
            Checked = true,
            Time = MachineTime.Virtual,
            Cost = CostModel.Default,
            CrossCpuSpin = TimeSpan.FromMilliseconds(5),
        });
        using var sfbufs = (EpochCacheMapper)SfBufMapper.Create(SfBufMapper.EpochCache, m, Pool);
        var mine = SfBufRig.NewPages(m, 1);
        var churn = SfBufRig.NewPages(m, 3 * Pool);
        var cached = new Flag();
        var finished = new Flag();
        var looper = m.StartThread("looper", () =>
        {
            var cpu = m.CurrentCpu;
            ulong scratch = m.KernelMemory.Alloc(Pte.PageSize);
            for (int round = 0; round < 4; round++)
            {
                var sf = sfbufs.Alloc(mine[0]);
                Assert.That(cpu.ReadUInt64(sfbufs.Kva(sf)), Is.EqualTo(SfBufRig.Stamp(mine[0])));
                sfbufs.Free(sf); // inactive: the slot keeps its mapping, and this TLB its translation
                cached.Set();
                long until = cpu.VirtualTimeNs + (20 * EpochCacheMapper.ExposureBoundNs);
                while (cpu.VirtualTimeNs < until)
                {
                    cpu.Fill(scratch, Pte.PageSize, 0); // touches memory only: services IPIs, passes no flush point
                }
            }

            m.KernelMemory.Free(scratch, Pte.PageSize);
            finished.Set();
        }, cpu: 1, bound: true);
        var churner = m.StartThread("churner", () =>
        {
            Sim.SpinOnCpu(m, () => cached.IsSet, "cpu 1 caches its mapping");
            while (!finished.IsSet)
            {
                foreach (var page in churn)
                {
                    var sf = sfbufs.Alloc(page);

                    Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(sf)), Is.EqualTo(SfBufRig.Stamp(page)));
                    sfbufs.Free(sf);
                }
            }
        }, cpu: 0, bound: true);
        Sim.Join(looper, churner);
        m.CloseExposures();

        var counts = m.Counters();
        var details = sfbufs.Stats().Details;
        Assert.That(counts[Counter.StaleAccesses], Is.Zero);
        Assert.That(counts[Counter.LatentStaleAccesses], Is.Zero);
        Assert.That(counts[Counter.Exposures], Is.GreaterThan(0), "cpu 1 still cached a retired translation");
        Assert.That(m.LongestExposureNs, Is.LessThanOrEqualTo(EpochCacheMapper.ExposureBoundNs));
        Assert.That(details[EpochCacheMapper.DetailEarlyFlushes], Is.GreaterThan(0), "the alarm forced the catch-up");
        Assert.That(counts[Counter.IpisSent], Is.LessThanOrEqualTo(details[EpochCacheMapper.DetailFallbackShootdowns]), "at most one IPI per fallback on 2 CPUs");
    }

    /// <summary>
    /// An idle CPU that cached a mapping is exposed when the slot is retired, and stays so until
    /// it runs again unless something closes the window: the early flush marks it flush-pending
    /// (no IPI), which ends its exposure within the bound. CPU 0's misses never wait for an idle
    /// CPU, so nothing else ends it: the planted bug that skips the early flush leaves it open to
    /// the end, twenty times the bound.
    /// </summary>
    [TestCase(false, TestName = "{m}(kept)")]
    [TestCase(true, TestName = "{m}(planted: no early flush)")]
    public void AnIdleCpuIsExposedNoLongerThanTheBoundAndGetsNoIpi(bool planted)
    {
        using var m = new SimMachine(Sim.Small(2) with
        {
            Checked = true,
            Time = MachineTime.Virtual,
            Cost = CostModel.Default,
        });
        if (planted)
        {
            m.TestHookPlant(PlantedBug.EpochBoundSkipsEarlyFlush);
        }

        using var sfbufs = (EpochCacheMapper)SfBufMapper.Create(SfBufMapper.EpochCache, m, Pool);
        var mine = SfBufRig.NewPages(m, 1);
        var churn = SfBufRig.NewPages(m, 3 * Pool);
        m.Run(1, () =>
        {
            var sf = sfbufs.Alloc(mine[0]);
            m.CurrentCpu.ReadUInt64(sfbufs.Kva(sf));
            sfbufs.Free(sf);
        });
        m.Run(0, () =>
        {
            var cpu = m.CurrentCpu;
            foreach (var page in churn)
            {
                var sf = sfbufs.Alloc(page);
                cpu.ReadUInt64(sfbufs.Kva(sf));
                sfbufs.Free(sf);
            }

            ulong scratch = m.KernelMemory.Alloc(Pte.PageSize);
            long until = cpu.VirtualTimeNs + (20 * EpochCacheMapper.ExposureBoundNs);
            while (cpu.VirtualTimeNs < until)
            {
                cpu.Fill(scratch, Pte.PageSize, 0); // cpu 1 stays idle meanwhile
            }

            m.KernelMemory.Free(scratch, Pte.PageSize);
        });
        m.CloseExposures();

        var counts = m.Counters();
        Assert.That(counts[Counter.Exposures], Is.GreaterThan(0), "idle cpu 1 still cached a retired translation");
        Assert.That(counts[Counter.IpisSent], Is.Zero, "an idle CPU is marked, never interrupted");
        if (planted)
        {
            Assert.That(m.LongestExposureNs, Is.GreaterThan(EpochCacheMapper.ExposureBoundNs), "without the early flush the bound fails");
            Assert.That(sfbufs.Stats().Details[EpochCacheMapper.DetailEarlyFlushes], Is.Zero);
        }
        else
        {
            Assert.That(m.LongestExposureNs, Is.LessThanOrEqualTo(EpochCacheMapper.ExposureBoundNs));
            Assert.That(sfbufs.Stats().Details[EpochCacheMapper.DetailEarlyFlushes], Is.GreaterThan(0));
        }
        Assert.That(counts[Counter.StaleAccesses] + counts[Counter.LatentStaleAccesses], Is.Zero);
    }
}
