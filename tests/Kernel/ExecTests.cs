using System.Buffers.Binary;
using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Native.PageTable;
using Native.SfBufNative.Kernel;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Kernel;

[TestFixtureSource(typeof(StrategyFixture), nameof(StrategyFixture.StrategiesAndCpus))]
[NonParallelizable]
public sealed partial class ExecTests(string strategy, int cpus) : StrategyFixture(strategy, cpus)
{
    private const ulong MarkerVa = 0x1000_0000;
    private const string HostTrue = "/bin/true";

    private static readonly byte[] s_marker = Encoding.ASCII.GetBytes("the calling process, before execve");

    public static IEnumerable<string> HostBinaries() => [HostTrue, "/bin/ls", "/usr/bin/env"];

    public static IEnumerable<string> MalformedNames() => s_malformed.Keys;

    [TestCaseSource(nameof(HostBinaries))]
    public void ExecOfAHostBinaryMatchesReadelfAndLoadsItsBytes(string path)
    {
        var elf = ReadElf(RequireHostFile(path));
        byte[] file = File.ReadAllBytes(path);
        ulong bias = elf.Type == "DYN" ? Exec.PieBase : 0;
        var layout = Layout(elf.Loads, bias);

        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        kernel.FileSystem.AddHostFile(path, path);
        var run = ExecIn(machine, kernel, path, newCaller: true, layout.Pages);

        Assert.That(run.Error, Is.EqualTo(Errno.OK), run.Reason);
        var result = run.Result!;
        Assert.That(result.ElfEntry, Is.EqualTo(elf.Entry), "e_entry as readelf prints it");
        Assert.That(result.Entry, Is.EqualTo(bias + elf.Entry), "the entry point relocated by the load bias");
        Assert.That(result.LoadBias, Is.EqualTo(bias));
        Assert.That(result.ProgramHeaders, Is.EqualTo(elf.ProgramHeaders), "readelf: number of program headers");
        Assert.That(result.LoadSegments, Is.EqualTo(elf.Loads.Count), "readelf: LOAD lines");
        Assert.That(run.SpaceAfter, Is.SameAs(result.VmSpace), "the thread runs in the new address space");
        Assert.That(run.Caller!.ResidentPages, Is.Zero, "the old address space was destroyed");

        // The bytes at the loaded entry point are the file's bytes at the entry's file offset.
        var text = elf.Loads.Single(l => elf.Entry >= l.VirtAddr && elf.Entry < l.VirtAddr + l.FileSize);
        long entryOffset = (long)(text.Offset + (elf.Entry - text.VirtAddr));
        Assert.That(run.EntryBytes, Is.EqualTo(file.AsSpan((int)entryOffset, run.EntryBytes!.Length).ToArray()));

        // Every mapped page: the file page where one is mapped, the .bss page's fragment and zeroes.
        var expected = ExpectedImage(elf.Loads, bias, file);
        foreach (var (va, bytes) in expected)
        {
            Assert.That(run.Image![va], Is.EqualTo(bytes), $"user page 0x{va:x}");
        }

        Assert.That(result.MappedPages, Is.EqualTo(layout.Pages.Count + Exec.StackPages));
        Assert.That(result.SharedPages, Is.EqualTo(layout.Shared.Count), "file pages are mapped from the page cache, not copied");
        Assert.That(result.FragmentCopies, Is.EqualTo(layout.Fragments));
        Assert.That(result.VmSpace.SharedPages, Is.EqualTo(layout.Shared.Count));
        Assert.That(run.PagesIn, Is.EqualTo(layout.FilePages), "a cold page cache reads each needed file page once");
        AssertCounts(run, layout.Fragments, firstPageMapped: true);
    }

