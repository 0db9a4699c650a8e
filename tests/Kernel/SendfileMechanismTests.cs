using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;

namespace Native.Tests.Kernel;

/// <summary>
/// The counts of one strategy's own mechanism when a hot file is sent again and again
/// (<see cref="SendfileTests.SendHotFile"/>), beyond what the registry declares and
/// <see cref="SendfileTests"/> checks of every strategy: each test names the strategy it is about.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class SendfileMechanismTests
{
    /// <summary>
    /// No reuse by page: every sf_buf is a new lwbuf (a PTE and a local invlpg) made global by a
    /// shootdown to the other CPU; the NIC's <c>lwbuf_kva</c> then has nothing to do.
    /// </summary>
    [TestCase(SfBufMapper.DragonFlyLwbuf, 1)]
    [TestCase(SfBufMapper.DragonFlyLwbuf, 2)]
    public void LwbufMakesEverySharedBufferGlobalWithOneShootdown(string strategy, int cpus)
    {
        var run = new SendfileTests(strategy, cpus).SendHotFile();
        Assert.That(run.Steady[Counter.KernelPteWrites], Is.EqualTo(run.SteadyPages));
        Assert.That(run.Steady[Counter.ShootdownRounds], Is.EqualTo(cpus > 1 ? run.SteadyPages : 0));
        Assert.That(run.End.Details["lwbuf.kva_syncs"], Is.Zero);
    }

    /// <summary>
    /// No reuse, no IPI: every sf_buf is a read-only PTE and a new generation, consumed by the NIC.
    /// The first pass's page-ins write each page through an ordinary kernel mapping (emap PTEs are
    /// read-only), shot down at removal on SMP; later passes none.
    /// </summary>
    [TestCase(SfBufMapper.NetBsdEmap, 1)]
    [TestCase(SfBufMapper.NetBsdEmap, 2)]
    public void EmapSendsNoIpiOnceThePagesAreIn(string strategy, int cpus)
    {
        var run = new SendfileTests(strategy, cpus).SendHotFile();
        Assert.That(run.Steady[Counter.KernelPteWrites], Is.EqualTo(run.SteadyPages));
        Assert.That(run.Steady[Counter.ShootdownRounds], Is.Zero);
        Assert.That(run.Steady[Counter.IpisSent], Is.Zero);
        Assert.That(run.End.Details["emap.kenter_maps"], Is.EqualTo(run.Pages), "one page-in per page, in the first pass");
        Assert.That(run.Whole[Counter.ShootdownRounds], Is.EqualTo(cpus > 1 ? run.Pages : 0));
    }
}
