using System.Diagnostics;
using System.Numerics;
using System.Runtime.InteropServices;

namespace Native.PageTable;

/// <summary>
/// A kernel mutex (FreeBSD's <c>mtx</c>). Contended, it spins while servicing its CPU's
/// mailbox (a spinning CPU still takes IPIs), then blocks on a turnstile with its CPU given up
/// (published idle) until the owner releases it. A spin mutex (<c>MTX_SPIN</c>, like
/// <c>smp_ipi_mtx</c>) never blocks.
/// <para>Counts acquisitions and contended acquisitions on the acquiring CPU.</para>
/// </summary>
public sealed class KMutex
{
    private readonly Lock _turnstileLock = new();
    private readonly Queue<KernelThread> _blocked = new();
    private readonly bool _spinOnly;
    private Words _words;

    /// <summary>Creates a mutex named <paramref name="name"/>.</summary>
    public KMutex(string name, bool spinOnly = false)
    {
        Name = name;
        _spinOnly = spinOnly;
    }

    /// <summary>The lock's name, for messages.</summary>
    public string Name { get; }

    /// <summary>True when the calling kernel thread owns the mutex (<c>mtx_owned</c>).</summary>
    public bool IsOwned => KernelThread.CurrentOrNull is { } td && Volatile.Read(ref _words.Owner) == td.Id;

    /// <summary><c>mtx_lock</c>.</summary>
    public void Lock() => Lock(KernelThread.Current);

    /// <summary><c>mtx_lock</c> by <paramref name="td"/>, which must be the calling kernel thread (saves a thread-local lookup).</summary>
    internal void Lock(KernelThread td)
    {
        var cpu = td.Cpu ?? throw new InvalidOperationException($"{td} holds no CPU");
        cpu.SchedulingPoint();
        cpu.WorkLock();
        if (Interlocked.CompareExchange(ref _words.Owner, td.Id, 0) == 0)
        {
            cpu.Count(Counter.LockAcquisitions);
            return;
        }

        if (Volatile.Read(ref _words.Owner) == td.Id)
        {
            throw new LockRecursionException($"{td} already holds {Name}");
        }

        cpu.Count(Counter.LockContentions);
        long waitStart = MachineEventSource.On.Lock ? Stopwatch.GetTimestamp() : 0;
        LockContended(td);
        td.Cpu!.Count(Counter.LockAcquisitions);
        td.Cpu.Work(td.Machine.Cost.LockHandoff); // the lock's line moves to this CPU after the release
        if (waitStart != 0)
        {
            TraceContended(td, waitStart);
        }
    }

    /// <summary><c>mtx_trylock</c>: true when acquired without waiting.</summary>
    public bool TryLock()
    {
        var td = KernelThread.Current;
        td.Cpu?.WorkLock();
        if (Interlocked.CompareExchange(ref _words.Owner, td.Id, 0) != 0)
        {
            return false;
        }

        td.Cpu!.Count(Counter.LockAcquisitions);
        return true;
    }

    /// <summary><c>mtx_unlock</c>; releasing a mutex the caller does not own throws.</summary>
    public void Unlock() => Unlock(KernelThread.Current);

    /// <summary><c>mtx_unlock</c> by <paramref name="td"/>, which must be the calling kernel thread.</summary>
    internal void Unlock(KernelThread td)
    {
        if (Volatile.Read(ref _words.Owner) != td.Id)
        {
            throw new SynchronizationLockException($"{td} does not own {Name}");
        }

        // Full fence before reading Waiters: a blocker increments Waiters before its last
        // attempt, so either it sees the mutex free or we see it waiting.
        Interlocked.Exchange(ref _words.Owner, 0);
        td.Cpu?.SchedulingPoint();
        if (!CpuSet.VolatileIsEmpty(ref _words.Spinners))
        {
            RingSpinners(td, ref _words.Spinners);
        }

        if (Volatile.Read(ref _words.Waiters) > 0)
        {
            lock (_turnstileLock)
            {
                if (_blocked.TryDequeue(out var next))
                {
                    Interlocked.Decrement(ref _words.Waiters);
                    next.Wakeup.Set();
                }
            }

            td.Cpu?.VirtualNotify();
        }
    }

