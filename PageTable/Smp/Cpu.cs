using System.Diagnostics;
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
[System.Diagnostics.CodeAnalysis.SuppressMessage("Reliability", "CA1001", Justification =
    "The machine disposes its CPUs' doorbells in Dispose.")]
public sealed unsafe partial class Cpu
{
    // The mailbox. State holds RUNNING while a thread holds the CPU, FLUSH_PENDING when a
    // shootdown found it idle, and in its low bits the count of requests posted and not yet
    // taken; CpuShared.Pending names their senders, one bit each (up to 256 CPUs).
    // - A sender posts with one CAS on State that requires RUNNING and adds one to the count,
    //   then at once sets its bit in Pending. Idle entry clears RUNNING with a CAS that requires
    //   the count to be 0. So "check idle, then post" stays one CAS: a request either reaches a
    //   running CPU, which cannot go idle before it has taken the request, or finds it idle and
    //   is deferred to its flush; never both, never neither.
    // - The target takes the count (an atomic AND) and clears exactly that many sender bits,
    //   waiting for a bit whose sender has counted but not yet set it (nothing can stop a sender
    //   between its two steps, and no scheduling point lies between them, so the wait is short).
    // - A sender has at most one request in a mailbox (it waits for the round's acknowledgement),
    //   so counts and bits pair one for one, in whatever order they are collected: every
    //   counted request is served once. The bit is set after the request block is written, and
    //   the target clears it with an atomic AND before it reads the block.
    internal const ulong Running = 1UL << 63;
    internal const ulong FlushPending = 1UL << 62;
    internal const ulong MailMask = (1UL << 32) - 1;

    private readonly Machine _machine;
    private readonly Tlb _tlb;
    private readonly long* _counters;
    private readonly CpuShared* _shared;
    private readonly byte* _frames;
    private readonly ulong _dmapBytes;
    private readonly ulong _pagedDmapBytes;
    private readonly bool _checked;
    private readonly CostTicks _cost;
    private readonly long _watchdogTicks;
    private readonly ulong _mappingStart;
    private readonly ulong _mappingBytes;
    private readonly long _spinTicks;
    private readonly ControlledScheduler? _controller;
    private readonly bool _parkIdle;

    // Virtual time: every priced event advances ClockNs instead of busy-waiting, and a TLB hit
    // takes the slow check (the yield test) that checked mode takes anyway.
    private readonly bool _virtual;
    private readonly bool _hitSlow;
    private readonly bool _copySlow;
    private readonly long _crossCpuSpinNs;

    // Shootdowns by broadcast invalidation hardware instead of IPIs (MachineOptions.Shootdown).
    private readonly bool _broadcast;
    private readonly int _broadcastChunk;

    /// <summary>Virtual time: this CPU's clock in nanoseconds (written by the thread holding the CPU, or by the scheduler while it is switched out).</summary>
    internal long ClockNs;

    // Checked mode: every translation this CPU filled and has not explicitly invalidated (vpn ->
    // PTE), never evicted, so the latent-staleness oracle does not depend on TLB size or luck.
    private readonly Dictionary<ulong, ulong>? _shadow;

    // Wakes this CPU's thread when it parks in a cross-CPU wait (an IPI, an acknowledgement or a
    // released lock rings it), so a waiting CPU gives its host core up instead of spinning.
    private readonly ManualResetEventSlim _doorbell = new(false, 1);

    internal Cpu(Machine machine, int id, Tlb tlb, CpuCounters counters, CpuShared* shared, byte* frames)
    {
        _machine = machine;
        Id = id;
        _tlb = tlb;
        _counters = counters.BlockOf(id);
        _shared = shared;
        _frames = frames;
        // A page-mapped direct map (exclusive page ownership) is walked and cached like any
        // kernel page: no permanent fast path, so its removed translations can go stale.
        _dmapBytes = machine.Layout.DirectMapIsPaged ? 0 : machine.Layout.DirectMapBytes;
        _pagedDmapBytes = machine.Layout.DirectMapIsPaged ? machine.Layout.DirectMapBytes : 0;
        _checked = machine.Options.Checked;
        _cost = machine.Cost;
        _watchdogTicks = (long)(machine.Options.ShootdownWatchdog.TotalSeconds * Stopwatch.Frequency);

        // The ephemeral-mapping regions, the sf_buf window, the fixmap then kernel_map, are
        // adjacent (one guard page between each, never mapped): one range check classifies a miss.
        _mappingStart = machine.Layout.SfBufWindow.Start;
        _mappingBytes = machine.Layout.KernelMap.End - _mappingStart;
        _spinTicks = (long)(machine.CrossCpuSpin.TotalSeconds * Stopwatch.Frequency);
        _controller = machine.Controller;
        _parkIdle = machine.Oversubscribed;
        _virtual = _controller is { IsVirtual: true };
        _hitSlow = _checked;
        _copySlow = _checked || _virtual;
        _crossCpuSpinNs = (long)machine.CrossCpuSpin.TotalNanoseconds;
        _shadow = _checked ? [] : null;
        _broadcast = machine.Options.Shootdown == ShootdownMechanism.Broadcast;
        _broadcastChunk = machine.Options.BroadcastPagesPerInstruction;

        // Exposure windows need the simulated TLB (the host backend has none to read).
        if (_checked && machine.Host == null)
        {
            _exposureLock = new();
            _windows = [];
        }
    }

    /// <summary>The CPU number (cpuid), 0-based.</summary>
    public int Id { get; }

    /// <summary>The cpumask of this CPU alone.</summary>
    public CpuSet Mask => CpuSet.Single(Id);

