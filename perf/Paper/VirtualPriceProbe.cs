using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Native.Interop;
using Native.PageTable;

namespace Native.Perf.Paper;

/// <summary>One virtual-time price <c>perf calibrate</c> wrote: its value, its unit and how it was obtained.</summary>
/// <param name="Name">The price, as the cost tables head it.</param>
/// <param name="Value">The value written to the profile.</param>
/// <param name="Unit"><c>B/ns</c> or <c>ns</c>.</param>
/// <param name="Method">How it was measured, with the raw figures it came from.</param>
internal sealed record MeasuredPrice(string Name, double Value, string Unit, string Method);

/// <summary>The virtual-time prices measured on this host (<see cref="VirtualPriceProbe"/>).</summary>
/// <param name="Copy">Copy bandwidth: a page-sized <see cref="Cpu.Copy"/>.</param>
/// <param name="CopyLarge">A 64 KiB <see cref="Cpu.Copy"/>, printed beside it (not written).</param>
/// <param name="KernelEntry">Kernel entry: the host's null system call.</param>
/// <param name="Lock">An uncontended <see cref="KMutex"/> acquire and release.</param>
/// <param name="LockHandoff">A contended release to a waiter on another CPU.</param>
/// <param name="Wakeup">From <c>wakeup</c> until the sleeper can run.</param>
/// <param name="ContextSwitch">A CPU switching a thread out and in.</param>
/// <param name="Spin">One turn of the kernel's spin-wait on a shared word.</param>
internal sealed record VirtualPrices(
    MeasuredPrice Copy,
    MeasuredPrice CopyLarge,
    MeasuredPrice KernelEntry,
    MeasuredPrice Lock,
    MeasuredPrice LockHandoff,
    MeasuredPrice Wakeup,
    MeasuredPrice ContextSwitch,
    MeasuredPrice Spin)
{
    /// <summary>Every line calibrate prints, in the order of the cost tables (the 64 KiB copy after the page).</summary>
    public IEnumerable<MeasuredPrice> Lines => [Copy, CopyLarge, KernelEntry, Lock, LockHandoff, Wakeup, ContextSwitch, Spin];

    /// <summary><paramref name="profile"/> with every virtual-time price replaced by the measured one.</summary>
    public CostModel ApplyTo(CostModel profile) => profile with
    {
        CopyBytesPerNs = Copy.Value,
        KernelEntryNs = KernelEntry.Value,
        LockNs = Lock.Value,
        LockHandoffNs = LockHandoff.Value,
        WakeupNs = Wakeup.Value,
        ContextSwitchNs = ContextSwitch.Value,
        SpinNs = Spin.Value,
    };

    /// <summary>The methods in one clause, for the profile's source.</summary>
    public string Summary => string.Join("; ", new[] { Copy, KernelEntry, Lock, LockHandoff, Wakeup, ContextSwitch, Spin }.Select(p => $"{p.Name} = {p.Method}"));
}

