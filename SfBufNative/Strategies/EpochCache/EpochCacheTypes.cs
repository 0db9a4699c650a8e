using System.Runtime.InteropServices;

namespace Native.SfBufNative;

/// <summary>A thread's place among the waiters for a slot.</summary>
internal struct WaitState
{
    public long Ticket;
    public bool Registered;

    public static WaitState None => new() { Ticket = -1 };
}

/// <summary>One epoch-cache slot on its own cache line; its KVA is implied by its index.</summary>
[StructLayout(LayoutKind.Explicit, Size = 64)]
internal struct EpochSlot
{
    /// <summary>≥ 0: references (0 = inactive, mapping kept); -1 clean; -2 retired.</summary>
    [FieldOffset(0)]
    public long Ref;

    [FieldOffset(8)]
    public uint Frame;

    /// <summary>Bumped at every install: handles from an earlier mapping are stale.</summary>
    [FieldOffset(12)]
    public int Generation;

    [FieldOffset(16)]
    public long RetireEpoch;

    /// <summary>The clock's second-chance bit, set when the slot goes inactive.</summary>
    [FieldOffset(24)]
    public int Referenced;

    /// <summary>The partition (a CPU's) whose stack, queue and clock the slot belongs to; fixed.</summary>
    [FieldOffset(28)]
    public int Home;
}

/// <summary>
/// One CPU's partition of the slots: its clean stack (moved under the pool lock), its retired
/// queue (a ring appended by the holder of the partition's retire right and consumed by the
/// pool lock's holder) and its clock hand (moved by the retire right's holder), stored in the
/// shared arrays at <c>Start</c>. A CPU takes clean slots from its own partition first and
/// retires ahead from it only, so that a CPU streaming private misses mostly installs, frees,
/// retires and reclaims slots whose cache lines (slot, PTE) only it writes (other partitions are
/// touched only when its own runs short), and retires without keeping the other CPUs from the
/// pool lock.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 128)]
internal struct PoolPartition
{
    [FieldOffset(0)]
    public int Start;

    [FieldOffset(4)]
    public int Size;

    [FieldOffset(8)]
    public int Clean;

    [FieldOffset(12)]
    public int Hand;

    [FieldOffset(16)]
    public int RetireBusy;

    [FieldOffset(24)]
    public long RetiredHead;

    [FieldOffset(32)]
    public long RetiredTail;

    /// <summary>The global epoch at the owner's last magazine refill: long ago means the owner takes no slots, and other CPUs recycle the partition.</summary>
    [FieldOffset(40)]
    public long LastRefillEpoch;
}

/// <summary>A CPU's epoch and statistics, on lines of their own.</summary>
[StructLayout(LayoutKind.Explicit, Size = 128)]
internal struct EpochPerCpu
{
    [FieldOffset(0)]
    public long ObservedEpoch;

    [FieldOffset(8)]
    public long Hits;

    [FieldOffset(16)]
    public long Misses;

    /// <summary>0 → 1 transitions minus 1 → 0 transitions made on this CPU.</summary>
    [FieldOffset(24)]
    public long Used;

    [FieldOffset(32)]
    public long FlushPoints;

    /// <summary>Misses that took the pool lock (no clean slot in the magazine, or waiters queued).</summary>
    [FieldOffset(40)]
    public long LockedMisses;

    /// <summary>The partition this CPU retired ahead from last (its own or a dormant CPU's).</summary>
    [FieldOffset(48)]
    public int RetireCursor;
}

/// <summary>The read-mostly words every operation reads: the global epoch and the waiter count.</summary>
[StructLayout(LayoutKind.Explicit, Size = 128)]
internal struct EpochShared
{
    [FieldOffset(0)]
    public long GlobalEpoch;

    [FieldOffset(8)]
    public int Waiters;
}

/// <summary>The description of a retired batch, for page-by-page invalidation at flush points.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct EpochBatch
{
    /// <summary>The batch's epoch; 0 while the descriptor is being rewritten.</summary>
    public long Epoch;

    public int Count;
}
