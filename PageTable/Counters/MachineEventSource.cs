using System.Diagnostics.Tracing;

namespace Native.PageTable;

/// <summary>
/// Trace events for rare, interesting moments (shootdown begin/end, sleeps), for dotnet-trace:
/// <c>dotnet-trace collect --providers SfBufNative</c>. Every call is guarded by
/// <see cref="EventSource.IsEnabled()"/>, so with no session it costs one branch.
/// </summary>
[EventSource(Name = "SfBufNative")]
internal sealed class MachineEventSource : EventSource
{
    public static readonly MachineEventSource Log = new();

    private MachineEventSource()
    {
    }

    /// <summary>Keywords to select events.</summary>
    public static class Keywords
    {
        public const EventKeywords Shootdown = (EventKeywords)1;
        public const EventKeywords Sleep = (EventKeywords)2;
        public const EventKeywords Fault = (EventKeywords)4;
    }

    [NonEvent]
    public void ShootdownBegin(int cpu, ulong targets, int kind, ulong va, int pages)
    {
        if (IsEnabled(EventLevel.Verbose, Keywords.Shootdown))
        {
            ShootdownBeginEvent(cpu, (long)targets, kind, (long)va, pages);
        }
    }

    [NonEvent]
    public void ShootdownEnd(int cpu, int targets)
    {
        if (IsEnabled(EventLevel.Verbose, Keywords.Shootdown))
        {
            ShootdownEndEvent(cpu, targets);
        }
    }

    [NonEvent]
    public void Sleep(int thread, int cpu)
    {
        if (IsEnabled(EventLevel.Informational, Keywords.Sleep))
        {
            SleepEvent(thread, cpu);
        }
    }

    [NonEvent]
    public void ThreadFaulted(int thread, string name, string exception, string message)
    {
        if (IsEnabled(EventLevel.Warning, Keywords.Fault))
        {
            ThreadFaultedEvent(thread, name, exception, message);
        }
    }

    [Event(1, Level = EventLevel.Verbose, Keywords = Keywords.Shootdown, Message = "cpu {0} shootdown to cpumask {1} kind {2} va {3} pages {4}")]
    private void ShootdownBeginEvent(int cpu, long targets, int kind, long va, int pages) => WriteEvent(1, cpu, targets, kind, va, pages);

    [Event(2, Level = EventLevel.Verbose, Keywords = Keywords.Shootdown, Message = "cpu {0} shootdown acknowledged by {1} targets")]
    private void ShootdownEndEvent(int cpu, int targets) => WriteEvent(2, cpu, targets);

    [Event(3, Level = EventLevel.Informational, Keywords = Keywords.Sleep, Message = "thread {0} sleeps on cpu {1}")]
    private void SleepEvent(int thread, int cpu) => WriteEvent(3, thread, cpu);

    [Event(4, Level = EventLevel.Warning, Keywords = Keywords.Fault, Message = "kernel thread {0} ({1}) ended with {2}: {3}")]
    private void ThreadFaultedEvent(int thread, string name, string exception, string message) => WriteEvent(4, thread, name, exception, message);
}
