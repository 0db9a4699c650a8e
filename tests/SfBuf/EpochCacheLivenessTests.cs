using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;
using SfBufHandle = Native.SfBufNative.SfBuf;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>
/// epoch-cache's waits on unbound threads: a waiter wakes whenever what it waits for becomes
/// true, and a thread that migrates while it waits never works on the CPU it left.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class EpochCacheLivenessTests
{
    private static readonly TimeSpan s_hangAfter = TimeSpan.FromSeconds(20);

    private static EpochCacheMapper Create(SimMachine m, int nsfbufs) =>
        (EpochCacheMapper)SfBufMapper.Create(SfBufMapper.EpochCache, m, nsfbufs);

    /// <summary>
    /// Four unbound threads on two CPUs, each holding two Default mappings at a time from a pool
    /// of 5: at most four slots are ever held by threads that wait, so one is always inactive,
    /// retired or clean, and every wait must end. Before the fix, most repetitions hung with all
    /// four threads asleep and slots free (a CPU that had left idle but not yet passed its
    /// switch-in flush point made the reclaim fail, and nothing woke the waiter afterwards).
    /// </summary>
    [Test]
    public void FourUnboundThreadsHoldingTwoMappingsEachFromAPoolOfFiveAllFinish([Values(100)] int repetitions)
    {
        long waits = 0;
        for (int rep = 0; rep < repetitions; rep++)
        {
            using var m = new SimMachine(SfBufRig.Small());
            using var sfbufs = Create(m, 5);
            var pages = SfBufRig.NewPages(m, 4 * 6);
            var threads = new List<KernelThread>();
            var start = new StartLine(4);
            for (int t = 0; t < 4; t++)
            {
                var mine = pages.AsSpan(t * 6, 6).ToArray(); // pages of its own: every mapping is a miss at first
                threads.Add(m.StartThread($"pairs{t}", () =>
                {
                    start.Wait();
                    for (int i = 0; i < 60; i++)
                    {
                        var a = mine[i % mine.Length];
                        var b = mine[(i + 1) % mine.Length];
                        var first = sfbufs.Alloc(a);
                        KernelThread.Current.Yield(); // holding one: let the other threads run
                        var second = sfbufs.Alloc(b);
                        Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(first)), Is.EqualTo(SfBufRig.Stamp(a)));
                        Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(second)), Is.EqualTo(SfBufRig.Stamp(b)));
                        KernelThread.Current.Yield(); // holding both
                        sfbufs.Free(second);
                        sfbufs.Free(first);
                    }
                }));
            }

            JoinOrDescribe(m, sfbufs, threads, rep);
            waits += sfbufs.Stats().AllocWait;
            AssertQuiescent(m, sfbufs);
        }

        Assert.That(waits, Is.GreaterThanOrEqualTo(repetitions), "threads waited for slots (the scenario reaches exhaustion)");
    }

    /// <summary>
    /// Unbound threads taking pairs with AllocMany from pools of 2 and 4, more threads than CPUs:
    /// all-or-nothing acquisition never holds while it waits, so every repetition must finish.
    /// </summary>
    [Test]
    public void UnboundThreadsTakingPairsWithAllocManyFromSmallPoolsAllFinish([Values(2, 4)] int nsfbufs, [Values(100)] int repetitions)
    {
        long waits = 0;
        for (int rep = 0; rep < repetitions; rep++)
        {
            using var m = new SimMachine(SfBufRig.Small());
            using var sfbufs = Create(m, nsfbufs);
            var pages = SfBufRig.NewPages(m, 8);
            var threads = new List<KernelThread>();
            var start = new StartLine(4);
            for (int t = 0; t < 4; t++)
            {
                int seed = (rep * 4) + t;
                threads.Add(m.StartThread($"many{t}", () =>
                {
                    start.Wait();
                    var random = new Random(seed);
                    var both = new SfBufHandle[2];
                    for (int i = 0; i < 40; i++)
                    {
                        int x = random.Next(pages.Length), y = (x + 1 + random.Next(pages.Length - 1)) % pages.Length;
                        VmPage[] pair = [pages[x], pages[y]];
                        Assert.That(sfbufs.AllocMany(pair, both), Is.True);
                        Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(both[0])), Is.EqualTo(SfBufRig.Stamp(pair[0])));
                        Assert.That(m.CurrentCpu.ReadUInt64(sfbufs.Kva(both[1])), Is.EqualTo(SfBufRig.Stamp(pair[1])));
                        KernelThread.Current.Yield(); // holding both: let the other threads run
                        sfbufs.Free(both[1]);
                        sfbufs.Free(both[0]);
                    }
                }));
            }

            JoinOrDescribe(m, sfbufs, threads, rep);
            waits += sfbufs.Stats().AllocWait;
            AssertQuiescent(m, sfbufs);
        }

        Assert.That(waits, Is.GreaterThanOrEqualTo(repetitions), "threads waited for slots (the scenario reaches exhaustion)");
    }

    /// <summary>
    /// A machine disposed while a thread waits in AllocMany stops the waiter with
    /// <see cref="MachineStoppedException"/>: the pool lock, which the interrupted sleep did not
    /// retake, is not unlocked on the way out (that threw a SynchronizationLockException, which
    /// hid why the thread stopped). A single Alloc's waiter: AllocManyEdgeTests, every pooled strategy.
    /// </summary>
    [Test]
    public void AnAllocManyWaiterStoppedByDisposeEndsWithMachineStoppedNotALockError()
    {
        KernelThread waiter;
        var m = new SimMachine(SfBufRig.Small());
        try
        {
            var sfbufs = Create(m, 2); // one slot short of what the waiter asks for
            var pages = SfBufRig.NewPages(m, 3);
            var channel = new object();
            var holder = m.StartThread("holder", () =>
            {
                var sf = sfbufs.Alloc(pages[0]);
                m.Sleep(channel, timeout: TimeSpan.FromMinutes(5)); // holds the only slot until the machine stops
                sfbufs.Free(sf);
            }, cpu: 0, bound: true);
            SfBufRig.WaitUntil(() => sfbufs.Stats().NsfbufsUsed == 1, "the holder has the slot");
            waiter = m.StartThread("waiter", () => sfbufs.AllocMany([pages[1], pages[2]], new SfBufHandle[2]), cpu: 1, bound: true);
            SfBufRig.WaitUntil(() => m.SleepingThreads == 2, "both threads are asleep");
        }
        finally
        {
            m.Dispose();
        }

        Assert.That(waiter.HasExited, Is.True);
        Assert.That(waiter.Fault, Is.InstanceOf<MachineStoppedException>());
    }

    /// <summary>
    /// A free that wakes waiters may block on the pool lock and resume on another CPU. Here it
    /// is made to (it yields at that point while another thread wants its CPU): the free must
    /// end on the CPU it is on, not pass the old CPU's flush point, which the other thread now
    /// holds (checked mode refuses per-CPU work on a CPU the caller does not hold).
    /// </summary>
    [Test]
    public void AFreeThatMigratesWhileWakingWaitersEndsOnItsNewCpu()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 1);
        var pages = SfBufRig.NewPages(m, 2);
        int freedOn = -1, waiterRead = 0;
        var freeDone = new ManualResetEventSlim();
        KernelThread? squatter = null;

        var holder = m.StartThread("holder", () =>
        {
            var sf = sfbufs.Alloc(pages[0]);
            var waiter = m.StartThread("waiter", () =>
            {
                var other = sfbufs.Alloc(pages[1]); // the pool is exhausted: it waits
                waiterRead = m.CurrentCpu.ReadUInt64(sfbufs.Kva(other)) == SfBufRig.Stamp(pages[1]) ? 1 : -1;
                sfbufs.Free(other);
            }, cpu: 1, bound: true);
            SfBufRig.SpinOnCpu(m, () => m.SleepingThreads == 1, "the waiter sleeps");

            // A thread bound to this CPU queues for it; the free's wakeup gives the CPU away
            // (as a contended pool lock would), so the holder resumes on CPU 1.
            squatter = m.StartThread("squatter", () => SfBufRig.SpinOnCpu(m, () => freeDone.IsSet, "the free is done"), cpu: 0, bound: true);
            SfBufRig.SpinOnCpu(m, () => m.TestHookWaitingForCpu == 1, "the squatter queues for CPU 0");
            sfbufs.TestHooks = new EpochCacheTestHooks { BeforeWakeWaiters = () => KernelThread.Current.Yield() };
            sfbufs.Free(sf);
            freedOn = m.CurrentCpu.Id;
            sfbufs.TestHooks = null;
            freeDone.Set();
            waiter.Join(SfBufRig.Patience);
        }, cpu: 0);

        holder.Join(SfBufRig.Patience);
        squatter!.Join(SfBufRig.Patience);
        Assert.That(freedOn, Is.EqualTo(1), "the holder migrated during the free");
        Assert.That(waiterRead, Is.EqualTo(1));
        Assert.That(m.Counters()[Counter.Migrations], Is.GreaterThan(0));
        AssertQuiescent(m, sfbufs);
    }

    /// <summary>
    /// A flush point reads the retired batches' descriptors twice: once to check them, once to
    /// invalidate. A descriptor rewritten between the passes (for a batch eight epochs later) may
    /// carry a count above the 32 entries a descriptor keeps; the second pass must not read past
    /// them (it read into the next descriptor's entries, and past the last one, out of the ring).
    /// </summary>
    [Test]
    public void AFlushPointNeverReadsPastADescriptorRewrittenBetweenItsPasses()
    {
        using var m = new SimMachine(SfBufRig.Small());
        using var sfbufs = Create(m, 64);
        var pages = SfBufRig.NewPages(m, 72);

        // CPU 1 streams past the pool: a batch or two is retired while CPU 0 is idle.
        m.Run(1, () =>
        {
            foreach (var page in pages)
            {
                sfbufs.Free(sfbufs.Alloc(page));
            }
        });
        long global = sfbufs.GlobalEpoch;
        long observed = sfbufs.TestHookObservedEpoch(0);
        Assert.That(global - observed, Is.InRange(1, 8), "CPU 0 is behind by a few batches, each described in the ring");

        // As CPU 0's thread switches in, its flush point checks the descriptors; then the first
        // one it will read is rewritten as if for a batch eight epochs later, of 40 slots.
        bool rewritten = false;
        sfbufs.TestHooks = new EpochCacheTestHooks
        {
            BetweenInvalidatePasses = () =>
            {
                if (!rewritten)
                {
                    rewritten = true;
                    sfbufs.TestHookRewriteBatch(observed + 1 + 8, 40);
                }
            },
        };
        var before = m.Counters();
        m.Run(0, () => { });
        var d = m.Counters() - before;
        sfbufs.TestHooks = null;

        Assert.That(rewritten, Is.True, "the flush point reached its second pass");
        Assert.That(d.OnCpu(0, Counter.LocalInvalidations), Is.LessThanOrEqualTo(EpochCacheMapper.FlushCeiling), "at most the entries a descriptor keeps");
        Assert.That(d.OnCpu(0, Counter.FullFlushes), Is.GreaterThanOrEqualTo(1), "the rewritten descriptor sends the flush point to a full flush");
        Assert.That(sfbufs.TestHookObservedEpoch(0), Is.EqualTo(global));
    }

    /// <summary>Holds every thread until all have started, yielding the CPU meanwhile, so that the threads overlap.</summary>
    private sealed class StartLine(int threads)
    {
        private int _arrived;

        public void Wait()
        {
            Interlocked.Increment(ref _arrived);
            while (Volatile.Read(ref _arrived) < threads)
            {
                KernelThread.Current.Yield();
            }
        }
    }

    private static void JoinOrDescribe(SimMachine m, EpochCacheMapper sfbufs, List<KernelThread> threads, int rep)
    {
        var deadline = DateTime.UtcNow + s_hangAfter;
        foreach (var td in threads)
        {
            var left = deadline - DateTime.UtcNow;
            try
            {
                td.Join(left > TimeSpan.Zero ? left : TimeSpan.Zero);
            }
            catch (TimeoutException)
            {
                var stats = sfbufs.Stats();
                Assert.Fail($"repetition {rep}: hung with {m.SleepingThreads} of {threads.Count} threads asleep and {stats.NsfbufsUsed} of {stats.Nsfbufs} slots in use; pool {sfbufs.TestHookPool()}");
            }
        }
    }

    private static void AssertQuiescent(SimMachine m, EpochCacheMapper sfbufs)
    {
        var counters = m.Counters();
        Assert.That(counters[Counter.StaleAccesses], Is.Zero);
        Assert.That(counters[Counter.LatentStaleAccesses], Is.Zero);
        Assert.That(sfbufs.Stats().NsfbufsUsed, Is.Zero);
        Assert.That(sfbufs.TestHookCheckInvariants(), Is.Empty);
    }
}
