using Native.Interop;

namespace Native.PageTable;

/// <summary>
/// Counts the host kernel's TLB flushes that this machine's kernel threads cause and receive,
/// from the <c>tlb:tlb_flush</c> tracepoint, per thread: each kernel thread opens its counters
/// the first time it runs on a CPU, so other processes on the host never add to the counts.
/// <list type="bullet">
/// <item><b>sent</b> (<c>reason == TLB_REMOTE_SEND_IPI</c>): the host kernel, inside a remap made
/// by one of our threads, found other CPUs that may cache the old translation and flushed them.
/// On hosts whose remote flushes are hypercalls (PVM, Hyper-V, KVM's PV flush for preempted
/// vCPUs) this is the only trace a shootdown leaves in the guest.</item>
/// <item><b>received</b> (<c>reason == TLB_REMOTE_SHOOTDOWN</c>): a flush IPI handled while one of
/// our threads was running: a delivered shootdown. Zero where the hypervisor flushes instead.</item>
/// </list>
/// </summary>
internal sealed class HostFlushCounters : IContextSwitchHook, IDisposable
{
    private const int ReasonRemoteShootdown = 1; // enum tlb_flush_reason: TLB_REMOTE_SHOOTDOWN
    private const int ReasonRemoteSendIpi = 4;   // TLB_REMOTE_SEND_IPI

    private static readonly Lazy<(int Id, string? Unavailable)> s_tracepoint = new(() =>
    {
        int id = TracepointCounter.FindTracepointId("tlb", "tlb_flush", out string? unavailable);
        return (id, unavailable);
    });

    [ThreadStatic]
    private static HostFlushCounters? s_openedFor;

    private readonly List<(KernelThread Thread, TracepointCounter Sent, TracepointCounter Received)> _threads = [];
    private readonly Lock _lock = new();
    private long _exitedSent;
    private long _exitedReceived;
    private string? _failure;
    private bool _disposed;

    /// <summary>Why the tracepoint cannot be used on this host, or null.</summary>
    public static string? TracepointUnavailable => s_tracepoint.Value.Unavailable;

    /// <summary>Why this machine's counts are unavailable (the tracepoint, or opening a counter failed), or null.</summary>
    public string? Unavailable => TracepointUnavailable ?? Volatile.Read(ref _failure);

    /// <summary>Flushes sent and received so far by every kernel thread that has run; -1 each when unavailable.</summary>
    public (long Sent, long Received) Read()
    {
        if (Unavailable != null)
        {
            return (-1, -1);
        }

        lock (_lock)
        {
            long sent = _exitedSent, received = _exitedReceived;
            foreach (var (_, s, r) in _threads)
            {
                sent += s.Read();
                received += r.Read();
            }

            return (sent, received);
        }
    }

    public void SwitchIn(Cpu cpu, KernelThread thread, int migratedFrom)
    {
        if (!ReferenceEquals(s_openedFor, this))
        {
            OpenForThisThread(thread);
        }
    }

    public void SwitchOut(Cpu cpu, KernelThread thread)
    {
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            foreach (var (_, s, r) in _threads)
            {
                s.Dispose();
                r.Dispose();
            }

            _threads.Clear();
        }
    }

    private void OpenForThisThread(KernelThread thread)
    {
        s_openedFor = this;
        var (id, unavailable) = s_tracepoint.Value;
        if (unavailable != null || Volatile.Read(ref _failure) != null)
        {
            return;
        }

        TracepointCounter? sent = null;
        try
        {
            sent = TracepointCounter.OpenForCurrentThread(id, $"reason == {ReasonRemoteSendIpi}");
            var received = TracepointCounter.OpenForCurrentThread(id, $"reason == {ReasonRemoteShootdown}");
            lock (_lock)
            {
                if (_disposed)
                {
                    sent.Dispose();
                    received.Dispose();
                    return;
                }

                // Keep two descriptors per live thread only: fold the final counts of threads that
                // have exited (a machine may run thousands of short ones) and close theirs.
                for (int i = _threads.Count - 1; i >= 0; i--)
                {
                    var (done, s, r) = _threads[i];
                    if (done.HasExited)
                    {
                        _exitedSent += s.Read();
                        _exitedReceived += r.Read();
                        s.Dispose();
                        r.Dispose();
                        _threads.RemoveAt(i);
                    }
                }

                _threads.Add((thread, sent, received));
            }
        }
        catch (HostMemoryException ex)
        {
            // Counting is an observation: without permission the machine still runs, uncounted.
            sent?.Dispose();
            Volatile.Write(ref _failure, $"perf_event_open of tlb:tlb_flush for a kernel thread failed: {ex.Message}");
        }
    }
}
