using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Kernel;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Kernel;

[TestFixtureSource(typeof(StrategyFixture), nameof(StrategyFixture.StrategiesAndCpus))]
[NonParallelizable]
public sealed class VnodePagerTests(string strategy, int cpus) : StrategyFixture(strategy, cpus)
{
    private const ulong UserBuffer = 0x1000_0000;
    private const string HostLs = "/bin/ls";

    /// <summary>Five whole pages and a partial sixth.</summary>
    private const int GeneratedSize = (5 * Pte.PageSize) + 1234;

    private string _generated = null!;

    [OneTimeSetUp]
    public void CreateGeneratedFile()
    {
        _generated = Path.Combine(Path.GetTempPath(), $"vnodepager-{Guid.NewGuid():N}.bin");
        var bytes = new byte[GeneratedSize];
        new Random(20050410).NextBytes(bytes);
        File.WriteAllBytes(_generated, bytes);
    }

    [OneTimeTearDown]
    public void DeleteGeneratedFile() => File.Delete(_generated);

    [Test]
    public void ReadOfLsIntoAKernelBufferEqualsTheHostFileAndThenHitsThePageCache() =>
        ReadIntoKernelBuffer(RequireHostFile(HostLs));

    [Test]
    public void ReadOfAFileWithAPartialLastPageIntoAKernelBufferEqualsTheHostFile()
    {
        Assert.That(new FileInfo(_generated).Length % Pte.PageSize, Is.Not.Zero);
        ReadIntoKernelBuffer(_generated);
    }

    [Test]
    public void ReadFromMidFileIntoAUserBufferStopsAtEof()
    {
        byte[] host = File.ReadAllBytes(_generated);
        const int start = 1000;
        const byte untouched = 0xEE;
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        var vnode = kernel.FileSystem.AddHostFile("/generated", _generated);
        int error = -1;
        Uio uio = null!;
        byte[] back = new byte[host.Length];
        CounterSnapshot d = null!;
        long pagesIn = 0;
        var space = machine.CreateVmSpace();
        machine.Run(0, () =>
        {
            space.MapAnonymous(UserBuffer, host.Length);
            var cpu = machine.CurrentCpu;
            cpu.Fill(UserBuffer, host.Length, untouched);
            var before = machine.Counters();
            long pagesBefore = kernel.PagesIn;

            // Asks for more than is left: the read stops at EOF, short.
            uio = new Uio(UserBuffer, host.Length, UioSegment.UserSpace, UioDirection.Read, start);
            error = VnodePager.Read(kernel, vnode, uio);
            d = machine.Counters() - before;
            pagesIn = kernel.PagesIn - pagesBefore;
            if (cpu.CopyIn(UserBuffer, back) != Errno.OK)
            {
                throw new InvalidOperationException("cannot read the user buffer back");
            }
        }, space);

        Assert.That(error, Is.EqualTo(Errno.OK));
        Assert.That(uio.Resid, Is.EqualTo(start), "bytes past EOF are not moved");
        Assert.That(uio.Offset, Is.EqualTo(host.Length));
        Assert.That(back[..(host.Length - start)], Is.EqualTo(host[start..]));
        Assert.That(back[(host.Length - start)..], Is.All.EqualTo(untouched));
        Assert.That(pagesIn, Is.EqualTo(vnode.Pages));
        AssertReadCounts(d, pagesIn, chunks: vnode.Pages, kernel.SfBufs);
    }

