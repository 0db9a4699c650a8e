namespace Native.PageTable;

/// <summary>Which architecture's kernel address space the machine imitates.</summary>
public enum MachineFlavor
{
    /// <summary>amd64: all of physical memory is permanently mapped by the direct map.</summary>
    Amd64,

    /// <summary>i386: no direct map; every kernel access to an arbitrary page needs an ephemeral mapping.</summary>
    I386,

    /// <summary>
    /// amd64 with exclusive page frame ownership (XPFO, Linux RFC 2016-2019): the direct map is
    /// made of 4 KiB kernel PTEs, translated through the TLB like any page-mapped kernel address
    /// (no permanent fast path), and a page given to user space or the page cache
    /// (<see cref="AllocFlags.User"/>) is removed from it while user space owns it
    /// (<c>xpfo_alloc_pages</c>), restored when freed (<c>xpfo_free_pages</c>) or, around kernel
    /// accesses, by the strategy (<c>xpfo_kmap</c> / <c>xpfo_kunmap</c>). Kernel-owned frames stay
    /// mapped. What flushes a removed translation is the installed policy's
    /// (<see cref="IPageOwnershipPolicy"/>); without one nothing is flushed, which is sound only
    /// while nothing reaches user pages through the direct map (every strategy but the XPFO ones).
    /// </summary>
    Amd64Xpfo,
}

/// <summary>How a machine keeps time.</summary>
public enum MachineTime
{
    /// <summary>
    /// Real time: every simulated CPU runs on its own host thread at once, and the cost profile's
    /// charges are busy-waits; throughput is host wall-clock time.
    /// </summary>
    Real,

    /// <summary>
    /// Virtual time: one CPU runs at a time and every CPU has a clock in nanoseconds that only
    /// priced events advance (the cost profile, including its virtual-time prices: copies, kernel
    /// entry, locks, wakeups, switches, spins); the runnable CPU with the smallest clock runs
    /// next. A run's figures depend only on the workload, the strategy and the profile.
    /// </summary>
    Virtual,
}

/// <summary>How the machine delivers a remote TLB invalidation (a shootdown) to its targets.</summary>
public enum ShootdownMechanism
{
    /// <summary>
    /// An IPI per running target, serviced by a handler on the target (FreeBSD's
    /// <c>smp_targeted_tlb_shootdown</c>, Linux's <c>flush_tlb_func</c> via <c>on_each_cpu_cond_mask</c>).
    /// </summary>
    Ipi,

    /// <summary>
    /// Broadcast invalidation hardware: the initiator issues invalidation instructions that reach
    /// the targets' TLBs without interrupting them, then waits for their completion (AMD
    /// <c>INVLPGB</c> + <c>TLBSYNC</c>, as Linux's <c>invlpgb_kernel_range_flush</c> issues them;
    /// Arm64 <c>TLBI ...IS</c> + <c>DSB ISH</c>). No handler runs on a target and none is priced.
    /// </summary>
    Broadcast,
}

/// <summary>The configuration of a simulated machine. The defaults are the embedded default machine.</summary>
public sealed record MachineOptions
{
    /// <summary>Most CPUs a machine may have: as many as a <see cref="CpuSet"/> can name.</summary>
    public const int MaxCpus = CpuSet.Capacity;

    /// <summary>Simulated CPUs (default 2). More than the host has is allowed, unpinned, with a warning.</summary>
    public int Cpus { get; init; } = 2;

    /// <summary>Physical memory in bytes (default 512 MiB; touched lazily).</summary>
    public ulong PhysicalMemoryBytes { get; init; } = 512UL << 20;

    /// <summary>amd64 (with a direct map), i386 (without), or amd64 with exclusive page frame ownership (a page-mapped direct map without user pages).</summary>
    public MachineFlavor Flavor { get; init; } = MachineFlavor.Amd64;

    /// <summary>
    /// True on <see cref="MachineFlavor.Amd64Xpfo"/>: the direct map is page-mapped, translated
    /// through the TLB, and holds no page while user space owns it.
    /// </summary>
    public bool ExclusivePageOwnership => Flavor == MachineFlavor.Amd64Xpfo;

    /// <summary>TLB entries per CPU (default 64).</summary>
    public int TlbEntries { get; init; } = 64;

    /// <summary>TLB associativity (default 4 ways).</summary>
    public int TlbWays { get; init; } = 4;

