using System.CommandLine;
using System.Diagnostics;
using Native.Interop;
using Native.PageTable;
using Native.Perf.Real;
using Spectre.Console;

namespace Native.Perf.Paper;

/// <summary>
/// <c>perf calibrate</c>: measures this host's TLB costs as well as user space allows and writes
/// the <c>host</c> cost profile.
/// <list type="bullet">
/// <item>Remote shootdown: the host backend's own remap of a used kernel page
/// (<see cref="RemapProbe"/>) with a kernel thread of the machine running on a second core (the
/// host kernel must shoot it down), against the same with that core idle.</item>
/// <item>Local invalidation: <c>mprotect</c> with no other thread, less a null system call.</item>
/// <item>Page walk: reading one line per page in random page order over 256 MiB (TLB misses)
/// against the same over 64 pages (TLB hits); an upper bound, since it includes cache misses.</item>
/// <item>The virtual-time prices (copy bandwidth, kernel entry, lock, lock hand-off, wakeup,
/// context switch, spin turn): the simulated machine's own work timed in real time, each by the
/// method <see cref="VirtualPriceProbe"/> gives (kernel entry: the host's null system call).</item>
/// </list>
/// </summary>
internal static class CalibrateCommand
{
    public static Command Create()
    {
        var iterations = new Option<int>("--iterations") { Description = "mprotect pairs per measurement", DefaultValueFactory = _ => 200_000 };
        var command = new Command("calibrate", "Measure the host's shootdown, invalidation and page-walk costs and the virtual-time prices (copy, kernel entry, locks, wakeup, switch, spin) and write the host cost profile.") { iterations };
        command.SetAction(parse => Run(parse.GetRequiredValue(iterations)));
        return command;
    }

    /// <summary>Measures, prints and writes the profile to <see cref="CostProfiles.HostProfilePath"/>; <paramref name="probeScale"/> shortens the virtual-time probe (tests).</summary>
    internal static unsafe int Run(int iterations, double probeScale = 1)
    {
        if (!HostCpu.IsPinningAvailable)
        {
            AnsiConsole.MarkupLine("[red bold]error:[/] calibration needs thread pinning (Linux)");
            return 1;
        }

        int[] cores = HostCpu.AllowedCpus();
        double nullSyscall = OnCore(cores[0], () => Time(iterations, () => HostMemory.NullSyscall()));
        double local = OnCore(cores[0], () => MprotectPair(iterations));
        var remap = RemapProbe.Measure();
        double? roundTripNs = CrossCoreRoundTrip.Measure();
        double walk = OnCore(cores[0], PageWalk);
        var prices = VirtualPriceProbe.Measure(roundTripNs, probeScale);

        double localInvalidate = Math.Max(1, (local / 2) - nullSyscall);
        AnsiConsole.MarkupLine("[bold]Host measurements[/] (ns)");
        AnsiConsole.WriteLine($"null system call                 {nullSyscall,10:0.0}");
        AnsiConsole.WriteLine($"mprotect, no other thread        {local / 2,10:0.0}   (local invalidation ~ {localInvalidate:0.0})");
        if (remap is { } rc)
        {
            AnsiConsole.WriteLine($"host-backend remap, core 1 idle  {rc.AloneNs,10:0.0}   (remote flushes per remap {Flushes(rc.FlushesPerRemapAlone)})");
            AnsiConsole.WriteLine($"host-backend remap, core 1 busy  {rc.WithPeerNs,10:0.0}   (remote flushes per remap {Flushes(rc.FlushesPerRemapWithPeer)}; remote shootdown ~ {rc.ShootdownNs:0.0})");
        }
        else
        {
            AnsiConsole.WriteLine($"remote shootdown                 cannot be measured: {(HostBackend.IsAvailable ? "this host gives the process one core" : HostBackend.UnavailableReason)}");
        }

        AnsiConsole.WriteLine($"cross-core round trip            {(roundTripNs is double rt0 ? rt0.ToString("0.0", System.Globalization.CultureInfo.InvariantCulture) : "n/a"),10}");

        AnsiConsole.WriteLine($"page walk (upper bound)          {walk,10:0.0}");
        AnsiConsole.WriteLine();
        AnsiConsole.MarkupLine("[bold]Virtual-time prices[/] (the simulated machine's own work in real time, unchecked, pinned; median of batches)");
        foreach (var price in prices.Lines)
        {
            AnsiConsole.WriteLine($"{price.Name,-24} {price.Value,10:0.0#} {price.Unit,-5} {price.Method}");
        }

        AnsiConsole.WriteLine();

        // The round trip is split the way the default profile splits it (send, delivery, handler);
        // the host shows only the sum.
        var baseline = CostModel.Default;
        double roundTrip = remap is { } measured ? measured.ShootdownNs : baseline.IpiSendNs + baseline.IpiDeliveryNs + baseline.IpiHandlerNs;
        double split = baseline.IpiSendNs + baseline.IpiDeliveryNs + baseline.IpiHandlerNs;
        var host = prices.ApplyTo(new CostModel(
            "host",
            Math.Round(localInvalidate, 1),
            Math.Round(4 * localInvalidate, 1),
            Math.Round(walk, 1),
            baseline.PteWriteNs,
            Math.Round(roundTrip * baseline.IpiSendNs / split, 1),
            Math.Round(roundTrip * baseline.IpiDeliveryNs / split, 1),
            Math.Round(roundTrip * baseline.IpiHandlerNs / split, 1),
            $"perf calibrate on {Environment.MachineName}, {DateTime.UtcNow:yyyy-MM-dd}: invlpg = mprotect - null syscall; full flush = 4 x invlpg (derived); "
            + $"walk = random-page read over 256 MiB - over 64 pages (upper bound); PTE write from the default profile; "
            + (remap is null
                ? "no second core or no host backend: IPI costs copied from the default profile"
                : $"IPI round trip = host-backend remap of a used kernel page with a kernel thread running on another core ({remap.WithPeerNs:0} ns) - with that core idle ({remap.AloneNs:0} ns), split like the default profile")
            + $"; virtual time: {prices.Summary}"));
        CostProfiles.SaveHost(host);
        AnsiConsole.WriteLine($"profile        {host}");
        AnsiConsole.WriteLine($"wrote          {CostProfiles.HostProfilePath} (use: perf paper --cost host)");
        return 0;
    }

