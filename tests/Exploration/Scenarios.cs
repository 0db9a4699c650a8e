using Native.PageTable;
using Native.SfBufNative;
using Native.Tests.Machine;
using Native.Tests.SfBuf;
using SfBufHandle = Native.SfBufNative.SfBuf;

namespace Native.Tests.Exploration;

/// <summary>
/// The interleavings the explorer drives. Each starts its kernel threads from the test thread
/// (they run only once the controlled schedule starts), keeps its own invariants, and is small
/// enough for hundreds of schedules a second.
/// </summary>
internal static class Scenarios
{
    /// <summary>
    /// IPI cross-fire: every CPU remaps its own kernel page and broadcasts the invalidation
    /// (odd CPUs without <c>smp_ipi_mtx</c>) while the others read it under its mutex, so
    /// shootdowns cross and every target holds a translation to drop.
    /// </summary>
    public static Scenario IpiCrossFire(int cpus) => new($"ipi-crossfire-{cpus}cpu", Sim.Small(cpus), run =>
    {
        var m = run.M;
        var mutexes = Enumerable.Range(0, cpus).Select(i => new KMutex($"page{i}")).ToArray();
        var mapped = new ulong[cpus]; // marker now mapped, 0 before the first map
        var pages = Enumerable.Range(0, cpus).Select(i => new[] { Sim.NewPage(m, Marker(i, 0)), Sim.NewPage(m, Marker(i, 1)) }).ToArray();
        for (int c = 0; c < cpus; c++)
        {
            int me = c;
            var random = run.RandomFor(me);
            m.StartThread($"cpu{me}", () =>
            {
                var cpu = m.CurrentCpu;
                for (int round = 0; round < 3; round++)
                {
                    int other = (me + 1 + random.Next(cpus - 1)) % cpus;
                    ReadUnder(run, mutexes[other], m.Layout.KernelMap.PageAddress(other), () => mapped[other]);

                    ulong va = m.Layout.KernelMap.PageAddress(me);
                    mutexes[me].Lock();
                    m.KernelPmap.KEnter(va, pages[me][round % 2]);
                    cpu.InvalidatePage(va);
                    cpu.ShootdownAllButSelf(ShootdownKind.Page, va, serialize: me % 2 == 0);
                    mapped[me] = Marker(me, round % 2);
                    mutexes[me].Unlock();
                    ReadUnder(run, mutexes[me], va, () => mapped[me]);
                }
            }, cpu: me, bound: true);
        }
    })
    { ExpectedSteps = 150 * cpus };

    /// <summary>
    /// Idle entry and exit racing a shootdown: a reader on CPU 1 sleeps between reads, so its
    /// CPU goes idle and comes back while CPU 0 remaps the page it reads and shoots it down.
    /// </summary>
    public static Scenario IdleVersusShootdown() => new("idle-vs-shootdown", Sim.Small(2), run =>
    {
        var m = run.M;
        var mutex = new KMutex("page");
        var channel = new object();
        ulong mapped = 0;
        ulong va = m.Layout.KernelMap.Start;
        var pages = new[] { Sim.NewPage(m, Marker(0, 0)), Sim.NewPage(m, Marker(0, 1)) };
        m.StartThread("remapper", () =>
        {
            for (int round = 0; round < 4; round++)
            {
                mutex.Lock();
                m.KernelPmap.KEnter(va, pages[round % 2]);
                m.KernelPmap.InvalidatePage(va);
                mapped = Marker(0, round % 2);
                mutex.Unlock();
            }
        }, cpu: 0, bound: true);
        m.StartThread("reader", () =>
        {
            for (int round = 0; round < 4; round++)
            {
                ReadUnder(run, mutex, va, () => mapped);
                m.Sleep(channel, timeout: TimeSpan.FromMilliseconds(1)); // CPU 1 goes idle
            }
        }, cpu: 1, bound: true);
    })
    { ExpectedSteps = 200 };

