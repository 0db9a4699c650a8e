using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Kernel;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Kernel;

/// <summary>
/// Every subsystem at once on a 2-CPU machine with the stale-translation oracle on and an
/// sf_buf pool smaller than their combined working set: a pipe pair (buffered and direct
/// writes), a memory disk, sendfile to a NIC bound to cpu 1, execve of <c>/bin/true</c>, ptrace
/// peek/poke, and vnode-pager reads with eviction between passes. The workers are unbound
/// kernel threads, so they migrate; each loops until the deadline (<see cref="DefaultSeconds"/>,
/// or <c>SFBUF_STRESS_SECONDS</c>), yielding every iteration, and verifies every byte it moves.
/// </summary>
[TestFixtureSource(nameof(Strategies))]
[NonParallelizable]
[Category("Stress")]
public sealed class AllSubsystemsStressTests
{
    /// <summary>Default run time in seconds for the paper's strategies; <c>SFBUF_STRESS_SECONDS</c> overrides it.</summary>
    private const double DefaultSeconds = 30;

    /// <summary>Default run time in seconds for each peer (six of them share the test budget); <c>SFBUF_STRESS_SECONDS</c> overrides it.</summary>
    private const double PeerDefaultSeconds = 8;

    /// <summary>
    /// Pages for per-use ephemeral mappings: the sf_buf window for sfbuf-i386, and what is left
    /// of <c>kernel_map</c> for original once the fixed carve-outs are taken (see <see cref="KernelMapPages"/>).
    /// </summary>
    private const int Pool = 48;

    /// <summary>A pipe's KVA window under original: <c>PIPENPAGES + 1</c> = 18 pages, taken on its first direct write and kept.</summary>
    private const int PipeWindowPages = Pipe.PIPENPAGES + 1;

    /// <summary>
    /// <c>kernel_map</c> for original: 48 (the pool) + 48 (sendfile's own pool of nsfbufs buffers)
    /// + 16 (<c>exec_map</c>) + 32 (<c>pager_map</c>) + 18 (the one pipe's window) = 162 pages. The
    /// submaps, the sendfile pool and the window are contiguous runs taken lazily on first use, so
    /// the test takes them before the stress starts (the window by one direct write). Taken later, under pressure, a submap fails: <c>SimKernel</c> carves it
    /// without waiting and throws "kernel_map has no room for exec_map" (about every other run
    /// when the first exec meets a kernel_map that sendfile has filled), and its <c>Lazy</c> keeps
    /// rethrowing that for every later exec; and the window could wait long for 18 contiguous
    /// pages. What remains, 48 pages, serves the single-page per-use mappings of md, ptrace and
    /// the vnode reader (66 once the pipe is destroyed at the end).
    /// </summary>
    private const int KernelMapPages = Pool + Pool + SimKernel.ExecMapPages + SimKernel.PagerMapPages + PipeWindowPages;

    /// <summary>
    /// The socket's send buffer: 512 KiB, i.e. up to 128 sendfile pages each holding an sf_buf
    /// until the NIC transmits it: far more than the pool, so sendfile alone can exhaust it.
    /// </summary>
    private const int SocketHiWat = 512 << 10;

    /// <summary>The sendfile file: 1 MiB (256 pages), more than five times the pool.</summary>
    private const int SendfileBytes = 1 << 20;

    /// <summary>The vnode reader's file: 64 whole pages and a partial one (more than the pool).</summary>
    private const int VnodeFileBytes = (64 * Pte.PageSize) + 1234;

    private const long DiskBytes = 1L << 20;
    private const int MaxBio = 64 << 10;
    private const int Sector = MemoryDisk.DEV_BSIZE;

    private const ulong UserBuffer = 0x1000_0000;
    private const int PipeUserBytes = 128 << 10;
    private const ulong TargetBase = 0x4000_0000;
    private const int TargetBytes = 16 * Pte.PageSize;
    private const int TracerBytes = 4 * Pte.PageSize;
    private const string HostTrue = "/bin/true";

    /// <summary>The least operations each worker must have completed.</summary>
    private const int MinOperations = 3;

    /// <summary>How long after the deadline the threads may take to finish before it is called a deadlock.</summary>
    private static readonly TimeSpan s_joinGrace = TimeSpan.FromSeconds(120);

    private readonly string _strategy;

    public AllSubsystemsStressTests(string strategy) => _strategy = strategy;

    public static IEnumerable<TestFixtureData> Strategies() =>
        SfBufMapper.StrategyNames.Select(s => new TestFixtureData(s).SetArgDisplayNames(s));

    // The runs made in this process, by strategy: a strategy's own test reads the run its generic
    // test made instead of making another one.
    private static readonly ConcurrentDictionary<string, Lazy<Outcome>> s_runs = new();

    /// <summary>
    /// The run, checked against what every strategy must do and, at the end, against what the
    /// registry declares of the strategy: a pool whose size is a parameter peaks at most at its
    /// size; a cache of mappings recycles (the working set does not fit); a per-use strategy
    /// sleeps for its pool and gives all its KVA back; the direct map writes no PTE; private
    /// users' per-CPU slots are used; and the mechanisms' own counters, wherever published.
    /// </summary>
    [Test]
    public void AllSubsystemsAtOnceOnAnOvercommittedPoolMoveTheRightBytesWithoutStaleAccessOrDeadlock() => RunOnce(_strategy);

