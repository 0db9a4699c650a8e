using System.Collections.Concurrent;
using Native.PageTable;
using Native.SfBufNative.Kernel;
using NUnit.Framework;

namespace Native.Tests.Kernel;

[TestFixtureSource(typeof(StrategyFixture), nameof(StrategyFixture.StrategiesAndCpus))]
[NonParallelizable]
public sealed class MemoryDiskTests(string strategy, int cpus) : StrategyFixture(strategy, cpus)
{
    private const int Sector = MemoryDisk.DEV_BSIZE;
    private const int SequentialRequest = 64 << 10;
    private const int RandomRequest = 4 << 10;
    private static readonly TimeSpan s_patience = TimeSpan.FromSeconds(60);

    [Test]
    public void SequentialWritesThenReadsMatchTheReferenceAndUnwrittenSectorsReadAsZeroes()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        const long diskBytes = 2L << 20;

        // Not a whole number of pages: the last write ends three sectors into a page.
        const long writtenEnd = (3L << 19) + (3 * Sector);
        var model = new DiskModel(diskBytes);
        var random = new Random(1);
        MemoryDisk md = null!;
        ulong writeBuffer = 0, readBuffer = 0;
        machine.Run(0, () => (md, writeBuffer, readBuffer) = NewDisk(machine, kernel, diskBytes));

        var failures = new ConcurrentQueue<string>();
        long mapped = 0;
        long writeRequests = 0, readRequests = 0;
        var before = machine.Counters();
        machine.Run(0, () =>
        {
            for (long off = 0; off < writtenEnd; off += SequentialRequest)
            {
                int len = (int)Math.Min(SequentialRequest, writtenEnd - off);
                mapped += WriteRandom(machine, md, model, random, off, len, writeBuffer, failures);
                writeRequests++;
            }
        });
        machine.Run(Cpus - 1, () =>
        {
            for (long off = 0; off < diskBytes; off += SequentialRequest)
            {
                mapped += ReadAndCompare(machine, md, model, off, SequentialRequest, readBuffer, failures);
                readRequests++;
            }
        });
        var d = machine.Counters() - before;

        Assert.That(failures, Is.Empty);
        Assert.That(md.PagesAllocated, Is.EqualTo(model.PagesWritten));
        Assert.That(model.PagesWritten, Is.EqualTo(385), "1.5 MiB and three sectors span 385 pages");
        Assert.That(md.Writes, Is.EqualTo(writeRequests));
        Assert.That(md.Reads, Is.EqualTo(readRequests));
        Assert.That(mapped, Is.EqualTo(385 + 385), "each written page is mapped once by the writes and once by the reads");
        Assert.That(md.PagesMapped, Is.EqualTo(mapped));
        Assert.That(md.PagesZeroFilled, Is.EqualTo(512 - 385), "the unwritten pages are zero-filled without a mapping");
        AssertPrivateUserCounts(d, mapped, writtenPages: 385, kernel.SfBufs);

