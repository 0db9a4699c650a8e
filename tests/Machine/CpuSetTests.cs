using Native.PageTable;
using NUnit.Framework;

namespace Native.Tests.Machine;

/// <summary>The 256-CPU cpumask: membership in every word, the set operations, enumeration and the atomic members.</summary>
[TestFixture]
public sealed class CpuSetTests
{
    private static readonly int[] s_edges = [0, 1, 62, 63, 64, 65, 127, 128, 191, 192, 254, 255];

    [Test]
    public void EachCpuIsOneBitOfItsOwnWord()
    {
        foreach (int cpu in s_edges)
        {
            var set = CpuSet.Single(cpu);
            Assert.Multiple(() =>
            {
                Assert.That(set.Contains(cpu), Is.True, $"cpu {cpu}");
                Assert.That(set.Count, Is.EqualTo(1), $"cpu {cpu}");
                Assert.That(set.IsEmpty, Is.False, $"cpu {cpu}");
                Assert.That(set.Word(cpu / 64), Is.EqualTo(1UL << (cpu % 64)), $"cpu {cpu}");
                Assert.That(Enumerable.Range(0, CpuSet.WordCount).Where(w => set.Word(w) != 0), Is.EqualTo(new[] { cpu / 64 }), $"cpu {cpu}");
                Assert.That(s_edges.Where(other => other != cpu).Any(set.Contains), Is.False, $"cpu {cpu}");
            });
        }
    }

    [Test]
    public void AddAndRemoveChangeOnlyTheirCpu()
    {
        var set = CpuSet.Of(3, 64, 200);
        set.Add(255);
        set.Add(127);
        set.Remove(64);
        set.Remove(5); // absent: nothing changes

        Assert.That(set, Is.EqualTo(CpuSet.Of(3, 127, 200, 255)));
        Assert.That(set.Count, Is.EqualTo(4));
        Assert.That(set.Contains(64), Is.False);
    }

