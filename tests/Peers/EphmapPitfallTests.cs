using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Strategies.Asi;
using Native.Tests.Machine;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Peers;

using SfBuf = Native.SfBufNative.SfBuf;

/// <summary>
/// asi-ephmap's pitfalls (<c>mm/ephmap.c</c>): <c>ephmap_get</c> fails while another thread of
/// the same address space holds the CPU's region, <c>ephmap_put</c> invalidates only locally
/// (an <c>invlpg</c> per page below 33 pages, one full flush from 33), and the holder cannot
/// migrate. Exact counts, and no stale access.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class EphmapPitfallTests
{
    [Test]
    public void ASecondThreadOfTheSameAddressSpaceOnTheCpuGetsNullAndFallsBackToKmapWhileAnotherAddressSpaceGetsItsOwnRegion()
    {
        // One CPU, a kmap pool of two.
        using var m = new SimMachine(Sim.Small(1) with { SfBufWindowPages = 2 });
        using var mapper = (AsiEphmapMapper)SfBufMapper.Create(SfBufMapper.AsiEphmap, m);
        var mine = Sim.NewPage(m, 0xA1);
        var theirs = new[] { Sim.NewPage(m, 0xB1), Sim.NewPage(m, 0xB2), Sim.NewPage(m, 0xB3) };
        var otherSpacePage = Sim.NewPage(m, 0xC1);
        int holding = 0, othersDone = 0;
        ulong holderKva = 0, holderSaw = 0, otherSpaceKva = 0, otherSpaceSaw = 0;
        var bSaw = new ulong[2];
        var bKva = new ulong[2];
        bool thirdWasNone = false;

        var holder = m.StartThread("holder", () =>
        {
            var td = KernelThread.Current;
            td.SchedPin();
            var sf = mapper.Alloc(mine, SfBufFlags.CpuPrivate);
            td.SchedUnpin();
            holderKva = mapper.Kva(sf);
            Volatile.Write(ref holding, 1);
            while (Volatile.Read(ref othersDone) < 2)
            {
                m.Sleep(this, timeout: TimeSpan.FromMilliseconds(1)); // switches out and in holding the region
            }

            holderSaw = m.CurrentCpu.ReadUInt64(mapper.Kva(sf));
            mapper.Free(sf);
        }, cpu: 0);
        Sim.WaitUntil(() => Volatile.Read(ref holding) == 1, "the holder has the region");

        // Same (kernel) address space, same CPU: ephmap_get returns NULL each time.
        var sameSpace = m.StartThread("same-space", () =>
        {
            var td = KernelThread.Current;
            td.SchedPin();
            var b0 = mapper.Alloc(theirs[0], SfBufFlags.CpuPrivate); // waiting caller: kmap
            var b1 = mapper.Alloc(theirs[1], SfBufFlags.CpuPrivate | SfBufFlags.NoWait); // kmap's second slot
            var b2 = mapper.Alloc(theirs[2], SfBufFlags.CpuPrivate | SfBufFlags.NoWait); // kmap full too: no sf_buf
            thirdWasNone = b2.IsNone;
            for (int i = 0; i < 2; i++)
            {
                var sf = i == 0 ? b0 : b1;
                bKva[i] = mapper.Kva(sf);
                bSaw[i] = m.CurrentCpu.ReadUInt64(bKva[i]);
            }

            mapper.Free(b1);
            mapper.Free(b0);
            td.SchedUnpin();
            Interlocked.Increment(ref othersDone);
        }, cpu: 0);

        // Another address space on the same CPU has its own region (at the same address).
        var otherSpace = m.StartThread("other-space", () =>
        {
            var td = KernelThread.Current;
            td.SchedPin();
            var sf = mapper.Alloc(otherSpacePage, SfBufFlags.CpuPrivate);
            otherSpaceKva = mapper.Kva(sf);
            otherSpaceSaw = m.CurrentCpu.ReadUInt64(otherSpaceKva);
            mapper.Free(sf);
            td.SchedUnpin();
            Interlocked.Increment(ref othersDone);
        }, cpu: 0, vmspace: m.CreateVmSpace());
        Sim.Join(holder, sameSpace, otherSpace);

        var stats = mapper.Stats();
        var d = stats.Details;
        Assert.Multiple(() =>
        {
            Assert.That(holderKva, Is.EqualTo(mapper.Mechanism.RegionOf(0)));
            Assert.That(holderSaw, Is.EqualTo(0xA1UL), "the holder's page was restored after the others ran");
            Assert.That(bSaw, Is.EqualTo(new[] { 0xB1UL, 0xB2UL }), "the fallbacks read their pages through kmap");
            Assert.That(bKva.Any(mapper.Mechanism.Owns), Is.False, "the fallbacks are kmap slots, not the region");
            Assert.That(thirdWasNone, Is.True, "NoWait with the region held and kmap full gets no sf_buf");
            Assert.That(otherSpaceKva, Is.EqualTo(holderKva), "another address space uses the same address");
            Assert.That(otherSpaceSaw, Is.EqualTo(0xC1UL));
            Assert.That(d["ephmap.gets"], Is.EqualTo(2), "the holder and the other address space");
            Assert.That(d[AsiEphmapMapper.DetailFailures], Is.EqualTo(3), "each of the same-space thread's gets returned NULL");
            Assert.That(d["ephmap.fallbacks"], Is.EqualTo(2), "two of them got kmap");
            Assert.That(d["kmap.calls"], Is.EqualTo(2));
            Assert.That(stats.Failures, Is.EqualTo(1), "the third found kmap full with NoWait");
            Assert.That(d["ephmap.switch_restores"], Is.EqualTo(d["ephmap.switch_saves"]));
            Assert.That(d["ephmap.switch_saves"], Is.GreaterThanOrEqualTo(1), "the holder switched out holding its region");
            Assert.That(stats.NsfbufsUsed, Is.Zero);
            Assert.That(m.Counters()[Counter.StaleAccesses] + m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
        });
    }

    [Test]
    public void PutBelow33PagesInvalidatesEachPageLocallyAndFrom33PagesFlushesTheTlbOnceAndNoOtherCpuIsInterrupted()
    {
        // The fixmap has 32 pages per CPU: this region of 40 is placed in the sf_buf window.
        const int region = 40;
        using var m = new SimMachine(Sim.Small(2) with { SfBufWindowPages = 2 * region });
        using var ephmap = new Ephmap(m, region, m.Layout.SfBufWindow);
        var pages = Enumerable.Range(0, region).Select(i => Sim.NewPage(m, 0x1000UL + (ulong)i)).ToArray();
        var deltas = new List<(int Pages, long Invlpg, long Full)>();
        var wrong = new List<string>();
        m.Run(0, () =>
        {
            var td = KernelThread.Current;
            td.SchedPin();
            foreach (int n in new[] { 32, 33, 32 })
            {
                // Each round maps other pages at the same addresses: a translation left stale by
                // the previous put would read the wrong page.
                var use = pages.Skip(region - n - deltas.Count).Take(n).ToArray();
                ulong va = ephmap.Get(td, use, out _, out int generation);
                for (int i = 0; i < n; i++)
                {
                    ulong saw = m.CurrentCpu.ReadUInt64(va + ((ulong)i << Pte.PageShift));
                    if (saw != 0x1000UL + (ulong)Array.IndexOf(pages, use[i]))
                    {
                        wrong.Add($"round {deltas.Count}: page {i} read 0x{saw:x}");
                    }
                }

                long inv = m.Counters()[Counter.LocalInvalidations], full = m.Counters()[Counter.FullFlushes];
                ephmap.Put(td, va, n, generation);
                deltas.Add((n, m.Counters()[Counter.LocalInvalidations] - inv, m.Counters()[Counter.FullFlushes] - full));
            }

            Assert.That(ephmap.Get(td, pages.Concat(pages).Take(region + 1).ToArray(), out _, out _), Is.Zero, "larger than the region: NULL");
            td.SchedUnpin();
        });

        TestContext.Out.WriteLine(string.Join("; ", deltas.Select(d => $"{d.Pages} pages: {d.Invlpg} invlpg, {d.Full} full flushes")));
        Assert.Multiple(() =>
        {
            Assert.That(deltas, Is.EqualTo(new[] { (32, 32L, 0L), (33, 0L, 1L), (32, 32L, 0L) }));
            Assert.That(wrong, Is.Empty, "every read saw its page");
            Assert.That(ephmap.Invlpgs, Is.EqualTo(64));
            Assert.That(ephmap.FullFlushes, Is.EqualTo(1));
            Assert.That(ephmap.Gets, Is.EqualTo(3));
            Assert.That(ephmap.Failures, Is.EqualTo(1));
            Assert.That(m.Counters()[Counter.IpisSent], Is.Zero, "only the local TLB is flushed");
            Assert.That(m.Counters()[Counter.StaleAccesses] + m.Counters()[Counter.LatentStaleAccesses], Is.Zero);
        });
    }

    [Test]
    public void TheHolderCannotMigrateAndOnlyItCanPutTheRegion()
    {
        using var m = new SimMachine(Sim.Small(2));
        using var mapper = (AsiEphmapMapper)SfBufMapper.Create(SfBufMapper.AsiEphmap, m);
        var page = Sim.NewPage(m, 0x5A);
        int mapped = 0, hogReady = 0, releaseHog = 0;
        int resumedOn = -1;
        ulong seen = 0;
        SfBuf held = default;
        var holder = m.StartThread("ephmap holder", () =>
        {
            var td = KernelThread.Current;
            td.SchedPin();
            held = mapper.Alloc(page, SfBufFlags.CpuPrivate);
            td.SchedUnpin(); // only ephmap's migrate_disable keeps it here now
            Volatile.Write(ref mapped, 1);
            while (Volatile.Read(ref hogReady) == 0)
            {
                m.Sleep(this, timeout: TimeSpan.FromMilliseconds(1));
            }

            m.Sleep(this, timeout: TimeSpan.FromMilliseconds(20));
            resumedOn = td.Cpu!.Id;
            seen = m.CurrentCpu.ReadUInt64(mapper.Kva(held));
            mapper.Free(held);
            Assert.That(td.PinCount, Is.Zero, "ephmap_put's caller enabled migration again");
        }, cpu: 0);
        Sim.WaitUntil(() => Volatile.Read(ref mapped) == 1, "the holder has the region");

        Exception? refused = null;
        var hog = m.StartThread("cpu0 hog", () =>
        {
            // Another thread of the same address space cannot put the holder's region.
            try
            {
                mapper.Free(held);
            }
            catch (InvalidOperationException ex)
            {
                refused = ex;
            }

            Volatile.Write(ref hogReady, 1);
            while (Volatile.Read(ref releaseHog) == 0)
            {
                m.CurrentCpu.Poll();
            }
        }, cpu: 0, bound: true);
        Sim.WaitUntil(() => Volatile.Read(ref hogReady) == 1, "the hog runs on cpu 0");
        Thread.Sleep(100);
        Assert.That(holder.HasExited, Is.False);
        Assert.That(holder.Cpu, Is.Null, "the holder waits for cpu 0 although cpu 1 is free: migration is disabled");
        Assert.That(m.Cpus[1].IsIdle, Is.True);
        Volatile.Write(ref releaseHog, 1);
        holder.Join(Sim.Patience);
        hog.Join(Sim.Patience);

        Assert.That(refused?.Message, Does.Contain("holds no region"));
        Assert.That(resumedOn, Is.Zero, "the holder resumed on the CPU it mapped on");
        Assert.That(seen, Is.EqualTo(0x5AUL));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);

        // ephmap_get itself refuses a caller with migration enabled.
        using var ephmap = new Ephmap(m, 1, m.Layout.SfBufWindow);
        var unpinned = m.StartThread("unpinned", () => ephmap.Get(KernelThread.Current, new[] { page }, out _, out _), cpu: 1);
        Assert.That(() => unpinned.Join(Sim.Patience), Throws.InvalidOperationException.With.Message.Contains("migration enabled"));
    }
}
