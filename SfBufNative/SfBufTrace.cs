using System.Diagnostics;
using System.Runtime.CompilerServices;
using Native.PageTable;

namespace Native.SfBufNative;

/// <summary>
/// The sf_buf events of the <c>SfBufNative</c> EventSource, raised where each strategy counts its
/// hits, misses, recycles and waits (the same places that feed <see cref="SfBufStats"/>, so a
/// trace and the statistics agree). Each method is inlined into its call site as one test of a
/// static flag: with no session listening that is the whole cost, one predictable branch, no
/// call and no allocation (<c>perf bench --filter '*TraceGuardBenchmarks*'</c> measures it).
/// </summary>
internal static class SfBufTrace
{
    /// <summary>
    /// An allocation returned a mapping of <paramref name="frame"/>: one it found
    /// (<paramref name="hit"/>, <c>sfbuf.hits</c>) or one it made (<c>sfbuf.misses</c>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Alloc(SfBufMapper mapper, uint frame, ulong kva, bool hit)
    {
        if (MachineEventSource.On.Alloc)
        {
            MachineEventSource.Log.SfBufAlloc(mapper.Name, mapper.Id, CurrentCpu(), frame, kva, hit);
        }
    }

    /// <summary>A new mapping of <paramref name="frame"/> was installed at <paramref name="kva"/> (<c>sfbuf.misses</c>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Miss(SfBufMapper mapper, uint frame, ulong kva)
    {
        if (MachineEventSource.On.Miss)
        {
            MachineEventSource.Log.SfBufMiss(mapper.Name, mapper.Id, CurrentCpu(), frame, kva);
        }
    }

    /// <summary>The mapping at <paramref name="kva"/> left <paramref name="oldFrame"/> for <paramref name="newFrame"/> (-1: not yet chosen) (<c>sfbuf.recycles</c>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Recycle(SfBufMapper mapper, ulong kva, uint oldFrame, long newFrame)
    {
        if (MachineEventSource.On.Recycle)
        {
            MachineEventSource.Log.SfBufRecycle(mapper.Name, mapper.Id, CurrentCpu(), kva, oldFrame, newFrame);
        }
    }

    /// <summary>
    /// A caller is about to sleep for a free mapping (<c>sf_allocwait</c>). Returns the time to
    /// pass to <see cref="WaitEnd"/>; 0 when no session listens.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long WaitBegin(SfBufMapper mapper, uint frame)
    {
        return MachineEventSource.On.Wait ? TraceWaitBegin(mapper, frame) : 0;
    }

    /// <summary>The sleep that <see cref="WaitBegin"/> announced has ended (woken, or interrupted).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void WaitEnd(SfBufMapper mapper, uint frame, long waitStart, bool interrupted)
    {
        if (waitStart != 0)
        {
            TraceWaitEnd(mapper, frame, waitStart, interrupted);
        }
    }

    /// <summary>The calling kernel thread's CPU, or -1 (read only with a session listening: a thread-local lookup).</summary>
    private static int CurrentCpu() => KernelThread.CurrentOrNull?.Cpu?.Id ?? -1;

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static long TraceWaitBegin(SfBufMapper mapper, uint frame)
    {
        var td = KernelThread.Current;
        MachineEventSource.Log.SfBufWait(mapper.Name, mapper.Id, td.Id, td.Cpu?.Id ?? -1, frame);
        return Stopwatch.GetTimestamp();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void TraceWaitEnd(SfBufMapper mapper, uint frame, long waitStart, bool interrupted)
    {
        long waited = (long)Stopwatch.GetElapsedTime(waitStart).TotalNanoseconds;
        var td = KernelThread.CurrentOrNull;
        MachineEventSource.Log.SfBufWakeup(mapper.Name, mapper.Id, td?.Id ?? -1, td?.Cpu?.Id ?? -1, frame, waited, interrupted);
    }
}
