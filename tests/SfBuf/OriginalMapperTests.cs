using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;
using SfBufHandle = Native.SfBufNative.SfBuf;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>
/// The original (pre-sf_buf) mechanism (reference A.6): per-use KVA from kernel_map,
/// <c>pmap_qenter</c> and <c>pmap_qremove</c>, each with a broadcast shootdown.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class OriginalMapperTests
{
    private const int Operations = 8;

    /// <summary>
    /// Every CPU but the allocating one runs a thread that answers IPIs, so the targets are
    /// running: IpisSent equals IpiTargets (idle targets would count in IpiTargets only).
    /// </summary>
    [TestCase(2)]
    [TestCase(4)]
    public void EachAllocAndFreeIsTwoBroadcastShootdownRoundsThatTargetEveryOtherCpu(int cpus)
    {
        using var m = new SimMachine(SfBufRig.Small(cpus: cpus));
        using var original = SfBufMapper.Create(SfBufMapper.Original, m);
        var pages = SfBufRig.NewPages(m, Operations);
        var reads = new List<ulong>();
        CounterSnapshot? d = null;

        using (new BusyCpus(m, Enumerable.Range(1, cpus - 1)))
        {
            m.Run(0, () =>
            {
                var before = m.Counters();
                foreach (var page in pages)
                {
                    var sf = original.Alloc(page);
                    reads.Add(m.CurrentCpu.ReadUInt64(sf.Kva + 64));
                    original.Free(sf);
                }

                d = m.Counters() - before;
            });
        }

        int others = cpus - 1;
        Assert.That(d![Counter.ShootdownRounds], Is.EqualTo(2 * Operations));
        Assert.That(d[Counter.IpiTargets], Is.EqualTo(2 * others * Operations));
        Assert.That(d[Counter.IpisSent], Is.EqualTo(2 * others * Operations));
        Assert.That(d[Counter.IdleTargetsDeferred], Is.EqualTo(0));
        for (int cpu = 1; cpu < cpus; cpu++)
        {
            Assert.That(d.OnCpu(cpu, Counter.IpisReceived), Is.EqualTo(2 * Operations), $"IPIs received by cpu {cpu}");
        }

        Assert.That(d.OnCpu(0, Counter.LocalInvalidations), Is.EqualTo(2 * Operations));
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(Operations));
        Assert.That(d[Counter.KernelPteClears], Is.EqualTo(Operations));
        Assert.That(reads, Is.EqualTo(pages.Select(SfBufRig.Stamp)));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.EqualTo(0));
    }

    [Test]
    public void OnOneCpuEachAllocAndFreeIsTwoLocalInvalidationsAndNoIpi()
    {
        using var m = new SimMachine(SfBufRig.Small(cpus: 1));
        using var original = SfBufMapper.Create(SfBufMapper.Original, m);
        var pages = SfBufRig.NewPages(m, Operations);
        CounterSnapshot? d = null;

        m.Run(0, () =>
        {
            var before = m.Counters();
            foreach (var page in pages)
            {
                var sf = original.Alloc(page, SfBufFlags.CpuPrivate);
                m.CurrentCpu.ReadUInt64(sf.Kva);
                original.Free(sf);
            }

            d = m.Counters() - before;
        });

        Assert.That(d![Counter.LocalInvalidations], Is.EqualTo(2 * Operations));
        Assert.That(d[Counter.IpisSent], Is.EqualTo(0));
        Assert.That(d[Counter.IpiTargets], Is.EqualTo(0));
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(0));
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(Operations));
        Assert.That(d[Counter.KernelPteClears], Is.EqualTo(Operations));
    }

    [Test]
    public void NoWaitFailsWhenKernelMapIsFull()
    {
        using var m = new SimMachine(SfBufRig.Small(kernelMapPages: 4));
        using var original = SfBufMapper.Create(SfBufMapper.Original, m);
        var pages = SfBufRig.NewPages(m, 5);
        var held = new List<SfBufHandle>();
        SfBufHandle denied = default, afterFree = default;
        CounterSnapshot? d = null;

        m.Run(0, () =>
        {
            for (int i = 0; i < 4; i++)
            {
                held.Add(original.Alloc(pages[i], SfBufFlags.NoWait));
            }

            var before = m.Counters();
            denied = original.Alloc(pages[4], SfBufFlags.NoWait);
            d = m.Counters() - before;
            original.Free(held[0]);
            afterFree = original.Alloc(pages[4], SfBufFlags.NoWait);
            held[0] = afterFree;
            foreach (var sf in held)
            {
                original.Free(sf);
            }
        });

        Assert.That(held.Take(4).Select(sf => sf.IsNone), Is.All.False);
        Assert.That(denied.IsNone, Is.True);
        Assert.That(d![Counter.Sleeps], Is.EqualTo(0));
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(0));
        Assert.That(original.Stats().Failures, Is.EqualTo(1));
        Assert.That(original.Stats().AllocWait, Is.EqualTo(0));
        Assert.That(afterFree.IsNone, Is.False);
        Assert.That(m.KernelMap.FreePages, Is.EqualTo(4));
    }

    [Test]
    public void CatchWithCancellationReturnsNone()
    {
        using var m = new SimMachine(SfBufRig.Small(kernelMapPages: 1));
        using var original = SfBufMapper.Create(SfBufMapper.Original, m);
        var p1 = SfBufRig.NewPage(m);
        var p2 = SfBufRig.NewPage(m);
        using var cancel = new CancellationTokenSource();
        SfBufHandle held = default;
        SfBufHandle waited = default;
        bool returned = false;

        m.Run(0, () => held = original.Alloc(p1));
        var waiter = m.StartThread("catcher", () =>
        {
            waited = original.Alloc(p2, SfBufFlags.Catch, cancel.Token);
            returned = true;
        }, 1, bound: true);
        SfBufRig.WaitUntil(() => m.KernelMap.Waits == 1, "the catcher sleeps for kernel_map space");
        cancel.Cancel();
        waiter.Join(SfBufRig.Patience);

        Assert.That(returned, Is.True);
        Assert.That(waited.IsNone, Is.True);
        Assert.That(original.Stats().Failures, Is.EqualTo(1));
        Assert.That(original.Stats().AllocWait, Is.EqualTo(1));
        Assert.That(original.Stats().NsfbufsUsed, Is.EqualTo(1));

        m.Run(0, () => original.Free(held));
        Assert.That(m.KernelMap.FreePages, Is.EqualTo(1));
    }

    [Test]
    public void DoubleFreeThrowsEvenAfterTheAddressWasReusedByAnotherAllocation()
    {
        using var m = new SimMachine(SfBufRig.Small(kernelMapPages: 1));
        using var original = SfBufMapper.Create(SfBufMapper.Original, m);
        var p1 = SfBufRig.NewPage(m);
        var p2 = SfBufRig.NewPage(m);
        SfBufHandle first = default, second = default;
        ulong readSecond = 0;

        m.Run(0, () =>
        {
            first = original.Alloc(p1);
            original.Free(first);
            second = original.Alloc(p2);
        });

        Assert.That(second.Kva, Is.EqualTo(first.Kva), "kernel_map has one page: the address is reused");
        Assert.That(() => m.Run(0, () => original.Free(first)), Throws.InvalidOperationException);

        // The second allocation is untouched by the refused free.
        m.Run(1, () => readSecond = m.CurrentCpu.ReadUInt64(second.Kva));
        Assert.That(readSecond, Is.EqualTo(SfBufRig.Stamp(p2)));
        Assert.That(original.Stats().NsfbufsUsed, Is.EqualTo(1));
        m.Run(0, () => original.Free(second));
        Assert.That(() => m.Run(0, () => original.Free(second)), Throws.InvalidOperationException);
        Assert.That(m.KernelMap.FreePages, Is.EqualTo(1));
    }

    [Test]
    public void SendfilesPoolMapsAtFixedAddressesWithQenterAtAllocAndQremoveAtFree()
    {
        // The pre-paper sendfile pool: nsfbufs buffers carved from kernel_map once, each with its
        // own page of KVA; alloc maps (one broadcast round), free unmaps (another) and returns the
        // buffer, whose address the next alloc reuses.
        const int Nsfbufs = 8;
        using var m = new SimMachine(SfBufRig.Small(windowPages: Nsfbufs, kernelMapPages: 64));
        using var original = (OriginalMapper)SfBufMapper.Create(SfBufMapper.Original, m);
        var pages = SfBufRig.NewPages(m, Nsfbufs + 1);
        var held = new List<SfBufHandle>();
        SfBufHandle none = default, again = default;
        CounterSnapshot? d = null;
        m.Run(0, () =>
        {
            var before = m.Counters();
            held.AddRange(pages.Take(Nsfbufs).Select(p => original.SendfileAlloc(p)));
            none = original.SendfileAlloc(pages[Nsfbufs], SfBufFlags.NoWait);
            ulong freed = held[3].Kva;
            original.Free(held[3]);
            again = original.SendfileAlloc(pages[Nsfbufs]);
            Assert.That(again.Kva, Is.EqualTo(freed), "a freed buffer keeps its address");
            Assert.That(m.CurrentCpu.ReadUInt64(again.Kva), Is.EqualTo(SfBufRig.Stamp(pages[Nsfbufs])));
            held[3] = again;
            held.ForEach(original.Free);
            d = m.Counters() - before;
        });

        ulong start = held.Min(sf => sf.Kva);
        Assert.That(held.Select(sf => (sf.Kva - start) >> Pte.PageShift), Is.All.LessThan((ulong)Nsfbufs), "one run of nsfbufs pages");
        Assert.That(none.IsNone, Is.True, "NoWait with the pool exhausted gets no buffer");
        Assert.That(m.KernelMap.FreePages, Is.EqualTo(64 - Nsfbufs), "the pool stays carved; nothing else is held");
        Assert.That(d![Counter.Mappings], Is.EqualTo(Nsfbufs + 1));
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(2 * (Nsfbufs + 1)));
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(d[Counter.MappedPages]));
        var stats = original.Stats();
        Assert.That(stats.Failures, Is.EqualTo(1), "the refused NoWait allocation, counted once");
        Assert.That(stats.NsfbufsUsed, Is.Zero);
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }
}
