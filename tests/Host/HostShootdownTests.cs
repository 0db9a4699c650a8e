using System.Runtime.InteropServices;
using Native.PageTable;
using Native.SfBufNative;
using Native.Tests.SfBuf;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Host;

/// <summary>
/// The strategies' shootdown behaviour on the real MMU, from the host kernel's own counts
/// (<c>tlb:tlb_flush</c> in our kernel threads): a producer on CPU 0 maps pages and a consumer on
/// CPU 1 reads every word of each through the sf_buf's address before the producer frees it.
/// Counts only, never times.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class HostShootdownTests
{
    private const int Words = Pte.PageSize / sizeof(ulong);

    // The runtime remaps its own code pages (writable, then executable again) whenever it
    // installs compiled code, in the thread that triggered it, and the host flushes for that too.
    // The tests that count zero flushes run the loops long enough first, outside the window.
    private const int RuntimeWarmup = 20_000;

    [Test]
    public void CachedHitsMakeNoRemapsAndTheHostSendsNoShootdown()
    {
        HostGate.RequireFlushCounts();
        var run = Handoff(SfBufMapper.I386, pages: 4, rounds: 20_000, poolPages: 64, warmup: RuntimeWarmup);

        Assert.That(run.Mismatches, Is.Zero);
        Assert.That(run.Stats.Hits, Is.EqualTo(run.Rounds), "after the warm-up pass over the pages, every allocation is a hit");
        Assert.That(run.Host.Remaps, Is.Zero, "a hit changes no mapping");
        Assert.That(run.Host.RemoteFlushesSent, Is.Zero, "and the host kernel flushes no other CPU");
        Assert.That(run.Host.RemoteFlushesReceived, Is.Zero);
        Assert.That(run.Sim[Counter.ShootdownRounds], Is.Zero, "the strategy asked for none either");
    }

    [Test]
    public void TheDirectMapMakesNoRemapsAndTheHostSendsNoShootdown()
    {
        HostGate.RequireFlushCounts();
        var run = Handoff(SfBufMapper.Amd64, pages: 64, rounds: 20_000, poolPages: 64, warmup: RuntimeWarmup);

        Assert.That(run.Mismatches, Is.Zero);
        Assert.That(run.Host.Remaps, Is.Zero);
        Assert.That(run.Host.RemoteFlushesSent, Is.Zero);
        Assert.That(run.Host.RemoteFlushesReceived, Is.Zero);
    }

    [Test]
    public void OriginalWithARunningConsumerShootsDownAtLeastOncePerMapping()
    {
        HostGate.RequireFlushCounts();
        const int rounds = 2000;
        var run = Handoff(SfBufMapper.Original, pages: 64, rounds: rounds, poolPages: 64);

        Assert.That(run.Mismatches, Is.Zero);
        Assert.That(run.Host.Maps, Is.EqualTo(rounds), "pmap_qenter: one mmap per mapping");
        Assert.That(run.Host.Unmaps, Is.EqualTo(rounds), "pmap_qremove: one re-reservation per mapping");
        Assert.That(run.Sim[Counter.ShootdownRounds], Is.EqualTo(2 * rounds), "the strategy asked for two broadcast rounds per mapping");
        Assert.That(run.Host.RemoteFlushesSent, Is.GreaterThanOrEqualTo(rounds),
            "the consumer's core had used every mapping, so the host kernel flushed it at every unmap");
        TestContext.Out.WriteLine($"original, {rounds} mappings: {run.Host.RemoteFlushesSent} remote flushes sent, {run.Host.RemoteFlushesReceived} received");
    }

    [Test]
    public void SfBufMissesWithARunningConsumerShootDownAtEveryRecycle()
    {
        HostGate.RequireFlushCounts();
        const int rounds = 2000;

        // Twice as many pages as sf_bufs: every allocation recycles a slot the consumer has used.
        var run = Handoff(SfBufMapper.I386, pages: 32, rounds: rounds, poolPages: 16);

        Assert.That(run.Mismatches, Is.Zero);
        Assert.That(run.Stats.Hits, Is.Zero);
        Assert.That(run.Host.Maps, Is.EqualTo(rounds), "one remap per miss");
        Assert.That(run.Host.Unmaps, Is.Zero, "a recycled sf_buf is remapped in place, never unmapped");
        Assert.That(run.Host.RemoteFlushesSent, Is.GreaterThanOrEqualTo(rounds - 16), "every recycle of a used slot flushed the consumer's core");
    }

    [Test]
    public void ShortLivedKernelThreadsLeaveNoCounterOpenAndNoCountLost()
    {
        // 300 short-lived threads on CPU 0 each remap the same slot while a long-lived reader on
        // CPU 1 keeps using it, so the host kernel must flush core 1 at every remap but the first
        // (the first replaces the window's reservation, which nothing had used). Those flushes are
        // counted in threads that have exited by the time the counts are read.
        HostGate.RequireFlushCounts();
        const int remaps = 300;
        int before = PerfEventDescriptors();
        using var m = new SimMachine(HostGate.Small());
        var page = m.Physical.Alloc(AllocFlags.Wired | AllocFlags.Zero);
        ulong slot = m.Layout.SfBufWindow.Start;
        int mapped = 0, stop = 0;
        long reads = 0;
        var reader = m.StartThread("reader", () =>
        {
            var cpu = m.CurrentCpu;
            while (Volatile.Read(ref mapped) == 0 && Volatile.Read(ref stop) == 0)
            {
                cpu.Poll();
                Thread.Yield();
            }

            while (Volatile.Read(ref mapped) == 1 && Volatile.Read(ref stop) == 0)
            {
                cpu.ReadUInt64(slot);
                reads++;
            }
        }, cpu: 1, bound: true);

        try
        {
            for (int i = 0; i < remaps; i++)
            {
                m.Run(0, () =>
                {
                    m.KernelPmap.KEnter(slot, page);
                    m.CurrentCpu.ReadUInt64(slot);
                });
                Volatile.Write(ref mapped, 1);
            }
        }
        finally
        {
            Volatile.Write(ref stop, 1);
            reader.Join(SfBufRig.Patience);
        }

        // One more short thread: opening its counters folds (and closes) the exited threads' ones.
        m.Run(0, () => m.CurrentCpu.ReadUInt64(slot));
        var counts = m.HostCounts();
        TestContext.Out.WriteLine($"{remaps} remaps with a reader on the other core: {counts.RemoteFlushesSent} remote flushes sent, {counts.RemoteFlushesReceived} received; {reads} reads");
        Assert.That(reads, Is.GreaterThan(0));
        Assert.That(PerfEventDescriptors() - before, Is.LessThanOrEqualTo(2), "only the last thread's two counters are still open");
        Assert.That(counts.Maps, Is.EqualTo(remaps));
        Assert.That(counts.RemoteFlushesSent, Is.GreaterThanOrEqualTo(remaps - 1),
            "every remap but the first flushed the reader's core, and the exited threads that made them keep their counts");
    }

    private static int PerfEventDescriptors() =>
        new DirectoryInfo("/proc/self/fd").GetFiles().Count(f => (f.LinkTarget ?? string.Empty).Contains("perf_event", StringComparison.Ordinal));

    /// <summary>
    /// The producer on CPU 0 allocates a shared sf_buf for page <c>i % pages</c>; the consumer on
    /// CPU 1 reads every word through its address and checks them; then the producer frees it.
    /// The first <c>max(pages, warmup)</c> rounds are a warm-up outside the counted window.
    /// </summary>
    private static HandoffResult Handoff(string strategy, int pages, int rounds, int poolPages, int warmup = 0)
    {
        warmup = Math.Max(warmup, pages);
        using var m = new SimMachine(HostGate.Small() with { SfBufWindowPages = poolPages, KernelMapPages = poolPages });
        using var mapper = SfBufMapper.Create(strategy, m);
        var frames = new VmPage[pages];
        for (int p = 0; p < pages; p++)
        {
            frames[p] = m.Physical.Alloc(AllocFlags.Wired);
            var words = MemoryMarshal.Cast<byte, ulong>(m.Physical.PhysicalBytes(frames[p]));
            for (int w = 0; w < Words; w++)
            {
                words[w] = Pattern(p, w);
            }
        }

        long offered = -1, consumed = -1, mismatches = 0;
        ulong kva = 0;
        var consumer = m.StartThread("consumer", () =>
        {
            var cpu = m.CurrentCpu;
            Span<byte> buffer = stackalloc byte[Pte.PageSize];
            var words = MemoryMarshal.Cast<byte, ulong>(buffer);
            for (long seen = -1; ;)
            {
                long i = Volatile.Read(ref offered);
                if (i == seen)
                {
                    continue;
                }

                if (i == long.MaxValue)
                {
                    return;
                }

                cpu.Read(Volatile.Read(ref kva), buffer);
                int p = (int)(i % pages);
                for (int w = 0; w < Words; w++)
                {
                    mismatches += words[w] != Pattern(p, w) ? 1 : 0;
                }

                seen = i;
                Volatile.Write(ref consumed, i);
            }
        }, cpu: 1, bound: true);

        HostMmuCounts? host = null;
        CounterSnapshot? sim = null;
        SfBufStats? stats = null;
        try
        {
            m.Run(0, () =>
            {
                // Taken once before the window too: the first call of each compiles it, and
                // installing compiled code remaps the runtime's code pages in this thread.
                HostMmuCounts hostBefore = m.HostCounts() - m.HostCounts();
                CounterSnapshot simBefore = m.Counters() - m.Counters();
                SfBufStats statsBefore = mapper.Stats() with { };
                for (long i = 0; i < warmup + rounds; i++)
                {
                    if (i == warmup)
                    {
                        hostBefore = m.HostCounts();
                        simBefore = m.Counters();
                        statsBefore = mapper.Stats();
                    }

                    var sf = mapper.Alloc(frames[i % pages]);
                    Volatile.Write(ref kva, sf.Kva);
                    Volatile.Write(ref offered, i);
                    while (Volatile.Read(ref consumed) != i && !consumer.HasExited)
                    {
                        Thread.SpinWait(1);
                    }

                    mapper.Free(sf);
                }

                host = m.HostCounts() - hostBefore;
                sim = m.Counters() - simBefore;
                var after = mapper.Stats();
                stats = after with { Hits = after.Hits - statsBefore.Hits, Misses = after.Misses - statsBefore.Misses };
            });
        }
        finally
        {
            Volatile.Write(ref offered, long.MaxValue);
            consumer.Join(TimeSpan.FromMinutes(5));
        }

        return new HandoffResult(rounds, Interlocked.Read(ref mismatches), host!, sim!, stats!);
    }

    private static ulong Pattern(int page, int word) => ((ulong)(page + 1) << 40) ^ (ulong)word ^ 0x00c0_ffee_0000_0000;

    private sealed record HandoffResult(int Rounds, long Mismatches, HostMmuCounts Host, CounterSnapshot Sim, SfBufStats Stats);
}
