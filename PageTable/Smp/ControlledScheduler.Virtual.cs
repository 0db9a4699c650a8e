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
    private readonly long _quantumNs;
    private long _yieldAtNs = long.MaxValue;
    private long _nowNs;
    private bool _scheduleRunning;

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

    private static bool Before(long t, Slot s, long bestT, Slot? best)
    {
        if (best == null || t != bestT)
        {
            return best == null || t < bestT;
        }

        int cpu = s.Thread.Cpu?.Id ?? int.MaxValue, bestCpu = best.Thread.Cpu?.Id ?? int.MaxValue;
        return cpu != bestCpu ? cpu < bestCpu : s.Index < best.Index;
    }

    /// <summary>
    /// The virtual-time choice (under the lock). <paramref name="me"/> is the calling thread (null
    /// from outside); it goes on if it may. With nothing runnable the schedule pauses (null), or
    /// with <paramref name="reportDeadlock"/> is abandoned as a deadlock.
    /// </summary>
    private Slot? Choose(Slot? me, bool reportDeadlock)
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

    private Slot? ChooseOnce(Slot? me, long now, long stampAt, bool reportDeadlock, out Cpu? service, out long serviceAt)
    {
        service = null;
        serviceAt = 0;
        bool meEnabled = me is { Exited: false, Ready: null };
        Slot? first = null;
        long firstT = long.MaxValue, secondT = long.MaxValue;
        Slot? second = null;
        bool firstTimesOut = false;
        bool firstServices = false;
        foreach (var s in _live)
        {
            if (ReferenceEquals(s, me) && meEnabled)
            {
                continue;
            }

            long t;
            bool timesOut = false, services = false;
            if (s.Ready == null)
            {
                t = TimeOf(s);
            }
            else if (s.Ready())
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
                    services = true;
                }
                else if (s.DeadlineNs != long.MaxValue)
                {
                    t = Math.Max(TimeOf(s), s.DeadlineNs);
                    timesOut = true;
                }
                else
                {
                    continue;
                }
            }

            if (Before(t, s, firstT, first))
            {
                second = first;
                secondT = firstT;
                first = s;
                firstT = t;
                firstTimesOut = timesOut;
                firstServices = services;
            }
            else if (Before(t, s, secondT, second))
            {
                second = s;
                secondT = t;
            }
        }

        if (meEnabled && (first == null || now <= firstT + _quantumNs))
        {
            _yieldAtNs = first == null ? long.MaxValue : firstT + _quantumNs;
            return me;
        }

        if (first == null)
        {
            if (reportDeadlock)
            {
                AbortLocked("deadlock: no kernel thread can run (" + string.Join(", ", _live.Select(s => s.Thread.Name)) + " are blocked)");
            }

            return null;
        }

        if (firstServices)
        {
            service = first.Spinner;
            serviceAt = firstT;
            return null;
        }

        long next = meEnabled ? Math.Min(now, secondT) : secondT;
        _yieldAtNs = next == long.MaxValue ? long.MaxValue : next + _quantumNs;
        if (firstTimesOut)
        {
            first.TimedOut = true;
            first.Ready = null;
        }

        Resume(first, firstT);
        if (firstT > _nowNs)
        {
            _nowNs = firstT;
        }

        return first;
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
