using System.Diagnostics;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Native.PageTable;

/// <summary>
/// One simulated CPU: its MMU (translation through its own <see cref="Tlb"/>), its IPI mailbox
/// and the memory-access instructions kernel code uses. Every member that touches the TLB must
/// be called by the kernel thread that currently holds this CPU (<see cref="Machine.CurrentCpu"/>).
/// <para>
/// Poll points: every memory access, every lock spin and every acknowledgement wait services
/// the mailbox first, so a CPU running kernel code always answers shootdowns.
/// </para>
/// </summary>
public sealed unsafe partial class Cpu
{
    // State word bits: RUNNING while a thread holds the CPU; FLUSH_PENDING when a shootdown
    // found it idle; the low bits are the CPUs whose request is waiting in this mailbox. Keeping
    // all three in one word makes "check idle, then post" a single CAS.
    internal const ulong Running = 1UL << 63;
    internal const ulong FlushPending = 1UL << 62;
    internal const ulong MailMask = FlushPending - 1;

    private readonly Machine _machine;
    private readonly Tlb _tlb;
    private readonly long* _counters;
    private readonly CpuShared* _shared;
    private readonly byte* _frames;
    private readonly ulong _dmapBytes;
    private readonly bool _checked;
    private readonly CostTicks _cost;
    private readonly long _watchdogTicks;
    private readonly ulong _mappingStart;
    private readonly ulong _mappingBytes;

    internal Cpu(Machine machine, int id, Tlb tlb, CpuCounters counters, CpuShared* shared, byte* frames)
    {
        _machine = machine;
        Id = id;
        _tlb = tlb;
        _counters = counters.BlockOf(id);
        _shared = shared;
        _frames = frames;
        _dmapBytes = machine.Layout.DirectMapBytes;
        _checked = machine.Options.Checked;
        _cost = machine.Cost;
        _watchdogTicks = (long)(machine.Options.ShootdownWatchdog.TotalSeconds * Stopwatch.Frequency);

        // The ephemeral-mapping regions, the sf_buf window, the fixmap then kernel_map, are
        // adjacent (one guard page between each, never mapped): one range check classifies a miss.
        _mappingStart = machine.Layout.SfBufWindow.Start;
        _mappingBytes = machine.Layout.KernelMap.End - _mappingStart;
    }

    /// <summary>The CPU number (cpuid), 0-based.</summary>
    public int Id { get; }

    /// <summary>This CPU's bit in a cpumask.</summary>
    public ulong Mask => 1UL << Id;

    /// <summary>The machine this CPU belongs to.</summary>
    public Machine Machine => _machine;

    /// <summary>The kernel thread running here, or null when the CPU is idle.</summary>
    public KernelThread? Owner { get; internal set; }

    /// <summary>The user page table currently loaded (CR3), or null.</summary>
    public UserPmap? LoadedPmap { get; internal set; }

    /// <summary>True while no thread holds the CPU.</summary>
    public bool IsIdle => (Volatile.Read(ref _shared->State) & Running) == 0;

    internal Tlb Tlb => _tlb;

    internal CpuShared* Shared => _shared;

    // ---------------------------------------------------------------- counting

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Count(Counter counter, long delta = 1) => _counters[(int)counter] += delta;

    /// <summary>Pays a cost-model charge on this CPU: counts its nanoseconds and busy-waits its ticks.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Charge(in CostCharge charge)
    {
        if (charge.Ticks > 0)
        {
            Count(Counter.ChargedNanoseconds, charge.Ns);
            CostTicks.Spin(charge.Ticks);
        }
    }

    // ---------------------------------------------------------------- memory access

    /// <summary>Reads <paramref name="destination"/>.Length bytes at virtual address <paramref name="va"/>.</summary>
    public void Read(ulong va, Span<byte> destination)
    {
        CheckCaller();
        int first = Pte.PageSize - (int)(va & Pte.PageMask);
        if (destination.Length <= first)
        {
            // Within one page: one translation, one copy.
            new ReadOnlySpan<byte>(Translate(va, write: false), destination.Length).CopyTo(destination);
            return;
        }

        int done = 0;
        while (done < destination.Length)
        {
            ulong at = va + (ulong)done;
            int chunk = Math.Min(destination.Length - done, Pte.PageSize - (int)(at & Pte.PageMask));
            new ReadOnlySpan<byte>(Translate(at, write: false), chunk).CopyTo(destination.Slice(done, chunk));
            done += chunk;
        }
    }