    /// <summary>The run for <paramref name="strategy"/>, made once per process.</summary>
    internal static Outcome RunOnce(string strategy) =>
        s_runs.GetOrAdd(strategy, s => new Lazy<Outcome>(() => new AllSubsystemsStressTests(s).Run())).Value;

    private Outcome Run()
    {
        var duration = StressDuration(SfBufMapper.Describe(_strategy).IsPeer ? PeerDefaultSeconds : DefaultSeconds);
        var machine = new SimMachine(new MachineOptions
        {
            Cpus = 2,
            PhysicalMemoryBytes = 128UL << 20,
            Flavor = SfBufMapper.Describe(_strategy).Flavor,
            SfBufWindowPages = Pool,
            KernelMapPages = KernelMapPages,
            KernelMemoryPages = 2048,
        });
        Assert.That(machine.Options.Checked, Is.True, "the stale-translation oracle is on");
        var kernel = new SimKernel(machine, _strategy);
        try
        {
            return RunStress(machine, kernel, duration);
        }
        finally
        {
            // A deadlocked machine cannot be disposed (its threads still run): leak it rather
            // than hide the test's own message behind Dispose's.
            if (machine.LiveThreads().Count == 0)
            {
                kernel.Dispose();
                machine.Dispose();
            }
        }
    }

