using Native.PageTable;

namespace Native.SfBufNative;

// epoch-cache, partitions, magazines and reclaim: each CPU's partition of the slots (clean stack,
// retired queue, clock), its magazine of clean slots for misses that take no lock, retiring
// ahead, and turning retired slots clean once their epoch has passed.
public sealed unsafe partial class EpochCacheMapper
{
    /// <summary>
    /// CPU <paramref name="cpu"/>'s magazine: word 0 is its fill mark (written by the CPU's own
    /// thread only; every entry at or above it is empty), then <see cref="MagazineSize"/> entries,
    /// each a clean slot or empty. An entry is taken with an atomic exchange, by its CPU without
    /// the lock, or by a lock holder stealing when the pool runs short. Ordering: the exchange is
    /// a full fence, so exactly one of the owner and a thief gets each slot (I4); the slot was
    /// made clean (state and PTE) under the pool lock before the refill stored it with a release.
    /// </summary>
    private int* Magazine(int cpu) => _magazines + (cpu * _magazineStride);

    /// <summary>Takes a clean slot from this CPU's magazine, or -1 (its own thread, no lock).</summary>
    private int PopMagazine(Cpu cpu)
    {
        if (Checked)
        {
            CheckHeld(cpu);
        }

        int* m = Magazine(cpu.Id);
        int n = m[0];
        while (n > 0)
        {
            n--;
            int slot = Interlocked.Exchange(ref m[1 + n], Empty);
            if (slot >= 0)
            {
                m[0] = n;
                return slot;
            }
        }

        m[0] = 0;
        return -1;
    }

    /// <summary>
    /// Returns an unused clean slot taken by <see cref="PopMagazine"/>: to the magazine of the
    /// CPU the thread is on now if it has room (its fill mark is written only by the thread that
    /// holds the CPU, and every entry at or above it is empty), else to its partition's clean
    /// stack under the pool lock. The thread may have blocked since the pop and run on other
    /// CPUs, whose threads may have refilled the magazine to full meanwhile.
    /// </summary>
    private void ReturnClean(KernelThread td, int slot)
    {
        int* m = Magazine(td.Cpu!.Id);
        int n = m[0];
        if (n < MagazineSize)
        {
            Volatile.Write(ref m[1 + n], slot);
            m[0] = n + 1;

            // A waiter that registered and took the magazines back before this store missed the
            // slot and may be asleep: the fence orders the store before the read of the waiter
            // count (a store-load pair, which x86 reorders too), and the wakeup is under the pool
            // lock, which orders it after that waiter's sleep.
            Interlocked.MemoryBarrier();
            if (Volatile.Read(ref _shared->Waiters) != 0)
            {
                WakeWaiters();
            }

            return;
        }

        _lock.Lock(td);
        try
        {
            PushClean(slot);
            if (Volatile.Read(ref _shared->Waiters) != 0)
            {
                Machine.Wakeup(_waitChannel);
            }
        }
        finally
        {
            _lock.Unlock(td);
        }
    }

    /// <summary>
    /// Fills this CPU's magazine from the clean stacks, its own partition's first (pool lock held,
    /// by the CPU's own thread). The slots go in top down, so that the CPU uses them in the order
    /// the stack gave them, lowest first: a CPU's mappings then cover a run of consecutive
    /// addresses, which spreads them evenly over the TLB's sets (docs/epoch-cache.md: filled the
    /// other way, some sets held one more of a CPU's mappings than others).
    /// </summary>
    private void RefillMagazine(int cpu)
    {
        Volatile.Write(ref _parts[cpu].LastRefillEpoch, Volatile.Read(ref _shared->GlobalEpoch)); // not dormant (RetireAheadIfLow)
        int* m = Magazine(cpu);
        int n = m[0];
        int count = Math.Min(MagazineSize - n, _cleanCount);
        for (int i = n + count - 1; i >= n; i--)
        {
            Volatile.Write(ref m[1 + i], PopClean(cpu));
        }

        m[0] = n + count;
    }

    /// <summary>Takes every clean slot out of every CPU's magazine onto its partition's clean stack (pool lock held).</summary>
    private void StealMagazines(Cpu self)
    {
        for (int c = 0; c < _cpuCount; c++)
        {
            int* m = Magazine(c);
            for (int i = 0; i < MagazineSize; i++)
            {
                self.SchedulingPoint(); // the owner may pop the entry first
                int slot = Interlocked.Exchange(ref m[1 + i], Empty);
                if (slot >= 0)
                {
                    PushClean(slot);
                    _steals++;
                }
            }
        }
    }