    /// <summary>Kernel-mutex hand-off: three threads on two CPUs increment a shared count under a mutex, yielding inside.</summary>
    public static Scenario MutexHandOff(bool spinOnly) => new($"mutex-handoff{(spinOnly ? "-spin" : "")}", Sim.Small(2), run =>
    {
        var m = run.M;
        var mutex = new KMutex("count", spinOnly);
        var count = new int[1];
        run.State["count"] = count;
        for (int t = 0; t < 3; t++)
        {
            m.StartThread($"incrementer{t}", () =>
            {
                for (int k = 0; k < 3; k++)
                {
                    mutex.Lock();
                    int seen = count[0];
                    m.CurrentCpu.Poll(); // another thread may run here; the mutex keeps it out
                    count[0] = seen + 1;
                    mutex.Unlock();
                }
            }, cpu: t % 2);
        }
    })
    {
        ExpectedSteps = 150,
        Check = run =>
        {
            int n = ((int[])run.State["count"])[0];
            if (n != 9)
            {
                run.Fail($"the count is {n}, not 9: an update was lost");
            }
        },
    };

    /// <summary><c>msleep</c>/<c>wakeup</c> with cancellation: a consumer sleeps for items (PCATCH) while a third thread cancels at a random moment.</summary>
    public static Scenario SleepWakeupCancel() => new("sleep-wakeup-cancel", Sim.Small(2), run =>
    {
        var m = run.M;
        var mutex = new KMutex("queue");
        var channel = new object();
        var queue = new Queue<int>();
        var cancel = new CancellationTokenSource();
        run.State["cancel"] = cancel;
        var result = new int[2]; // got, interrupted
        run.State["result"] = result;
        var random = run.RandomFor(0);
        bool wakeOne = random.Next(2) == 0;
        int delay = random.Next(12);
        m.StartThread("consumer", () =>
        {
            mutex.Lock();
            while (result[0] < 3)
            {
                if (queue.Count > 0)
                {
                    queue.Dequeue();
                    result[0]++;
                    continue;
                }

                if (m.Sleep(channel, mutex, cancellation: cancel.Token) == SleepResult.Interrupted)
                {
                    result[1] = 1;
                    break;
                }
            }

            mutex.Unlock();
        }, cpu: 0);
        m.StartThread("producer", () =>
        {
            for (int i = 0; i < 3; i++)
            {
                mutex.Lock();
                queue.Enqueue(i);
                _ = wakeOne ? m.WakeupOne(channel) : m.Wakeup(channel);
                mutex.Unlock();
            }
        }, cpu: 1);
        m.StartThread("canceller", () =>
        {
            for (int i = 0; i < delay; i++)
            {
                m.CurrentCpu.Poll();
            }

            cancel.Cancel();
        });
    })
    {
        ExpectedSteps = 150,
        Check = run =>
        {
            var result = (int[])run.State["result"];
            if (result[0] != 3 && result[1] != 1)
            {
                run.Fail($"the consumer ended with {result[0]} items and no interruption");
            }
        },
    };

