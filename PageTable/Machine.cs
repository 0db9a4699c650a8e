using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using Native.Interop;

namespace Native.PageTable;

/// <summary>
/// A simulated SMP machine: physical memory in native page frames, a kernel page table and
/// per-process user page tables of raw PTE words, one software TLB per CPU, IPI mailboxes for
/// shootdowns, and kernel threads that run on the CPUs as real host threads pinned to real cores.
/// <para>
/// <c>Dispose</c> returns every native byte. Kernel threads must have exited first.
/// </para>
/// </summary>
public sealed unsafe partial class Machine : IDisposable
{
    private readonly NativeLedger _ledger = new();
    private readonly CpuCounters _counters;
    private readonly CpuShared* _shared;
    private readonly Cpu[] _cpus;
    private readonly Dictionary<object, List<KernelThread>> _sleepQueues = new(ReferenceEqualityComparer.Instance);
    private readonly Lock _sleepLock = new();

    // Deadlock detection (MachineOptions.DetectDeadlocks), all under _sleepLock: the kernel threads
    // that have not exited, a sequence number per sleep, the last time a thread was woken,
    // cancelled, started, ended or went to sleep other than to poll again, and how many joins by
    // threads outside the machine are in progress.
    private readonly bool _detectDeadlocks;
    private readonly List<KernelThread> _live = [];
    private long _sleepSeq;
    private long _lastProgress = Stopwatch.GetTimestamp();
    private int _outsideJoins;
    private readonly List<KernelThread> _threads = [];
    private readonly List<IContextSwitchHook> _hooks = [];
    private readonly List<string> _warnings = [];
    private readonly Meter _meter;
    private IContextSwitchHook[] _hookSnapshot = [];
    private long _longestExposureNs;
    private readonly List<(KernelThread Thread, Exception Fault)> _faults = [];
    private readonly List<string> _stoppedAtDispose = [];
    private ITlbFlushHook[] _flushHooks = [];
    private IPollHook[] _pollHooks = [];
    private IAlarmHook[] _alarmHooks = [];
    private long _alarmAtNs = long.MaxValue;
    private int _nextThreadId;
    private int _nextPid;
    private volatile bool _disposed;

    // Non-zero once the machine refuses operations: read on every memory access, so one word.
    private int _unusable;
    private Exception? _failure;
    private int _planted;

    /// <summary>Boots a machine with <paramref name="options"/> (the default machine when null).</summary>
    public Machine(MachineOptions? options = null)
    {
        Options = options ?? new MachineOptions();
        if (Options.Cpus < 1 || Options.Cpus > MachineOptions.MaxCpus)
        {
            throw new ArgumentOutOfRangeException(nameof(options), Options.Cpus, $"a machine has 1 to {MachineOptions.MaxCpus} CPUs");
        }

        if (Options.DeadlockQuiescence <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(options), Options.DeadlockQuiescence, "the deadlock quiescence must be positive");
        }

