namespace Native.PageTable;

/// <summary>White-box views and planted bugs for tests (internal; reached through InternalsVisibleTo).</summary>
public sealed partial class Machine
{
    /// <summary>Kernel threads queued for a CPU right now.</summary>
    internal int TestHookWaitingForCpu => Scheduler.WaitingForCpu;

    /// <summary>
    /// Called after each step of a real-time sleeper's spin before it blocks (null: nothing), as
    /// a loaded host core makes that step last: a yield that hands the core to another thread.
    /// </summary>
    internal Action? TestHookSleeperSpinStep { get; set; }

    /// <summary>Switches a planted bug on (tests prove the oracles and the explorer find it).</summary>
    internal void TestHookPlant(PlantedBug bug) => Interlocked.Or(ref _planted, (int)bug);

    /// <summary>CPU <paramref name="cpu"/>'s shootdown request word: the open round (high 32 bits) and acknowledgements due (low 32).</summary>
    internal unsafe (uint Round, uint Due) TestHookAckWord(int cpu)
    {
        long word = Volatile.Read(ref SharedOf(cpu)->AckWord);
        return ((uint)((ulong)word >> 32), (uint)word);
    }
}

/// <summary>Bugs a test can plant, each one a known way to break TLB coherence or liveness.</summary>
[Flags]
internal enum PlantedBug
{
    /// <summary>None.</summary>
    None = 0,

    /// <summary>An IPI handler acknowledges before it invalidates.</summary>
    AckBeforeInvalidate = 1,

    /// <summary>Idle entry checks the mailbox and clears RUNNING in two steps, with a plain store.</summary>
    IdleEntryNotAtomic = 2,

    /// <summary>sfbuf-i386 recycles with the 2005 mask rule (reference A.3.6).</summary>
    Mask2005 = 4,

    /// <summary>sfbuf-i386 free wakes one waiter, and alloc does not probe the hash again after sleeping.</summary>
    WakeOneWithoutReprobe = 8,

    /// <summary>sfbuf-i386 free never wakes the sleepers.</summary>
    MissingWakeup = 16,

    /// <summary>A real-time sleeper spins its full count before it looks at its timeout (as ManualResetEventSlim's spin does).</summary>
    SleepSpinIgnoresTimeout = 32,

    /// <summary>asi-ephmap's <c>ephmap_put</c> clears the PTEs but skips the local invalidation.</summary>
    EphmapPutSkipsInvalidation = 64,

    /// <summary>linux-mermap's wrap skips <c>arch_mermap_flush_tlb</c>: a slot is reused while this CPU may still cache its old translation.</summary>
    MermapWrapFlushSkipped = 128,

    /// <summary>A broadcast shootdown never reaches its highest-numbered target, whose completion is still counted.</summary>
    BroadcastSkipsOneTarget = 256,

    /// <summary>linux-xpfo-deferred's context switch clears its <c>pending_xpfo_flush</c> bit without the full flush it owes.</summary>
    XpfoSwitchFlushSkipped = 512,

    /// <summary>linux-xpfo-batched's flush of a refill batch leaves out the highest-numbered other CPU from the pending mask.</summary>
    XpfoBatchSkipsOneCpu = 1024,

    /// <summary>epoch-cache's alarm skips the early flush: a retired translation outlives the exposure bound in a CPU that reaches no flush point.</summary>
    EpochBoundSkipsEarlyFlush = 2048,
}
