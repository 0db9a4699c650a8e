using System.Security.Cryptography;
using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Kernel;
using NUnit.Framework;

namespace Native.Tests.Kernel;

[TestFixtureSource(typeof(StrategyFixture), nameof(StrategyFixture.StrategiesAndCpus))]
[NonParallelizable]
public sealed class PipeTests(string strategy, int cpus) : StrategyFixture(strategy, cpus)
{
    private const ulong UserBuffer = 0x1000_0000;

    [Test]
    public void WritingWithoutAReaderFailsWithEpipe()
    {
        using var machine = new Native.PageTable.Machine(new MachineOptions { Flavor = Info.FlavorOr(MachineFlavor.Amd64), Cpus = Cpus, PhysicalMemoryBytes = 32UL << 20 });
        using var kernel = new SimKernel(machine, Strategy);
        var space = Space(machine);
        int small = -1;
        int large = -1;
        long residAfter = -1;
        machine.Run(0, () =>
        {
            var pipe = Pipe.Create(kernel);
            pipe.CloseRead();
            small = pipe.Write(new Uio(UserBuffer, 100, UioSegment.UserSpace, UioDirection.Write));
            var uio = new Uio(UserBuffer, 64 << 10, UioSegment.UserSpace, UioDirection.Write);
            large = pipe.Write(uio);
            residAfter = uio.Resid;
            pipe.CloseWrite();
        }, space);
        Assert.That(small, Is.EqualTo(Errno.EPIPE));
        Assert.That(large, Is.EqualTo(Errno.EPIPE));
        Assert.That(residAfter, Is.EqualTo(64 << 10), "nothing was taken from the writer");
    }

    [Test]
    public void AReaderSeesEndOfFileAfterTheWriterClosesAndTheDataIsDrained()
    {
        using var machine = new Native.PageTable.Machine(new MachineOptions { Flavor = Info.FlavorOr(MachineFlavor.Amd64), Cpus = Cpus, PhysicalMemoryBytes = 32UL << 20 });
        using var kernel = new SimKernel(machine, Strategy);
        var space = Space(machine);
        var moved = new List<long>();
        machine.Run(0, () =>
        {
            var pipe = Pipe.Create(kernel);
            Assert.That(machine.CurrentCpu.CopyOut(new byte[] { 1, 2, 3 }, UserBuffer), Is.Zero);
            Assert.That(pipe.Write(new Uio(UserBuffer, 3, UioSegment.UserSpace, UioDirection.Write)), Is.Zero);
            pipe.CloseWrite();
            for (int i = 0; i < 2; i++)
            {
                var uio = new Uio(UserBuffer + 4096, 100, UioSegment.UserSpace, UioDirection.Read);
                Assert.That(pipe.Read(uio), Is.Zero);
                moved.Add(100 - uio.Resid);
            }

            pipe.CloseRead();
        }, space);
        Assert.That(moved, Is.EqualTo(new long[] { 3, 0 }), "the bytes, then end of file");
    }

