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

    /// <summary>The strategies whose shared allocations of a cached page hit (<see cref="SfBufStrategyInfo.CachedUsers"/>), and the direct map.</summary>
    public static IEnumerable<TestCaseData> Cases() =>
        from s in SfBufMapper.StrategyNames
        let info = SfBufMapper.Describe(s)
        where info.CachedUsers.HasFlag(SfBufUsers.Shared) || info.NeedsDirectMap
        from isChecked in new[] { false, true }
        select new TestCaseData(s, isChecked);

    [TestCaseSource(nameof(Cases))]
    public void AllocKvaFreeOfACachedPageAllocatesNoManagedMemory(string strategy, bool isChecked)
    {
        var info = SfBufMapper.Describe(strategy);
        using var m = new SimMachine(SfBufRig.Small(flavor: info.Flavor) with { Checked = isChecked });
        using var sfbufs = SfBufMapper.Create(strategy, m, info.PoolSizeIsParameter ? 8 : null);
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
        if (info.NeedsDirectMap)
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
