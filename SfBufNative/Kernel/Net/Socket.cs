using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>
/// A socket's sending half (<c>struct socket</c> with its <c>so_snd</c> sockbuf): a queue of
/// mbufs with a high-water mark in bytes, drained by a <see cref="Nic"/>. There is no receiving
/// side.
/// <para>
/// Senders serialise on the sockbuf lock (<c>sblock</c>), so one call's data stays contiguous;
/// they sleep on the socket under its mutex (<c>sbwait</c>) until an mbuf fits, and a signal
/// (cancellation) ends the sleep with EINTR. An mbuf fits when the buffer holds at most
/// <see cref="SendBufferHiWat"/> bytes with it, or when the buffer is empty (so a high-water mark
/// below an mbuf's size cannot deadlock). The bytes of an mbuf leave the buffer when the NIC has
/// transmitted and freed it, so an sf_buf is held exactly while its bytes are counted here.
/// </para>
/// <para>All operations except the read-only properties must run on a kernel thread.</para>
/// </summary>
public sealed class Socket
{
    /// <summary>Default send-buffer high-water mark (<c>sb_hiwat</c>): 64 KiB.</summary>
    public const int DefaultSendBufferBytes = 64 * 1024;

    private readonly SimKernel _kernel;
    private readonly KMutex _mtx = new("so_snd");
    private readonly Queue<Mbuf> _queue = new();
    private readonly object _transmitChannel = new();
    private long _cc;
    private int _mbufs;
    private bool _sblocked;
    private bool _cantSendMore;
    private int _transmitterAttached;
    private bool _transmitterStopping;
    private bool _transmitterGone;

    /// <summary>A connected socket of <paramref name="kernel"/> whose send buffer holds up to <paramref name="sendBufferHiWat"/> bytes.</summary>
    public Socket(SimKernel kernel, int sendBufferHiWat = DefaultSendBufferBytes)
    {
        _kernel = kernel ?? throw new ArgumentNullException(nameof(kernel));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(sendBufferHiWat);
        SendBufferHiWat = sendBufferHiWat;
    }

    /// <summary>The kernel the socket belongs to.</summary>
    public SimKernel Kernel => _kernel;

    /// <summary><c>sb_hiwat</c>: most bytes the send buffer takes (see the class remarks).</summary>
    public int SendBufferHiWat { get; }

    /// <summary><c>sb_cc</c>: bytes queued and not yet transmitted.</summary>
    public long SendBufferBytes => Interlocked.Read(ref _cc);

    /// <summary>Mbufs queued and not yet transmitted.</summary>
    public int SendBufferMbufs => Volatile.Read(ref _mbufs);

    /// <summary>Mbufs ever appended to the send buffer.</summary>
    public long MbufsAppended { get; private set; }

    /// <summary>True once <see cref="Close"/> has run (<c>SBS_CANTSENDMORE</c>).</summary>
    public bool IsClosed => Volatile.Read(ref _cantSendMore);

    /// <summary>
    /// <c>sosend</c>: copies the uio (a <see cref="UioDirection.Write"/>, user or kernel buffer) in
    /// through mbuf clusters and queues them, sleeping for space and for clusters. Returns 0 (after
    /// a short send if <paramref name="signal"/> fired once data had moved), EINTR when interrupted
    /// before any byte moved, EPIPE when the socket is closed, or EFAULT for a bad user buffer.
    /// </summary>
    public int Send(Uio uio, CancellationToken signal = default)
    {
        ArgumentNullException.ThrowIfNull(uio);
        if (uio.Direction != UioDirection.Write)
        {
            throw new ArgumentException("sosend takes data from the uio: it must be a UIO_WRITE", nameof(uio));
        }

        long start = uio.Resid;
        int error = SbLock(signal);
        if (error != Errno.OK)
        {
            return error;
        }

        var zone = MbufClusters.Of(_kernel);
        try
        {
            while (uio.Resid > 0)
            {
                int n = (int)Math.Min(uio.Resid, MbufClusters.MCLBYTES);

                // Space first, then a cluster: never sit on a cluster while the buffer is full.
                error = WaitForSpace(n, signal);
                if (error != Errno.OK)
                {
                    break;
                }

                ulong cluster = zone.Alloc(signal);
                if (cluster == 0)
                {
                    error = Errno.EINTR;
                    break;
                }

                var m = zone.NewMbuf(cluster, n);
                error = uio.Move(_kernel.Cpu, cluster, n); // copyin (or bcopy from a kernel buffer)
                if (error == Errno.OK)
                {
                    error = Append(m, signal);
                }

                if (error != Errno.OK)
                {
                    m.Free();
                    break;
                }
            }
        }
        finally
        {
            SbUnlock();
        }

        // As for write(2): an interrupted send that moved data reports the short count.
        return error == Errno.EINTR && uio.Resid != start ? Errno.OK : error;
    }

    /// <summary>
    /// Sleeps until every queued byte has been transmitted (the NIC has freed every mbuf), as a
    /// lingering close does. Returns 0, EINTR when interrupted, or EPIPE if the NIC went away first.
    /// </summary>
    public int WaitDrained(CancellationToken signal = default)
    {
        _mtx.Lock();
        try
        {
            while (_cc > 0)
            {
                if (_transmitterGone)
                {
                    return Errno.EPIPE;
                }

                if (_kernel.Machine.Sleep(this, _mtx, cancellation: signal) == SleepResult.Interrupted)
                {
                    return Errno.EINTR;
                }
            }

            return Errno.OK;
        }
        finally
        {
            _mtx.Unlock();
        }
    }

