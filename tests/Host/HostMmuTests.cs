using System.Runtime.InteropServices;
using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Kernel;
using Native.Tests.Machine;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Host;

/// <summary>
/// The host backend's machine-dependent layer on its own: remaps of a kernel page are coherent
/// across cores, every native resource is returned on dispose, and configurations it cannot
/// express are refused. Counts and orderings only, never times.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed unsafe class HostMmuTests
{
    private const int Words = Pte.PageSize / sizeof(ulong);

    /// <summary>
    /// One remap after another of one kernel page, each to a different frame, with the other core
    /// reading every word of the page through the remapped address after each remap: a missed
    /// invalidation would show the previous frame's words. A million remaps (64 s on a quiet
    /// 2-core host; 12 to 15 minutes on a loaded one, where every hand-off waits for both threads
    /// to be scheduled); <c>SFBUF_HOST_REMAPS=N</c> sets another count.
    /// </summary>
    [Test]
    public void RemapsOfASlotAreSeenExactlyByTheOtherCore()
    {
        HostGate.Require();
        int remaps = Remaps();
        const int frames = 64;
        using var m = new SimMachine(HostGate.Small());
        var pages = new VmPage[frames];
        for (int p = 0; p < frames; p++)
        {
            pages[p] = m.Physical.Alloc(AllocFlags.Wired);
            var words = MemoryMarshal.Cast<byte, ulong>(m.Physical.PhysicalBytes(pages[p]));
            for (int w = 0; w < Words; w++)
            {
                words[w] = Pattern(p, w);
            }
        }

        ulong slot = m.Layout.SfBufWindow.PageAddress(0);
        long published = 0, checkedUpTo = 0, mismatches = 0, checks = 0;
        var before = m.HostCounts();
        var reader = m.StartThread("checker", () =>
        {
            var cpu = m.CurrentCpu;
            Span<byte> buffer = stackalloc byte[Pte.PageSize];
            var words = MemoryMarshal.Cast<byte, ulong>(buffer);
            for (long seen = 0; seen < remaps;)
            {
                long i = Volatile.Read(ref published);
                if (i == seen)
                {
                    continue;
                }

                if (i == long.MaxValue)
                {
                    break; // the remapping side failed
                }

                cpu.Read(slot, buffer);
                int p = (int)(i % frames);
                for (int w = 0; w < Words; w++)
                {
                    if (words[w] != Pattern(p, w))
                    {
                        mismatches++;
                    }
                }

                checks++;
                seen = i;
                Volatile.Write(ref checkedUpTo, i);
            }
        }, cpu: 1, bound: true);
        try
        {
            m.Run(0, () =>
            {
                for (long i = 1; i <= remaps; i++)
                {
                    m.KernelPmap.KEnter(slot, pages[i % frames]);
                    Volatile.Write(ref published, i);
                    while (Volatile.Read(ref checkedUpTo) != i && !reader.HasExited)
                    {
                        Thread.SpinWait(1);
                    }
                }
            });
        }
        finally
        {
            if (Volatile.Read(ref checkedUpTo) != remaps)
            {
                Volatile.Write(ref published, long.MaxValue);
            }

            reader.Join(TimeSpan.FromMinutes(10));
        }

        var d = m.HostCounts() - before;

        Assert.That(checks, Is.EqualTo(remaps), "the other core checked after every remap");
        Assert.That(mismatches, Is.Zero, "a word read through the slot was not the word of the frame mapped there");
        Assert.That(d.Maps, Is.EqualTo(remaps), "one mmap(MAP_FIXED) per PTE write");
        if (d.RemoteFlushesSent >= 0)
        {
            // Every remap but the first replaced a translation the other core had just used.
            Assert.That(d.RemoteFlushesSent, Is.GreaterThanOrEqualTo(remaps - 1), "the host kernel flushed the other core's TLB at every remap");
            TestContext.Out.WriteLine($"{remaps} remaps: {d.RemoteFlushesSent} remote flushes sent, {d.RemoteFlushesReceived} received");
        }
    }

    [Test]
    public void DisposeReleasesTheMemoryFileAndEveryMapping()
    {
        HostGate.Require(cores: 1);
        var m = new SimMachine(HostGate.Small(cpus: 1));
        var host = m.Host!;
        int fd = host.MemoryFile;
        var (kernelStart, kernelBytes) = host.KernelRange;
        var (dmapStart, dmapBytes) = host.DirectMapRange;
        var page = m.Physical.Alloc(AllocFlags.Wired | AllocFlags.Zero);
        m.Run(0, () =>
        {
            ulong va = m.KernelMemory.Alloc(3 * Pte.PageSize); // kmem pages: three more mappings
            m.KernelPmap.KEnter(m.Layout.SfBufWindow.PageAddress(5), page);
            m.CurrentCpu.WriteUInt64(va, 42);
        });

        Assert.That(MemoryFileLink(fd), Does.Contain("sfbuf-physmem"), "the memfd is open while the machine lives");
        Assert.That(MappingsWithin(kernelStart, kernelBytes), Is.Not.Empty);
        Assert.That(MappingsWithin(dmapStart, dmapBytes), Is.Not.Empty);

        m.Dispose();

        Assert.That(MemoryFileLink(fd) ?? string.Empty, Does.Not.Contain("sfbuf-physmem"), "the memfd is closed");
        Assert.That(MappingsWithin(kernelStart, kernelBytes), Is.Empty, "no kernel page is still mapped or reserved");
        Assert.That(MappingsWithin(dmapStart, dmapBytes), Is.Empty, "the direct map is gone");
        Assert.That(File.ReadAllText("/proc/self/maps"), Does.Not.Contain("sfbuf-physmem"));
        Assert.That(m.NativeBytes, Is.Zero);
    }

    [Test]
    public void AnUnmappedKernelPageFaultsCleanlyAndARemoveLeavesNoHole()
    {
        HostGate.Require(cores: 1);
        using var m = new SimMachine(HostGate.Small(cpus: 1));
        var page = m.Physical.Alloc(AllocFlags.Wired | AllocFlags.Zero);
        ulong va = m.Layout.SfBufWindow.PageAddress(3);
        var (kernelStart, kernelBytes) = m.Host!.KernelRange;
        m.Run(0, () =>
        {
            Assert.Throws<PageFaultException>(() => m.CurrentCpu.ReadUInt64(va), "never mapped");
            m.KernelPmap.KEnter(va, page);
            m.CurrentCpu.WriteUInt64(va + 8, 7);
            m.KernelPmap.KRemove(va);
            Assert.Throws<PageFaultException>(() => m.CurrentCpu.ReadUInt64(va + 8), "unmapped again");
            ulong guard = m.Layout.SfBufWindow.End;
            Assert.Throws<PageFaultException>(() => m.CurrentCpu.ReadUInt64(guard), "the guard page");
        });

        Assert.That(MemoryMarshal.Read<ulong>(m.Physical.PhysicalBytes(page)[8..]), Is.EqualTo(7UL), "the write went to the frame");
        ulong covered = MappingsWithin(kernelStart, kernelBytes).Aggregate(0UL, (sum, r) => sum + (r.End - r.Start));
        Assert.That(covered, Is.EqualTo((ulong)kernelBytes), "the kernel range is mapped or reserved from end to end: no hole");
    }

    [Test]
    public void ARangeRemoveIsOneHostCallAndAccessedBitsAreKept()
    {
        HostGate.Require(cores: 1);
        using var m = new SimMachine(HostGate.Small(cpus: 1));
        var pages = Enumerable.Range(0, 4).Select(_ => m.Physical.Alloc(AllocFlags.Wired | AllocFlags.Zero)).ToArray();
        ulong va = m.Layout.KernelMap.Start;
        HostMmuCounts? afterEnter = null, afterRemove = null;
        ulong touched = 0, untouched = 0;
        m.Run(0, () =>
        {
            m.KernelPmap.QEnter(va, pages);
            afterEnter = m.HostCounts();
            m.CurrentCpu.ReadUInt64(va);
            touched = m.KernelPmap.ReadPte(va);
            untouched = m.KernelPmap.ReadPte(va + Pte.PageSize);
            m.KernelPmap.QRemove(va, pages.Length);
            afterRemove = m.HostCounts();
        });

        Assert.That(afterEnter!.Maps, Is.EqualTo(4));
        Assert.That(afterRemove!.Unmaps - afterEnter.Unmaps, Is.EqualTo(1), "pmap_qremove is one re-reservation");
        Assert.That(afterRemove.UnmappedPages - afterEnter.UnmappedPages, Is.EqualTo(4));
        Assert.That(touched & Pte.PG_A, Is.Not.Zero, "an access sets PG_A in the PTE word");
        Assert.That(untouched & Pte.PG_A, Is.Zero, "no access, no PG_A");
    }

    [Test]
    public void ShootdownsAreCountedAsRequestedButNothingIsPosted()
    {
        HostGate.Require();
        using var m = new SimMachine(HostGate.Small());
        var stop = new Flag();
        var idle = m.StartThread("bystander", () => Sim.SpinOnCpu(m, () => stop.IsSet, "stop"), cpu: 1, bound: true);
        CounterSnapshot? d = null;
        m.Run(0, () =>
        {
            var before = m.Counters();
            Assert.That(m.CurrentCpu.Shootdown(m.AllCpusMask, ShootdownKind.Page, m.Layout.SfBufWindow.Start), Is.EqualTo(1));
            m.KernelPmap.InvalidateRange(m.Layout.SfBufWindow.Start, 2);
            d = m.Counters() - before;
        });
        stop.Set();
        idle.Join(Sim.Patience);

        Assert.That(d![Counter.ShootdownRounds], Is.EqualTo(2), "the rounds the caller asked for");
        Assert.That(d[Counter.IpiTargets], Is.EqualTo(2));
        Assert.That(d[Counter.IpisSent], Is.Zero, "the host kernel does the shooting; no simulated IPI");
        Assert.That(d[Counter.IpisReceived], Is.Zero);
    }

    [Test]
    public void ConfigurationsTheHostCannotExpressAreRefused()
    {
        HostGate.Require(cores: 1);
        var tooMany = HostGate.Small(cpus: HostBackend.HostCores + 1);
        Assert.That(() => new SimMachine(tooMany), Throws.ArgumentException.With.Message.Contains("host core"));
        Assert.That(() => new SimMachine(HostGate.Small(cpus: 1) with { Cost = CostModel.Default }), Throws.ArgumentException.With.Message.Contains("twice"));
        Assert.That(() => new SimMachine(HostGate.Small(cpus: 1) with { PinThreads = false }), Throws.ArgumentException.With.Message.Contains("pins"));
        Assert.That(() => new SimMachine(HostGate.Small(cpus: 1) with { PhysicalMemoryBytes = 4096 }), Throws.InstanceOf<ArgumentOutOfRangeException>());
        var controlled = HostGate.Small(cpus: 1) with { Checked = true, Controlled = new ControlledScheduler(new RandomWalkStrategy(1), 100) };
        Assert.That(() => new SimMachine(controlled), Throws.ArgumentException.With.Message.Contains("controlled scheduling"));
    }

    [TestCaseSource(typeof(HostStrategyTests), nameof(HostStrategyTests.RefusedOnHost))]
    public void APeerWhoseMechanismTheHostCannotExpressIsRefusedWithItsReason(string strategy)
    {
        HostGate.Require();
        var reason = SfBufMapper.Describe(strategy).NotOnHost;
        Assert.That(reason, Is.Not.Null.And.Not.Empty);
        using var m = new SimMachine(HostGate.Small());
        var refused = Assert.Throws<NotSupportedException>(() => SfBufMapper.Create(strategy, m));
        Assert.That(refused!.Message, Does.Contain(strategy).And.Contain(reason!));
        Assert.Throws<NotSupportedException>(() => _ = new SimKernel(m, strategy));
        Assert.That(m.HostCounts().Remaps, Is.Zero, "a refused strategy changed no mapping");

        // The same strategy runs on the simulated backend: the refusal is the host's, not the strategy's.
        using var simulated = new SimMachine(new MachineOptions { Cpus = 2, PhysicalMemoryBytes = 16UL << 20, Flavor = SfBufMapper.Describe(strategy).FlavorOr(MachineFlavor.Amd64) });
        using var mapper = SfBufMapper.Create(strategy, simulated);
        Assert.That(mapper.Name, Is.EqualTo(strategy));
    }

    [Test]
    public void TheSimulatedBackendHasNoHostCounts()
    {
        using var m = new SimMachine(Sim.Small(1));
        Assert.That(m.Backend, Is.EqualTo(MachineBackend.Simulated));
        Assert.That(() => m.HostCounts(), Throws.InvalidOperationException);
    }

    [Test]
    public void TheTlbLineOfProcInterruptsIsParsedByCpuNumber()
    {
        var counts = HostInterrupts.Parse("           CPU0       CPU1       CPU3", "TLB:         12         34          5   TLB shootdowns");
        Assert.That(counts, Is.EqualTo(new long[] { 12, 34, 0, 5 }));
        Assert.That(HostInterrupts.Parse("CPU0 CPU1", null), Is.Null);
        Assert.That(HostInterrupts.Delta([1, 2], [4, 8], [0, 1]), Is.EqualTo(9));
        Assert.That(HostInterrupts.Delta(null, [4, 8], [0]), Is.EqualTo(-1));
    }

    private static int Remaps()
    {
        string? text = Environment.GetEnvironmentVariable("SFBUF_HOST_REMAPS");
        if (string.IsNullOrEmpty(text))
        {
            return 1_000_000;
        }

        return int.TryParse(text, System.Globalization.CultureInfo.InvariantCulture, out int n) && n >= 2
            ? n
            : throw new ArgumentException($"SFBUF_HOST_REMAPS must be a whole number of at least 2, not '{text}'");
    }

    private static ulong Pattern(int page, int word) => ((ulong)(page + 1) << 32) ^ (ulong)word ^ 0x5afe_c0de_0000_0000;

    private static string? MemoryFileLink(int fd)
    {
        try
        {
            return new FileInfo($"/proc/self/fd/{fd}").LinkTarget;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>Lines of /proc/self/maps that overlap [start, start + bytes).</summary>
    private static List<(ulong Start, ulong End)> MappingsWithin(nint start, nuint bytes)
    {
        ulong lo = (ulong)start, hi = lo + bytes;
        var result = new List<(ulong, ulong)>();
        foreach (var line in File.ReadLines("/proc/self/maps"))
        {
            var range = line.AsSpan(0, line.IndexOf(' ', StringComparison.Ordinal));
            int dash = range.IndexOf('-');
            ulong s = ulong.Parse(range[..dash], System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture);
            ulong e = ulong.Parse(range[(dash + 1)..], System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture);
            if (s < hi && e > lo)
            {
                result.Add((Math.Max(s, lo), Math.Min(e, hi)));
            }
        }

        return result;
    }
}
