using System.Security.Cryptography;
using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Kernel;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Kernel;

[TestFixtureSource(typeof(StrategyFixture), nameof(StrategyFixture.StrategiesAndCpus))]
[NonParallelizable]
public sealed class SendfileTests(string strategy, int cpus) : StrategyFixture(strategy, cpus)
{
    /// <summary>sf_bufs in the pool: the sf_buf window for sfbuf-i386, free kernel_map pages for original.</summary>
    private const int Pool = 64;

    private const ulong UserBuffer = 0x1000_0000;

    /// <summary>How long a test waits for a kernel thread before calling it a hang (never a timing assertion).</summary>
    private static readonly TimeSpan s_patience = TimeSpan.FromSeconds(60);

    private bool IsPooled => Info.HasPool;

    [Test]
    public void AFileLargerThanThePoolReachesTheNicIntact()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        var bytes = new byte[2 << 20];
        new Random(2005).NextBytes(bytes);
        var file = kernel.FileSystem.AddFile("big", bytes);

        var before = machine.Counters();
        var (nic, error, sent) = SendAndClose(machine, kernel, file, 0, 0);
        var d = machine.Counters() - before;

        Assert.That(error, Is.Zero);
        Assert.That(sent, Is.EqualTo(bytes.Length));
        Assert.That(nic.Bytes, Is.EqualTo(bytes.Length));
        Assert.That(nic.Packets, Is.EqualTo(bytes.Length / Pte.PageSize), "one mbuf per page");
        Assert.That(nic.Sha256, Is.EqualTo(SHA256.HashData(bytes)), "SHA-256 of what the NIC read equals that of the file");
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        AssertEverythingReleased(machine, kernel, file);
        var stats = kernel.SfBufs.Stats();
        Assert.That(stats.AllocFail, Is.Zero);
        if (IsPooled)
        {
            Assert.That(stats.NsfbufsPeak, Is.LessThanOrEqualTo(Pool));
            Assert.That(stats.Misses, Is.GreaterThan(Pool), "the file does not fit: mappings were made again and again");
            Assert.That(d.OnCpu(nic.Cpu, Counter.TlbMisses), Is.GreaterThan(0), "the NIC read the payload through the mappings on its own CPU");
        }
        else if (Info.NeedsDirectMap)
        {
            Assert.That(d[Counter.KernelPteWrites], Is.Zero);
        }
        else
        {
            // XPFO: page-cache pages are user pages, each put back into the direct map for the NIC.
            Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(stats.Misses));
        }

        if (Info.CachedUsers.HasFlag(SfBufUsers.Shared))
        {
            Assert.That(stats.Recycles, Is.GreaterThan(0), "the file does not fit: cached mappings were recycled");
        }

        if (Info.ShootdownCounter is { } counter)
        {
            // Shared mappings of a file larger than the pool: the only shootdowns are the ones the
            // strategy counts (epoch-cache: recycled slots wait out an epoch, and the fallback
            // fires only for a lagging CPU).
            Assert.That(d[Counter.ShootdownRounds], Is.LessThanOrEqualTo(stats.Details[counter]));
        }

        if (Info.MapsPerUse)
        {
            // Per page: the page-in's pager_map unmap (one global invalidation), then sendfile's
            // pmap_qenter and pmap_qremove: three broadcasts on SMP, none on one CPU.
            long pages = bytes.Length / Pte.PageSize;
            Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(Cpus > 1 ? 3 * pages : 0));
        }
    }

    [Test]
    public void TwoSendersOfTheSameFileShareItsPagesAndBothArriveIntact()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        var bytes = new byte[Pool * Pte.PageSize * 2];
        new Random(11).NextBytes(bytes);
        var file = kernel.FileSystem.AddFile("shared", bytes);
        var sockets = new[] { new Socket(kernel), new Socket(kernel) };

        // Each sender's NIC runs on the other sender's CPU when there are two.
        var nics = new[] { Nic.Start(kernel, sockets[0], Cpus - 1), Nic.Start(kernel, sockets[1], 0) };
        var errors = new int[] { -1, -1 };
        var senders = Enumerable.Range(0, 2).Select(i => machine.StartThread($"sendfile{i}", () =>
        {
            errors[i] = Sendfile.Send(kernel, file, sockets[i], 0, 0, CancellationToken.None, out _);
            sockets[i].Close();
        }, cpu: i % Cpus, bound: true)).ToArray();
        foreach (var td in senders)
        {
            td.Join(s_patience);
        }

        foreach (var nic in nics)
        {
            nic.Join(s_patience);
        }

        byte[] expected = SHA256.HashData(bytes);
        Assert.That(errors, Is.All.Zero);
        Assert.That(nics.Select(n => n.Bytes), Is.All.EqualTo(bytes.Length));
        Assert.That(nics.Select(n => n.Sha256), Is.All.EqualTo(expected));
        Assert.That(machine.Counters()[Counter.StaleAccesses], Is.Zero);
        AssertEverythingReleased(machine, kernel, file);
    }

    [Test]
    public void AStoppedNicTransmitsWhatIsQueuedAndExits()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        var bytes = new byte[5 * Pte.PageSize];
        new Random(12).NextBytes(bytes);
        var file = kernel.FileSystem.AddFile("f", bytes);
        var so = new Socket(kernel);
        var nic = Nic.Start(kernel, so);
        Assert.That(() => Nic.Start(kernel, so), Throws.InvalidOperationException, "one NIC per socket");
        machine.Run(0, () => Assert.That(Sendfile.Send(kernel, file, so, 0, 0, CancellationToken.None, out _), Is.Zero));
        nic.Stop();
        nic.Join(s_patience);

        Assert.That(nic.HasExited, Is.True);
        Assert.That(so.IsClosed, Is.False);
        Assert.That(nic.Bytes, Is.EqualTo(bytes.Length));
        Assert.That(nic.Sha256, Is.EqualTo(SHA256.HashData(bytes)));
        AssertEverythingReleased(machine, kernel, file);
    }

    [Test]
    public void ARangeOfARealHostFileReachesTheNicIntact()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        string host = typeof(object).Assembly.Location;
        byte[] contents = File.ReadAllBytes(host);
        var file = kernel.FileSystem.AddHostFile("corelib", host);
        const long offset = 12_345;
        const long length = (1L << 20) + 777; // unaligned at both ends: partial first and last pages
        Assert.That(file.Size, Is.GreaterThan(offset + length));

        var before = machine.Counters();
        var (nic, error, sent) = SendAndClose(machine, kernel, file, offset, length);
        var d = machine.Counters() - before;

        Assert.That(error, Is.Zero);
        Assert.That(sent, Is.EqualTo(length));
        Assert.That(nic.Bytes, Is.EqualTo(length));
        Assert.That(nic.Sha256, Is.EqualTo(SHA256.HashData(contents.AsSpan((int)offset, (int)length))));
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        AssertEverythingReleased(machine, kernel, file);
    }

    /// <summary>
    /// A file of half the pool sent four times: the first pass maps every page, and from what the
    /// registry declares of the strategy, the later ones (the steady state) do this: a cache of
    /// shared mappings makes none (no PTE, no invalidation, no IPI: every sf_buf stays cached and
    /// its cpumask already names every CPU; a pkmap slot keeps its page until a wrap, and the hand
    /// does not move when nothing new is mapped), and every allocation is a hit; a strategy that
    /// caches nothing maps every page again; one that maps per use broadcasts at
    /// <c>pmap_qenter</c> (sf_buf_alloc) and at <c>pmap_qremove</c> (sf_buf_mext) and removes every
    /// mapping; the direct map, page-in included, writes not one PTE and invalidates nothing; a
    /// strategy that declares the counter of its shootdowns sends, on SMP, exactly those. The
    /// mechanisms' own counts are <see cref="SendfileMechanismTests"/>.
    /// </summary>
    [Test]
    public void AHotFileSmallerThanThePoolNeedsNoNewMappingsAfterTheFirstPass()
    {
        var run = SendHotFile();
        var (steady, whole) = (run.Steady, run.Whole);
        long steadyPages = run.SteadyPages;
        if (Info.CachedUsers.HasFlag(SfBufUsers.Shared))
        {
            Assert.That(steady[Counter.ShootdownRounds], Is.Zero);
            Assert.That(steady[Counter.IpisSent], Is.Zero);
            Assert.That(steady[Counter.KernelPteWrites], Is.Zero);
            Assert.That(steady[Counter.LocalInvalidations], Is.Zero);
            Assert.That(run.End.Hits - run.AfterFirst.Hits, Is.EqualTo(steadyPages));
        }
        else if (!Info.NeedsDirectMap)
        {
            // No reuse by page: every sf_buf is a new mapping.
            Assert.That(steady[Counter.KernelPteWrites], Is.EqualTo(steadyPages));
        }

        if (Info.MapsPerUse)
        {
            // pmap_qenter at sf_buf_alloc and pmap_qremove in sf_buf_mext, each a broadcast.
            Assert.That(steady[Counter.ShootdownRounds], Is.EqualTo(Cpus > 1 ? 2 * steadyPages : 0));
            Assert.That(steady[Counter.KernelPteClears], Is.EqualTo(steadyPages));
        }

        if (Info.NeedsDirectMap)
        {
            // The direct map, page-in included: not one PTE written, not one invalidation.
            Assert.That(whole[Counter.KernelPteWrites], Is.Zero);
            Assert.That(whole[Counter.ShootdownRounds], Is.Zero);
            Assert.That(whole[Counter.IpisSent], Is.Zero);
            Assert.That(whole[Counter.LocalInvalidations], Is.Zero);
        }

        if (Info.ShootdownCounter is { } counter)
        {
            long counted = run.End.Details[counter] - run.AfterFirst.Details[counter];
            Assert.That(steady[Counter.ShootdownRounds], Is.EqualTo(Cpus > 1 ? counted : 0), $"{counter} counts the strategy's only shootdowns");
        }
    }

    /// <summary>What <see cref="SendHotFile"/> measured: the counts of the later passes and of all of them, and the mapper's statistics after the first pass and at the end.</summary>
    internal sealed record HotFileRun(CounterSnapshot Steady, CounterSnapshot Whole, SfBufStats AfterFirst, SfBufStats End, int Pages, long SteadyPages);

    /// <summary>Sends a file of half the pool four times, checking that every byte arrives and everything is released.</summary>
    internal HotFileRun SendHotFile()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        const int pages = Pool / 2;
        const int passes = 4;
        var bytes = new byte[pages * Pte.PageSize];
        new Random(4).NextBytes(bytes);
        var file = kernel.FileSystem.AddFile("hot", bytes);
        var so = new Socket(kernel);
        var start = machine.Counters();
        var nic = Nic.Start(kernel, so);
        CounterSnapshot? afterFirst = null;
        SfBufStats? statsAfterFirst = null;
        for (int pass = 0; pass < passes; pass++)
        {
            machine.Run(0, () =>
            {
                Assert.That(Sendfile.Send(kernel, file, so, 0, 0, CancellationToken.None, out long sent), Is.Zero);
                Assert.That(sent, Is.EqualTo(bytes.Length));
                Assert.That(so.WaitDrained(), Is.Zero);
            });
            if (pass == 0)
            {
                afterFirst = machine.Counters();
                statsAfterFirst = kernel.SfBufs.Stats();
            }
        }

        var steady = machine.Counters() - afterFirst!;
        var whole = machine.Counters() - start;
        var end = kernel.SfBufs.Stats();
        machine.Run(0, so.Close);
        nic.Join(s_patience);

        using var expected = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        for (int pass = 0; pass < passes; pass++)
        {
            expected.AppendData(bytes);
        }

        Assert.That(nic.Bytes, Is.EqualTo((long)passes * bytes.Length));
        Assert.That(nic.Sha256, Is.EqualTo(expected.GetHashAndReset()));
        Assert.That(whole[Counter.StaleAccesses], Is.Zero);
        AssertEverythingReleased(machine, kernel, file);
        return new HotFileRun(steady, whole, statsAfterFirst!, end, pages, (long)pages * (passes - 1));
    }

    [Test]
    public void ACaughtSignalWhileThePoolIsExhaustedReturnsEintrAndCountsAnAllocFail([Values] bool signalledBeforeTheCall)
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);

        // A pool whose size is no parameter takes its KVA from kernel_map, all of it (lwbuf's
        // objects; original's is the Pool pages the pager leaves).
        int extra = Info.HasPool && !Info.PoolSizeIsParameter ? machine.KernelMap.FreePages - Pool : 0;
        var bytes = new byte[(Pool + extra + 16) * Pte.PageSize];
        new Random(6).NextBytes(bytes);
        var file = kernel.FileSystem.AddFile("stalled", bytes);

        // No NIC yet, and room in the socket for more than the pool: the socket ends up holding
        // every sf_buf. The page cache is warmed first, so that only sf_buf_alloc can sleep.
        var so = new Socket(kernel, 2 * bytes.Length);
        machine.Run(0, () => WarmPageCache(kernel, file));
        int pool = Info.MapsPerUse ? machine.KernelMap.FreePages : Pool;
        Assert.That(pool, Is.EqualTo(Pool), "the pool the test means to exhaust");

        using var signal = new CancellationTokenSource();
        if (signalledBeforeTheCall)
        {
            signal.Cancel();
        }

        int error = -1;
        long sent = -1;
        var sender = machine.StartThread("sendfile", () =>
            error = Sendfile.Send(kernel, file, so, 0, 0, signal.Token, out sent), cpu: 0, bound: true);
        if (IsPooled && !SfBufMapper.Describe(Strategy).InterruptibleWait)
        {
            ASignalCannotEndAnUninterruptibleWait(machine, kernel, file, so, signal, sender, bytes, () => (error, sent));
            return;
        }

        if (!signalledBeforeTheCall && IsPooled)
        {
            WaitUntil(() => machine.SleepingThreads == 1 || sender.HasExited, "the sender sleeps for an sf_buf");
            Assert.That(sender.HasExited, Is.False);
            signal.Cancel();
        }

        sender.Join(s_patience);
        var stats = kernel.SfBufs.Stats();
        if (IsPooled)
        {
            Assert.That(error, Is.EqualTo(Errno.EINTR));
            Assert.That(sent, Is.EqualTo((long)pool * Pte.PageSize), "the socket holds the whole pool");
            Assert.That(so.SendBufferMbufs, Is.EqualTo(pool));
            Assert.That(stats.AllocFail, Is.EqualTo(1), "sf_allocfail: requests for sfbufs denied");
            Assert.That(stats.AllocWait, Is.EqualTo(1), "sf_allocwait: the one sleep");
            Assert.That(stats.NsfbufsUsed, Is.EqualTo(pool));
        }
        else
        {
            // The direct map has no pool: it never sleeps and never fails.
            Assert.That(error, Is.Zero);
            Assert.That(sent, Is.EqualTo(bytes.Length));
            Assert.That(stats.AllocFail, Is.Zero);
        }

        // Now let a NIC drain what was queued: the bytes are the file's prefix, and everything
        // (including the page whose sf_buf was denied) is released.
        var nic = Nic.Start(kernel, so);
        machine.Run(0, so.Close);
        nic.Join(s_patience);
        Assert.That(nic.Bytes, Is.EqualTo(sent));
        Assert.That(nic.Sha256, Is.EqualTo(SHA256.HashData(bytes.AsSpan(0, (int)sent))));
        Assert.That(machine.Counters()[Counter.StaleAccesses], Is.Zero);
        AssertEverythingReleased(machine, kernel, file);
    }

    /// <summary>
    /// The documented exception of kmap, lwbuf and emap: their waits are uninterruptible, so the
    /// sender sleeps on after the signal, until the NIC frees what the socket holds; then it
    /// sends everything (the signal is seen only by sleeps for socket space, and there is room).
    /// </summary>
    private static void ASignalCannotEndAnUninterruptibleWait(
        SimMachine machine, SimKernel kernel, Vnode file, Socket so, CancellationTokenSource signal, KernelThread sender, byte[] bytes, Func<(int Error, long Sent)> result)
    {
        WaitUntil(() => kernel.SfBufs.Stats().AllocWait > 0 || sender.HasExited, "the sender sleeps for an sf_buf");
        signal.Cancel();
        Thread.Sleep(100);
        Assert.That(sender.HasExited, Is.False, "the signal does not end an uninterruptible wait");

        var nic = Nic.Start(kernel, so);
        sender.Join(s_patience);
        var (error, sent) = result();
        Assert.That(error, Is.Zero);
        Assert.That(sent, Is.EqualTo(bytes.Length));
        Assert.That(kernel.SfBufs.Stats().AllocFail, Is.Zero, "no request was denied");
        machine.Run(0, so.Close);
        nic.Join(s_patience);
        Assert.That(nic.Sha256, Is.EqualTo(SHA256.HashData(bytes)));
        Assert.That(machine.Counters()[Counter.StaleAccesses], Is.Zero);
        AssertEverythingReleased(machine, kernel, file);
    }

    [TestCase(10_001, 0, TestName = "{m}(offset past EOF)")]
    [TestCase(9_000, 2_000, TestName = "{m}(range past EOF)")]
    [TestCase(10_000, 1, TestName = "{m}(one byte at EOF)")]
    [TestCase(-1, 0, TestName = "{m}(negative offset)")]
    [TestCase(0, -5, TestName = "{m}(negative length)")]
    public void SendfileBeyondEofIsAnErrorAndChangesNothing(long offset, long length)
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        var file = kernel.FileSystem.AddFile("small", new byte[10_000]);
        var so = new Socket(kernel);
        var before = machine.Counters();
        int error = -1;
        long sent = -1;
        machine.Run(0, () => error = Sendfile.Send(kernel, file, so, offset, length, CancellationToken.None, out sent));
        var d = machine.Counters() - before;

        Assert.That(error, Is.EqualTo(Errno.EINVAL));
        Assert.That(sent, Is.Zero);
        Assert.That(so.MbufsAppended, Is.Zero);
        Assert.That(so.SendBufferBytes, Is.Zero);
        Assert.That(file.ResidentPages, Is.Zero, "nothing was read in");
        Assert.That(kernel.PagesIn, Is.Zero);
        var stats = kernel.SfBufs.Stats();
        Assert.That(stats.Hits + stats.Misses, Is.Zero, "no sf_buf was allocated");
        Assert.That(stats.AllocFail, Is.Zero);
        Assert.That(d[Counter.KernelPteWrites], Is.Zero);
        Assert.That(d[Counter.ShootdownRounds], Is.Zero);
    }

    [Test]
    public void SendfileOfNothingAtEofSucceedsAndQueuesNothing()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        var file = kernel.FileSystem.AddFile("small", new byte[10_000]);
        var so = new Socket(kernel);
        int error = -1;
        long sent = -1;
        machine.Run(0, () => error = Sendfile.Send(kernel, file, so, file.Size, 0, CancellationToken.None, out sent));

        Assert.That(error, Is.Zero);
        Assert.That(sent, Is.Zero);
        Assert.That(so.MbufsAppended, Is.Zero);
        Assert.That(file.ResidentPages, Is.Zero);
    }

    [Test]
    public void APlainSendCopiesThroughClustersAndArrivesIntact()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        VmSpace space = null!;
        machine.Run(0, () =>
        {
            space = machine.CreateVmSpace();
            space.MapAnonymous(UserBuffer, 64 << 10);
        });

        var so = new Socket(kernel);
        var nic = Nic.Start(kernel, so);
        var before = machine.Counters();
        using var written = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        const long total = 1L << 20;
        int[] sizes = [1, 100, 2048, 2049, 4096, 10_000, 65_536, 777];
        var sender = machine.StartThread("sender", () =>
        {
            var cpu = machine.CurrentCpu;
            var chunk = new byte[65_536];
            var random = new Random(7);
            long done = 0;
            for (int i = 0; done < total; i++)
            {
                int n = (int)Math.Min(sizes[i % sizes.Length], total - done);
                random.NextBytes(chunk.AsSpan(0, n));
                written.AppendData(chunk.AsSpan(0, n));
                Assert.That(cpu.CopyOut(chunk.AsSpan(0, n), UserBuffer), Is.Zero);
                var uio = new Uio(UserBuffer, n, UioSegment.UserSpace, UioDirection.Write);
                Assert.That(so.Send(uio), Is.Zero);
                Assert.That(uio.Resid, Is.Zero);
                done += n;
            }

            so.Close();
        }, cpu: 0, bound: true, vmspace: space);
        sender.Join(s_patience);
        nic.Join(s_patience);
        var d = machine.Counters() - before;

        Assert.That(nic.Bytes, Is.EqualTo(total));
        Assert.That(nic.Sha256, Is.EqualTo(written.GetHashAndReset()));
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        var stats = kernel.SfBufs.Stats();
        Assert.That(stats.Hits + stats.Misses, Is.Zero, "a plain send copies: no sf_buf");
        var clusters = MbufClusters.Of(kernel);
        Assert.That(clusters.InUse, Is.Zero, "every cluster went back to the zone");
        Assert.That(clusters.Peak, Is.GreaterThan(0), "the data went through clusters");
    }

    [Test]
    public void ASendOnAClosedSocketIsEpipeAndQueuesNothing()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        var file = kernel.FileSystem.AddFile("f", new byte[3 * Pte.PageSize]);
        var so = new Socket(kernel);
        int fileError = -1;
        int plainError = -1;
        machine.Run(0, () =>
        {
            so.Close();
            fileError = Sendfile.Send(kernel, file, so, 0, 0, CancellationToken.None, out _);
            plainError = so.Send(new Uio(machine.KernelMemory.Alloc(Pte.PageSize), 100, UioSegment.SystemSpace, UioDirection.Write));
        });

        Assert.That(fileError, Is.EqualTo(Errno.EPIPE));
        Assert.That(plainError, Is.EqualTo(Errno.EPIPE));
        Assert.That(so.MbufsAppended, Is.Zero);
        Assert.That(kernel.SfBufs.Stats().NsfbufsUsed, Is.Zero);
    }

    /// <summary>
    /// A small machine: a 64-page sf_buf window, and a kernel_map that leaves 64 pages once the
    /// original vnode pager has carved its <c>pager_map</c> out of it.
    /// </summary>
    private SimMachine NewMachine() => new(new MachineOptions
    {
        Cpus = Cpus,
        PhysicalMemoryBytes = 64UL << 20,
        Flavor = SfBufMapper.Describe(Strategy).Flavor,
        SfBufWindowPages = Pool,
        KernelMapPages = Pool + SimKernel.PagerMapPages,
        KernelMemoryPages = 1024,
        ShootdownWatchdog = TimeSpan.FromSeconds(30),
    });

    /// <summary>Sendfile on cpu 0 to a NIC on the last CPU, then close; returns once the NIC has drained everything.</summary>
    private static (Nic Nic, int Error, long Sent) SendAndClose(SimMachine machine, SimKernel kernel, Vnode file, long offset, long length)
    {
        var so = new Socket(kernel);
        var nic = Nic.Start(kernel, so);
        int error = -1;
        long sent = -1;
        try
        {
            machine.Run(0, () => error = Sendfile.Send(kernel, file, so, offset, length, CancellationToken.None, out sent));
        }
        finally
        {
            machine.Run(0, so.Close);
            nic.Join(s_patience);
        }

        return (nic, error, sent);
    }

    /// <summary>Pages the whole file in, dropping the wirings at once.</summary>
    private static void WarmPageCache(SimKernel kernel, Vnode file)
    {
        for (long i = 0; i < file.Pages; i++)
        {
            Assert.That(VnodePager.GetPage(kernel, file, i, out var page), Is.Zero);
            kernel.Machine.Physical.Unwire(page);
        }
    }

    /// <summary>No sf_buf in use and no page of the file wired: every resident page can be evicted.</summary>
    private static void AssertEverythingReleased(SimMachine machine, SimKernel kernel, Vnode file)
    {
        Assert.That(kernel.SfBufs.Stats().NsfbufsUsed, Is.Zero, "nsfbufsused");
        int resident = file.ResidentPages;
        int evicted = -1;
        machine.Run(0, () => evicted = VnodePager.Evict(kernel, file));
        Assert.That(evicted, Is.EqualTo(resident), "sf_buf_mext unwired every page");
    }

    private static void WaitUntil(Func<bool> condition, string what)
    {
        if (!SpinWait.SpinUntil(condition, s_patience))
        {
            throw new TimeoutException($"timed out waiting until {what}");
        }
    }
}