    /// <summary>Pages of the sf_buf window; null means FreeBSD's <c>nsfbufs</c> for this memory size.</summary>
    public int? SfBufWindowPages { get; init; }

    /// <summary>Pages of the <c>kernel_map</c> arena (default 8192 = 32 MiB).</summary>
    public int KernelMapPages { get; init; } = 8192;

    /// <summary>Pages of permanently mapped kernel memory (default 16384 = 64 MiB).</summary>
    public int KernelMemoryPages { get; init; } = 16384;

    /// <summary>How shootdowns reach their targets (default <see cref="ShootdownMechanism.Ipi"/>).</summary>
    public ShootdownMechanism Shootdown { get; init; } = ShootdownMechanism.Ipi;

    /// <summary>
    /// <see cref="ShootdownMechanism.Broadcast"/>: the most pages one invalidation instruction covers
    /// (default 8). AMD reports its limit per part in CPUID Fn8000_0008 EDX[15:0] (Linux's
    /// <c>invlpgb_count_max</c>); 8 is an assumed value, not a measured one. 1 models Arm64 without
    /// the range operations of FEAT_TLBIRANGE (one <c>TLBI VAALE1IS</c> per page).
    /// </summary>
    public int BroadcastPagesPerInstruction { get; init; } = 8;

    /// <summary>Checked mode: the stale-translation oracle and caller checks on every access (default on).</summary>
    public bool Checked { get; init; } = true;

    /// <summary>Pin kernel threads to host cores (default on, where the host allows it).</summary>
    public bool PinThreads { get; init; } = true;

    /// <summary>
    /// The backend (default <see cref="MachineBackend.Simulated"/>). <see cref="MachineBackend.Host"/>
    /// needs Linux x64, at most one CPU per host core, pinned threads and the zero cost profile.
    /// </summary>
    public MachineBackend Backend { get; init; } = MachineBackend.Simulated;

    /// <summary>The cost profile (default <see cref="CostModel.Zero"/>).</summary>
    public CostModel Cost { get; init; } = CostModel.Zero;

