using System.Runtime.CompilerServices;

namespace Native.PageTable;

/// <summary>
/// Checked mode: the exposure windows of this CPU (<see cref="Counter.Exposures"/>). A window is
/// opened by the thread whose mapping operation removed or replaced a kernel translation that this
/// CPU's TLB still caches when the operation returns (<see cref="KernelPmap.LeaveOperation"/>),
/// and closed by this CPU itself when it drops the entry (<c>invlpg</c>, a full or non-global
/// flush, an eviction), or at the trial's end (<see cref="Machine.CloseExposures"/>).
/// <para>
/// The opener only reads this CPU's TLB, never writes it. Real time: the opener announces itself
/// (<c>_openWindows</c>, an interlocked add) before it reads the TLB, and the owner fences after
/// each drop before it reads that count: one of the two always sees the other, so a window is
/// never left open on an entry already dropped. Both then meet under <c>_exposureLock</c>.
/// </para>
/// </summary>
public sealed unsafe partial class Cpu
{
    private readonly Lock? _exposureLock;
    private readonly Dictionary<ulong, ExposureWindow>? _windows;
    private int _openWindows;

    /// <summary>True when a shootdown found this CPU idle and it owes a full flush before it next runs a thread.</summary>
    internal bool IsFlushPending => (Volatile.Read(ref _shared->State) & FlushPending) != 0;

    /// <summary>True when this CPU tracks exposure windows (checked mode on the simulated MMU).</summary>
    internal bool TracksExposure => _windows != null;

    /// <summary>
    /// Opens a window if this CPU's TLB still caches <paramref name="vpn"/> to <paramref name="frame"/>
    /// and it can still use it (a CPU marked flush-pending while idle flushes before it runs anything).
    /// Called by the thread whose operation removed the translation, on any CPU.
    /// </summary>
    internal bool TryOpenExposure(ulong vpn, uint frame, long startNs)
    {
        if ((Volatile.Read(ref _shared->State) & FlushPending) != 0)
        {
            return false;
        }

        lock (_exposureLock!)
        {
            Interlocked.Increment(ref _openWindows);
            if (!_windows!.ContainsKey(vpn) && _tlb.Holds(vpn, frame, out bool global))
            {
                _windows[vpn] = new ExposureWindow(startNs, global);
                return true;
            }

            Interlocked.Decrement(ref _openWindows);
            return false;
        }
    }

    /// <summary>This CPU dropped its entry for <paramref name="vpn"/>: closes its window, if any.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void ExposureDropped(ulong vpn)
    {
        if (_windows != null)
        {
            Interlocked.MemoryBarrier();
            if (Volatile.Read(ref _openWindows) != 0)
            {
                CloseExposures(vpn, all: false, globalToo: false, ClockNs);
            }
        }
    }

    /// <summary>This CPU flushed its TLB (<paramref name="global"/>: global entries too): closes the windows of what it dropped.</summary>
    private void ExposureFlushed(bool global)
    {
        if (_windows != null)
        {
            Interlocked.MemoryBarrier();
            if (Volatile.Read(ref _openWindows) != 0)
            {
                CloseExposures(0, all: true, globalToo: global, ClockNs);
            }
        }
    }

    /// <summary>
    /// A shootdown marked this idle CPU flush-pending at the initiator's <paramref name="atNs"/>:
    /// it flushes everything before it runs a thread again, so, as a window is never opened on a
    /// CPU so marked, the windows it has open end here rather than at its wake-up (called by the
    /// initiator, after its compare-and-swap set the mark; the windows are under the lock).
    /// </summary>
    internal void ExposureDeferred(long atNs)
    {
        if (_windows != null && Volatile.Read(ref _openWindows) != 0)
        {
            CloseExposures(0, all: true, globalToo: true, atNs);
        }
    }

    /// <summary>
    /// Closes every open window at <paramref name="endNs"/> (the trial's end): the entries stay
    /// cached, but the measurement is over. Called with no thread running on the machine.
    /// </summary>
    internal void CloseExposuresAtEnd(long endNs)
    {
        if (_windows != null && Volatile.Read(ref _openWindows) != 0)
        {
            CloseExposures(0, all: true, globalToo: true, endNs);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void CloseExposures(ulong vpn, bool all, bool globalToo, long endNs)
    {
        lock (_exposureLock!)
        {
            if (!all)
            {
                if (_windows!.Remove(vpn, out var window))
                {
                    Closed(window, endNs);
                }

                return;
            }

            foreach (var (key, window) in _windows!)
            {
                if (globalToo || !window.Global)
                {
                    _windows.Remove(key);
                    Closed(window, endNs);
                }
            }
        }
    }

    private void Closed(ExposureWindow window, long endNs)
    {
        Interlocked.Decrement(ref _openWindows);
        if (_virtual)
        {
            long ns = Math.Max(0, endNs - window.StartNs);
            Count(Counter.ExposedNanoseconds, ns);
            _machine.RecordExposure(ns);
        }
    }

    /// <summary>An open window: when the operation that removed the translation returned, and whether the cached entry is global.</summary>
    private readonly record struct ExposureWindow(long StartNs, bool Global);
}
