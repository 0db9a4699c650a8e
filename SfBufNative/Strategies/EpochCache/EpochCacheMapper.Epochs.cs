using System.Diagnostics;
using System.Runtime.CompilerServices;
using Native.PageTable;

namespace Native.SfBufNative;

// epoch-cache, epochs: the flush points at which a CPU invalidates what was retired since the
// epoch it last observed, the retire that unmaps a batch of slots and publishes a new epoch,
// the safe epoch that decides when a retired slot is clean, and the fallback shootdown.
public sealed unsafe partial class EpochCacheMapper
{
    /// <summary>
    /// A flush point on <paramref name="cpu"/> (its own thread): invalidate what was retired since
    /// the epoch this CPU last observed, then publish the epoch read before invalidating.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void FlushPoint(Cpu cpu)
    {
        if (Checked)
        {
            CheckHeld(cpu);
        }

        long global = Volatile.Read(ref _shared->GlobalEpoch);
        if (global != Volatile.Read(ref _perCpu[cpu.Id].ObservedEpoch))
        {
            CatchUp(cpu, global);
        }
    }

    /// <summary>
    /// Checked mode: per-CPU state (TLB, epoch, magazine) is touched only by the thread holding
    /// that CPU. A CPU read before a call that can block is stale once the thread resumes.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void CheckHeld(Cpu cpu)
    {
        var caller = KernelThread.CurrentOrNull;
        if (!ReferenceEquals(cpu.Owner, caller))
        {
            throw new InvalidOperationException($"epoch-cache: {caller?.ToString() ?? "a host thread"} works on cpu {cpu.Id}, which {cpu.Owner?.ToString() ?? "no thread"} holds");
        }
    }

    /// <summary>
    /// The slow half of a flush point (I2: read before, publish after). Ordering: the global
    /// epoch was read with acquire, so the descriptors and the PTE clears of every batch up to it
    /// (published before the epoch's full-fence exchange in <see cref="RetireBatch"/>) are seen;
    /// the invalidations are this CPU's own TLB; the epoch is published by a compare-and-swap (a
    /// full fence), so a reclaimer that reads it (acquire) sees a CPU that has invalidated.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void CatchUp(Cpu cpu, long global)
    {
        EpochPerCpu* pc = _perCpu + cpu.Id;
        long observed = Volatile.Read(ref pc->ObservedEpoch);
        if (observed >= global)
        {
            return; // advanced by a fallback shootdown meanwhile
        }

        // Read before, publish after (I2): a batch retired from here on has a later epoch than
        // the one this CPU publishes, so it is never counted as invalidated here.
        cpu.SchedulingPoint();
        if (!InvalidateRetired(cpu, observed, global))
        {
            cpu.FlushLocal();
        }

        pc->FlushPoints++;
        cpu.SchedulingPoint();
        RaiseObserved(pc, global);
    }

    /// <summary>
    /// Invalidates page by page the slots of batches (<paramref name="from"/>, <paramref name="to"/>]
    /// if they are few enough and still described in the ring; false means "flush everything".
    /// <para>
    /// The descriptors are a seqlock (the writer is <see cref="RetireBatch"/>): epoch 0 while a
    /// descriptor is rewritten, its epoch once it is complete. Ordering, for weakly ordered hosts
    /// as well as x86: the epoch read that opens each pass is an acquire (Volatile.Read), so the
    /// count and entries are read after it; a full fence separates those reads from the epoch
    /// read that closes the pass (a load-load barrier, smp_rmb; an acquire would not keep the
    /// earlier loads before it). The writer clears the epoch with a full fence before rewriting
    /// anything (smp_wmb) and publishes it with a release after, so a reader that sees the same
    /// epoch before and after read entries written for that epoch only.
    /// </para>
    /// </summary>
    private bool InvalidateRetired(Cpu cpu, long from, long to)
    {
        if (to - from > BatchRing)
        {
            return false;
        }

        int total = 0;
        for (long e = from + 1; e <= to; e++)
        {
            EpochBatch* b = _batches + (e % BatchRing);
            if (Volatile.Read(ref b->Epoch) != e)
            {
                return false;
            }

            total += Volatile.Read(ref b->Count);
            if (total > FlushCeiling)
            {
                return false;
            }
        }

        TestHooks?.BetweenInvalidatePasses?.Invoke();
        for (long e = from + 1; e <= to; e++)
        {
            EpochBatch* b = _batches + (e % BatchRing);

            // Clamped: the descriptor may have been rewritten for a later epoch since the first
            // pass (a reader BatchRing epochs behind), with a count above the entries it keeps.
            int count = Math.Clamp(Volatile.Read(ref b->Count), 0, FlushCeiling);
            int* slots = _batchSlots + ((e % BatchRing) * FlushCeiling);
            for (int i = 0; i < count; i++)
            {
                cpu.InvalidateLocal(_window.PageAddress(slots[i]) >> Pte.PageShift);
            }

            // Seqlock check: a descriptor rewritten for a later epoch while it was read may have
            // named other slots; then only a full flush is certain. The fence keeps the reads of
            // the count and entries before the epoch's second read (see the summary).
            Interlocked.MemoryBarrier();
            if (Volatile.Read(ref b->Epoch) != e)
            {
                return false;
            }
        }

        return true;
    }

