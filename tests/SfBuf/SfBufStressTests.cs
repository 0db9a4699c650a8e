using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;
using SfBufHandle = Native.SfBufNative.SfBuf;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>
/// Every strategy under real concurrency: two kernel threads pinned to two CPUs make random
/// sf_buf operations (shared and private allocations, reads and writes through them, frees,
/// shared mappings handed to the other CPU) with both oracles on. The default run makes a
/// million operations per strategy; the Long category ten million
/// (<c>dotnet test --filter TestCategory=Long</c>; <c>SFBUF_STRESS_OPS</c> overrides both).
/// </summary>
[TestFixture]
[NonParallelizable]
[Category("Stress")]
public sealed class SfBufStressTests
{
    private const int Nsfbufs = 64;
    private const int PageCount = 3 * Nsfbufs;
    private const int MaxHeld = 4;
    private const int MaxInFlight = 4;

    // The runs made in this process, by strategy and size: a strategy's own test reads the run its
    // generic test made instead of making another one.
    private static readonly ConcurrentDictionary<(string, long), Lazy<StressRun>> s_runs = new();

    [TestCaseSource(typeof(AllStrategies), nameof(AllStrategies.Names))]
    public void AMillionRandomOperationsOnTwoPinnedCpus(string strategy) => Run(strategy, Operations(1_000_000));

    [TestCaseSource(typeof(AllStrategies), nameof(AllStrategies.Names))]
    [Category("Long")]
    [Explicit("the long form: dotnet test --filter TestCategory=Long")]
    public void TenMillionRandomOperationsOnTwoPinnedCpus(string strategy) => Run(strategy, Operations(10_000_000));

    /// <summary>netbsd-emap's stress run used both of its mechanisms: readers' emap mappings and writers' kernel mappings.</summary>
    [TestCase(SfBufMapper.NetBsdEmap)]
    public void EmapReadersAndWritersBothMappedUnderStress(string strategy)
    {
        var run = Run(strategy, Operations(1_000_000));
        Assert.That(run.Stats.Details["emap.produces"], Is.GreaterThan(0));
        Assert.That(run.Stats.Details["emap.kenter_maps"], Is.GreaterThan(0));
    }

    /// <summary>sfbuf-i386's pool of 64 sf_bufs serves three times as many pages: shootdowns go with misses, never with hits.</summary>
    [TestCase(SfBufMapper.I386)]
    public void SfBufI386ShootsDownFewerTimesThanItAllocatesUnderStress(string strategy)
    {
        var run = Run(strategy, Operations(1_000_000));
        Assert.That(run.Counts[Counter.ShootdownRounds], Is.LessThan(run.Allocations));
    }

    private static long Operations(long defaultCount) =>
        long.TryParse(Environment.GetEnvironmentVariable("SFBUF_STRESS_OPS"), out long n) && n > 0 ? n : defaultCount;

    private static StressRun Run(string strategy, long totalOperations) =>
        s_runs.GetOrAdd((strategy, totalOperations), key => new Lazy<StressRun>(() => Stress(key.Item1, key.Item2))).Value;

