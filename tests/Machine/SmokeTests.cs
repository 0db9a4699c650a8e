using Native.PageTable;
using NUnit.Framework;

namespace Native.Tests.Machine;

[TestFixture]
[NonParallelizable]
public sealed class SmokeTests
{
    [Test]
    public void AKernelPageWrittenOnOneCpuIsReadOnTheOther()
    {
        using var m = new Native.PageTable.Machine(new MachineOptions { PhysicalMemoryBytes = 16UL << 20, SfBufWindowPages = 64 });
        ulong va = m.Layout.KernelMap.Start;
        VmPage page = default;
        m.Run(0, () =>
        {
            page = m.Physical.Alloc(AllocFlags.Zero | AllocFlags.Wired);
            m.KernelPmap.KEnter(va, page);
            m.CurrentCpu.WriteUInt64(va, 0xdeadbeef);
        });
        ulong seen = 0;
        m.Run(1, () => seen = m.CurrentCpu.ReadUInt64(va));
        Assert.That(seen, Is.EqualTo(0xdeadbeefUL));
    }
}
