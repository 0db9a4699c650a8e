using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace Native.PageTable;

/// <summary>
/// A kernel thread: a dedicated host thread (never a thread-pool thread) that runs on a
/// simulated CPU while it holds it, pinned to host core <c>cpu % hostCores</c>.
/// <para>
/// It gives its CPU up only in the kernel's wait primitives (<c>msleep</c>, a blocked mutex,
/// <see cref="Yield"/>) and at exit, and takes one again afterwards: the same CPU when it is
/// pinned (<see cref="SchedPin"/>) or bound, possibly another one otherwise (a migration).
/// </para>
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Reliability", "CA1001", Justification =
    "Its wait handles live as long as the thread object; the slim events allocate a kernel handle only if a wait blocks long.")]
public sealed class KernelThread
{
    // A woken sleeper spins this long on its host core before it blocks in the host kernel: an
    // idle CPU polling for work, which keeps host wakeup latency out of cross-CPU handoffs.
    private const int SleepSpins = 2047;

    // How many of those spins this thread takes (WaitForWakeup): one when oversubscribed.
    private readonly int _sleepSpins;

    // How often a thread outside the machine that joins a kernel thread looks for a deadlock.
    private static readonly TimeSpan s_outsideCheckInterval = TimeSpan.FromMilliseconds(25);

    [ThreadStatic]
    private static KernelThread? s_current;

    private readonly Action _body;
    private readonly Thread _host;
    // No spin before blocking: a join waits for a whole body, and the outside joiner re-waits every
    // few milliseconds, so spinning would only take a host core from the threads it waits for.
    private readonly ManualResetEventSlim _exited = new(false, spinCount: 0);
    private volatile bool _hasExited;

    internal KernelThread(Machine machine, int id, string name, Action body, int preferredCpu, bool bound, VmSpace? vmspace)
    {
        Machine = machine;
        Id = id;
        Name = name;
        _body = body;
        LastCpu = preferredCpu;
        BoundCpu = bound ? preferredCpu : -1;
        VmSpace = vmspace;
        _host = new Thread(Main) { IsBackground = true, Name = name };

        // Oversubscribed, a woken sleeper's spin would hold the core the waker's CPU needs. The
        // spin is WaitForWakeup's, which keeps to the timeout; the event itself blocks at once.
        _sleepSpins = machine.Oversubscribed ? 1 : SleepSpins;
        Wakeup = new ManualResetEventSlim(false, 0);
    }

    /// <summary>The running kernel thread; throws when the caller is not one.</summary>
    public static KernelThread Current => s_current ?? throw new InvalidOperationException(
        "this code must run on a kernel thread (Machine.StartThread or Machine.Run)");

    /// <summary>The running kernel thread, or null.</summary>
    public static KernelThread? CurrentOrNull => s_current;

    /// <summary>The machine the thread runs on.</summary>
    public Machine Machine { get; }

    /// <summary>Thread id, unique per machine, from 1.</summary>
    public int Id { get; }

    /// <summary>Thread name.</summary>
    public string Name { get; }

    /// <summary>The CPU the thread holds, or null while it sleeps or waits for a CPU.</summary>
    public Cpu? Cpu { get; internal set; }

    /// <summary>The CPU it ran on last (or was asked to start on); -1 for none.</summary>
    public int LastCpu { get; internal set; }

    /// <summary>The CPU it is bound to (<c>sched_bind</c>), or -1.</summary>
    public int BoundCpu { get; }

    /// <summary>Nesting depth of <see cref="SchedPin"/>.</summary>
    public int PinCount { get; private set; }

    /// <summary>True when the thread may not migrate: pinned or bound.</summary>
    public bool IsPinned => PinCount > 0 || BoundCpu >= 0;

    /// <summary>
    /// Nesting depth of <see cref="CriticalEnter"/> (FreeBSD's <c>td_critnest</c>, Linux's
    /// preemption count): while it is above 0 the thread may not sleep, block on a mutex or yield.
    /// </summary>
    public int CriticalNesting { get; private set; }

