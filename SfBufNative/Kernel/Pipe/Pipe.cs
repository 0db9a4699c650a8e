using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>
/// A pipe (<c>sys_pipe.c</c>), one direction: a kernel pipe buffer for small writes and direct
/// writes for large ones.
/// <para>
/// Writes below <see cref="PIPE_MINDIRECT"/> are copied in to the pipe buffer and copied out by
/// the reader. Larger writes from user space go direct: the writer holds its user pages and
/// waits; the reader copies straight from them with <c>uiomove_fromphys</c> (private sf_bufs on
/// i386, the direct map on amd64). With the <c>original</c> strategy the writer instead maps its
/// pages into the pipe's own KVA window with <c>pmap_qenter</c>, the reader copies from the
/// window, and the writer unmaps it with <c>pmap_qremove</c>: two broadcast shootdowns per
/// direct write. Either way the writer holds (and maps) its pages and releases (and unmaps) them
/// with the pipe mutex dropped, as <c>pipe_build_write_buffer</c> and
/// <c>pipe_destroy_write_buffer</c> ran. A writer interrupted mid-transfer clones what the reader has not taken yet into
/// the pipe buffer (<c>pipe_clone_write_buffer</c>) and returns a short write.
/// </para>
/// </summary>
public sealed class Pipe
{
    /// <summary>Writes of at least this many bytes go direct.</summary>
    public const int PIPE_MINDIRECT = 8192;

    /// <summary>The pipe buffer's size.</summary>
    public const int PIPE_SIZE = 16384;

    /// <summary>Most bytes one direct write hands over (<c>BIG_PIPE_SIZE</c>).</summary>
    public const int PIPE_DIRECT_MAX = 65536;

    /// <summary>Pages a direct write can span: <c>PIPENPAGES</c>.</summary>
    public const int PIPENPAGES = (PIPE_DIRECT_MAX / Pte.PageSize) + 1;

    private readonly SimKernel _kernel;
    private readonly KMutex _mtx = new("pipe");
    private readonly VmPage[] _directPages = new VmPage[PIPENPAGES];
    private ulong _buffer;
    private int _bufferSize;
    private int _in;
    private int _out;
    private int _cnt;
    private bool _directActive;
    private int _directPageCount;
    private long _directPos;
    private long _directCnt;
    private ulong _window;
    private bool _readerBusy;
    private bool _readerCopying;
    private bool _writerBusy;
    private bool _readClosed;
    private bool _writeClosed;

    internal Pipe(SimKernel kernel)
    {
        _kernel = kernel;
        _bufferSize = PIPE_SIZE;
        _buffer = kernel.Machine.KernelMemory.Alloc(PIPE_SIZE);
        if (_buffer == 0)
        {
            throw new InvalidOperationException("kmem is full: no room for a pipe buffer");
        }
    }

    /// <summary>Direct writes handed to readers so far.</summary>
    public long DirectWrites { get; private set; }

    /// <summary>Writes that went through the pipe buffer.</summary>
    public long BufferedWrites { get; private set; }

    /// <summary>Direct writes interrupted and cloned into the pipe buffer.</summary>
    public long ClonedWrites { get; private set; }

