using System.Reflection;
using System.Runtime.CompilerServices;
using Native.PageTable;
using Native.SampleStrategy;
using Native.SfBufNative;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>
/// A strategy from another assembly: <c>sample-batched</c> (samples/SampleStrategy), written
/// against SfBufNative's public API only, is in the registry and every list of names once
/// registered, is created by name like a built-in one, and counts what the experiments check. The
/// registry refuses a second strategy of a name in use. (The conformance suite, the stress tests
/// and the explorer run it as they run every strategy.)
/// </summary>
[TestFixture]
public sealed class SampleStrategyTests
{
    [Test]
    public void TheSampleLivesOutsideTheLibraryAndSeesNoInternals()
    {
        var library = typeof(SfBufMapper).Assembly;
        var sample = typeof(BatchedFlushMapper).Assembly;
        Assert.That(sample, Is.Not.SameAs(library));
        var friends = library.GetCustomAttributes<InternalsVisibleToAttribute>().Select(a => a.AssemblyName).ToList();
        Assert.That(friends, Does.Not.Contain(sample.GetName().Name), "the sample uses the public API only");
    }

    [Test]
    public void TheRegisteredSampleIsInTheRegistryAndEveryListOfNames()
    {
        Assert.That(SfBufStrategyInfo.All, Does.Contain(BatchedFlushMapper.Info));
        Assert.That(SfBufStrategyInfo.All[^1], Is.SameAs(BatchedFlushMapper.Info), "registered strategies come after the built-in ones");
        Assert.That(SfBufMapper.StrategyNames, Does.Contain(BatchedFlushMapper.StrategyName));
        Assert.That(SfBufStrategyInfo.Names, Is.EqualTo(SfBufStrategyInfo.All.Select(i => i.Name)));
        Assert.That(SfBufStrategyInfo.NamesOf(SfBufStrategyGroup.Sample), Is.EqualTo(new[] { BatchedFlushMapper.StrategyName }));
        Assert.That(SfBufMapper.PaperStrategyNames.Concat(SfBufMapper.PeerNames).Concat(SfBufMapper.OwnNames), Does.Not.Contain(BatchedFlushMapper.StrategyName));
        Assert.That(SfBufMapper.Describe(BatchedFlushMapper.StrategyName), Is.SameAs(BatchedFlushMapper.Info));
        Assert.That(Native.Perf.Paper.PaperCommand.ChooseStrategies(["all"], peers: false), Does.Contain(BatchedFlushMapper.StrategyName));
    }

    [Test]
    public void RegisteringANameInUseThrowsAndChangesNothing()
    {
        var before = SfBufStrategyInfo.All;
        Assert.That(() => SfBufStrategyInfo.Register(BatchedFlushMapper.Info),
            Throws.ArgumentException.With.Message.Contains("'sample-batched' is already registered"));
        Assert.That(() => SfBufStrategyInfo.Register(BatchedFlushMapper.Info with { Family = "another" }),
            Throws.ArgumentException.With.Message.Contains("already registered"));
        Assert.That(() => SfBufStrategyInfo.Register(BatchedFlushMapper.Info with { Name = SfBufMapper.I386 }),
            Throws.ArgumentException.With.Message.Contains("'sfbuf-i386' is in use by a built-in strategy"));
        Assert.That(() => SfBufStrategyInfo.Register(BatchedFlushMapper.Info with { Name = " " }), Throws.ArgumentException);
        Assert.That(() => SfBufStrategyInfo.Register(null!), Throws.ArgumentNullException);
        Assert.That(SfBufStrategyInfo.All, Is.EqualTo(before));

        // perf's start-up and the tests' module initializer both call it: once per process.
        Assert.That(Native.Perf.StrategyCatalog.RegisterExternal, Throws.Nothing);
        Assert.That(SfBufStrategyInfo.All, Is.EqualTo(before));
    }

