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

    private readonly byte* _frames;
    private readonly VmPageDescriptor* _pages;
    private readonly Lock _freeLock = new();
    private readonly Machine _machine;
    private uint _freeHead;
    private int _freeCount;

    internal PhysicalMemory(Machine machine, NativeLedger ledger, ulong bytes)
    {
        if (bytes < 16 * (ulong)Pte.PageSize || bytes % (ulong)Pte.PageSize != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), bytes, "physical memory must be a whole number of pages, at least 16");
        }

        _machine = machine;
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

    /// <summary>Pages on the free queue.</summary>
    public int FreePages => Volatile.Read(ref _freeCount);

    /// <summary>Allocates a page from the free queue; throws <see cref="InvalidOperationException"/> when none is left.</summary>
    public VmPage Alloc(AllocFlags flags = AllocFlags.None) =>
        TryAlloc(out var page, flags) ? page : throw new InvalidOperationException($"physical memory exhausted: all {FrameCount} page frames are in use");

    /// <summary>Allocates a page from the free queue; false when none is left.</summary>
    public bool TryAlloc(out VmPage page, AllocFlags flags = AllocFlags.None)
    {
        _machine.ThrowIfDisposed();
        uint frame;
        lock (_freeLock)
        {
            frame = _freeHead;
            if (frame == NoFrame)
            {
                page = default;
                return false;
            }

            _freeHead = _pages[frame].NextFree;
            _freeCount--;
            ref var d = ref _pages[frame];
            d.NextFree = NoFrame;
            d.Flags = 0;
            d.WireCount = (flags & AllocFlags.Wired) != 0 ? 1 : 0;
            d.HoldCount = 0;
            d.Object = 0;
            d.Offset = 0;
        }

        if ((flags & AllocFlags.Zero) != 0)
        {
            NativeMemory.Clear(FrameAddress(frame), (nuint)Pte.PageSize);

            // Priced on the CPU that zeroes, as a copy is; in real time the host has just paid it.
            KernelThread.CurrentOrNull?.Cpu?.Zeroed(Pte.PageSize);
        }

        page = new VmPage(frame);
        return true;
    }

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
}