    private static void RaiseObserved(EpochPerCpu* pc, long epoch)
    {
        while (true)
        {
            long seen = Volatile.Read(ref pc->ObservedEpoch);
            if (seen >= epoch || Interlocked.CompareExchange(ref pc->ObservedEpoch, epoch, seen) == seen)
            {
                return;
            }
        }
    }

    /// <summary>
    /// The retire epoch of the <paramref name="count"/>-th oldest queued slot: once every running
    /// CPU has passed it, that many retired slots can be reclaimed (each partition's queue is in
    /// epoch order, so their heads are merged; pool lock held, and at least that many are queued).
    /// </summary>
    private long EpochMakingClean(int count)
    {
        Span<long> next = _cpuCount <= 64 ? stackalloc long[_cpuCount] : new long[_cpuCount];
        for (int c = 0; c < _cpuCount; c++)
        {
            next[c] = _parts[c].RetiredHead;
        }

        long epoch = 0;
        for (int taken = 0; taken < count; taken++)
        {
            int best = -1;
            for (int c = 0; c < _cpuCount; c++)
            {
                if (next[c] < Volatile.Read(ref _parts[c].RetiredTail)
                    && (best < 0 || _slots[RetiredAt(c, next[c])].RetireEpoch < _slots[RetiredAt(best, next[best])].RetireEpoch))
                {
                    best = c;
                }
            }

            if (best < 0)
            {
                break;
            }

            epoch = _slots[RetiredAt(best, next[best]++)].RetireEpoch;
        }

        return epoch;
    }

    /// <summary>
    /// The lowest epoch observed by any CPU that is running a thread (idle CPUs flush before they
    /// run). Ordering: a store-buffering pair. A CPU leaving idle sets its running bit with a
    /// compare-and-swap (a full fence) and only then reads the global epoch at its switch-in
    /// flush point; the retire that a reclaim serves published the epoch with an exchange (a full
    /// fence) before this reads the CPU's state. So either this sees the CPU running (and waits
    /// for its epoch) or the CPU's flush point sees the new epoch (and invalidates the batch);
    /// on x86 as on Arm64 both fences are needed, since each side stores then loads.
    /// </summary>
    private long SafeEpoch(Cpu self)
    {
        long safe = long.MaxValue;
        var cpus = Machine.Cpus;
        for (int i = 0; i < _cpuCount; i++)
        {
            // Read the epoch first: a CPU seen idle afterwards will pass a flush point before it
            // runs, and one seen running has published at least this epoch.
            long observed = Volatile.Read(ref _perCpu[i].ObservedEpoch);
            self.SchedulingPoint();
            if (!cpus[i].IsIdle)
            {
                safe = Math.Min(safe, observed);
            }
        }

        return safe;
    }

    /// <summary>
    /// Waits for every running CPU to pass <paramref name="need"/> on its own, for the machine's
    /// cross-CPU spin (servicing this CPU's mailbox meanwhile), then forces the laggards.
    /// </summary>
    private void WaitForEpoch(KernelThread td, long need)
    {
        var cpu = td.Cpu!;
        var passed = new EpochPassed(this, cpu, need);
        if (!cpu.WaitUntil(ref passed, park: false))
        {
            ForceEpoch(cpu, need);
        }
    }

    /// <summary>
    /// The fallback: one full-flush shootdown to every running CPU that has not observed
    /// <paramref name="need"/>, and with <paramref name="includeIdle"/> (the exposure bound's early
    /// flush) to the idle ones too, which the shootdown marks flush-pending without an IPI.
    /// </summary>
    private void ForceEpoch(Cpu self, long need, bool includeIdle = false)
    {
        var laggards = default(CpuSet);
        var cpus = Machine.Cpus;
        for (int i = 0; i < _cpuCount; i++)
        {
            if (i != self.Id && Volatile.Read(ref _perCpu[i].ObservedEpoch) < need && (includeIdle || !cpus[i].IsIdle))
            {
                laggards.Add(i);
            }
        }

        if (laggards.IsEmpty)
        {
            return;
        }

        // Every target flushes its whole TLB after the batch was published (or is idle and
        // flushes before it runs), so it has passed the epoch: advance it on its behalf.
        long global = Volatile.Read(ref _shared->GlobalEpoch);
        var td = KernelThread.Current;
        long start = MachineEventSource.On.EpochFallback ? Stopwatch.GetTimestamp() : 0;
        td.PinSelf();
        try
        {
            self.Shootdown(laggards, ShootdownKind.All);
        }
        finally
        {
            td.UnpinSelf();
        }

        _fallbackShootdowns++;
        if (start != 0)
        {
            MachineEventSource.Log.EpochFallback(Id, self.Id, laggards.Word(0), need, global, (long)Stopwatch.GetElapsedTime(start).TotalNanoseconds, laggards.Count);
        }

        foreach (int laggard in laggards)
        {
            RaiseObserved(_perCpu + laggard, global);
        }
    }