        Teardown(machine, md, writeBuffer, readBuffer);
    }

    [Test]
    public void RandomSectorAlignedRequestsMatchTheReference()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        const long diskBytes = 4L << 20;
        var model = new DiskModel(diskBytes);
        var random = new Random(2);
        MemoryDisk md = null!;
        ulong writeBuffer = 0, readBuffer = 0;
        machine.Run(0, () => (md, writeBuffer, readBuffer) = NewDisk(machine, kernel, diskBytes));

        var failures = new ConcurrentQueue<string>();
        long mapped = 0, written = 0;
        var before = machine.Counters();
        machine.Run(0, () =>
        {
            for (int i = 0; i < 300; i++)
            {
                long off = random.NextInt64((diskBytes - RandomRequest) / Sector + 1) * Sector;
                written += WriteRandom(machine, md, model, random, off, RandomRequest, writeBuffer, failures);
            }
        });
        mapped = written;
        machine.Run(Cpus - 1, () =>
        {
            for (int i = 0; i < 300; i++)
            {
                long off = random.NextInt64((diskBytes - RandomRequest) / Sector + 1) * Sector;
                mapped += ReadAndCompare(machine, md, model, off, RandomRequest, readBuffer, failures);
            }

            // The whole disk, written and never-written regions alike.
            for (long off = 0; off < diskBytes; off += SequentialRequest)
            {
                mapped += ReadAndCompare(machine, md, model, off, SequentialRequest, readBuffer, failures);
            }
        });
        var d = machine.Counters() - before;

        Assert.That(failures, Is.Empty);
        Assert.That(md.PagesAllocated, Is.EqualTo(model.PagesWritten));
        Assert.That(model.PagesWritten, Is.LessThan(diskBytes / Pte.PageSize), "some of the disk stays unwritten");
        Assert.That(md.Writes, Is.EqualTo(300));
        Assert.That(md.Reads, Is.EqualTo(300 + (diskBytes / SequentialRequest)));
        Assert.That(md.PagesMapped, Is.EqualTo(mapped));
        AssertPrivateUserCounts(d, mapped, writtenPages: written, kernel.SfBufs);

        Teardown(machine, md, writeBuffer, readBuffer);
    }

    [Test]
    public void AWriterAndAReaderRunningAtOnceOnDisjointHalvesBothSeeTheReference()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        const long diskBytes = 2L << 20;
        const long half = diskBytes / 2;
        var model = new DiskModel(diskBytes);
        MemoryDisk md = null!;
        ulong writeBuffer = 0, readBuffer = 0;
        var failures = new ConcurrentQueue<string>();
        machine.Run(0, () =>
        {
            md = MemoryDisk.Create(kernel, diskBytes);
            writeBuffer = KernelBuffer(machine, SequentialRequest);
            readBuffer = KernelBuffer(machine, SequentialRequest);

            // The reader's half, written before the measurement; its last quarter stays unwritten.
            var setup = new Random(3);
            for (long off = half; off < half + (half * 3 / 4); off += SequentialRequest)
            {
                WriteRandom(machine, md, model, setup, off, SequentialRequest, writeBuffer, failures);
            }
        });

        // The writer's data is drawn up front: the two threads must not share a Random.
        var writerRandom = new Random(4);
        var writes = Enumerable.Range(0, 200)
            .Select(_ => writerRandom.NextInt64((half - RandomRequest) / Sector + 1) * Sector)
            .ToArray();
        var readerRandom = new Random(5);
        var reads = Enumerable.Range(0, 200)
            .Select(_ => half + (readerRandom.NextInt64((half - RandomRequest) / Sector + 1) * Sector))
            .ToArray();

        // The reader's model is its own half, which the writer never touches.
        var readerModel = model.Clone();
        long writerMapped = 0, readerMapped = 0;
        var before = machine.Counters();
        var writer = machine.StartThread("md-writer", () =>
        {
            var random = new Random(6);
            foreach (long off in writes)
            {
                writerMapped += WriteRandom(machine, md, model, random, off, RandomRequest, writeBuffer, failures);
            }
        }, cpu: 0, bound: true);
        var reader = machine.StartThread("md-reader", () =>
        {
            foreach (long off in reads)
            {
                readerMapped += ReadAndCompare(machine, md, readerModel, off, RandomRequest, readBuffer, failures);
            }
        }, cpu: Cpus - 1, bound: true);
        writer.Join(s_patience);
        reader.Join(s_patience);
        var d = machine.Counters() - before;

        Assert.That(failures, Is.Empty);
        AssertPrivateUserCounts(d, writerMapped + readerMapped, writtenPages: writerMapped, kernel.SfBufs);

        // Everything, after both: the writer's half as written, the reader's half untouched.
        machine.Run(Cpus - 1, () =>
        {
            for (long off = 0; off < diskBytes; off += SequentialRequest)
            {
                ReadAndCompare(machine, md, model, off, SequentialRequest, readBuffer, failures);
            }
        });
        Assert.That(failures, Is.Empty);
        Assert.That(md.PagesAllocated, Is.EqualTo(model.PagesWritten));

        Teardown(machine, md, writeBuffer, readBuffer);
    }

    [Test]
    public void BadRequestsFailWithEinvalAndChangeNothing()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        const long diskBytes = 1L << 20;
        const int bufferBytes = 2 * Pte.PageSize;
        var model = new DiskModel(diskBytes);
        var failures = new ConcurrentQueue<string>();
        MemoryDisk md = null!;
        MemoryDisk bigSectors = null!;
        ulong buffer = 0;
        machine.Run(0, () =>
        {
            md = MemoryDisk.Create(kernel, diskBytes);
            bigSectors = MemoryDisk.Create(kernel, diskBytes, sectorSize: Pte.PageSize);
            buffer = KernelBuffer(machine, bufferBytes);

            // Only the first half is written: bad writes aimed at the second half must allocate nothing.
            var setup = new Random(7);
            for (long off = 0; off < diskBytes / 2; off += bufferBytes)
            {
                WriteRandom(machine, md, model, setup, off, bufferBytes, buffer, failures);
            }
        });
        Assert.That(failures, Is.Empty);

        (long Offset, long Length, string Why)[] bad =
        [
            (diskBytes, Sector, "offset at the end"),
            (diskBytes + (64 * Sector), Sector, "offset beyond the end"),
            (diskBytes - Sector, 2 * Sector, "runs past the end"),
            ((long.MaxValue / Sector) * Sector, Sector, "offset + length overflows"),
            (-Sector, Sector, "negative offset"),
            ((diskBytes / 2) + 100, Sector, "unaligned offset"),
            ((diskBytes / 2) + Sector, 100, "unaligned length"),
            ((diskBytes / 2) + Sector, Sector + 1, "length not a whole number of sectors"),
            (diskBytes / 2, 0, "length 0"),
            (diskBytes / 2, -Sector, "negative length"),
        ];
        int allocated = md.PagesAllocated;
        int freeFrames = machine.Physical.FreePages;
        var before = machine.Counters();
        var results = new List<string>();
        machine.Run(Cpus - 1, () =>
        {
            var cpu = machine.CurrentCpu;
            var pattern = new byte[bufferBytes];
            Array.Fill(pattern, (byte)0x5A);
            var after = new byte[bufferBytes];
            foreach (var (offset, length, why) in bad)
            {
                foreach (var cmd in new[] { BioCommand.Read, BioCommand.Write })
                {
                    cpu.Write(buffer, pattern);
                    int error = md.Strategy(cmd, offset, length, buffer);
                    cpu.Read(buffer, after);
                    bool untouched = after.AsSpan().SequenceEqual(pattern);
                    results.Add($"{cmd} {why}: errno {error}, buffer {(untouched ? "untouched" : "CHANGED")}, {md.PagesAllocated} pages");
                }
            }

            cpu.Write(buffer, pattern);
            results.Add($"Read unknown command: errno {md.Strategy((BioCommand)7, 0, Sector, buffer)}, {md.PagesAllocated} pages");
            results.Add($"Write 4096-byte sector at 512: errno {bigSectors.Strategy(BioCommand.Write, Sector, Pte.PageSize, buffer)}, {bigSectors.PagesAllocated} pages");
            results.Add($"Write 512 bytes on 4096-byte sectors: errno {bigSectors.Strategy(BioCommand.Write, 0, Sector, buffer)}, {bigSectors.PagesAllocated} pages");
        });
        var d = machine.Counters() - before;

        var expected = bad
            .SelectMany(b => new[] { BioCommand.Read, BioCommand.Write }.Select(cmd => $"{cmd} {b.Why}: errno {Errno.EINVAL}, buffer untouched, {allocated} pages"))
            .Append($"Read unknown command: errno {Errno.EINVAL}, {allocated} pages")
            .Append($"Write 4096-byte sector at 512: errno {Errno.EINVAL}, 0 pages")
            .Append($"Write 512 bytes on 4096-byte sectors: errno {Errno.EINVAL}, 0 pages");
        Assert.That(results, Is.EqualTo(expected));
        Assert.That(md.Reads, Is.Zero);
        Assert.That(md.Writes, Is.EqualTo(diskBytes / 2 / bufferBytes));
        Assert.That(machine.Physical.FreePages, Is.EqualTo(freeFrames), "no page was allocated");
        Assert.That(d[Counter.KernelPteWrites], Is.Zero, "no page was mapped");
        Assert.That(d[Counter.ShootdownRounds], Is.Zero);
        Assert.That(d[Counter.StaleAccesses], Is.Zero);

        // The disk's bytes are what the good writes left.
        machine.Run(0, () =>
        {
            for (long off = 0; off < diskBytes; off += bufferBytes)
            {
                ReadAndCompare(machine, md, model, off, bufferBytes, buffer, failures);
            }

            md.Destroy();
            bigSectors.Destroy();
            machine.KernelMemory.Free(buffer, bufferBytes);
        });
        Assert.That(failures, Is.Empty);
    }

    [Test]
    public void BadGeometryIsRefusedAtCreation()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        Assert.That(() => MemoryDisk.Create(kernel, 0), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => MemoryDisk.Create(kernel, -Sector), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => MemoryDisk.Create(kernel, Sector + 1), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => MemoryDisk.Create(kernel, 1 << 20, sectorSize: 256), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => MemoryDisk.Create(kernel, 1 << 20, sectorSize: 1536), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => MemoryDisk.Create(kernel, 1 << 20, sectorSize: 2 * Pte.PageSize), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => MemoryDisk.Create(kernel, 3 * Pte.PageSize, sectorSize: Pte.PageSize), Throws.Nothing);
    }

    [Test]
    public void DestroyFreesEveryPageTheDiskAllocated()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        const long diskBytes = 1L << 20;
        var model = new DiskModel(diskBytes);
        var failures = new ConcurrentQueue<string>();
        int freeBefore = 0, freeAfterWrites = 0, freeAfterDestroy = 0;
        int allocated = 0;
        machine.Run(0, () =>
        {
            ulong buffer = KernelBuffer(machine, SequentialRequest);
            freeBefore = machine.Physical.FreePages;
            var md = MemoryDisk.Create(kernel, diskBytes);
            var random = new Random(8);
            for (int i = 0; i < 40; i++)
            {
                long off = random.NextInt64((diskBytes - SequentialRequest) / Sector + 1) * Sector;
                WriteRandom(machine, md, model, random, off, SequentialRequest, buffer, failures);
            }

            allocated = md.PagesAllocated;
            freeAfterWrites = machine.Physical.FreePages;
            md.Destroy();
            freeAfterDestroy = machine.Physical.FreePages;
            Assert.That(md.PagesAllocated, Is.Zero);
            Assert.That(() => md.Strategy(BioCommand.Read, 0, Sector, buffer), Throws.InstanceOf<ObjectDisposedException>());
            machine.KernelMemory.Free(buffer, SequentialRequest);
        });

        Assert.That(failures, Is.Empty);
        Assert.That(allocated, Is.EqualTo(model.PagesWritten));
        Assert.That(freeBefore - freeAfterWrites, Is.EqualTo(allocated));
        Assert.That(freeAfterDestroy, Is.EqualTo(freeBefore));
    }

    private Native.PageTable.Machine NewMachine() =>
        new(new MachineOptions { Flavor = Info.FlavorOr(MachineFlavor.Amd64), Cpus = Cpus, PhysicalMemoryBytes = 64UL << 20 });

    /// <summary>A disk and a write and a read buffer of one sequential request each (on a kernel thread).</summary>
    private static (MemoryDisk Disk, ulong Write, ulong Read) NewDisk(Native.PageTable.Machine machine, SimKernel kernel, long diskBytes) =>
        (MemoryDisk.Create(kernel, diskBytes), KernelBuffer(machine, SequentialRequest), KernelBuffer(machine, SequentialRequest));

    private static void Teardown(Native.PageTable.Machine machine, MemoryDisk md, ulong writeBuffer, ulong readBuffer) =>
        machine.Run(0, () =>
        {
            md.Destroy();
            machine.KernelMemory.Free(writeBuffer, SequentialRequest);
            machine.KernelMemory.Free(readBuffer, SequentialRequest);
        });

    private static ulong KernelBuffer(Native.PageTable.Machine machine, long bytes)
    {
        ulong va = machine.KernelMemory.Alloc(bytes);
        return va != 0 ? va : throw new InvalidOperationException("kmem is full");
    }

    /// <summary>Writes fresh random bytes through the disk and the model; returns the pages the disk mapped.</summary>
    private static long WriteRandom(Native.PageTable.Machine machine, MemoryDisk md, DiskModel model, Random random, long offset, int length, ulong buffer, ConcurrentQueue<string> failures)
    {
        var data = new byte[length];
        random.NextBytes(data);
        machine.CurrentCpu.Write(buffer, data);
        int error = md.Strategy(BioCommand.Write, offset, length, buffer);
        if (error != Errno.OK)
        {
            failures.Enqueue($"write of {length} at {offset}: errno {error}");
            return 0;
        }

        return model.Write(offset, data);
    }

    /// <summary>Reads through the disk and compares with the model; returns the pages the disk mapped.</summary>
    private static long ReadAndCompare(Native.PageTable.Machine machine, MemoryDisk md, DiskModel model, long offset, int length, ulong buffer, ConcurrentQueue<string> failures)
    {
        var cpu = machine.CurrentCpu;

        // Not zeroes: the zero-filled pieces of unwritten sectors must really be written.
        cpu.Fill(buffer, length, 0xA5);
        int error = md.Strategy(BioCommand.Read, offset, length, buffer);
        if (error != Errno.OK)
        {
            failures.Enqueue($"read of {length} at {offset}: errno {error}");
            return 0;
        }

        var data = new byte[length];
        cpu.Read(buffer, data);
        var expected = model.Bytes(offset, length);
        int at = data.AsSpan().CommonPrefixLength(expected);
        if (at != length)
        {
            failures.Enqueue($"read of {length} at {offset}: byte {offset + at} is 0x{data[at]:x2}, expected 0x{expected[at]:x2}");
        }

        return model.PagesPresent(offset, length);
    }

    /// <summary>The disk as a byte array, and which of its pages have been written.</summary>
    private sealed class DiskModel
    {
        private readonly byte[] _bytes;
        private readonly HashSet<long> _written;

        public DiskModel(long size)
            : this(new byte[size], [])
        {
        }

        private DiskModel(byte[] bytes, HashSet<long> written)
        {
            _bytes = bytes;
            _written = written;
        }

        public int PagesWritten
        {
            get
            {
                lock (_written)
                {
                    return _written.Count;
                }
            }
        }

        public DiskModel Clone()
        {
            lock (_written)
            {
                return new DiskModel((byte[])_bytes.Clone(), [.. _written]);
            }
        }

        /// <summary>Applies a write; returns the pages it spans (each is mapped once).</summary>
        public long Write(long offset, byte[] data)
        {
            lock (_written)
            {
                data.CopyTo(_bytes, offset);
                for (long p = offset >> Pte.PageShift; p <= (offset + data.Length - 1) >> Pte.PageShift; p++)
                {
                    _written.Add(p);
                }
            }

            return ((offset + data.Length - 1) >> Pte.PageShift) - (offset >> Pte.PageShift) + 1;
        }

        public byte[] Bytes(long offset, int length)
        {
            lock (_written)
            {
                return _bytes.AsSpan((int)offset, length).ToArray();
            }
        }

        /// <summary>The pages of a range that have been written: what a read maps.</summary>
        public long PagesPresent(long offset, int length)
        {
            lock (_written)
            {
                long count = 0;
                for (long p = offset >> Pte.PageShift; p <= (offset + length - 1) >> Pte.PageShift; p++)
                {
                    count += _written.Contains(p) ? 1 : 0;
                }

                return count;
            }
        }
    }
}
