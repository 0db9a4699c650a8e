namespace Native.PageTable;

/// <summary>
/// A wait that can never end, reported instead of hanging: every live kernel thread of the
/// machine (two or more) was waiting for another one to wake it, while a thread outside the
/// machine was joining one of them (see <see cref="MachineOptions.DetectDeadlocks"/> for the exact
/// rule). Thrown
/// by <see cref="Machine.Sleep"/> in one of the waiting threads, with the sleep's interlock held
/// as after any return, so that the caller's usual clean-up (unlock, free what it holds) runs;
/// the others keep waiting, and are reported in turn if that clean-up does not free them.
/// </summary>
public sealed class DeadlockException : Exception
{
    /// <summary>Creates the report; <paramref name="waits"/> names each waiting thread and what it waits for.</summary>
    public DeadlockException(string message, IReadOnlyList<string> waits)
        : base(message)
    {
        Waits = waits;
    }

    /// <summary>Every waiting kernel thread and what it waits for (its channel, its interlock, its kind of wait), one line each.</summary>
    public IReadOnlyList<string> Waits { get; }
}