/// <summary>
/// Measures the virtual-time prices of the <c>host</c> profile for <c>perf calibrate</c>: the work
/// that real time pays for by doing it, timed as the simulated machine does it in a timed trial
/// (real time, unchecked, threads pinned, no charges), each figure the median of up to 21 short
/// batches after a discarded warm-up, a batch loop ending early past its time budget on a busy host.
/// <list type="bullet">
/// <item>Copy bandwidth: <see cref="Cpu.Copy"/> of one page between two native-memory frames
/// mapped in <c>kernel_map</c> (what <c>Read</c>, <c>Write</c> and <c>uiomove</c> through an sf_buf
/// do), in bytes per ns. A 64 KiB copy is measured and printed beside it; the profile takes the
/// page, as the kernel copies through one ephemeral mapping, one page, at a time.</item>
/// <item>Kernel entry: the host's null system call, from CPU 0's kernel thread. The price stands
/// for <c>syscall</c>/<c>sysret</c>, which the simulator does not have: <see cref="Cpu.EnterKernel"/>
/// only counts (its real-time cost is printed for comparison).</item>
/// <item>Lock: an uncontended <see cref="KMutex"/> lock and unlock on CPU 0.</item>
/// <item>Lock hand-off: a <see cref="KMutex"/> ping-ponged between kernel threads on CPU 0 and
/// CPU 1, the holder releasing once the other has announced that it is about to lock. A pass is
/// one hand-off plus two flag stores crossing the cores (the announcement, and the new holder's
/// "got it"), so the hand-off is half the round trip less the host's cross-core round trip, and
/// at least half that round trip (one cache-line transfer).</item>
/// <item>Context switch: a <c>tsleep</c> on CPU 0 that times out at once: the thread switches out
/// of its CPU and back in (the scheduler's release and acquire) with no host wait.</item>
/// <item>Wakeup: half a sleep/wakeup round trip between kernel threads on CPU 0 and CPU 1 (each
/// wakes the other under a mutex interlock, then sleeps), less the context switch. Virtual time
/// makes a woken thread runnable one wakeup after the <c>wakeup</c> and charges the switch as it
/// takes its CPU, so half the round trip is wakeup + switch there too; at least one cache-line
/// transfer.</item>
/// <item>Spin turn: one iteration of the kernel's spin-wait on a shared word (a load,
/// <see cref="Cpu.Poll"/>, one <see cref="Thread.SpinWait(int)"/>: epoch-cache's wait loop), on CPU 0.</item>
/// </list>
/// With one host core (or no cross-core round trip) the two cross-CPU prices keep the default
/// profile's values, and say so.
/// </summary>
internal static class VirtualPriceProbe
{
    // Many short batches (a few hundred microseconds each): on a busy host a batch that a host
    // time slice interrupts is an outlier the median leaves out, where long batches all hold one.
    private const int Batches = 21;
    private const int LargeCopyPages = 16;

    /// <summary>Measures every price; <paramref name="scale"/> multiplies the operations per batch (tests run fewer).</summary>
    public static VirtualPrices Measure(double? crossCoreRoundTripNs, double scale = 1)
    {
        int Ops(int n) => Math.Max(2, (int)(n * scale)) & ~1; // even: the ping-pong counts passes in pairs
        bool twoCpus = HostCpu.IsPinningAvailable && HostCpu.AllowedCpus().Length >= 2 && crossCoreRoundTripNs is > 0;
        double line = crossCoreRoundTripNs ?? 0;
        using var m = new Machine(new MachineOptions
        {
            Cpus = twoCpus ? 2 : 1,
            PhysicalMemoryBytes = 16UL << 20,
            SfBufWindowPages = 16,
            KernelMapPages = 4 * LargeCopyPages,
            KernelMemoryPages = 16,
            Checked = false,
        });

        double pageCopyNs = 0, largeCopyNs = 0, lockNs = 0, enterNs = 0, syscallNs = 0, spinNs = 0, switchNs = 0;
        m.Run(0, () =>
        {
            var cpu = m.CurrentCpu;
            ulong src = MapFrames(m, LargeCopyPages), dst = MapFrames(m, LargeCopyPages);
            cpu.Fill(src, LargeCopyPages * Pte.PageSize, 0x5a);
            cpu.Fill(dst, LargeCopyPages * Pte.PageSize, 0);
            pageCopyNs = MedianOfBatches(TimeSpan.FromMilliseconds(300), () => TimeCopies(cpu, dst, src, Pte.PageSize, Ops(4_000)));
            largeCopyNs = MedianOfBatches(TimeSpan.FromMilliseconds(300), () => TimeCopies(cpu, dst, src, LargeCopyPages * Pte.PageSize, Ops(200)));

            var mutex = new KMutex("calibrate");
            lockNs = MedianOfBatches(TimeSpan.FromMilliseconds(150), () => TimeLocks(mutex, Ops(20_000)));
            enterNs = MedianOfBatches(TimeSpan.FromMilliseconds(100), () => TimeKernelEntries(cpu, Ops(20_000)));
            syscallNs = MedianOfBatches(TimeSpan.FromMilliseconds(200), () => TimeSystemCalls(Ops(1_000)));
            spinNs = MedianOfBatches(TimeSpan.FromMilliseconds(150), () => TimeSpinTurns(cpu, new Word(), Ops(5_000)));

            object channel = new();
            switchNs = MedianOfBatches(TimeSpan.FromMilliseconds(300), () => TimeSwitches(m, channel, Ops(500)));
        });

        double? handoffPassNs = twoCpus ? LockPingPong(m, Ops(200), TimeSpan.FromMilliseconds(600)) : null;
        double? halfSleepRoundTripNs = twoCpus ? SleepPingPong(m, Ops(50), TimeSpan.FromMilliseconds(1_200)) : null;

        var defaults = CostModel.Default;
        string noSecondCpu = "not measured (one host core, or no cross-core round trip): the default profile's value";
        return new VirtualPrices(
            new("copy", Round(Pte.PageSize / pageCopyNs, 2), "B/ns",
                F($"Cpu.Copy of one 4 KiB page between two frames mapped in kernel_map ({pageCopyNs:0.#} ns a page)")),
            new("copy, 64 KiB", Round(LargeCopyPages * Pte.PageSize / largeCopyNs, 2), "B/ns",
                F($"Cpu.Copy of 64 KiB between two 16-page kernel_map buffers ({largeCopyNs:0} ns); printed only, the profile takes the page")),
            new("kernel entry", Round(syscallNs, 1), "ns",
                F($"the host's null system call (getppid) from CPU 0: the simulator has no system-call boundary, Cpu.EnterKernel only counts ({enterNs:0.##} ns)")),
            new("lock", Round(lockNs, 1), "ns", "an uncontended KMutex Lock and Unlock on CPU 0"),
            handoffPassNs is double pass
                ? new("lock hand-off", Round(Math.Max(pass - line, line / 2), 1), "ns",
                    F($"a KMutex ping-ponged between CPU 0 and CPU 1: a pass, half the round trip ({pass:0} ns), less the host's cross-core round trip ({line:0} ns: the two turn flags a pass sends across), at least half of it"))
                : new("lock hand-off", defaults.LockHandoffNs, "ns", noSecondCpu),
            halfSleepRoundTripNs is double half
                ? new("wakeup", Round(Math.Max(half - switchNs, line / 2), 1), "ns",
                    F($"half a tsleep/wakeup round trip between CPU 0 and CPU 1 ({half:0} ns) less the context switch (virtual time charges a woken thread wakeup + switch), at least half the cross-core round trip"))
                : new("wakeup", defaults.WakeupNs, "ns", noSecondCpu),
            new("context switch", Round(switchNs, 1), "ns", "a tsleep on CPU 0 that times out at once: the thread switches out of its CPU and back in, no host wait"),
            new("spin turn", Round(spinNs, 1), "ns", "one turn of the kernel's spin-wait on a shared word (a load, Cpu.Poll, Thread.SpinWait(1)) on CPU 0"));
    }