    /// <summary>
    /// sf_buf alloc/free/recycle with remote caching: each CPU allocates from a tiny pool (shared
    /// or CPU-private, NoWait), touches some mappings and not others, and hands shared ones to
    /// another CPU, which reads and frees them.
    /// </summary>
    /// <param name="strategy">The strategy.</param>
    /// <param name="cpus">The CPU count.</param>
    /// <param name="plant">Plants a strategy's own bug in the new mapper (its name is added to the scenario's).</param>
    public static Scenario SfBufRemote(string strategy, int cpus, (string Name, Action<SfBufMapper> Apply)? plant = null) => SfBufScenario(
        $"sfbuf-remote-{strategy}-{cpus}cpu{(plant is { } p ? $"-{p.Name}" : string.Empty)}", strategy, cpus, (run, mapper, pages, live) =>
    {
        var m = run.M;
        var info = SfBufMapper.Describe(strategy);
        var inbox = Enumerable.Range(0, cpus).Select(_ => new Queue<(SfBufHandle Sf, VmPage Page)>()).ToArray();
        var finished = new bool[cpus];
        for (int c = 0; c < cpus; c++)
        {
            int me = c;
            var random = run.RandomFor(me);
            m.StartThread($"cpu{me}", () =>
            {
                var held = new List<(SfBufHandle Sf, VmPage Page, bool Shared)>();
                for (int op = 0; op < 10; op++)
                {
                    while (inbox[me].TryDequeue(out var given))
                    {
                        Touch(run, mapper, given.Sf, given.Page);
                        live.Release(given.Sf, given.Page);
                        mapper.Free(given.Sf);
                    }

                    int choice = random.Next(10);
                    if (held.Count == 0 || (held.Count < 2 && choice < 4))
                    {
                        var page = pages[random.Next(pages.Length)];
                        bool shared = random.Next(2) == 0;
                        var sf = mapper.Alloc(page, SfBufFlags.NoWait | (shared ? 0 : SfBufFlags.CpuPrivate));
                        if (!sf.IsNone)
                        {
                            live.Add(run, sf, page);
                            held.Add((sf, page, shared));
                        }
                    }
                    else if (choice < 7)
                    {
                        var (sf, page, _) = held[random.Next(held.Count)];
                        Touch(run, mapper, sf, page);
                    }
                    else
                    {
                        int i = SfBufRig.ReleaseIndex(info, held, h => !h.Shared, random.Next(held.Count));
                        var (sf, page, shared) = held[i];
                        held.RemoveAt(i);
                        int to = (me + 1 + random.Next(cpus - 1)) % cpus;
                        if (shared && !finished[to])
                        {
                            inbox[to].Enqueue((sf, page)); // the other CPU reads and frees it
                        }
                        else
                        {
                            live.Release(sf, page);
                            mapper.Free(sf);
                        }
                    }
                }

                foreach (var (sf, page, _) in SfBufRig.ReleaseAll(info, held))
                {
                    live.Release(sf, page);
                    mapper.Free(sf);
                }

                while (inbox[me].TryDequeue(out var given))
                {
                    live.Release(given.Sf, given.Page);
                    mapper.Free(given.Sf);
                }

                finished[me] = true;
            }, cpu: me, bound: true);
        }
    }, pageCount: 5, plant?.Apply);

    /// <summary>
    /// sf_buf exhaustion: four threads on <paramref name="cpus"/> CPUs allocate (waiting, some
    /// with PCATCH) from a pool of two while another thread cancels: two want a page each of
    /// their own, two want the same page, so allocations sleep, wake, share, recycle and are
    /// interrupted.
    /// </summary>
    public static Scenario SfBufExhaustion(string strategy, int cpus) => SfBufScenario($"sfbuf-exhaustion-{strategy}-{cpus}cpu", strategy, cpus, (run, mapper, pages, live) =>
    {
        var m = run.M;
        var cancel = new CancellationTokenSource();

        // Where a free on one CPU cannot end a wait on another (lwbuf's per-CPU magazines), the
        // users stay on one CPU: spread over several, one whose CPU holds no object would wait
        // for ever once kernel_map is exhausted (the strategy's documented exception).
        bool oneCpu = !SfBufMapper.Describe(strategy).FreesReachWaitersOnAnyCpu;
        run.State["cancel"] = cancel;
        for (int t = 0; t < 4; t++)
        {
            var random = run.RandomFor(t);
            var page = pages[t < 2 ? t + 1 : 0];
            m.StartThread($"user{t}", () =>
            {
                for (int op = 0; op < 3; op++)
                {
                    var flags = random.Next(3) == 0 ? SfBufFlags.Catch : SfBufFlags.Default;
                    var sf = mapper.Alloc(page, flags, cancel.Token);
                    if (sf.IsNone)
                    {
                        continue; // interrupted
                    }

                    live.Add(run, sf, page);
                    for (int touch = 0; touch < 3; touch++)
                    {
                        Touch(run, mapper, sf, page);
                    }

                    live.Release(sf, page);
                    mapper.Free(sf);
                }
            }, cpu: oneCpu ? 0 : t % cpus, bound: oneCpu);
        }

        int delay = run.RandomFor(9).Next(200);
        m.StartThread("canceller", () =>
        {
            for (int i = 0; i < delay; i++)
            {
                m.CurrentCpu.Poll();
            }

            cancel.Cancel();
        });
    });

