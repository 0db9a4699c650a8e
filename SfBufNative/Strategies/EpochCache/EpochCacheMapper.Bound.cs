using Native.PageTable;

namespace Native.SfBufNative;

// epoch-cache, the exposure bound: how long a retired slot's old translation may stay usable in
// any TLB, and the early flush that keeps it.
public sealed unsafe partial class EpochCacheMapper : IAlarmHook
{
    /// <summary>
    /// The exposure bound, in virtual nanoseconds: no TLB keeps a retired slot's old translation
    /// longer than this after the retire that cleared its PTE returns (<c>Machine.LongestExposureNs</c>
    /// stays at or below it). The value: 100 µs is twice the cross-CPU spin after which the
    /// fallback already forces the laggards when a miss needs their slots, so a pool under
    /// pressure was already near it; it is ten times shorter than the 1 ms tick of a HZ=1000
    /// kernel, the exposure a design that invalidates only at timer interrupts keeps; and at the
    /// default profile a forced catch-up of every CPU fits inside it up to 256 CPUs (see
    /// <see cref="BoundMarginNs"/>). Shorter bounds cost early flushes in proportion: with a
    /// batch retired every few µs at many CPUs, each CPU's own flush points already catch up
    /// far sooner, and the early flush fires only for a CPU that runs no flush point (idle, or a
    /// long loop that touches memory only).
    /// </summary>
    public const long ExposureBoundNs = 100_000;

    /// <summary><see cref="SfBufStats.Details"/> key: alarms that found a retired batch near the exposure bound and forced its laggards (early flushes).</summary>
    public const string DetailEarlyFlushes = "epoch.early_flushes";

    private const int RetireTimes = 1024; // the retire times of the last epochs, by epoch

    private readonly long[] _retiredAtNs = new long[RetireTimes];
    private long _earlyFlushes;
    private long _alarmFor;   // the epoch the alarm requested is for (0: none); publish lock or the alarm's holder
    private int _enforcing;

    /// <summary>
    /// How long before the bound the early flush starts: one IPI sent per CPU, one delivery,
    /// handler and full flush, and two quanta and a context switch for the time between the
    /// alarm's due time and the first memory access of a running CPU that takes it (a CPU's clock
    /// moves by a charge at a time). Virtual time only.
    /// </summary>
    public long BoundMarginNs { get; private set; }

    /// <summary>The bound holds by construction only in virtual time, where the machine has an alarm.</summary>
    private bool Bounded => Machine.QuantumNs > 0;

    private void InitBound()
    {
        var c = Machine.Options.Cost;
        BoundMarginNs = (long)Math.Ceiling((_cpuCount * c.IpiSendNs) + c.IpiDeliveryNs + c.IpiHandlerNs + c.FullFlushNs + c.ContextSwitchNs)
            + (2 * Machine.QuantumNs);
        Machine.AddAlarmHook(this);
    }

    /// <summary>When epoch <paramref name="epoch"/> must be forced by (its retire time plus the bound less the margin).</summary>
    private long DueAt(long epoch, long global) => global - epoch >= RetireTimes
        ? long.MinValue // its time is overwritten: long past
        : _retiredAtNs[epoch % RetireTimes] + ExposureBoundNs - BoundMarginNs;

    /// <summary>
    /// A batch was published at <paramref name="epoch"/> on <paramref name="cpu"/> (publish lock
    /// held): stamps it and, if no alarm is pending, asks for one at its due time.
    /// </summary>
    private void StampRetire(Cpu cpu, long epoch)
    {
        if (!Bounded)
        {
            return;
        }

        _retiredAtNs[epoch % RetireTimes] = cpu.VirtualTimeNs;
        if (Volatile.Read(ref _alarmFor) == 0)
        {
            Volatile.Write(ref _alarmFor, epoch);
            Machine.RequestAlarm(DueAt(epoch, epoch));
        }
    }

    /// <summary>
    /// The alarm (a timer interrupt, <see cref="Machine.RequestAlarm"/>): forces every CPU still
    /// behind an epoch that is due, then asks for the alarm of the next oldest epoch not yet
    /// passed everywhere. This is the early flush that keeps <see cref="ExposureBoundNs"/>: a CPU
    /// that ran no flush point since (idle, or in a loop that only touches memory) is flushed by
    /// the fallback shootdown (an IPI if it runs, a deferred flush if it is idle), this CPU by
    /// its own flush point.
    /// </summary>
    void IAlarmHook.Alarm(Cpu cpu) => EnforceBound(cpu);

    private void EnforceBound(Cpu cpu)
    {
        if (Interlocked.Exchange(ref _enforcing, 1) != 0)
        {
            return; // another CPU's alarm is at it (real time cannot ring; kept for clarity)
        }

        bool forced = false;
        try
        {
            bool settled = false;
            while (!settled)
            {
                long global = Volatile.Read(ref _shared->GlobalEpoch);
                long oldest = OldestObserved(global);
                if (oldest >= global)
                {
                    Volatile.Write(ref _alarmFor, 0);
                    settled = oldest >= Volatile.Read(ref _shared->GlobalEpoch); // else published meanwhile without an alarm: look again
                    continue;
                }

                long due = DueAt(oldest + 1, global);
                if (due > cpu.VirtualTimeNs)
                {
                    Volatile.Write(ref _alarmFor, oldest + 1);
                    Machine.RequestAlarm(due);
                    break;
                }

                if (Machine.Planted(PlantedBug.EpochBoundSkipsEarlyFlush))
                {
                    // The planted bug: the alarm is taken and forgotten; only flush points and
                    // the slot-hungry fallback advance the laggards.
                    Volatile.Write(ref _alarmFor, 0);
                    break;
                }

                // Every CPU to the newest epoch at once: the later batches are due soon too, and
                // one full flush serves them all.
                _earlyFlushes++;
                forced = true;
                FlushPoint(cpu);
                ForceEpoch(cpu, global, includeIdle: true);
            }
        }
        finally
        {
            Volatile.Write(ref _enforcing, 0);
        }

        if (forced)
        {
            // A miss may be waiting for the epochs just passed; a CPU that never yields (the loop
            // the alarm interrupted) would otherwise leave its wait unevaluated.
            cpu.VirtualNotify();
        }
    }

    /// <summary>
    /// The lowest epoch any CPU has observed, idle ones included (an idle CPU's TLB may still hold
    /// what it cached before it went idle). An idle CPU already marked flush-pending is raised to
    /// <paramref name="global"/> instead: it flushes everything before it runs, and if it woke
    /// since the mark was read, that flush came after every batch up to <paramref name="global"/>
    /// was published (read before the mark), so it passed them all.
    /// </summary>
    private long OldestObserved(long global)
    {
        long oldest = long.MaxValue;
        var cpus = Machine.Cpus;
        for (int i = 0; i < _cpuCount; i++)
        {
            if (Volatile.Read(ref _perCpu[i].ObservedEpoch) < global && cpus[i].IsIdleFlushPending)
            {
                RaiseObserved(_perCpu + i, global);
            }

            oldest = Math.Min(oldest, Volatile.Read(ref _perCpu[i].ObservedEpoch));
        }

        return oldest;
    }
}