    [Test]
    public void FilePagesAreSharedWithThePageCacheAndCopiedOnWrite()
    {
        var elf = ReadElf(RequireHostFile(HostTrue));
        var layout = Layout(elf.Loads, Exec.PieBase);
        ulong text = layout.Shared.Keys.Min();
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        var vnode = kernel.FileSystem.AddHostFile(HostTrue, HostTrue);
        machine.Run(0, () =>
        {
            Assert.That(Exec.Execve(kernel, HostTrue, out var result), Is.EqualTo(Errno.OK));
            var space = result!.VmSpace;
            var cached = space.Pmap.Extract(text)!.Value;
            Assert.That(VnodePager.GetPage(kernel, vnode, (long)((text - Exec.PieBase) >> Pte.PageShift), out var page), Is.EqualTo(Errno.OK));
            Assert.That(cached, Is.EqualTo(page), "the image maps the page-cache page itself");
            machine.Physical.Unwire(page);
            Assert.That(space.Pmap.ReadPte(text) & Pte.PG_RW, Is.Zero, "shared file pages are mapped read-only");

            // A debugger's write (PT_WRITE_D) copies the page for this process; the cache keeps its bytes.
            var original = machine.Physical.PhysicalBytes(cached).ToArray();
            var tracer = Ptrace.Create(kernel);
            Assert.That(tracer.PokeWord(space, text, 0xdead_beef_0bad_f00d), Is.EqualTo(Errno.OK));
            Assert.That(space.Pmap.Extract(text), Is.Not.EqualTo(cached), "the write went to a private copy");
            Assert.That(machine.Physical.PhysicalBytes(cached).ToArray(), Is.EqualTo(original), "the page cache is untouched");
            Assert.That(tracer.PeekWord(space, text, out ulong back), Is.EqualTo(Errno.OK));
            Assert.That(back, Is.EqualTo(0xdead_beef_0bad_f00dUL));
        });
    }

    [Test]
    public void SecondExecOfTheSameFileHitsThePageCache()
    {
        var elf = ReadElf(RequireHostFile(HostTrue));
        var layout = Layout(elf.Loads, Exec.PieBase);
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        kernel.FileSystem.AddHostFile(HostTrue, HostTrue);
        ExecRun first = null!;
        ExecRun second = null!;
        machine.Run(0, () =>
        {
            first = ExecOnCurrentThread(machine, kernel, HostTrue, layout.Pages);
            second = ExecOnCurrentThread(machine, kernel, HostTrue, layout.Pages);
        });

        Assert.That(first.Error, Is.EqualTo(Errno.OK), first.Reason);
        Assert.That(second.Error, Is.EqualTo(Errno.OK), second.Reason);
        Assert.That(second.PagesIn, Is.Zero, "every page comes from the page cache");
        Assert.That(first.Result!.VmSpace.ResidentPages, Is.Zero, "the first image was destroyed by the second exec");
        Assert.That(second.SpaceAfter, Is.SameAs(second.Result!.VmSpace));
        Assert.That(second.Image, Is.EqualTo(first.Image), "the same bytes are loaded again");
        AssertCounts(second, layout.Fragments, firstPageMapped: true);
    }

    [Test]
    public void ExecFromAThreadWithoutAnAddressSpaceGivesItOne()
    {
        var elf = ReadElf(RequireHostFile(HostTrue));
        byte[] file = File.ReadAllBytes(HostTrue);
        var layout = Layout(elf.Loads, Exec.PieBase);
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        kernel.FileSystem.AddHostFile(HostTrue, HostTrue);
        var run = ExecIn(machine, kernel, HostTrue, newCaller: false, layout.Pages);

        Assert.That(run.Error, Is.EqualTo(Errno.OK), run.Reason);
        Assert.That(run.SpaceBefore, Is.Null);
        Assert.That(run.SpaceAfter, Is.SameAs(run.Result!.VmSpace));
        Assert.That(run.Image, Is.EqualTo(ExpectedImage(elf.Loads, Exec.PieBase, file)));
        AssertCounts(run, layout.Fragments, firstPageMapped: true);
    }