    /// <summary>
    /// epoch-cache on unbound threads, pairs held at once: <paramref name="threads"/> kernel
    /// threads (more than the <paramref name="cpus"/> CPUs, none bound, so they switch and
    /// migrate) each map two pages with Default allocations, yielding after the first and while
    /// holding both, then free them in either order. The pages are shared, so some allocations
    /// hit another thread's mapping; the pool holds one slot more than the threads, so a thread
    /// that waits holds at most one slot and one is always inactive, retired or clean: every
    /// wait must end.
    /// </summary>
    public static Scenario SfBufUnboundPairs(int threads, int cpus, int pool) => pool <= threads
        ? throw new ArgumentOutOfRangeException(nameof(pool), pool, $"{threads} threads each holding one slot while waiting for a second need {threads + 1} slots")
        : EpochCacheUnbound("pairs", threads, cpus, pool, pageCount: threads + 3, rounds: 3, stepsPerRound: 27, (rig, random, _, rounds) =>
        {
            var pages = rig.Pages;
            for (int round = 0; round < rounds; round++)
            {
                int x = random.Next(pages.Length), y = (x + 1 + random.Next(pages.Length - 1)) % pages.Length;
                var first = rig.Alloc(pages[x]);
                KernelThread.Current.Yield(); // holding one
                var second = rig.Alloc(pages[y]);
                rig.Touch(first, pages[x]);
                rig.Touch(second, pages[y]);
                KernelThread.Current.Yield(); // holding both
                rig.Touch(first, pages[x]);
                if (random.Next(2) == 0)
                {
                    (first, second, x, y) = (second, first, y, x);
                }

                rig.Free(second, pages[y]);
                rig.Free(first, pages[x]);
            }
        });

    /// <summary>
    /// epoch-cache on unbound threads, a random mix: each of <paramref name="threads"/> threads
    /// (more than the CPUs) allocates, touches, yields while holding, and frees, holding up to
    /// two mappings of shared pages (hits); it waits (Default) only while holding nothing and asks
    /// for a second mapping with NoWait, so a pool of as few slots as there are CPUs or fewer
    /// still lets every thread finish, while exhaustion, waiters, retire, epochs, magazine steals
    /// and the fallback all happen.
    /// </summary>
    public static Scenario SfBufUnboundMixed(int threads, int cpus, int pool) =>
        EpochCacheUnbound("mixed", threads, cpus, pool, pageCount: pool + 2, rounds: 8, stepsPerRound: 5, (rig, random, _, rounds) =>
        {
            var pages = rig.Pages;
            var held = new List<(SfBufHandle Sf, VmPage Page)>();
            for (int op = 0; op < rounds; op++)
            {
                int choice = random.Next(10);
                if (held.Count == 0 || (held.Count < 2 && choice < 4))
                {
                    var page = pages[random.Next(pages.Length)];
                    var sf = rig.Alloc(page, held.Count > 0 || random.Next(4) == 0 ? SfBufFlags.NoWait : SfBufFlags.Default);
                    if (!sf.IsNone)
                    {
                        held.Add((sf, page));
                    }
                }
                else if (choice < 6)
                {
                    var (sf, page) = held[random.Next(held.Count)];
                    rig.Touch(sf, page);
                }
                else if (choice < 8)
                {
                    KernelThread.Current.Yield(); // holding: another thread takes this CPU
                    var (sf, page) = held[random.Next(held.Count)];
                    rig.Touch(sf, page); // perhaps on another CPU now
                }
                else
                {
                    int i = random.Next(held.Count);
                    var (sf, page) = held[i];
                    held.RemoveAt(i);
                    rig.Free(sf, page);
                }
            }

            foreach (var (sf, page) in held)
            {
                rig.Free(sf, page);
            }
        });

