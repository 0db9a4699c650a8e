using System.Security.Cryptography;
using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Kernel;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Host;

/// <summary>
/// The strategies that run on the host backend (the paper's three and the peers whose mechanism
/// is expressible there), unchanged: the same sf_buf code and the same kernel subsystems move
/// the right bytes through real mappings, and the host mapping changes they make are exactly
/// the PTE updates the simulation counts for them. The other peers are refused with their reason.
/// </summary>
[TestFixtureSource(nameof(HostStrategiesAndCpus))]
[NonParallelizable]
public sealed class HostStrategyTests(string strategy, int cpus) : StrategyFixture(strategy, cpus)
{
    private const ulong UserBuffer = 0x1000_0000;

    /// <summary>Every strategy that runs on the host backend, on 1 and 2 CPUs.</summary>
    public static IEnumerable<TestFixtureData> HostStrategiesAndCpus() =>
        StrategiesAndCpus().Where(f => SfBufMapper.Describe((string)f.Arguments[0]!).RunsOnHost);

    /// <summary>The strategies the host backend refuses, each with the reason the registry gives.</summary>
    public static IEnumerable<string> RefusedOnHost() =>
        SfBufMapper.StrategyNames.Where(s => !SfBufMapper.Describe(s).RunsOnHost);

    [SetUp]
    public void RequireHost() => HostGate.Require(Cpus);

    [Test]
    public void WhatOneCpuWritesThroughItsSfBufAnotherReadsThroughItsOwn()
    {
        using var m = new SimMachine(HostGate.Small(Cpus));
        using var mapper = SfBufMapper.Create(Strategy, m);
        var page = m.Physical.Alloc(AllocFlags.Wired | AllocFlags.Zero);
        var stamp = new byte[Pte.PageSize];
        new Random(5).NextBytes(stamp);
        var seen = new byte[Pte.PageSize];
        m.Run(0, () =>
        {
            var sf = mapper.Alloc(page);
            m.CurrentCpu.Write(sf.Kva, stamp);
            mapper.Free(sf);
        });
        m.Run(Cpus - 1, () =>
        {
            var sf = mapper.Alloc(page);
            m.CurrentCpu.Read(sf.Kva, seen);
            mapper.Free(sf);
        });

        Assert.That(seen, Is.EqualTo(stamp));
        Assert.That(m.Physical.PhysicalBytes(page).ToArray(), Is.EqualTo(stamp), "the frame in the memfd holds the bytes");
    }