    /// <summary>How long a shootdown waits for acknowledgements before it reports a stuck CPU.</summary>
    public TimeSpan ShootdownWatchdog { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// How long a wait on another CPU (IPI acknowledgements, <c>smp_ipi_mtx</c>, a mutex) spins
    /// before it parks its host thread; null picks 50 µs, or 5 µs when the machine is
    /// <see cref="Oversubscribed"/> (so a descheduled CPU's thread gets the core sooner).
    /// </summary>
    public TimeSpan? CrossCpuSpin { get; init; }

    /// <summary>
    /// Run as on an oversubscribed host: cross-CPU waits park after 5 µs, a parked CPU publishes
    /// itself idle, a woken sleeper does not spin. Null (the default) decides by the CPU count:
    /// more simulated CPUs than host cores. Set it when other processes keep the host's cores
    /// busy, so that a CPU whose host thread is descheduled is not spun for.
    /// </summary>
    public bool? Oversubscribed { get; init; }

    /// <summary>
    /// Report a wait that can never end with a <see cref="DeadlockException"/> instead of hanging
    /// (default on). The rule: a thread outside the machine is joining one of its live kernel
    /// threads (<see cref="KernelThread.Join"/>, <see cref="Machine.Run(int, Action, VmSpace?)"/>),
    /// and every live kernel thread, at least two of them, is stuck: asleep in
    /// <see cref="Machine.Sleep"/> with no timeout and no cancellation, or joining a stuck thread.
    /// A thread that holds or waits for a CPU, spins, or blocks on a mutex can still run, and a
    /// cancellable sleep can be ended from outside: none of these is ever stuck. A sleep with a
    /// timeout (a poll such as lwbuf's one-tick <c>tsleep</c>, a watchdog such as kmap's hung-task
    /// timeout) is stuck only once the machine has been quiet for <see cref="DeadlockQuiescence"/>:
    /// no thread woken by a wakeup or a cancellation, started or ended, and none gone to sleep
    /// other than back on the channel whose timeout just woke it. The machine looks when a thread
    /// goes to sleep or exits and, every few milliseconds, from the outside join. The report is
    /// thrown from the sleep of the thread that went to sleep last (a joiner only if all join),
    /// with its interlock held; the others stay reportable on their own if its clean-up frees
    /// nothing.
    /// <para>
    /// The rule assumes that while a thread outside joins the machine's kernel threads, nothing
    /// else outside wakes them, starts new ones or frees what they wait for: turn it off where
    /// another host thread does (a host that wakes or starts threads before it joins needs
    /// nothing). A single sleeper is left to its joiner's timeout: whoever started it may still
    /// start a thread that wakes it. The controlled scheduler has its own deadlock report and does
    /// not use this one.
    /// </para>
    /// </summary>
    public bool DetectDeadlocks { get; init; } = true;

    /// <summary>
    /// How long the machine must be quiet (every live kernel thread asleep, nothing woken, started or
    /// ended) before sleeps with a timeout count as stuck for <see cref="DetectDeadlocks"/> (default 2 s).
    /// A known false report: a kernel thread that sleeps with a timeout longer than this as a plain
    /// delay, while every other one waits for it, is reported although its timeout would end the
    /// wait; such a workload raises this or turns <see cref="DetectDeadlocks"/> off.
    /// </summary>
    public TimeSpan DeadlockQuiescence { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>Real time (the default) or virtual time (<see cref="MachineTime"/>).</summary>
    public MachineTime Time { get; init; } = MachineTime.Real;

    /// <summary>Default <see cref="Quantum"/>: half the default profile's IPI delivery latency, so a CPU that runs ahead cannot hide a round trip.</summary>
    public static readonly TimeSpan DefaultQuantum = TimeSpan.FromTicks(5); // 500 ns

    /// <summary>Smallest and largest <see cref="Quantum"/>.</summary>
    public static readonly TimeSpan MinQuantum = TimeSpan.FromTicks(1), MaxQuantum = TimeSpan.FromMilliseconds(1);

    /// <summary>
    /// Virtual time: how far a running CPU's clock may pass the next runnable CPU's before it
    /// yields (default <see cref="DefaultQuantum"/>, from <see cref="MinQuantum"/> to <see cref="MaxQuantum"/>).
    /// Interactions inside a quantum are approximated, so it should stay below an IPI round trip.
    /// </summary>
    public TimeSpan Quantum { get; init; } = DefaultQuantum;

    /// <summary>Controlled scheduling for exploration (tests); null for real concurrency.</summary>
    internal ControlledScheduler? Controlled { get; init; }

    /// <summary>FreeBSD's <c>maxusers</c> for this memory: physical MiB / 2, clamped to [32, 384].</summary>
    public int MaxUsers => (int)Math.Clamp(PhysicalMemoryBytes / (2UL << 20), 32, 384);

    /// <summary>FreeBSD's default <c>nsfbufs = 512 + 16 * maxusers</c>.</summary>
    public int DefaultNsfbufs => 512 + (16 * MaxUsers);

    /// <summary>The sf_buf window size in effect: the pool of every strategy that reproduces a kernel's (<c>nsfbufs</c>).</summary>
    public int EffectiveSfBufWindowPages => SfBufWindowPages ?? DefaultNsfbufs;

    /// <summary>
    /// CPUs whose share of <see cref="EffectiveSfBufWindowPages"/> is what the window reserves per
    /// CPU above that count (<see cref="SfBufWindowKvaPages"/>).
    /// </summary>
    public const int SfBufWindowCpus = 8;

    /// <summary>
    /// KVA reserved for the sf_buf window: <see cref="EffectiveSfBufWindowPages"/>, and above
    /// <see cref="SfBufWindowCpus"/> CPUs an eighth of it per CPU. FreeBSD's <c>nsfbufs</c> is sized
    /// by memory for an i386 kernel, whose KVA was scarce, and not by the CPU count; a 64-bit kernel
    /// has KVA to spare, so a design with per-CPU partitions (<c>epoch-cache</c>) may keep each
    /// CPU's share from shrinking as CPUs are added, as the fixmap's per-CPU slots (mermap,
    /// kmap_local, quick_enter) and ASI's per-CPU regions do. The strategies that reproduce a
    /// kernel's pool (<c>sfbuf-i386</c>, <c>linux-kmap</c>, <c>netbsd-emap</c>) use its first
    /// <see cref="EffectiveSfBufWindowPages"/> pages only, as those kernels size them.
    /// </summary>
    public int SfBufWindowKvaPages => Math.Max(EffectiveSfBufWindowPages, Cpus * Math.Max(1, EffectiveSfBufWindowPages / SfBufWindowCpus));
}
