using System.Numerics;
using System.Runtime.CompilerServices;
using System.Text;

namespace Native.PageTable;

/// <summary>
/// A set of CPUs (FreeBSD's <c>cpuset_t</c>, a cpumask): one bit per CPU for up to
/// <see cref="Capacity"/> CPUs, in four 64-bit words (CPU <c>c</c> is bit <c>c % 64</c> of
/// word <c>c / 64</c>). A value type: copying copies the set, nothing is allocated. Membership
/// tests read only the CPU's word. The members that take one CPU index its word directly: a CPU
/// outside 0 to <see cref="Capacity"/> − 1 throws <see cref="IndexOutOfRangeException"/> there
/// (<see cref="ArgumentOutOfRangeException"/> from <see cref="Single"/> and <see cref="Of"/>).
/// <para>
/// Instances other CPUs read or write concurrently (in native memory, or a field) go through
/// the static <c>Atomic*</c> and <c>Volatile*</c> members, which are atomic per word: adding or
/// removing one CPU is atomic, but a whole-set read or write is not one snapshot.
/// </para>
/// </summary>
public struct CpuSet : IEquatable<CpuSet>
{
    /// <summary>The most CPUs a set can name (CPUs 0 to <c>Capacity - 1</c>).</summary>
    public const int Capacity = WordCount * 64;

    /// <summary>Words of 64 CPUs each.</summary>
    public const int WordCount = 4;

    private Words _words;

    /// <summary>The empty set.</summary>
    public static CpuSet Empty => default;

