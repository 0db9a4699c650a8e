using System.Runtime.InteropServices;

namespace Native.PageTable;

/// <summary>
/// The machine's physical memory: page frames in one native region and a native
/// <c>vm_page</c> descriptor array, with a free queue.
/// <para>
/// The frame region is allocated but not touched, so a 512 MiB machine costs only the pages it
/// uses: the host kernel backs a frame on its first write. Pages are zeroed when allocated with
/// <see cref="AllocFlags.Zero"/>, which is what touches them.
/// </para>
/// </summary>
public sealed unsafe class PhysicalMemory
{
    private const uint NoFrame = uint.MaxValue;

    // Exclusive page ownership, in the descriptor's Reserved word: Linux's PG_xpfo_user and PG_xpfo_unmapped.
    private const uint XpfoUser = 1, XpfoUnmapped = 2;

    private readonly byte* _frames;
    private readonly VmPageDescriptor* _pages;
    private readonly Lock _freeLock = new();
    private readonly Machine _machine;
    private readonly NativeLedger _ledger;
    private readonly bool _xpfo;
    private uint _freeHead;
    private int _freeCount;

    // Exclusive page ownership: the installed policy, and its per-CPU lists of free pages already
    // taken out of the direct map (Linux's per-CPU pageset for MOVABLE pages, refilled in batches),
    // CPU c's at _pcp[c * _pcpBatch], _pcpCount[c] of them; each list is touched only by the thread
    // holding its CPU.
    private IPageOwnershipPolicy? _policy;
    private uint* _pcp;
    private int* _pcpCount;
    private int _pcpBatch;
    private int _pcpTotal;
    private long _xpfoRestores;