    private static string F(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);

    /// <summary>Rounded, and never below the smallest positive figure at that precision: a price must stay positive.</summary>
    private static double Round(double value, int digits) => Math.Max(Math.Pow(10, -digits), Math.Round(value, digits));

    private static ulong MapFrames(Machine m, int pages)
    {
        ulong va = m.KernelMap.Alloc(pages, wait: false);
        if (va == 0)
        {
            throw new InvalidOperationException("kernel_map has no room for the copy buffers");
        }

        for (int i = 0; i < pages; i++)
        {
            m.KernelPmap.KEnter(va + ((ulong)i << Pte.PageShift), m.Physical.Alloc(AllocFlags.Zero));
        }

        return va;
    }

    /// <summary>A discarded warm-up batch, then up to <see cref="Batches"/> batches within <paramref name="budget"/>; the median ns per operation.</summary>
    private static double MedianOfBatches(TimeSpan budget, Func<double> batch)
    {
        long start = Stopwatch.GetTimestamp();
        batch();
        var samples = new List<double>(Batches);
        do
        {
            samples.Add(batch());
        }
        while (samples.Count < Batches && Stopwatch.GetElapsedTime(start) < budget);

        return Median(samples);
    }

    private static double Median(List<double> samples)
    {
        samples.Sort();
        int n = samples.Count;
        return n % 2 == 1 ? samples[n / 2] : (samples[(n / 2) - 1] + samples[n / 2]) / 2;
    }

    private static double TimeCopies(Cpu cpu, ulong dst, ulong src, int bytes, int n)
    {
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < n; i++)
        {
            cpu.Copy(dst, src, bytes);
        }