    [Test]
    public void TheExternalSubclassIsCreatedByNameWithThePoolItIsGiven()
    {
        using var m = new SimMachine(SfBufRig.Small(cpus: 1, windowPages: 8));
        int published = SfBufMetrics.LiveCount;
        using var sfbufs = SfBufMapper.Create(BatchedFlushMapper.StrategyName, m, 3);

        Assert.That(sfbufs, Is.TypeOf<BatchedFlushMapper>());
        Assert.That(sfbufs.Name, Is.EqualTo(BatchedFlushMapper.StrategyName));
        Assert.That(sfbufs.Capacity(), Is.EqualTo(3));
        Assert.That(sfbufs.Stats().Nsfbufs, Is.EqualTo(3));
        Assert.That(SfBufMetrics.LiveCount, Is.EqualTo(published + 1), "its instruments are published like a built-in's");
        Assert.That(() => SfBufMapper.Create(BatchedFlushMapper.StrategyName, m, 9), Throws.TypeOf<ArgumentOutOfRangeException>(), "no larger than the sf_buf window");
    }

    /// <summary>
    /// A pool of four on two CPUs: four allocations write four PTEs and send nothing; the fifth
    /// finds no clean slot and clears the four dirty ones with one shootdown round; NoWait at
    /// exhaustion gets no sf_buf; a double free is refused. Every count the experiments check adds up.
    /// </summary>
    [Test]
    public void FreedSlotsAreInvalidatedTogetherByOneShootdownWhenNoCleanSlotIsLeft()
    {
        const int pool = 4;
        using var m = new SimMachine(SfBufRig.Small(cpus: 2, windowPages: 8));
        using var sfbufs = SfBufMapper.Create(BatchedFlushMapper.StrategyName, m, pool);
        var pages = SfBufRig.NewPages(m, pool + 1);
        var before = m.Counters();
        m.Run(0, () =>
        {
            foreach (var page in pages.Take(pool))
            {
                var sf = sfbufs.Alloc(page);
                Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(sf)), Is.EqualTo(SfBufRig.Stamp(page)));
                sfbufs.Free(sf);
                Assert.That(() => sfbufs.Free(sf), Throws.InvalidOperationException.With.Message.Contains("double free"));
            }

            Assert.That((m.Counters() - before)[Counter.ShootdownRounds], Is.Zero, "a clean slot needs no invalidation");
            var held = Enumerable.Range(0, pool).Select(i => sfbufs.Alloc(pages[pool - i])).ToArray();
            Assert.That(sfbufs.Alloc(pages[0], SfBufFlags.NoWait), Is.EqualTo(SfBufNative.SfBuf.None), "every slot in use");
            foreach (var sf in held)
            {
                Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(sf)), Is.EqualTo(SfBufRig.Stamp(sf.Page)));
                sfbufs.Free(sf);
            }
        });

        var d = m.Counters() - before;
        var stats = sfbufs.Stats();
        Assert.That(stats.Misses, Is.EqualTo(2 * pool));
        Assert.That(stats.Hits, Is.Zero);
        Assert.That(stats.Failures, Is.EqualTo(1));
        Assert.That(stats.NsfbufsUsed, Is.Zero);
        Assert.That(stats.NsfbufsPeak, Is.EqualTo(pool));
        Assert.That(stats.Details[BatchedFlushMapper.DetailFlushes], Is.EqualTo(1));
        Assert.That(stats.Details[BatchedFlushMapper.DetailFlushedSlots], Is.EqualTo(pool));
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(1), "one batched shootdown for four freed slots");
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(stats.Misses), "one PTE write per miss");
        Assert.That(d[Counter.MappedPages], Is.EqualTo(d[Counter.KernelPteWrites]), "every PTE write is a recorded mapping (perf paper's check)");
        Assert.That(d[Counter.Mappings], Is.EqualTo(stats.Misses));
        Assert.That(d[Counter.KernelPteClears], Is.EqualTo(pool), "the flush cleared the dirty slots");
        Assert.That(d[Counter.StaleAccesses] + d[Counter.LatentStaleAccesses], Is.Zero);
    }
}
