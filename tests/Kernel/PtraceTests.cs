using System.Buffers.Binary;
using Native.PageTable;
using Native.SfBufNative.Kernel;
using NUnit.Framework;

namespace Native.Tests.Kernel;

[TestFixtureSource(typeof(StrategyFixture), nameof(StrategyFixture.StrategiesAndCpus))]
[NonParallelizable]
public sealed class PtraceTests(string strategy, int cpus) : StrategyFixture(strategy, cpus)
{
    private const ulong TargetBase = 0x4000_0000;
    private const int TargetPages = 8;
    private const int TargetBytes = TargetPages * Pte.PageSize;
    private const ulong ReadOnlyPage = 0x5000_0000;
    private const ulong TracerBuffer = 0x1000_0000;
    private const int TracerBytes = 8 * Pte.PageSize;

    [Test]
    public void BulkReadsAcrossPageBoundariesReturnTheTargetsBytes()
    {
        using var rig = new Rig(Cpus, Strategy);
        (ulong Offset, long Length)[] requests =
        [
            (0x800, 3 * Pte.PageSize),          // three pages' worth from mid-page: four pages
            (0, Pte.PageSize),                  // exactly one page
            (Pte.PageSize - 8, 16),             // straddles a boundary
            (0x10, (5 * Pte.PageSize) + 7),     // six pages
            ((2 * Pte.PageSize) + 1, 1),        // one byte
        ];
        var read = new List<byte[]>();
        var results = new List<(int Error, long Transferred)>();
        int kernelMapFree = rig.Machine.KernelMap.FreePages;
        var before = rig.Machine.Counters();
        rig.AsTracer(cpu =>
        {
            foreach (var (offset, length) in requests)
            {
                int error = rig.Ptrace.ReadMemory(rig.Target, TargetBase + offset, TracerBuffer + 3, length, out long n);
                results.Add((error, n));
                var bytes = new byte[length];
                Assert.That(cpu.CopyIn(TracerBuffer + 3, bytes), Is.Zero);
                read.Add(bytes);
            }
        });
        var d = rig.Machine.Counters() - before;

        Assert.That(results, Is.EqualTo(requests.Select(r => (Errno.OK, r.Length))));
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.That(read[i], Is.EqualTo(rig.Reference.AsSpan((int)requests[i].Offset, (int)requests[i].Length).ToArray()), $"request {i}");
        }

