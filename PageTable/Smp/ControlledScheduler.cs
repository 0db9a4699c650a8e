namespace Native.PageTable;

/// <summary>
/// The machine's controlled-scheduling mode, for systematic interleaving exploration: kernel
/// threads run one at a time, and at every scheduling point (memory access, PTE store, IPI post
/// and acknowledgement, idle entry and exit, lock, sleep, wakeup) a seeded
/// <see cref="ScheduleStrategy"/> picks which thread runs next. Every blocking wait becomes a
/// condition the scheduler evaluates, so a schedule in which no thread can run is reported as a
/// deadlock instead of hanging, and the same seed replays the same schedule.
/// <para>
/// Threads are registered when they are created (in creation order, so ids and choices are
/// deterministic) and run nothing until <see cref="Start"/>.
/// </para>
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Reliability", "CA1001", Justification =
    "Lives as long as its machine; its events hold no kernel handle unless a wait blocks long.")]
internal sealed partial class ControlledScheduler
{
    private readonly Lock _lock = new();
    private readonly List<Slot> _slots = [];
    private readonly ScheduleStrategy _strategy;
    private readonly int _maxSteps;
    private readonly ManualResetEventSlim _finished = new(false);
    private Slot? _running;
    private bool _started;
    private volatile bool _aborted;
    private long _steps;

    public ControlledScheduler(ScheduleStrategy strategy, int maxSteps)
    {
        _strategy = strategy;
        _maxSteps = maxSteps;
    }

    /// <summary>Scheduling decisions taken so far (saturating).</summary>
    public int Steps => (int)Math.Min(_steps, int.MaxValue);

    /// <summary>Scheduling decisions taken so far.</summary>
    public long LongSteps => _steps;

    /// <summary>Why the schedule was abandoned (deadlock, step bound), or null.</summary>
    public string? Failure { get; private set; }

    /// <summary>True once the schedule was abandoned.</summary>
    public bool Aborted => _aborted;

    /// <summary>Set when every registered thread has exited or the schedule was abandoned.</summary>
    public WaitHandle Finished => _finished.WaitHandle;

    /// <summary>Registers a thread that has been created but has not run yet.</summary>
    public void Register(KernelThread td)
    {
        lock (_lock)
        {
            if (IsVirtual)
            {
                RegisterVirtual(td);
            }

            var slot = new Slot(td, _slots.Count);
            _slots.Add(slot);
            td.Controlled = slot;
            _strategy.ThreadCreated(slot.Index);
            _live.Add(slot);
            if (IsVirtual)
            {
                _runnable.Enqueue(slot, KeyOf(slot, td.ReadyAtNs));
            }
        }
    }

    /// <summary>Lets the first thread run; called once, by the host thread that set the scene up.</summary>
    public void Start()
    {
        lock (_lock)
        {
            if (_started)
            {
                throw new InvalidOperationException("the schedule has already started");
            }

            _started = true;
            if (_slots.Count == 0)
            {
                _finished.Set();
                return;
            }

            SwitchTo(Choose(null));
        }
    }

    /// <summary>The thread's first step: waits for its turn.</summary>
    public void Begin(KernelThread td) => Park(td.Controlled!);

    /// <summary>A scheduling point: another thread may run before the caller continues.</summary>
    public void Yield(KernelThread td, bool spinning = false)
    {
        if (_evaluating)
        {
            return;
        }

        var me = td.Controlled!;
        ThrowIfAborted();
        lock (_lock)
        {
            me.Spinning = spinning;
            var next = Choose(me);
            if (ReferenceEquals(next, me))
            {
                return;
            }

            SwitchTo(next);
        }

        Park(me);
    }

    /// <summary>
    /// Blocks the caller until <paramref name="ready"/> holds (evaluated by whichever thread is
    /// running, while no other runs). With <paramref name="timed"/>, the wait may instead time out
    /// when no other thread can run, as time passing in an idle machine; returns false then.
    /// </summary>
    public bool WaitUntil(KernelThread td, Func<bool> ready, bool timed = false) => WaitUntil(td, ready, timed, long.MaxValue);

    /// <summary>
    /// <see cref="WaitUntil(KernelThread, Func{bool}, bool)"/>; in virtual time the wait times out
    /// at virtual time <paramref name="deadlineNs"/> (<see cref="long.MaxValue"/>: never) and
    /// <paramref name="timed"/> is not used.
    /// </summary>
    public bool WaitUntil(KernelThread td, Func<bool> ready, bool timed, long deadlineNs) => WaitUntil(td, ready, timed, deadlineNs, spinner: null);

