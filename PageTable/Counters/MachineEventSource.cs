using System.Diagnostics.Tracing;

namespace Native.PageTable;

/// <summary>
/// Trace events of the machine and of the sf_buf strategies, for dotnet-trace:
/// <c>dotnet-trace collect --providers SfBufNative:&lt;keywords&gt;:&lt;level&gt;</c>
/// (docs/profiling.md lists the events and their fields).
/// <para>
/// Off by default. A call site on a hot path tests one static flag of <see cref="On"/> first
/// (one predictable branch, no allocation, no call when no session listens); the flag is
/// refreshed at every enable or disable command, and the method it guards tests
/// <see cref="EventSource.IsEnabled(EventLevel, EventKeywords)"/> again, so a flag that a disable
/// leaves set costs a second test, never a wrong event. Payloads are written with
/// <see cref="EventSource.WriteEventCore"/>: no boxing, no array, when enabled either.
/// </para>
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
        /// <summary>Shootdown rounds: begin and end (events 1, 2).</summary>
        public const EventKeywords Shootdown = (EventKeywords)0x1;

        /// <summary>Every sleep of a kernel thread (event 3).</summary>
        public const EventKeywords Sleep = (EventKeywords)0x2;

        /// <summary>A kernel thread ended with an exception (event 4).</summary>
        public const EventKeywords Fault = (EventKeywords)0x4;

        /// <summary>Every sf_buf allocation that made or reused a mapping, hit or miss (event 5).</summary>
        public const EventKeywords Alloc = (EventKeywords)0x8;

        /// <summary>A new mapping installed (event 6).</summary>
        public const EventKeywords Miss = (EventKeywords)0x10;

        /// <summary>A cached mapping taken from its page for another one (event 7).</summary>
        public const EventKeywords Recycle = (EventKeywords)0x20;

        /// <summary>A caller sleeps for a free mapping, and wakes (events 8, 9).</summary>
        public const EventKeywords Wait = (EventKeywords)0x40;

        /// <summary>epoch-cache forces an epoch with a full-flush shootdown (event 10).</summary>
        public const EventKeywords EpochFallback = (EventKeywords)0x80;

        /// <summary>A contended acquire of a kernel mutex (event 11).</summary>
        public const EventKeywords Lock = (EventKeywords)0x100;
    }

    /// <summary>
    /// One flag per keyword of the hot paths, true while some session may want its events: what
    /// call sites test before anything else. A class of plain static fields with no initializer,
    /// so that a test compiles to one load and one branch.
    /// </summary>
    internal static class On
    {
        public static bool Alloc;
        public static bool Miss;
        public static bool Recycle;
        public static bool Wait;
        public static bool EpochFallback;
        public static bool Lock;
    }

    /// <summary>Refreshes <see cref="On"/>.</summary>
    protected override void OnEventCommand(EventCommandEventArgs command)
    {
        On.Alloc = IsEnabled(EventLevel.Verbose, Keywords.Alloc);
        On.Miss = IsEnabled(EventLevel.Verbose, Keywords.Miss);
        On.Recycle = IsEnabled(EventLevel.Verbose, Keywords.Recycle);
        On.Wait = IsEnabled(EventLevel.Informational, Keywords.Wait);
        On.EpochFallback = IsEnabled(EventLevel.Informational, Keywords.EpochFallback);
        On.Lock = IsEnabled(EventLevel.Verbose, Keywords.Lock);
    }

    /// <summary><paramref name="targets"/> is the first word of the targets' CPU set (CPUs 0 to 63); <see cref="ShootdownEnd"/> counts them all.</summary>
    [Event(1, Level = EventLevel.Verbose, Keywords = Keywords.Shootdown, Message = "cpu {0} shootdown to cpumask {1} kind {2} va {3} pages {4}")]
    public unsafe void ShootdownBegin(int cpu, long targets, int kind, long va, int pages)
    {
        if (IsEnabled(EventLevel.Verbose, Keywords.Shootdown))
        {
            EventData* data = stackalloc EventData[5];
            Set(data, 0, &cpu);
            Set(data, 1, &targets);
            Set(data, 2, &kind);
            Set(data, 3, &va);
            Set(data, 4, &pages);
            WriteEventCore(1, 5, data);
        }
    }

    [Event(2, Version = 1, Level = EventLevel.Verbose, Keywords = Keywords.Shootdown, Message = "cpu {0} shootdown acknowledged by {1} targets after {2} ns")]
    public unsafe void ShootdownEnd(int cpu, int targets, long ackWaitNanoseconds)
    {
        if (IsEnabled(EventLevel.Verbose, Keywords.Shootdown))
        {
            EventData* data = stackalloc EventData[3];
            Set(data, 0, &cpu);
            Set(data, 1, &targets);
            Set(data, 2, &ackWaitNanoseconds);
            WriteEventCore(2, 3, data);
        }
    }

    [Event(3, Level = EventLevel.Informational, Keywords = Keywords.Sleep, Message = "thread {0} sleeps on cpu {1}")]
    public void Sleep(int thread, int cpu)
    {
        if (IsEnabled(EventLevel.Informational, Keywords.Sleep))
        {
            WriteEvent(3, thread, cpu);
        }
    }

    [Event(4, Level = EventLevel.Warning, Keywords = Keywords.Fault, Message = "kernel thread {0} ({1}) ended with {2}: {3}")]
    public void ThreadFaulted(int thread, string name, string exception, string message)
    {
        if (IsEnabled(EventLevel.Warning, Keywords.Fault))
        {
            WriteEvent(4, thread, name, exception, message);
        }
    }

    [Event(5, Level = EventLevel.Verbose, Keywords = Keywords.Alloc, Message = "{0} mapper {1} cpu {2}: sf_buf_alloc of frame {3} at kva {4}, hit {5}")]
    public unsafe void SfBufAlloc(string strategy, int mapper, int cpu, uint frame, ulong kva, bool hit)
    {
        if (IsEnabled(EventLevel.Verbose, Keywords.Alloc))
        {
            int hitWord = hit ? 1 : 0;
            fixed (char* s = strategy)
            {
                EventData* data = stackalloc EventData[6];
                SetString(data, 0, s, strategy);
                Set(data, 1, &mapper);
                Set(data, 2, &cpu);
                Set(data, 3, &frame);
                Set(data, 4, &kva);
                Set(data, 5, &hitWord);
                WriteEventCore(5, 6, data);
            }
        }
    }

    [Event(6, Level = EventLevel.Verbose, Keywords = Keywords.Miss, Message = "{0} mapper {1} cpu {2}: frame {3} newly mapped at kva {4}")]
    public unsafe void SfBufMiss(string strategy, int mapper, int cpu, uint frame, ulong kva)
    {
        if (IsEnabled(EventLevel.Verbose, Keywords.Miss))
        {
            fixed (char* s = strategy)
            {
                EventData* data = stackalloc EventData[5];
                SetString(data, 0, s, strategy);
                Set(data, 1, &mapper);
                Set(data, 2, &cpu);
                Set(data, 3, &frame);
                Set(data, 4, &kva);
                WriteEventCore(6, 5, data);
            }
        }
    }

    [Event(7, Level = EventLevel.Verbose, Keywords = Keywords.Recycle, Message = "{0} mapper {1} cpu {2}: kva {3} taken from frame {4} for frame {5}")]
    public unsafe void SfBufRecycle(string strategy, int mapper, int cpu, ulong kva, uint oldFrame, long newFrame)
    {
        if (IsEnabled(EventLevel.Verbose, Keywords.Recycle))
        {
            fixed (char* s = strategy)
            {
                EventData* data = stackalloc EventData[6];
                SetString(data, 0, s, strategy);
                Set(data, 1, &mapper);
                Set(data, 2, &cpu);
                Set(data, 3, &kva);
                Set(data, 4, &oldFrame);
                Set(data, 5, &newFrame);
                WriteEventCore(7, 6, data);
            }
        }
    }

    [Event(8, Level = EventLevel.Informational, Keywords = Keywords.Wait, Message = "{0} mapper {1}: thread {2} on cpu {3} sleeps for a mapping of frame {4}")]
    public unsafe void SfBufWait(string strategy, int mapper, int thread, int cpu, uint frame)
    {
        if (IsEnabled(EventLevel.Informational, Keywords.Wait))
        {
            fixed (char* s = strategy)
            {
                EventData* data = stackalloc EventData[5];
                SetString(data, 0, s, strategy);
                Set(data, 1, &mapper);
                Set(data, 2, &thread);
                Set(data, 3, &cpu);
                Set(data, 4, &frame);
                WriteEventCore(8, 5, data);
            }
        }
    }

    [Event(9, Level = EventLevel.Informational, Keywords = Keywords.Wait, Message = "{0} mapper {1}: thread {2} on cpu {3} woke after {5} ns waiting for frame {4} (interrupted {6})")]
    public unsafe void SfBufWakeup(string strategy, int mapper, int thread, int cpu, uint frame, long waitNanoseconds, bool interrupted)
    {
        if (IsEnabled(EventLevel.Informational, Keywords.Wait))
        {
            int interruptedWord = interrupted ? 1 : 0;
            fixed (char* s = strategy)
            {
                EventData* data = stackalloc EventData[7];
                SetString(data, 0, s, strategy);
                Set(data, 1, &mapper);
                Set(data, 2, &thread);
                Set(data, 3, &cpu);
                Set(data, 4, &frame);
                Set(data, 5, &waitNanoseconds);
                Set(data, 6, &interruptedWord);
                WriteEventCore(9, 7, data);
            }
        }
    }

    /// <summary>
    /// <paramref name="laggards"/> is the first word of the laggards' CPU set (CPUs 0 to 63);
    /// <paramref name="laggardCount"/> counts them all.
    /// </summary>
    [Event(10, Version = 1, Level = EventLevel.Informational, Keywords = Keywords.EpochFallback, Message = "epoch-cache mapper {0} cpu {1}: full-flush shootdown to laggards {2} ({6} CPUs) for epoch {3} (global {4}), {5} ns")]
    public unsafe void EpochFallback(int mapper, int cpu, ulong laggards, long needEpoch, long globalEpoch, long durationNanoseconds, int laggardCount)
    {
        if (IsEnabled(EventLevel.Informational, Keywords.EpochFallback))
        {
            EventData* data = stackalloc EventData[7];
            Set(data, 0, &mapper);
            Set(data, 1, &cpu);
            Set(data, 2, &laggards);
            Set(data, 3, &needEpoch);
            Set(data, 4, &globalEpoch);
            Set(data, 5, &durationNanoseconds);
            Set(data, 6, &laggardCount);
            WriteEventCore(10, 7, data);
        }
    }

    [Event(11, Level = EventLevel.Verbose, Keywords = Keywords.Lock, Message = "mutex {0}: thread {1} on cpu {2} waited {3} ns (spin mutex {4})")]
    public unsafe void LockContended(string lockName, int thread, int cpu, long waitNanoseconds, bool spin)
    {
        if (IsEnabled(EventLevel.Verbose, Keywords.Lock))
        {
            int spinWord = spin ? 1 : 0;
            fixed (char* s = lockName)
            {
                EventData* data = stackalloc EventData[5];
                SetString(data, 0, s, lockName);
                Set(data, 1, &thread);
                Set(data, 2, &cpu);
                Set(data, 3, &waitNanoseconds);
                Set(data, 4, &spinWord);
                WriteEventCore(11, 5, data);
            }
        }
    }

    private static unsafe void Set<T>(EventData* data, int i, T* value)
        where T : unmanaged
    {
        data[i].DataPointer = (IntPtr)value;
        data[i].Size = sizeof(T);
    }

    private static unsafe void SetString(EventData* data, int i, char* chars, string value)
    {
        data[i].DataPointer = (IntPtr)chars;
        data[i].Size = (value.Length + 1) * sizeof(char);
    }
}