    /// <summary>
    /// Makes at least <paramref name="needed"/> clean slots available (pool lock held): taking back
    /// the magazines' clean slots when every stack is short, retiring on demand (this CPU's
    /// partition first) when even the retired slots are too few, and waiting out (or, as the last
    /// resort, shooting down) the epochs of the retired batches. False when not enough slots are
    /// inactive: the caller waits.
    /// </summary>
    private bool EnsureClean(KernelThread td, int needed, bool holdsRetireRights = false)
    {
        if (needed == 0)
        {
            return true;
        }

        var cpu = td.Cpu!;
        int home = cpu.Id;
        ReclaimClean(cpu, home);
        if (_cleanCount >= needed)
        {
            return true;
        }

        // The other partitions' retired slots may be clean by now; then the clean slots idle in
        // other CPUs' magazines, which are cheaper than waiting for an epoch (the pool is
        // exhausted only when they are counted too).
        ReclaimClean(cpu, -1);
        if (_cleanCount >= needed)
        {
            return true;
        }

        StealMagazines(cpu);
        if (_cleanCount >= needed)
        {
            return true;
        }

        // Retire on demand, this CPU's partition first. A partition's retire right is waited for
        // (its owner may be retiring ahead: it never needs the pool lock, so this ends), and a
        // retire it just published is counted before retiring more. From now on misses have
        // outrun the clean slots, and each CPU retires ahead (RetireAheadIfLow).
        for (int k = 0; k < _cpuCount && _cleanCount + RetiredCount() < needed; k++)
        {
            _retireAhead = true;
            int c = (home + k) % _cpuCount;
            if (!holdsRetireRights)
            {
                TakeRetireRight(cpu, c);
            }

            try
            {
                int deficit = needed - _cleanCount - RetiredCount();
                if (deficit > 0)
                {
                    RetireBatch(cpu, c, Math.Max(BatchSize, deficit));
                }
            }
            finally
            {
                if (!holdsRetireRights)
                {
                    Volatile.Write(ref _parts[c].RetireBusy, 0);
                }
            }
        }

        if (RetiredCount() + _cleanCount < needed)
        {
            return false; // everything else is in use: the pool is exhausted
        }

        // Enough slots are retired, so this caller must not sleep: no free or wakeup is coming
        // for it, and a sleeping waiter whose turn it is holds up every other one. The retired
        // batches must become clean: wait briefly for the laggards to pass a flush point on their
        // own (they do at every sf_buf operation, context switch and poll), then force them. This
        // CPU passes its own first (another CPU may have published a batch since), and only the
        // epoch that makes enough slots clean is waited for. It ends: the pool lock is held, so
        // the retired and clean slots stay enough (only its holder takes them), and a pass fails
        // only for a CPU that left idle after the fallback looked for laggards and has not yet
        // run its switch-in flush point, which the next pass waits for or forces.
        while (true)
        {
            FlushPoint(cpu);
            WaitForEpoch(td, EpochMakingClean(needed - _cleanCount));
            ReclaimClean(cpu, -1);
            if (_cleanCount >= needed)
            {
                return true;
            }

            _epochRetries++;
        }
    }

    /// <summary>
    /// After a locked allocation, with the pool lock released: once misses have outrun the clean
    /// slots, this CPU retires a batch of its own partition ahead while the partition has fewer
    /// clean and retired slots than its next refill takes (a miss and a magazine) plus
    /// <see cref="LowWater"/> (at most half the partition), so that the batch is clean by the
    /// time it is needed. The retire takes no lock but the short one of the epoch's publication,
    /// so the other CPUs keep refilling their magazines meanwhile (waiters are woken after it,
    /// under the pool lock). Skipped if the partition is being retired already.
    /// </summary>
    private void RetireAheadIfLow(KernelThread td)
    {
        var cpu = td.Cpu;
        if (!_retireAhead || cpu == null)
        {
            return;
        }

        // The partitions this CPU recycles: its own, and those of CPUs that have stopped taking
        // slots (no refill for 4 epochs per CPU), so that a CPU streaming alone cycles
        // through the whole pool, as LRU would, instead of leaving the others' cached mappings
        // in place forever. Retires rotate among them.
        int home = cpu.Id;
        long global = Volatile.Read(ref _shared->GlobalEpoch);
        int supply = 0, size = 0;
        for (int c = 0; c < _cpuCount; c++)
        {
            if (c == home || IsDormant(c, global))
            {
                supply += Volatile.Read(ref _parts[c].Clean) + RetiredIn(c);
                size += _parts[c].Size;
            }
        }

        if (size == 0 || supply >= Math.Min(LowWater + 1 + MagazineSize, size / 2))
        {
            return;
        }

        ref int cursor = ref _perCpu[home].RetireCursor;
        for (int k = 1; k <= _cpuCount; k++)
        {
            int c = (cursor + k) % _cpuCount;
            ref var part = ref _parts[c];
            if ((c != home && !IsDormant(c, global)) || part.Size == 0 || Interlocked.CompareExchange(ref part.RetireBusy, 1, 0) != 0)
            {
                continue;
            }

            cursor = c;
            try
            {
                // At most a quarter of the partition: with many CPUs a partition is smaller than a
                // batch, and retiring all of it would evict the CPU's whole cached set at once.
                RetireBatch(cpu, c, Math.Min(BatchSize, Math.Max(1, part.Size / 4)));
            }
            finally
            {
                Volatile.Write(ref part.RetireBusy, 0);
            }

            break;
        }

        if (Volatile.Read(ref _shared->Waiters) != 0)
        {
            WakeWaiters(); // the retired slots will be clean soon: let the waiters count them
        }
    }