    internal PhysicalMemory(Machine machine, NativeLedger ledger, ulong bytes)
    {
        if (bytes < 16 * (ulong)Pte.PageSize || bytes % (ulong)Pte.PageSize != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), bytes, "physical memory must be a whole number of pages, at least 16");
        }

        _machine = machine;
        _ledger = ledger;
        _xpfo = machine.Options.ExclusivePageOwnership;
        FrameCount = checked((uint)(bytes / (ulong)Pte.PageSize));
        // On the host backend the frames are the memfd's pages, as its direct map shows them.
        _frames = machine.Host is { } host ? host.DirectMap : (byte*)ledger.Alloc((nuint)bytes, (nuint)Pte.PageSize);
        _pages = (VmPageDescriptor*)ledger.AllocZeroed((nuint)(FrameCount * (ulong)sizeof(VmPageDescriptor)));

        // Low frames first, so small tests touch little memory.
        for (uint f = 0; f < FrameCount; f++)
        {
            _pages[f].Frame = f;
            _pages[f].Flags = (uint)VmPageFlags.Free;
            _pages[f].NextFree = f + 1 < FrameCount ? f + 1 : NoFrame;
        }

        _freeHead = 0;
        _freeCount = (int)FrameCount;
    }

    /// <summary>Number of page frames.</summary>
    public uint FrameCount { get; }

    /// <summary>Bytes of physical memory.</summary>
    public ulong Bytes => (ulong)FrameCount * Pte.PageSize;

    /// <summary>Free pages: the free queue, and under exclusive page ownership the per-CPU lists of a batching policy.</summary>
    public int FreePages => Volatile.Read(ref _freeCount) + Volatile.Read(ref _pcpTotal);

    /// <summary>Allocates a page from the free queue; throws <see cref="InvalidOperationException"/> when none is left.</summary>
    public VmPage Alloc(AllocFlags flags = AllocFlags.None) =>
        TryAlloc(out var page, flags) ? page : throw new InvalidOperationException($"physical memory exhausted: all {FrameCount} page frames are in use");

    /// <summary>Allocates a page from the free queue; false when none is left.</summary>
    public bool TryAlloc(out VmPage page, AllocFlags flags = AllocFlags.None)
    {
        _machine.ThrowIfDisposed();
        bool user = _xpfo && (flags & AllocFlags.User) != 0;
        var cpu = user && _pcpBatch != 0 && KernelThread.CurrentOrNull is { } td && ReferenceEquals(td.Machine, _machine) ? td.Cpu : null;
        uint frame;
        if (cpu != null)
        {
            frame = TakeFromPcp(cpu, flags);
        }
        else
        {
            lock (_freeLock)
            {
                frame = _freeHead;
                if (frame != NoFrame)
                {
                    _freeHead = _pages[frame].NextFree;
                    _freeCount--;
                    Initialize(ref _pages[frame], flags);
                }
            }
        }

        if (frame == NoFrame)
        {
            page = default;
            return false;
        }

        page = new VmPage(frame);
        if (_xpfo && cpu == null)
        {
            XpfoAllocPages(page, user);
        }

        if ((flags & AllocFlags.Zero) != 0)
        {
            NativeMemory.Clear(FrameAddress(frame), (nuint)Pte.PageSize);

            // Priced on the CPU that zeroes, as a copy is; in real time the host has just paid it.
            KernelThread.CurrentOrNull?.Cpu?.Zeroed(Pte.PageSize);
        }

        return true;
    }

    private static void Initialize(ref VmPageDescriptor d, AllocFlags flags)
    {
        d.NextFree = NoFrame;
        d.Flags = 0;
        d.WireCount = (flags & AllocFlags.Wired) != 0 ? 1 : 0;
        d.HoldCount = 0;
        d.Object = 0;
        d.Offset = 0;
    }

    /// <summary>
    /// Installs the policy that flushes what the allocator takes out of the direct map on a
    /// <see cref="MachineFlavor.Amd64Xpfo"/> machine (an XPFO strategy; null removes it). One policy
    /// at a time: a later one replaces the earlier. A batching policy
    /// (<see cref="IPageOwnershipPolicy.RefillBatch"/>) gets per-CPU lists of free user pages.
    /// </summary>
    public void InstallOwnershipPolicy(IPageOwnershipPolicy? policy)
    {
        _machine.ThrowIfDisposed();
        if (!_xpfo)
        {
            throw new InvalidOperationException("an ownership policy needs a machine with exclusive page ownership (MachineFlavor.Amd64Xpfo)");
        }

        int batch = policy?.RefillBatch ?? 0;
        ArgumentOutOfRangeException.ThrowIfNegative(batch);
        lock (_freeLock)
        {
            DrainPcp();
            _policy = policy;
            if (batch != 0 && (_pcp == null || batch > _pcpBatch))
            {
                int cpus = _machine.Options.Cpus;
                _pcp = (uint*)_ledger.Alloc((nuint)(cpus * batch) * sizeof(uint));
                _pcpCount = (int*)_ledger.AllocZeroed((nuint)cpus * sizeof(int));
            }

            _pcpBatch = batch;
        }
    }

    /// <summary>Removes <paramref name="policy"/> if it is the installed one (a strategy's disposal).</summary>
    public void UninstallOwnershipPolicy(IPageOwnershipPolicy policy)
    {
        if (_xpfo && !_machine.IsUnusable && ReferenceEquals(Volatile.Read(ref _policy), policy))
        {
            InstallOwnershipPolicy(null);
        }
    }

    // Under _freeLock: every per-CPU list back to the free queue (their pages stay out of the direct map).
    private void DrainPcp()
    {
        if (_pcpBatch == 0)
        {
            return;
        }

        for (int c = 0; c < _machine.Options.Cpus; c++)
        {
            for (int i = 0; i < _pcpCount[c]; i++)
            {
                uint frame = _pcp[(c * _pcpBatch) + i];
                _pages[frame].NextFree = _freeHead;
                _freeHead = frame;
                _freeCount++;
            }

            _pcpCount[c] = 0;
        }

        Volatile.Write(ref _pcpTotal, 0);
    }

    /// <summary>
    /// <c>__rmqueue_pcplist</c> with v9's <c>xpfo_pcp_refill</c>: a user page from this CPU's list;
    /// an empty list is refilled with a batch from the free queue, every page of it taken out of
    /// the direct map at once and one flush asked of the policy for all.
    /// </summary>
    private uint TakeFromPcp(Cpu cpu, AllocFlags flags)
    {
        int c = cpu.Id;
        uint* list = _pcp + (c * _pcpBatch);
        if (_pcpCount[c] == 0)
        {
            int taken = 0;
            lock (_freeLock)
            {
                while (taken < _pcpBatch && _freeHead != NoFrame)
                {
                    uint f = _freeHead;
                    _freeHead = _pages[f].NextFree;
                    _freeCount--;
                    list[taken++] = f;
                }

                _pcpCount[c] = taken;
                Interlocked.Add(ref _pcpTotal, taken);
            }

            if (taken == 0)
            {
                return NoFrame;
            }

            Span<VmPage> removed = _pcpBatch <= 64 ? stackalloc VmPage[_pcpBatch] : new VmPage[_pcpBatch];
            int n = 0;
            for (int i = 0; i < taken; i++)
            {
                ref var d = ref _pages[list[i]];
                Interlocked.Or(ref d.Reserved, XpfoUser);
                if ((Interlocked.Or(ref d.Reserved, XpfoUnmapped) & XpfoUnmapped) == 0)
                {
                    removed[n++] = new VmPage(list[i]);
                }
            }

            // The PTE stores, then one flush for the batch (xpfo_flush_tlb_all).
            for (int i = 0; i < n; i++)
            {
                _machine.KernelPmap.SetDirectMapPte(removed[i], present: false);
            }

            if (n != 0)
            {
                _policy?.Removed(cpu, removed[..n]);
            }
        }

        uint frame = list[--_pcpCount[c]];
        Interlocked.Decrement(ref _pcpTotal);
        lock (_freeLock)
        {
            Initialize(ref _pages[frame], flags);
        }

        return frame;
    }

    /// <summary>
    /// <c>xpfo_alloc_pages</c>: a page for user space (or the page cache) leaves the direct map, and
    /// the policy flushes its translation; a kernel page is put back if it was out. A freed user page
    /// stays out of the direct map until a kernel allocation takes it (v9's <c>xpfo_free_pages</c>);
    /// a policy that restores at free (v7) pays here, when the page goes to user space again, the
    /// restore its free would have made before the removal and flush it makes now.
    /// </summary>
    private void XpfoAllocPages(VmPage page, bool user)
    {
        ref var d = ref _pages[page.Frame];
        var pmap = _machine.KernelPmap;
        if (!user)
        {
            Interlocked.And(ref d.Reserved, ~XpfoUser);
            if ((Interlocked.And(ref d.Reserved, ~XpfoUnmapped) & XpfoUnmapped) != 0)
            {
                Restore(page);
            }

            return;
        }

        Interlocked.Or(ref d.Reserved, XpfoUser);
        var policy = Volatile.Read(ref _policy);
        bool wasUnmapped = (Interlocked.Or(ref d.Reserved, XpfoUnmapped) & XpfoUnmapped) != 0;
        if (wasUnmapped && policy is not { RestoresAtFree: true })
        {
            return; // still out of the direct map since a user owned it last
        }

        if (wasUnmapped)
        {
            Restore(page); // v7's xpfo_free_pages
        }

        pmap.SetDirectMapPte(page, present: false);
        policy?.Removed(KernelThread.CurrentOrNull is { } td && ReferenceEquals(td.Machine, _machine) ? td.Cpu : null, new ReadOnlySpan<VmPage>(in page));
    }

    private void Restore(VmPage page)
    {
        if (!Pte.IsValid(_machine.KernelPmap.SetDirectMapPte(page, present: true)) && KernelThread.CurrentOrNull?.Cpu != null)
        {
            Interlocked.Increment(ref _xpfoRestores);
        }
    }

    /// <summary>Exclusive page ownership: direct-map PTEs the allocator put back on a kernel thread, each a recorded mapping.</summary>
    internal long XpfoRestores => Interlocked.Read(ref _xpfoRestores);

    /// <summary>Exclusive page ownership: true when <paramref name="page"/> was last allocated to user space (<c>PageXpfoUser</c>).</summary>
    internal bool XpfoIsUser(VmPage page) => (Volatile.Read(ref _pages[page.Frame].Reserved) & XpfoUser) != 0;

    /// <summary>Exclusive page ownership: true when <paramref name="page"/> is out of the direct map (<c>PageXpfoUnmapped</c>).</summary>
    internal bool XpfoIsUnmapped(VmPage page) => (Volatile.Read(ref _pages[page.Frame].Reserved) & XpfoUnmapped) != 0;

    /// <summary><c>TestClearPageXpfoUnmapped</c>.</summary>
    internal bool XpfoTestClearUnmapped(VmPage page) => (Interlocked.And(ref _pages[page.Frame].Reserved, ~XpfoUnmapped) & XpfoUnmapped) != 0;

    /// <summary><c>SetPageXpfoUnmapped</c>.</summary>
    internal void XpfoSetUnmapped(VmPage page) => Interlocked.Or(ref _pages[page.Frame].Reserved, XpfoUnmapped);

    /// <summary>
    /// Returns a page to the free queue. Freeing a free page, or a wired one, throws: it would let
    /// two owners share a frame. A page that is only held (a ptrace or a direct pipe write has
    /// it) is freed when the last hold is dropped, as FreeBSD's <c>PG_UNHOLDFREE</c> does.
    /// </summary>
    public void Free(VmPage page)
    {
        _machine.ThrowIfDisposed();
        ref var d = ref Descriptor(page);
        lock (_freeLock)
        {
            if ((d.Flags & (uint)(VmPageFlags.Free | VmPageFlags.UnholdFree)) != 0)
            {
                throw new InvalidOperationException($"{page} is already free (double free)");
            }

            if (Volatile.Read(ref d.WireCount) != 0)
            {
                throw new InvalidOperationException($"{page} is still wired ({d.WireCount}); unwire it first");
            }

            // Publish the flag before reading the hold count; Unhold drops its count before
            // reading the flag. Both are full fences, so one of them frees the page.
            Interlocked.Or(ref d.Flags, (uint)VmPageFlags.UnholdFree);
            if (Volatile.Read(ref d.HoldCount) == 0)
            {
                Enqueue(page, ref d);
            }
        }
    }

    /// <summary>Drops one hold (<c>vm_page_unhold</c>); frees the page if it was freed while held.</summary>
    public void Unhold(VmPage page)
    {
        ref var d = ref Descriptor(page);
        Decrement(page, ref d.HoldCount, "held");
        if (Volatile.Read(ref d.HoldCount) == 0 && (Volatile.Read(ref d.Flags) & (uint)VmPageFlags.UnholdFree) != 0)
        {
            lock (_freeLock)
            {
                if ((d.Flags & (uint)VmPageFlags.UnholdFree) != 0 && Volatile.Read(ref d.HoldCount) == 0)
                {
                    Enqueue(page, ref d);
                }
            }
        }
    }

    private void Enqueue(VmPage page, ref VmPageDescriptor d)
    {
        d.Flags = (uint)VmPageFlags.Free;
        d.Object = 0;
        d.NextFree = _freeHead;
        _freeHead = page.Frame;
        _freeCount++;
    }

    /// <summary>Wires a page (<c>vm_page_wire</c>): it cannot be freed or paged out until unwired.</summary>
    public void Wire(VmPage page) => Increment(page, ref Descriptor(page), ref Descriptor(page).WireCount, "wire");

    /// <summary>Drops one wiring (<c>vm_page_unwire</c>).</summary>
    public void Unwire(VmPage page) => Decrement(page, ref Descriptor(page).WireCount, "wired");

    /// <summary>Holds a page (<c>vm_page_hold</c>): a lighter, transient reference.</summary>
    public void Hold(VmPage page) => Increment(page, ref Descriptor(page), ref Descriptor(page).HoldCount, "hold");

    /// <summary>Holds a page unless it is free (a racing unmap freed it); false then, and nothing changed.</summary>
    public bool TryHold(VmPage page)
    {
        ref var d = ref Descriptor(page);
        const uint gone = (uint)(VmPageFlags.Free | VmPageFlags.UnholdFree);
        if ((Volatile.Read(ref d.Flags) & gone) != 0)
        {
            return false;
        }

        Interlocked.Increment(ref d.HoldCount);
        if ((Volatile.Read(ref d.Flags) & gone) != 0)
        {
            Unhold(page);
            return false;
        }

        return true;
    }


    /// <summary>The page's wire count.</summary>
    public int WireCount(VmPage page) => Volatile.Read(ref Descriptor(page).WireCount);

    /// <summary>The page's hold count.</summary>
    public int HoldCount(VmPage page) => Volatile.Read(ref Descriptor(page).HoldCount);

    /// <summary>True when the page is wired or held: the condition for mapping it ephemerally.</summary>
    public bool IsWiredOrHeld(VmPage page) => WireCount(page) > 0 || HoldCount(page) > 0;

    /// <summary>True when the page is on the free queue.</summary>
    public bool IsFree(VmPage page) => (Volatile.Read(ref Descriptor(page).Flags) & (uint)(VmPageFlags.Free | VmPageFlags.UnholdFree)) != 0;

    /// <summary>Records the VM object and offset a page-cache page belongs to.</summary>
    public void SetOwner(VmPage page, ulong objectId, ulong offset)
    {
        ref var d = ref Descriptor(page);
        RequireAllocated(page, ref d, "own");
        d.Object = objectId;
        d.Offset = offset;
        d.Flags |= (uint)VmPageFlags.Owned;
    }

    /// <summary>The owner (object, offset) of a page-cache page; object 0 means none.</summary>
    public (ulong Object, ulong Offset) Owner(VmPage page)
    {
        ref var d = ref Descriptor(page);
        return (d.Object, d.Offset);
    }

    /// <summary>
    /// The page's bytes, seen physically (no MMU, no TLB): for device-like code and test setup,
    /// never for kernel code that should go through a mapping.
    /// </summary>
    public Span<byte> PhysicalBytes(VmPage page)
    {
        _machine.ThrowIfDisposed();
        CheckFrame(page.Frame);
        return new Span<byte>(FrameAddress(page.Frame), Pte.PageSize);
    }

    /// <summary>The host address of a frame's first byte.</summary>
    internal byte* FrameAddress(uint frame) => _frames + ((nuint)frame << Pte.PageShift);

    internal void CheckFrame(uint frame)
    {
        if (frame >= FrameCount)
        {
            throw new ArgumentOutOfRangeException(nameof(frame), $"frame 0x{frame:x} is outside physical memory (0x{FrameCount:x} frames)");
        }
    }

    private ref VmPageDescriptor Descriptor(VmPage page)
    {
        _machine.ThrowIfDisposed();
        CheckFrame(page.Frame);
        return ref _pages[page.Frame];
    }

    private static void RequireAllocated(VmPage page, ref VmPageDescriptor d, string verb)
    {
        if ((Volatile.Read(ref d.Flags) & (uint)(VmPageFlags.Free | VmPageFlags.UnholdFree)) != 0)
        {
            throw new InvalidOperationException($"cannot {verb} {page}: it is free");
        }
    }

    private static void Increment(VmPage page, ref VmPageDescriptor d, ref int count, string verb)
    {
        RequireAllocated(page, ref d, verb);
        while (true)
        {
            int c = Volatile.Read(ref count);
            if (c == int.MaxValue)
            {
                throw new OverflowException($"{verb} count of {page} overflows");
            }

            if (Interlocked.CompareExchange(ref count, c + 1, c) == c)
            {
                break;
            }
        }

        // A Free racing with us published its flag first: undo, the page is gone.
        if ((Volatile.Read(ref d.Flags) & (uint)(VmPageFlags.Free | VmPageFlags.UnholdFree)) != 0)
        {
            Interlocked.Decrement(ref count);
            throw new InvalidOperationException($"cannot {verb} {page}: it is free");
        }
    }

    private static void Decrement(VmPage page, ref int count, string what)
    {
        while (true)
        {
            int c = Volatile.Read(ref count);
            if (c <= 0)
            {
                throw new InvalidOperationException($"{page} is not {what}");
            }

            if (Interlocked.CompareExchange(ref count, c - 1, c) == c)
            {
                return;
            }
        }
    }
}

/// <summary>Options of <see cref="PhysicalMemory.Alloc"/>.</summary>
[Flags]
public enum AllocFlags
{
    /// <summary>Contents undefined.</summary>
    None = 0,

    /// <summary>Zero the page.</summary>
    Zero = 1,

    /// <summary>Return it wired once.</summary>
    Wired = 2,

    /// <summary>
    /// For user space or the page cache (Linux's <c>GFP_HIGHUSER</c>): on a machine with exclusive
    /// page ownership (<see cref="MachineFlavor.Amd64Xpfo"/>) the page leaves the direct map while
    /// user space owns it. Elsewhere it changes nothing.
    /// </summary>
    User = 4,
}