    /// <summary>True when no CPU is in the set.</summary>
    public readonly bool IsEmpty
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => (_words[0] | _words[1] | _words[2] | _words[3]) == 0;
    }

    /// <summary>How many CPUs are in the set.</summary>
    public readonly int Count =>
        BitOperations.PopCount(_words[0]) + BitOperations.PopCount(_words[1])
        + BitOperations.PopCount(_words[2]) + BitOperations.PopCount(_words[3]);

    /// <summary>The set holding only <paramref name="cpu"/>.</summary>
    public static CpuSet Single(int cpu)
    {
        CheckCpu(cpu);
        var set = default(CpuSet);
        set._words[cpu >> 6] = 1UL << cpu;
        return set;
    }

    /// <summary>CPUs 0 to <paramref name="count"/> − 1 (<c>all_cpus</c> of a machine with <paramref name="count"/> CPUs).</summary>
    public static CpuSet AllBelow(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(count, Capacity);
        var set = default(CpuSet);
        for (int w = 0; w < WordCount; w++)
        {
            int inWord = Math.Clamp(count - (w * 64), 0, 64);
            set._words[w] = inWord == 64 ? ulong.MaxValue : (1UL << inWord) - 1;
        }

        return set;
    }

    /// <summary>The set of the given CPUs.</summary>
    public static CpuSet Of(params ReadOnlySpan<int> cpus)
    {
        var set = default(CpuSet);
        foreach (int cpu in cpus)
        {
            CheckCpu(cpu);
            set.Add(cpu);
        }

        return set;
    }

    /// <summary>The CPUs 0 to 63 whose bits are set in <paramref name="cpus0To63"/> (a one-word cpumask).</summary>
    public static CpuSet FromWord(ulong cpus0To63)
    {
        var set = default(CpuSet);
        set._words[0] = cpus0To63;
        return set;
    }

    /// <summary>Word <paramref name="index"/> of the set: CPUs <c>64 * index</c> to <c>64 * index + 63</c>, one bit each.</summary>
    public readonly ulong Word(int index) => _words[index];

    /// <summary>True when <paramref name="cpu"/> is in the set; reads only its word.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly bool Contains(int cpu) => (_words[cpu >> 6] & (1UL << cpu)) != 0;

    /// <summary>Adds <paramref name="cpu"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Add(int cpu) => _words[cpu >> 6] |= 1UL << cpu;

    /// <summary>Removes <paramref name="cpu"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Remove(int cpu) => _words[cpu >> 6] &= ~(1UL << cpu);

    /// <summary>The CPUs in this set or in <paramref name="other"/>.</summary>
    public readonly CpuSet Union(in CpuSet other)
    {
        var set = default(CpuSet);
        set._words[0] = _words[0] | other._words[0];
        set._words[1] = _words[1] | other._words[1];
        set._words[2] = _words[2] | other._words[2];
        set._words[3] = _words[3] | other._words[3];
        return set;
    }

    /// <summary>The CPUs in both this set and <paramref name="other"/>.</summary>
    public readonly CpuSet Intersect(in CpuSet other)
    {
        var set = default(CpuSet);
        set._words[0] = _words[0] & other._words[0];
        set._words[1] = _words[1] & other._words[1];
        set._words[2] = _words[2] & other._words[2];
        set._words[3] = _words[3] & other._words[3];
        return set;
    }

    /// <summary>The CPUs in this set but not in <paramref name="other"/>.</summary>
    public readonly CpuSet Except(in CpuSet other)
    {
        var set = default(CpuSet);
        set._words[0] = _words[0] & ~other._words[0];
        set._words[1] = _words[1] & ~other._words[1];
        set._words[2] = _words[2] & ~other._words[2];
        set._words[3] = _words[3] & ~other._words[3];
        return set;
    }

    /// <summary>True when every CPU of <paramref name="other"/> is in this set.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly bool ContainsAll(in CpuSet other) =>
        ((other._words[0] & ~_words[0]) | (other._words[1] & ~_words[1])
        | (other._words[2] & ~_words[2]) | (other._words[3] & ~_words[3])) == 0;

    /// <summary>The smallest CPU in the set greater than <paramref name="cpu"/> (−1 for the first), or −1 when there is none.</summary>
    public readonly int NextAfter(int cpu)
    {
        int next = cpu + 1;
        if (next < 0)
        {
            next = 0;
        }

        for (int w = next >> 6; w < WordCount; w++)
        {
            ulong bits = _words[w];
            if (w == next >> 6)
            {
                bits &= ulong.MaxValue << next; // the shift count is next % 64
            }

            if (bits != 0)
            {
                return (w * 64) + BitOperations.TrailingZeroCount(bits);
            }
        }

        return -1;
    }

    /// <summary>Enumerates the CPUs in ascending order, over a copy of the set, without allocating.</summary>
    public readonly Enumerator GetEnumerator() => new(this);

    /// <inheritdoc/>
    public readonly bool Equals(CpuSet other) =>
        ((_words[0] ^ other._words[0]) | (_words[1] ^ other._words[1])
        | (_words[2] ^ other._words[2]) | (_words[3] ^ other._words[3])) == 0;

    /// <inheritdoc/>
    public override readonly bool Equals(object? obj) => obj is CpuSet other && Equals(other);

    /// <inheritdoc/>
    public override readonly int GetHashCode() => HashCode.Combine(_words[0], _words[1], _words[2], _words[3]);

    /// <summary>The members in ascending order, for example <c>{0,3,64}</c>; <c>{}</c> when empty.</summary>
    public override readonly string ToString()
    {
        var text = new StringBuilder("{");
        foreach (int cpu in this)
        {
            if (text.Length > 1)
            {
                text.Append(',');
            }

            text.Append(cpu);
        }

        return text.Append('}').ToString();
    }

    /// <summary>Set equality.</summary>
    public static bool operator ==(CpuSet left, CpuSet right) => left.Equals(right);

    /// <summary>Set inequality.</summary>
    public static bool operator !=(CpuSet left, CpuSet right) => !left.Equals(right);

    /// <summary>Union (<see cref="Union"/>).</summary>
    public static CpuSet operator |(CpuSet left, CpuSet right) => left.Union(right);

    /// <summary>Intersection (<see cref="Intersect"/>).</summary>
    public static CpuSet operator &(CpuSet left, CpuSet right) => left.Intersect(right);

    /// <summary>Union (<see cref="Union"/>).</summary>
    public static CpuSet BitwiseOr(CpuSet left, CpuSet right) => left.Union(right);

    /// <summary>Intersection (<see cref="Intersect"/>).</summary>
    public static CpuSet BitwiseAnd(CpuSet left, CpuSet right) => left.Intersect(right);

    // ---------------------------------------------------------------- shared instances

    /// <summary>Adds <paramref name="cpu"/> to a shared set with one atomic OR of its word (a full fence).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AtomicAdd(ref CpuSet set, int cpu) => Interlocked.Or(ref set._words[cpu >> 6], 1UL << cpu);

    /// <summary>Removes <paramref name="cpu"/> from a shared set with one atomic AND of its word (a full fence).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AtomicRemove(ref CpuSet set, int cpu) => Interlocked.And(ref set._words[cpu >> 6], ~(1UL << cpu));

    /// <summary>Adds every CPU of <paramref name="other"/> to a shared set: one atomic OR per word that has any.</summary>
    public static void AtomicUnion(ref CpuSet set, in CpuSet other)
    {
        for (int w = 0; w < WordCount; w++)
        {
            if (other._words[w] != 0)
            {
                Interlocked.Or(ref set._words[w], other._words[w]);
            }
        }
    }

    /// <summary>True when <paramref name="cpu"/> is in a shared set: one acquire read of its word.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool VolatileContains(ref CpuSet set, int cpu) => (Volatile.Read(ref set._words[cpu >> 6]) & (1UL << cpu)) != 0;

    /// <summary>True when a shared set is empty: an acquire read of each word.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool VolatileIsEmpty(ref CpuSet set) =>
        (Volatile.Read(ref set._words[0]) | Volatile.Read(ref set._words[1])
        | Volatile.Read(ref set._words[2]) | Volatile.Read(ref set._words[3])) == 0;

    /// <summary>A copy of a shared set, each word read with acquire semantics (per word, not one snapshot).</summary>
    public static CpuSet VolatileRead(ref CpuSet set)
    {
        var copy = default(CpuSet);
        copy._words[0] = Volatile.Read(ref set._words[0]);
        copy._words[1] = Volatile.Read(ref set._words[1]);
        copy._words[2] = Volatile.Read(ref set._words[2]);
        copy._words[3] = Volatile.Read(ref set._words[3]);
        return copy;
    }

    /// <summary>Stores <paramref name="value"/> into a shared set, each word with release semantics (per word, not one snapshot).</summary>
    public static void VolatileWrite(ref CpuSet set, in CpuSet value)
    {
        Volatile.Write(ref set._words[0], value._words[0]);
        Volatile.Write(ref set._words[1], value._words[1]);
        Volatile.Write(ref set._words[2], value._words[2]);
        Volatile.Write(ref set._words[3], value._words[3]);
    }

    /// <summary>A word of a shared set, for protocols that work on the words themselves (the IPI mailbox).</summary>
    internal static ref ulong WordRef(ref CpuSet set, int index) => ref set._words[index];

    private static void CheckCpu(int cpu)
    {
        if ((uint)cpu >= Capacity)
        {
            throw new ArgumentOutOfRangeException(nameof(cpu), cpu, $"a CPU set holds CPUs 0 to {Capacity - 1}");
        }
    }

    [InlineArray(WordCount)]
    private struct Words
    {
        private ulong _word;
    }

    /// <summary>The enumerator of <see cref="GetEnumerator"/>: ascending CPU numbers.</summary>
    public struct Enumerator
    {
        private readonly CpuSet _set;
        private ulong _bits;
        private int _word;

        internal Enumerator(in CpuSet set)
        {
            _set = set;
            _word = -1;
            _bits = 0;
            Current = -1;
        }

        /// <summary>The current CPU.</summary>
        public int Current { get; private set; }

        /// <summary>Advances to the next CPU; false when there is none.</summary>
        public bool MoveNext()
        {
            while (_bits == 0)
            {
                if (++_word >= WordCount)
                {
                    _word = WordCount - 1;
                    return false;
                }

                _bits = _set._words[_word];
            }

            Current = (_word * 64) + BitOperations.TrailingZeroCount(_bits);
            _bits &= _bits - 1;
            return true;
        }
    }
}