    /// <summary>
    /// Virtual time: the wait of a CPU spinning on a shared word (<paramref name="spinner"/>), which
    /// takes IPIs while it spins: each one is serviced on that CPU when its clock reaches the
    /// arrival, without the waiting thread's host thread (it would do nothing else then).
    /// </summary>
    public bool WaitUntil(KernelThread td, Func<bool> ready, bool timed, long deadlineNs, Cpu? spinner)
    {
        var me = td.Controlled!;
        while (true)
        {
            ThrowIfAborted();
            if (ready())
            {
                return true;
            }

            bool runOn;
            lock (_lock)
            {
                me.Ready = ready;
                me.Timed = timed;
                me.TimedOut = false;
                me.StampNs = -1;
                me.DeadlineNs = deadlineNs;
                me.Spinner = spinner;
                if (IsVirtual)
                {
                    _blocked.Add(me);
                }

                var next = Choose(me);
                runOn = ReferenceEquals(next, me);
                if (!runOn)
                {
                    SwitchTo(next);
                }
            }

            if (!runOn)
            {
                Park(me);
            }

            me.Ready = null;
            if (me.TimedOut)
            {
                me.TimedOut = false;
                return false;
            }
        }
    }

    /// <summary>The thread has ended: the next one runs.</summary>
    public void Exit(KernelThread td)
    {
        var me = td.Controlled!;
        lock (_lock)
        {
            me.Exited = true;
            me.Ready = null;
            _live.Remove(me);
            if (_aborted)
            {
                CheckFinished();
                return;
            }

            if (_live.Count == 0)
            {
                _running = null;
                _scheduleRunning = false;
                _finished.Set();
                return;
            }

            if (IsVirtual)
            {
                // Threads asleep with nothing to wake them: the schedule pauses, unless a thread
                // outside waits for one of them (then nothing can ever end its wait).
                SwitchTo(Choose(me, reportDeadlock: null));
                return;
            }

            var next = Choose(null);
            if (next != null)
            {
                SwitchTo(next);
            }
        }
    }

    /// <summary>Abandons the schedule: every waiting thread wakes and throws <see cref="ScheduleAbortedException"/>.</summary>
    public void Abort(string why)
    {
        lock (_lock)
        {
            AbortLocked(why);
        }
    }

    private void AbortLocked(string why)
    {
        if (_aborted)
        {
            return;
        }

        Failure ??= why;
        _aborted = true;
        _running = null;
        foreach (var slot in _slots)
        {
            slot.Turn.Release();
        }

        CheckFinished();
    }

    private void CheckFinished()
    {
        if (_slots.TrueForAll(s => s.Exited))
        {
            _finished.Set();
        }
    }

    /// <summary>Picks the next thread; null after aborting (deadlock or step bound).</summary>
    private Slot? Choose(Slot? current)
    {
        if (IsVirtual)
        {
            return Choose(current, reportDeadlock: null);
        }

        if (++_steps > _maxSteps)
        {
            AbortLocked($"no schedule end after {_maxSteps} steps (livelock?): still running "
                + string.Join(", ", _slots.Where(s => !s.Exited).Select(s => $"{s.Thread.Name} (cpu {s.Thread.LastCpu}{(s.Ready != null ? ", waiting" : "")})")));
            return null;
        }

        var enabled = new List<int>(_slots.Count);
        foreach (var slot in _slots)
        {
            if (!slot.Exited && (slot.Ready == null || slot.Ready()))
            {
                enabled.Add(slot.Index);
            }
        }

        if (enabled.Count == 0)
        {
            // Time passes only when nothing can run: the first timed wait expires.
            var timed = _slots.Find(s => !s.Exited && s.Ready != null && s.Timed);
            if (timed != null)
            {
                timed.TimedOut = true;
                timed.Ready = null;
                return timed;
            }

            AbortLocked("deadlock: no kernel thread can run (" + string.Join(", ", _slots.Where(s => !s.Exited).Select(s => s.Thread.Name)) + " are blocked)");
            return null;
        }

        int chosen = _strategy.Next(enabled, current is { Exited: false } ? current.Index : -1, current?.Spinning ?? false);
        if (current != null)
        {
            current.Spinning = false;
        }

        return _slots[chosen];
    }

    private void SwitchTo(Slot? next)
    {
        if (next == null)
        {
            if (IsVirtual && !_aborted)
            {
                // Nothing can run until a thread outside acts: the schedule pauses.
                _running = null;
                _scheduleRunning = false;
            }

            return;
        }

        _running = next;
        next.Turn.Release();
    }

