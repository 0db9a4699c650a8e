using System.Runtime.InteropServices;
using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;
using SfBufHandle = Native.SfBufNative.SfBuf;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>sfbuf-amd64, the direct map (reference A.4): the sf_buf is the page, and nothing is ever invalidated.</summary>
[TestFixture]
[NonParallelizable]
public sealed class DirectMapMapperTests
{
    [Test]
    public void NoWorkloadWritesAPteInvalidatesATranslationOrSendsAnIpi()
    {
        const int PagesPerCpu = 32;
        const int Rounds = 2000;
        using var m = new SimMachine(SfBufRig.Small(flavor: MachineFlavor.Amd64));
        using var dmap = SfBufMapper.Create(SfBufMapper.Amd64, m);
        var pages = SfBufRig.NewPages(m, 2 * PagesPerCpu);
        var mismatches = new int[2];
        var before = m.Counters();

        var threads = Enumerable.Range(0, 2).Select(cpu => m.StartThread($"dmap-{cpu}", () =>
        {
            var random = new Random(cpu + 1);
            var c = m.CurrentCpu;
            var held = new List<SfBufHandle>();
            for (int round = 0; round < Rounds; round++)
            {
                // Any page, shared or private; several held at once; the same page twice too.
                var page = pages[random.Next(pages.Length)];
                var flags = random.Next(2) == 0 ? SfBufFlags.Default : SfBufFlags.CpuPrivate;
                var sf = dmap.Alloc(page, flags);
                held.Add(sf);
                if (c.ReadUInt64(sf.Kva + (ulong)(8 * random.Next(512))) != SfBufRig.Stamp(page))
                {
                    mismatches[cpu]++;
                }

                // Each CPU writes only its own half of the pages, a word of its own choosing.
                if (page.Frame % 2 == (uint)cpu)
                {
                    c.WriteUInt64(sf.Kva + (ulong)(8 * random.Next(512)), SfBufRig.Stamp(page));
                }

                if (held.Count > 3 || random.Next(3) == 0)
                {
                    int victim = random.Next(held.Count);
                    dmap.Free(held[victim]);
                    held.RemoveAt(victim);
                }
            }

            foreach (var sf in held)
            {
                dmap.Free(sf);
            }
        }, cpu, bound: true)).ToArray();
        SfBufRig.JoinAll(threads, SfBufRig.Patience);

        var d = m.Counters() - before;
        Assert.That(mismatches, Is.All.EqualTo(0));
        Assert.That(d[Counter.KernelPteWrites], Is.EqualTo(0));
        Assert.That(d[Counter.KernelPteClears], Is.EqualTo(0));
        Assert.That(d[Counter.LocalInvalidations], Is.EqualTo(0));
        Assert.That(d[Counter.FullFlushes], Is.EqualTo(0));
        Assert.That(d[Counter.ShootdownRounds], Is.EqualTo(0));
        Assert.That(d[Counter.IpisSent], Is.EqualTo(0));
        Assert.That(d[Counter.IpiTargets], Is.EqualTo(0));
        Assert.That(d[Counter.TlbMisses], Is.EqualTo(0), "direct-map translations are permanently resident");
        Assert.That(d[Counter.StaleAccesses], Is.EqualTo(0));
        foreach (var page in pages)
        {
            var words = MemoryMarshal.Cast<byte, ulong>(m.Physical.PhysicalBytes(page)).ToArray();
            Assert.That(words, Is.All.EqualTo(SfBufRig.Stamp(page)), $"{page}");
        }
    }

    [Test]
    public void TheKvaIsTheDirectMapAddressOfThePage()
    {
        using var m = new SimMachine(SfBufRig.Small(flavor: MachineFlavor.Amd64));
        using var dmap = SfBufMapper.Create(SfBufMapper.Amd64, m);
        var pages = SfBufRig.NewPages(m, 4);
        var handles = new List<SfBufHandle>();
        var reads = new List<ulong>();

        m.Run(1, () =>
        {
            foreach (var page in pages)
            {
                var sf = dmap.Alloc(page, SfBufFlags.NoWait);
                handles.Add(sf);
                reads.Add(m.CurrentCpu.ReadUInt64(sf.Kva));
                dmap.Free(sf);
            }
        });

        for (int i = 0; i < pages.Length; i++)
        {
            Assert.That(handles[i].Kva, Is.EqualTo(VmLayout.DMAP_BASE + pages[i].PhysicalAddress));
            Assert.That(handles[i].Kva, Is.EqualTo(m.Layout.DirectMap(pages[i].PhysicalAddress)));
            Assert.That(SfBufMapper.Page(handles[i]), Is.EqualTo(pages[i]));
        }

        Assert.That(reads, Is.EqualTo(pages.Select(SfBufRig.Stamp)));
    }

    [Test]
    public void CreatingItOnAnI386MachineThrows()
    {
        using var m = new SimMachine(SfBufRig.Small(flavor: MachineFlavor.I386));

        Assert.That(m.Layout.DirectMapBytes, Is.EqualTo(0UL));
        Assert.That(() => SfBufMapper.Create(SfBufMapper.Amd64, m), Throws.InvalidOperationException);
    }

    [Test]
    public void DoubleFreeThrowsInCheckedMode()
    {
        using var m = new SimMachine(SfBufRig.Small(flavor: MachineFlavor.Amd64));
        using var dmap = SfBufMapper.Create(SfBufMapper.Amd64, m);
        var page = SfBufRig.NewPage(m);
        SfBufHandle first = default, second = default;

        Assert.That(m.Options.Checked, Is.True);
        m.Run(0, () =>
        {
            first = dmap.Alloc(page);
            second = dmap.Alloc(page);
            dmap.Free(first);
            dmap.Free(second); // two allocations, two frees: fine
        });

        Assert.That(first, Is.EqualTo(second));
        Assert.That(() => m.Run(0, () => dmap.Free(first)), Throws.InvalidOperationException);

        // The refused free left the count at zero: one more allocation frees exactly once.
        m.Run(0, () => dmap.Free(dmap.Alloc(page)));
        Assert.That(() => m.Run(0, () => dmap.Free(first)), Throws.InvalidOperationException);
    }
}