    /// <summary>Writes <paramref name="source"/> at virtual address <paramref name="va"/>.</summary>
    public void Write(ulong va, ReadOnlySpan<byte> source)
    {
        CheckCaller();
        int first = Pte.PageSize - (int)(va & Pte.PageMask);
        if (source.Length <= first)
        {
            source.CopyTo(new Span<byte>(Translate(va, write: true), source.Length));
            return;
        }

        int done = 0;
        while (done < source.Length)
        {
            ulong at = va + (ulong)done;
            int chunk = Math.Min(source.Length - done, Pte.PageSize - (int)(at & Pte.PageMask));
            source.Slice(done, chunk).CopyTo(new Span<byte>(Translate(at, write: true), chunk));
            done += chunk;
        }
    }

    /// <summary>Fills <paramref name="length"/> bytes at <paramref name="va"/> with <paramref name="value"/>.</summary>
    public void Fill(ulong va, long length, byte value)
    {
        CheckCaller();
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        long done = 0;
        while (done < length)
        {
            ulong at = va + (ulong)done;
            int chunk = (int)Math.Min(length - done, Pte.PageSize - (long)(at & Pte.PageMask));
            new Span<byte>(Translate(at, write: true), chunk).Fill(value);
            done += chunk;
        }
    }

    /// <summary>Copies <paramref name="length"/> bytes between two virtual addresses (kernel or the loaded user space).</summary>
    public void Copy(ulong destinationVa, ulong sourceVa, long length)
    {
        CheckCaller();
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        long done = 0;
        while (done < length)
        {
            ulong src = sourceVa + (ulong)done;
            ulong dst = destinationVa + (ulong)done;
            long chunk = Math.Min(length - done, Math.Min(Pte.PageSize - (long)(src & Pte.PageMask), Pte.PageSize - (long)(dst & Pte.PageMask)));
            byte* from = Translate(src, write: false);
            byte* to = Translate(dst, write: true);
            Buffer.MemoryCopy(from, to, chunk, chunk);
            done += chunk;
        }
    }

    /// <summary>Reads an aligned 64-bit word.</summary>
    public ulong ReadUInt64(ulong va)
    {
        CheckCaller();
        RequireAligned(va, sizeof(ulong));
        return *(ulong*)Translate(va, write: false);
    }

    /// <summary>Writes an aligned 64-bit word.</summary>
    public void WriteUInt64(ulong va, ulong value)
    {
        CheckCaller();
        RequireAligned(va, sizeof(ulong));
        *(ulong*)Translate(va, write: true) = value;
    }

    /// <summary><c>copyin</c>: user memory into a kernel buffer; EFAULT (not an exception) for a bad user address.</summary>
    public int CopyIn(ulong userVa, Span<byte> destination)
    {
        if (!IsUserRange(userVa, destination.Length))
        {
            return Errno.EFAULT;
        }

        try
        {
            Read(userVa, destination);
            return Errno.OK;
        }
        catch (PageFaultException fault) when (VmLayout.IsUser(fault.Address))
        {
            return Errno.EFAULT;
        }
    }

    /// <summary><c>copyout</c>: a kernel buffer into user memory; EFAULT (not an exception) for a bad user address.</summary>
    public int CopyOut(ReadOnlySpan<byte> source, ulong userVa)
    {
        if (!IsUserRange(userVa, source.Length))
        {
            return Errno.EFAULT;
        }

        try
        {
            Write(userVa, source);
            return Errno.OK;
        }
        catch (PageFaultException fault) when (VmLayout.IsUser(fault.Address))
        {
            return Errno.EFAULT;
        }
    }