        if (Options.BroadcastPagesPerInstruction < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(options), Options.BroadcastPagesPerInstruction, "a broadcast invalidation covers at least one page");
        }

        if (Options.Shootdown == ShootdownMechanism.Broadcast && Options.Backend == MachineBackend.Host)
        {
            throw new ArgumentException("broadcast shootdowns are modelled on the simulated backend only (the host backend's shootdowns are real IPIs)", nameof(options));
        }

        Controller = Options.Time == MachineTime.Virtual ? CreateVirtualClock(Options) : Options.Controlled;
        _detectDeadlocks = Options.DetectDeadlocks && Controller == null;
        if (Options.Controlled != null && !Options.Checked)
        {
            throw new ArgumentException("controlled scheduling needs checked mode", nameof(options));
        }

        try
        {
            Cost = new CostTicks(Options.Cost);
            Host = Options.Backend == MachineBackend.Host ? HostMmu.Create(Options) : null;
            // Virtual time runs one CPU at a time: nothing is oversubscribed, and a spin lasts virtual time.
            Oversubscribed = Controller is not { IsVirtual: true } && (Options.Oversubscribed ?? Options.Cpus > HostCpu.AllowedCpus().Length);
            CrossCpuSpin = Options.CrossCpuSpin ?? (Oversubscribed ? TimeSpan.FromMicroseconds(5) : TimeSpan.FromMicroseconds(50));
            Physical = new PhysicalMemory(this, _ledger, Options.PhysicalMemoryBytes);
            Layout = new VmLayout(
                Options.SfBufWindowKvaPages,
                Options.KernelMapPages,
                Options.KernelMemoryPages,
                Options.Flavor != MachineFlavor.I386 ? Physical.Bytes : 0,
                Options.Cpus,
                pagedDirectMap: Options.ExclusivePageOwnership);
            Host?.ReserveKernel(Layout);
            KernelPmap = new KernelPmap(this, _ledger, Layout.KernelPages);
            _counters = new CpuCounters(_ledger, Options.Cpus);
            _shared = (CpuShared*)_ledger.AllocZeroed((nuint)(sizeof(CpuShared) * Options.Cpus), 128);
            AllCpusMask = CpuSet.AllBelow(Options.Cpus);
            _cpus = new Cpu[Options.Cpus];
            for (int i = 0; i < Options.Cpus; i++)
            {
                var tlb = new Tlb(_ledger, Options.TlbEntries, Options.TlbWays);
                _cpus[i] = new Cpu(this, i, tlb, _counters, _shared + i, Physical.FrameAddress(0));
            }

            SmpIpiMutex = new KMutex("smp_ipi_mtx", spinOnly: true);
            KernelMap = new KvaArena(this, Layout.KernelMap);
            KernelMemory = new KernelMemory(this, Layout.KernelMemory);
            Scheduler = CreateScheduler();
            if (Host != null)
            {
                AddContextSwitchHook(Host.Flushes);
            }

            _meter = MachineMetrics.Create(this);
        }
        catch
        {
            MachineMetrics.Retire(this);
            _ledger.FreeAll();
            Host?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// True when the machine has more simulated CPUs than the host gives the process cores, or
    /// when <see cref="MachineOptions.Oversubscribed"/> says so (a busy host).
    /// </summary>
    public bool Oversubscribed { get; }

    /// <summary>How long a wait on another CPU spins (servicing the mailbox) before it parks its host thread.</summary>
    public TimeSpan CrossCpuSpin { get; }

    /// <summary>The exception that failed the machine (a shootdown watchdog), or null.</summary>
    public Exception? Failure => Volatile.Read(ref _failure);

    /// <summary>Exceptions kernel threads ended with, in the order they ended.</summary>
    public IReadOnlyList<(KernelThread Thread, Exception Fault)> Faults
    {
        get
        {
            lock (_faults)
            {
                return [.. _faults];
            }
        }
    }

    /// <summary>Kernel threads <see cref="Dispose"/> found still running and stopped (or could not stop), with what became of them.</summary>
    public IReadOnlyList<string> StoppedAtDispose => _stoppedAtDispose;

    /// <summary>The configuration this machine was booted with.</summary>
    public MachineOptions Options { get; }

    /// <summary>Physical memory and the page descriptors.</summary>
    public PhysicalMemory Physical { get; }

    /// <summary>The virtual address map.</summary>
    public VmLayout Layout { get; }

    /// <summary>The kernel page table.</summary>
    public KernelPmap KernelPmap { get; }

    /// <summary>The <c>kernel_map</c> arena the original mechanisms allocate KVA from.</summary>
    public KvaArena KernelMap { get; }

    /// <summary>Permanently mapped kernel memory.</summary>
    public KernelMemory KernelMemory { get; }

    /// <summary>The simulated CPUs.</summary>
    public IReadOnlyList<Cpu> Cpus => _cpus;

    /// <summary>cpumask with every CPU's bit (<c>all_cpus</c>).</summary>
    public CpuSet AllCpusMask { get; }

    /// <summary>The global shootdown lock the original kernels used (<c>smp_ipi_mtx</c>), a spin mutex.</summary>
    public KMutex SmpIpiMutex { get; }

    /// <summary>Warnings about the configuration (for example, CPUs left unpinned).</summary>
    public IReadOnlyList<string> Warnings => _warnings;

    /// <summary>True when kernel threads are pinned to host cores.</summary>
    public bool PinsHostThreads => Scheduler.PinsHostThreads;

    /// <summary>Native bytes the machine holds; zero after <see cref="Dispose"/>.</summary>
    public long NativeBytes => _ledger.OutstandingBytes;

    /// <summary>The CPU of the calling kernel thread; throws when called from elsewhere.</summary>
    public Cpu CurrentCpu
    {
        get
        {
            var td = KernelThread.CurrentOrNull;
            if (td == null || !ReferenceEquals(td.Machine, this))
            {
                ThrowIfDisposed();
                throw new InvalidOperationException("this operation must run on a kernel thread of this machine (Machine.StartThread or Machine.Run)");
            }

            return td.Cpu ?? throw new InvalidOperationException($"{td} holds no CPU");
        }
    }

    internal CostTicks Cost { get; }

    /// <summary>The host backend's machine-dependent layer, or null on the simulated backend.</summary>
    internal HostMmu? Host { get; }

    internal NativeLedger Ledger => _ledger;

    internal Scheduler Scheduler { get; }

    /// <summary>The controlled scheduler (exploration), or null for real concurrency.</summary>
    internal ControlledScheduler? Controller { get; }

    /// <summary>Real or virtual time (<see cref="MachineOptions.Time"/>).</summary>
    public MachineTime Time => Options.Time;

    /// <summary>
    /// Virtual time: the latest time, in nanoseconds, that any kernel thread has reached (while
    /// none runs, when the last one stopped); 0 in real time. A run's elapsed virtual time is the
    /// difference of two readings taken while no kernel thread runs.
    /// </summary>
    public long VirtualNowNs => Controller is { IsVirtual: true } clock ? clock.NowNs : 0;

    /// <summary>Virtual time: the quantum in nanoseconds; 0 in real time.</summary>
    public long QuantumNs => Controller is { IsVirtual: true } clock ? clock.QuantumNs : 0;

    /// <summary>Virtual time: scheduling decisions taken so far (a measure of the simulator's own work); 0 in real time.</summary>
    public long VirtualSteps => Controller is { IsVirtual: true } clock ? clock.LongSteps : 0;

    private static ControlledScheduler CreateVirtualClock(MachineOptions options)
    {
        if (options.Controlled != null)
        {
            throw new ArgumentException("virtual time has its own scheduler: do not also set Controlled", nameof(options));
        }

        if (options.Backend != MachineBackend.Simulated)
        {
            throw new ArgumentException("virtual time needs the simulated backend (the host backend's MMU runs in real time)", nameof(options));
        }

        if (!options.Cost.CanRunVirtualTime)
        {
            throw new ArgumentException($"virtual time needs a cost profile with positive prices; '{options.Cost.Name}' has none (use 'default' or a calibrated 'host')", nameof(options));
        }

        if (options.Quantum < MachineOptions.MinQuantum || options.Quantum > MachineOptions.MaxQuantum)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.Quantum, $"the quantum must be from {MachineOptions.MinQuantum.TotalNanoseconds} ns to {MachineOptions.MaxQuantum.TotalNanoseconds} ns");
        }

        return new ControlledScheduler((long)options.Quantum.TotalNanoseconds);
    }

    internal static MachineEventSource Trace => MachineEventSource.Log;

    /// <summary>The host core simulated CPU <paramref name="cpu"/> runs on, or -1 when threads are unpinned.</summary>
    public int HostCoreOf(int cpu) => PinsHostThreads ? Scheduler.HostCoreOf(cpu) : -1;

    /// <summary>Which backend carries out memory management.</summary>
    public MachineBackend Backend => Options.Backend;

    /// <summary>What the host backend has done (remaps, the host kernel's TLB flushes); throws on the simulated backend.</summary>
    public HostMmuCounts HostCounts()
    {
        ThrowIfDisposed();
        return Host?.Counts() ?? throw new InvalidOperationException("this machine runs on the simulated backend; it has no host counts");
    }

    /// <summary>A snapshot of every counter, per CPU.</summary>
    public CounterSnapshot Counters()
    {
        ThrowIfDisposed();
        var values = new long[Options.Cpus, CounterNames.Count];
        for (int cpu = 0; cpu < Options.Cpus; cpu++)
        {
            for (int c = 0; c < CounterNames.Count; c++)
            {
                values[cpu, c] = _counters.Read(cpu, (Counter)c);
            }
        }

        return new CounterSnapshot(values);
    }

    /// <summary>
    /// Checked mode in virtual time: the longest exposure window closed so far, in nanoseconds
    /// (<see cref="Counter.ExposedNanoseconds"/>); 0 in real time and outside checked mode.
    /// </summary>
    public long LongestExposureNs => Volatile.Read(ref _longestExposureNs);

    /// <summary>
    /// Checked mode: closes every exposure window still open, as a trial ends (the CPUs keep their
    /// entries; the measurement stops). In virtual time each ends at the latest time any CPU has
    /// reached (<see cref="VirtualNowNs"/>), so a CPU left idle holding an old translation is
    /// exposed until the trial's end, not until its own clock, which idleness stops. Call it while
    /// no kernel thread runs, before reading the counters.
    /// </summary>
    public void CloseExposures()
    {
        ThrowIfDisposed();
        long endNs = VirtualNowNs;
        foreach (var cpu in _cpus)
        {
            cpu.CloseExposuresAtEnd(endNs);
        }
    }

    /// <summary>Keeps the longest exposure window (a maximum, so not a per-CPU counter).</summary>
    internal void RecordExposure(long ns)
    {
        long seen = Volatile.Read(ref _longestExposureNs);
        while (ns > seen)
        {
            long was = Interlocked.CompareExchange(ref _longestExposureNs, ns, seen);
            if (was == seen)
            {
                return;
            }

            seen = was;
        }
    }

    /// <summary>Creates a process address space with an empty user page table.</summary>
    public VmSpace CreateVmSpace()
    {
        ThrowIfUnusable();
        return new VmSpace(this, Interlocked.Increment(ref _nextPid), new UserPmap(this, _ledger));
    }

    /// <summary>
    /// Starts a kernel thread on a dedicated host thread. It runs on <paramref name="cpu"/> if
    /// that CPU is free (or any CPU when -1), bound to it when <paramref name="bound"/>.
    /// </summary>
    public KernelThread StartThread(string name, Action body, int cpu = -1, bool bound = false, VmSpace? vmspace = null)
    {
        ThrowIfUnusable();
        ArgumentNullException.ThrowIfNull(body);
        if (cpu < -1 || cpu >= Options.Cpus)
        {
            throw new ArgumentOutOfRangeException(nameof(cpu), cpu, $"the machine has CPUs 0 to {Options.Cpus - 1}");
        }

        if (bound && cpu < 0)
        {
            throw new ArgumentException("a bound thread needs a CPU", nameof(bound));
        }

        var td = new KernelThread(this, Interlocked.Increment(ref _nextThreadId), name, body, cpu, bound, vmspace);
        lock (_threads)
        {
            _threads.Add(td);
        }

        lock (_sleepLock)
        {
            _live.Add(td);
            NoteProgress();
        }

        Controller?.Register(td);
        td.Start();
        return td;
    }

    /// <summary>Runs <paramref name="body"/> on a kernel thread bound to <paramref name="cpu"/> and waits for it; rethrows its exception.</summary>
    public void Run(int cpu, Action body, VmSpace? vmspace = null) =>
        StartThread($"run-cpu{cpu}", body, cpu, bound: true, vmspace).Join();

    /// <summary>
    /// <see cref="Run(int, Action, VmSpace?)"/> with a time limit: throws <see cref="TimeoutException"/>
    /// when the body has not ended within <paramref name="timeout"/> (the thread keeps running;
    /// <see cref="Dispose"/> stops it).
    /// </summary>
    public void Run(int cpu, Action body, TimeSpan timeout, VmSpace? vmspace = null) =>
        StartThread($"run-cpu{cpu}", body, cpu, bound: true, vmspace).Join(timeout);

    /// <summary>Registers hooks called on every context switch and migration.</summary>
    public void AddContextSwitchHook(IContextSwitchHook hook)
    {
        ArgumentNullException.ThrowIfNull(hook);
        lock (_hooks)
        {
            _hooks.Add(hook);
            _hookSnapshot = [.. _hooks];
        }
    }

    /// <summary>Removes hooks added with <see cref="AddContextSwitchHook"/>; true if it was registered.</summary>
    public bool RemoveContextSwitchHook(IContextSwitchHook hook)
    {
        ArgumentNullException.ThrowIfNull(hook);
        lock (_hooks)
        {
            bool removed = _hooks.Remove(hook);
            _hookSnapshot = [.. _hooks];
            return removed;
        }
    }

    /// <summary>
    /// Registers a hook told about every whole-TLB flush on every CPU (address-space switches,
    /// flushes an IPI asks for, the deferred flush of an idle CPU), on the CPU's own thread.
    /// </summary>
    public void AddTlbFlushHook(ITlbFlushHook hook)
    {
        ArgumentNullException.ThrowIfNull(hook);
        lock (_hooks)
        {
            _flushHooks = [.. _flushHooks, hook];
        }
    }

    /// <summary>Removes a hook added with <see cref="AddTlbFlushHook"/>; true if it was registered.</summary>
    public bool RemoveTlbFlushHook(ITlbFlushHook hook)
    {
        ArgumentNullException.ThrowIfNull(hook);
        lock (_hooks)
        {
            int before = _flushHooks.Length;
            _flushHooks = [.. _flushHooks.Where(h => !ReferenceEquals(h, hook))];
            return _flushHooks.Length != before;
        }
    }

    /// <summary>
    /// Registers a hook called on a CPU's own thread at every <see cref="Cpu.Poll"/> (the explicit
    /// poll of a kernel loop that waits without touching memory, where a real CPU takes
    /// interrupts) and when a CPU that published itself idle while parked in a cross-CPU wait
    /// (oversubscribed machines) runs again.
    /// </summary>
    public void AddPollHook(IPollHook hook)
    {
        ArgumentNullException.ThrowIfNull(hook);
        lock (_hooks)
        {
            _pollHooks = [.. _pollHooks, hook];
        }
    }

    /// <summary>
    /// Registers a hook told when the machine's alarm (<see cref="RequestAlarm"/>) goes off: a
    /// one-shot timer interrupt in virtual time, taken by the first running CPU whose clock passes
    /// it at a memory access of kernel code (a copy, a read or a write), on that CPU's own thread.
    /// </summary>
    public void AddAlarmHook(IAlarmHook hook)
    {
        ArgumentNullException.ThrowIfNull(hook);
        lock (_hooks)
        {
            _alarmHooks = [.. _alarmHooks, hook];
        }
    }

    /// <summary>Removes a hook added with <see cref="AddAlarmHook"/>; true if it was registered.</summary>
    public bool RemoveAlarmHook(IAlarmHook hook)
    {
        ArgumentNullException.ThrowIfNull(hook);
        lock (_hooks)
        {
            int before = _alarmHooks.Length;
            _alarmHooks = [.. _alarmHooks.Where(h => !ReferenceEquals(h, hook))];
            return _alarmHooks.Length != before;
        }
    }

    /// <summary>
    /// Virtual time: sets the alarm to go off at <paramref name="atNs"/> if it is not set earlier
    /// (one alarm for all hooks; each hook asks again for its next time when told). A real CPU
    /// has a timer (the local APIC's) for this; the simulated one in real time has none, so
    /// outside virtual time this does nothing.
    /// </summary>
    public void RequestAlarm(long atNs)
    {
        if (Controller is not { IsVirtual: true })
        {
            return;
        }

        long seen = Volatile.Read(ref _alarmAtNs);
        while (atNs < seen)
        {
            long was = Interlocked.CompareExchange(ref _alarmAtNs, atNs, seen);
            if (was == seen)
            {
                return;
            }

            seen = was;
        }
    }

    /// <summary>When the alarm goes off (<see cref="long.MaxValue"/>: not set).</summary>
    internal long AlarmAtNs => Volatile.Read(ref _alarmAtNs);

    /// <summary>
    /// <paramref name="cpu"/>'s clock has passed the alarm at a memory access of its thread: takes
    /// the alarm (clears it) and tells the hooks. Not nested: a hook's own accesses (or waits) do
    /// not take it again, as a timer interrupt does not interrupt its own handler.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void RingAlarm(Cpu cpu)
    {
        long at = Volatile.Read(ref _alarmAtNs);
        if (at > cpu.ClockNs || KernelThread.CurrentOrNull is not { } td || !ReferenceEquals(td.Cpu, cpu) || td.InAlarm
            || Interlocked.CompareExchange(ref _alarmAtNs, long.MaxValue, at) != at)
        {
            return;
        }

        td.InAlarm = true;
        try
        {
            var hooks = Volatile.Read(ref _alarmHooks);
            for (int i = 0; i < hooks.Length; i++)
            {
                hooks[i].Alarm(cpu);
            }
        }
        finally
        {
            td.InAlarm = false;
        }
    }

    /// <summary>Removes a hook added with <see cref="AddPollHook"/>; true if it was registered.</summary>
    public bool RemovePollHook(IPollHook hook)
    {
        ArgumentNullException.ThrowIfNull(hook);
        lock (_hooks)
        {
            int before = _pollHooks.Length;
            _pollHooks = [.. _pollHooks.Where(h => !ReferenceEquals(h, hook))];
            return _pollHooks.Length != before;
        }
    }

    /// <summary>
    /// <c>msleep</c>: sleeps on <paramref name="channel"/>, giving the CPU up. If
    /// <paramref name="interlock"/> is given it is released atomically with going to sleep and
    /// retaken before returning. Returns why the sleep ended; a cancelled sleep (PCATCH) returns
    /// <see cref="SleepResult.Interrupted"/>.
    /// </summary>
    /// <exception cref="DeadlockException">
    /// The sleep can never end (<see cref="MachineOptions.DetectDeadlocks"/>): thrown with the
    /// interlock held, as on a return, either before going to sleep or after being chosen to report it.
    /// </exception>
    public SleepResult Sleep(object channel, KMutex? interlock = null, TimeSpan? timeout = null, CancellationToken cancellation = default) =>
        SleepCore(channel, interlock, timeout, joinTarget: null, cancellation);

    /// <summary>
    /// <see cref="Sleep"/>, or with <paramref name="joinTarget"/> the sleep of a kernel thread
    /// joining another (on the target itself, the channel its exit wakes): it returns at once if
    /// the target has exited (checked under the sleep lock, so the exit's wakeup cannot be missed),
    /// and it counts as stuck exactly when its target is (its timeout only ends in a
    /// <see cref="TimeoutException"/>, a report of its own).
    /// </summary>
    internal SleepResult SleepCore(object channel, KMutex? interlock, TimeSpan? timeout, KernelThread? joinTarget, CancellationToken cancellation)
    {
        ArgumentNullException.ThrowIfNull(channel);
        var td = KernelThread.Current;
        var cpu = td.Cpu ?? throw new InvalidOperationException($"{td} holds no CPU");
        ThrowIfStopping();
        td.AssertMaySwitch("msleep");
        if (cancellation.IsCancellationRequested)
        {
            return SleepResult.Interrupted;
        }

        cpu.SchedulingPoint();

        DeadlockException? report = null;
        lock (_sleepLock)
        {
            if (joinTarget is { HasExited: true })
            {
                return SleepResult.Woken;
            }

            if (!_sleepQueues.TryGetValue(channel, out var queue))
            {
                queue = [];
                _sleepQueues.Add(channel, queue);
            }

            td.Wakeup.Reset();
            td.SleepChannel = channel;
            queue.Add(td);
            td.SleepInterlock = interlock;
            td.SleepTimed = timeout.HasValue && joinTarget == null;
            td.SleepCancellable = cancellation.CanBeCanceled;
            td.JoinTarget = joinTarget;
            td.SleepSeq = ++_sleepSeq;

            // Going back to sleep on the channel whose timeout just ended the last sleep is a
            // poll, not progress: a machine of pollers stays quiet, and a poller waits since its
            // first sleep.
            if (!ReferenceEquals(td.TimedOutOn, channel))
            {
                td.SleepSince = Stopwatch.GetTimestamp();
                NoteProgress();
            }

            td.TimedOutOn = null;
            if (_detectDeadlocks && _outsideJoins > 0)
            {
                report = DetectDeadlockLocked(td);
            }
        }

        if (report != null)
        {
            // This sleep closed the deadlock: it never started (dequeued by the detector), and the
            // interlock is still held, so the caller's clean-up runs as after a return.
            td.SleepInterlock = null;
            throw report;
        }

        // Queued before the interlock is dropped: a wakeup after the unlock cannot be lost.
        interlock?.Unlock();
        cpu.Count(Counter.Sleeps);
        Trace.Sleep(td.Id, cpu.Id);
        Scheduler.Release(td);

        if (Controller != null)
        {
            long deadline = timeout is { } limit && Controller.IsVirtual ? td.ReadyAtNs + (long)limit.TotalNanoseconds : long.MaxValue;
            Controller.WaitUntil(td, () => td.Wakeup.IsSet || cancellation.IsCancellationRequested || IsStopping, timed: timeout.HasValue, deadline);
        }
        else
        {
            // Why it ended (a wakeup, the timeout or a cancellation) is decided below, under the
            // lock: a wakeup may have dequeued us first.
            td.WaitForWakeup(timeout ?? Timeout.InfiniteTimeSpan, cancellation);
        }

        SleepResult result;
        lock (_sleepLock)
        {
            if (td.SleepChannel == null)
            {
                result = SleepResult.Woken; // a wakeup dequeued us, even if a cancel raced it
                report = td.PendingDeadlock; // or the detector did, to report a deadlock
                td.PendingDeadlock = null;
                if (report == null)
                {
                    td.InReportedDeadlock = false;
                }
            }
            else
            {
                Dequeue(td);
                if (cancellation.IsCancellationRequested)
                {
                    result = SleepResult.Interrupted;
                    td.InReportedDeadlock = false;
                    NoteProgress();
                }
                else
                {
                    result = SleepResult.TimedOut;
                    td.TimedOutOn = channel;
                }
            }

            td.JoinTarget = null;
            td.SleepInterlock = null;
        }

        ThrowIfStopping();

        if (result == SleepResult.Woken && Controller is { IsVirtual: true })
        {
            td.ReadyAtNs += Cost.Wakeup.Ns; // from wakeup until it can run
        }

        Scheduler.Acquire(td);
        interlock?.Lock();
        if (report != null)
        {
            throw report;
        }

        return result;
    }

    /// <summary><c>wakeup</c>: wakes every thread sleeping on <paramref name="channel"/>; returns how many.</summary>
    public int Wakeup(object channel) => WakeupCore(channel, int.MaxValue);

    /// <summary><c>wakeup_one</c>: wakes the longest sleeper on <paramref name="channel"/>; returns 0 or 1.</summary>
    public int WakeupOne(object channel) => WakeupCore(channel, 1);

    /// <summary>Kernel threads asleep in <see cref="Sleep"/> right now, on any channel.</summary>
    public int SleepingThreads
    {
        get
        {
            lock (_sleepLock)
            {
                return _sleepQueues.Values.Sum(q => q.Count);
            }
        }
    }

    /// <summary>Kernel threads that have not exited.</summary>
    public IReadOnlyList<KernelThread> LiveThreads()
    {
        lock (_threads)
        {
            return _threads.Where(t => !t.HasExited).ToArray();
        }
    }

    /// <summary>
    /// Frees every native byte. Kernel threads still running are stopped first: their waits end
    /// and their next machine operation throws <see cref="MachineStoppedException"/>; each is
    /// listed in <see cref="StoppedAtDispose"/>. Never throws for them, so an exception already
    /// propagating through a <c>using</c> is not hidden.
    /// </summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        var live = LiveThreads();
        if (live.Count > 0)
        {
            StopThreads(live);
        }

        // Under the metrics lock: a listener's callback either ran before or sees the machine disposed.
        MachineMetrics.Retire(this, () =>
        {
            _disposed = true;
            Interlocked.Or(ref _unusable, UnusableDisposed);
        });
        _meter.Dispose();
        _ledger.FreeAll();
        Host?.Dispose();
        foreach (var cpu in _cpus)
        {
            cpu.DisposeDoorbell();
        }
    }

    /// <summary>One line per fact of the configuration.</summary>
    public string Describe()
    {
        var pin = PinsHostThreads
            ? string.Join(", ", Enumerable.Range(0, Options.Cpus).Select(c => $"cpu{c}->core{HostCoreOf(c)}"))
            : "unpinned";
        return string.Join(Environment.NewLine,
            $"backend         {(Host != null ? "host MMU (memfd physical memory, mmap(MAP_FIXED) remaps, the host kernel's shootdowns)" : "simulated")}",
            $"cpus            {Options.Cpus} ({pin})",
            $"flavor          {Options.Flavor}{Options.Flavor switch
            {
                MachineFlavor.Amd64 => $" (direct map at 0x{VmLayout.DMAP_BASE:x}, {Layout.DirectMapBytes >> 20} MiB)",
                MachineFlavor.Amd64Xpfo => $" (direct map of 4 KiB pages at 0x{VmLayout.DMAP_BASE:x}, {Layout.DirectMapBytes >> 20} MiB, user pages removed while user space owns them)",
                _ => " (no direct map)",
            }}",
            $"physical memory {Physical.Bytes >> 20} MiB, {Physical.FrameCount} frames of {Pte.PageSize} B",
            $"tlb             {Options.TlbEntries} entries, {Options.TlbWays}-way, per cpu",
            $"maxusers        {Options.MaxUsers} (nsfbufs default {Options.DefaultNsfbufs})",
            $"kva             {Layout.SfBufWindow}",
            $"                {Layout.Fixmap}",
            $"                {Layout.KernelMap}",
            $"                {Layout.KernelMemory}",
            $"checked mode    {(Options.Checked ? "on (stale-translation oracle)" : "off")}",
            $"cost profile    {Options.Cost}");
    }

    internal void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    /// <summary>True once disposed.</summary>
    internal bool IsDisposed => _disposed;

    /// <summary>True once disposed, failed or stopping; read on every memory access, so one volatile word.</summary>
    internal bool IsUnusable => Volatile.Read(ref _unusable) != 0;

    /// <summary>True while <see cref="Dispose"/> stops live kernel threads (and after).</summary>
    internal bool IsStopping => (Volatile.Read(ref _unusable) & (UnusableStopping | UnusableDisposed)) != 0;

    /// <summary>Refuses an operation on a disposed, failed or stopping machine with a clear error.</summary>
    internal void ThrowIfUnusable()
    {
        if (!IsUnusable)
        {
            return;
        }

        ThrowIfDisposed();
        ThrowIfStopping();
        var failure = Failure!;
        throw new MachineFailedException($"the machine has failed and refuses further operations: {failure.Message}", failure);
    }

    internal void ThrowIfStopping()
    {
        if (IsStopping)
        {
            throw new MachineStoppedException("the machine is being disposed: kernel threads still running are stopped");
        }
    }

    /// <summary>Marks the machine failed (first failure wins): later operations refuse.</summary>
    internal void Fail(Exception failure)
    {
        Interlocked.CompareExchange(ref _failure, failure, null);
        lock (_threads)
        {
            Interlocked.Or(ref _unusable, UnusableFailed);
        }
    }

    /// <summary>True when the planted bug is switched on (tests only, see Machine.TestHooks.cs).</summary>
    internal bool Planted(PlantedBug bug) => (Volatile.Read(ref _planted) & (int)bug) != 0;

    internal void ReportFault(KernelThread td, Exception fault)
    {
        lock (_faults)
        {
            _faults.Add((td, fault));
        }

        Trace.ThreadFaulted(td.Id, td.Name, fault.GetType().Name, fault.Message);
    }

    internal Cpu CpuAt(int id) => _cpus[id];

    internal CpuShared* SharedOf(int cpu) => _shared + cpu;

    /// <summary>The PTE word the MMU walks for <paramref name="va"/> on <paramref name="cpu"/>, or null.</summary>
    internal ulong* PteAddress(Cpu cpu, ulong va)
    {
        if (va >= VmLayout.DMAP_BASE)
        {
            return KernelPmap.Vtopte(va);
        }

        return VmLayout.IsUser(va) && cpu.LoadedPmap is { } pmap ? pmap.PteAddress(va) : null;
    }

    internal long ReadCounter(int cpu, Counter counter) => _counters.Read(cpu, counter);

    internal void OnSwitchIn(Cpu cpu, KernelThread td, int migratedFrom)
    {
        if (_hookSnapshot.Length == 0)
        {
            return;
        }

        // The hooks' PTE stores (kmap_local's restores) are one mapping operation of the thread.
        KernelPmap.EnterOperation();
        try
        {
            foreach (var hook in _hookSnapshot)
            {
                hook.SwitchIn(cpu, td, migratedFrom);
            }
        }
        finally
        {
            KernelPmap.LeaveOperation();
        }
    }

    internal void OnSwitchOut(Cpu cpu, KernelThread td)
    {
        if (_hookSnapshot.Length == 0)
        {
            return;
        }

        // The hooks' PTE stores (kmap_local's saves) are one mapping operation of the thread.
        KernelPmap.EnterOperation();
        try
        {
            foreach (var hook in _hookSnapshot)
            {
                hook.SwitchOut(cpu, td);
            }
        }
        finally
        {
            KernelPmap.LeaveOperation();
        }
    }

    internal void ThreadExited(KernelThread td)
    {
        Wakeup(td);
        lock (_sleepLock)
        {
            _live.Remove(td);
            NoteProgress();

            // Its clean-up may have freed nothing: what it left behind may still be a deadlock.
            if (_detectDeadlocks && _outsideJoins > 0)
            {
                DetectDeadlockLocked(null);
            }
        }
    }

    /// <summary>
    /// A thread outside the machine starts (<paramref name="delta"/> 1) or stops (-1) joining
    /// <paramref name="td"/>: while it does, the machine's threads are all it waits for, and a
    /// deadlock among them is reported.
    /// </summary>
    internal void OutsideJoin(KernelThread td, int delta)
    {
        lock (_sleepLock)
        {
            td.OutsideJoiners += delta;
            _outsideJoins += delta;
        }
    }

    /// <summary>Looks for a deadlock now (an outside joiner does, periodically, to see the quiet rule apply).</summary>
    internal void CheckForDeadlock()
    {
        if (!_detectDeadlocks)
        {
            return;
        }

        lock (_sleepLock)
        {
            DetectDeadlockLocked(null);
        }
    }

    private const int UnusableDisposed = 1;
    private const int UnusableFailed = 2;
    private const int UnusableStopping = 4;

    private void StopThreads(IReadOnlyList<KernelThread> live)
    {
        lock (_threads)
        {
            Interlocked.Or(ref _unusable, UnusableStopping);
        }

        Controller?.Abort("the machine was disposed with kernel threads still running");
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            // Wake every wait; a thread that enters a new one is woken again on the next pass.
            lock (_threads)
            {
                foreach (var td in _threads)
                {
                    if (!td.HasExited)
                    {
                        td.Wakeup.Set();
                        td.CpuGranted.Release();
                    }
                }
            }

            foreach (var cpu in _cpus)
            {
                cpu.RingAlways();
            }

            if (live.All(t => t.WaitExited(TimeSpan.FromMilliseconds(10))) || DateTime.UtcNow > deadline)
            {
                break;
            }
        }

        foreach (var td in live)
        {
            _stoppedAtDispose.Add(td.HasExited
                ? $"{td}: stopped ({td.Fault?.GetType().Name ?? "ended"})"
                : $"{td}: could not be stopped (blocked outside the machine's wait primitives)");
        }
    }
    /// <summary>The registered TLB flush hooks (read on every whole-TLB flush; usually empty).</summary>
    internal ITlbFlushHook[] FlushHooks => Volatile.Read(ref _flushHooks);

    /// <summary>The registered poll hooks (read at every <see cref="Cpu.Poll"/>; usually empty).</summary>
    internal IPollHook[] PollHooks => Volatile.Read(ref _pollHooks);

    private Scheduler CreateScheduler()
    {
        int[] hostCores = HostCpu.IsPinningAvailable ? HostCpu.AllowedCpus() : [];
        bool pin = Options.PinThreads;
        if (pin && hostCores.Length == 0)
        {
            _warnings.Add("thread pinning is unavailable on this platform: kernel threads run unpinned");
            pin = false;
        }
        else if (pin && Options.Cpus > hostCores.Length)
        {
            _warnings.Add($"{Options.Cpus} simulated CPUs on {hostCores.Length} host cores: kernel threads run unpinned");
            pin = false;
        }

        return new Scheduler(this, Options.Cpus, hostCores.Length == 0 ? [0] : hostCores, pin);
    }

    private int WakeupCore(object channel, int max)
    {
        ArgumentNullException.ThrowIfNull(channel);
        if (Controller != null && KernelThread.CurrentOrNull is { Cpu: { } current } waker && ReferenceEquals(waker.Machine, this))
        {
            current.SchedulingPoint();
        }

        int woken = 0;
        lock (_sleepLock)
        {
            if (_sleepQueues.TryGetValue(channel, out var queue))
            {
                while (woken < max && queue.Count > 0)
                {
                    var td = queue[0];
                    Dequeue(td);
                    td.Wakeup.Set();
                    woken++;
                }

                NoteProgress();
            }
        }

        if (woken > 0 && KernelThread.CurrentOrNull is { Cpu: { } cpu } self && ReferenceEquals(self.Machine, this))
        {
            cpu.Count(Counter.Wakeups, woken);
            cpu.VirtualNotify();
        }

        return woken;
    }

    private void NoteProgress() => _lastProgress = Stopwatch.GetTimestamp();

    /// <summary>
    /// The deadlock rule (<see cref="MachineOptions.DetectDeadlocks"/>), under the sleep lock:
    /// when every live kernel thread is stuck, at least two of them or one left from an earlier
    /// report, and a thread outside the machine joins one of them, the sleeper that went to sleep
    /// last (a joiner only if every one joins) is chosen: returned when it is
    /// <paramref name="self"/>, which then throws before sleeping; otherwise dequeued and woken to
    /// throw the report from its sleep.
    /// </summary>
    private DeadlockException? DetectDeadlockLocked(KernelThread? self)
    {
        if (IsUnusable || _live.Count == 0)
        {
            return null;
        }

        bool quiet = Stopwatch.GetElapsedTime(_lastProgress) >= Options.DeadlockQuiescence;
        bool awaited = false, leftFromAReport = false;
        KernelThread? victim = null;
        foreach (var td in _live)
        {
            if (!IsStuck(td, quiet, 0))
            {
                return null;
            }

            awaited |= td.OutsideJoiners > 0;
            leftFromAReport |= td.InReportedDeadlock;
            if (victim == null
                || (td.JoinTarget == null && victim.JoinTarget != null)
                || ((td.JoinTarget == null) == (victim.JoinTarget == null) && td.SleepSeq > victim.SleepSeq))
            {
                victim = td;
            }
        }

        if (!awaited || victim == null || (_live.Count < 2 && !leftFromAReport))
        {
            return null;
        }

        long now = Stopwatch.GetTimestamp();
        var waits = _live.OrderBy(t => t.SleepSeq).Select(t => DescribeWait(t, now)).ToArray();
        string rule = quiet && _live.Exists(t => t.SleepTimed)
            ? $"every kernel thread of the machine has been asleep, with no thread woken, started or ended, for {Options.DeadlockQuiescence.TotalSeconds:0.#} s or more, polling or waiting for a wakeup"
            : "every kernel thread of the machine is asleep waiting for a wakeup that only another of them could give";
        var report = new DeadlockException(
            $"deadlock: {rule}, and a thread outside the machine waits for them; reported to {victim}, which went to sleep last. Waiting: {string.Join("; ", waits)}",
            waits);
        // The others stay reportable on their own if the victim's clean-up does not free them.
        foreach (var td in _live)
        {
            td.InReportedDeadlock = !ReferenceEquals(td, victim);
        }

        Dequeue(victim);
        NoteProgress();
        if (ReferenceEquals(victim, self))
        {
            return report;
        }

        victim.PendingDeadlock = report;
        victim.Wakeup.Set();
        return null;
    }

    /// <summary>
    /// True when nothing but another kernel thread can end <paramref name="td"/>'s wait: asleep
    /// with no cancellation and no timeout (a timeout counts only once the machine is
    /// <paramref name="quiet"/>), or joining a thread that is stuck (or a cycle of joins).
    /// </summary>
    private bool IsStuck(KernelThread td, bool quiet, int depth)
    {
        if (td.SleepChannel == null || td.SleepCancellable || (td.SleepTimed && !quiet))
        {
            return false; // running, runnable, spinning, blocked on a mutex, being woken, or ended from outside or by time
        }

        if (td.JoinTarget is not { } target)
        {
            return true;
        }

        return !target.HasExited && (depth >= _live.Count || IsStuck(target, quiet, depth + 1));
    }

    private static string DescribeWait(KernelThread td, long now)
    {
        var channel = td.SleepChannel!;
        string what = td.JoinTarget is { } target
            ? $"joining {target}"
            : channel.GetType() == typeof(object)
                ? $"asleep on channel object#{RuntimeHelpers.GetHashCode(channel):x}"
                : $"asleep on {channel}";
        string interlock = td.SleepInterlock is { } mutex ? $" (interlock {mutex.Name})" : "";
        string timed = td.SleepTimed ? ", with a timeout" : "";
        return $"{td} {what}{interlock}{timed} for {Stopwatch.GetElapsedTime(td.SleepSince, now).TotalMilliseconds:0} ms";
    }

    private void Dequeue(KernelThread td)
    {
        var channel = td.SleepChannel!;
        var queue = _sleepQueues[channel];
        queue.Remove(td);
        if (queue.Count == 0)
        {
            _sleepQueues.Remove(channel);
        }

        td.SleepChannel = null;
    }
}