    /// <summary>
    /// epoch-cache on unbound threads taking pairs all or nothing: every thread but the last maps
    /// two distinct shared pages with <see cref="SfBufMapper.AllocMany"/> (Default, one in
    /// four NoWait), yields holding both and frees them in either order; the last maps one page
    /// at a time (Default, holding nothing), so single and paired waiters share the ticket queue.
    /// No thread waits while holding, so every wait must end even with a pool of two.
    /// </summary>
    public static Scenario SfBufUnboundAllocMany(int threads, int cpus, int pool) => pool < 2
        ? throw new ArgumentOutOfRangeException(nameof(pool), pool, "a pair needs two slots")
        : EpochCacheUnbound("allocmany", threads, cpus, pool, pageCount: pool + 3, rounds: 3, stepsPerRound: 33, (rig, random, index, rounds) =>
        {
            var pages = rig.Pages;
            var both = new SfBufHandle[2];
            for (int round = 0; round < rounds; round++)
            {
                int x = random.Next(pages.Length), y = (x + 1 + random.Next(pages.Length - 1)) % pages.Length;
                if (index == threads - 1)
                {
                    var sf = rig.Alloc(pages[x]);
                    KernelThread.Current.Yield();
                    rig.Touch(sf, pages[x]);
                    rig.Free(sf, pages[x]);
                    continue;
                }

                VmPage[] pair = [pages[x], pages[y]];
                if (!rig.AllocMany(pair, both, random.Next(4) == 0 ? SfBufFlags.NoWait : SfBufFlags.Default))
                {
                    continue; // NoWait: none held
                }

                rig.Touch(both[0], pair[0]);
                KernelThread.Current.Yield(); // holding both
                rig.Touch(both[1], pair[1]);
                int last = random.Next(2);
                rig.Free(both[last], pair[last]);
                rig.Free(both[1 - last], pair[1 - last]);
            }
        });

    /// <summary>
    /// An epoch-cache scenario whose threads are unbound: <paramref name="threads"/> kernel threads
    /// started without a CPU on <paramref name="cpus"/> CPUs, sharing a pool of
    /// <paramref name="pool"/> slots and <paramref name="pageCount"/> stamped pages through an
    /// <see cref="UnboundRig"/>. At the end the pool must be at rest: its structural invariants
    /// hold and no slot is in use. A failed schedule reports the pool's state (a deadlock shows
    /// what the sleepers waited for). <paramref name="stepsPerRound"/> is the mean number of
    /// scheduling steps one thread's round took over 200 schedules, so that PCT's change points
    /// fall within the schedule.
    /// </summary>
    private static Scenario EpochCacheUnbound(string shape, int threads, int cpus, int pool, int pageCount, int rounds, int stepsPerRound, UnboundBody body) =>
        new($"sfbuf-unbound-{shape}-epoch-cache-{threads}t{cpus}cpu-pool{pool}", SfBufRig.Small(cpus, MachineFlavor.I386, windowPages: 8, kernelMapPages: 2), run =>
        {
            var mapper = (EpochCacheMapper)SfBufMapper.Create(SfBufMapper.EpochCache, run.M, pool);
            run.State["mapper"] = mapper;
            var rig = new UnboundRig(run, mapper, SfBufRig.NewPages(run.M, pageCount));
            run.State["rig"] = rig;
            run.M.AddTlbFlushHook(rig);
            for (int t = 0; t < threads; t++)
            {
                var random = run.RandomFor(t);
                int index = t;
                run.M.StartThread($"{shape}{t}", () => body(rig, random, index, rounds));
            }
        })
        {
            ExpectedSteps = stepsPerRound * threads * rounds,
            Check = run =>
            {
                var mapper = (EpochCacheMapper)run.State["mapper"];
                foreach (var problem in mapper.TestHookCheckInvariants())
                {
                    run.Fail(problem);
                }

                int used = mapper.Stats().NsfbufsUsed;
                if (used != 0)
                {
                    run.Fail($"{used} slots still in use after every thread freed what it held");
                }
            },
            Describe = DescribeEpochCache,
        };