        return Stopwatch.GetElapsedTime(start).TotalNanoseconds / n;
    }

    private static double TimeLocks(KMutex mutex, int n)
    {
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < n; i++)
        {
            mutex.Lock();
            mutex.Unlock();
        }

        return Stopwatch.GetElapsedTime(start).TotalNanoseconds / n;
    }

    private static double TimeSystemCalls(int n)
    {
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < n; i++)
        {
            HostMemory.NullSyscall();
        }

        return Stopwatch.GetElapsedTime(start).TotalNanoseconds / n;
    }

    private static double TimeKernelEntries(Cpu cpu, int n)
    {
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < n; i++)
        {
            cpu.EnterKernel();
        }

        return Stopwatch.GetElapsedTime(start).TotalNanoseconds / n;
    }

    /// <summary>The spin loop of a CPU waiting for a store: the word stays zero, so every turn runs to the end.</summary>
    private static double TimeSpinTurns(Cpu cpu, Word word, int n)
    {
        int turns = 0;
        long start = Stopwatch.GetTimestamp();
        while (turns < n && Volatile.Read(ref word.Value) == 0)
        {
            cpu.Poll();
            Thread.SpinWait(1);
            turns++;
        }

        return Stopwatch.GetElapsedTime(start).TotalNanoseconds / turns;
    }

    private static double TimeSwitches(Machine m, object channel, int n)
    {
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < n; i++)
        {
            if (m.Sleep(channel, timeout: TimeSpan.Zero) != SleepResult.TimedOut)
            {
                throw new InvalidOperationException("a sleep with no waker did not time out");
            }
        }

        return Stopwatch.GetElapsedTime(start).TotalNanoseconds / n;
    }

    /// <summary>
    /// The lock ping-pong: pass <c>p</c> hands the mutex from CPU 0 to CPU 1 when even, back when
    /// odd. The taker announces <c>Want = p + 1</c> and locks (it spins); the holder, seeing the
    /// announcement, unlocks; the taker, holding it, stores <c>Got = p + 1</c>, which lets the
    /// other announce the next pass. CPU 0 times batches of passes and sets <c>StopAt</c> before
    /// the <c>Got</c> that CPU 1 reads next. Returns the median ns per pass.
    /// </summary>
    private static double LockPingPong(Machine m, int passesPerBatch, TimeSpan budget)
    {
        var mutex = new KMutex("calibrate hand-off");
        var flags = new PingPongFlags();
        var samples = new List<double>(Batches);
        var zero = m.StartThread("calibrate hand-off 0", () =>
        {
            try
            {
                mutex.Lock();
                Volatile.Write(ref flags.Started, 1);
                long start = Stopwatch.GetTimestamp(), batchStart = start, p = 0;
                bool warm = false;
                while (true)
                {
                    flags.SpinUntil(ref flags.Want, p + 1);
                    mutex.Unlock();
                    flags.SpinUntil(ref flags.Got, p + 1);
                    Volatile.Write(ref flags.Want, p + 2);
                    mutex.Lock();
                    p += 2;
                    if (p % passesPerBatch == 0)
                    {
                        long now = Stopwatch.GetTimestamp();
                        if (warm)
                        {
                            samples.Add(Stopwatch.GetElapsedTime(batchStart, now).TotalNanoseconds / passesPerBatch);
                        }

                        warm = true;
                        batchStart = now;
                        if (samples.Count == Batches || Stopwatch.GetElapsedTime(start, now) > budget)
                        {
                            Volatile.Write(ref flags.StopAt, p);
                        }
                    }

                    Volatile.Write(ref flags.Got, p);
                    if (p >= Volatile.Read(ref flags.StopAt))
                    {
                        break;
                    }
                }

                mutex.Unlock();
            }
            catch
            {
                Volatile.Write(ref flags.Aborted, 1);
                throw;
            }
        }, cpu: 0, bound: true);
        var one = m.StartThread("calibrate hand-off 1", () =>
        {
            try
            {
                flags.SpinUntil(ref flags.Started, 1);
                for (long p = 0; p < Volatile.Read(ref flags.StopAt); p += 2)
                {
                    Volatile.Write(ref flags.Want, p + 1);
                    mutex.Lock();
                    Volatile.Write(ref flags.Got, p + 1);
                    flags.SpinUntil(ref flags.Want, p + 2);
                    mutex.Unlock();
                    flags.SpinUntil(ref flags.Got, p + 2);
                }
            }
            catch
            {
                Volatile.Write(ref flags.Aborted, 1);
                throw;
            }
        }, cpu: 1, bound: true);
        zero.Join();
        one.Join();
        return samples.Count > 0 ? Median(samples) : throw new InvalidOperationException("the lock ping-pong finished no batch");
    }

    /// <summary>
    /// The sleep/wakeup ping-pong: CPU 0 gives the turn to CPU 1 and wakes it, then sleeps until
    /// the turn comes back; CPU 1 does the same the other way. Both test the turn under a mutex
    /// that <c>msleep</c> drops and retakes, so no wakeup is lost. Returns the median ns per half
    /// round trip.
    /// </summary>
    private static double SleepPingPong(Machine m, int roundTripsPerBatch, TimeSpan budget)
    {
        var mutex = new KMutex("calibrate sleep");
        var state = new SleepState();
        var samples = new List<double>(Batches);
        var one = m.StartThread("calibrate sleep 1", () =>
        {
            mutex.Lock();
            while (true)
            {
                while (state.Turn != 1 && !state.Stop)
                {
                    m.Sleep(state.One, mutex);
                }

                if (state.Stop)
                {
                    break;
                }

                state.Turn = 0;
                m.Wakeup(state.Zero);
            }

            mutex.Unlock();
        }, cpu: 1, bound: true);
        var zero = m.StartThread("calibrate sleep 0", () =>
        {
            long start = Stopwatch.GetTimestamp();
            try
            {
                for (int batch = 0; batch <= Batches; batch++)
                {
                    long batchStart = Stopwatch.GetTimestamp();
                    for (int i = 0; i < roundTripsPerBatch; i++)
                    {
                        mutex.Lock();
                        state.Turn = 1;
                        m.Wakeup(state.One);
                        while (state.Turn != 0)
                        {
                            m.Sleep(state.Zero, mutex);
                        }

                        mutex.Unlock();
                    }

                    if (batch > 0)
                    {
                        samples.Add(Stopwatch.GetElapsedTime(batchStart).TotalNanoseconds / (2.0 * roundTripsPerBatch));
                    }

                    if (batch > 0 && Stopwatch.GetElapsedTime(start) > budget)
                    {
                        break;
                    }
                }
            }
            finally
            {
                if (!mutex.IsOwned)
                {
                    mutex.Lock();
                }

                state.Stop = true;
                m.Wakeup(state.One);
                mutex.Unlock();
            }
        }, cpu: 0, bound: true);
        zero.Join();
        one.Join();
        return samples.Count > 0 ? Median(samples) : throw new InvalidOperationException("the sleep ping-pong finished no batch");
    }

    /// <summary>One shared word alone on its cache lines.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 256)]
    private sealed class Word
    {
        [FieldOffset(128)]
        public long Value;
    }

    /// <summary>The lock ping-pong's flags, each alone on its cache lines.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 768)]
    private sealed class PingPongFlags
    {
        [FieldOffset(128)]
        public long Want;

        [FieldOffset(256)]
        public long Got;

        [FieldOffset(384)]
        public long StopAt = long.MaxValue;

        [FieldOffset(512)]
        public int Started;

        [FieldOffset(520)]
        public int Aborted;

        /// <summary>Spins without a pause (the pass should time the hand-off, not a back-off) until <paramref name="word"/> reaches <paramref name="value"/>.</summary>
        public void SpinUntil(ref long word, long value)
        {
            while (Volatile.Read(ref word) < value)
            {
                if (Volatile.Read(ref Aborted) != 0)
                {
                    throw new InvalidOperationException("the other side of the lock ping-pong failed");
                }
            }
        }

        public void SpinUntil(ref int word, int value)
        {
            while (Volatile.Read(ref word) < value)
            {
                if (Volatile.Read(ref Aborted) != 0)
                {
                    throw new InvalidOperationException("the other side of the lock ping-pong failed");
                }
            }
        }
    }

    /// <summary>The sleep ping-pong's turn, under its mutex.</summary>
    private sealed class SleepState
    {
        public readonly object Zero = new();
        public readonly object One = new();
        public int Turn;
        public bool Stop;
    }
}