/// <summary>Why <see cref="Machine.Sleep"/> returned.</summary>
public enum SleepResult
{
    /// <summary>A wakeup on the channel.</summary>
    Woken,

    /// <summary>The cancellation token fired (PCATCH and a signal: EINTR).</summary>
    Interrupted,

    /// <summary>The timeout elapsed (EWOULDBLOCK).</summary>
    TimedOut,
}

/// <summary>
/// Told about every whole-TLB flush of a CPU, on that CPU's own thread, before and after it
/// happens: NetBSD's emap samples its generation before a flush and publishes it after, so that
/// flushes done for other reasons also serve its consumers. Keep it short.
/// </summary>
public interface ITlbFlushHook
{
    /// <summary><paramref name="cpu"/> is about to flush (all entries when <paramref name="global"/>, else the non-global ones); the value returned is passed to <see cref="Flushed"/>.</summary>
    long Flushing(Cpu cpu, bool global);

    /// <summary>The flush announced by <see cref="Flushing"/> is done.</summary>
    void Flushed(Cpu cpu, bool global, long token);
}

/// <summary>Called on a CPU's own thread at every <see cref="Cpu.Poll"/> and after an idle park; keep it short and never wait in it.</summary>
public interface IPollHook
{
    /// <summary><paramref name="cpu"/>'s thread polls.</summary>
    void Polled(Cpu cpu);
}

/// <summary>Told when the machine's alarm goes off (<see cref="Machine.RequestAlarm"/>), on the thread of the CPU that takes it.</summary>
public interface IAlarmHook
{
    /// <summary>The alarm went off on <paramref name="cpu"/> (its own thread, in kernel code between two memory accesses).</summary>
    void Alarm(Cpu cpu);
}

/// <summary>Called on the switching thread at every context switch; keep it short.</summary>
public interface IContextSwitchHook
{
    /// <summary><paramref name="thread"/> starts running on <paramref name="cpu"/>; <paramref name="migratedFrom"/> is its previous CPU on a migration, else -1.</summary>
    void SwitchIn(Cpu cpu, KernelThread thread, int migratedFrom);

    /// <summary><paramref name="thread"/> is about to give <paramref name="cpu"/> up.</summary>
    void SwitchOut(Cpu cpu, KernelThread thread);
}