    [Test]
    public void AnInterruptedDirectWriteClonesTheRestIntoThePipeBufferAndNothingIsLost()
    {
        using var machine = new Native.PageTable.Machine(new MachineOptions { Flavor = Info.FlavorOr(MachineFlavor.Amd64), Cpus = Cpus, PhysicalMemoryBytes = 32UL << 20 });
        using var kernel = new SimKernel(machine, Strategy);
        var writerSpace = Space(machine);
        var readerSpace = Space(machine);
        var data = new byte[40000];
        new Random(7).NextBytes(data);
        Pipe pipe = null!;
        machine.Run(0, () => pipe = Pipe.Create(kernel));
        using var signal = new CancellationTokenSource();
        int writeError = -1;
        long written = 0;
        var writer = machine.StartThread("writer", () =>
        {
            Assert.That(machine.CurrentCpu.CopyOut(data, UserBuffer), Is.Zero);
            var uio = new Uio(UserBuffer, data.Length, UioSegment.UserSpace, UioDirection.Write);
            writeError = pipe.Write(uio, signal.Token);
            written = data.Length - uio.Resid;
            pipe.CloseWrite();
        }, cpu: 0, bound: true, vmspace: writerSpace);

        // The writer hands its pages over and waits for a reader; interrupt it there.
        SpinWait.SpinUntil(() => pipe.DirectWrites == 1 && machine.SleepingThreads == 1, TimeSpan.FromSeconds(20));
        signal.Cancel();
        writer.Join(TimeSpan.FromSeconds(20));

        var received = new List<byte>();
        machine.Run(Cpus - 1, () =>
        {
            var chunk = new byte[8192];
            while (true)
            {
                var uio = new Uio(UserBuffer, chunk.Length, UioSegment.UserSpace, UioDirection.Read);
                Assert.That(pipe.Read(uio), Is.Zero);
                int n = (int)(chunk.Length - uio.Resid);
                if (n == 0)
                {
                    break;
                }

                Assert.That(machine.CurrentCpu.CopyIn(UserBuffer, chunk.AsSpan(0, n)), Is.Zero);
                received.AddRange(chunk.AsSpan(0, n).ToArray());
            }

            pipe.CloseRead();
        }, readerSpace);

        Assert.That(writeError, Is.Zero, "an interrupted write that moved data reports a short count, not EINTR");
        Assert.That(pipe.ClonedWrites, Is.EqualTo(1));
        Assert.That(written, Is.EqualTo(Pipe.PIPE_DIRECT_MAX > data.Length ? data.Length : Pipe.PIPE_DIRECT_MAX));
        Assert.That(received.ToArray(), Is.EqualTo(data.AsSpan(0, (int)written).ToArray()));
        Assert.That(machine.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void BytesCrossThePipeIntactMixingBufferedAndDirectWrites()
    {
        using var machine = new Native.PageTable.Machine(new MachineOptions { Flavor = Info.FlavorOr(MachineFlavor.Amd64), Cpus = Cpus, PhysicalMemoryBytes = 64UL << 20 });
        using var kernel = new SimKernel(machine, Strategy);
        const long total = 64L << 20;
        int[] sizes = [100, 4096, 8192, 65536, 70000, 12000, 1];
        using var writtenHash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using var readHash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long readBytes = 0;
        Pipe pipe = null!;
        VmSpace writerSpace = null!;
        VmSpace readerSpace = null!;
        machine.Run(0, () =>
        {
            pipe = Pipe.Create(kernel);
            writerSpace = machine.CreateVmSpace();
            readerSpace = machine.CreateVmSpace();
            writerSpace.MapAnonymous(UserBuffer, 128 << 10);
            readerSpace.MapAnonymous(UserBuffer, 128 << 10);
        });

        var before = machine.Counters();
        var writer = machine.StartThread("writer", () =>
        {
            var cpu = machine.CurrentCpu;
            var chunk = new byte[70000];
            long sent = 0;
            for (int i = 0; sent < total; i++)
            {
                int n = (int)Math.Min(sizes[i % sizes.Length], total - sent);
                Random.Shared.NextBytes(chunk.AsSpan(0, n));
                writtenHash.AppendData(chunk.AsSpan(0, n));
                Assert.That(cpu.CopyOut(chunk.AsSpan(0, n), UserBuffer), Is.Zero);
                var uio = new Uio(UserBuffer, n, UioSegment.UserSpace, UioDirection.Write);
                Assert.That(pipe.Write(uio), Is.Zero);
                Assert.That(uio.Resid, Is.Zero);
                sent += n;
            }

            pipe.CloseWrite();
        }, cpu: 0, bound: true, vmspace: writerSpace);
        var reader = machine.StartThread("reader", () =>
        {
            var cpu = machine.CurrentCpu;
            var chunk = new byte[50000];
            while (true)
            {
                var uio = new Uio(UserBuffer, chunk.Length, UioSegment.UserSpace, UioDirection.Read);
                Assert.That(pipe.Read(uio), Is.Zero);
                int n = (int)(chunk.Length - uio.Resid);
                if (n == 0)
                {
                    break;
                }

                Assert.That(cpu.CopyIn(UserBuffer, chunk.AsSpan(0, n)), Is.Zero);
                readHash.AppendData(chunk.AsSpan(0, n));
                readBytes += n;
            }

            pipe.CloseRead();
        }, cpu: Cpus - 1, bound: true, vmspace: readerSpace);
        writer.Join();
        reader.Join();
        var d = machine.Counters() - before;

        Assert.That(readBytes, Is.EqualTo(total));
        Assert.That(readHash.GetHashAndReset(), Is.EqualTo(writtenHash.GetHashAndReset()), "SHA-256 of the bytes read equals that of the bytes written");
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        Assert.That(pipe.DirectWrites, Is.GreaterThan(0));
        Assert.That(pipe.BufferedWrites, Is.GreaterThan(0));
        if (Info.PrivateShootdowns == SfBufShootdowns.None
            || (Info.PrivateShootdowns == SfBufShootdowns.WhenRecycling && kernel.SfBufs.Stats().Recycles == 0))
        {
            // The reader's mappings are private; the writer's pages are only wired.
            Assert.That(d[Counter.IpisSent], Is.Zero, "private mappings send no IPI");
        }

        if (Info.NeedsDirectMap)
        {
            Assert.That(d[Counter.KernelPteWrites], Is.Zero);
        }

        if (Info.MapsPerUse)
        {
            // qenter + qremove per direct write, and one more when the destroyed pipe's buffer is unmapped.
            Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(Cpus > 1 ? (2 * pipe.DirectWrites) + 1 : 0));
        }
    }

    private static VmSpace Space(Native.PageTable.Machine machine)
    {
        VmSpace space = null!;
        machine.Run(0, () =>
        {
            space = machine.CreateVmSpace();
            space.MapAnonymous(UserBuffer, 128 << 10);
        });
        return space;
    }
}