    /// <summary>ns per mprotect pair (read-only, then read-write and a write) with no other thread of ours running.</summary>
    private static unsafe double MprotectPair(int iterations)
    {
        nuint size = (nuint)Pte.PageSize;
        byte* page = HostMemory.Map(size);
        try
        {
            page[0] = 1;
            return Time(iterations, () =>
            {
                HostMemory.Protect(page, size, HostMemory.PROT_READ);
                HostMemory.Protect(page, size, HostMemory.PROT_READ | HostMemory.PROT_WRITE);
                page[0]++;
            });
        }
        finally
        {
            HostMemory.Unmap(page, size);
        }
    }

    private static string Flushes(double perRemap) => perRemap < 0 ? "uncounted" : perRemap.ToString("0.00", System.Globalization.CultureInfo.InvariantCulture);

    private static unsafe double PageWalk()
    {
        const int largePages = 65536;
        const int smallPages = 64;
        const int reads = 2_000_000;
        nuint bytes = (nuint)largePages * (nuint)Pte.PageSize;
        byte* region = HostMemory.Map(bytes);
        try
        {
            HostMemory.NoHugePages(region, bytes);
            for (nuint i = 0; i < bytes; i += (nuint)Pte.PageSize)
            {
                region[i] = 1;
            }

            double Measure(int pages)
            {
                var order = new int[reads];
                var rng = new Random(1);
                for (int i = 0; i < reads; i++)
                {
                    order[i] = rng.Next(pages);
                }

                long sum = 0;
                var clock = Stopwatch.StartNew();
                foreach (int p in order)
                {
                    sum += region[(nuint)p * (nuint)Pte.PageSize];
                }

                clock.Stop();
                GC.KeepAlive(sum);
                return clock.Elapsed.TotalNanoseconds / reads;
            }

            Measure(smallPages);
            return Math.Max(0, Measure(largePages) - Measure(smallPages));
        }
        finally
        {
            HostMemory.Unmap(region, bytes);
        }
    }

    private static double Time(int iterations, Action op)
    {
        for (int i = 0; i < iterations / 10; i++)
        {
            op();
        }

        var clock = Stopwatch.StartNew();
        for (int i = 0; i < iterations; i++)
        {
            op();
        }

        return clock.Elapsed.TotalNanoseconds / iterations;
    }

    private static T OnCore<T>(int core, Func<T> body)
    {
        T result = default!;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                HostCpu.PinCurrentThread(core);
                result = body();
            }
            catch (Exception ex)
            {
                failure = ex;
            }
        })
        { Name = "calibrate" };
        thread.Start();
        thread.Join();
        return failure == null ? result : throw new InvalidOperationException($"calibration failed: {failure.Message}", failure);
    }
}
