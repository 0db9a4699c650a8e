using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>
/// The memory requests of <c>ptrace(2)</c>, all through <see cref="ProcRwMem"/>:
/// <c>PT_READ_D</c>/<c>PT_WRITE_D</c> (<see cref="PeekWord"/>, <see cref="PokeWord"/>) and
/// <c>PT_IO</c> with <c>PIOD_READ_D</c>/<c>PIOD_WRITE_D</c> (<see cref="ReadMemory"/>,
/// <see cref="WriteMemory"/>). Errors are returned as errno values, as the kernel returns them:
/// <see cref="Errno.EFAULT"/> for a target address that is not mapped.
/// <para>
/// FreeBSD's <c>PT_READ_D</c> moves the word through a variable on the tracer's kernel stack
/// (<c>UIO_SYSSPACE</c>). The simulation has no kernel stacks in simulated memory, so a word
/// request borrows an 8-byte slot of a small pool of permanently mapped kmem pages for the
/// duration of the call, and returns it. A pool rather than a per-CPU page, because the request
/// can sleep (pool or <c>kernel_map</c> exhaustion) and another thread could then run on the same
/// CPU. The first kmem page is mapped by <see cref="Create"/>; more only when more than
/// 512 word requests are in flight at once, so steady-state requests write no kernel PTE.
/// </para>
/// </summary>
public sealed class Ptrace
{
    private const int SlotsPerPage = Pte.PageSize / sizeof(ulong);

    private readonly SimKernel _kernel;
    private readonly KMutex _scratchLock = new("ptrace scratch");
    private readonly Stack<ulong> _freeSlots = new();
    private readonly List<ulong> _scratchPages = [];
    private int _scratchPageCount;

    private Ptrace(SimKernel kernel) => _kernel = kernel;

    /// <summary>kmem pages backing the word requests' scratch slots.</summary>
    public int ScratchPages => Volatile.Read(ref _scratchPageCount);

    /// <summary>Creates the ptrace service of <paramref name="kernel"/> and maps its first scratch page. Must run on a kernel thread.</summary>
    public static Ptrace Create(SimKernel kernel)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        var ptrace = new Ptrace(kernel);
        ptrace._scratchLock.Lock();
        try
        {
            ptrace.Grow();
        }
        finally
        {
            ptrace._scratchLock.Unlock();
        }