        long pages = requests.Sum(r => PagesSpanned(TargetBase + r.Offset, r.Length));
        Assert.That(pages, Is.EqualTo(4 + 1 + 2 + 6 + 1));
        AssertPrivateUserCounts(d, pages, writtenPages: 0, rig.Kernel.SfBufs);
        // lwbuf objects keep the kernel_map page they were built with, cached for the next use
        // (wherever a strategy keeps lwbuf objects, it counts them).
        int kept = (int)rig.Kernel.SfBufs.Stats().Details.GetValueOrDefault("lwbuf.objects");
        Assert.That(rig.Machine.KernelMap.FreePages + kept, Is.EqualTo(kernelMapFree), "the per-call kernel_map page is freed");
        rig.AssertNoHolds();
    }

    [Test]
    public void BulkWritesAcrossPageBoundariesAreVisibleInTheTarget()
    {
        using var rig = new Rig(Cpus, Strategy);
        var random = new Random(11);
        (ulong Offset, int Length)[] requests =
        [
            (0x800, 3 * Pte.PageSize),
            ((6 * Pte.PageSize) - 5, 10),
            ((7 * Pte.PageSize) + 100, 200),
        ];
        var data = requests.Select(r =>
        {
            var bytes = new byte[r.Length];
            random.NextBytes(bytes);
            return bytes;
        }).ToArray();
        var results = new List<(int Error, long Transferred)>();
        var before = rig.Machine.Counters();
        rig.AsTracer(cpu =>
        {
            for (int i = 0; i < requests.Length; i++)
            {
                Assert.That(cpu.CopyOut(data[i], TracerBuffer), Is.Zero);
                int error = rig.Ptrace.WriteMemory(rig.Target, TargetBase + requests[i].Offset, TracerBuffer, requests[i].Length, out long n);
                results.Add((error, n));
            }
        });
        var d = rig.Machine.Counters() - before;

        Assert.That(results, Is.EqualTo(requests.Select(r => (Errno.OK, (long)r.Length))));
        for (int i = 0; i < requests.Length; i++)
        {
            data[i].CopyTo(rig.Reference, (int)requests[i].Offset);
        }

        Assert.That(rig.ReadTargetAsTarget(), Is.EqualTo(rig.Reference), "the target sees the new bytes and nothing else changed");
        long pages = requests.Sum(r => PagesSpanned(TargetBase + r.Offset, r.Length));
        Assert.That(pages, Is.EqualTo(4 + 2 + 1));
        AssertPrivateUserCounts(d, pages, writtenPages: pages, rig.Kernel.SfBufs);
        rig.AssertNoHolds();
    }

    [Test]
    public void PeekAndPokeWordsReadAndWriteTheTarget()
    {
        using var rig = new Rig(Cpus, Strategy);

        // Aligned words on several pages, and an unaligned one that straddles pages 2 and 3.
        ulong[] offsets = [0, 8, Pte.PageSize - 8, (2 * Pte.PageSize) + 0x100, (3 * Pte.PageSize) - 4, (TargetPages * Pte.PageSize) - 8];
        var peeked = new List<(int Error, ulong Value)>();
        var poked = new List<int>();
        var after = new List<(int Error, ulong Value)>();
        var before = rig.Machine.Counters();
        rig.AsTracer(_ =>
        {
            foreach (ulong off in offsets)
            {
                int error = rig.Ptrace.PeekWord(rig.Target, TargetBase + off, out ulong value);
                peeked.Add((error, value));
            }

            foreach (ulong off in offsets)
            {
                poked.Add(rig.Ptrace.PokeWord(rig.Target, TargetBase + off, 0xC0DE_0000_0000_0000UL | off));
            }

            foreach (ulong off in offsets)
            {
                int error = rig.Ptrace.PeekWord(rig.Target, TargetBase + off, out ulong value);
                after.Add((error, value));
            }
        });
        var d = rig.Machine.Counters() - before;

        Assert.That(peeked, Is.EqualTo(offsets.Select(o => (Errno.OK, BinaryPrimitives.ReadUInt64LittleEndian(rig.Reference.AsSpan((int)o))))));
        Assert.That(poked, Is.All.EqualTo(Errno.OK));
        Assert.That(after, Is.EqualTo(offsets.Select(o => (Errno.OK, 0xC0DE_0000_0000_0000UL | o))));
        foreach (ulong off in offsets)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(rig.Reference.AsSpan((int)off), 0xC0DE_0000_0000_0000UL | off);
        }

        Assert.That(rig.ReadTargetAsTarget(), Is.EqualTo(rig.Reference), "the target sees the poked words and nothing else changed");
        long pages = 3 * offsets.Sum(o => PagesSpanned(TargetBase + o, sizeof(ulong)));
        Assert.That(pages, Is.EqualTo(3 * 7));
        AssertPrivateUserCounts(d, pages, writtenPages: 7, rig.Kernel.SfBufs); // the pokes
        Assert.That(rig.Ptrace.ScratchPages, Is.EqualTo(1));
        rig.AssertNoHolds();
    }

    [Test]
    public void UnmappedTargetAddressesFailWithEfaultAndChangeNothing()
    {
        using var rig = new Rig(Cpus, Strategy);
        const ulong hole = TargetBase + TargetBytes; // nothing is mapped from here on
        var results = new List<string>();
        var tracerBytes = new byte[TracerBytes];
        new Random(12).NextBytes(tracerBytes);
        int kernelMapFree = rig.Machine.KernelMap.FreePages;
        var before = rig.Machine.Counters();
        rig.AsTracer(cpu =>
        {
            Assert.That(cpu.CopyOut(tracerBytes, TracerBuffer), Is.Zero);
            foreach (ulong address in new[] { hole, hole + 0x1234, 0UL, 8UL, VmLayout.UserMax, VmLayout.KERNBASE, ulong.MaxValue - 7 })
            {
                int error = rig.Ptrace.PeekWord(rig.Target, address, out ulong value);
                results.Add($"peek 0x{address:x}: errno {error}, value {value}");
                results.Add($"poke 0x{address:x}: errno {rig.Ptrace.PokeWord(rig.Target, address, 0xDEAD)}");
            }

            int e = rig.Ptrace.ReadMemory(rig.Target, hole, TracerBuffer, 3 * Pte.PageSize, out long n);
            results.Add($"read at the hole: errno {e}, {n} bytes");
            e = rig.Ptrace.WriteMemory(rig.Target, hole + 0x800, TracerBuffer, 3 * Pte.PageSize, out n);
            results.Add($"write at the hole: errno {e}, {n} bytes");

            var mine = new byte[TracerBytes];
            Assert.That(cpu.CopyIn(TracerBuffer, mine), Is.Zero);
            results.Add($"tracer buffer {(mine.AsSpan().SequenceEqual(tracerBytes) ? "unchanged" : "CHANGED")}");
        });
        var d = rig.Machine.Counters() - before;

        string[] expected =
        [
            .. new[] { hole, hole + 0x1234, 0UL, 8UL, VmLayout.UserMax, VmLayout.KERNBASE, ulong.MaxValue - 7 }.SelectMany(a => new[]
            {
                $"peek 0x{a:x}: errno {Errno.EFAULT}, value 0",
                $"poke 0x{a:x}: errno {Errno.EFAULT}",
            }),
            $"read at the hole: errno {Errno.EFAULT}, 0 bytes",
            $"write at the hole: errno {Errno.EFAULT}, 0 bytes",
            "tracer buffer unchanged",
        ];
        Assert.That(results, Is.EqualTo(expected));
        Assert.That(rig.ReadTargetAsTarget(), Is.EqualTo(rig.Reference), "the target is unchanged");
        Assert.That(rig.Target.ResidentPages, Is.EqualTo(TargetPages + 1), "nothing was mapped in the target");
        Assert.That(rig.Target.Pmap.Extract(hole), Is.Null);
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        Assert.That(d[Counter.KernelPteWrites], Is.Zero, "no page was mapped");
        Assert.That(d[Counter.ShootdownRounds], Is.Zero);
        Assert.That(rig.Machine.KernelMap.FreePages, Is.EqualTo(kernelMapFree), "the per-call kernel_map page is freed on the error path too");
        rig.AssertNoHolds();
    }

    [Test]
    public void ARequestThatRunsIntoAHoleMovesThePagesBeforeItAndStops()
    {
        using var rig = new Rig(Cpus, Strategy);
        const ulong start = TargetBase + TargetBytes - 100; // 100 bytes before the hole
        var data = new byte[300];
        new Random(13).NextBytes(data);
        var results = new List<string>();
        byte[] readBack = new byte[300];
        var before = rig.Machine.Counters();
        rig.AsTracer(cpu =>
        {
            Assert.That(cpu.CopyOut(data, TracerBuffer), Is.Zero);
            int e = rig.Ptrace.WriteMemory(rig.Target, start, TracerBuffer, data.Length, out long n);
            results.Add($"write: errno {e}, {n} bytes");
            Assert.That(cpu.CopyOut(new byte[300], TracerBuffer + Pte.PageSize), Is.Zero);
            e = rig.Ptrace.ReadMemory(rig.Target, start, TracerBuffer + Pte.PageSize, readBack.Length, out n);
            results.Add($"read: errno {e}, {n} bytes");
            Assert.That(cpu.CopyIn(TracerBuffer + Pte.PageSize, readBack), Is.Zero);
            e = rig.Ptrace.PokeWord(rig.Target, TargetBase + TargetBytes - 4, ulong.MaxValue);
            results.Add($"straddling poke: errno {e}");
        });
        var d = rig.Machine.Counters() - before;

        // As FreeBSD's proc_rwmem: the page before the hole moved, then EFAULT.
        Assert.That(results, Is.EqualTo(new[]
        {
            $"write: errno {Errno.EFAULT}, 100 bytes",
            $"read: errno {Errno.EFAULT}, 100 bytes",
            $"straddling poke: errno {Errno.EFAULT}",
        }));
        data.AsSpan(0, 100).CopyTo(rig.Reference.AsSpan(TargetBytes - 100));
        rig.Reference.AsSpan(TargetBytes - 4).Fill(0xFF);
        Assert.That(readBack.AsSpan(0, 100).ToArray(), Is.EqualTo(data.AsSpan(0, 100).ToArray()));
        Assert.That(readBack.AsSpan(100).ToArray(), Is.All.Zero, "nothing past the hole was written to the tracer");
        Assert.That(rig.ReadTargetAsTarget(), Is.EqualTo(rig.Reference));
        AssertPrivateUserCounts(d, 3, writtenPages: 2, rig.Kernel.SfBufs); // the write's page and the straddling poke's
        rig.AssertNoHolds();
    }

    [Test]
    public void APokeIntoAReadOnlyMappingIsAllowedAsPtraceOverridesTheProtection()
    {
        using var rig = new Rig(Cpus, Strategy);
        int error = -1;
        ulong value = 0;
        rig.AsTracer(_ =>
        {
            error = rig.Ptrace.PokeWord(rig.Target, ReadOnlyPage + 0x40, 0x0123_4567_89AB_CDEF);
            Assert.That(rig.Ptrace.PeekWord(rig.Target, ReadOnlyPage + 0x40, out value), Is.Zero);
        });
        Assert.That(error, Is.Zero);
        Assert.That(value, Is.EqualTo(0x0123_4567_89AB_CDEFUL));

        var seen = new byte[8];
        int targetWrite = -1;
        rig.Machine.Run(Cpus - 1, () =>
        {
            var cpu = rig.Machine.CurrentCpu;
            Assert.That(cpu.CopyIn(ReadOnlyPage + 0x40, seen), Is.Zero);
            targetWrite = cpu.CopyOut(new byte[8], ReadOnlyPage + 0x40);
        }, rig.Target);
        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(seen), Is.EqualTo(0x0123_4567_89AB_CDEFUL));
        Assert.That(targetWrite, Is.EqualTo(Errno.EFAULT), "the target itself still cannot write it");
    }

    private static long PagesSpanned(ulong address, long length) =>
        (long)(((address + (ulong)length - 1) >> Pte.PageShift) - (address >> Pte.PageShift) + 1);

    /// <summary>
    /// A machine with a target process (eight pages of known bytes, then a hole, plus a read-only
    /// page) and a tracer process with a buffer; the tracer runs on cpu 0, the target on the last.
    /// </summary>
    private sealed class Rig : IDisposable
    {
        private readonly int _cpus;

        public Rig(int cpus, string strategy)
        {
            _cpus = cpus;
            Machine = new Native.PageTable.Machine(new MachineOptions { Flavor = Native.SfBufNative.SfBufMapper.Describe(strategy).FlavorOr(MachineFlavor.Amd64), Cpus = cpus, PhysicalMemoryBytes = 64UL << 20 });
            Kernel = new SimKernel(Machine, strategy);
            Reference = new byte[TargetBytes];
            new Random(10).NextBytes(Reference);
            Machine.Run(0, () =>
            {
                Target = Machine.CreateVmSpace();
                Tracer = Machine.CreateVmSpace();
                Target.MapAnonymous(TargetBase, TargetBytes);
                Target.MapAnonymous(ReadOnlyPage, Pte.PageSize, writable: false);
                Tracer.MapAnonymous(TracerBuffer, TracerBytes);
                Ptrace = Ptrace.Create(Kernel);
            });
            Machine.Run(cpus - 1, () => Assert.That(Machine.CurrentCpu.CopyOut(Reference, TargetBase), Is.Zero), Target);
        }

        public Native.PageTable.Machine Machine { get; }

        public SimKernel Kernel { get; }

        public VmSpace Target { get; private set; } = null!;

        public VmSpace Tracer { get; private set; } = null!;

        public Ptrace Ptrace { get; private set; } = null!;

        /// <summary>What the target's eight pages should hold.</summary>
        public byte[] Reference { get; }

        /// <summary>Runs <paramref name="body"/> on cpu 0 in the tracer's address space.</summary>
        public void AsTracer(Action<Cpu> body) => Machine.Run(0, () => body(Machine.CurrentCpu), Tracer);

        /// <summary>The target's eight pages, read by a thread running in the target (copyin).</summary>
        public byte[] ReadTargetAsTarget()
        {
            var bytes = new byte[TargetBytes];
            Machine.Run(_cpus - 1, () => Assert.That(Machine.CurrentCpu.CopyIn(TargetBase, bytes), Is.Zero), Target);
            return bytes;
        }

        public void AssertNoHolds()
        {
            for (int i = 0; i < TargetPages; i++)
            {
                var page = Target.Pmap.Extract(TargetBase + ((ulong)i << Pte.PageShift));
                Assert.That(page, Is.Not.Null);
                Assert.That(Machine.Physical.HoldCount(page!.Value), Is.Zero, $"target page {i} is still held");
            }
        }

        public void Dispose()
        {
            Machine.Run(0, () =>
            {
                Ptrace.Destroy();
                Target.Destroy();
                Tracer.Destroy();
            });
            Kernel.Dispose();
            Machine.Dispose();
        }
    }
}
