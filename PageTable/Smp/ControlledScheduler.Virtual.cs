namespace Native.PageTable;

/// <summary>
/// Virtual time (<see cref="MachineTime.Virtual"/>): the controlled scheduler's order comes from
/// clocks instead of a seeded strategy. Each thread's time is its CPU's clock while it holds one
/// (<see cref="Cpu.ClockNs"/>), otherwise the time it became runnable
/// (<see cref="KernelThread.ReadyAtNs"/>). At each scheduling point the runnable thread with the
/// smallest time runs next (ties: lower CPU id, then creation order), except that the running
/// thread keeps going until its time passes the next one's by the quantum. A blocked thread
/// whose condition the scheduler finds true is stamped with the time of the thread that made it
/// true and resumes no earlier; a wait with a deadline times out at it. Nothing here reads a host
/// clock, so the order, and every figure, depends only on the workload, the strategy and the profile.
/// </summary>
internal sealed partial class ControlledScheduler
{
    private readonly List<Slot> _live = [];

    // Virtual time: threads blocked on a condition, and parked runnable threads by time.
    private readonly List<Slot> _blocked = [];
    private readonly PriorityQueue<Slot, SlotKey> _runnable = new();
    private readonly long _quantumNs;
    private long _yieldAtNs = long.MaxValue;
    private long _nowNs;
    private bool _scheduleRunning;

    // True while the scheduler evaluates blocked threads' conditions on the running host thread: a
    // condition that passes a scheduling point (a wait loop's own) must not re-enter the scheduler.
    private bool _evaluating;