        return ptrace;
    }

    /// <summary>
    /// <c>PT_READ_D</c>: reads the 64-bit word at <paramref name="address"/> in
    /// <paramref name="target"/> (any alignment; a word that straddles two pages takes both).
    /// Returns 0, or <see cref="Errno.EFAULT"/> with <paramref name="value"/> 0 when a page of the
    /// word is not mapped.
    /// </summary>
    public int PeekWord(VmSpace target, ulong address, out ulong value)
    {
        KernelThread.CurrentOrNull?.Cpu?.EnterKernel();
        value = 0;
        ulong slot = TakeSlot();
        try
        {
            var uio = new Uio(slot, sizeof(ulong), UioSegment.SystemSpace, UioDirection.Read, (long)address);
            int error = ProcRwMem.Transfer(_kernel, target, uio);
            if (error == Errno.OK)
            {
                value = _kernel.Cpu.ReadUInt64(slot);
            }

            return error;
        }
        finally
        {
            ReturnSlot(slot);
        }
    }

    /// <summary>
    /// <c>PT_WRITE_D</c>: writes the 64-bit word <paramref name="value"/> at
    /// <paramref name="address"/> in <paramref name="target"/>, read-only mappings included (see
    /// <see cref="ProcRwMem"/>). Returns 0, or <see cref="Errno.EFAULT"/> when a page of the word is
    /// not mapped; for a word that straddles into an unmapped page, the bytes in the mapped first
    /// page have been written, as in FreeBSD.
    /// </summary>
    public int PokeWord(VmSpace target, ulong address, ulong value)
    {
        KernelThread.CurrentOrNull?.Cpu?.EnterKernel();
        ulong slot = TakeSlot();
        try
        {
            _kernel.Cpu.WriteUInt64(slot, value);
            var uio = new Uio(slot, sizeof(ulong), UioSegment.SystemSpace, UioDirection.Write, (long)address);
            return ProcRwMem.Transfer(_kernel, target, uio);
        }
        finally
        {
            ReturnSlot(slot);
        }
    }

    /// <summary>
    /// <c>PT_IO</c> with <c>PIOD_READ_D</c>: copies <paramref name="length"/> bytes from
    /// <paramref name="address"/> in <paramref name="target"/> to <paramref name="userBuffer"/> in
    /// the calling thread's address space. Returns 0 or EFAULT; <paramref name="transferred"/> is
    /// <c>piod_len</c> afterwards: the bytes that moved before any fault.
    /// </summary>
    public int ReadMemory(VmSpace target, ulong address, ulong userBuffer, long length, out long transferred) =>
        Io(target, address, userBuffer, length, UioDirection.Read, out transferred);

    /// <summary>
    /// <c>PT_IO</c> with <c>PIOD_WRITE_D</c>: copies <paramref name="length"/> bytes from
    /// <paramref name="userBuffer"/> in the calling thread's address space to
    /// <paramref name="address"/> in <paramref name="target"/>. Returns 0 or EFAULT;
    /// <paramref name="transferred"/> is the bytes written before any fault.
    /// </summary>
    public int WriteMemory(VmSpace target, ulong address, ulong userBuffer, long length, out long transferred) =>
        Io(target, address, userBuffer, length, UioDirection.Write, out transferred);

    /// <summary>Unmaps and frees the scratch pages. No request may be in progress. Must run on a kernel thread.</summary>
    public void Destroy()
    {
        ulong[] pages;
        _scratchLock.Lock();
        try
        {
            if (_freeSlots.Count != _scratchPages.Count * SlotsPerPage)
            {
                throw new InvalidOperationException("ptrace requests are still in progress");
            }

            pages = [.. _scratchPages];
            _scratchPages.Clear();
            _freeSlots.Clear();
            Volatile.Write(ref _scratchPageCount, 0);
        }
        finally
        {
            _scratchLock.Unlock();
        }

        foreach (ulong va in pages)
        {
            _kernel.Machine.KernelMemory.Free(va, Pte.PageSize);
        }
    }

    private int Io(VmSpace target, ulong address, ulong userBuffer, long length, UioDirection direction, out long transferred)
    {
        KernelThread.CurrentOrNull?.Cpu?.EnterKernel();
        var uio = new Uio(userBuffer, length, UioSegment.UserSpace, direction, (long)address);
        int error = ProcRwMem.Transfer(_kernel, target, uio);
        transferred = length - uio.Resid;
        return error;
    }

    private ulong TakeSlot()
    {
        _scratchLock.Lock();
        try
        {
            if (_freeSlots.Count == 0)
            {
                Grow();
            }

            return _freeSlots.Pop();
        }
        finally
        {
            _scratchLock.Unlock();
        }
    }

    private void ReturnSlot(ulong slot)
    {
        _scratchLock.Lock();
        try
        {
            _freeSlots.Push(slot);
        }
        finally
        {
            _scratchLock.Unlock();
        }
    }

    /// <summary>Maps one more kmem page of slots; the caller holds the scratch lock.</summary>
    private void Grow()
    {
        ulong va = _kernel.Machine.KernelMemory.Alloc(Pte.PageSize);
        if (va == 0)
        {
            throw new InvalidOperationException("kmem is full: no room for ptrace scratch");
        }

        _scratchPages.Add(va);
        Volatile.Write(ref _scratchPageCount, _scratchPages.Count);

        // Pushed high to low so that the lowest slot is handed out first.
        for (int i = SlotsPerPage - 1; i >= 0; i--)
        {
            _freeSlots.Push(va + ((ulong)i * sizeof(ulong)));
        }
    }
}