    /// <summary>
    /// The run, checked against what every strategy must do and what the registry declares of this
    /// one: a strategy whose pool size is a parameter gets a pool of 64 for three times as many
    /// pages, so that it is exhausted and recycles.
    /// </summary>
    private static StressRun Stress(string strategy, long totalOperations)
    {
        var info = SfBufMapper.Describe(strategy);
        using var m = new SimMachine(SfBufRig.Small(flavor: info.Flavor));
        using var sfbufs = SfBufMapper.Create(strategy, m, info.PoolSizeIsParameter ? Nsfbufs : null);
        bool sharedCached = info.CachedUsers.HasFlag(SfBufUsers.Shared);
        var pages = SfBufRig.NewPages(m, PageCount);
        var inbox = new[] { new ConcurrentQueue<(SfBufHandle Sf, VmPage Page)>(), new ConcurrentQueue<(SfBufHandle Sf, VmPage Page)>() };
        var operations = new long[2];
        var allocations = new long[2];
        var handedOver = new long[2];
        var badReads = new long[2];
        var badHandles = new long[2];
        var before = m.Counters();
        long perThread = totalOperations / 2;

        Assert.That(m.Options.Checked, Is.True, "both oracles are on");
        var threads = Enumerable.Range(0, 2).Select(cpu => m.StartThread($"stress-cpu{cpu}", () =>
        {
            var random = new Random(0x5f00 + cpu);
            var c = m.CurrentCpu;
            var held = new List<(SfBufHandle Sf, VmPage Page, bool Shared, bool ReadOnly)>(MaxHeld);
            var mine = inbox[cpu];
            var theirs = inbox[1 - cpu];

            void Check(SfBufHandle sf, VmPage page, int word)
            {
                // sf_buf_kva on the accessing CPU, right where it accesses (lwbuf_kva, emap's consume).
                if (c.ReadUInt64(sfbufs.Kva(sf) + (ulong)(8 * word)) != SfBufRig.Stamp(page))
                {
                    badReads[cpu]++;
                }
            }

            while (operations[cpu] < perThread)
            {
                // A shared mapping the other CPU allocated (and referenced) for us: read it, free it.
                if (mine.TryDequeue(out var delivered))
                {
                    Check(delivered.Sf, delivered.Page, random.Next(512));
                    sfbufs.Free(delivered.Sf);
                    operations[cpu] += 2;
                }

                int choice = random.Next(16);
                if (held.Count == 0 || (held.Count < MaxHeld && choice < 5))
                {
                    var page = pages[random.Next(PageCount)];
                    bool shared = random.Next(2) == 0;
                    bool readOnly = random.Next(2) == 0; // a reader's promise (netbsd-emap maps it read-only)
                    var flags = (shared ? SfBufFlags.Default : SfBufFlags.CpuPrivate) | (readOnly ? SfBufFlags.ReadOnly : 0);
                    var sf = sfbufs.Alloc(page, SfBufRig.WhileHolding(info, held.Exists(h => !h.Shared), flags));
                    if (sf.IsNone || sf.Page != page)
                    {
                        badHandles[cpu]++;
                    }

                    if (!sf.IsNone)
                    {
                        held.Add((sf, page, shared, readOnly));
                    }

                    allocations[cpu]++;
                }
                else if (choice < 11)
                {
                    var (sf, page, _, readOnly) = held[random.Next(held.Count)];
                    int word = random.Next(512);
                    if (random.Next(4) == 0 && !readOnly)
                    {
                        c.WriteUInt64(sfbufs.Kva(sf) + (ulong)(8 * word), SfBufRig.Stamp(page));
                    }
                    else
                    {
                        Check(sf, page, word);
                    }
                }
                else if (choice == 11 && theirs.Count < MaxInFlight && held.Find(h => h.Shared) is { Sf.IsNone: false } share)
                {
                    // Another reference to a shared mapping, handed to the other CPU (sendfile's NIC pattern).
                    var again = sfbufs.Alloc(share.Page, SfBufRig.WhileHolding(info, held.Exists(h => !h.Shared), SfBufFlags.ReadOnly)); // the other CPU only reads it
                    if (again.IsNone || (sharedCached && again.Kva != share.Sf.Kva))
                    {
                        badHandles[cpu]++;
                    }

                    if (!again.IsNone)
                    {
                        theirs.Enqueue((again, share.Page));
                    }

                    allocations[cpu]++;
                    handedOver[cpu]++;
                }
                else
                {
                    int victim = SfBufRig.ReleaseIndex(info, held, h => !h.Shared, random.Next(held.Count));
                    sfbufs.Free(held[victim].Sf);
                    held.RemoveAt(victim);
                }

                operations[cpu]++;
            }

            foreach (var (sf, _, _, _) in SfBufRig.ReleaseAll(info, held))
            {
                sfbufs.Free(sf);
            }
        }, cpu, bound: true)).ToArray();
        SfBufRig.JoinAll(threads, TimeSpan.FromMinutes(30));

        m.Run(0, () =>
        {
            foreach (var queue in inbox)
            {
                while (queue.TryDequeue(out var left))
                {
                    sfbufs.Free(left.Sf);
                }
            }
        });

        var d = m.Counters() - before;
        var stats = sfbufs.Stats();
        TestContext.Out.WriteLine($"{strategy}: {operations.Sum():#,0} operations, {allocations.Sum():#,0} allocations, {handedOver.Sum():#,0} handed to the other CPU");
        TestContext.Out.WriteLine(d.ToString());

        Assert.That(m.PinsHostThreads || m.Warnings.Count > 0, Is.True);
        Assert.That(operations.Sum(), Is.GreaterThanOrEqualTo(totalOperations - 1));
        Assert.That(d[Counter.StaleAccesses], Is.Zero);
        Assert.That(d[Counter.LatentStaleAccesses], Is.Zero);
        Assert.That(badReads, Is.All.EqualTo(0), "every read through an sf_buf saw its page's stamp");
        Assert.That(badHandles, Is.All.EqualTo(0));
        Assert.That(handedOver.Sum(), Is.GreaterThan(0));
        Assert.That(stats.NsfbufsUsed, Is.Zero, "nothing is left referenced");
        Assert.That(stats.Failures, Is.Zero);
        Assert.That(d[Counter.IpisSent] + d[Counter.IdleTargetsDeferred], Is.EqualTo(d[Counter.IpiTargets]), "every target was interrupted or deferred");
        Assert.That(d[Counter.IpisReceived], Is.EqualTo(d[Counter.IpisSent]), "every IPI sent was serviced");
        long allocated = allocations.Sum();
        if (info.NeedsDirectMap)
        {
            Assert.That(d[Counter.KernelPteWrites] + d[Counter.ShootdownRounds], Is.Zero, "the direct map maps nothing");
        }
        else
        {
            Assert.That(stats.Hits + stats.Misses, Is.EqualTo(allocated), "every allocation is a hit or a miss");
        }

        if (info.MapsPerUse)
        {
            Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(2 * allocated), "qenter and qremove each broadcast");
        }
        else if (!info.NeedsDirectMap)
        {
            // Counted apart from the strategy's own counters: the machine counts every valid
            // kernel PTE store where it happens (KernelPmap.ExchangePte), the mapper its misses
            // (and kmap_local its maps written again when a thread switches back in).
            long restores = stats.Details.GetValueOrDefault("kmap_local.restores");
            Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(stats.Misses + restores), "the machine saw one PTE store per miss and none per hit");
        }

        // XPFO's kmap of a page already mapped (mapcount above 0) or of a kernel page maps nothing: a hit.
        if (info.CachedUsers == SfBufUsers.None && !info.NeedsDirectMap && !info.NeedsExclusivePageOwnership)
        {
            Assert.That(stats.Hits, Is.Zero, "nothing is cached by page: every allocation maps");
        }

        if (info.IsMappingCache && info.PoolSizeIsParameter)
        {
            Assert.That(stats.Recycles, Is.GreaterThan(0), "three times the pool's pages: cached mappings were recycled");
        }

        if (info.ShootdownCounter is { } counter)
        {
            Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(stats.Details[counter]), $"{counter} counts the strategy's only shootdowns");
        }

        if (info.CheckInvariants is { } check)
        {
            Assert.That(check(sfbufs), Is.Empty, "the strategy's own invariants hold");
        }

        foreach (var page in pages)
        {
            var words = MemoryMarshal.Cast<byte, ulong>(m.Physical.PhysicalBytes(page)).ToArray();
            Assert.That(words, Is.All.EqualTo(SfBufRig.Stamp(page)), $"{page}");
        }

        return new StressRun(stats, d, allocated);
    }

    /// <summary>What a stress run left: the mapper's statistics, the machine's counts, and the allocations made.</summary>
    private sealed record StressRun(SfBufStats Stats, CounterSnapshot Counts, long Allocations);
}