    /// <summary>The machine this CPU belongs to.</summary>
    public Machine Machine => _machine;

    /// <summary>The kernel thread running here, or null when the CPU is idle.</summary>
    public KernelThread? Owner { get; internal set; }

    /// <summary>The user page table currently loaded (CR3), or null.</summary>
    public UserPmap? LoadedPmap { get; internal set; }

    /// <summary>Virtual time: this CPU's clock in nanoseconds (0 in real time).</summary>
    public long VirtualTimeNs => ClockNs;

    /// <summary>True while no thread holds the CPU.</summary>
    public bool IsIdle => (Volatile.Read(ref _shared->State) & Running) == 0;

    /// <summary>True when this CPU is idle and marked to flush its whole TLB before it runs a thread (a shootdown found it idle).</summary>
    internal bool IsIdleFlushPending => (Volatile.Read(ref _shared->State) & (Running | FlushPending)) == FlushPending;

    internal Tlb Tlb => _tlb;

    internal CpuShared* Shared => _shared;

    // ---------------------------------------------------------------- counting

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Count(Counter counter, long delta = 1) => _counters[(int)counter] += delta;

    /// <summary>Pays a cost-model charge on this CPU: counts its nanoseconds and busy-waits its ticks.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Charge(in CostCharge charge)
    {
        if (_virtual)
        {
            Count(Counter.ChargedNanoseconds, charge.Ns);
            ClockNs += charge.Ns;
        }
        else if (charge.Ticks > 0)
        {
            Count(Counter.ChargedNanoseconds, charge.Ns);
            CostTicks.Spin(charge.Ticks);
        }
    }

    /// <summary>
    /// Pays the price of work the host really does in real time (a copy, a kernel entry, a lock, a
    /// switch): in virtual time it advances the clock; in real time it costs nothing extra.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Work(in CostCharge charge)
    {
        if (_virtual)
        {
            ClockNs += charge.Ns;
        }
    }

    /// <summary>Pays the price of taking a lock (<see cref="Work"/> of the profile's lock price): nothing in real time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void WorkLock()
    {
        if (_virtual)
        {
            ClockNs += _cost.Lock.Ns;
        }
    }

    /// <summary>Virtual time: the price of copying <paramref name="bytes"/> at the profile's copy bandwidth.</summary>
    /// <remarks>
    /// The clock moves before the bytes do, and the thread yields there once past the quantum: a
    /// store becomes visible at the end of its cost, after the CPUs that are behind have caught up.
    /// </remarks>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void Copied(long bytes)
    {
        ClockNs += (long)Math.Ceiling(bytes * _cost.CopyNsPerByte);

        // The machine's alarm is taken here, at kernel code's own accesses, and not at Poll: a
        // machine wait loop (a shootdown's acknowledgements) polls, and a hook may shoot down.
        if (ClockNs >= _machine.AlarmAtNs)
        {
            _machine.RingAlarm(this);
        }

        AccessPoint();
    }

    /// <summary>
    /// Virtual time: the price of zeroing <paramref name="bytes"/> (<c>pmap_zero_page</c>), a store
    /// stream at the profile's copy bandwidth. No scheduling point: the caller may be inside the
    /// allocator; the thread yields at its next access.
    /// </summary>
    internal void Zeroed(long bytes)
    {
        if (_virtual)
        {
            ClockNs += (long)Math.Ceiling(bytes * _cost.CopyNsPerByte);
        }
    }

    /// <summary>Kernel entry (a system call or trap) on this CPU: counted, and priced in virtual time.</summary>
    public void EnterKernel()
    {
        Count(Counter.KernelEntries);
        Work(_cost.KernelEntry);
    }

    // ---------------------------------------------------------------- memory access

    /// <summary>Reads <paramref name="destination"/>.Length bytes at virtual address <paramref name="va"/>.</summary>
    public void Read(ulong va, Span<byte> destination)
    {
        BeginCopy(destination.Length);
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
        BeginCopy(source.Length);
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
        if (_virtual)
        {
            Copied(length);
        }

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
        if (_virtual)
        {
            Copied(length);
        }

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
        if (_virtual)
        {
            Copied(sizeof(ulong));
        }

        return *(ulong*)Translate(va, write: false);
    }

    /// <summary>Writes an aligned 64-bit word.</summary>
    public void WriteUInt64(ulong va, ulong value)
    {
        CheckCaller();
        RequireAligned(va, sizeof(ulong));
        if (_virtual)
        {
            Copied(sizeof(ulong));
        }

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
            if (_hitSlow)
            {
                HitSlow(va, e->Pte);
            }

            return _frames + (e->Pte & Pte.PG_FRAME) + (va & Pte.PageMask);
        }