    /// <summary>The user address space the thread runs in, or null for a pure kernel thread.</summary>
    public VmSpace? VmSpace { get; private set; }

    /// <summary>Host CPU the host thread is pinned to, or -1.</summary>
    public int HostCore { get; internal set; } = -1;

    /// <summary>True once the body has returned or thrown.</summary>
    public bool HasExited => _hasExited;

    /// <summary>The exception the body ended with, if any.</summary>
    public Exception? Fault { get; private set; }

    internal SemaphoreSlim CpuGranted { get; } = new(0);

    internal ManualResetEventSlim Wakeup { get; }

    /// <summary>The controlled scheduler's view of this thread, in controlled mode.</summary>
    internal ControlledScheduler.Slot? Controlled { get; set; }

    internal int GrantedCpu { get; set; } = -1;

    /// <summary>Checked mode: how deep this thread is in mapping operations (<see cref="KernelPmap.EnterOperation"/>).</summary>
    internal int MappingDepth { get; set; }

    /// <summary>True while this thread runs the machine's alarm hooks (<see cref="Machine.RingAlarm"/>), which do not nest.</summary>
    internal bool InAlarm { get; set; }

    /// <summary>
    /// Checked mode: the kernel translations (virtual page, old frame) that PTE stores of the
    /// thread's current outermost mapping operation removed; judged for exposure when it returns.
    /// </summary>
    internal List<(ulong Vpn, uint Frame)>? RemovedTranslations { get; set; }

    /// <summary>Virtual time: when the thread became runnable while it holds no CPU (its CPU's clock takes over once it runs).</summary>
    internal long ReadyAtNs { get; set; }

    /// <summary>True once the thread has held a CPU (a first start on a CPU is not a migration).</summary>
    internal bool HasRun { get; set; }

    /// <summary>Sleep bookkeeping, guarded by the machine's sleep-queue lock.</summary>
    internal object? SleepChannel { get; set; }

    // What the current sleep is, for the deadlock detector (guarded by the sleep-queue lock).
    internal KMutex? SleepInterlock { get; set; }

    internal bool SleepTimed { get; set; }

    internal bool SleepCancellable { get; set; }

    /// <summary>The thread this one joins in its current sleep, or null.</summary>
    internal KernelThread? JoinTarget { get; set; }

    internal long SleepSeq { get; set; }

    /// <summary>When the current wait began (a poll's first sleep).</summary>
    internal long SleepSince { get; set; }

    /// <summary>The channel whose timeout ended the thread's last sleep (a poll sleeps there again), or null.</summary>
    internal object? TimedOutOn { get; set; }

    /// <summary>A deadlock report the detector woke this thread to throw.</summary>
    internal DeadlockException? PendingDeadlock { get; set; }

    /// <summary>True while the thread is still waiting in a deadlock reported to another thread.</summary>
    internal bool InReportedDeadlock { get; set; }

    /// <summary>Threads outside the machine joining this one (sleep-queue lock).</summary>
    internal int OutsideJoiners { get; set; }

    /// <summary>The CPU the scheduler must give this thread, or -1 for any.</summary>
    internal int RequiredCpu => BoundCpu >= 0 ? BoundCpu : PinCount > 0 ? LastCpu : -1;

    /// <summary><c>sched_pin</c>: the thread stays on its current CPU until the matching <see cref="SchedUnpin"/>.</summary>
    public void SchedPin()
    {
        RequireSelf();
        PinCount++;
    }

    /// <summary><c>sched_pin</c> from code that already knows it runs as this thread (no check).</summary>
    internal void PinSelf() => PinCount++;

    /// <summary><c>sched_unpin</c> from code that already knows it runs as this thread (no check).</summary>
    internal void UnpinSelf() => PinCount--;

