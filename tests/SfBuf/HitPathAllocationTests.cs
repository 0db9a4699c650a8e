using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>
/// The hot paths allocate nothing managed: a cache hit (or the direct map) through alloc + kva +
/// free, measured in bytes allocated on the kernel thread that runs it, in the production mode
/// (checked off) and under the oracles (checked on).
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class HitPathAllocationTests
{
    private const int Operations = 10_000;

    [Test]
    public void AllocKvaFreeOfACachedPageAllocatesNoManagedMemory(
        [Values(SfBufMapper.I386, SfBufMapper.Amd64, SfBufMapper.EpochCache, SfBufMapper.LinuxKmap)] string strategy,
        [Values(false, true)] bool isChecked)
    {
        var flavor = strategy == SfBufMapper.Amd64 ? MachineFlavor.Amd64 : MachineFlavor.I386;
        using var m = new SimMachine(SfBufRig.Small(flavor: flavor) with { Checked = isChecked });
        using var sfbufs = SfBufMapper.Create(strategy, m, strategy == SfBufMapper.Amd64 || strategy == SfBufMapper.LinuxKmap ? null : 8);
        var page = SfBufRig.NewPage(m);
        long allocated = -1;
        ulong sum = 0;

        m.Run(0, () =>
        {
            // The first mapping is a miss and may fill lazily built structures; then warm the loop.
            for (int i = 0; i < 100; i++)
            {
                var sf = sfbufs.Alloc(page);
                sum += sfbufs.Kva(sf);
                sfbufs.Free(sf);
            }

            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < Operations; i++)
            {
                var sf = sfbufs.Alloc(page);
                sum += sfbufs.Kva(sf);
                sfbufs.Free(sf);
            }

            allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        });

        Assert.That(sum, Is.Not.Zero);
        Assert.That(allocated, Is.Zero, $"{strategy} allocated {allocated} managed bytes in {Operations} hits");
    }
}