        return TranslateSlow(va, write, e);
    }

    /// <summary>
    /// The page walk both backends share: like x86 hardware, sets <c>PG_A</c> (and <c>PG_M</c> for a
    /// write) with a locked update of the PTE, *before* the translation is cached (the accessed-bit
    /// optimisation depends on it), resolving a copy-on-write fault as <c>vm_fault</c> does and
    /// walking again. Returns the PTE as updated; throws a page fault it cannot resolve.
    /// </summary>
    private ulong Walk(ulong va, bool write, out bool resolvedFault)
    {
        resolvedFault = false;
        ulong* ptep = _machine.PteAddress(this, va);
        if (ptep == null)
        {
            Count(Counter.PageFaults);
            throw new PageFaultException(Id, va, write, "no page table covers this address");
        }

        while (true)
        {
            ulong pte = Volatile.Read(ref *ptep);
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
                    resolvedFault = true;
                    continue;
                }

                throw new PageFaultException(Id, va, write, "the page is mapped read-only");
            }

            ulong walked = pte | Pte.PG_A | (write ? Pte.PG_M : 0);
            if (walked == pte || Interlocked.CompareExchange(ref *ptep, walked, pte) == pte)
            {
                return walked;
            }
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private byte* TranslateSlow(ulong va, bool write, TlbEntry* entry)
    {
        // The host backend never fills the TLB (the host MMU translates), so every access there
        // arrives here: the check costs the simulated hit path nothing.
        if (_machine.Host != null)
        {
            return HostTranslate(va, write);
        }

        ulong vpn = va >> Pte.PageShift;
        if (_checked)
        {
            if (!_virtual)
            {
                SchedulingPoint();
            }

            if (entry != null)
            {
                // A write through a clean entry re-walks to set PG_M; the old entry is checked first.
                CheckStale(va, entry->Pte);
            }

            CheckLatent(va, vpn);
            CheckPrivate(va);
        }

        ulong walked = Walk(va, write, out bool resolvedFault);
        if (resolvedFault)
        {
            entry = _tlb.Lookup(vpn); // the copy-on-write fault replaced the page's translation
        }

        Count(Counter.TlbMisses);
        if (va - _mappingStart < _mappingBytes || va - VmLayout.DMAP_BASE < _pagedDmapBytes)
        {
            Count(Counter.MappingTlbMisses);
        }

        Charge(_cost.TlbMissWalk);
        if (entry != null)
        {
            entry->Pte = walked;
        }
        else if (_windows != null)
        {
            // An eviction drops the victim's translation: its exposure window, if any, ends here.
            _tlb.Insert(vpn, walked, out ulong evicted);
            if (evicted != 0)
            {
                ExposureDropped(evicted - 1);
            }
        }
        else
        {
            _tlb.Insert(vpn, walked);
        }

        if (_shadow != null)
        {
            _shadow[vpn] = walked;
        }

        return _frames + (walked & Pte.PG_FRAME) + (va & Pte.PageMask);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void HitSlow(ulong va, ulong cachedPte)
    {
        // Exploration may switch threads at any access; virtual time yields in Copied instead.
        if (!_virtual)
        {
            SchedulingPoint();
        }

        CheckHit(va, cachedPte);
    }

    private void CheckHit(ulong va, ulong cachedPte)
    {
        // The shadow holds the same frame as a resident entry, so checking the entry covers both oracles.
        CheckStale(va, cachedPte);
        CheckPrivate(va);
    }

    private void CheckStale(ulong va, ulong cachedPte)
    {
        ulong* ptep = _machine.PteAddress(this, va);
        ulong current = ptep == null ? 0 : Volatile.Read(ref *ptep);
        if (!Pte.IsValid(current) || ((current ^ cachedPte) & Pte.PG_FRAME) != 0)
        {
            // A stale resident entry is a stale shadow entry too: both oracles count it.
            Count(Counter.StaleAccesses);
            Count(Counter.LatentStaleAccesses);
            throw new StaleTranslationException(Id, va, Pte.Frame(cachedPte), Pte.IsValid(current) ? Pte.Frame(current) : -1);
        }
    }

    /// <summary>The latent-staleness oracle: a translation filled here and never invalidated must still match the PTE.</summary>
    private void CheckLatent(ulong va, ulong vpn)
    {
        if (!_shadow!.TryGetValue(vpn, out ulong cached))
        {
            return;
        }

        ulong* ptep = _machine.PteAddress(this, va);
        ulong current = ptep == null ? 0 : Volatile.Read(ref *ptep);
        if (!Pte.IsValid(current) || ((current ^ cached) & Pte.PG_FRAME) != 0)
        {
            Count(Counter.LatentStaleAccesses);
            throw new LatentStaleTranslationException(Id, va, Pte.Frame(cached), Pte.IsValid(current) ? Pte.Frame(current) : -1);
        }
    }

    /// <summary>Private-mapping ownership: a live <c>CpuPrivate</c> mapping is translated only on its own CPU.</summary>
    private void CheckPrivate(ulong va)
    {
        int owner = _machine.KernelPmap.PrivateOwner(va);
        if (owner >= 0 && owner != Id)
        {
            throw new PrivateMappingViolationException(va, owner, Id);
        }
    }

    /// <summary>
    /// A scheduling point of controlled mode (nothing otherwise): exploration may switch threads
    /// here; virtual time looks here for threads that this one's last action let go on.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void SchedulingPoint()
    {
        if (_controller != null)
        {
            ControlledSchedulingPoint();
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ControlledSchedulingPoint()
    {
        if (KernelThread.CurrentOrNull is { Controlled: not null } td)
        {
            _controller!.Yield(td);
        }
    }

    /// <summary>Virtual time: a scheduling point after an action that may let another thread go on (nothing otherwise).</summary>
    internal void VirtualNotify()
    {
        if (_virtual)
        {
            SchedulingPoint();
        }
    }

    /// <summary>Virtual time, at a memory access: yields once the clock has passed the quantum.</summary>
    private void AccessPoint()
    {
        if (ClockNs > _controller!.YieldAtNs && KernelThread.CurrentOrNull is { Controlled: not null } td)
        {
            _controller.Yield(td);
        }
    }

    /// <summary>True when this CPU's shadow (so possibly its TLB) still holds a translation of <paramref name="vpn"/> other than the PTE's.</summary>
    internal bool HoldsStale(ulong vpn)
    {
        if (_shadow == null || !_shadow.TryGetValue(vpn, out ulong cached))
        {
            return false;
        }

        ulong* ptep = _machine.PteAddress(this, vpn << Pte.PageShift);
        ulong current = ptep == null ? 0 : Volatile.Read(ref *ptep);
        return !Pte.IsValid(current) || ((current ^ cached) & Pte.PG_FRAME) != 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void CheckCaller()
    {
        // Always: after Dispose the frames are freed, so an access would touch freed memory; a
        // failed or stopping machine refuses too.
        if (_machine.IsUnusable)
        {
            _machine.ThrowIfUnusable();
        }

        if (_checked)
        {
            CheckOwner();
        }
    }

    /// <summary>
    /// <see cref="CheckCaller"/>, then in virtual time the price of copying <paramref name="bytes"/>:
    /// the real-time path tests one flag for both checked mode and virtual time.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void BeginCopy(int bytes)
    {
        if (_machine.IsUnusable)
        {
            _machine.ThrowIfUnusable();
        }

        if (_copySlow)
        {
            CopySlow(bytes);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void CopySlow(int bytes)
    {
        if (_checked)
        {
            CheckOwner();
        }

        if (_virtual)
        {
            Copied(bytes);
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
        _shadow?.Remove(vpn);
        ExposureDropped(vpn);
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
        ForgetNonGlobalShadow();
        ExposureFlushed(global: false);
        Count(Counter.NonGlobalFlushes);
        Charge(_cost.FullFlush);
    }

    /// <summary>The latent-staleness shadow forgets what a non-global flush dropped.</summary>
    private void ForgetNonGlobalShadow()
    {
        if (_shadow != null)
        {
            foreach (var (vpn, pte) in _shadow)
            {
                if ((pte & Pte.PG_G) == 0)
                {
                    _shadow.Remove(vpn);
                }
            }
        }
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
        _shadow?.Clear();
        ExposureFlushed(global: true);
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
            _shadow?.Clear();
            ExposureFlushed(global: true);
            Count(Counter.FullFlushes);
        }
        else
        {
            _tlb.FlushNonGlobal();
            ForgetNonGlobalShadow();
            ExposureFlushed(global: false);
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
    /// A poll point: services this CPU's mailbox if any shootdown is waiting, then runs the poll
    /// hooks (<see cref="Machine.AddPollHook"/>; they also run when a CPU that parked idle in a
    /// cross-CPU wait, on an oversubscribed machine, comes back). Kernel code that loops without touching memory
    /// calls it, as a real CPU takes interrupts. Only the thread
    /// holding the CPU may (checked mode refuses anyone else: servicing writes this CPU's TLB).
    /// </summary>
    public void Poll()
    {
        CheckCaller();
        if (_virtual)
        {
            // One turn of a spin loop: time passes, and the thread waited for runs once it is behind.
            Work(_cost.SpinIteration);
            AccessPoint();
        }
        else if (_controller != null && KernelThread.CurrentOrNull is { Controlled: not null } td)
        {
            // Kernel code polls in loops that wait for another thread: let it run.
            _controller.Yield(td, spinning: true);
        }

        PollPoint();
        RunPollHooks();
    }

    private void RunPollHooks()
    {
        var hooks = _machine.PollHooks;
        for (int i = 0; i < hooks.Length; i++)
        {
            hooks[i].Polled(this);
        }
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
    private void ServiceMailbox(bool waitForArrival = false, bool fromScheduler = false)
    {
        if (_virtual)
        {
            // An IPI is taken once this CPU's clock reaches its arrival; before going idle the CPU
            // waits for one already in flight.
            long arrival = _shared->MailArrivalNs;
            if (ClockNs < arrival)
            {
                if (!waitForArrival)
                {
                    return;
                }

                ClockNs = arrival;
            }
        }

        // Take every posted request at once (the count, then as many senders: the protocol at
        // the top); each sender waits for its own acknowledgement.
        int taken = (int)(Interlocked.And(ref _shared->State, ~MailMask) & MailMask);
        foreach (int from in TakeSenders(taken))
        {
            CpuShared* request = _machine.SharedOf(from);

            // The round this request belongs to: the acknowledgement names it, so an answer that
            // arrives after its round was abandoned cannot count towards a later round.
            uint round = (uint)((ulong)Volatile.Read(ref request->AckWord) >> 32);
            if (request->Broadcast != 0)
            {
                // Broadcast hardware: the invalidation reaches the TLB without an interrupt, so
                // no handler runs and nothing is charged; the initiator's completion wait ends
                // when every running target has applied it.
                ApplyBroadcast((ShootdownKind)request->Kind, request->Va, request->Pages);
                Acknowledge(from, round);
                if (!fromScheduler)
                {
                    SchedulingPoint();
                }

                continue;
            }

            Charge(_cost.IpiHandler);
            Count(Counter.IpisReceived);
            bool ackFirst = _machine.Planted(PlantedBug.AckBeforeInvalidate);
            if (ackFirst)
            {
                Acknowledge(from, round);
                if (!fromScheduler)
                {
                    SchedulingPoint();
                }
            }

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

            if (!ackFirst)
            {
                Acknowledge(from, round);
                if (!fromScheduler)
                {
                    SchedulingPoint();
                }
            }
        }
    }

    /// <summary>
    /// Clears <paramref name="count"/> senders' bits from this CPU's pending set, lowest first, and
    /// returns them; waits for a bit a sender has counted but not yet set.
    /// </summary>
    private CpuSet TakeSenders(int count)
    {
        var taken = default(CpuSet);
        var spin = default(SpinWait);
        while (count > 0)
        {
            for (int w = 0; w < CpuSet.WordCount && count > 0; w++)
            {
                ref ulong word = ref CpuSet.WordRef(ref _shared->Pending, w);
                ulong chosen = 0;
                for (ulong rest = Volatile.Read(ref word); rest != 0 && count > 0; rest &= rest - 1, count--)
                {
                    chosen |= rest & (0 - rest);
                }

                if (chosen != 0)
                {
                    // Only this CPU clears bits, and a sender's bit stays set until it is served.
                    Interlocked.And(ref word, ~chosen);
                    CpuSet.WordRef(ref taken, w) |= chosen;
                }
            }

            if (count > 0)
            {
                spin.SpinOnce(sleep1Threshold: -1);
            }
        }

        return taken;
    }

    /// <summary>Counts one acknowledgement towards <paramref name="round"/> of CPU <paramref name="from"/>'s request, if that round is still open.</summary>
    private void Acknowledge(int from, uint round)
    {
        CpuShared* request = _machine.SharedOf(from);
        while (true)
        {
            long word = Volatile.Read(ref request->AckWord);
            if ((uint)((ulong)word >> 32) != round || (uint)word == 0)
            {
                return; // another round (or an abandoned one): ignored
            }

            // Release: the sender may reuse its request block as soon as it sees the count drop.
            if (Interlocked.CompareExchange(ref request->AckWord, word - 1, word) == word)
            {
                if ((uint)word == 1)
                {
                    _machine.CpuAt(from).Ring();
                }

                return;
            }
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
    public int Shootdown(CpuSet targets, ShootdownKind kind, ulong va = 0, int pages = 1, bool serialize = true)
    {
        CheckCaller();
        targets = targets.Intersect(_machine.AllCpusMask);
        targets.Remove(Id);
        if (targets.IsEmpty)
        {
            return 0;
        }

        if (kind == ShootdownKind.Range && pages <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(pages), pages, "a range shootdown needs at least one page");
        }

        if (_machine.Host != null)
        {
            return HostShootdown(targets, kind, pages);
        }

        if (_broadcast)
        {
            // No smp_ipi_mtx: each CPU's completion wait covers only its own instructions, so
            // initiators need not take turns (Linux's broadcast paths take no lock either).
            return BroadcastRound(targets, kind, va, pages);
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

    private int ShootdownRound(in CpuSet targets, ShootdownKind kind, ulong va, int pages)
    {
        int count = targets.Count;
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
        Machine.Trace.ShootdownBegin(Id, (long)targets.Word(0), (int)kind, (long)va, pages);
        long start = Stopwatch.GetTimestamp();
        long startNs = ClockNs;

        CpuShared* request = _shared;
        uint round = ++request->Round;
        request->Kind = (int)kind;
        request->Va = va;
        request->Pages = pages;
        Volatile.Write(ref request->AckWord, (long)(((ulong)round << 32) | (uint)count));

        var posted = default(CpuSet);
        foreach (int t in targets)
        {
            CpuShared* target = _machine.SharedOf(t);

            // Exploration interleaves between posts; virtual time needs no decision per target
            // (the posts all happen at the initiator's clock), which keeps a broadcast linear in N.
            if (!_virtual)
            {
                SchedulingPoint();
            }

            while (true)
            {
                ulong s = Volatile.Read(ref target->State);
                if ((s & Running) == 0)
                {
                    // Idle: never wait for it; it flushes everything before it runs again.
                    if (Interlocked.CompareExchange(ref target->State, s | FlushPending, s) == s)
                    {
                        _machine.CpuAt(t).ExposureDeferred(ClockNs);
                        // Should the target wake between the CAS and the adds, it pays this at
                        // its next deferred flush instead: charged late, never lost or doubled.
                        Interlocked.Add(ref target->DeferredChargeTicks, targetCharge.Ticks);
                        Interlocked.Add(ref target->DeferredChargeNs, targetCharge.Ns);
                        Count(Counter.IdleTargetsDeferred);
                        Charge(_cost.IpiSend);
                        Acknowledge(Id, round);
                        break;
                    }
                }
                else if (Interlocked.CompareExchange(ref target->State, s + 1, s) == s)
                {
                    // Counted: now name the sender, with nothing in between (see the mailbox).
                    CpuSet.AtomicAdd(ref target->Pending, Id);
                    Count(Counter.IpisSent);
                    Charge(_cost.IpiSend);
                    if (_virtual)
                    {
                        // It arrives one delivery latency after the send (the earliest pending one counts).
                        long arrival = ClockNs + _cost.IpiDelivery.Ns;
                        target->MailArrivalNs = (s & MailMask) == 0 ? arrival : Math.Min(target->MailArrivalNs, arrival);
                    }

                    posted.Add(t);
                    _machine.CpuAt(t).Ring();
                    break;
                }
            }
        }

        // One rule for running and idle targets (CostModel): the round trip after the last send,
        // delivery then the target's interrupt entry, is the least the initiator waits. The
        // simulation never waits for an idle CPU, but the kernels it models did: it took the IPI.
        var roundTrip = _cost.IpiDelivery + _cost.IpiHandler;
        long deliveredAt = Stopwatch.GetTimestamp() + roundTrip.Ticks;
        long deliveredAtNs = ClockNs + roundTrip.Ns;
        if (roundTrip.Ticks > 0 || (_virtual && roundTrip.Ns > 0))
        {
            Count(Counter.ChargedNanoseconds, roundTrip.Ns);
        }

        var acks = new AcksIn(this, request, start, targets);
        WaitUntil(ref acks, park: true);
        if (_virtual)
        {
            // Resumed at the last acknowledgement (the scheduler's stamp), and no earlier than the round trip.
            ClockNs = Math.Max(ClockNs, deliveredAtNs);
        }
        else
        {
            var spin = default(SpinWait);
            while (Stopwatch.GetTimestamp() < deliveredAt)
            {
                PollPoint();
                spin.SpinOnce(sleep1Threshold: -1);
            }
        }

        if (_controller != null)
        {
            CheckRoundComplete(posted, kind, va, pages);
        }

        long ackWait = _virtual ? ClockNs - startNs : (long)Stopwatch.GetElapsedTime(start).TotalNanoseconds;
        Count(Counter.AckWaitNanoseconds, ackWait);
        Machine.Trace.ShootdownEnd(Id, count, ackWait);
        return count;
    }

    /// <summary>
    /// A shootdown delivered by broadcast invalidation hardware, as Linux's
    /// <c>invlpgb_kernel_range_flush</c> does it: one instruction per page, per chunk of at most
    /// <see cref="MachineOptions.BroadcastPagesPerInstruction"/> pages, or one for everything
    /// (<c>invlpgb_flush_all</c>), then one completion wait (<c>__tlbsync</c>). The targets run no
    /// handler and pay nothing (see <see cref="CostModel"/>).
    /// <para>
    /// Real time and exploration: each running target gets the request through its mailbox, with
    /// no IPI counted, and applies it at its next poll point, the same points where it notices an
    /// IPI; the completion wait is the acknowledgement wait. An idle target is marked flush-pending
    /// as with IPIs. Virtual time: one CPU runs at a time and every other CPU's thread is stopped
    /// at a scheduling point, so the hardware invalidates the running targets' TLBs at once, on the
    /// initiator's thread, and the initiator's clock moves by exactly the priced amount.
    /// </para>
    /// </summary>
    private int BroadcastRound(in CpuSet targets, ShootdownKind kind, ulong va, int pages)
    {
        int count = targets.Count;
        int instructions = kind == ShootdownKind.Range ? (pages + _broadcastChunk - 1) / _broadcastChunk : 1;
        Count(Counter.ShootdownRounds);
        Count(Counter.BroadcastTargets, count);
        Count(Counter.BroadcastInvalidations, instructions);
        Count(Counter.BroadcastPages, kind == ShootdownKind.All ? 0 : kind == ShootdownKind.Range ? pages : 1);
        Count(Counter.BroadcastSyncs);
        Machine.Trace.ShootdownBegin(Id, (long)targets.Word(0), (int)kind, (long)va, pages);
        long start = Stopwatch.GetTimestamp();
        long startNs = ClockNs;

        // INVLPGB (TLBI ...IS): the instructions are weakly ordered and do not wait.
        Charge(_cost.BroadcastIssue.Times(instructions));

        // A planted bug: the invalidation never reaches the highest-numbered target.
        int skipped = _machine.Planted(PlantedBug.BroadcastSkipsOneTarget) ? LastOf(targets) : -1;
        if (_virtual)
        {
            foreach (int t in targets)
            {
                if (t != skipped)
                {
                    BroadcastInVirtualTime(t);
                }
            }

            // TLBSYNC (DSB ISH): the initiator's clock moves by the completion price and no more.
            Charge(_cost.BroadcastSync);
            Count(Counter.AckWaitNanoseconds, ClockNs - startNs);
            Machine.Trace.ShootdownEnd(Id, count, ClockNs - startNs);
            return count;

            void BroadcastInVirtualTime(int t)
            {
                CpuShared* target = _machine.SharedOf(t);
                var cpu = _machine.CpuAt(t);
                while (true)
                {
                    ulong s = Volatile.Read(ref target->State);
                    if ((s & Running) == 0)
                    {
                        if (Interlocked.CompareExchange(ref target->State, s | FlushPending, s) == s)
                        {
                            cpu.ExposureDeferred(ClockNs);
                            Count(Counter.IdleTargetsDeferred);
                            return;
                        }
                    }
                    else
                    {
                        cpu.ApplyBroadcast(kind, va, pages);
                        return;
                    }
                }
            }
        }

        CpuShared* request = _shared;
        uint round = ++request->Round;
        request->Kind = (int)kind;
        request->Va = va;
        request->Pages = pages;
        request->Broadcast = 1;
        Volatile.Write(ref request->AckWord, (long)(((ulong)round << 32) | (uint)count));

        var posted = default(CpuSet);
        foreach (int t in targets)
        {
            CpuShared* target = _machine.SharedOf(t);
            SchedulingPoint();
            if (t == skipped)
            {
                Acknowledge(Id, round);
                continue;
            }

            while (true)
            {
                ulong s = Volatile.Read(ref target->State);
                if ((s & Running) == 0)
                {
                    // Idle: it flushes everything before it runs again, as after a deferred IPI.
                    if (Interlocked.CompareExchange(ref target->State, s | FlushPending, s) == s)
                    {
                        _machine.CpuAt(t).ExposureDeferred(ClockNs);
                        Count(Counter.IdleTargetsDeferred);
                        Acknowledge(Id, round);
                        break;
                    }
                }
                else if (Interlocked.CompareExchange(ref target->State, s + 1, s) == s)
                {
                    // The mailbox protocol carries the hardware's request: counted, then named.
                    CpuSet.AtomicAdd(ref target->Pending, Id);
                    posted.Add(t);
                    _machine.CpuAt(t).Ring();
                    break;
                }
            }
        }

        // TLBSYNC: until every running target has applied the request, and no shorter than its price.
        long syncedAt = Stopwatch.GetTimestamp() + _cost.BroadcastSync.Ticks;
        if (_cost.BroadcastSync.Ticks > 0)
        {
            Count(Counter.ChargedNanoseconds, _cost.BroadcastSync.Ns);
        }

        var acks = new AcksIn(this, request, start, targets);
        WaitUntil(ref acks, park: true);
        var spin = default(SpinWait);
        while (Stopwatch.GetTimestamp() < syncedAt)
        {
            PollPoint();
            spin.SpinOnce(sleep1Threshold: -1);
        }

        if (_controller != null)
        {
            CheckRoundComplete(posted, kind, va, pages);
        }

        long wait = (long)Stopwatch.GetElapsedTime(start).TotalNanoseconds;
        Count(Counter.AckWaitNanoseconds, wait);
        Machine.Trace.ShootdownEnd(Id, count, wait);
        return count;
    }

    private static int LastOf(in CpuSet set)
    {
        int last = -1;
        foreach (int t in set)
        {
            last = t;
        }

        return last;
    }

    /// <summary>
    /// What broadcast invalidation hardware does to this CPU's TLB: drops the pages (or every
    /// entry), with no handler, no charge and no count of local invalidations (the instructions
    /// are counted by their issuer). Runs on this CPU's thread, or in virtual time on the
    /// initiator's while this CPU's thread is stopped.
    /// </summary>
    internal void ApplyBroadcast(ShootdownKind kind, ulong va, int pages)
    {
        switch (kind)
        {
            case ShootdownKind.Page:
                ulong vpn = va >> Pte.PageShift;
                _tlb.Invalidate(vpn);
                _shadow?.Remove(vpn);
                break;
            case ShootdownKind.Range:
                ulong first = va >> Pte.PageShift;
                for (int i = 0; i < pages; i++)
                {
                    _tlb.Invalidate(first + (ulong)i);
                    _shadow?.Remove(first + (ulong)i);
                }

                break;
            default:
                // A flush done for a shootdown, as IPI flushes are counted; the flush hooks hear of it.
                Count(Counter.IpiFlushes);
                FlushAll(default);
                break;
        }
    }

    /// <summary>Controlled mode: a target that acknowledged must no longer cache a stale translation of the pages.</summary>
    private void CheckRoundComplete(in CpuSet posted, ShootdownKind kind, ulong va, int pages)
    {
        if (kind == ShootdownKind.All)
        {
            return;
        }

        ulong first = va >> Pte.PageShift;
        int n = kind == ShootdownKind.Page ? 1 : pages;
        foreach (int t in posted)
        {
            var target = _machine.CpuAt(t);
            for (int i = 0; i < n; i++)
            {
                if (target.HoldsStale(first + (ulong)i))
                {
                    throw new IncompleteShootdownException(Id, target.Id, (first + (ulong)i) << Pte.PageShift);
                }
            }
        }
    }

    /// <summary>The watchdog fired: abandons the round so late acknowledgements are ignored, and fails the machine.</summary>
    private void AbandonRound(CpuShared* request, long start, in CpuSet targets)
    {
        uint round = ++request->Round;
        Volatile.Write(ref request->AckWord, (long)((ulong)round << 32));
        var error = new ShootdownTimeoutException(Id, targets, Stopwatch.GetElapsedTime(start));
        _machine.Fail(error);
        throw error;
    }

    // ---------------------------------------------------------------- cross-CPU waits

    /// <summary>
    /// Waits until <paramref name="condition"/> holds, servicing this CPU's mailbox throughout.
    /// Spins for <see cref="Machine.CrossCpuSpin"/>, then (with <paramref name="park"/>) parks the
    /// host thread until an IPI, an acknowledgement or a lock release rings this CPU, so a
    /// descheduled CPU's host thread gets the core. Without <paramref name="park"/>, returns false
    /// when the spin is over. In controlled mode, a condition for the scheduler.
    /// </summary>
    internal bool WaitUntil<T>(ref T condition, bool park)
        where T : struct, ICrossCpuWait
    {
        if (_controller != null)
        {
            return ControlledWait(ref condition, park);
        }

        long spinEnd = 0;
        while (true)
        {
            PollPoint();
            if (condition.IsMet())
            {
                return true;
            }

            _machine.ThrowIfStopping();
            condition.Tick();
            long now = Stopwatch.GetTimestamp();
            if (spinEnd == 0)
            {
                spinEnd = now + _spinTicks;
            }

            if (now < spinEnd)
            {
                Thread.SpinWait(20);
                continue;
            }

            if (!park)
            {
                return false;
            }

            Park(ref condition);
        }
    }

    private void Park<T>(ref T condition)
        where T : struct, ICrossCpuWait
    {
        // With more CPUs than host cores a parked CPU publishes itself idle first (serving what
        // is already posted), as a blocked thread does: shootdowns then mark it flush-pending
        // instead of waiting for a host thread that is off its core, and it flushes before it
        // goes on. Otherwise it stays a running CPU that an IPI rings awake, so IPI counts do
        // not depend on how long a wait took.
        if (_parkIdle)
        {
            EnterIdle();
        }

        _doorbell.Reset();
        Interlocked.Exchange(ref _shared->Parked, 1);

        // Dekker with Ring: we publish Parked then test the condition and the mailbox; a ringer
        // makes either true then reads Parked. A short timeout covers conditions nobody rings for.
        if (!MailPending && !condition.IsMet() && !_machine.IsStopping)
        {
            _doorbell.Wait(1);
        }

        Volatile.Write(ref _shared->Parked, 0);
        if (_parkIdle)
        {
            LeaveIdle();

            // Back from idle, as after a switch: mechanisms that let idle CPUs catch up before
            // they run again (epoch-cache's flush points) get their poll here.
            RunPollHooks();
        }

        Count(Counter.CrossCpuParks);
    }

    /// <summary>Wakes this CPU's thread from a park whether or not it announced one (machine stop).</summary>
    internal void RingAlways() => _doorbell.Set();

    internal void DisposeDoorbell() => _doorbell.Dispose();

    private bool MailPending => (Volatile.Read(ref _shared->State) & MailMask) != 0;

    /// <summary>Virtual time: when the earliest IPI waiting in the mailbox arrives, or <see cref="long.MaxValue"/> when none waits.</summary>
    internal long PendingMailArrivalNs => MailPending ? _shared->MailArrivalNs : long.MaxValue;

    /// <summary>
    /// Virtual time: services the mailbox of this CPU while its thread is parked spinning on a word
    /// (the scheduler calls it once the clock has reached the arrival). The same handler as at a
    /// poll point, minus the scheduling points: the scheduler is deciding already.
    /// </summary>
    internal void ServiceWhileSpinning() => ServiceMailbox(waitForArrival: true, fromScheduler: true);

    /// <summary>Wakes this CPU's thread if it is parked in a cross-CPU wait.</summary>
    internal void Ring()
    {
        if (Volatile.Read(ref _shared->Parked) != 0)
        {
            _doorbell.Set();
        }
    }

    private bool ControlledWait<T>(ref T condition, bool park)
        where T : struct, ICrossCpuWait
    {
        var td = KernelThread.Current;
        if (_virtual)
        {
            return VirtualWait(td, ref condition, park);
        }

        if (!park)
        {
            // A bounded spin: one chance for another thread to run, then the caller blocks its own way.
            _controller!.Yield(td, spinning: true);
            PollPoint();
            return condition.IsMet();
        }

        var copy = condition;
        while (true)
        {
            PollPoint();
            if (condition.IsMet())
            {
                return true;
            }

            _controller!.WaitUntil(td, () => MailPending || copy.IsMet());
        }
    }

    /// <summary>
    /// Virtual time: spins (time passes) until the condition holds, resuming at the time the
    /// thread that made it true reached; takes IPIs as they arrive. Without <paramref name="park"/>
    /// the spin lasts the machine's cross-CPU spin, in virtual nanoseconds.
    /// </summary>
    private bool VirtualWait<T>(KernelThread td, ref T condition, bool park)
        where T : struct, ICrossCpuWait
    {
        long spinEnd = park ? long.MaxValue : ClockNs + _crossCpuSpinNs;
        var copy = condition;
        while (true)
        {
            PollPoint();
            if (condition.IsMet())
            {
                return true;
            }

            if (ClockNs >= spinEnd)
            {
                return false;
            }

            // Until the condition holds or the spin ends; IPIs are taken as they arrive meanwhile.
            _controller!.WaitUntil(td, () => copy.IsMet(), timed: false, spinEnd, spinner: this);
        }
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
                ServiceMailbox(waitForArrival: true);
                continue;
            }

            if (_machine.Planted(PlantedBug.IdleEntryNotAtomic))
            {
                // The planted bug: "no mail" and "not running" become two steps, and the plain
                // store loses whatever was posted in between.
                SchedulingPoint();
                Volatile.Write(ref _shared->State, s & ~Running);
                return;
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

    /// <summary>The acknowledgement wait of a shootdown round, with its watchdog.</summary>
    private readonly struct AcksIn(Cpu cpu, CpuShared* request, long start, CpuSet targets) : ICrossCpuWait
    {
        public bool IsMet() => (uint)Volatile.Read(ref request->AckWord) == 0;

        public void Tick()
        {
            if (Stopwatch.GetTimestamp() - start > cpu._watchdogTicks)
            {
                cpu.AbandonRound(request, start, targets);
            }
        }
    }
}

/// <summary>The condition of a cross-CPU wait (<see cref="Cpu.WaitUntil"/>).</summary>
internal interface ICrossCpuWait
{
    /// <summary>True when the wait is over.</summary>
    bool IsMet();

    /// <summary>Called on each unsuccessful check (a watchdog may throw).</summary>
    void Tick();
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
/// Per-CPU words other CPUs touch: the mailbox (state word and pending senders) and the
/// deferred charges, which senders write, on one line; then the request this CPU posts as a
/// shootdown initiator on another line.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 256)]
internal struct CpuShared
{
    [FieldOffset(0)]
    public ulong State;

    /// <summary>1 while this CPU's thread is parked in a cross-CPU wait (see <see cref="Cpu.Ring"/>).</summary>
    [FieldOffset(8)]
    public int Parked;

    /// <summary>Cost-model charges owed by shootdowns that found this CPU idle, paid when it next runs.</summary>
    [FieldOffset(16)]
    public long DeferredChargeTicks;

    [FieldOffset(24)]
    public long DeferredChargeNs;

    /// <summary>The CPUs whose request waits in this mailbox (each counted in <see cref="State"/> first).</summary>
    [FieldOffset(32)]
    public CpuSet Pending;

    /// <summary>Virtual time: when the earliest IPI waiting in this mailbox arrives.</summary>
    [FieldOffset(64)]
    public long MailArrivalNs;

    [FieldOffset(128)]
    public int Kind;

    [FieldOffset(132)]
    public int Pages;

    [FieldOffset(136)]
    public ulong Va;

    /// <summary>The open round in the high 32 bits, acknowledgements still due in the low 32.</summary>
    [FieldOffset(144)]
    public long AckWord;

    /// <summary>The initiator's round counter (written only by this CPU).</summary>
    [FieldOffset(152)]
    public uint Round;

    /// <summary>1 when the open request is a broadcast invalidation (no handler runs), 0 for an IPI.</summary>
    [FieldOffset(156)]
    public int Broadcast;
}
