using Native.PageTable;
using Native.SfBufNative;
using Native.Tests.SfBuf;
using NUnit.Framework;
using SfBufHandle = Native.SfBufNative.SfBuf;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Conformance;

/// <summary>AllocMany at its edges: a page named twice, and a machine disposed while callers wait in the fallback's gate.</summary>
[TestFixture]
[NonParallelizable]
public sealed class AllocManyEdgeTests
{
    /// <summary>A page named twice needs one mapping, referenced twice: a pool of one slot serves it (it threw, counting the page twice).</summary>
    [Test]
    public void APageNamedTwiceNeedsOneSlot([Values(SfBufMapper.EpochCache, SfBufMapper.I386)] string strategy)
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = SfBufMapper.Create(strategy, m, 1);
        var page = SfBufRig.NewPage(m);
        m.Run(0, () =>
        {
            var both = new SfBufHandle[2];
            Assert.That(sfbufs.AllocMany([page, page], both, SfBufFlags.NoWait), Is.True);
            Assert.That(both[1].Kva, Is.EqualTo(both[0].Kva), "one mapping");
            Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(both[1])), Is.EqualTo(SfBufRig.Stamp(page)));
            Assert.That(sfbufs.Stats().NsfbufsUsed, Is.EqualTo(1));
            sfbufs.Free(both[1]);
            sfbufs.Free(both[0]);
        });

        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.Zero);
    }

    /// <summary>
    /// A thread waiting for a mapping when the machine is disposed ends with
    /// <see cref="MachineStoppedException"/>: the strategy does not unlock the pool lock the
    /// stopped sleep did not retake (sfbuf-i386, original and kmap did, and the
    /// SynchronizationLockException hid why the thread stopped).
    /// </summary>
    [Test]
    public void AWaiterStoppedByDisposeEndsWithMachineStopped([Values(SfBufMapper.I386, SfBufMapper.Original, SfBufMapper.LinuxKmap, SfBufMapper.EpochCache)] string strategy)
    {
        KernelThread waiter;
        var m = new SimMachine(SfBufRig.Small() with { KernelMapPages = 1 });
        try
        {
            var sfbufs = SfBufMapper.Create(strategy, m, 1);
            var pages = SfBufRig.NewPages(m, 2);
            var channel = new object();
            m.StartThread("squatter", () =>
            {
                var sf = sfbufs.Alloc(pages[0]);
                m.Sleep(channel, timeout: TimeSpan.FromMinutes(5)); // holds the only mapping until the machine stops
                sfbufs.Free(sf);
            }, cpu: 0, bound: true);
            SfBufRig.WaitUntil(() => m.SleepingThreads == 1, "the squatter holds the only mapping");
            waiter = m.StartThread("waiter", () => sfbufs.Alloc(pages[1]), cpu: 1, bound: true);
            SfBufRig.WaitUntil(() => m.SleepingThreads == 2, "the waiter waits");
        }
        finally
        {
            m.Dispose();
        }

        Assert.That(waiter.Fault, Is.InstanceOf<MachineStoppedException>());
    }

    /// <summary>
    /// Disposing a machine while one caller holds the fallback's gate (asleep for its second
    /// page) and another waits for the gate stops both with <see cref="MachineStoppedException"/>,
    /// not with an error from a gate lock they no longer hold.
    /// </summary>
    [Test]
    public void CallersStoppedInTheGateEndWithMachineStopped()
    {
        KernelThread holder, waiter;
        var m = new SimMachine(SfBufRig.Small(cpus: 3));
        try
        {
            var sfbufs = SfBufMapper.Create(SfBufMapper.I386, m, 2);
            var pages = SfBufRig.NewPages(m, 5);
            var channel = new object();
            m.StartThread("squatter", () =>
            {
                var sf = sfbufs.Alloc(pages[0]);
                m.Sleep(channel, timeout: TimeSpan.FromMinutes(5)); // holds one of the two slots until the machine stops
                sfbufs.Free(sf);
            }, cpu: 0, bound: true);
            SfBufRig.WaitUntil(() => sfbufs.Stats().NsfbufsUsed == 1, "the squatter holds a slot");
            holder = m.StartThread("gate-holder", () => sfbufs.AllocMany([pages[1], pages[2]], new SfBufHandle[2]), cpu: 1, bound: true);
            SfBufRig.WaitUntil(() => m.SleepingThreads == 2, "the gate's holder waits for its second page");
            waiter = m.StartThread("gate-waiter", () => sfbufs.AllocMany([pages[3], pages[4]], new SfBufHandle[2]), cpu: 2, bound: true);
            SfBufRig.WaitUntil(() => m.SleepingThreads == 3, "the second caller waits for the gate");
        }
        finally
        {
            m.Dispose();
        }

        Assert.That(holder.Fault, Is.InstanceOf<MachineStoppedException>());
        Assert.That(waiter.Fault, Is.InstanceOf<MachineStoppedException>());
    }
}