    /// <summary>
    /// <c>pipe()</c>: creates a pipe. Must run on a kernel thread.
    /// </summary>
    public static Pipe Create(SimKernel kernel)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        return new Pipe(kernel);
    }

    /// <summary>
    /// Writes the uio into the pipe, blocking while it is full or while a reader has not taken a
    /// direct write. Returns 0 (possibly after a short write if <paramref name="signal"/> fired
    /// mid-transfer), EPIPE when there is no reader, EINTR when interrupted before any byte moved,
    /// or EFAULT for a bad user buffer.
    /// </summary>
    public int Write(Uio uio, CancellationToken signal = default)
    {
        KernelThread.CurrentOrNull?.Cpu?.EnterKernel();
        ArgumentNullException.ThrowIfNull(uio);
        long start = uio.Resid;
        _mtx.Lock();
        try
        {
            int error = Acquire(ref _writerBusy, signal);
            if (error != Errno.OK)
            {
                return error;
            }

            try
            {
                while (uio.Resid > 0 && error == Errno.OK)
                {
                    if (_readClosed)
                    {
                        error = Errno.EPIPE;
                        break;
                    }

                    error = uio.Segment == UioSegment.UserSpace && uio.Resid >= PIPE_MINDIRECT
                        ? DirectWrite(uio, signal)
                        : BufferedWrite(uio, signal);
                }
            }
            finally
            {
                Release(ref _writerBusy);
            }

            // A write interrupted after moving data reports the short count, not the signal.
            return error == Errno.EINTR && uio.Resid != start ? Errno.OK : error;
        }
        finally
        {
            _mtx.Unlock();
        }
    }

    /// <summary>
    /// Reads what is available into the uio, blocking until something is (or EOF: returns 0
    /// with nothing moved). Returns EINTR when interrupted before any byte moved, EFAULT for a
    /// bad user buffer.
    /// </summary>
    public int Read(Uio uio, CancellationToken signal = default)
    {
        KernelThread.CurrentOrNull?.Cpu?.EnterKernel();
        ArgumentNullException.ThrowIfNull(uio);
        _mtx.Lock();
        try
        {
            int error = Acquire(ref _readerBusy, signal);
            if (error != Errno.OK)
            {
                return error;
            }

            try
            {
                while (true)
                {
                    if (_cnt > 0)
                    {
                        return ReadBuffered(uio);
                    }

                    if (_directActive && _directCnt > 0)
                    {
                        return ReadDirect(uio);
                    }

                    if (_writeClosed || uio.Resid == 0)
                    {
                        return Errno.OK;
                    }

                    if (_kernel.Machine.Sleep(this, _mtx, cancellation: signal) == SleepResult.Interrupted)
                    {
                        return Errno.EINTR;
                    }
                }
            }
            finally
            {
                Release(ref _readerBusy);
            }
        }
        finally
        {
            _mtx.Unlock();
        }
    }

    /// <summary>Closes the write end: readers see EOF once the data is drained.</summary>
    public void CloseWrite() => Close(ref _writeClosed);

    /// <summary>Closes the read end: writers get EPIPE.</summary>
    public void CloseRead() => Close(ref _readClosed);

    private void Close(ref bool flag)
    {
        _mtx.Lock();
        bool destroy;
        try
        {
            if (flag)
            {
                throw new InvalidOperationException("this end of the pipe is already closed");
            }

            flag = true;
            destroy = _readClosed && _writeClosed;
            _kernel.Machine.Wakeup(this);
        }
        finally
        {
            _mtx.Unlock();
        }

        if (destroy)
        {
            _kernel.Machine.KernelMemory.Free(_buffer, _bufferSize);
            _buffer = 0;
            if (_window != 0)
            {
                _kernel.Original.KvaFree(_window, PIPENPAGES + 1);
                _window = 0;
            }
        }
    }

    private int BufferedWrite(Uio uio, CancellationToken signal)
    {
        // Wait for room; a pending direct write must drain first so bytes stay in order.
        while (_directActive || _cnt == _bufferSize)
        {
            if (_readClosed)
            {
                return Errno.EPIPE;
            }

            if (_kernel.Machine.Sleep(this, _mtx, cancellation: signal) == SleepResult.Interrupted)
            {
                return Errno.EINTR;
            }
        }

        int space = _bufferSize - _cnt;
        int contiguous = Math.Min(space, _bufferSize - _in);
        int n = (int)Math.Min(uio.Resid, contiguous);
        int at = _in;

        // Copy with the mutex dropped (the writer flag keeps other writers out); the reader
        // only looks at [_out, _out + _cnt), which this range is not part of yet.
        _mtx.Unlock();
        int error = uio.Move(_kernel.Cpu, _buffer + (ulong)at, n);
        _mtx.Lock();
        if (error != Errno.OK)
        {
            return error;
        }

        _in = (_in + n) % _bufferSize;
        _cnt += n;
        BufferedWrites++;
        _kernel.Machine.Wakeup(this);
        return Errno.OK;
    }

    private int ReadBuffered(Uio uio)
    {
        int contiguous = Math.Min(_cnt, _bufferSize - _out);
        int n = (int)Math.Min(uio.Resid, contiguous);
        int at = _out;
        _mtx.Unlock();
        int error = uio.Move(_kernel.Cpu, _buffer + (ulong)at, n);
        _mtx.Lock();
        if (error != Errno.OK)
        {
            return error;
        }

        _out = (_out + n) % _bufferSize;
        _cnt -= n;
        _kernel.Machine.Wakeup(this);
        return Errno.OK;
    }

    private int DirectWrite(Uio uio, CancellationToken signal)
    {
        // Only one direct write at a time, and never ahead of buffered bytes.
        while (_directActive || _cnt > 0)
        {
            if (_readClosed)
            {
                return Errno.EPIPE;
            }

            if (_kernel.Machine.Sleep(this, _mtx, cancellation: signal) == SleepResult.Interrupted)
            {
                return Errno.EINTR;
            }
        }

        // pipe_build_write_buffer runs with the pipe mutex dropped, as in FreeBSD: holding the
        // pages (and, originally, mapping the window with its shootdown) must not stall the
        // reader. The writer flag keeps other writers out; readers look at a direct write only
        // once it is published below.
        _mtx.Unlock();
        int error;
        long size;
        try
        {
            error = BuildWriteBuffer(uio, out size);
        }
        finally
        {
            _mtx.Lock();
        }

        if (error != Errno.OK)
        {
            return error;
        }

        uio.Advance(size);
        _directActive = true;
        DirectWrites++;
        _kernel.Machine.Wakeup(this);
        while (_directCnt > 0)
        {
            if (_readClosed)
            {
                error = Errno.EPIPE;
                break;
            }

            if (_kernel.Machine.Sleep(this, _mtx, cancellation: signal) == SleepResult.Interrupted)
            {
                // A reader mid-copy finishes first (uninterruptibly): it owns part of the range.
                while (_readerCopying)
                {
                    _kernel.Machine.Sleep(this, _mtx, cancellation: CancellationToken.None);
                }

                if (_directCnt == 0)
                {
                    break;
                }

                CloneWriteBuffer();
                error = Errno.EINTR;
                break;
            }
        }

        while (_readerCopying)
        {
            _kernel.Machine.Sleep(this, _mtx, cancellation: CancellationToken.None);
        }

        // Withdrawn under the mutex, then torn down without it (pipe_destroy_write_buffer ran
        // unlocked too): no reader starts on it once it is withdrawn.
        _directActive = false;
        _directCnt = 0;
        _mtx.Unlock();
        try
        {
            DestroyWriteBuffer();
        }
        finally
        {
            _mtx.Lock();
        }

        _kernel.Machine.Wakeup(this);
        return error;
    }

    private int ReadDirect(Uio uio)
    {
        long n = Math.Min(_directCnt, uio.Resid);
        long pos = _directPos;

        // The writer must not clone or release its pages while we copy from them.
        _readerCopying = true;
        _mtx.Unlock();
        int error = _kernel.IsOriginal
            ? uio.Move(_kernel.Cpu, _window + (ulong)pos, n)
            : UioMove.FromPhys(_kernel, _directPages.AsSpan(0, _directPageCount), pos, n, uio);
        _mtx.Lock();
        _readerCopying = false;
        _kernel.Machine.Wakeup(this);
        if (error != Errno.OK)
        {
            return error;
        }

        _directPos += n;
        _directCnt -= n;
        if (_directCnt == 0)
        {
            _kernel.Machine.Wakeup(this);
        }

        return Errno.OK;
    }

    /// <summary><c>pipe_build_write_buffer</c>: hold the writer's pages (and, originally, map them into the window).</summary>
    private int BuildWriteBuffer(Uio uio, out long size)
    {
        var pmap = KernelThread.Current.VmSpace?.Pmap
            ?? throw new InvalidOperationException("a direct pipe write needs the writer's address space");
        size = Math.Min(uio.Resid, PIPE_DIRECT_MAX);
        ulong first = uio.Base & ~Pte.PageMask;
        int npages = (int)(((uio.Base + (ulong)size - first) + Pte.PageMask) >> Pte.PageShift);
        for (int i = 0; i < npages; i++)
        {
            // pmap_extract_and_hold: an unmapped user page fails the write with EFAULT.
            if (pmap.ExtractAndHold(first + ((ulong)i << Pte.PageShift)) is not { } page)
            {
                for (int j = 0; j < i; j++)
                {
                    _kernel.Machine.Physical.Unhold(_directPages[j]);
                }

                return Errno.EFAULT;
            }

            _directPages[i] = page;
        }

        _directPageCount = npages;
        _directPos = (long)(uio.Base & Pte.PageMask);
        _directCnt = size;

        if (_kernel.IsOriginal)
        {
            // The per-pipe window, allocated on the first direct write and kept.
            if (_window == 0)
            {
                _window = _kernel.Original.KvaAlloc(PIPENPAGES + 1);
            }

            _kernel.Original.QEnter(_window, _directPages.AsSpan(0, npages));
        }

        return Errno.OK;
    }

    /// <summary><c>pipe_destroy_write_buffer</c>: unmap the window (originally) and drop the holds.</summary>
    private void DestroyWriteBuffer()
    {
        if (_kernel.IsOriginal)
        {
            _kernel.Original.QRemove(_window, _directPageCount);
        }

        for (int i = 0; i < _directPageCount; i++)
        {
            _kernel.Machine.Physical.Unhold(_directPages[i]);
        }

        _directPageCount = 0;
        _directCnt = 0;
    }

    /// <summary>
    /// <c>pipe_clone_write_buffer</c>: copy the bytes the reader has not taken into the pipe
    /// buffer (grown if needed), so the interrupted writer can return.
    /// </summary>
    private void CloneWriteBuffer()
    {
        int size = (int)_directCnt;
        if (size > _bufferSize)
        {
            var bigger = _kernel.Machine.KernelMemory.Alloc(size);
            if (bigger == 0)
            {
                throw new InvalidOperationException("kmem is full: cannot clone an interrupted pipe write");
            }

            _kernel.Machine.KernelMemory.Free(_buffer, _bufferSize);
            _buffer = bigger;
            _bufferSize = (int)(((size + Pte.PageSize - 1) / Pte.PageSize) * Pte.PageSize);
        }

        var into = new Uio(_buffer, size, UioSegment.SystemSpace, UioDirection.Read);
        int error = _kernel.IsOriginal
            ? into.Move(_kernel.Cpu, _window + (ulong)_directPos, size)
            : UioMove.FromPhys(_kernel, _directPages.AsSpan(0, _directPageCount), _directPos, size, into);
        if (error != Errno.OK)
        {
            throw new InvalidOperationException($"cloning a pipe write into the kernel buffer failed: errno {error}");
        }

        _in = size % _bufferSize;
        _out = 0;
        _cnt = size;
        _directCnt = 0;
        ClonedWrites++;
    }

    private int Acquire(ref bool busy, CancellationToken signal)
    {
        while (busy)
        {
            if (_kernel.Machine.Sleep(this, _mtx, cancellation: signal) == SleepResult.Interrupted)
            {
                return Errno.EINTR;
            }
        }

        busy = true;
        return Errno.OK;
    }

    private void Release(ref bool busy)
    {
        busy = false;
        _kernel.Machine.Wakeup(this);
    }
}