    [Test]
    public void PartialLastPageIsZeroFilledBeyondEof()
    {
        byte[] host = File.ReadAllBytes(_generated);
        int tail = host.Length % Pte.PageSize;
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        var vnode = kernel.FileSystem.AddHostFile("/generated", _generated);
        var page = default(VmPage);
        int error = -1;
        int wired = 0;
        var seen = new byte[Pte.PageSize];
        var dirty = new HashSet<uint>();
        machine.Run(0, () =>
        {
            // Leave dirty frames at the head of the free queue, so the page-in gets one of them
            // and a missing zero-fill would show.
            var pages = Enumerable.Range(0, 8).Select(_ => machine.Physical.Alloc()).ToList();
            foreach (var p in pages)
            {
                machine.Physical.PhysicalBytes(p).Fill(0xA5);
                dirty.Add(p.Frame);
            }

            pages.ForEach(machine.Physical.Free);
            error = VnodePager.GetPage(kernel, vnode, vnode.Pages - 1, out page);
            wired = machine.Physical.WireCount(page);

            // Look at the page through a mapping, as kernel code would.
            var td = KernelThread.Current;
            td.SchedPin();
            var sf = kernel.SfBufs.Alloc(page, SfBufFlags.CpuPrivate);
            machine.CurrentCpu.Read(sf.Kva, seen);
            kernel.SfBufs.Free(sf);
            td.SchedUnpin();
            machine.Physical.Unwire(page);
        });

        Assert.That(error, Is.EqualTo(Errno.OK));
        if (!Info.BatchesUserAllocations)
        {
            // (A batching XPFO allocator gives user pages from the CPU's list, refilled before.)
            Assert.That(dirty, Does.Contain(page.Frame), "the page-in reused a dirty frame");
        }
        Assert.That(wired, Is.EqualTo(1), "GetPage returns the page wired for the caller");
        Assert.That(seen[..tail], Is.EqualTo(host[^tail..]));
        Assert.That(seen[tail..], Is.All.EqualTo((byte)0), "bytes past EOF are zero");
    }

    [Test]
    public void ReadAtOrPastEofMovesNothingAndSucceeds()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        var vnode = kernel.FileSystem.AddHostFile("/generated", _generated);
        var results = new List<(int Error, long Resid, long Offset)>();
        CounterSnapshot d = null!;
        machine.Run(0, () =>
        {
            ulong kva = machine.KernelMemory.Alloc(Pte.PageSize);
            var before = machine.Counters();
            foreach (long offset in new[] { vnode.Size, vnode.Size + 100, vnode.Size + (10L * Pte.PageSize) })
            {
                var uio = new Uio(kva, Pte.PageSize, UioSegment.SystemSpace, UioDirection.Read, offset);
                results.Add((VnodePager.Read(kernel, vnode, uio), uio.Resid, uio.Offset - offset));
            }

            d = machine.Counters() - before;
            machine.KernelMemory.Free(kva, Pte.PageSize);
        });

