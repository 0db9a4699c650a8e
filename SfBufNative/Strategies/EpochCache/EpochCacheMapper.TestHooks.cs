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

    /// <summary>Rewrites the descriptor of ring entry <c>epoch % 8</c> as a retire of <paramref name="epoch"/> would, with <paramref name="count"/> slots.</summary>
    internal void TestHookRewriteBatch(long epoch, int count)
    {
        EpochBatch* b = _batches + (epoch % BatchRing);
        Volatile.Write(ref b->Epoch, 0);
        b->Count = count;
        Volatile.Write(ref b->Epoch, epoch);
    }

    /// <summary>Adds <paramref name="delta"/> to CPU <paramref name="cpu"/>'s use count, as a miscounting path would (tests show the drift is reported, not hidden).</summary>
    internal void TestHookDriftUsed(int cpu, int delta) => _perCpu[cpu].Used += delta;

    /// <summary>The addresses of CPU <paramref name="cpu"/>'s per-CPU line, partition header and magazine, and the shared line.</summary>
    internal (nuint PerCpu, nuint Partition, nuint Magazine, nuint Shared) TestHookLayout(int cpu) =>
        ((nuint)(_perCpu + cpu), (nuint)(_parts + cpu), (nuint)Magazine(cpu), (nuint)_shared);

    /// <summary>The epoch CPU <paramref name="cpu"/> last published.</summary>
    internal long TestHookObservedEpoch(int cpu) => Volatile.Read(ref _perCpu[cpu].ObservedEpoch);

    /// <summary>The slot the index names for a frame, or -1.</summary>
    internal int TestHookIndexed(uint frame) => IndexedSlot(frame);

    /// <summary>Clean slots on the partitions' stacks, retired ones waiting for their epoch, and clean ones in the CPUs' magazines.</summary>
    internal (int Clean, int Retired, int InMagazines) TestHookPool()
    {
        int inMagazines = 0;
        for (int c = 0; c < _cpuCount; c++)
        {
            for (int i = 0; i < MagazineSize; i++)
            {
                inMagazines += Volatile.Read(ref Magazine(c)[1 + i]) >= 0 ? 1 : 0;
            }
        }

        return (_cleanCount, RetiredCount(), inMagazines);
    }

    /// <summary>
    /// Checks the structural invariants with no operation in flight (the pool lock is not taken):
    /// I1 clean slots (stack and magazines) have an invalid PTE; I4 each is in one place only, and
    /// a magazine's entries at or above its fill mark are empty; I3 an indexed slot that is not retired maps its frame
    /// with a valid PTE, and no two slots are indexed under one frame; every slot is in exactly
    /// one of clean, retired, or mapped; the per-CPU use counts add up to the slots referenced;
    /// I2 observed epochs never exceed the global epoch; every partition's retire right is free, its
    /// counts within its size, and its queue in epoch order. Returns the violations (empty when sound).
    /// </summary>
    internal List<string> TestHookCheckInvariants()
    {
        var problems = new List<string>();
        var clean = new HashSet<int>();
        var retired = new HashSet<int>();
        int cleanOnStacks = 0;
        for (int c = 0; c < _cpuCount; c++)
        {
            var part = _parts[c];
            for (int i = 0; i < part.Clean; i++)
            {
                int slot = _cleanStack[part.Start + i];
                if (!clean.Add(slot))
                {
                    problems.Add($"slot {slot} is twice on the clean stacks");
                }

                if (_slots[slot].Home != c)
                {
                    problems.Add($"slot {slot} (partition {_slots[slot].Home}) is on partition {c}'s clean stack");
                }
            }

            if (part.RetireBusy != 0 || part.Clean > part.Size || part.RetiredTail - part.RetiredHead > part.Size
                || part.RetiredHead > part.RetiredTail || (part.Size > 0 && part.Hand >= part.Size))
            {
                problems.Add($"partition {c}: retire right {part.RetireBusy}, {part.Clean} clean, queue {part.RetiredHead}..{part.RetiredTail}, hand {part.Hand}, size {part.Size}");
            }

            long previousEpoch = 0;
            for (long i = part.RetiredHead; i < part.RetiredTail; i++)
            {
                int slot = RetiredAt(c, i);
                long epoch = _slots[slot].RetireEpoch;
                if (epoch < previousEpoch || epoch > GlobalEpoch)
                {
                    problems.Add($"partition {c}'s queue holds slot {slot} at epoch {epoch} after {previousEpoch} (global {GlobalEpoch}): not in epoch order");
                }

                previousEpoch = epoch;
                if (!retired.Add(slot) || _slots[slot].Home != c)
                {
                    problems.Add($"slot {slot} is twice in the retired queues or in another partition's");
                }
            }

            cleanOnStacks += part.Clean;
        }

        if (cleanOnStacks != _cleanCount)
        {
            problems.Add($"the partitions' stacks hold {cleanOnStacks} clean slots, the total says {_cleanCount}");
        }

        for (int c = 0; c < _cpuCount; c++)
        {
            int* m = Magazine(c);
            for (int i = 0; i < MagazineSize; i++)
            {
                int slot = m[1 + i];
                if (slot >= 0 && !clean.Add(slot))
                {
                    problems.Add($"slot {slot} is clean in two places (CPU {c}'s magazine, entry {i})");
                }

                if (slot >= 0 && i >= m[0])
                {
                    problems.Add($"CPU {c}'s magazine holds slot {slot} at entry {i}, above its fill mark {m[0]}");
                }
            }
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
            if (Volatile.Read(ref _slotOfFrame[frame]) == InstallingEntry)
            {
                problems.Add($"frame 0x{frame:x}'s index entry is still claimed by an install");
            }

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

    /// <summary>Runs in a flush point between the pass that checks the retired batches' descriptors and the pass that invalidates their slots.</summary>
    public Action? BetweenInvalidatePasses { get; set; }

    /// <summary>Runs when a release that made a slot inactive is about to wake the waiters (it may block there on the pool lock).</summary>
    public Action? BeforeWakeWaiters { get; set; }
}
