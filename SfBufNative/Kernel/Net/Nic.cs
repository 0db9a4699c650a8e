using System.Security.Cryptography;
using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>
/// A simulated NIC driver: a kernel thread bound to one CPU that drains a socket's send buffer.
/// For each mbuf it reads the payload through the mbuf's kernel address on its own CPU (as a
/// driver computing a checksum would), adds it to a SHA-256 of everything transmitted and to a
/// byte count, then frees the mbuf, which for sendfile runs <c>sf_buf_mext</c>. Because it reads
/// on another CPU than the sender, sendfile's mappings must be valid on every CPU: shared sf_bufs.
/// <para>
/// It sleeps while the socket is empty and exits once the socket is closed (or
/// <see cref="Stop"/> was called) and everything queued has been transmitted.
/// </para>
/// </summary>
public sealed class Nic
{
    private readonly SimKernel _kernel;
    private readonly Socket _so;
    private byte[]? _sha256;
    private long _bytes;
    private long _packets;

    private Nic(SimKernel kernel, Socket so, int cpu)
    {
        _kernel = kernel;
        _so = so;
        Cpu = cpu;
        so.AttachTransmitter();
        Thread = kernel.Machine.StartThread("nic", Run, cpu, bound: true);
    }

    /// <summary>The CPU the driver thread is bound to.</summary>
    public int Cpu { get; }

    /// <summary>The driver's kernel thread.</summary>
    public KernelThread Thread { get; }

    /// <summary>Payload bytes transmitted so far.</summary>
    public long Bytes => Interlocked.Read(ref _bytes);

    /// <summary>Mbufs transmitted (and freed) so far.</summary>
    public long Packets => Interlocked.Read(ref _packets);

    /// <summary>True once the driver thread has exited.</summary>
    public bool HasExited => Thread.HasExited;

    /// <summary>SHA-256 of every byte transmitted, in order; available once the driver has exited normally.</summary>
    public byte[] Sha256 => (byte[]?)Volatile.Read(ref _sha256)?.Clone()
        ?? throw new InvalidOperationException("the NIC has not finished: Stop it or close the socket, then Join (which rethrows why it failed, if it did)");

    /// <summary>
    /// Starts a NIC draining <paramref name="so"/> on <paramref name="cpu"/>; -1 means the last
    /// CPU, which is another CPU than cpu 0 when there are two or more (on one CPU it shares cpu 0,
    /// sleeping whenever the socket is empty). A socket has at most one NIC.
    /// </summary>
    public static Nic Start(SimKernel kernel, Socket so, int cpu = -1)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(so);
        if (!ReferenceEquals(so.Kernel, kernel))
        {
            throw new ArgumentException("the socket belongs to another kernel", nameof(so));
        }

        return new Nic(kernel, so, cpu < 0 ? kernel.Machine.Options.Cpus - 1 : cpu);
    }

    /// <summary>
    /// Asks the driver to exit once the socket's queue is empty (queued mbufs are still
    /// transmitted, so no sf_buf or page wiring is left behind). Called from outside the machine,
    /// it runs the request on a short-lived kernel thread, since the socket lock is a kernel mutex.
    /// </summary>
    public void Stop()
    {
        if (KernelThread.CurrentOrNull is { } td && ReferenceEquals(td.Machine, _kernel.Machine))
        {
            _so.StopTransmitter();
        }
        else
        {
            _kernel.Machine.StartThread("nic-stop", _so.StopTransmitter).Join();
        }
    }

    /// <summary>Waits for the driver thread to exit; rethrows what it failed with (a stale translation, say).</summary>
    public void Join(TimeSpan? timeout = null) => Thread.Join(timeout);

    private void Run()
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[Pte.PageSize];
        try
        {
            var cpu = _kernel.Machine.CurrentCpu; // bound: it never changes
            while (_so.NextToTransmit() is { } m)
            {
                // A sendfile page's address is made valid on this CPU by sf_buf_kva, here where the
                // driver reads it (lwbuf and emap need that step on the reading CPU).
                ulong data = m.ExtType == MbufExtType.SfBuf ? _kernel.SfBufs.Kva(m.SfBuf) + (m.Data - m.ExtBuf) : m.Data;
                for (int done = 0; done < m.Length;)
                {
                    int n = Math.Min(m.Length - done, buffer.Length);
                    cpu.Read(data + (ulong)done, buffer.AsSpan(0, n));
                    sha.AppendData(buffer, 0, n);
                    done += n;
                }

                Interlocked.Add(ref _bytes, m.Length);
                Interlocked.Increment(ref _packets);

                // Free before sbdrop: once a sender sees the space, the sf_buf is back too.
                m.Free();
                _so.Transmitted(m);
            }

            Volatile.Write(ref _sha256, sha.GetHashAndReset());
        }
        finally
        {
            _so.TransmitterGone();
        }
    }
}