    [Test]
    public void EtExecImageIsLoadedAtItsLinkAddresses()
    {
        byte[] file = File.ReadAllBytes(RequireHostFile(HostTrue));

        // /bin/true relinked by hand: ET_EXEC, every PT_LOAD and the entry moved up by 4 MiB.
        const ulong linkBase = 0x0040_0000;
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(16), ElfImage.ET_EXEC);
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(24), BinaryPrimitives.ReadUInt64LittleEndian(file.AsSpan(24)) + linkBase);
        foreach (int i in LoadIndexes(file))
        {
            var p = Phdr(file, i);
            BinaryPrimitives.WriteUInt64LittleEndian(p[16..], BinaryPrimitives.ReadUInt64LittleEndian(p[16..]) + linkBase);
            BinaryPrimitives.WriteUInt64LittleEndian(p[24..], BinaryPrimitives.ReadUInt64LittleEndian(p[24..]) + linkBase);
        }

        var loads = LoadsOf(file);
        var layout = Layout(loads, 0);
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        kernel.FileSystem.AddFile("/static", file);
        var run = ExecIn(machine, kernel, "/static", newCaller: true, layout.Pages);

        Assert.That(run.Error, Is.EqualTo(Errno.OK), run.Reason);
        ulong entry = BinaryPrimitives.ReadUInt64LittleEndian(file.AsSpan(24));
        Assert.That(run.Result!.LoadBias, Is.Zero);
        Assert.That(run.Result.Entry, Is.EqualTo(entry));
        Assert.That(run.Result.ElfEntry, Is.EqualTo(entry));
        Assert.That(run.Image, Is.EqualTo(ExpectedImage(loads, 0, file)));
        AssertCounts(run, layout.Fragments, firstPageMapped: true);
    }

    [TestCaseSource(nameof(MalformedNames))]
    public void MalformedImageIsEnoexecAndLeavesTheCallerUnchanged(string name)
    {
        var (edit, because) = s_malformed[name];
        byte[] file = edit(File.ReadAllBytes(RequireHostFile(HostTrue)));
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        kernel.FileSystem.AddFile("/bad", file);
        var run = ExecIn(machine, kernel, "/bad", newCaller: true, []);

        Assert.That(run.Error, Is.EqualTo(Errno.ENOEXEC), run.Reason);
        Assert.That(run.Reason, Does.Contain(because));
        AssertCallerUnchanged(run);
        Assert.That(run.Counts[Counter.UserPteWrites], Is.Zero, "no address space was built");
        AssertCounts(run, fragments: 0, firstPageMapped: file.Length > 0);
    }

    [Test]
    public void ImageLargerThanMemoryIsEnomemAndLeavesTheCallerUnchanged()
    {
        byte[] file = File.ReadAllBytes(RequireHostFile(HostTrue));
        var p = Phdr(file, LoadIndexes(file).Last());
        BinaryPrimitives.WriteUInt64LittleEndian(p[40..], 1UL << 32); // p_memsz: 4 GiB of .bss
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        kernel.FileSystem.AddFile("/huge", file);
        var run = ExecIn(machine, kernel, "/huge", newCaller: true, []);

        Assert.That(run.Error, Is.EqualTo(Errno.ENOMEM), run.Reason);
        AssertCallerUnchanged(run);
        Assert.That(run.Counts[Counter.UserPteWrites], Is.Zero, "refused before any page was allocated");
        AssertCounts(run, fragments: 0, firstPageMapped: true);
    }

    [Test]
    public void ExecOfAMissingFileIsEnoent()
    {
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        var run = ExecIn(machine, kernel, "/no/such/file", newCaller: true, []);

        Assert.That(run.Error, Is.EqualTo(Errno.ENOENT));
        AssertCallerUnchanged(run);
        AssertCounts(run, fragments: 0, firstPageMapped: false);
    }

    [Test]
    public void ConcurrentExecsOnUnboundThreadsLoadTheRightBytes()
    {
        var elf = ReadElf(RequireHostFile(HostTrue));
        byte[] file = File.ReadAllBytes(HostTrue);
        var expected = ExpectedImage(elf.Loads, Exec.PieBase, file);
        using var machine = NewMachine();
        using var kernel = new SimKernel(machine, Strategy);
        kernel.FileSystem.AddHostFile(HostTrue, HostTrue);
        var before = machine.Counters();
        var runs = new List<ExecRun>[4];
        var threads = Enumerable.Range(0, runs.Length).Select(t =>
        {
            runs[t] = [];
            return machine.StartThread($"exec{t}", () =>
            {
                for (int i = 0; i < 3; i++)
                {
                    runs[t].Add(ExecOnCurrentThread(machine, kernel, HostTrue, expected.Keys));
                    KernelThread.Current.Yield(); // let another thread run here; maybe migrate
                }
            });
        }).ToArray();
        foreach (var td in threads)
        {
            td.Join();
        }

        var d = machine.Counters() - before;
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        foreach (var run in runs.SelectMany(r => r))
        {
            Assert.That(run.Error, Is.EqualTo(Errno.OK), run.Reason);
            Assert.That(run.Image, Is.EqualTo(expected));
        }

        if (Info.NeedsDirectMap)
        {
            Assert.That(d[Counter.KernelPteWrites], Is.Zero);
        }
    }

    // ------------------------------------------------------------------ expectations

    private void AssertCounts(ExecRun run, int fragments, bool firstPageMapped)
    {
        var d = run.Counts;
        long pagesIn = run.PagesIn;
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        if (run.Error == Errno.OK)
        {
            Assert.That(d[Counter.UserPteWrites], Is.EqualTo(run.Result!.MappedPages), "one user PTE per page of the new image and stack");
        }

        if (Cpus == 1)
        {
            Assert.That(d[Counter.ShootdownRounds], Is.Zero, "a uniprocessor has nobody to shoot down");
        }

        int headerMappings = firstPageMapped ? 1 : 0;
        if (Info.NeedsDirectMap)
        {
            Assert.That(d[Counter.KernelPteWrites], Is.Zero, "the direct map needs no kernel PTE");
            Assert.That(d[Counter.KernelPteClears], Is.Zero);
            Assert.That(d[Counter.ShootdownRounds], Is.Zero);
        }
        else if (Info.MapsPerUse)
        {
            // exec_map qenter of the header; pager_map kenter per page-in; an exec_map kenter
            // per partial page. Nothing else: file pages are mapped, not copied.
            Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(headerMappings + pagesIn + fragments));
            Assert.That(d[Counter.KernelPteClears], Is.EqualTo(headerMappings + pagesIn + fragments));
            Assert.That(d[Counter.Mappings], Is.EqualTo(headerMappings + pagesIn + fragments));
            if (Cpus > 1)
            {
                // qenter + qremove of the header (2), the global invalidation at unmap of each
                // pager_map page (1) and of each partial page (1).
                Assert.That(d[Counter.ShootdownRounds], Is.EqualTo((2 * headerMappings) + pagesIn + fragments));
            }
        }
        else if (Info.PrivateShootdowns == Native.SfBufNative.SfBufShootdowns.PerUserPage)
        {
            // XPFO immediate: a round for every user page allocated (the image, the stack, the
            // page cache) as well as for every user page's last unmap, private ones included.
            Assert.That(d[Counter.Mappings], Is.LessThanOrEqualTo(headerMappings + pagesIn + fragments));
        }
        else
        {
            // Shared mappings (the header, each page-in) send at most one round each; the
            // private partial-page mappings never send one.
            Assert.That(d[Counter.ShootdownRounds], Is.LessThanOrEqualTo(headerMappings + pagesIn));
            Assert.That(d[Counter.Mappings], Is.LessThanOrEqualTo(headerMappings + pagesIn + fragments));
        }

        if (Info.ShootdownsOnlyWhenRecycling && run.Recycles == 0)
        {
            // Mappings are valid everywhere when made: no invalidation is sent at map time.
            Assert.That(d[Counter.IpisSent], Is.Zero);
            Assert.That(d[Counter.ShootdownRounds], Is.Zero);
        }
    }

    private static void AssertCallerUnchanged(ExecRun run)
    {
        Assert.That(run.Result, Is.Null);
        Assert.That(run.SpaceAfter, Is.SameAs(run.Caller), "the thread still runs in the caller's address space");
        Assert.That(run.Caller!.ResidentPages, Is.EqualTo(1));
        Assert.That(run.MarkerAfter, Is.EqualTo(s_marker), "the caller's memory still holds its marker");
        Assert.That(run.FreePagesLost, Is.EqualTo(run.PagesIn), "only page-cache pages stay allocated: the half-built image is gone");
        Assert.That(run.Counts[Counter.StaleAccesses], Is.Zero);
    }

    /// <summary>
    /// What FreeBSD 5.x's <c>elf_load_section</c> does with these segments (the rule restated
    /// independently of the loader): the pages the image covers, the file pages it maps shared
    /// (va to file page), the partial pages it copies, and the file pages it reads (page 0 included).
    /// </summary>
    private static (HashSet<ulong> Pages, Dictionary<ulong, ulong> Shared, int Fragments, int FilePages) Layout(IReadOnlyList<LoadLine> loads, ulong bias)
    {
        var pages = new HashSet<ulong>();
        var shared = new Dictionary<ulong, ulong>();
        var filePages = new HashSet<ulong> { 0 };
        int fragments = 0;
        foreach (var l in loads.Where(l => l.MemSize > 0))
        {
            ulong start = bias + l.VirtAddr;
            for (ulong va = Trunc(start); va < start + l.MemSize; va += Pte.PageSize)
            {
                pages.Add(va);
            }

            ulong fileEnd = l.Offset + l.FileSize;
            ulong mapLen = (l.MemSize > l.FileSize ? Trunc(fileEnd) : Round(fileEnd)) - Trunc(l.Offset);
            for (ulong k = 0; k < mapLen; k += Pte.PageSize)
            {
                shared[Trunc(start) + k] = (Trunc(l.Offset) + k) >> Pte.PageShift;
                filePages.Add((Trunc(l.Offset) + k) >> Pte.PageShift);
            }

            if (l.MemSize > l.FileSize && fileEnd != Trunc(fileEnd))
            {
                fragments++;
                filePages.Add(fileEnd >> Pte.PageShift);
            }
        }

        return (pages, shared, fragments, filePages.Count);
    }

    private static Dictionary<ulong, byte[]> ExpectedImage(IReadOnlyList<LoadLine> loads, ulong bias, byte[] file)
    {
        var layout = Layout(loads, bias);
        var image = new Dictionary<ulong, byte[]>();
        foreach (var page in layout.Pages)
        {
            image[page] = new byte[Pte.PageSize];
        }

        // A shared page is the whole file page (zeroes past EOF), as the process sees the cache.
        foreach (var (va, filePage) in layout.Shared)
        {
            long at = (long)filePage << Pte.PageShift;
            file.AsSpan((int)at, (int)Math.Min(Pte.PageSize, file.Length - at)).CopyTo(image[va]);
        }

        // The .bss page starts with the file bytes of the partial page, then zeroes.
        foreach (var l in loads.Where(l => l.MemSize > l.FileSize))
        {
            ulong fileEnd = l.Offset + l.FileSize;
            int length = (int)(fileEnd - Trunc(fileEnd));
            file.AsSpan((int)Trunc(fileEnd), length).CopyTo(image[Trunc(bias + l.VirtAddr + l.FileSize)]);
        }

        return image;
    }

    private static ulong Trunc(ulong va) => va & ~Pte.PageMask;

    private static ulong Round(ulong va) => (va + Pte.PageMask) & ~Pte.PageMask;

    // ------------------------------------------------------------------ running an exec

    private SimMachine NewMachine() => new(new MachineOptions { Flavor = Info.FlavorOr(MachineFlavor.Amd64), Cpus = Cpus, PhysicalMemoryBytes = 64UL << 20 });

    /// <summary>Runs one exec on a thread bound to CPU 0, in a fresh caller process or in none.</summary>
    private static ExecRun ExecIn(SimMachine machine, SimKernel kernel, string path, bool newCaller, IEnumerable<ulong> imagePages)
    {
        ExecRun run = null!;
        machine.Run(0, () =>
        {
            VmSpace? caller = null;
            if (newCaller)
            {
                caller = machine.CreateVmSpace();
                KernelThread.Current.SwitchVmSpace(caller);
                caller.MapAnonymous(MarkerVa, Pte.PageSize);
                if (machine.CurrentCpu.CopyOut(s_marker, MarkerVa) != Errno.OK)
                {
                    throw new InvalidOperationException("cannot write the caller's marker");
                }
            }

            run = ExecOnCurrentThread(machine, kernel, path, imagePages);
            run.Caller = caller;
        });
        return run;
    }

    /// <summary>
    /// Execs on the calling kernel thread and records what happened: the counters and page-ins of
    /// the exec alone, then (outside the counted span) the new image's pages or the caller's marker.
    /// </summary>
    private static ExecRun ExecOnCurrentThread(SimMachine machine, SimKernel kernel, string path, IEnumerable<ulong> imagePages)
    {
        var td = KernelThread.Current;
        var run = new ExecRun { SpaceBefore = td.VmSpace };
        int freeBefore = machine.Physical.FreePages;
        long pagesInBefore = kernel.PagesIn;
        var before = machine.Counters();
        run.Error = Exec.Execve(kernel, path, out var result, out var reason);
        run.Counts = machine.Counters() - before;
        run.PagesIn = kernel.PagesIn - pagesInBefore;
        run.Recycles = kernel.SfBufs.Stats().Recycles;
        run.FreePagesLost = freeBefore - machine.Physical.FreePages;
        run.Result = result;
        run.Reason = reason;
        run.SpaceAfter = td.VmSpace;
        var cpu = machine.CurrentCpu;
        if (result != null)
        {
            run.Image = [];
            foreach (ulong va in imagePages)
            {
                var page = new byte[Pte.PageSize];
                Require(cpu.CopyIn(va, page), $"read image page 0x{va:x}");
                run.Image[va] = page;
            }

            run.EntryBytes = new byte[32];
            Require(cpu.CopyIn(result.Entry, run.EntryBytes), "read the entry point");
            var stack = new byte[Pte.PageSize];
            Require(cpu.CopyOut(stack, Exec.StackTop - Pte.PageSize), "write the stack");
        }
        else if (run.SpaceBefore != null)
        {
            run.MarkerAfter = new byte[s_marker.Length];
            Require(cpu.CopyIn(MarkerVa, run.MarkerAfter), "read the caller's marker");
        }

        return run;
    }

    private static void Require(int error, string what)
    {
        if (error != Errno.OK)
        {
            throw new InvalidOperationException($"{what}: errno {error}");
        }
    }

    // ------------------------------------------------------------------ malformed images

    /// <summary>Edits of /bin/true, each with a fragment of the reason the activator gives.</summary>
    private static readonly Dictionary<string, (Func<byte[], byte[]> Edit, string Because)> s_malformed = new()
    {
        ["bad magic"] = (b => Poke8(b, 1, (byte)'X'), "bad magic"),
        ["32-bit class"] = (b => Poke8(b, 4, 1), "ELFCLASS64"),
        ["big-endian"] = (b => Poke8(b, 5, 2), "ELFDATA2LSB"),
        ["bad ident version"] = (b => Poke8(b, 6, 0), "EV_CURRENT"),
        ["wrong machine (i386)"] = (b => Poke16(b, 18, 3), "EM_X86_64"),
        ["relocatable object"] = (b => Poke16(b, 16, ElfImage.ET_REL), "ET_EXEC and ET_DYN"),
        ["wrong e_phentsize"] = (b => Poke16(b, 54, 64), "e_phentsize"),
        ["truncated to 40 bytes"] = (b => b[..40], "smaller than the ELF header"),
        ["empty file"] = (_ => [], "empty file"),
        ["program headers outside the first page"] = (b => Poke64(b, 32, 4000), "not in the first page"),
        ["program headers past EOF"] = (b => b[..(ElfImage.EhdrSize + (3 * ElfImage.PhdrSize))], "program headers end at"),
        ["unaligned program headers"] = (b => Poke64(b, 32, 68), "unaligned"),
        ["no PT_LOAD"] = (b => EachLoad(b, p => BinaryPrimitives.WriteUInt32LittleEndian(p, ElfImage.PT_NULL)), "no PT_LOAD"),
        ["filesz > memsz"] = (b => LastLoad(b, p => BinaryPrimitives.WriteUInt64LittleEndian(p[40..], BinaryPrimitives.ReadUInt64LittleEndian(p[32..]) - 1)), "p_filesz"),
        ["segment bytes past EOF"] = (b => LastLoad(b, p =>
        {
            BinaryPrimitives.WriteUInt64LittleEndian(p[32..], (ulong)b.Length);
            BinaryPrimitives.WriteUInt64LittleEndian(p[40..], (ulong)b.Length);
        }), "run past EOF"),
        ["offset and vaddr disagree within a page"] = (b => LastLoad(b, p => BinaryPrimitives.WriteUInt64LittleEndian(p[16..], BinaryPrimitives.ReadUInt64LittleEndian(p[16..]) + 8)), "differ within a page"),
        ["ET_EXEC linked at address 0"] = (b => Poke16(b, 16, ElfImage.ET_EXEC), "outside user space"),
        ["segment beyond user space"] = (b => LastLoad(b, p => BinaryPrimitives.WriteUInt64LittleEndian(p[16..], VmLayout.UserMax + (BinaryPrimitives.ReadUInt64LittleEndian(p[16..]) & Pte.PageMask))), "outside user space"),
        ["segment running into the stack"] = (b => LastLoad(b, p => BinaryPrimitives.WriteUInt64LittleEndian(p[16..], Exec.StackBottom - Exec.PieBase - Pte.PageSize + (BinaryPrimitives.ReadUInt64LittleEndian(p[16..]) & Pte.PageMask))), "outside user space"),
        ["overlapping segments"] = (b => OnLoad(b, 1, p => BinaryPrimitives.WriteUInt64LittleEndian(p[16..], 0x1000)), "overlap"),
    };

    private static byte[] Poke8(byte[] b, int at, byte value)
    {
        b[at] = value;
        return b;
    }

    private static byte[] Poke16(byte[] b, int at, ushort value)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(at), value);
        return b;
    }

    private static byte[] Poke64(byte[] b, int at, ulong value)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(at), value);
        return b;
    }

    private delegate void PhdrEdit(Span<byte> phdr);

    private static byte[] EachLoad(byte[] b, PhdrEdit edit)
    {
        foreach (int i in LoadIndexes(b))
        {
            edit(Phdr(b, i));
        }

        return b;
    }

    private static byte[] LastLoad(byte[] b, PhdrEdit edit)
    {
        edit(Phdr(b, LoadIndexes(b).Last()));
        return b;
    }

    private static byte[] OnLoad(byte[] b, int n, PhdrEdit edit)
    {
        edit(Phdr(b, LoadIndexes(b)[n]));
        return b;
    }

    private static Span<byte> Phdr(byte[] b, int i) =>
        b.AsSpan((int)BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(32)) + (i * ElfImage.PhdrSize), ElfImage.PhdrSize);

    private static List<int> LoadIndexes(byte[] b) =>
        Enumerable.Range(0, BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(56)))
            .Where(i => BinaryPrimitives.ReadUInt32LittleEndian(Phdr(b, i)) == ElfImage.PT_LOAD)
            .ToList();

    /// <summary>The PT_LOAD headers of an edited image, read directly (not through the code under test).</summary>
    private static List<LoadLine> LoadsOf(byte[] b) =>
        LoadIndexes(b).Select(i =>
        {
            var p = Phdr(b, i);
            return new LoadLine(
                BinaryPrimitives.ReadUInt64LittleEndian(p[8..]),
                BinaryPrimitives.ReadUInt64LittleEndian(p[16..]),
                BinaryPrimitives.ReadUInt64LittleEndian(p[32..]),
                BinaryPrimitives.ReadUInt64LittleEndian(p[40..]));
        }).ToList();

    // ------------------------------------------------------------------ readelf

    private static string RequireHostFile(string path)
    {
        if (!File.Exists(path))
        {
            Assert.Ignore($"{path} does not exist on this host");
        }

        return path;
    }

    /// <summary>What <c>readelf -h -l -W</c> prints about <paramref name="path"/>.</summary>
    private static ReadElfInfo ReadElf(string path)
    {
        var start = new ProcessStartInfo("readelf")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in new[] { "-h", "-l", "-W", path })
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment["LC_ALL"] = "C";
        string output;
        try
        {
            using var process = Process.Start(start) ?? throw new InvalidOperationException("readelf did not start");
            var stderr = process.StandardError.ReadToEndAsync();
            output = process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            if (process.ExitCode != 0)
            {
                throw new InvalidOperationException($"readelf {path} failed ({process.ExitCode}): {stderr.Result}");
            }
        }
        catch (Win32Exception ex)
        {
            Assert.Ignore($"readelf (binutils) is not available: {ex.Message}");
            throw;
        }

        string type = TypeLine().Match(output).Groups[1].Value;
        ulong entry = ulong.Parse(EntryLine().Match(output).Groups[1].Value, NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        var count = ThereAreLine().Match(output);
        if (!count.Success)
        {
            count = NumberLine().Match(output);
        }

        var loads = LoadLineRegex().Matches(output).Select(m => new LoadLine(
            Hex(m.Groups[1].Value), Hex(m.Groups[2].Value), Hex(m.Groups[3].Value), Hex(m.Groups[4].Value))).ToList();
        if (type.Length == 0 || !count.Success || loads.Count == 0)
        {
            throw new InvalidOperationException($"cannot parse readelf's output for {path}:\n{output}");
        }

        return new ReadElfInfo(type, entry, int.Parse(count.Groups[1].Value, CultureInfo.InvariantCulture), loads);
    }

    private static ulong Hex(string digits) => ulong.Parse(digits, NumberStyles.HexNumber, CultureInfo.InvariantCulture);

    [GeneratedRegex(@"^\s*Type:\s+(\w+)", RegexOptions.Multiline)]
    private static partial Regex TypeLine();

    [GeneratedRegex(@"Entry point address:\s+0x([0-9a-fA-F]+)")]
    private static partial Regex EntryLine();

    [GeneratedRegex(@"There are (\d+) program headers")]
    private static partial Regex ThereAreLine();

    [GeneratedRegex(@"Number of program headers:\s+(\d+)")]
    private static partial Regex NumberLine();

    // Type Offset VirtAddr PhysAddr FileSiz MemSiz: captures Offset, VirtAddr, FileSiz, MemSiz.
    [GeneratedRegex(@"^\s*LOAD\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+0x[0-9a-fA-F]+\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)", RegexOptions.Multiline)]
    private static partial Regex LoadLineRegex();

    private sealed record ReadElfInfo(string Type, ulong Entry, int ProgramHeaders, IReadOnlyList<LoadLine> Loads);

    private readonly record struct LoadLine(ulong Offset, ulong VirtAddr, ulong FileSize, ulong MemSize);

    private sealed class ExecRun
    {
        public int Error { get; set; }

        public string? Reason { get; set; }

        public ExecResult? Result { get; set; }

        public CounterSnapshot Counts { get; set; } = null!;

        public long PagesIn { get; set; }

        /// <summary>The slots the kernel's sf_buf pool had recycled when the exec returned.</summary>
        public long Recycles { get; set; }

        public int FreePagesLost { get; set; }

        public VmSpace? Caller { get; set; }

        public VmSpace? SpaceBefore { get; set; }

        public VmSpace? SpaceAfter { get; set; }

        public byte[]? MarkerAfter { get; set; }

        public byte[]? EntryBytes { get; set; }

        public Dictionary<ulong, byte[]>? Image { get; set; }
    }
}
