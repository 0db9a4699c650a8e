using Native.PageTable;
using Native.SfBufNative.Kernel;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Kernel;

/// <summary>
/// <c>uiomove_fromphys</c> itself, on every strategy: offsets and lengths across page
/// boundaries in both directions, user and kernel buffers, and a fault part-way (EFAULT, with
/// the bytes moved before it reported through the uio).
/// </summary>
[TestFixtureSource(typeof(StrategyFixture), nameof(StrategyFixture.StrategiesAndCpus))]
[NonParallelizable]
public sealed class UioMoveTests(string strategy, int cpus) : StrategyFixture(strategy, cpus)
{
    private const int PhysPages = 4;
    private const ulong UserBuffer = 0x2000_0000;
    private const int UserPages = 6;

    private static readonly (long Offset, long Length)[] s_cases =
    [
        (0, Pte.PageSize),                          // exactly one page
        (0, 1),                                     // one byte
        (Pte.PageSize - 1, 2),                      // two bytes straddling a boundary
        (0x123, (2 * Pte.PageSize) + 0x456),        // mid-page start and end, three pages
        (Pte.PageSize, 3 * Pte.PageSize),           // page-aligned, three whole pages
        (7, (4 * Pte.PageSize) - 7),                // to the very end of the last page
        (0x800, 0),                                 // nothing
    ];

    [TestCase(UioDirection.Read, UioSegment.UserSpace)]
    [TestCase(UioDirection.Write, UioSegment.UserSpace)]
    [TestCase(UioDirection.Read, UioSegment.SystemSpace)]
    [TestCase(UioDirection.Write, UioSegment.SystemSpace)]
    public void EveryOffsetAndLengthAcrossPageBoundariesMovesExactlyThoseBytes(UioDirection direction, UioSegment segment)
    {
        using var rig = new Rig(Cpus, Strategy);
        long mappedPages = 0;
        var before = rig.Machine.Counters();
        foreach (var (offset, length) in s_cases)
        {
            rig.ResetPhys();
            rig.Run(cpu =>
            {
                ulong buffer = segment == UioSegment.UserSpace ? UserBuffer + 0x31 : rig.KernelBuffer + 0x31;
                var source = Pattern(length, (int)offset);
                if (direction == UioDirection.Write)
                {
                    cpu.Write(buffer, source);
                }
                else
                {
                    cpu.Fill(buffer, length + 64, 0xee);
                }

                var uio = new Uio(buffer, length, segment, direction, offset: 1000);
                int error = UioMove.FromPhys(rig.Kernel, rig.Pages, offset, length, uio);

                Assert.That(error, Is.EqualTo(Errno.OK));
                Assert.That(uio.Resid, Is.Zero);
                Assert.That(uio.Offset, Is.EqualTo(1000 + length));
                Assert.That(uio.Base, Is.EqualTo(buffer + (ulong)length));
                if (direction == UioDirection.Read)
                {
                    var read = new byte[length + 1];
                    cpu.Read(buffer, read);
                    Assert.That(read.AsSpan(0, (int)length).ToArray(), Is.EqualTo(rig.PhysBytes(offset, length)), $"read {length} at {offset}");
                    Assert.That(read[length], Is.EqualTo(0xee), "nothing past the end is written");
                }
                else
                {
                    Assert.That(rig.PhysBytes(offset, length), Is.EqualTo(source), $"write {length} at {offset}");
                    Assert.That(rig.PhysBytes(0, offset), Is.EqualTo(rig.Original(0, offset)), "nothing before the offset is written");
                    long end = offset + length;
                    Assert.That(rig.PhysBytes(end, (PhysPages * Pte.PageSize) - end), Is.EqualTo(rig.Original(end, (PhysPages * Pte.PageSize) - end)), "nothing past the end is written");
                }
            });
            mappedPages += PagesSpanned(offset, length);
        }

        AssertPrivateUserCounts(rig.Machine.Counters() - before, mappedPages, writtenPages: direction == UioDirection.Write ? mappedPages : 0, rig.Kernel.SfBufs);
        Assert.That(rig.Machine.Counters()[Counter.LatentStaleAccesses], Is.Zero);
    }