    /// <summary>
    /// The bug the stress found at once under sfbuf-i386, reduced. <c>VnodePager.PageIn</c> reads
    /// <c>kernel.Cpu</c> first and then allocates what it maps the new page with: a shared sf_buf
    /// (<c>sf_buf_alloc(m, 0)</c>), or under original <c>pager_map</c> KVA
    /// (<c>kmem_alloc_wait</c>). Both may sleep (pool or submap exhausted), and a contended
    /// <c>KMutex</c> may block; an unpinned thread then wakes on whichever CPU is free. PageIn
    /// goes on filling the page through the CPU it read before, which another thread now holds:
    /// checked mode throws "cpu N is held by X, not by the calling thread"; unchecked, the
    /// thread would translate through another CPU's TLB, racing its owner. sendfile, exec and
    /// <c>vn_read</c> all page in this way from unpinned threads.
    /// <para>
    /// Here the pager starts on cpu 1 with the resource exhausted (the only sf_buf, or all of
    /// <c>pager_map</c>) and sleeps; a thread bound to cpu 1 then holds that CPU while cpu 0
    /// gives the resource back, so the pager wakes on cpu 0. The direct map never sleeps: there
    /// the test passes.
    /// </para>
    /// </summary>
    [Test]
    public void APageInThatSleepsAndMigratesFillsThePageOnTheCpuItNowRunsOn()
    {
        var patience = TimeSpan.FromSeconds(60);
        using var machine = new SimMachine(new MachineOptions
        {
            Cpus = 2,
            PhysicalMemoryBytes = 32UL << 20,
            Flavor = SfBufMapper.Describe(_strategy).Flavor,
            SfBufWindowPages = 1,
            KernelMapPages = SimKernel.ExecMapPages + SimKernel.PagerMapPages + 16,
            KernelMemoryPages = 64,
        });
        using var kernel = new SimKernel(machine, _strategy);
        var bytes = new byte[Pte.PageSize];
        new Random(7).NextBytes(bytes);
        var file = kernel.FileSystem.AddFile("/repro", bytes);

        // Exhaust what PageIn allocates from (lwbuf: kernel_map, an object per page of it).
        var held = new List<Native.SfBufNative.SfBuf>();
        ulong pagerKva = 0;
        machine.Run(0, () =>
        {
            if (kernel.IsOriginal)
            {
                pagerKva = kernel.PagerMap.Alloc(SimKernel.PagerMapPages, wait: false);
            }
            else if (SfBufMapper.Describe(_strategy).HasPool)
            {
                while (kernel.SfBufs.Alloc(machine.Physical.Alloc(AllocFlags.Wired), SfBufFlags.NoWait) is { IsNone: false } sf)
                {
                    held.Add(sf);
                }
            }
        });

        // An unbound pager on cpu 1 sleeps in PageIn's allocation.
        Exception? fault = null;
        int error = -1;
        VmPage paged = default;
        int pagerDone = 0;
        var pager = machine.StartThread("pager", () =>
        {
            try
            {
                error = VnodePager.GetPage(kernel, file, 0, out paged);
            }
            catch (Exception ex)
            {
                fault = ex;
            }
            finally
            {
                Volatile.Write(ref pagerDone, 1);
            }
        }, cpu: 1);
        WaitUntil(() => machine.SleepingThreads == 1 || Volatile.Read(ref pagerDone) == 1, "the pager sleeps", patience);

        // Another thread holds cpu 1 (answering IPIs) until the pager is done.
        int hogging = 0;
        var hog = machine.StartThread("cpu1-hog", () =>
        {
            Volatile.Write(ref hogging, 1);
            while (Volatile.Read(ref pagerDone) == 0)
            {
                machine.CurrentCpu.Poll();
                Thread.Yield();
            }
        }, cpu: 1, bound: true);
        WaitUntil(() => Volatile.Read(ref hogging) == 1, "cpu 1 is taken", patience);

        // Give the resource back from cpu 0: once this thread exits, cpu 0 is the free CPU.
        machine.Run(0, () =>
        {
            if (pagerKva != 0)
            {
                kernel.PagerMap.Free(pagerKva, SimKernel.PagerMapPages);
            }
            else
            {
                held.ForEach(kernel.SfBufs.Free);
            }
        });
        pager.Join(patience);
        hog.Join(patience);

        Assert.That(fault, Is.Null, "the page-in filled the page on the CPU it runs on");
        Assert.That(error, Is.Zero);
        Assert.That(machine.Physical.PhysicalBytes(paged).ToArray(), Is.EqualTo(bytes), "the page holds the file's bytes");
        Assert.That(machine.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    /// <summary>Sets the subsystems up, runs every worker until the deadline, joins them and checks what they did.</summary>
    private Outcome RunStress(SimMachine machine, SimKernel kernel, TimeSpan duration)
    {
        var random = new Random(20050410);
        var sendfileBytes = new byte[SendfileBytes];
        var vnodeBytes = new byte[VnodeFileBytes];
        var targetBytes = new byte[TargetBytes];
        random.NextBytes(sendfileBytes);
        random.NextBytes(vnodeBytes);
        random.NextBytes(targetBytes);
        var sendfileFile = kernel.FileSystem.AddFile("/stress/sendfile", sendfileBytes);
        var vnodeFile = kernel.FileSystem.AddFile("/stress/vnode", vnodeBytes);
        bool haveTrue = File.Exists(HostTrue);
        if (haveTrue)
        {
            kernel.FileSystem.AddHostFile(HostTrue, HostTrue);
        }

        // ---------------------------------------------------------------- set-up, on cpu 0
        Pipe pipe = null!;
        MemoryDisk md = null!;
        Ptrace ptrace = null!;
        VmSpace writerSpace = null!, readerSpace = null!, target = null!, tracer = null!, vnodeSpace = null!;
        ulong mdWrite = 0, mdRead = 0, vnodeKernelBuffer = 0;
        machine.Run(0, () =>
        {
            if (kernel.IsOriginal)
            {
                // Carve the submaps and sendfile's pool now, while kernel_map is empty (see KernelMapPages).
                Assert.That(kernel.ExecMap.Region.Pages, Is.EqualTo(SimKernel.ExecMapPages));
                Assert.That(kernel.PagerMap.Region.Pages, Is.EqualTo(SimKernel.PagerMapPages));
                var page = machine.Physical.Alloc(AllocFlags.Wired);
                kernel.Original.Free(kernel.Original.SendfileAlloc(page));
                machine.Physical.Unwire(page);
                machine.Physical.Free(page);
            }

            pipe = Pipe.Create(kernel);
            md = MemoryDisk.Create(kernel, DiskBytes);
            ptrace = Ptrace.Create(kernel);
            mdWrite = machine.KernelMemory.Alloc(MaxBio);
            mdRead = machine.KernelMemory.Alloc(MaxBio);
            vnodeKernelBuffer = machine.KernelMemory.Alloc(VnodeFileBytes);
            writerSpace = machine.CreateVmSpace();
            readerSpace = machine.CreateVmSpace();
            target = machine.CreateVmSpace();
            tracer = machine.CreateVmSpace();
            vnodeSpace = machine.CreateVmSpace();
            writerSpace.MapAnonymous(UserBuffer, PipeUserBytes);
            readerSpace.MapAnonymous(UserBuffer, PipeUserBytes);
            target.MapAnonymous(TargetBase, TargetBytes);
            tracer.MapAnonymous(UserBuffer, TracerBytes);
            vnodeSpace.MapAnonymous(UserBuffer, VnodeFileBytes);
        });
        Assert.That(new[] { mdWrite, mdRead, vnodeKernelBuffer }, Has.None.EqualTo(0UL), "kmem buffers");

        // Page sendfile's file and /bin/true in now, so their checksums start from known pages;
        // the vnode reader keeps paging in during the stress (it evicts between passes).
        machine.Run(0, () =>
        {
            WarmPageCache(kernel, sendfileFile);
            if (kernel.FileSystem.Lookup(HostTrue) is { } binTrue)
            {
                WarmPageCache(kernel, binTrue);
            }
        });
        machine.Run(1, () => Require(machine.CurrentCpu.CopyOut(targetBytes, TargetBase), "initialise the ptrace target"), target);

        var stress = new StressRun(machine, duration);
        using var writtenHash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using var readHash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long pipeWritten = 0, pipeRead = 0;

        // One direct write before the stress: under original it takes the pipe's window from
        // kernel_map while kernel_map is empty (see KernelMapPages). Its bytes count like any.
        var warmWriter = machine.StartThread("pipe-warmup-writer", () =>
        {
            var bytes = new byte[Pipe.PIPE_MINDIRECT];
            random.NextBytes(bytes);
            Require(machine.CurrentCpu.CopyOut(bytes, UserBuffer), "copyout");
            Require(pipe.Write(new Uio(UserBuffer, bytes.Length, UioSegment.UserSpace, UioDirection.Write)), "warm-up pipe write");
            writtenHash.AppendData(bytes);
            pipeWritten += bytes.Length;
        }, cpu: 0, bound: true, vmspace: writerSpace);
        var warmReader = machine.StartThread("pipe-warmup-reader", () =>
        {
            var bytes = new byte[Pipe.PIPE_MINDIRECT];
            var uio = new Uio(UserBuffer, bytes.Length, UioSegment.UserSpace, UioDirection.Read);
            while (uio.Resid > 0)
            {
                Require(pipe.Read(uio), "warm-up pipe read");
            }

            Require(machine.CurrentCpu.CopyIn(UserBuffer, bytes), "copyin");
            readHash.AppendData(bytes);
            pipeRead += bytes.Length;
        }, cpu: 1, bound: true, vmspace: readerSpace);
        warmWriter.Join(s_joinGrace);
        warmReader.Join(s_joinGrace);
        Assert.That(pipe.DirectWrites, Is.EqualTo(1), "the warm-up write went direct");

        var before = machine.Counters();
        var clock = Stopwatch.StartNew();
        stress.Start();

        // ---------------------------------------------------------------- pipe
        var pipeWriter = stress.Spawn("pipe-writer", writerSpace, w =>
        {
            var rng = new Random(1);
            var chunk = new byte[PipeUserBytes];
            try
            {
                while (stress.Going)
                {
                    // Half below PIPE_MINDIRECT (buffered), half at or above it (direct; above
                    // PIPE_DIRECT_MAX a write is several direct hand-overs, maybe a buffered tail).
                    int n = rng.Next(2) == 0 ? rng.Next(1, Pipe.PIPE_MINDIRECT) : rng.Next(Pipe.PIPE_MINDIRECT, PipeUserBytes + 1);
                    rng.NextBytes(chunk.AsSpan(0, n));
                    Require(machine.CurrentCpu.CopyOut(chunk.AsSpan(0, n), UserBuffer), "copyout");
                    var uio = new Uio(UserBuffer, n, UioSegment.UserSpace, UioDirection.Write);
                    Require(pipe.Write(uio), "pipe write");
                    Check(uio.Resid == 0, $"pipe write of {n} left {uio.Resid} bytes");
                    writtenHash.AppendData(chunk, 0, n);
                    pipeWritten += n;
                    w.Count();
                    KernelThread.Current.Yield();
                }
            }
            finally
            {
                pipe.CloseWrite();
            }
        });
        var pipeReader = stress.Spawn("pipe-reader", readerSpace, w =>
        {
            // Reads until end of file, not until the deadline: everything written must arrive.
            var rng = new Random(2);
            var chunk = new byte[PipeUserBytes];
            try
            {
                while (true)
                {
                    int want = rng.Next(1, PipeUserBytes + 1);
                    var uio = new Uio(UserBuffer, want, UioSegment.UserSpace, UioDirection.Read);
                    Require(pipe.Read(uio), "pipe read");
                    int n = (int)(want - uio.Resid);
                    if (n == 0)
                    {
                        break;
                    }

                    Require(machine.CurrentCpu.CopyIn(UserBuffer, chunk.AsSpan(0, n)), "copyin");
                    readHash.AppendData(chunk, 0, n);
                    pipeRead += n;
                    w.Count();
                    KernelThread.Current.Yield();
                }
            }
            finally
            {
                pipe.CloseRead();
            }
        });

        // ---------------------------------------------------------------- md
        var mdWorker = stress.Spawn("md", null, w =>
        {
            var rng = new Random(3);
            var reference = new byte[DiskBytes];
            var data = new byte[MaxBio];
            var back = new byte[MaxBio];

            void ReadBack(long offset, int length)
            {
                machine.CurrentCpu.Fill(mdRead, length, 0xA5);
                Require(md.Strategy(BioCommand.Read, offset, length, mdRead), $"md read of {length} at {offset}");
                machine.CurrentCpu.Read(mdRead, back.AsSpan(0, length));
                int same = back.AsSpan(0, length).CommonPrefixLength(reference.AsSpan((int)offset, length));
                Check(same == length, $"md read of {length} at {offset}: byte {offset + same} is 0x{back[Math.Min(same, length - 1)]:x2}, expected 0x{reference[offset + Math.Min(same, length - 1)]:x2}");
            }

            (long Offset, int Length) RandomRange()
            {
                int length = rng.Next(1, (MaxBio / Sector) + 1) * Sector;
                long offset = (long)rng.Next((int)((DiskBytes - length) / Sector) + 1) * Sector;
                return (offset, length);
            }

            while (stress.Going)
            {
                var (offset, length) = RandomRange();
                rng.NextBytes(data.AsSpan(0, length));
                machine.CurrentCpu.Write(mdWrite, data.AsSpan(0, length));
                Require(md.Strategy(BioCommand.Write, offset, length, mdWrite), $"md write of {length} at {offset}");
                data.AsSpan(0, length).CopyTo(reference.AsSpan((int)offset));
                ReadBack(offset, length);
                var (other, otherLength) = RandomRange();
                ReadBack(other, otherLength);
                w.Count();
                KernelThread.Current.Yield();
            }
        });

        // ---------------------------------------------------------------- sendfile and the NIC
        var so = new Socket(kernel, SocketHiWat);
        long sendfilePasses = 0;
        var sendfile = stress.Spawn("sendfile", null, w =>
        {
            try
            {
                while (stress.Going)
                {
                    Require(Sendfile.Send(kernel, sendfileFile, so, 0, 0, CancellationToken.None, out long sent), "sendfile");
                    Check(sent == SendfileBytes, $"sendfile queued {sent} bytes of {SendfileBytes}");
                    sendfilePasses++;
                    w.Count();
                    KernelThread.Current.Yield();
                }
            }
            finally
            {
                so.Close();
            }
        });
        var nic = Nic.Start(kernel, so, cpu: 1);

        // ---------------------------------------------------------------- exec
        Worker? exec = null;
        ulong firstEntry = 0;
        if (haveTrue)
        {
            exec = stress.Spawn("exec", null, w =>
            {
                byte[]? firstBytes = null;
                while (stress.Going)
                {
                    int error = Exec.Execve(kernel, HostTrue, out var result, out string? reason);
                    Require(error, $"execve {HostTrue}: {reason}");
                    var bytes = new byte[32];
                    Require(machine.CurrentCpu.CopyIn(result!.Entry, bytes), "read the entry point");
                    if (firstBytes == null)
                    {
                        firstEntry = result.Entry;
                        firstBytes = bytes;
                    }

                    Check(result.Entry == firstEntry, $"entry 0x{result.Entry:x}, the first exec's was 0x{firstEntry:x}");
                    Check(bytes.AsSpan().SequenceEqual(firstBytes), "the bytes at the entry point differ from the first exec's");
                    w.Count();
                    KernelThread.Current.Yield();
                }
            });
        }

        // ---------------------------------------------------------------- ptrace
        var targetReference = (byte[])targetBytes.Clone();
        var ptraceWorker = stress.Spawn("ptrace", tracer, w =>
        {
            var rng = new Random(4);
            var back = new byte[TracerBytes];
            while (stress.Going)
            {
                // PT_WRITE_D then PT_READ_D of the same word (any alignment, maybe straddling pages).
                for (int i = 0; i < 8; i++)
                {
                    int at = rng.Next(TargetBytes - sizeof(ulong) + 1);
                    ulong value = (ulong)rng.NextInt64();
                    Require(ptrace.PokeWord(target, TargetBase + (ulong)at, value), $"poke at +0x{at:x}");
                    BinaryPrimitives.WriteUInt64LittleEndian(targetReference.AsSpan(at), value);
                    Require(ptrace.PeekWord(target, TargetBase + (ulong)at, out ulong peeked), $"peek at +0x{at:x}");
                    Check(peeked == value, $"peek at +0x{at:x} gave 0x{peeked:x}, poked 0x{value:x}");
                }

                // PT_IO: a bulk write, then a bulk read of another range, against the reference.
                int length = rng.Next(1, TracerBytes + 1);
                int offset = rng.Next(TargetBytes - length + 1);
                rng.NextBytes(back.AsSpan(0, length));
                Require(machine.CurrentCpu.CopyOut(back.AsSpan(0, length), UserBuffer), "copyout");
                Require(ptrace.WriteMemory(target, TargetBase + (ulong)offset, UserBuffer, length, out long wrote), "PIOD_WRITE_D");
                Check(wrote == length, $"PIOD_WRITE_D moved {wrote} of {length}");
                back.AsSpan(0, length).CopyTo(targetReference.AsSpan(offset));

                length = rng.Next(1, TracerBytes + 1);
                offset = rng.Next(TargetBytes - length + 1);
                Require(ptrace.ReadMemory(target, TargetBase + (ulong)offset, UserBuffer, length, out long read), "PIOD_READ_D");
                Check(read == length, $"PIOD_READ_D moved {read} of {length}");
                Require(machine.CurrentCpu.CopyIn(UserBuffer, back.AsSpan(0, length)), "copyin");
                int same = back.AsSpan(0, length).CommonPrefixLength(targetReference.AsSpan(offset, length));
                Check(same == length, $"PIOD_READ_D at +0x{offset:x}: byte +0x{offset + same:x} differs from what was written");
                w.Count();
                KernelThread.Current.Yield();
            }
        });

        // ---------------------------------------------------------------- vnode reader
        long vnodeEvicted = 0;
        var vnodeReader = stress.Spawn("vnode-reader", vnodeSpace, w =>
        {
            var rng = new Random(5);
            var back = new byte[VnodeFileBytes];
            for (int pass = 0; stress.Going; pass++)
            {
                // Alternately into a user and a kernel buffer, from a random offset in the first page.
                bool user = pass % 2 == 0;
                ulong buffer = user ? UserBuffer : vnodeKernelBuffer;
                int start = rng.Next(Pte.PageSize);
                int length = VnodeFileBytes - start;
                machine.CurrentCpu.Fill(buffer, length, 0xEE);
                var uio = new Uio(buffer, length, user ? UioSegment.UserSpace : UioSegment.SystemSpace, UioDirection.Read, start);
                Require(VnodePager.Read(kernel, vnodeFile, uio), "vn_read");

                Check(uio.Resid == 0, $"vn_read left {uio.Resid} of {length} bytes");
                if (user)
                {
                    Require(machine.CurrentCpu.CopyIn(UserBuffer, back.AsSpan(0, length)), "copyin");
                }
                else
                {
                    machine.CurrentCpu.Read(vnodeKernelBuffer, back.AsSpan(0, length));
                }

                int same = back.AsSpan(0, length).CommonPrefixLength(vnodeBytes.AsSpan(start, length));
                Check(same == length, $"vn_read from {start} into a {(user ? "user" : "kernel")} buffer: byte {start + same} differs from the file");

                // Nobody else reads this file: every page is unwired now, so the next pass pages all in.
                vnodeEvicted += VnodePager.Evict(kernel, vnodeFile);
                w.Count();
                KernelThread.Current.Yield();
            }
        });

        // ---------------------------------------------------------------- join
        var workers = new[] { pipeWriter, pipeReader, mdWorker, sendfile, exec, ptraceWorker, vnodeReader }.OfType<Worker>().ToArray();
        var threads = workers.Select(w => w.Thread).Append(nic.Thread).ToArray();
        var joinDeadline = DateTime.UtcNow + duration + s_joinGrace;
        foreach (var td in threads)
        {
            try
            {
                var left = joinDeadline - DateTime.UtcNow;
                td.Join(left > TimeSpan.Zero ? left : TimeSpan.Zero);
            }
            catch (TimeoutException)
            {
                // Reported below with every thread still alive.
            }
            catch (Exception ex)
            {
                stress.Fail($"{td.Name}: {ex}");
            }
        }

        clock.Stop();
        var d = machine.Counters() - before;
        var stats = kernel.SfBufs.Stats();
        var summary = Summary(machine, kernel, workers, nic, stats, d, clock.Elapsed, duration);
        summary.Add($"pipe        {pipeWritten:#,0} bytes written, {pipeRead:#,0} read; {pipe.DirectWrites:#,0} direct and {pipe.BufferedWrites:#,0} buffered writes");
        summary.Add($"sendfile    {sendfilePasses:#,0} passes of {SendfileBytes >> 10} KiB; NIC {nic.Packets:#,0} packets, {nic.Bytes:#,0} bytes");
        summary.Add($"vnode       {vnodeEvicted:#,0} pages evicted between passes; page-ins (all files) {kernel.PagesIn:#,0}");
        if (!haveTrue)
        {
            summary.Add($"exec        skipped: {HostTrue} does not exist on this host");
        }

        foreach (string line in summary)
        {
            TestContext.Out.WriteLine(line);
        }

        var live = machine.LiveThreads();
        Assert.That(
            live.Select(Describe),
            Is.Empty,
            $"deadlock: {live.Count} kernel thread(s) still alive {s_joinGrace.TotalSeconds:0} s after the deadline "
            + $"(sf_bufs in use {stats.NsfbufsUsed}/{stats.Nsfbufs}, kernel_map free {machine.KernelMap.FreePages}, "
            + $"socket {so.SendBufferBytes} bytes queued); failures so far: {string.Join(" | ", stress.Failures)}");

        Assert.That(stress.Failures, Is.Empty, "every worker ran without an error");
        Assert.That(d[Counter.StaleAccesses], Is.Zero, "no stale translation was used");
        Assert.That(machine.Counters()[Counter.StaleAccesses], Is.Zero);
        foreach (var w in workers)
        {
            Assert.That(w.Operations, Is.GreaterThanOrEqualTo(MinOperations), $"{w.Name} made progress");
        }

        Assert.That(d[Counter.Migrations], Is.GreaterThan(0), "the unbound workers migrated");

        // Checksums.
        Assert.That(pipeRead, Is.EqualTo(pipeWritten), "every byte written to the pipe was read");
        Assert.That(readHash.GetHashAndReset(), Is.EqualTo(writtenHash.GetHashAndReset()), "SHA-256 of the pipe's bytes read equals that of the bytes written");
        Assert.That(pipe.DirectWrites, Is.GreaterThan(1), "direct pipe writes");
        Assert.That(pipe.BufferedWrites, Is.GreaterThan(0), "buffered pipe writes");
        Assert.That(nic.Bytes, Is.EqualTo(sendfilePasses * SendfileBytes), "the NIC transmitted every pass");
        using (var expected = IncrementalHash.CreateHash(HashAlgorithmName.SHA256))
        {
            for (long i = 0; i < sendfilePasses; i++)
            {
                expected.AppendData(sendfileBytes);
            }

            Assert.That(nic.Sha256, Is.EqualTo(expected.GetHashAndReset()), "SHA-256 of what the NIC read equals the file's bytes, pass after pass");
        }

        Assert.That(vnodeEvicted, Is.GreaterThan(0), "the vnode reader's pages were evicted and paged in again");
        Assert.That(ReadAsProcess(machine, target), Is.EqualTo(targetReference), "the target's memory, read by the target itself, is what ptrace wrote");

        // Nothing left behind.
        Assert.That(stats.NsfbufsUsed, Is.Zero, "no sf_buf is left in use");
        Assert.That(so.SendBufferBytes, Is.Zero, "the socket drained");
        int sendfileResident = sendfileFile.ResidentPages, sendfileFreed = -1;
        machine.Run(0, () =>
        {
            sendfileFreed = VnodePager.Evict(kernel, sendfileFile);
            md.Destroy();
            ptrace.Destroy();
            machine.KernelMemory.Free(mdWrite, MaxBio);
            machine.KernelMemory.Free(mdRead, MaxBio);
            machine.KernelMemory.Free(vnodeKernelBuffer, VnodeFileBytes);
        });
        Assert.That(sendfileFreed, Is.EqualTo(sendfileResident), "sf_buf_mext unwired every page sendfile sent");

        var info = SfBufMapper.Describe(_strategy);
        if (info.HasPool && info.PoolSizeIsParameter)
        {
            Assert.That(stats.NsfbufsPeak, Is.LessThanOrEqualTo(Pool));
        }

        if (info.IsMappingCache)
        {
            Assert.That(stats.Recycles, Is.GreaterThan(0), "the working set does not fit: cached mappings were recycled");
        }

        if (info.MapsPerUse)
        {
            Assert.That(stats.AllocWait, Is.GreaterThan(0), "sendfile's pool ran dry and allocations slept (sf_allocwait)");
            Assert.That(
                machine.KernelMap.FreePages,
                Is.EqualTo(KernelMapPages - SimKernel.ExecMapPages - SimKernel.PagerMapPages - Pool),
                "all per-use KVA and the destroyed pipe's window went back to kernel_map");
        }

        if (info.NeedsDirectMap)
        {
            Assert.That(d[Counter.KernelPteWrites], Is.Zero, "the direct map writes no kernel PTE");
        }

        if (info.PrivateMapCounters.Count > 0)
        {
            Assert.That(info.PrivateMapCounters.Sum(c => stats.Details[c]), Is.GreaterThan(0), "private users used the per-CPU slots");
        }

        // The mechanisms' own counters, wherever a strategy publishes them.
        if (stats.Details.TryGetValue("emap.consume_flushes", out long consumeFlushes))
        {
            Assert.That(consumeFlushes, Is.GreaterThan(0), "consumers flushed when behind");
        }

        if (stats.Details.TryGetValue("lwbuf.objects", out long lwbufs))
        {
            Assert.That(lwbufs, Is.LessThanOrEqualTo(machine.KernelMap.Region.Pages), "each lwbuf object holds a page of kernel_map");
            Assert.That(stats.Details["lwbuf.set_global_syncs"], Is.LessThanOrEqualTo(stats.Details["lwbuf.shared_allocs"]), "at most one cross-CPU invalidation per shared allocation");
        }

        if (stats.Details.TryGetValue("pkmap.global_flushes", out long flushes))
        {
            Assert.That(stats.NsfbufsPeak, Is.LessThanOrEqualTo(stats.Nsfbufs));
            Assert.That(flushes, Is.LessThanOrEqualTo(stats.Details["pkmap.wraps"]), "at most one global flush per wrap of the clock hand");
        }

        if (stats.Details.TryGetValue("kmap_local.saves", out long saves))
        {
            Assert.That(stats.Details["kmap_local.restores"], Is.EqualTo(saves), "every map saved at a switch-out was restored at the switch-in");
        }

        return new Outcome(stats, d);
    }

    /// <summary>What a run left: the mapper's statistics and the machine's counts.</summary>
    internal sealed record Outcome(SfBufStats Stats, CounterSnapshot Counts);

    private List<string> Summary(SimMachine machine, SimKernel kernel, Worker[] workers, Nic nic, SfBufStats stats, CounterSnapshot d, TimeSpan elapsed, TimeSpan duration)
    {
        var lines = new List<string>
        {
            $"{_strategy}: {machine.Options.Cpus} CPUs, {duration.TotalSeconds:0.#} s of stress, {elapsed.TotalSeconds:0.0} s until every thread had ended",
        };
        foreach (var w in workers)
        {
            lines.Add($"  {w.Name,-13} {w.Operations,10:#,0} operations");
        }

        lines.Add($"  {"nic",-13} {nic.Packets,10:#,0} packets (bound to cpu {nic.Cpu})");
        lines.Add($"sf_buf      nsfbufs {stats.Nsfbufs}, peak {stats.NsfbufsPeak}, in use {stats.NsfbufsUsed}; hits {stats.Hits:#,0}, misses {stats.Misses:#,0}, recycles {stats.Recycles:#,0}; allocwait {stats.AllocWait:#,0}, allocfail {stats.AllocFail:#,0}");
        if (kernel.IsOriginal)
        {
            lines.Add($"kernel_map  {machine.KernelMap.Region.Pages} pages, {machine.KernelMap.FreePages} free; waits {machine.KernelMap.Waits:#,0} (exec_map {kernel.ExecMap.Waits:#,0}, pager_map {kernel.PagerMap.Waits:#,0})");
        }

        lines.Add($"machine     migrations {d[Counter.Migrations]:#,0}, context switches {d[Counter.ContextSwitches]:#,0}, shootdown rounds {d[Counter.ShootdownRounds]:#,0}, IPIs {d[Counter.IpisSent]:#,0}, kernel PTE writes {d[Counter.KernelPteWrites]:#,0}, sleeps {d[Counter.Sleeps]:#,0}, stale accesses {d[Counter.StaleAccesses]}");
        return lines;
    }

    /// <summary>Pages the whole file in, dropping the wirings at once.</summary>
    private static void WarmPageCache(SimKernel kernel, Vnode file)
    {
        for (long i = 0; i < file.Pages; i++)
        {
            Require(VnodePager.GetPage(kernel, file, i, out var page), $"page in {file.Name} page {i}");
            kernel.Machine.Physical.Unwire(page);
        }
    }

    private static void WaitUntil(Func<bool> condition, string what, TimeSpan patience)
    {
        if (!SpinWait.SpinUntil(condition, patience))
        {
            throw new TimeoutException($"timed out waiting until {what}");
        }
    }

    private static TimeSpan StressDuration(double defaultSeconds)
    {
        string? text = Environment.GetEnvironmentVariable("SFBUF_STRESS_SECONDS");
        return double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) && seconds > 0
            ? TimeSpan.FromSeconds(seconds)
            : TimeSpan.FromSeconds(defaultSeconds);
    }

    /// <summary>The target's bytes read by a thread running in the target (copyin).</summary>
    private static byte[] ReadAsProcess(SimMachine machine, VmSpace space)
    {
        var bytes = new byte[TargetBytes];
        machine.Run(0, () => Require(machine.CurrentCpu.CopyIn(TargetBase, bytes), "read the target as the target"), space);
        return bytes;
    }

    /// <summary>A live thread and what it waits for, as far as the machine can tell.</summary>
    private static string Describe(KernelThread td)
    {
        string waiting = td.SleepChannel switch
        {
            null when td.Cpu != null => $"running on cpu {td.Cpu.Id}",
            null => "waiting for a CPU or blocked on a kernel mutex",
            KvaArena arena => $"asleep on {arena.Region.Name} (free pages {arena.FreePages})",
            KernelThread other => $"asleep joining {other}",
            var channel when channel.GetType() == typeof(object) => "asleep on an anonymous channel (sfbuf-i386's free list is one)",
            var channel => $"asleep on a {channel.GetType().Name}",
        };
        return $"{td}: {waiting}; last cpu {td.LastCpu}, pinned {td.PinCount}, bound {td.BoundCpu}";
    }

    private static void Require(int error, string what)
    {
        if (error != Errno.OK)
        {
            throw new InvalidOperationException($"{what}: errno {error}");
        }
    }

    private static void Check(bool condition, string what)
    {
        if (!condition)
        {
            throw new InvalidOperationException(what);
        }
    }

    /// <summary>The shared state of one run: the deadline, the failures, and the workers' threads.</summary>
    private sealed class StressRun
    {
        private readonly SimMachine _machine;
        private readonly TimeSpan _duration;
        private readonly ConcurrentQueue<string> _failures = new();
        private long _deadline = long.MaxValue;
        private volatile bool _failed;

        public StressRun(SimMachine machine, TimeSpan duration)
        {
            _machine = machine;
            _duration = duration;
        }

        /// <summary>True until the deadline, or until a worker has failed (then everyone winds down).</summary>
        public bool Going => !_failed && Stopwatch.GetTimestamp() < Volatile.Read(ref _deadline);

        public IReadOnlyCollection<string> Failures => _failures;

        public void Start() => Volatile.Write(ref _deadline, Stopwatch.GetTimestamp() + (long)(_duration.TotalSeconds * Stopwatch.Frequency));

        public void Fail(string what)
        {
            _failures.Enqueue(what);
            _failed = true;
        }

        /// <summary>Starts an unbound kernel thread running <paramref name="body"/>; what it throws is recorded as a failure.</summary>
        public Worker Spawn(string name, VmSpace? space, Action<Worker> body)
        {
            var worker = new Worker(name);
            worker.Thread = _machine.StartThread(name, () =>
            {
                try
                {
                    body(worker);
                }
                catch (Exception ex)
                {
                    Fail($"{name}: {ex}");
                }
            }, vmspace: space);
            return worker;
        }
    }

    /// <summary>A worker thread and the operations it completed.</summary>
    private sealed class Worker
    {
        private long _operations;

        public Worker(string name) => Name = name;

        public string Name { get; }

        public KernelThread Thread { get; set; } = null!;

        public long Operations => Interlocked.Read(ref _operations);

        public void Count() => Interlocked.Increment(ref _operations);
    }
}

/// <summary>
/// What one strategy's own algorithm does under <see cref="AllSubsystemsStressTests"/>, beyond what
/// the registry declares: each test names the strategy it is about and reads the same run.
/// </summary>
[TestFixture]
[NonParallelizable]
[Category("Stress")]
public sealed class AllSubsystemsStressMechanismTests
{
    /// <summary>sfbuf-i386's pool of 48 ran dry under every subsystem at once, and allocations slept (<c>sf_allocwait</c>).</summary>
    [TestCase(SfBufMapper.I386)]
    public void SfBufI386AllocationsSleptForThePool(string strategy) =>
        Assert.That(AllSubsystemsStressTests.RunOnce(strategy).Stats.AllocWait, Is.GreaterThan(0), "the pool ran dry and allocations slept (sf_allocwait)");
}