    [Test]
    public void AnOutOfRangeCpuIsRefused()
    {
        Assert.That(() => CpuSet.Single(256), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => CpuSet.Single(-1), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => CpuSet.Of(1, 256), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => CpuSet.Empty.Contains(256), Throws.TypeOf<IndexOutOfRangeException>());
        Assert.That(() => CpuSet.AllBelow(257), Throws.TypeOf<ArgumentOutOfRangeException>());
    }

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(2)]
    [TestCase(63)]
    [TestCase(64)]
    [TestCase(65)]
    [TestCase(128)]
    [TestCase(200)]
    [TestCase(256)]
    public void AllBelowHoldsExactlyTheFirstNCpus(int n)
    {
        var all = CpuSet.AllBelow(n);

        Assert.That(all.Count, Is.EqualTo(n));
        Assert.That(all.IsEmpty, Is.EqualTo(n == 0));
        Assert.That(all, Is.EqualTo(CpuSet.Of([.. Enumerable.Range(0, n)])));
        Assert.That(Enumerate(all), Is.EqualTo(Enumerable.Range(0, n)));
    }

    [Test]
    public void UnionIntersectExceptAndContainsAllWorkAcrossWords()
    {
        var a = CpuSet.Of(0, 63, 64, 130, 255);
        var b = CpuSet.Of(1, 64, 130, 200);

        Assert.Multiple(() =>
        {
            Assert.That(a.Union(b), Is.EqualTo(CpuSet.Of(0, 1, 63, 64, 130, 200, 255)));
            Assert.That(a | b, Is.EqualTo(a.Union(b)));
            Assert.That(a.Intersect(b), Is.EqualTo(CpuSet.Of(64, 130)));
            Assert.That(a & b, Is.EqualTo(a.Intersect(b)));
            Assert.That(a.Except(b), Is.EqualTo(CpuSet.Of(0, 63, 255)));
            Assert.That(b.Except(a), Is.EqualTo(CpuSet.Of(1, 200)));
            Assert.That(a.ContainsAll(CpuSet.Of(63, 255)), Is.True);
            Assert.That(a.ContainsAll(CpuSet.Of(63, 254)), Is.False);
            Assert.That(a.ContainsAll(CpuSet.Empty), Is.True);
            Assert.That(CpuSet.Empty.ContainsAll(a), Is.False);
        });
    }

    [Test]
    public void EqualityAndHashingCoverEveryWord()
    {
        Assert.That(CpuSet.Of(255), Is.Not.EqualTo(CpuSet.Of(254)));
        Assert.That(CpuSet.Of(129) == CpuSet.Of(129), Is.True);
        Assert.That(CpuSet.Of(129) != CpuSet.Of(193), Is.True);
        Assert.That(CpuSet.Of(3, 190).GetHashCode(), Is.EqualTo(CpuSet.Of(190, 3).GetHashCode()));
        Assert.That(CpuSet.FromWord(0b1011), Is.EqualTo(CpuSet.Of(0, 1, 3)));
        Assert.That(default(CpuSet), Is.EqualTo(CpuSet.Empty));
    }

    [Test]
    public void MembersEnumerateInAscendingOrderAndNextAfterWalksThem()
    {
        var set = CpuSet.Of(255, 0, 130, 64, 63, 3);
        int[] expected = [0, 3, 63, 64, 130, 255];

        Assert.That(Enumerate(set), Is.EqualTo(expected));
        var walked = new List<int>();
        for (int cpu = set.NextAfter(-1); cpu >= 0; cpu = set.NextAfter(cpu))
        {
            walked.Add(cpu);
        }

        Assert.That(walked, Is.EqualTo(expected));
        Assert.That(set.NextAfter(64), Is.EqualTo(130));
        Assert.That(set.NextAfter(130), Is.EqualTo(255));
        Assert.That(set.NextAfter(255), Is.EqualTo(-1));
        Assert.That(CpuSet.Empty.NextAfter(-1), Is.EqualTo(-1));
        Assert.That(Enumerate(CpuSet.Empty), Is.Empty);
    }

    [Test]
    public void EnumerationIsOverACopy()
    {
        var set = CpuSet.Of(1, 100);
        var seen = new List<int>();
        foreach (int cpu in set)
        {
            seen.Add(cpu);
            set.Add(200); // not seen: the enumerator holds the set as it was
        }

        Assert.That(seen, Is.EqualTo(new[] { 1, 100 }));
    }

    [Test]
    public void ToStringListsTheMembers()
    {
        Assert.That(CpuSet.Of(0, 3, 64).ToString(), Is.EqualTo("{0,3,64}"));
        Assert.That(CpuSet.Of(255).ToString(), Is.EqualTo("{255}"));
        Assert.That(CpuSet.Empty.ToString(), Is.EqualTo("{}"));
    }

    [Test]
    public void AtomicAddAndRemoveTouchOnlyTheCpusWord()
    {
        var shared = CpuSet.Of(0, 64);
        CpuSet.AtomicAdd(ref shared, 255);
        CpuSet.AtomicAdd(ref shared, 127);
        CpuSet.AtomicRemove(ref shared, 64);

        Assert.That(shared, Is.EqualTo(CpuSet.Of(0, 127, 255)));
        Assert.That(CpuSet.VolatileContains(ref shared, 255), Is.True);
        Assert.That(CpuSet.VolatileContains(ref shared, 64), Is.False);
        Assert.That(CpuSet.VolatileIsEmpty(ref shared), Is.False);
        Assert.That(CpuSet.VolatileRead(ref shared), Is.EqualTo(shared));

        CpuSet.AtomicUnion(ref shared, CpuSet.Of(1, 191));
        Assert.That(shared, Is.EqualTo(CpuSet.Of(0, 1, 127, 191, 255)));

        CpuSet.VolatileWrite(ref shared, CpuSet.Empty);
        Assert.That(CpuSet.VolatileIsEmpty(ref shared), Is.True);
    }

    [Test]
    public void ConcurrentAtomicAddsAndRemovesLoseNoCpu()
    {
        // Each thread owns CPUs in every word and toggles them, then leaves its odd ones set:
        // an update lost to a plain read-modify-write would show in the final set.
        var shared = default(CpuSet);
        const int Threads = 4;
        var barrier = new Barrier(Threads);
        var threads = Enumerable.Range(0, Threads).Select(t => new Thread(() =>
        {
            barrier.SignalAndWait();
            for (int round = 0; round < 2000; round++)
            {
                for (int cpu = t; cpu < CpuSet.Capacity; cpu += Threads)
                {
                    CpuSet.AtomicAdd(ref shared, cpu);
                }

                for (int cpu = t; cpu < CpuSet.Capacity; cpu += Threads)
                {
                    if (cpu % 8 < 4)
                    {
                        CpuSet.AtomicRemove(ref shared, cpu);
                    }
                }
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());

        var expected = CpuSet.Of([.. Enumerable.Range(0, CpuSet.Capacity).Where(cpu => cpu % 8 >= 4)]);
        Assert.That(CpuSet.VolatileRead(ref shared), Is.EqualTo(expected));
        Assert.That(shared.Count, Is.EqualTo(CpuSet.Capacity / 2));
    }

    private static List<int> Enumerate(CpuSet set)
    {
        var list = new List<int>();
        foreach (int cpu in set)
        {
            list.Add(cpu);
        }

        return list;
    }
}