    /// <summary>
    /// Retires up to <paramref name="want"/> inactive slots of partition <paramref name="c"/>
    /// chosen by its second-chance clock: reference count 0 → retired, out of the index, PTE
    /// cleared; then one new epoch for the batch. The caller holds the partition's retire right
    /// (so it alone moves the hand and appends to the queue), not necessarily the pool lock; the
    /// publication of the epoch is serialized by a short lock of its own.
    /// Ordering: each slot leaves the inactive state by a compare-and-swap (a full fence: a hit
    /// racing it either took the count first or finds the slot retired), then the index entry is
    /// cleared (compare-and-swap) and the PTE (exchange); the batch's descriptor is a seqlock
    /// (see <see cref="InvalidateRetired"/>); the global epoch is published by an exchange (a full
    /// fence) after all of that, and the queue's tail with a release after the epoch, so a
    /// reclaimer that reads the tail (acquire) sees the slots' retire epochs.
    /// </summary>
    private void RetireBatch(Cpu cpu, int c, int want)
    {
        ref var part = ref _parts[c];
        Debug.Assert(Volatile.Read(ref part.RetireBusy) == 1, "RetireBatch runs with the partition's retire right");
        long tail = part.RetiredTail;
        int retired = 0;
        for (int scanned = 0; retired < want && scanned < 2 * part.Size; scanned++)
        {
            int slot = part.Start + part.Hand;
            part.Hand = (part.Hand + 1) % part.Size;
            EpochSlot* s = _slots + slot;
            if (Volatile.Read(ref s->Ref) != 0)
            {
                continue;
            }

            if (s->Referenced != 0)
            {
                s->Referenced = 0;
                continue;
            }

            cpu.SchedulingPoint(); // a lock-free hit may take the slot between the test and the CAS
            if (Interlocked.CompareExchange(ref s->Ref, RetiredState, 0) != 0)
            {
                continue; // hit meanwhile
            }

            Interlocked.CompareExchange(ref _slotOfFrame[s->Frame], 0, slot + 1);
            ulong kva = _window.PageAddress(slot);
            Machine.KernelPmap.ExchangePte(kva, 0);
            SfBufTrace.Recycle(this, kva, s->Frame, newFrame: -1);

            // Staged past the tail: the consumer reads only below it, and the entries from the
            // head on are distinct retired slots of this partition, so none is overwritten.
            _retiredQueue[part.Start + (int)((tail + retired) % part.Size)] = slot;
            retired++;
        }

        if (retired == 0)
        {
            return;
        }

        var td = KernelThread.Current;
        _publishLock.Lock(td);
        try
        {
            // Waiting for the lock on an oversubscribed host may have parked this CPU idle, and
            // reclaims skip idle CPUs: pass a flush point before going on.
            FlushPoint(cpu);
            long epoch = Volatile.Read(ref _shared->GlobalEpoch) + 1; // only the publish lock's holder advances it
            EpochBatch* batch = _batches + (epoch % BatchRing);
            int* batchSlots = _batchSlots + ((epoch % BatchRing) * FlushCeiling);
            // The descriptor's seqlock (InvalidateRetired): the clear is a full fence, so no reader
            // sees a rewritten entry or count beside the old epoch; the epoch is published with a
            // release once the entries and count are written.
            Interlocked.Exchange(ref batch->Epoch, 0);
            for (int i = 0; i < retired; i++)
            {
                int slot = _retiredQueue[part.Start + (int)((tail + i) % part.Size)];
                _slots[slot].RetireEpoch = epoch;
                if (i < FlushCeiling)
                {
                    batchSlots[i] = slot;
                }
            }

            _recycles += retired;
            _batchesRetired++;
            Volatile.Write(ref batch->Count, retired);
            Volatile.Write(ref batch->Epoch, epoch);
            cpu.SchedulingPoint(); // flush points racing the publication of the batch
            Interlocked.Exchange(ref _shared->GlobalEpoch, epoch);
            StampRetire(cpu, epoch);

            // The slots reach the queue only with their epoch published, so that whoever waits
            // for one of them waits for an epoch a fallback shootdown can force.
            cpu.SchedulingPoint(); // the pool lock's holder reclaiming from the queue meanwhile
            Volatile.Write(ref part.RetiredTail, tail + retired);
        }
        finally
        {
            _publishLock.Unlock(td);
        }

        FlushPoint(cpu);
    }

    /// <summary>
    /// I2 decides when a retired slot is clean: every running CPU has published an epoch at least
    /// the slot's retire epoch, so it has invalidated the slot since it was unmapped.
    /// </summary>
    private bool IsPast(long retireEpoch, long safe) => TestHooks is { RecycleOneEpochEarly: true }
        ? retireEpoch <= safe + 1
        : retireEpoch <= safe;

    /// <summary>A cross-CPU wait for every running CPU to publish an epoch at least <c>Need</c>.</summary>
    private readonly struct EpochPassed(EpochCacheMapper mapper, Cpu self, long need) : ICrossCpuWait
    {
        public bool IsMet() => mapper.IsPast(need, mapper.SafeEpoch(self));

        public void Tick()
        {
        }
    }
}