    [TestCase(UioDirection.Read)]
    [TestCase(UioDirection.Write)]
    public void AFaultPartWayReturnsEfaultWithTheBytesMovedBeforeItReported(UioDirection direction)
    {
        using var rig = new Rig(Cpus, Strategy);
        const long offset = 0x200;
        const long length = 3 * Pte.PageSize;

        // The user buffer's third page is not mapped: the copy faults there.
        ulong buffer = UserBuffer + (3 * Pte.PageSize) + 0x300;
        rig.Run(cpu =>
        {
            rig.User.Unmap(UserBuffer + (5 * Pte.PageSize), Pte.PageSize);
            var source = Pattern(length, 3);
            if (direction == UioDirection.Write)
            {
                cpu.Write(buffer, source.AsSpan(0, (int)((2 * Pte.PageSize) - 0x300)));
            }

            var uio = new Uio(buffer, length, UioSegment.UserSpace, direction);
            int error = UioMove.FromPhys(rig.Kernel, rig.Pages, offset, length, uio);
            long moved = length - uio.Resid;

            Assert.That(error, Is.EqualTo(Errno.EFAULT));

            // Physical chunks end at 0x1000, 0x2000, 0x3000 of the pages; the user pages fault
            // at buffer offset 0x1d00, inside the second chunk. The chunk holding the fault is not counted (as uiomove).
            Assert.That(moved, Is.EqualTo(Pte.PageSize - offset));
            Assert.That(uio.Offset, Is.EqualTo(moved));
            Assert.That(uio.Base, Is.EqualTo(buffer + (ulong)moved));
            if (direction == UioDirection.Read)
            {
                var read = new byte[moved];
                Assert.That(cpu.CopyIn(buffer, read), Is.EqualTo(Errno.OK));
                Assert.That(read, Is.EqualTo(rig.PhysBytes(offset, moved)));
            }
            else
            {
                Assert.That(rig.PhysBytes(offset, moved), Is.EqualTo(source.AsSpan(0, (int)moved).ToArray()));
            }
        });

        Assert.That(rig.Machine.Counters()[Counter.StaleAccesses], Is.Zero);
        Assert.That(rig.Machine.Counters()[Counter.LatentStaleAccesses], Is.Zero);
        Assert.That(rig.Kernel.SfBufs.Stats().NsfbufsUsed, Is.Zero, "the sf_buf of the faulting chunk was freed");
    }

    private static long PagesSpanned(long offset, long length) =>
        length == 0 ? 0 : ((offset + length - 1) >> Pte.PageShift) - (offset >> Pte.PageShift) + 1;

    private static byte[] Pattern(long length, int salt)
    {
        var bytes = new byte[length];
        for (int i = 0; i < bytes.Length; i++)
        {
            bytes[i] = (byte)((i * 31) + salt);
        }

        return bytes;
    }

    /// <summary>A kernel on a machine, four wired physical pages with known bytes, a user address space and a kernel buffer.</summary>
    private sealed class Rig : IDisposable
    {
        private readonly byte[] _original = new byte[PhysPages * Pte.PageSize];

        public Rig(int cpus, string strategy)
        {
            Machine = new SimMachine(new MachineOptions { Flavor = Native.SfBufNative.SfBufMapper.Describe(strategy).FlavorOr(MachineFlavor.Amd64), Cpus = cpus, PhysicalMemoryBytes = 32UL << 20 });
            Kernel = new SimKernel(Machine, strategy);
            new Random(12).NextBytes(_original);
            Pages = Enumerable.Range(0, PhysPages).Select(_ => Machine.Physical.Alloc(AllocFlags.Zero | AllocFlags.Wired)).ToArray();
            User = Machine.CreateVmSpace();
            Machine.Run(0, () =>
            {
                User.MapAnonymous(UserBuffer, UserPages * Pte.PageSize);
                KernelBuffer = Machine.KernelMemory.Alloc(5 * Pte.PageSize);
            });
        }

        public SimMachine Machine { get; }

        public SimKernel Kernel { get; }

        public VmPage[] Pages { get; }

        public VmSpace User { get; }

        public ulong KernelBuffer { get; private set; }

        public void ResetPhys()
        {
            for (int i = 0; i < PhysPages; i++)
            {
                _original.AsSpan(i * Pte.PageSize, Pte.PageSize).CopyTo(Machine.Physical.PhysicalBytes(Pages[i]));
            }
        }

        public byte[] Original(long offset, long length) => _original.AsSpan((int)offset, (int)length).ToArray();

        /// <summary>The physical pages' bytes, read physically (not through any mapping).</summary>
        public byte[] PhysBytes(long offset, long length)
        {
            var bytes = new byte[length];
            for (long i = 0; i < length; i++)
            {
                long at = offset + i;
                bytes[i] = Machine.Physical.PhysicalBytes(Pages[at >> Pte.PageShift])[(int)(at & (long)Pte.PageMask)];
            }

            return bytes;
        }

        /// <summary>Runs <paramref name="body"/> on the last CPU in the user address space.</summary>
        public void Run(Action<Cpu> body) => Machine.Run(Machine.Options.Cpus - 1, () => body(Machine.CurrentCpu), User);

        public void Dispose()
        {
            Kernel.Dispose();
            Machine.Dispose();
        }
    }
}