    /// <summary>An epoch-cache pool's state: clean, retired and magazine slots, each slot's count (-1 clean, -2 retired) and the epochs.</summary>
    private static string DescribeEpochCache(ExploreRun run)
    {
        if (!run.State.TryGetValue("mapper", out var value) || value is not EpochCacheMapper mapper)
        {
            return "no pool";
        }

        var (clean, retired, inMagazines) = mapper.TestHookPool();
        var slots = Enumerable.Range(0, mapper.Nsfbufs).Select(i => mapper.TestHookSlot(i)).Select(s => s.Ref == -2 ? $"retired@{s.RetireEpoch}" : s.Ref.ToString(System.Globalization.CultureInfo.InvariantCulture));
        var observed = Enumerable.Range(0, run.M.Cpus.Count).Select(c => mapper.TestHookObservedEpoch(c));
        var stats = mapper.Stats();
        return $"pool: {clean} clean, {retired} retired, {inMagazines} in magazines, {stats.NsfbufsUsed} of {mapper.Nsfbufs} in use; "
            + $"slots [{string.Join(" ", slots)}]; global epoch {mapper.GlobalEpoch}, observed [{string.Join(" ", observed)}]; "
            + $"waits {stats.AllocWait}, migrations {run.M.Counters()[Counter.Migrations]}";
    }

    /// <summary>One unbound thread's work: its seeded randomness, its <paramref name="index"/> and the rounds it runs.</summary>
    private delegate void UnboundBody(UnboundRig rig, Random random, int index, int rounds);

    /// <summary>
    /// What the unbound epoch-cache scenarios' threads call the pool through: every mapping is
    /// tracked (one live sf_buf per page) and every read checks the page's stamp. It counts the
    /// calls that returned on another CPU than they were entered on (they blocked, on the pool
    /// mutex or asleep, and the thread resumed elsewhere), and, as a TLB flush hook, fails the
    /// schedule when a CPU's TLB is flushed by a thread that is not running on it (work on a CPU
    /// the caller has left).
    /// </summary>
    internal sealed class UnboundRig(ExploreRun run, EpochCacheMapper mapper, VmPage[] pages) : ITlbFlushHook
    {
        private readonly LiveHandles _live = new(onePerPage: true);

        public VmPage[] Pages { get; } = pages;

        /// <summary>Alloc, Free and AllocMany calls that returned on another CPU than the one they were entered on.</summary>
        public long CallsThatMigrated { get; private set; }

        public SfBufHandle Alloc(VmPage page, SfBufFlags flags = SfBufFlags.Default)
        {
            int entered = run.M.CurrentCpu.Id;
            var sf = mapper.Alloc(page, flags);
            Returned(entered);
            if (!sf.IsNone)
            {
                _live.Add(run, sf, page);
            }

            return sf;
        }

        public bool AllocMany(VmPage[] pair, SfBufHandle[] result, SfBufFlags flags)
        {
            int entered = run.M.CurrentCpu.Id;
            bool got = mapper.AllocMany(pair, result, flags);
            Returned(entered);
            for (int i = 0; got && i < pair.Length; i++)
            {
                _live.Add(run, result[i], pair[i]);
            }

            return got;
        }

        public void Free(SfBufHandle sf, VmPage page)
        {
            _live.Release(sf, page);
            int entered = run.M.CurrentCpu.Id;
            mapper.Free(sf);
            Returned(entered);
        }

        public void Touch(SfBufHandle sf, VmPage page) => Scenarios.Touch(run, mapper, sf, page);

        long ITlbFlushHook.Flushing(Cpu cpu, bool global)
        {
            if (KernelThread.CurrentOrNull is { } td && !ReferenceEquals(td.Cpu, cpu))
            {
                run.Fail($"{td.Name}, running on cpu {td.Cpu?.Id.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "none"}, flushed cpu {cpu.Id}'s TLB");
            }

            return 0;
        }

        void ITlbFlushHook.Flushed(Cpu cpu, bool global, long token)
        {
        }