    /// <summary>
    /// Translates <paramref name="va"/> for an access and returns the host address of that byte;
    /// valid up to the end of the page. A TLB hit costs a set lookup; a miss walks the page table.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal byte* Translate(ulong va, bool write)
    {
        PollPoint();

        // The direct map uses 1 GiB pages that are written once at boot and never change, so
        // their translations are permanently resident: no walk, nothing to go stale.
        ulong dmapOffset = va - VmLayout.DMAP_BASE;
        if (dmapOffset < _dmapBytes)
        {
            return _frames + dmapOffset;
        }

        ulong vpn = va >> Pte.PageShift;
        TlbEntry* e = _tlb.Lookup(vpn);
        if (e != null && (!write || (e->Pte & Pte.PG_M) != 0))
        {
            Count(Counter.TlbHits);
            if (_checked)
            {
                CheckStale(va, e->Pte);
            }

            return _frames + (e->Pte & Pte.PG_FRAME) + (va & Pte.PageMask);
        }

        return TranslateSlow(va, write, e);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private byte* TranslateSlow(ulong va, bool write, TlbEntry* entry)
    {
        ulong vpn = va >> Pte.PageShift;
        if (entry != null && _checked)
        {
            // A write through a clean entry re-walks to set PG_M; the old entry is checked first.
            CheckStale(va, entry->Pte);
        }

        ulong* ptep = _machine.PteAddress(this, va);
        if (ptep == null)
        {
            Count(Counter.PageFaults);
            throw new PageFaultException(Id, va, write, "no page table covers this address");
        }

        // Like x86 hardware: set PG_A (and PG_M for a write) with a locked update of the PTE,
        // *before* the translation is cached. The accessed-bit optimisation depends on it.
        ulong pte, walked;
        while (true)
        {
            pte = Volatile.Read(ref *ptep);
            if (!Pte.IsValid(pte))
            {
                Count(Counter.PageFaults);
                throw new PageFaultException(Id, va, write, "the PTE is not valid");
            }

            if (write && (pte & Pte.PG_RW) == 0)
            {
                Count(Counter.PageFaults);

                // vm_fault: a copy-on-write page gets a private copy, then the access walks again.
                if (VmLayout.IsUser(va) && LoadedPmap?.Owner is { } space && space.ResolveWriteFault(va))
                {
                    entry = _tlb.Lookup(vpn);
                    continue;
                }

                throw new PageFaultException(Id, va, write, "the page is mapped read-only");
            }

            walked = pte | Pte.PG_A | (write ? Pte.PG_M : 0);
            if (walked == pte || Interlocked.CompareExchange(ref *ptep, walked, pte) == pte)
            {
                break;
            }
        }

        Count(Counter.TlbMisses);
        if (va - _mappingStart < _mappingBytes)
        {
            Count(Counter.MappingTlbMisses);
        }

        Charge(_cost.TlbMissWalk);
        if (entry != null)
        {
            entry->Pte = walked;
        }
        else
        {
            _tlb.Insert(vpn, walked);
        }

        return _frames + (walked & Pte.PG_FRAME) + (va & Pte.PageMask);
    }

    private void CheckStale(ulong va, ulong cachedPte)
    {
        ulong* ptep = _machine.PteAddress(this, va);
        ulong current = ptep == null ? 0 : Volatile.Read(ref *ptep);
        if (!Pte.IsValid(current) || ((current ^ cachedPte) & Pte.PG_FRAME) != 0)
        {
            Count(Counter.StaleAccesses);
            throw new StaleTranslationException(Id, va, Pte.Frame(cachedPte), Pte.IsValid(current) ? Pte.Frame(current) : -1);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void CheckCaller()
    {
        // Always: after Dispose the frames are freed, so an access would touch freed memory.
        if (_machine.IsDisposed)
        {
            _machine.ThrowIfDisposed();
        }

        if (_checked)
        {
            CheckOwner();
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void CheckOwner()
    {
        // An idle CPU has no owner, and neither does a host thread: both null must not match.
        var caller = KernelThread.CurrentOrNull;
        if (caller == null || !ReferenceEquals(caller, Owner))
        {
            throw new InvalidOperationException(
                $"cpu {Id} is held by {Owner?.Name ?? "no thread"}, not by the calling thread ({caller?.Name ?? "not a kernel thread"})");
        }
    }

    private static bool IsUserRange(ulong va, int length) =>
        VmLayout.IsUser(va) && (length == 0 || (va + (ulong)length - 1 >= va && VmLayout.IsUser(va + (ulong)length - 1)));

    private static void RequireAligned(ulong va, int size)
    {
        if ((va & (ulong)(size - 1)) != 0)
        {
            throw new ArgumentException($"address 0x{va:x} is not {size}-byte aligned", nameof(va));
        }
    }

    // ---------------------------------------------------------------- local invalidation

    /// <summary><c>invlpg</c>: drops this CPU's translation of one page.</summary>
    public void InvalidatePage(ulong va)
    {
        CheckCaller();
        InvalidateLocal(va >> Pte.PageShift);
    }

    /// <summary>Flushes every entry of this CPU's TLB, global ones included.</summary>
    public void FlushTlb()
    {
        CheckCaller();
        FlushLocal();
    }

    internal void InvalidateLocal(ulong vpn)
    {
        _tlb.Invalidate(vpn);
        Count(Counter.LocalInvalidations);
        Charge(_cost.LocalInvalidate);
    }

    internal void FlushLocal() => FlushAll(_cost.FullFlush);

    internal void FlushNonGlobalLocal()
    {
        var hooks = _machine.FlushHooks;
        if (hooks.Length != 0)
        {
            FlushWithHooks(hooks, global: false, _cost.FullFlush);
            return;
        }

        _tlb.FlushNonGlobal();
        Count(Counter.NonGlobalFlushes);
        Charge(_cost.FullFlush);
    }

    /// <summary>
    /// A flush of the non-global entries that a mapping mechanism does for its own mappings
    /// (NetBSD's <c>pmap_emap_sync</c>): counted as mapping work, so that the modelled mapping
    /// cost prices it, unlike an address-space switch.
    /// </summary>
    internal void FlushNonGlobalForMapping()
    {
        Count(Counter.MappingFlushes);
        FlushNonGlobalLocal();
    }

    /// <summary>Flushes every entry and pays <paramref name="charge"/>, telling the flush hooks.</summary>
    private void FlushAll(in CostCharge charge)
    {
        var hooks = _machine.FlushHooks;
        if (hooks.Length != 0)
        {
            FlushWithHooks(hooks, global: true, charge);
            return;
        }

        _tlb.FlushAll();
        Count(Counter.FullFlushes);
        Charge(charge);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FlushWithHooks(ITlbFlushHook[] hooks, bool global, in CostCharge charge)
    {
        Span<long> tokens = hooks.Length <= 16 ? stackalloc long[hooks.Length] : new long[hooks.Length];
        for (int i = 0; i < hooks.Length; i++)
        {
            tokens[i] = hooks[i].Flushing(this, global);
        }

        if (global)
        {
            _tlb.FlushAll();
            Count(Counter.FullFlushes);
        }
        else
        {
            _tlb.FlushNonGlobal();
            Count(Counter.NonGlobalFlushes);
        }

        Charge(charge);
        for (int i = 0; i < hooks.Length; i++)
        {
            hooks[i].Flushed(this, global, tokens[i]);
        }
    }

    // ---------------------------------------------------------------- IPIs

    /// <summary>
    /// A poll point: services this CPU's mailbox if any shootdown is waiting. Kernel code that
    /// loops without touching memory calls it, as a real CPU takes interrupts. Only the thread
    /// holding the CPU may (checked mode refuses anyone else: servicing writes this CPU's TLB).
    /// </summary>
    public void Poll()
    {
        CheckCaller();
        PollPoint();
    }

    /// <summary>The poll point of the machine's own wait loops and memory accesses (no caller check).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void PollPoint()
    {
        if ((Volatile.Read(ref _shared->State) & MailMask) != 0)
        {
            ServiceMailbox();
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ServiceMailbox()
    {
        // Take every posted request at once; each sender waits for its own acknowledgement.
        ulong pending = Interlocked.And(ref _shared->State, ~MailMask) & MailMask;
        while (pending != 0)
        {
            int from = BitOperations.TrailingZeroCount(pending);
            pending &= pending - 1;
            CpuShared* request = _machine.SharedOf(from);
            Charge(_cost.IpiHandler);
            Count(Counter.IpisReceived);
            switch ((ShootdownKind)request->Kind)
            {
                case ShootdownKind.Page:
                    InvalidateLocal(request->Va >> Pte.PageShift);
                    Count(Counter.IpiInvalidations);
                    break;
                case ShootdownKind.Range:
                    ulong first = request->Va >> Pte.PageShift;
                    for (int i = 0; i < request->Pages; i++)
                    {
                        InvalidateLocal(first + (ulong)i);
                    }

                    Count(Counter.IpiInvalidations, request->Pages);
                    break;
                default:
                    FlushLocal();
                    Count(Counter.IpiFlushes);
                    break;
            }

            // Release: the sender may reuse its request block as soon as it sees the count drop.
            Interlocked.Decrement(ref request->AcksRemaining);
        }
    }

    /// <summary>
    /// Sends a shootdown to the CPUs in <paramref name="targets"/> (this CPU excluded) and waits
    /// until each has invalidated. Idle targets are not waited for: they are marked flush-pending
    /// and flush before they next run a thread. While waiting, this CPU keeps servicing its own
    /// mailbox, so two CPUs shooting at each other cannot deadlock.
    /// </summary>
    /// <param name="targets">cpumask of targets.</param>
    /// <param name="kind">A page, a range, or everything.</param>
    /// <param name="va">First page (page or range).</param>
    /// <param name="pages">Pages in a range.</param>
    /// <param name="serialize">Take <c>smp_ipi_mtx</c> around the round, as FreeBSD's <c>smp_tlb_shootdown</c> does.</param>
    /// <returns>The number of CPUs targeted (running or idle).</returns>
    public int Shootdown(ulong targets, ShootdownKind kind, ulong va = 0, int pages = 1, bool serialize = true)
    {
        CheckCaller();
        targets &= _machine.AllCpusMask & ~Mask;
        if (targets == 0)
        {
            return 0;
        }

        if (kind == ShootdownKind.Range && pages <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(pages), pages, "a range shootdown needs at least one page");
        }

        if (serialize)
        {
            _machine.SmpIpiMutex.Lock();
        }

        try
        {
            return ShootdownRound(targets, kind, va, pages);
        }
        finally
        {
            if (serialize)
            {
                _machine.SmpIpiMutex.Unlock();
            }
        }
    }

    /// <summary>A shootdown to every CPU but this one (<c>smp_invlpg</c>, <c>smp_invltlb</c>).</summary>
    public int ShootdownAllButSelf(ShootdownKind kind, ulong va = 0, int pages = 1, bool serialize = true) =>
        Shootdown(_machine.AllCpusMask, kind, va, pages, serialize);

    private int ShootdownRound(ulong targets, ShootdownKind kind, ulong va, int pages)
    {
        int count = BitOperations.PopCount(targets);
        Count(Counter.ShootdownRounds);
        Count(Counter.IpiTargets, count);
        if (kind == ShootdownKind.All)
        {
            Count(Counter.ShootdownTargetFlushes, count);
        }
        else
        {
            Count(Counter.ShootdownTargetPages, (long)count * (kind == ShootdownKind.Range ? pages : 1));
        }

        // What an idle target is charged when it next runs: what a running one pays in its handler.
        var targetCharge = _cost.IpiHandler + (kind == ShootdownKind.All ? _cost.FullFlush
            : _cost.LocalInvalidate.Times(kind == ShootdownKind.Range ? pages : 1));
        Machine.Trace.ShootdownBegin(Id, targets, (int)kind, va, pages);
        long start = Stopwatch.GetTimestamp();

        CpuShared* request = _shared;
        request->Kind = (int)kind;
        request->Va = va;
        request->Pages = pages;
        Volatile.Write(ref request->AcksRemaining, count);

        ulong mine = Mask;
        for (ulong rest = targets; rest != 0; rest &= rest - 1)
        {
            CpuShared* target = _machine.SharedOf(BitOperations.TrailingZeroCount(rest));
            while (true)
            {
                ulong s = Volatile.Read(ref target->State);
                if ((s & Running) == 0)
                {
                    // Idle: never wait for it; it flushes everything before it runs again.
                    if (Interlocked.CompareExchange(ref target->State, s | FlushPending, s) == s)
                    {
                        // Should the target wake between the CAS and the adds, it pays this at
                        // its next deferred flush instead: charged late, never lost or doubled.
                        Interlocked.Add(ref target->DeferredChargeTicks, targetCharge.Ticks);
                        Interlocked.Add(ref target->DeferredChargeNs, targetCharge.Ns);
                        Count(Counter.IdleTargetsDeferred);
                        Charge(_cost.IpiSend);
                        Interlocked.Decrement(ref request->AcksRemaining);
                        break;
                    }
                }
                else if (Interlocked.CompareExchange(ref target->State, s | mine, s) == s)
                {
                    Count(Counter.IpisSent);
                    Charge(_cost.IpiSend);
                    break;
                }
            }
        }

        // One rule for running and idle targets (CostModel): the round trip after the last send,
        // delivery then the target's interrupt entry, is the least the initiator waits. The
        // simulation never waits for an idle CPU, but the kernels it models did: it took the IPI.
        var roundTrip = _cost.IpiDelivery + _cost.IpiHandler;
        long deliveredAt = Stopwatch.GetTimestamp() + roundTrip.Ticks;
        if (roundTrip.Ticks > 0)
        {
            Count(Counter.ChargedNanoseconds, roundTrip.Ns);
        }

        var spin = default(SpinWait);
        while (Volatile.Read(ref request->AcksRemaining) != 0 || Stopwatch.GetTimestamp() < deliveredAt)
        {
            PollPoint();
            spin.SpinOnce(sleep1Threshold: -1);
            if (spin.Count % 1024 == 0 && Stopwatch.GetTimestamp() - start > _watchdogTicks)
            {
                throw new ShootdownTimeoutException(Id, targets, Stopwatch.GetElapsedTime(start));
            }
        }

        Count(Counter.AckWaitNanoseconds, (long)Stopwatch.GetElapsedTime(start).TotalNanoseconds);
        Machine.Trace.ShootdownEnd(Id, count);
        return count;
    }

    // ---------------------------------------------------------------- idle protocol

    /// <summary>Publishes the CPU idle; serves any request posted before the switch.</summary>
    internal void EnterIdle()
    {
        while (true)
        {
            ulong s = Volatile.Read(ref _shared->State);
            if ((s & MailMask) != 0)
            {
                ServiceMailbox();
                continue;
            }

            if (Interlocked.CompareExchange(ref _shared->State, s & ~Running, s) == s)
            {
                return;
            }
        }
    }

    /// <summary>Marks the CPU running; performs the flush a shootdown deferred while it was idle.</summary>
    internal void LeaveIdle()
    {
        while (true)
        {
            ulong s = Volatile.Read(ref _shared->State);
            if (Interlocked.CompareExchange(ref _shared->State, (s | Running) & ~FlushPending, s) == s)
            {
                if ((s & FlushPending) != 0)
                {
                    // Everything the deferred shootdowns asked for, at once; charged what they
                    // asked (handler and invalidations), as if the IPIs had been taken while idle.
                    // The flush hooks hear of it like any other whole-TLB flush.
                    Count(Counter.IpiFlushes);
                    FlushAll(new CostCharge(
                        Interlocked.Exchange(ref _shared->DeferredChargeTicks, 0),
                        Interlocked.Exchange(ref _shared->DeferredChargeNs, 0)));
                }

                return;
            }
        }
    }
}

/// <summary>What a shootdown asks the targets to invalidate.</summary>
public enum ShootdownKind
{
    /// <summary>One page (<c>invlpg</c>).</summary>
    Page = 0,

    /// <summary>A range of pages (<c>invlpg</c> per page).</summary>
    Range = 1,

    /// <summary>The whole TLB, global entries included.</summary>
    All = 2,
}

/// <summary>
/// Per-CPU words other CPUs touch: the state/mailbox word on its own line, then the request
/// this CPU posts as a shootdown initiator on another line.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 256)]
internal struct CpuShared
{
    [FieldOffset(0)]
    public ulong State;

    /// <summary>Cost-model charges owed by shootdowns that found this CPU idle, paid when it next runs.</summary>
    [FieldOffset(8)]
    public long DeferredChargeTicks;

    [FieldOffset(16)]
    public long DeferredChargeNs;

    [FieldOffset(128)]
    public int Kind;

    [FieldOffset(132)]
    public int Pages;

    [FieldOffset(136)]
    public ulong Va;

    [FieldOffset(144)]
    public long AcksRemaining;
}