        Assert.That(results, Is.All.EqualTo((Errno.OK, (long)Pte.PageSize, 0L)));
        Assert.That(kernel.PagesIn, Is.Zero);
        Assert.That(vnode.ResidentPages, Is.Zero);
        Assert.That(d[Counter.KernelPteWrites], Is.Zero);
        Assert.That(d[Counter.ShootdownRounds], Is.Zero);
    }

    [Test]
    public void GetPagePastEofIsEinval()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        var vnode = kernel.FileSystem.AddHostFile("/generated", _generated);
        var empty = kernel.FileSystem.AddFile("/empty", []);
        var errors = new List<int>();
        int freeBefore = 0;
        int freeAfter = 0;
        machine.Run(0, () =>
        {
            freeBefore = machine.Physical.FreePages;
            errors.Add(VnodePager.GetPage(kernel, vnode, vnode.Pages, out _));
            errors.Add(VnodePager.GetPage(kernel, vnode, vnode.Pages + 10, out _));
            errors.Add(VnodePager.GetPage(kernel, vnode, -1, out _));
            errors.Add(VnodePager.GetPage(kernel, empty, 0, out _));
            freeAfter = machine.Physical.FreePages;
        });

        Assert.That(errors, Is.All.EqualTo(Errno.EINVAL));
        Assert.That(kernel.PagesIn, Is.Zero);
        Assert.That(freeAfter, Is.EqualTo(freeBefore), "no page was allocated");
    }

    // ------------------------------------------------------------------ helpers

    /// <summary>Reads the whole file twice into kmem: cold (page-ins), then warm (the page cache).</summary>
    private void ReadIntoKernelBuffer(string path)
    {
        byte[] host = File.ReadAllBytes(path);
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        var vnode = kernel.FileSystem.AddHostFile("/file", path);
        var passes = new List<ReadPass>();
        machine.Run(0, () =>
        {
            ulong kva = machine.KernelMemory.Alloc(host.Length);
            var cpu = machine.CurrentCpu;
            for (int pass = 0; pass < 2; pass++)
            {
                cpu.Fill(kva, host.Length, 0xEE);
                var before = machine.Counters();
                long pagesBefore = kernel.PagesIn;
                var uio = new Uio(kva, host.Length, UioSegment.SystemSpace, UioDirection.Read);
                int error = VnodePager.Read(kernel, vnode, uio);
                var d = machine.Counters() - before;
                long pagesIn = kernel.PagesIn - pagesBefore;
                var back = new byte[host.Length];
                cpu.Read(kva, back);
                passes.Add(new ReadPass(error, uio.Resid, back, d, pagesIn));
            }

            machine.KernelMemory.Free(kva, host.Length);
        });

        var (cold, warm) = (passes[0], passes[1]);
        Assert.That(cold.Error, Is.EqualTo(Errno.OK));
        Assert.That(cold.Resid, Is.Zero);
        Assert.That(cold.Bytes, Is.EqualTo(host), "the bytes read equal File.ReadAllBytes");
        Assert.That(cold.PagesIn, Is.EqualTo(vnode.Pages), "each page is read in once");
        AssertReadCounts(cold.Counts, cold.PagesIn, chunks: vnode.Pages, kernel.SfBufs);

        Assert.That(warm.Error, Is.EqualTo(Errno.OK));
        Assert.That(warm.Bytes, Is.EqualTo(host));
        Assert.That(warm.PagesIn, Is.Zero, "the second read hits the page cache");
        Assert.That(vnode.ResidentPages, Is.EqualTo(vnode.Pages));
        AssertReadCounts(warm.Counts, warm.PagesIn, chunks: vnode.Pages, kernel.SfBufs);
    }

    /// <summary>
    /// The counts of a <c>vn_read</c> that paged in <paramref name="pagesIn"/> pages and copied
    /// <paramref name="chunks"/> page-sized pieces with <c>uiomove_fromphys</c>.
    /// </summary>
    private void AssertReadCounts(CounterSnapshot d, long pagesIn, long chunks, SfBufMapper sfbufs)
    {
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        if (Cpus == 1)
        {
            Assert.That(d[Counter.ShootdownRounds], Is.Zero);
        }

        if (Info.NeedsDirectMap)
        {
            Assert.That(d[Counter.KernelPteWrites], Is.Zero, "the direct map needs no kernel PTE");
            Assert.That(d[Counter.ShootdownRounds], Is.Zero);
        }
        else if (Info.MapsPerUse)
        {
            // pager_map: pmap_kenter, pmap_kremove and one global invalidation per page-in;
            // the copy: a kernel_map page with pmap_qenter + pmap_qremove per piece.
            Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(pagesIn + chunks));
            Assert.That(d[Counter.KernelPteClears], Is.EqualTo(pagesIn + chunks));
            if (Cpus > 1)
            {
                Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(pagesIn + (2 * chunks)));
            }
        }
        else if (Info.PrivateShootdowns != Native.SfBufNative.SfBufShootdowns.PerUserPage)
        {
            // A shared mapping per page-in sends at most one round; the private copies none.
            // (XPFO immediate: a round per page-cache page allocated and per last unmap of one.)
            Assert.That(d[Counter.ShootdownRounds], Is.LessThanOrEqualTo(pagesIn));
        }

        if (Info.ShootdownsOnlyWhenRecycling && sfbufs.Stats().Recycles == 0)
        {
            Assert.That(d[Counter.IpisSent], Is.Zero, "a new mapping is valid on every CPU when made");
            Assert.That(d[Counter.ShootdownRounds], Is.Zero);
        }
    }

    private SimMachine NewMachine() => new(new MachineOptions { Flavor = Info.FlavorOr(MachineFlavor.Amd64), Cpus = Cpus, PhysicalMemoryBytes = 64UL << 20 });

    private static string RequireHostFile(string path)
    {
        if (!File.Exists(path))
        {
            Assert.Ignore($"{path} does not exist on this host");
        }

        return path;
    }

    private sealed record ReadPass(int Error, long Resid, byte[] Bytes, CounterSnapshot Counts, long PagesIn);
}