    /// <summary>A virtual-time scheduler with quantum <paramref name="quantumNs"/>.</summary>
    public ControlledScheduler(long quantumNs)
        : this(new ClockOrder(), int.MaxValue)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(quantumNs, 1);
        IsVirtual = true;
        _quantumNs = quantumNs;
    }

    /// <summary>True in virtual time.</summary>
    public bool IsVirtual { get; }

    /// <summary>The quantum, in virtual nanoseconds.</summary>
    public long QuantumNs => _quantumNs;

    /// <summary>
    /// The virtual time at which the running thread should yield (the next runnable thread's time
    /// plus the quantum); read only by the running thread.
    /// </summary>
    public long YieldAtNs => _yieldAtNs;

    /// <summary>The latest virtual time any thread has reached: where a thread started from outside begins, and what a run's elapsed time is read from.</summary>
    public long NowNs
    {
        get
        {
            lock (_lock)
            {
                return _nowNs;
            }
        }
    }

    /// <summary>
    /// Virtual time: a thread outside the machine waits for a kernel thread, so the schedule runs
    /// (it pauses when every thread has ended or sleeps with nothing to wake it).
    /// </summary>
    public void RunFromOutside()
    {
        lock (_lock)
        {
            if (!IsVirtual || _aborted || _running != null || _live.Count == 0)
            {
                return;
            }

            _scheduleRunning = true;
            _finished.Reset();
            SwitchTo(Choose(null, reportDeadlock: true));
        }
    }

    private void RegisterVirtual(KernelThread td)
    {
        var self = KernelThread.CurrentOrNull;
        if (self != null && ReferenceEquals(self.Machine, td.Machine))
        {
            td.ReadyAtNs = self.Cpu?.ClockNs ?? self.ReadyAtNs;
            return;
        }

        // From outside, a start while threads run would land at a host-dependent point of the
        // schedule: refuse it rather than lose determinism.
        if (_scheduleRunning)
        {
            throw new InvalidOperationException(
                "in virtual time a thread outside the machine may start kernel threads only while none runs: join the running ones first");
        }

        td.ReadyAtNs = _nowNs;
    }

    /// <summary>True when a thread outside the machine is joining a live kernel thread (then a schedule with nothing runnable can never go on).</summary>
    private bool JoinedFromOutside()
    {
        foreach (var slot in _live)
        {
            if (slot.Thread.OutsideJoiners > 0)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>A thread's virtual time: its CPU's clock, or when it became runnable.</summary>
    private static long TimeOf(Slot slot) => slot.Thread.Cpu?.ClockNs ?? slot.Thread.ReadyAtNs;

    /// <summary>Moves a thread's time forward to <paramref name="ns"/> as it resumes.</summary>
    private static void Resume(Slot slot, long ns)
    {
        var td = slot.Thread;
        if (td.Cpu is { } cpu)
        {
            cpu.ClockNs = Math.Max(cpu.ClockNs, ns);
        }
        else
        {
            td.ReadyAtNs = Math.Max(td.ReadyAtNs, ns);
        }
    }

    /// <summary>
    /// The virtual-time choice (under the lock). <paramref name="me"/> is the calling thread (null
    /// from outside); it goes on if it may. With nothing runnable the schedule pauses (null), or
    /// with <paramref name="reportDeadlock"/> is abandoned as a deadlock (null: when a thread
    /// outside waits for one, asked only then, since it looks at every live thread).
    /// </summary>
    private Slot? Choose(Slot? me, bool? reportDeadlock)
    {
        _steps++;
        long now = me != null ? TimeOf(me) : _nowNs;
        if (now > _nowNs)
        {
            _nowNs = now;
        }

        // Stamps go to the time of the action that made a condition true: the caller's, or the
        // acknowledgement of an IPI serviced below.
        long stampAt = now;
        while (true)
        {
            var chosen = ChooseOnce(me, now, stampAt, reportDeadlock, out var service, out long serviceAt);
            if (service == null)
            {
                return chosen;
            }

            // A CPU spinning on a word takes the IPI that has arrived: its own handler, on its own
            // clock, run here because its thread would do nothing else at that instant.
            service.ClockNs = Math.Max(service.ClockNs, serviceAt);
            service.ServiceWhileSpinning();
            stampAt = service.ClockNs;
            if (stampAt > _nowNs)
            {
                _nowNs = stampAt;
            }
        }
    }

    private Slot? ChooseOnce(Slot? me, long now, long stampAt, bool? reportDeadlock, out Cpu? service, out long serviceAt)
    {
        service = null;
        serviceAt = 0;
        bool meEnabled = me is { Exited: false, Ready: null };

        // The blocked threads: each condition evaluated (there is no knowing which one changed).
        Slot? b1 = null, b2 = null;
        SlotKey k1 = SlotKey.None, k2 = SlotKey.None;
        var kind1 = Wake.Ready;
        _evaluating = true;
        try
        {
            foreach (var s in _blocked)
            {
                long t;
                var kind = Wake.Ready;
                if (s.Ready!())
                {
                    if (s.StampNs < 0)
                    {
                        s.StampNs = stampAt;
                    }

                    t = Math.Max(TimeOf(s), s.StampNs);
                }
                else
                {
                    s.StampNs = -1;
                    long mail = s.Spinner?.PendingMailArrivalNs ?? long.MaxValue;
                    if (mail < s.DeadlineNs)
                    {
                        t = Math.Max(TimeOf(s), mail);
                        kind = Wake.Service;
                    }
                    else if (s.DeadlineNs != long.MaxValue)
                    {
                        t = Math.Max(TimeOf(s), s.DeadlineNs);
                        kind = Wake.Timeout;
                    }
                    else
                    {
                        continue;
                    }
                }

                var key = KeyOf(s, t);
                if (key.CompareTo(k1) < 0)
                {
                    (b2, k2) = (b1, k1);
                    (b1, k1, kind1) = (s, key, kind);
                }
                else if (key.CompareTo(k2) < 0)
                {
                    (b2, k2) = (s, key);
                }
            }

        }
        finally
        {
            _evaluating = false;
        }

        // The runnable ones: a queue by time, since their times do not move while they wait.
        _runnable.TryPeek(out var r1, out var rk1);
        bool firstRunnable = r1 != null && rk1.CompareTo(k1) < 0;
        var firstKey = firstRunnable ? rk1 : k1;
        var first = firstRunnable ? r1 : b1;
        if (meEnabled && (first == null || now <= firstKey.T + _quantumNs))
        {
            _yieldAtNs = first == null ? long.MaxValue : firstKey.T + _quantumNs;
            return me;
        }

        if (first == null)
        {
            if (reportDeadlock ?? JoinedFromOutside())
            {
                AbortLocked("deadlock: no kernel thread can run (" + string.Join(", ", _live.Select(s => s.Thread.Name)) + " are blocked)");
            }

            return null;
        }

        if (!firstRunnable && kind1 == Wake.Service)
        {
            service = first.Spinner;
            serviceAt = firstKey.T;
            return null;
        }

        // The next one after the chosen: the yield time of the chosen.
        SlotKey next;
        if (firstRunnable)
        {
            _runnable.Dequeue();
            next = _runnable.TryPeek(out _, out var rk2) && rk2.CompareTo(k1) < 0 ? rk2 : k1;
        }
        else
        {
            _blocked.Remove(first);
            if (kind1 == Wake.Timeout)
            {
                first.TimedOut = true;
            }

            first.Ready = null;
            next = r1 != null && rk1.CompareTo(k2) < 0 ? rk1 : k2;
        }

        long nextT = meEnabled ? Math.Min(now, next.T) : next.T;
        _yieldAtNs = nextT == long.MaxValue ? long.MaxValue : nextT + _quantumNs;
        if (meEnabled)
        {
            _runnable.Enqueue(me!, KeyOf(me!, now));
        }

        Resume(first, firstKey.T);
        if (firstKey.T > _nowNs)
        {
            _nowNs = firstKey.T;
        }

        return first;
    }

    private static SlotKey KeyOf(Slot s, long t) => new(t, s.Thread.Cpu?.Id ?? int.MaxValue, s.Index);

    /// <summary>Why a blocked thread is a candidate: its condition holds, its wait times out, or its CPU takes an IPI.</summary>
    private enum Wake
    {
        Ready,
        Timeout,
        Service,
    }

    /// <summary>The order of candidates: time, then CPU id (none last), then creation.</summary>
    private readonly record struct SlotKey(long T, int Cpu, int Index) : IComparable<SlotKey>
    {
        public static SlotKey None { get; } = new(long.MaxValue, int.MaxValue, int.MaxValue);

        public int CompareTo(SlotKey other) =>
            T != other.T ? T.CompareTo(other.T) : Cpu != other.Cpu ? Cpu.CompareTo(other.Cpu) : Index.CompareTo(other.Index);
    }

    /// <summary>Every live thread's scheduling state, for reports.</summary>
    public string Describe()
    {
        lock (_lock)
        {
            return $"running {_running?.Thread.Name ?? "none"}, now {_nowNs} ns, yield at {_yieldAtNs}: " + string.Join("; ", _live.Select(s =>
                $"{s.Thread.Name} cpu {s.Thread.Cpu?.Id.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "-"} t {TimeOf(s)}"
                + (s.Ready == null ? " runnable" : $" blocked (stamp {s.StampNs}, deadline {s.DeadlineNs})")));
        }
    }

    /// <summary>The virtual-time order needs no seeded strategy; this one is never asked.</summary>
    private sealed class ClockOrder : ScheduleStrategy
    {
        public override int Next(List<int> enabled, int current, bool currentIsSpinning) =>
            throw new InvalidOperationException("virtual time chooses by clock");
    }
}
