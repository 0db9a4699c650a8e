using Native.Interop;

namespace Native.PageTable;

/// <summary>
/// Hands simulated CPUs to kernel threads. A CPU has at most one owner; a thread that wants a
/// CPU while none it may use is free waits in FIFO order. Ownership changes under one lock, which
/// also orders each CPU's single-writer data (TLB, counters) between successive owners.
/// </summary>
internal sealed class Scheduler
{
    private readonly Machine _machine;
    private readonly Lock _lock = new();
    private readonly KernelThread?[] _owners;
    private readonly LinkedList<KernelThread> _waiting = new();
    private readonly int[] _hostCores;
    private readonly bool _pin;

    public Scheduler(Machine machine, int cpus, int[] hostCores, bool pin)
    {
        _machine = machine;
        _owners = new KernelThread?[cpus];
        _hostCores = hostCores;
        _pin = pin;
    }

    /// <summary>True when kernel threads are pinned to host cores.</summary>
    public bool PinsHostThreads => _pin;

    /// <summary>Kernel threads queued for a CPU right now.</summary>
    public int WaitingForCpu
    {
        get
        {
            lock (_lock)
            {
                return _waiting.Count;
            }
        }
    }

    /// <summary>The host core simulated CPU <paramref name="cpu"/> runs on when pinned.</summary>
    public int HostCoreOf(int cpu) => _hostCores[cpu % _hostCores.Length];

    /// <summary>Takes a CPU for <paramref name="td"/>, waiting for one if needed, then switches it in.</summary>
    public void Acquire(KernelThread td)
    {
        int cpu;
        lock (_lock)
        {
            cpu = Choose(td);
            if (cpu >= 0)
            {
                _owners[cpu] = td;
            }
            else
            {
                td.GrantedCpu = -1;
                _waiting.AddLast(td);
            }
        }

        if (cpu < 0)
        {
            if (_machine.Controller is { } controller)
            {
                controller.WaitUntil(td, () => td.CpuGranted.CurrentCount > 0 || _machine.IsStopping);
            }

            td.CpuGranted.Wait();
            cpu = td.GrantedCpu;
            if (cpu < 0 || _machine.IsStopping)
            {
                lock (_lock)
                {
                    _waiting.Remove(td);
                }

                _machine.ThrowIfStopping();
            }
        }

        SwitchIn(td, _machine.CpuAt(cpu));
    }

    /// <summary>Switches <paramref name="td"/> out and gives its CPU to the first waiter that may use it.</summary>
    public void Release(KernelThread td)
    {
        if (td.Cpu == null && _machine.IsStopping)
        {
            return; // stopped while it waited for a CPU
        }

        var cpu = td.Cpu ?? throw new InvalidOperationException($"{td} holds no CPU");
        _machine.OnSwitchOut(cpu, td);

        // Serve everything already posted, then publish idle: from here on shootdowns mark the
        // CPU flush-pending instead of waiting for it.
        cpu.SchedulingPoint();
        cpu.EnterIdle();
        cpu.Owner = null;
        td.Cpu = null;
        td.LastCpu = cpu.Id;
        td.ReadyAtNs = cpu.ClockNs;

        lock (_lock)
        {
            _owners[cpu.Id] = null;
            for (var node = _waiting.First; node != null; node = node.Next)
            {
                var waiter = node.Value;
                if (waiter.RequiredCpu < 0 || waiter.RequiredCpu == cpu.Id)
                {
                    _waiting.Remove(node);
                    _owners[cpu.Id] = waiter;
                    waiter.GrantedCpu = cpu.Id;
                    waiter.ReadyAtNs = Math.Max(waiter.ReadyAtNs, cpu.ClockNs);
                    waiter.CpuGranted.Release();
                    break;
                }
            }
        }
    }

    /// <summary>Loads <paramref name="td"/>'s user page table on <paramref name="cpu"/> if another is loaded.</summary>
    public static void LoadAddressSpace(Cpu cpu, KernelThread td)
    {
        var next = td.VmSpace?.Pmap;

        // A pure kernel thread borrows whatever is loaded, as kernel threads do (lazy switch).
        if (next == null || ReferenceEquals(next, cpu.LoadedPmap))
        {
            return;
        }

        cpu.LoadedPmap?.Deactivate(cpu.Id);
        next.Activate(cpu.Id);
        cpu.LoadedPmap = next;
        cpu.FlushNonGlobalLocal();
    }

    private int Choose(KernelThread td)
    {
        int required = td.RequiredCpu;
        if (required >= 0)
        {
            return _owners[required] == null ? required : -1;
        }

        if (td.LastCpu >= 0 && td.LastCpu < _owners.Length && _owners[td.LastCpu] == null)
        {
            return td.LastCpu;
        }

        for (int i = 0; i < _owners.Length; i++)
        {
            if (_owners[i] == null)
            {
                return i;
            }
        }

        return -1;
    }

    private void SwitchIn(KernelThread td, Cpu cpu)
    {
        if (_pin)
        {
            int core = HostCoreOf(cpu.Id);
            if (td.HostCore != core)
            {
                HostCpu.PinCurrentThread(core);
                td.HostCore = core;
            }
        }

        int previous = td.LastCpu;
        cpu.ClockNs = Math.Max(cpu.ClockNs, td.ReadyAtNs); // virtual time: an idle CPU's clock jumps to the thread's
        cpu.Owner = td;
        td.Cpu = cpu;
        cpu.Work(_machine.Cost.ContextSwitch);
        cpu.LeaveIdle();
        LoadAddressSpace(cpu, td);
        cpu.Count(Counter.ContextSwitches);
        bool migrated = previous >= 0 && previous != cpu.Id && td.HasRun;
        if (migrated)
        {
            cpu.Count(Counter.Migrations);
        }

        td.HasRun = true;
        _machine.OnSwitchIn(cpu, td, migrated ? previous : -1);
    }
}