    /// <summary>
    /// <c>critical_enter</c> (<c>preempt_disable</c>): until the matching <see cref="CriticalExit"/>
    /// the thread keeps its CPU; a sleep, a blocking mutex or a yield inside throws instead of
    /// switching (FreeBSD: "switch in a critical section"; Linux: "scheduling while atomic").
    /// </summary>
    public void CriticalEnter()
    {
        RequireSelf();
        CriticalNesting++;
    }

    /// <summary><c>critical_exit</c> (<c>preempt_enable</c>).</summary>
    public void CriticalExit()
    {
        RequireSelf();
        if (CriticalNesting == 0)
        {
            throw new InvalidOperationException($"{Name}: critical_exit without critical_enter");
        }

        CriticalNesting--;
    }

    /// <summary><c>critical_enter</c> from code that already knows it runs as this thread (no check).</summary>
    internal void CriticalEnterSelf() => CriticalNesting++;

    /// <summary><c>critical_exit</c> from code that already knows it runs as this thread (no check).</summary>
    internal void CriticalExitSelf() => CriticalNesting--;

    /// <summary>Throws when the thread is in a critical section: <paramref name="what"/> would switch it out.</summary>
    internal void AssertMaySwitch(string what)
    {
        if (CriticalNesting > 0)
        {
            throw new InvalidOperationException(
                $"{this}: {what} inside a critical section (depth {CriticalNesting}): a thread holding a CPU-private mapping "
                + "that forbids preemption (kmap_atomic, pmap_quick_enter_page) may not sleep, block or yield");
        }
    }

    /// <summary><c>sched_unpin</c>.</summary>
    public void SchedUnpin()
    {
        RequireSelf();
        if (PinCount == 0)
        {
            throw new InvalidOperationException($"{Name}: sched_unpin without sched_pin");
        }

        PinCount--;
    }

    /// <summary>Gives the CPU up and takes one again (another thread may run in between).</summary>
    public void Yield()
    {
        RequireSelf();
        AssertMaySwitch("yield");
        Machine.Scheduler.Release(this);
        Machine.Scheduler.Acquire(this);
    }

    /// <summary>
    /// Switches the thread to another user address space (or none): loads its page table on
    /// this CPU, which drops the CPU's non-global TLB entries.
    /// </summary>
    public void SwitchVmSpace(VmSpace? vmspace)
    {
        RequireSelf();
        VmSpace = vmspace;
        Scheduler.LoadAddressSpace(Cpu!, this);
    }

    /// <summary>
    /// Waits for the thread to end and rethrows the exception its body ended with. From a kernel
    /// thread this sleeps (releasing the CPU) until the exit's wakeup; from any other thread it
    /// blocks, and meanwhile looks for a deadlock among the machine's kernel threads, which one of
    /// them then reports (<see cref="MachineOptions.DetectDeadlocks"/>).
    /// </summary>
    public void Join(TimeSpan? timeout = null)
    {
        var limit = timeout ?? Timeout.InfiniteTimeSpan;
        var self = CurrentOrNull;
        if (ReferenceEquals(self, this))
        {
            throw new InvalidOperationException($"{Name} cannot join itself");
        }

        var deadline = limit == Timeout.InfiniteTimeSpan ? DateTime.MaxValue : DateTime.UtcNow + limit;
        if (self != null && self.Machine == Machine)
        {
            // The exit is checked under the sleep lock before sleeping, and the exit's wakeup
            // takes that lock after setting it: the wakeup cannot be missed.
            while (!_hasExited)
            {
                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero)
                {
                    throw new TimeoutException($"{Name} did not exit within {limit}");
                }

                Machine.SleepCore(this, null, limit == Timeout.InfiniteTimeSpan ? null : left, joinTarget: this, CancellationToken.None);
            }
        }
        else if (!_exited.Wait(TimeSpan.Zero))
        {
            JoinFromOutside(limit, deadline);
        }

