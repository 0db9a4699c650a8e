using System.Diagnostics;
using Native.PageTable;
using Native.Perf.Stats;

namespace Native.Perf.Real;

/// <summary>
/// What one remap of a used kernel page costs on the host backend, the real counterpart of a
/// simulated PTE write plus invalidation: a kernel thread on CPU 0 maps a frame at one kernel
/// page with <c>pmap_kenter</c> (the host backend's <c>mmap(MAP_FIXED)</c>) and reads through it,
/// over and over, first with CPU 1 idle, then with a kernel thread of the machine running on
/// CPU 1, which the host kernel must then shoot down at every remap. The difference is what a
/// remote shootdown costs its initiator.
/// </summary>
internal static class RemapProbe
{
    /// <summary>Medians over <paramref name="rounds"/> interleaved rounds of <paramref name="remaps"/> remaps each; null without the host backend or a second core.</summary>
    public static RemapCost? Measure(int remaps = 20_000, int rounds = 3)
    {
        if (!HostBackend.IsAvailable || HostBackend.HostCores < 2)
        {
            return null;
        }

        using var m = new Machine(new MachineOptions
        {
            Backend = MachineBackend.Host,
            Cpus = 2,
            PhysicalMemoryBytes = 16UL << 20,
            SfBufWindowPages = 16,
            KernelMapPages = 16,
            KernelMemoryPages = 16,
            Checked = false,
        });
        var frames = new[] { m.Physical.Alloc(AllocFlags.Wired | AllocFlags.Zero), m.Physical.Alloc(AllocFlags.Wired | AllocFlags.Zero) };
        var alone = new List<(double Ns, double Flushes)>();
        var withPeer = new List<(double Ns, double Flushes)>();
        for (int r = 0; r < rounds; r++)
        {
            alone.Add(Loop(m, frames, remaps, peer: false));
            withPeer.Add(Loop(m, frames, remaps, peer: true));
        }

        return new RemapCost(
            SampleSummary.Of([.. alone.Select(a => a.Ns)]).Median,
            SampleSummary.Of([.. withPeer.Select(a => a.Ns)]).Median,
            SampleSummary.Of([.. alone.Select(a => a.Flushes)]).Median,
            SampleSummary.Of([.. withPeer.Select(a => a.Flushes)]).Median);
    }

    private static (double Ns, double Flushes) Loop(Machine m, VmPage[] frames, int remaps, bool peer)
    {
        ulong slot = m.Layout.SfBufWindow.Start;
        bool stop = false;
        KernelThread? spinner = peer
            ? m.StartThread("remap-probe peer", () =>
            {
                // Running in the machine's address space: the host must flush this core at every remap.
                while (!Volatile.Read(ref stop))
                {
                    m.CurrentCpu.Poll();
                }
            }, cpu: 1, bound: true)
            : null;
        double ns = 0;
        double flushes = -1;
        try
        {
            m.Run(0, () =>
            {
                var cpu = m.CurrentCpu;
                for (int i = 0; i < remaps / 10; i++)
                {
                    m.KernelPmap.KEnter(slot, frames[i & 1]);
                    cpu.ReadUInt64(slot);
                }

                _ = m.HostCounts() - m.HostCounts(); // compiled outside the window
                var before = m.HostCounts();
                long start = Stopwatch.GetTimestamp();
                for (int i = 0; i < remaps; i++)
                {
                    m.KernelPmap.KEnter(slot, frames[i & 1]);
                    cpu.ReadUInt64(slot); // the first touch after a remap faults the page in, as a use would
                }

                ns = Stopwatch.GetElapsedTime(start).TotalNanoseconds / remaps;
                var d = m.HostCounts() - before;
                flushes = d.RemoteFlushesSent < 0 ? -1 : d.RemoteFlushesSent / (double)remaps;
            });
        }
        finally
        {
            Volatile.Write(ref stop, true);
            spinner?.Join(TimeSpan.FromMinutes(1));
        }

        return (ns, flushes);
    }
}

/// <summary>The host backend's remap of a used kernel page.</summary>
/// <param name="AloneNs">ns per remap (and first touch) with no other thread of the machine running.</param>
/// <param name="WithPeerNs">ns per remap with a kernel thread running on the other core.</param>
/// <param name="FlushesPerRemapAlone">Remote flushes the host kernel started per remap, alone (-1 uncounted).</param>
/// <param name="FlushesPerRemapWithPeer">The same with the peer running (-1 uncounted).</param>
internal sealed record RemapCost(double AloneNs, double WithPeerNs, double FlushesPerRemapAlone, double FlushesPerRemapWithPeer)
{
    /// <summary>What the remote shootdown adds to a remap at its initiator.</summary>
    public double ShootdownNs => Math.Max(0, WithPeerNs - AloneNs);
}