    private void Park(Slot me)
    {
        me.Turn.Wait();
        ThrowIfAborted();
    }

    private void ThrowIfAborted()
    {
        if (_aborted)
        {
            throw new ScheduleAbortedException(Failure ?? "the schedule was abandoned");
        }
    }

    /// <summary>The scheduler's view of one kernel thread.</summary>
    internal sealed class Slot(KernelThread thread, int index)
    {
        public KernelThread Thread { get; } = thread;

        public int Index { get; } = index;

        public Turn Turn { get; } = new();

        public Func<bool>? Ready { get; set; }

        public bool Timed { get; set; }

        public bool TimedOut { get; set; }

        public bool Spinning { get; set; }

        public bool Exited { get; set; }

        /// <summary>Virtual time: when the scheduler first found this blocked thread's condition true, or -1.</summary>
        public long StampNs { get; set; } = -1;

        /// <summary>Virtual time: when this blocked thread's wait times out, or <see cref="long.MaxValue"/>.</summary>
        public long DeadlineNs { get; set; } = long.MaxValue;

        /// <summary>Virtual time: the CPU this blocked thread spins on, taking IPIs meanwhile; null for other waits.</summary>
        public Cpu? Spinner { get; set; }
    }
}

/// <summary>
/// A kernel thread's permission to run: given by the thread that hands over, taken by the one
/// parked for it. It blocks at once instead of spinning first as <see cref="SemaphoreSlim"/> does:
/// only one thread runs at a time, so a parked thread's spin could only take a host core from the
/// thread that was just given its turn.
/// </summary>
internal sealed class Turn
{
    private readonly object _gate = new();
    private int _count;

    /// <summary>Gives one turn, waking the thread parked for it.</summary>
    public void Release()
    {
        lock (_gate)
        {
            _count++;
            Monitor.Pulse(_gate);
        }
    }

    /// <summary>Parks until a turn is given, and takes it.</summary>
    public void Wait()
    {
        lock (_gate)
        {
            while (_count == 0)
            {
                Monitor.Wait(_gate);
            }

            _count--;
        }
    }
}

/// <summary>A seeded choice of the next thread at each scheduling point.</summary>
internal abstract class ScheduleStrategy
{
    /// <summary>A thread with this index was created.</summary>
    public virtual void ThreadCreated(int index)
    {
    }

    /// <summary>Chooses among <paramref name="enabled"/> (thread indexes); <paramref name="current"/> is the caller or -1.</summary>
    public abstract int Next(List<int> enabled, int current, bool currentIsSpinning);
}

/// <summary>Random walk: a uniformly random enabled thread at every step.</summary>
internal sealed class RandomWalkStrategy(int seed) : ScheduleStrategy
{
    private readonly Random _random = new(seed);

    public override int Next(List<int> enabled, int current, bool currentIsSpinning) => enabled[_random.Next(enabled.Count)];
}

/// <summary>
/// PCT (probabilistic concurrency testing, Burckhardt et al., ASPLOS 2010): threads get random
/// distinct priorities and the highest enabled one runs; at <c>depth - 1</c> random steps the
/// running thread drops to the lowest priority. A thread that yields while spinning on another is
/// lowered too, so a spin loop cannot starve the thread it waits for.
/// </summary>
internal sealed class PctStrategy : ScheduleStrategy
{
    private readonly Random _random;
    private readonly List<int> _priority = []; // higher runs first
    private readonly HashSet<int> _changePoints = [];
    private int _lowest;
    private int _step;

    public PctStrategy(int seed, int depth, int expectedSteps)
    {
        _random = new Random(seed);
        for (int i = 0; i < depth - 1; i++)
        {
            _changePoints.Add(_random.Next(1, Math.Max(2, expectedSteps)));
        }
    }

    public override void ThreadCreated(int index)
    {
        // A random place among the existing priorities, above the lowered ones.
        int p = _random.Next(1_000_000) + 1_000;
        while (_priority.Contains(p))
        {
            p++;
        }

        _priority.Add(p);
    }

    public override int Next(List<int> enabled, int current, bool currentIsSpinning)
    {
        _step++;
        if (current >= 0 && (currentIsSpinning || _changePoints.Contains(_step)))
        {
            _priority[current] = --_lowest;
        }

        int best = enabled[0];
        foreach (int t in enabled)
        {
            if (_priority[t] > _priority[best])
            {
                best = t;
            }
        }

        return best;
    }
}

/// <summary>Thrown at a scheduling point of a schedule that has been abandoned (deadlock, step bound, failure elsewhere).</summary>
public sealed class ScheduleAbortedException(string message) : Exception(message);
