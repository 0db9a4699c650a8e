using System.Diagnostics;
using System.Runtime.CompilerServices;
using Native.PageTable;

namespace Native.SfBufNative;

// epoch-cache, the miss path: a slot for a page not mapped (lock-free from the CPU's magazine,
// or under the pool lock), all-or-nothing multi-page allocation, and the install that maps a
// clean slot with one PTE write. See EpochCacheMapper.cs for the invariants I1-I4.
public sealed unsafe partial class EpochCacheMapper
{
    /// <summary>
    /// Maps every page of <paramref name="pages"/> or none: the allocation waits (or fails, per
    /// <paramref name="flags"/>) holding nothing, so two callers that each need several mappings
    /// cannot deadlock holding part of what the other needs.
    /// </summary>
    /// <returns>True with every handle in <paramref name="result"/>; false (NoWait or a cancelled Catch) with none held.</returns>
    protected override bool AllocManyCore(ReadOnlySpan<VmPage> pages, Span<SfBuf> result, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        CheckAllocMany(pages, result, flags); // Capacity is Nsfbufs
        var td = KernelThread.Current;
        FlushPoint(td.Cpu!);
        _lock.Lock(td);
        var wait = WaitState.None;
        try
        {
            while (true)
            {
                if (IsMyTurn(wait) && TryMapAll(td, pages, result))
                {
                    return true;
                }

                if (!WaitForSlot(td, pages[0].Frame, flags, cancellation, ref wait))
                {
                    return false;
                }
            }
        }
        finally
        {
            // Not held when a stopping machine ended the sleep (Sleep then throws without
            // retaking it): unlocking would hide that exception behind another.
            if (_lock.IsOwned)
            {
                LeaveQueue(ref wait);
                SamplePeak();
                _lock.Unlock(td);
                RetireAheadIfLow(td);
            }
        }
    }

    /// <summary>
    /// Maps every page of <paramref name="pages"/> if enough slots can be made clean (pool lock
    /// held). Every partition's retire right is held throughout, so that no retire runs between
    /// the count and the installs: a page not indexed now, or indexed to a retired slot, then
    /// needs at most one clean slot (an install another CPU makes from its magazine meanwhile only
    /// turns one into a hit). EnsureClean may retire an inactive slot of one of these pages
    /// itself: count again after it, and ask for more while that left too few (each round the
    /// count grows, so it ends).
    /// </summary>
    private bool TryMapAll(KernelThread td, ReadOnlySpan<VmPage> pages, Span<SfBuf> result)
    {
        var cpu = td.Cpu!;
        int taken = 0;
        try
        {
            for (; taken < _cpuCount; taken++)
            {
                TakeRetireRight(cpu, taken);
            }

            bool ready;
            int needed;
            do
            {
                needed = Missing(pages);
                ready = EnsureClean(td, needed, holdsRetireRights: true);
            }
            while (ready && Missing(pages) > needed);

            if (!ready)
            {
                return false;
            }

            for (int i = 0; i < pages.Length; i++)
            {
                int slot = TryHit(pages[i].Frame, cpu);
                if (slot >= 0)
                {
                    CountHit(cpu, slot, pages[i].Frame);
                }
                else
                {
                    slot = MapOrHitLocked(cpu, pages[i].Frame);
                }

                result[i] = Handle(slot, pages[i]);
            }

            return true;
        }
        finally
        {
            for (int c = 0; c < taken; c++)
            {
                Volatile.Write(ref _parts[c].RetireBusy, 0); // only the rights taken: a throw may end the loop early
            }
        }
    }

    /// <summary>
    /// Different pages of <paramref name="pages"/> without a live slot: an upper bound on the
    /// installs they need (pool lock held). A page named twice is installed once and hit again.
    /// </summary>
    private int Missing(ReadOnlySpan<VmPage> pages)
    {
        int missing = 0;
        for (int i = 0; i < pages.Length; i++)
        {
            missing += FirstIndexOf(pages, pages[i].Frame) == i && LiveSlot(pages[i].Frame) < 0 ? 1 : 0;
        }

        return missing;
    }

    private SfBuf AllocSlow(KernelThread td, VmPage page, SfBufFlags flags, CancellationToken cancellation)
    {
        _lock.Lock(td);
        var wait = WaitState.None;
        bool refill = false;
        try
        {
            while (true)
            {
                // Another thread may have mapped the page while this one waited for the lock.
                int slot = TryHit(page.Frame, td.Cpu!);
                if (slot >= 0)
                {
                    CountHit(td.Cpu!, slot, page.Frame);
                    return Handle(slot, page);
                }

                // Only one slot is waited for; a magazine's worth more is taken below when nobody
                // else waits, so that the next misses on this CPU take no lock.
                if (IsMyTurn(wait) && EnsureClean(td, 1))
                {
                    refill = true;
                    return Handle(MapOrHitLocked(td.Cpu!, page.Frame), page);
                }

                if (!WaitForSlot(td, page.Frame, flags, cancellation, ref wait))
                {
                    return SfBuf.None;
                }
            }
        }
        finally
        {
            // Not held when a stopping machine ended the sleep (Sleep then throws without
            // retaking it): unlocking would hide that exception behind another.
            if (_lock.IsOwned)
            {
                LeaveQueue(ref wait);
                if (refill && Volatile.Read(ref _shared->Waiters) == 0)
                {
                    RefillMagazine(td.Cpu!.Id);
                }

                SamplePeak();
                _lock.Unlock(td);
                RetireAheadIfLow(td);
            }
        }
    }