    /// <summary>Whether CPU <paramref name="c"/> has taken no slots from the pool for 4 epochs per CPU.</summary>
    private bool IsDormant(int c, long global) => global - Volatile.Read(ref _parts[c].LastRefillEpoch) > _dormantEpochs;

    /// <summary>Takes partition <paramref name="c"/>'s retire right, waiting for a retire in progress (pool lock may be held: a retirer never takes it).</summary>
    private void TakeRetireRight(Cpu self, int c)
    {
        var spin = default(SpinWait);
        while (Interlocked.CompareExchange(ref _parts[c].RetireBusy, 1, 0) != 0)
        {
            self.Poll(); // a retirer publishes a few stores from now; let it run under the explorer
            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    /// <summary>
    /// Retired slots queued in partition <paramref name="c"/>: a lower bound (a retirer may
    /// append at any time), exact for the pool lock's holder once no retire is in progress.
    /// </summary>
    private int RetiredIn(int c)
    {
        // The head first: it never passes the tail, so the tail read after it is at least as large.
        long head = Volatile.Read(ref _parts[c].RetiredHead);
        return (int)(Volatile.Read(ref _parts[c].RetiredTail) - head);
    }

    /// <summary>Retired slots of every partition not yet reclaimed.</summary>
    private int RetiredCount()
    {
        int n = 0;
        for (int c = 0; c < _cpuCount; c++)
        {
            n += RetiredIn(c);
        }

        return n;
    }

    /// <summary>Partition <paramref name="c"/>'s retired-queue entry at <paramref name="position"/> (positions count up forever).</summary>
    private int RetiredAt(int c, long position) => _retiredQueue[_parts[c].Start + (int)(position % _parts[c].Size)];

    /// <summary>Puts clean slot <paramref name="slot"/> on its home partition's stack (pool lock held).</summary>
    private void PushClean(int slot)
    {
        ref var part = ref _parts[_slots[slot].Home];
        _cleanStack[part.Start + part.Clean] = slot;
        Volatile.Write(ref part.Clean, part.Clean + 1);
        Volatile.Write(ref _cleanCount, _cleanCount + 1);
    }

    /// <summary>A clean slot from <paramref name="cpu"/>'s partition, else from the next partition that has one; -1 if none (pool lock held).</summary>
    private int PopClean(int cpu)
    {
        for (int k = 0; k < _cpuCount; k++)
        {
            ref var part = ref _parts[(cpu + k) % _cpuCount];
            if (part.Clean > 0)
            {
                Volatile.Write(ref _cleanCount, _cleanCount - 1);
                Volatile.Write(ref part.Clean, part.Clean - 1);
                return _cleanStack[part.Start + part.Clean];
            }
        }

        return -1;
    }

    /// <summary>
    /// Moves retired slots whose epoch every running CPU has passed to the clean stacks, of
    /// partition <paramref name="only"/> or (-1) of every partition: by I2 each of those CPUs has
    /// invalidated the slot since its PTE was cleared, and an idle one will flush before it runs,
    /// so I1 holds for every slot moved (pool lock held: I4). A partition's queue is in epoch order.
    /// Ordering: the queue's tail is read with acquire (the retirer released it after the epoch
    /// and the entries); the head moves (release) before the slot's state leaves retired, so the
    /// retirer, which reuses queue entries only behind the head, never overwrites one unread.
    /// </summary>
    private void ReclaimClean(Cpu self, int only)
    {
        if (only >= 0 ? RetiredIn(only) == 0 : RetiredCount() == 0)
        {
            return;
        }

        FlushPoint(self);
        long safe = SafeEpoch(self);
        for (int c = only >= 0 ? only : 0; c < (only >= 0 ? only + 1 : _cpuCount); c++)
        {
            ref var part = ref _parts[c];
            long tail = Volatile.Read(ref part.RetiredTail);
            while (part.RetiredHead < tail)
            {
                int slot = RetiredAt(c, part.RetiredHead);
                EpochSlot* s = _slots + slot;
                if (!IsPast(s->RetireEpoch, safe))
                {
                    break;
                }

                // The head moves before the slot leaves the retired state: the retirer, which
                // never reads the head, can then never reuse an entry still to be read (entries
                // from the head on are distinct retired slots of the partition, never more than
                // its size).
                Volatile.Write(ref part.RetiredHead, part.RetiredHead + 1);
                Volatile.Write(ref s->Ref, CleanState);
                PushClean(slot);
            }
        }
    }
}
