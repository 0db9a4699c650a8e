using Native.PageTable;

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

    /// <summary>
    /// Checks the structural invariants with no operation in flight (the pool lock is not taken):
    /// I1 clean slots have an invalid PTE; I3 an indexed slot that is not retired maps its frame
    /// with a valid PTE, and no two slots are indexed under one frame; every slot is in exactly
    /// one of clean, retired, or mapped; the per-CPU use counts add up to the slots referenced;
    /// I2 observed epochs never exceed the global epoch. Returns the violations (empty when sound).
    /// </summary>
    internal List<string> TestHookCheckInvariants()
    {
        var problems = new List<string>();
        var clean = new HashSet<int>();
        for (int i = 0; i < _cleanCount; i++)
        {
            if (!clean.Add(_cleanStack[i]))
            {
                problems.Add($"slot {_cleanStack[i]} is twice on the clean stack");
            }
        }

        var retired = new HashSet<int>();
        for (int i = 0; i < _retiredCount; i++)
        {
            retired.Add(_retiredQueue[(_retiredHead + i) % Nsfbufs]);
        }

        long referenced = 0;
        for (int slot = 0; slot < Nsfbufs; slot++)
        {
            var s = _slots[slot];
            ulong pte = Machine.KernelPmap.ReadPte(_window.PageAddress(slot));
            bool isClean = clean.Contains(slot), isRetired = retired.Contains(slot);
            if (isClean != (s.Ref == CleanState) || isRetired != (s.Ref == RetiredState))
            {
                problems.Add($"slot {slot}: reference count {s.Ref} but clean={isClean} retired={isRetired}");
            }

            if (s.Ref < 0 && Pte.IsValid(pte))
            {
                problems.Add($"slot {slot} is {(isClean ? "clean" : "retired")} with a valid PTE 0x{pte:x} (I1)");
            }

            if (s.Ref >= 0 && (!Pte.IsValid(pte) || Pte.Frame(pte) != s.Frame))
            {
                problems.Add($"slot {slot} holds frame 0x{s.Frame:x} but its PTE is 0x{pte:x} (I3)");
            }

            if (s.Ref >= 0 && IndexedSlot(s.Frame) != slot)
            {
                problems.Add($"mapped slot {slot} (frame 0x{s.Frame:x}) is not the one indexed under its frame");
            }

            referenced += s.Ref > 0 ? 1 : 0;
        }

        for (uint frame = 0; frame < Machine.Physical.FrameCount; frame++)
        {
            int slot = IndexedSlot(frame);
            if (slot >= 0 && _slots[slot].Ref >= 0 && _slots[slot].Frame != frame)
            {
                problems.Add($"frame 0x{frame:x} is indexed to slot {slot}, which maps frame 0x{_slots[slot].Frame:x} (I3)");
            }
        }

        if (referenced != CurrentUsed())
        {
            problems.Add($"{referenced} slots are referenced but the per-CPU use counts add up to {CurrentUsed()}");
        }

        long global = GlobalEpoch;
        for (int cpu = 0; cpu < _cpuCount; cpu++)
        {
            if (TestHookObservedEpoch(cpu) > global)
            {
                problems.Add($"CPU {cpu} observed epoch {TestHookObservedEpoch(cpu)} beyond the global {global} (I2)");
            }
        }

        return problems;
    }

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