    /// <summary>
    /// <c>soshutdown(SHUT_WR)</c>/close: no more sends (waiting senders get EPIPE); what is
    /// queued is still transmitted, after which the NIC stops. Closing twice throws.
    /// </summary>
    public void Close()
    {
        _mtx.Lock();
        try
        {
            if (_cantSendMore)
            {
                throw new InvalidOperationException("the socket is already closed");
            }

            Volatile.Write(ref _cantSendMore, true);
            _kernel.Machine.Wakeup(this);
            _kernel.Machine.Wakeup(_transmitChannel);
        }
        finally
        {
            _mtx.Unlock();
        }
    }

    /// <summary><c>sblock(SBL_WAIT)</c>: take the send buffer for one sending call; EINTR when interrupted.</summary>
    internal int SbLock(CancellationToken signal)
    {
        _mtx.Lock();
        try
        {
            while (_sblocked)
            {
                if (_kernel.Machine.Sleep(this, _mtx, cancellation: signal) == SleepResult.Interrupted)
                {
                    return Errno.EINTR;
                }
            }

            _sblocked = true;
            return Errno.OK;
        }
        finally
        {
            _mtx.Unlock();
        }
    }

    /// <summary><c>sbunlock</c>.</summary>
    internal void SbUnlock()
    {
        _mtx.Lock();
        try
        {
            _sblocked = false;
            _kernel.Machine.Wakeup(this);
        }
        finally
        {
            _mtx.Unlock();
        }
    }

    /// <summary><c>sbwait</c> until <paramref name="length"/> bytes fit: 0, EINTR, or EPIPE (closed, or no NIC any more).</summary>
    internal int WaitForSpace(long length, CancellationToken signal)
    {
        _mtx.Lock();
        try
        {
            return WaitForSpaceLocked(length, signal);
        }
        finally
        {
            _mtx.Unlock();
        }
    }

    /// <summary>
    /// <c>sbappend</c>: queues <paramref name="m"/>, waiting for space, and wakes the NIC. On an
    /// error the mbuf is not queued and still belongs to the caller. The caller holds <c>sblock</c>.
    /// </summary>
    internal int Append(Mbuf m, CancellationToken signal)
    {
        _mtx.Lock();
        try
        {
            if (!_sblocked)
            {
                throw new InvalidOperationException("sbappend without sblock");
            }

            int error = WaitForSpaceLocked(m.Length, signal);
            if (error != Errno.OK)
            {
                return error;
            }

            _queue.Enqueue(m);
            Interlocked.Add(ref _cc, m.Length);
            Volatile.Write(ref _mbufs, _mbufs + 1);
            MbufsAppended++;
            _kernel.Machine.Wakeup(_transmitChannel);
            return Errno.OK;
        }
        finally
        {
            _mtx.Unlock();
        }
    }

    /// <summary>Registers the one NIC that drains this socket; callable from outside the machine.</summary>
    internal void AttachTransmitter()
    {
        // A plain atomic flag, not the socket mutex: the NIC is set up before its thread exists.
        if (Interlocked.Exchange(ref _transmitterAttached, 1) != 0)
        {
            throw new InvalidOperationException("a NIC already drains this socket");
        }
    }

    /// <summary>
    /// The NIC's dequeue: the mbuf at the head (left queued, so its bytes keep counting), sleeping
    /// while the queue is empty; null once it is empty and the socket is closed or the NIC stopping.
    /// </summary>
    internal Mbuf? NextToTransmit()
    {
        _mtx.Lock();
        try
        {
            while (_queue.Count == 0)
            {
                if (_cantSendMore || _transmitterStopping)
                {
                    return null;
                }

                _kernel.Machine.Sleep(_transmitChannel, _mtx);
            }

            return _queue.Peek();
        }
        finally
        {
            _mtx.Unlock();
        }
    }

    /// <summary><c>sbdrop</c> of the head mbuf, which the NIC has transmitted and freed; wakes senders.</summary>
    internal void Transmitted(Mbuf m)
    {
        _mtx.Lock();
        try
        {
            if (!_queue.TryPeek(out var head) || !ReferenceEquals(head, m))
            {
                throw new InvalidOperationException($"{m} is not at the head of the send buffer");
            }

            _queue.Dequeue();
            Interlocked.Add(ref _cc, -m.Length);
            Volatile.Write(ref _mbufs, _mbufs - 1);
            _kernel.Machine.Wakeup(this);
        }
        finally
        {
            _mtx.Unlock();
        }
    }

    /// <summary>Asks the NIC to exit once the queue is empty.</summary>
    internal void StopTransmitter()
    {
        _mtx.Lock();
        try
        {
            _transmitterStopping = true;
            _kernel.Machine.Wakeup(_transmitChannel);
        }
        finally
        {
            _mtx.Unlock();
        }
    }

    /// <summary>The NIC's thread is ending: senders and drain waiters must not wait for it any more.</summary>
    internal void TransmitterGone()
    {
        _mtx.Lock();
        try
        {
            _transmitterGone = true;
            _kernel.Machine.Wakeup(this);
        }
        finally
        {
            _mtx.Unlock();
        }
    }

    private int WaitForSpaceLocked(long length, CancellationToken signal)
    {
        while (true)
        {
            if (_cantSendMore)
            {
                return Errno.EPIPE;
            }

            if (_cc == 0 || _cc + length <= SendBufferHiWat)
            {
                return Errno.OK;
            }

            if (_transmitterGone)
            {
                return Errno.EPIPE;
            }

            if (_kernel.Machine.Sleep(this, _mtx, cancellation: signal) == SleepResult.Interrupted)
            {
                return Errno.EINTR;
            }
        }
    }
}