        if (Fault != null)
        {
            ExceptionDispatchInfo.Capture(Fault).Throw();
        }
    }

    /// <summary>
    /// The join of a thread outside the machine: while it lasts, the machine's kernel threads are
    /// all it waits for, so it looks for a deadlock among them every few milliseconds (the quiet
    /// rule needs someone to look while every kernel thread sleeps).
    /// </summary>
    private void JoinFromOutside(TimeSpan limit, DateTime deadline)
    {
        Machine.OutsideJoin(this, +1);
        try
        {
            Machine.Controller?.RunFromOutside();
            while (true)
            {
                Machine.CheckForDeadlock();
                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero)
                {
                    throw new TimeoutException($"{Name} did not exit within {limit}");
                }

                if (_exited.Wait(left < s_outsideCheckInterval ? left : s_outsideCheckInterval))
                {
                    return;
                }
            }
        }
        finally
        {
            Machine.OutsideJoin(this, -1);
        }
    }

    /// <summary>Renders as <c>name (tid N)</c>.</summary>
    public override string ToString() => $"{Name} (tid {Id})";

    internal void Start() => _host.Start();

    /// <summary>Waits (from any thread) until the thread has ended; false on timeout.</summary>
    internal bool WaitExited(TimeSpan timeout) => _exited.Wait(timeout);

    private void Main()
    {
        s_current = this;
        try
        {
            Machine.Controller?.Begin(this);
            Machine.Scheduler.Acquire(this);
            try
            {
                _body();
            }
            finally
            {
                Machine.Scheduler.Release(this);
            }
        }
        catch (Exception ex)
        {
            Fault = ex;
            Machine.ReportFault(this, ex);
        }
        finally
        {
            s_current = null;
            _hasExited = true;

            // Controlled: the schedule moves on (or pauses) before a joiner outside hears of the
            // exit, so that what the joiner does next finds the schedule as this exit left it.
            if (Machine.Controller == null)
            {
                _exited.Set();
            }

            Machine.ThreadExited(this);
            Machine.Controller?.Exit(this);
            _exited.Set();
        }
    }

    /// <summary>
    /// Real time: waits until <see cref="Wakeup"/> is set, <paramref name="timeout"/> has passed
    /// or <paramref name="cancellation"/> fires (false for either): spins on the host core first,
    /// then blocks in the host kernel. The spin keeps to the timeout. ManualResetEventSlim's own
    /// spin does not: its yields, each of which may hand a busy host core to another thread for a
    /// whole time slice, ran their full count before the timeout was first looked at, so a
    /// one-tick <c>tsleep</c> could last seconds on a loaded host, long enough for the deadlock
    /// report to take a polling machine for a stuck one.
    /// </summary>
    internal bool WaitForWakeup(TimeSpan timeout, CancellationToken cancellation)
    {
        if (Wakeup.IsSet)
        {
            return true;
        }

        bool timed = timeout != Timeout.InfiniteTimeSpan;
        bool keepToTimeout = !Machine.Planted(PlantedBug.SleepSpinIgnoresTimeout);
        long start = Stopwatch.GetTimestamp();
        var spinner = default(SpinWait);
        while (spinner.Count < _sleepSpins)
        {
            spinner.SpinOnce(sleep1Threshold: -1);
            Machine.TestHookSleeperSpinStep?.Invoke();
            if (Wakeup.IsSet)
            {
                return true;
            }

            if (cancellation.IsCancellationRequested || (timed && keepToTimeout && Stopwatch.GetElapsedTime(start) >= timeout))
            {
                return false;
            }
        }

        var left = timed ? timeout - Stopwatch.GetElapsedTime(start) : Timeout.InfiniteTimeSpan;
        if (timed && left <= TimeSpan.Zero)
        {
            return Wakeup.IsSet;
        }

        try
        {
            return Wakeup.Wait(left, cancellation);
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    private void RequireSelf()
    {
        if (!ReferenceEquals(s_current, this))
        {
            throw new InvalidOperationException($"only {Name} itself may do this");
        }
    }
}