    /// <summary>
    /// Maps <paramref name="frame"/> with a slot from a clean stack (pool lock held), or hits the
    /// slot another CPU installed meanwhile and puts the clean one back.
    /// </summary>
    private int MapOrHitLocked(Cpu cpu, uint frame)
    {
        int clean = PopClean(cpu.Id);
        if (clean < 0)
        {
            throw new InvalidOperationException("epoch-cache: an install without a clean slot (EnsureClean must precede it)");
        }

        int slot = MapOrHit(KernelThread.Current, frame, clean);
        if (slot != clean)
        {
            PushClean(clean);
        }
        else
        {
            _perCpu[cpu.Id].LockedMisses++;
        }

        return slot;
    }

    /// <summary>
    /// Maps <paramref name="frame"/> with <paramref name="clean"/>, a clean slot the caller owns,
    /// and returns it with one reference; or, when another CPU has mapped the frame meanwhile,
    /// takes a reference on that slot and returns it instead (the caller keeps the clean one).
    /// Lock-free: the frame's index entry is claimed first (I3: one slot per page), so two CPUs
    /// missing on one page never map it twice.
    /// </summary>
    private int MapOrHit(KernelThread td, uint frame, int clean)
    {
        while (true)
        {
            var cpu = td.Cpu!; // read on every pass: a failed hit may have blocked and moved the thread
            int entry = Volatile.Read(ref _slotOfFrame[frame]);
            if (entry == InstallingEntry)
            {
                // Another CPU is between its claim and its publication: a few stores that never
                // wait for anything, so spin (servicing this CPU's mailbox) until it is done.
                cpu.Poll();
                Thread.SpinWait(1);
                continue;
            }

            if (entry > 0)
            {
                int hit = TryHit(frame, cpu);
                if (hit >= 0)
                {
                    CountHit(cpu, hit, frame);
                    return hit;
                }

                continue; // the entry changed under the failed hit: read it again (and the CPU)
            }

            cpu.SchedulingPoint(); // another CPU may claim, publish or retire the entry here
            if (Interlocked.CompareExchange(ref _slotOfFrame[frame], InstallingEntry, entry) == entry)
            {
                Install(cpu, clean, frame);
                return clean;
            }
        }
    }

    /// <summary>
    /// Maps the clean slot <paramref name="slot"/> to <paramref name="frame"/>, whose index entry
    /// the caller has claimed: one PTE write, no invalidation anywhere (I1), then publication.
    /// Ordering: the frame and generation are plain stores and the PTE an atomic exchange (a
    /// full fence), all before the count's release store and the index entry's release store;
    /// a CPU that finds the entry (acquire) therefore sees the frame and a valid PTE, and its TLB
    /// walk reads the PTE after that.
    /// </summary>
    private void Install(Cpu cpu, int slot, uint frame)
    {
        EpochSlot* s = _slots + slot;
        Debug.Assert(Volatile.Read(ref s->Ref) == CleanState, "only a clean slot is installed");
        s->Frame = frame;
        s->Referenced = 0;
        Interlocked.Increment(ref s->Generation);
        ulong kva = _window.PageAddress(slot);
        ulong old = Machine.KernelPmap.ExchangePte(kva, Pte.Make(frame, NewPteFlags));
        Debug.Assert(!Pte.IsValid(old), "a clean slot's PTE is invalid");
        Machine.KernelPmap.CountMapping(1); // every miss is one mapping of one page (PaperChecks)
        Volatile.Write(ref s->Ref, 1);
        cpu.SchedulingPoint(); // hits on the claimed entry spin until it is published
        Volatile.Write(ref _slotOfFrame[frame], slot + 1);

        EpochPerCpu* pc = _perCpu + cpu.Id;
        pc->Misses++;
        pc->Used++;
        if (Checked)
        {
            CountBusyExactly(+1);
        }

        SfBufTrace.Alloc(this, frame, kva, hit: false);
        SfBufTrace.Miss(this, frame, kva);
    }

    /// <summary>Counts a hit on <paramref name="cpu"/> (which the caller holds) of <paramref name="slot"/>, mapping <paramref name="frame"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void CountHit(Cpu cpu, int slot, uint frame)
    {
        _perCpu[cpu.Id].Hits++;
        if (MachineEventSource.On.Alloc)
        {
            SfBufTrace.Alloc(this, frame, _window.PageAddress(slot), hit: true);
        }
    }

    /// <summary>
    /// Raises <c>nsfbufspeak</c> to the slots in use now. Sampled under the pool lock and by
    /// <see cref="Stats"/>, not at every install: summing the use counts reads every CPU's line,
    /// which a lock-free miss must not pull across.
    /// </summary>
    private int SamplePeak()
    {
        if (Checked)
        {
            return 0; // exact instead (CountBusyExactly); a racy sum could exceed every true value
        }

        int used = CurrentUsed();
        HighWater.Raise(ref _peak, used);

        return used;
    }

    /// <summary>Checked mode: the busy slots on one shared word, and the peak raised from it where it rises.</summary>
    private void CountBusyExactly(int delta)
    {
        long busy = Interlocked.Add(ref _busyExact, delta);
        HighWater.Raise(ref _peak, (int)busy);
    }

    private int CurrentUsed()
    {
        long used = 0;
        for (int i = 0; i < _cpuCount; i++)
        {
            used += Volatile.Read(ref _perCpu[i].Used);
        }

        return (int)used;
    }
}
