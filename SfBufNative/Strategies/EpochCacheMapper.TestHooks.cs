namespace Native.SfBufNative;

/// <summary>White-box views and planted bugs for tests (internal; reached through InternalsVisibleTo).</summary>
public sealed unsafe partial class EpochCacheMapper
{
    /// <summary>Planted bugs and interleaving points; null in production.</summary>
    internal EpochCacheTestHooks? TestHooks { get; set; }

    /// <summary>One slot's state: reference count (-1 clean, -2 retired), frame, retire epoch.</summary>
    internal (long Ref, uint Frame, long RetireEpoch, int Generation) TestHookSlot(int i)
    {
        var s = _slots[i];
        return (s.Ref, s.Frame, s.RetireEpoch, s.Generation);
    }

    /// <summary>The epoch CPU <paramref name="cpu"/> last published.</summary>
    internal long TestHookObservedEpoch(int cpu) => Volatile.Read(ref _perCpu[cpu].ObservedEpoch);

    /// <summary>The slot the index names for a frame, or -1.</summary>
    internal int TestHookIndexed(uint frame) => IndexedSlot(frame);

    /// <summary>Clean slots ready to install, and retired ones waiting for their epoch.</summary>
    internal (int Clean, int Retired) TestHookPool() => (_cleanCount, _retiredCount);

    /// <summary>Flush points that found work to do, per CPU.</summary>
    internal long TestHookFlushPoints(int cpu) => Volatile.Read(ref _perCpu[cpu].FlushPoints);
}

/// <summary>Switches for planted bugs and scheduling points of <see cref="EpochCacheMapper"/>.</summary>
internal sealed class EpochCacheTestHooks
{
    /// <summary>Planted bug: a retired slot counts as clean one epoch before every CPU has passed it.</summary>
    public bool RecycleOneEpochEarly { get; set; }

    /// <summary>Runs between reading the index and taking the reference (an interleaving point).</summary>
    public Action? BeforeHitIncrement { get; set; }
}
