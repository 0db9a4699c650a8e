using System.Diagnostics;
using System.Runtime.InteropServices;
using Native.Interop;

namespace Native.Perf.Real;

/// <summary>
/// The host's cross-core round trip: one cache line bounced between two threads pinned to two
/// host cores. A VM can move its vCPUs between physical cores mid-run (the round trip then
/// jumps, for example from 100 to 500 ns), so every run records it.
/// </summary>
internal static class CrossCoreRoundTrip
{
    /// <summary>Median nanoseconds per round trip over <paramref name="batches"/> batches, or null with one core.</summary>
    public static double? Measure(int roundTrips = 20_000, int batches = 10)
    {
        int[] cores = HostCpu.IsPinningAvailable ? HostCpu.AllowedCpus() : [];
        if (cores.Length < 2)
        {
            return null;
        }

        var line = new Line();
        int perBatch = Math.Max(1, roundTrips / batches);
        long total = (long)perBatch * batches;
        var perBatchNs = new double[batches];
        var ready = new ManualResetEventSlim();
        var pong = new Thread(() =>
        {
            HostCpu.PinCurrentThread(cores[1]);
            ready.Set();
            for (long i = 0; i < total; i++)
            {
                long expect = (2 * i) + 1;
                while (Volatile.Read(ref line.Value) != expect)
                {
                }

                Volatile.Write(ref line.Value, expect + 1);
            }
        })
        { IsBackground = true, Name = "round-trip pong" };
        var ping = new Thread(() =>
        {
            HostCpu.PinCurrentThread(cores[0]);
            ready.Wait();
            long n = 0;
            for (int b = 0; b < batches; b++)
            {
                long start = Stopwatch.GetTimestamp();
                for (int i = 0; i < perBatch; i++, n++)
                {
                    Volatile.Write(ref line.Value, (2 * n) + 1);
                    while (Volatile.Read(ref line.Value) != (2 * n) + 2)
                    {
                    }
                }

                perBatchNs[b] = Stopwatch.GetElapsedTime(start).TotalNanoseconds / perBatch;
            }
        })
        { Name = "round-trip ping" };
        pong.Start();
        ping.Start();
        ping.Join();
        pong.Join();
        Array.Sort(perBatchNs);
        return batches % 2 == 1 ? perBatchNs[batches / 2] : (perBatchNs[(batches / 2) - 1] + perBatchNs[batches / 2]) / 2;
    }

    /// <summary>One shared word alone on its cache lines.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 256)]
    private sealed class Line
    {
        [FieldOffset(128)]
        public long Value;
    }
}