    [Test]
    public void ThePipeMovesEveryByteAndRemapsExactlyWhatItsStrategyMaps()
    {
        using var m = new SimMachine(HostGate.Small(Cpus) with { PhysicalMemoryBytes = 64UL << 20, KernelMemoryPages = 1024 });
        using var kernel = new SimKernel(m, Strategy);
        const int chunk = 64 << 10;
        const int writes = 64;
        using var writtenHash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using var readHash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Pipe pipe = null!;
        VmSpace writerSpace = null!, readerSpace = null!;
        m.Run(0, () =>
        {
            pipe = Pipe.Create(kernel);
            writerSpace = m.CreateVmSpace();
            readerSpace = m.CreateVmSpace();
            writerSpace.MapAnonymous(UserBuffer, chunk);
            readerSpace.MapAnonymous(UserBuffer, chunk);
        });

        var before = m.HostCounts();
        long read = 0;
        var writer = m.StartThread("writer", () =>
        {
            var data = new byte[chunk];
            for (int i = 0; i < writes; i++)
            {
                Random.Shared.NextBytes(data);
                writtenHash.AppendData(data);
                Assert.That(m.CurrentCpu.CopyOut(data, UserBuffer), Is.Zero);
                Assert.That(pipe.Write(new Uio(UserBuffer, chunk, UioSegment.UserSpace, UioDirection.Write)), Is.Zero);
            }

            pipe.CloseWrite();
        }, cpu: 0, bound: true, vmspace: writerSpace);
        var reader = m.StartThread("reader", () =>
        {
            var data = new byte[chunk];
            while (true)
            {
                var uio = new Uio(UserBuffer, chunk, UioSegment.UserSpace, UioDirection.Read);
                Assert.That(pipe.Read(uio), Is.Zero);
                int n = (int)(chunk - uio.Resid);
                if (n == 0)
                {
                    break;
                }

                Assert.That(m.CurrentCpu.CopyIn(UserBuffer, data.AsSpan(0, n)), Is.Zero);
                readHash.AppendData(data.AsSpan(0, n));
                read += n;
            }
        }, cpu: Cpus - 1, bound: true, vmspace: readerSpace);
        writer.Join(TimeSpan.FromMinutes(2));
        reader.Join(TimeSpan.FromMinutes(2));
        var d = m.HostCounts() - before;
        m.Run(0, pipe.CloseRead);

        Assert.That(read, Is.EqualTo((long)chunk * writes));
        Assert.That(readHash.GetHashAndReset(), Is.EqualTo(writtenHash.GetHashAndReset()), "SHA-256 of the bytes read equals that of the bytes written");
        Assert.That(pipe.DirectWrites, Is.EqualTo(writes));
        const int pagesPerWrite = chunk / Pte.PageSize;
        if (Info.MapsPerUse)
        {
            Assert.That(d.Maps, Is.EqualTo(pagesPerWrite * writes), "pmap_qenter of the writer's pages into the pipe's window, every write");
            Assert.That(d.Unmaps, Is.EqualTo(writes), "one pmap_qremove of the window per write");
        }

        if (Info.IsMappingCache)
        {
            Assert.That(d.Maps, Is.EqualTo(pagesPerWrite), "the writer's buffer is mapped once and hit from then on");
        }

        if (Info.NeverUnmaps)
        {
            Assert.That(d.Unmaps, Is.Zero);
        }

        if (Info.NeedsDirectMap)
        {
            Assert.That(d.Remaps, Is.Zero, "the direct map never changes");
        }
    }

    [Test]
    public void TheMemoryDiskReadsBackWhatWasWritten()
    {
        using var m = new SimMachine(HostGate.Small(Cpus) with { PhysicalMemoryBytes = 32UL << 20, KernelMemoryPages = 1024 });
        using var kernel = new SimKernel(m, Strategy);
        const long diskBytes = 1L << 20;
        var data = new byte[diskBytes];
        new Random(11).NextBytes(data);
        var back = new byte[diskBytes];
        MemoryDisk disk = null!;
        ulong buffer = 0;
        HostMmuCounts? d = null;
        m.Run(0, () =>
        {
            disk = MemoryDisk.Create(kernel, diskBytes);
            buffer = m.KernelMemory.Alloc(diskBytes);
            m.CurrentCpu.Write(buffer, data);
            var before = m.HostCounts();
            Assert.That(disk.Strategy(BioCommand.Write, 0, diskBytes, buffer), Is.Zero);
            m.CurrentCpu.Fill(buffer, diskBytes, 0);
            d = m.HostCounts() - before;
        });
        m.Run(Cpus - 1, () =>
        {
            Assert.That(disk.Strategy(BioCommand.Read, 0, diskBytes, buffer), Is.Zero);
            m.CurrentCpu.Read(buffer, back);
        });

        Assert.That(back, Is.EqualTo(data));
        long pages = diskBytes / Pte.PageSize;
        if (Info.MapsPerUse)
        {
            Assert.That(d!.Maps, Is.EqualTo(pages), "a kernel_map page mapped per disk page copied");
            Assert.That(d.Unmaps, Is.EqualTo(pages));
        }

        if (Info.IsMappingCache)
        {
            Assert.That(d!.Maps, Is.EqualTo(pages), "every page written is a miss the first time");
        }

        if (Info.NeverUnmaps)
        {
            Assert.That(d!.Unmaps, Is.Zero, "a reused slot is overwritten, never unmapped");
        }

        if (Info.NeedsDirectMap)
        {
            Assert.That(d!.Remaps, Is.Zero);
        }
    }
}
