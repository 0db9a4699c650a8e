using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>
/// The hot paths allocate nothing managed: a cache hit (or the direct map) through alloc + kva +
/// a read through the address + free, measured in bytes allocated on the kernel thread that runs
/// it, in the production mode (checked off) and under the oracles (checked on). Every hit returns
/// the first mapping's address and reads the page's stamp through it.
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
        ulong stamp = SfBufRig.Stamp(page);
        long allocated = -1;
        ulong firstKva = 0;
        int moved = 0, wrongReads = 0;

        m.Run(0, () =>
        {
            var cpu = m.CurrentCpu;

            // The first mapping is a miss and may fill lazily built structures; then warm the loop.
            for (int i = 0; i < 100; i++)
            {
                var sf = sfbufs.Alloc(page);
                ulong kva = sfbufs.Kva(sf);
                firstKva = i == 0 ? kva : firstKva;
                moved += kva != firstKva ? 1 : 0;
                wrongReads += cpu.ReadUInt64(kva) != stamp ? 1 : 0;
                sfbufs.Free(sf);
            }

            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < Operations; i++)
            {
                var sf = sfbufs.Alloc(page);
                ulong kva = sfbufs.Kva(sf);
                moved += kva != firstKva ? 1 : 0;
                wrongReads += cpu.ReadUInt64(kva) != stamp ? 1 : 0;
                sfbufs.Free(sf);
            }

            allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        });

        // Every hit returns the address of the mapping the first (missing) allocation made (for
        // the direct map, the page's direct-map address), and reads the page through it.
        if (strategy == SfBufMapper.Amd64)
        {
            Assert.That(firstKva, Is.EqualTo(VmLayout.DMAP_BASE + page.PhysicalAddress));
        }
        else
        {
            Assert.That(m.Layout.SfBufWindow.Contains(firstKva), Is.True, $"0x{firstKva:x}: a cached mapping lives in the sf_buf window");
        }

        Assert.That(moved, Is.Zero, "every hit returned the cached mapping's address");
        Assert.That(wrongReads, Is.Zero, "every read through the address saw the page's stamp");
        Assert.That(allocated, Is.Zero, $"{strategy} allocated {allocated} managed bytes in {Operations} hits");
    }
}