        private void Returned(int entered)
        {
            if (run.M.CurrentCpu.Id != entered)
            {
                CallsThatMigrated++;
            }
        }
    }

    /// <summary>
    /// The pool for every strategy whose pool size is a parameter (<see cref="SfBufStrategyInfo.PoolSizeIsParameter"/>):
    /// two slots, fewer than the scenarios' pages, so that every schedule exhausts it and recycles
    /// (and, for epoch-cache, retires, waits out or forces an epoch). The others take the
    /// machine's: a <c>kernel_map</c> of two pages, or the direct map.
    /// </summary>
    private const int SmallPool = 2;

    private static Scenario SfBufScenario(string name, string strategy, int cpus, Action<ExploreRun, SfBufMapper, VmPage[], LiveHandles> threads, int pageCount = 3, Action<SfBufMapper>? plant = null)
    {
        var info = SfBufMapper.Describe(strategy);
        return new Scenario(name, SfBufRig.Small(cpus, info.Flavor, windowPages: 8, kernelMapPages: 2), run =>
        {
            var mapper = SfBufMapper.Create(strategy, run.M, info.PoolSizeIsParameter ? SmallPool : null);
            run.State["mapper"] = mapper;
            plant?.Invoke(mapper);
            var pages = SfBufRig.NewPages(run.M, pageCount);
            threads(run, mapper, pages, new LiveHandles(info.IsMappingCache));
        })
        {
            ExpectedSteps = 300,
        };
    }

    private static ulong Marker(int cpu, int version) => 0x5a00_0000_0000_0000UL | ((ulong)(uint)cpu << 8) | (uint)version;

    private static void ReadUnder(ExploreRun run, KMutex mutex, ulong va, Func<ulong> expected)
    {
        mutex.Lock();
        ulong marker = expected();
        if (marker != 0)
        {
            ulong read = run.M.CurrentCpu.ReadUInt64(va);
            if (read != marker)
            {
                run.Fail($"cpu {run.M.CurrentCpu.Id} read 0x{read:x} at 0x{va:x}, expected 0x{marker:x}");
            }
        }

        mutex.Unlock();
    }

    /// <summary>Reads through <paramref name="sf"/> on the calling CPU, with <c>sf_buf_kva</c> right where it accesses (lwbuf_kva, emap's consume).</summary>
    private static void Touch(ExploreRun run, SfBufMapper mapper, SfBufHandle sf, VmPage page)
    {
        ulong read = run.M.CurrentCpu.ReadUInt64(mapper.Kva(sf) + 8);
        if (read != SfBufRig.Stamp(page))
        {
            run.Fail($"cpu {run.M.CurrentCpu.Id} read 0x{read:x} through {sf}, expected page {page}'s stamp");
        }
    }

    /// <summary>
    /// The live handles per page: for a cache of mappings of every user (<see cref="SfBufStrategyInfo.IsMappingCache"/>), two live handles of one
    /// page must be the same sf_buf. Released before the free, added after the alloc, so it never
    /// claims a handle is live when it is not.
    /// </summary>
    internal sealed class LiveHandles(bool onePerPage)
    {
        private readonly Dictionary<uint, (ulong Kva, int Count)> _live = [];

        public void Add(ExploreRun run, SfBufHandle sf, VmPage page)
        {
            if (_live.TryGetValue(page.Frame, out var held))
            {
                if (onePerPage && held.Kva != sf.Kva)
                {
                    run.Fail($"page {page} is mapped by two live sf_bufs at once (0x{held.Kva:x} and 0x{sf.Kva:x})");
                }

                _live[page.Frame] = (held.Kva, held.Count + 1);
            }
            else
            {
                _live[page.Frame] = (sf.Kva, 1);
            }
        }

        public void Release(SfBufHandle sf, VmPage page)
        {
            _ = sf;
            var held = _live[page.Frame];
            if (held.Count == 1)
            {
                _live.Remove(page.Frame);
            }
            else
            {
                _live[page.Frame] = (held.Kva, held.Count - 1);
            }
        }
    }
}