    // Word by word in place, bit by bit as the one-word mask did: no copy of the set, no
    // enumerator. A spinner registered meanwhile sees the mutex free before it parks.
    private static void RingSpinners(KernelThread td, ref CpuSet spinners)
    {
        var machine = td.Machine;
        for (int w = 0; w < CpuSet.WordCount; w++)
        {
            for (ulong bits = Volatile.Read(ref CpuSet.WordRef(ref spinners, w)); bits != 0; bits &= bits - 1)
            {
                machine.CpuAt((w * 64) + BitOperations.TrailingZeroCount(bits)).Ring();
            }
        }
    }

    /// <summary>Throws unless the calling thread owns the mutex (<c>mtx_assert(MA_OWNED)</c>).</summary>
    public void AssertOwned()
    {
        if (!IsOwned)
        {
            throw new SynchronizationLockException($"{Name} is not owned by the calling thread");
        }
    }

    private void TraceContended(KernelThread td, long waitStart) =>
        MachineEventSource.Log.LockContended(Name, td.Id, td.Cpu!.Id, (long)Stopwatch.GetElapsedTime(waitStart).TotalNanoseconds, _spinOnly);

    private void LockContended(KernelThread td)
    {
        while (true)
        {
            td.Machine.ThrowIfStopping();

            // Spin (servicing the mailbox) while the owner is likely to let go soon; a spin mutex
            // then parks its host thread, still a running CPU that answers IPIs, until the owner
            // rings it at unlock.
            var cpu = td.Cpu!;
            var free = new Free(this);
            CpuSet.AtomicAdd(ref _words.Spinners, cpu.Id);
            bool acquired;
            try
            {
                acquired = cpu.WaitUntil(ref free, park: _spinOnly) && Interlocked.CompareExchange(ref _words.Owner, td.Id, 0) == 0;
            }
            finally
            {
                CpuSet.AtomicRemove(ref _words.Spinners, cpu.Id);
            }

            if (acquired)
            {
                return;
            }

            if (_spinOnly)
            {
                continue;
            }

            // A thread in a critical section may spin but not block (it would switch out).
            td.AssertMaySwitch($"blocking on mutex {Name}");
            bool blocked;
            lock (_turnstileLock)
            {
                Interlocked.Increment(ref _words.Waiters);
                if (Interlocked.CompareExchange(ref _words.Owner, td.Id, 0) == 0)
                {
                    Interlocked.Decrement(ref _words.Waiters);
                    return;
                }

                td.Wakeup.Reset();
                _blocked.Enqueue(td);
                blocked = true;
            }

            if (blocked)
            {
                // Block like a turnstile: give the CPU up so shootdowns do not wait for us.
                td.Cpu!.Count(Counter.Sleeps);
                td.Machine.Scheduler.Release(td);
                if (td.Machine.Controller is { } controller)
                {
                    BlockControlled(controller, td);
                }
                else
                {
                    td.WaitForWakeup(Timeout.InfiniteTimeSpan, CancellationToken.None);
                }

                td.Machine.Scheduler.Acquire(td);
            }
        }
    }

    // Its own method so that the closure is allocated only here, not at every contended acquisition.
    private static void BlockControlled(ControlledScheduler controller, KernelThread td)
    {
        controller.WaitUntil(td, () => td.Wakeup.IsSet || td.Machine.IsStopping);
        if (controller.IsVirtual)
        {
            td.ReadyAtNs += td.Machine.Cost.Wakeup.Ns; // a turnstile wakeup, priced as one
        }
    }

    /// <summary>
    /// The words every CPU taking the mutex touches, side by side so that the owner and the first
    /// word of the spinners share a cache line (as the one-word cpumask did).
    /// </summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct Words
    {
        public int Owner;
        public int Waiters;

        // CPUs spinning on the mutex (they may park: unlock rings them). A spinner sets and
        // clears its own bit with one atomic on its word; unlock reads the words, no atomic.
        public CpuSet Spinners;
    }

    /// <summary>The spin condition: the mutex is free. Registers the spinner's CPU so that unlock rings it if it parks.</summary>
    private readonly struct Free(KMutex mutex) : ICrossCpuWait
    {
        public bool IsMet() => Volatile.Read(ref mutex._words.Owner) == 0;

        public void Tick()
        {
        }
    }
}
