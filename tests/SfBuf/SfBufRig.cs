using System.Runtime.InteropServices;
using Native.PageTable;
using Native.SfBufNative;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>Small machines, stamped pages, busy CPUs and TLB probes shared by the sf_buf unit tests.</summary>
internal static class SfBufRig
{
    /// <summary>How long a test waits for another thread before it calls it a hang (never a timing assertion).</summary>
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    /// <summary>A small machine: 32 MiB, a 64-page sf_buf window, 256 pages of kernel_map, 64 pages of kmem.</summary>
    public static MachineOptions Small(int cpus = 2, MachineFlavor flavor = MachineFlavor.I386, int windowPages = 64, int kernelMapPages = 256) => new()
    {
        Cpus = cpus,
        PhysicalMemoryBytes = 32UL << 20,
        Flavor = flavor,
        SfBufWindowPages = windowPages,
        KernelMapPages = kernelMapPages,
        KernelMemoryPages = 64,
        ShootdownWatchdog = TimeSpan.FromSeconds(20),
    };

    /// <summary>An sfbuf-i386 mapper of <paramref name="nsfbufs"/> sf_bufs.</summary>
    public static I386Mapper I386(SimMachine m, int nsfbufs) => (I386Mapper)SfBufMapper.Create(SfBufMapper.I386, m, nsfbufs);

    /// <summary>The value every word of a stamped page holds: a tag and the frame number.</summary>
    public static ulong Stamp(VmPage page) => 0x5f5f_0000_0000_0000UL | page.Frame;

    /// <summary>
    /// A zeroed wired page whose every 64-bit word is <see cref="Stamp"/> (written physically). On a
    /// machine with exclusive page ownership it is a user page, out of the direct map, so that the
    /// generic drivers exercise XPFO's restore and removal.
    /// </summary>
    public static VmPage NewPage(SimMachine m)
    {
        var page = m.Physical.Alloc(AllocFlags.Zero | AllocFlags.Wired | AllocFlags.User);
        MemoryMarshal.Cast<byte, ulong>(m.Physical.PhysicalBytes(page)).Fill(Stamp(page));
        return page;
    }

    /// <summary><paramref name="count"/> stamped wired pages.</summary>
    public static VmPage[] NewPages(SimMachine m, int count)
    {
        var pages = new VmPage[count];
        for (int i = 0; i < count; i++)
        {
            pages[i] = NewPage(m);
        }

        return pages;
    }

    /// <summary>Blocks the (non-kernel) calling thread until <paramref name="condition"/> holds.</summary>
    public static void WaitUntil(Func<bool> condition, string what)
    {
        if (!SpinWait.SpinUntil(condition, Patience))
        {
            throw new TimeoutException($"timed out waiting until {what}");
        }
    }

    /// <summary>
    /// Spins on the calling kernel thread's CPU, servicing its mailbox, until <paramref name="condition"/>
    /// holds: with <see cref="Cpu.Poll"/> (<paramref name="poll"/>), or by reading memory, which
    /// services IPIs too but runs no poll hook.
    /// </summary>
    public static void SpinOnCpu(SimMachine m, Func<bool> condition, string what, bool poll = true)
    {
        var deadline = DateTime.UtcNow + Patience;
        ulong word = poll ? 0 : m.KernelMemory.Alloc(Pte.PageSize); // a wired kernel page to read
        while (!condition())
        {
            if (poll)
            {
                m.CurrentCpu.Poll();
            }
            else
            {
                m.CurrentCpu.ReadUInt64(word); // services IPIs, but is no poll
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"timed out spinning until {what}");
            }

            Thread.Yield();
        }

        if (!poll)
        {
            m.KernelMemory.Free(word, Pte.PageSize);
        }
    }

    /// <summary>
    /// Which of a thread's held mappings a random driver frees, given its random pick
    /// <paramref name="pick"/>: the pick itself, except that a strategy whose private mappings
    /// must be freed in LIFO order (<see cref="SfBufPrivateRules.ReleaseLifo"/>: kmap_atomic,
    /// kmap_local) frees its most recent private mapping instead of an older one. Shared mappings
    /// are freed in any order for every strategy.
    /// </summary>
    public static int ReleaseIndex<T>(SfBufStrategyInfo info, IReadOnlyList<T> held, Func<T, bool> isPrivate, int pick)
    {
        if ((info.PrivateRules & SfBufPrivateRules.ReleaseLifo) == 0 || !isPrivate(held[pick]))
        {
            return pick;
        }

        for (int i = held.Count - 1; i >= 0; i--)
        {
            if (isPrivate(held[i]))
            {
                return i;
            }
        }

        return pick;
    }

    /// <summary>The order in which a thread frees everything it still holds at the end: newest first where the strategy requires LIFO, oldest first otherwise.</summary>
    public static IEnumerable<T> ReleaseAll<T>(SfBufStrategyInfo info, IReadOnlyList<T> held) =>
        (info.PrivateRules & SfBufPrivateRules.ReleaseLifo) != 0 ? held.Reverse() : held;

    /// <summary>
    /// The flags for an allocation made while the thread may hold private mappings: a strategy
    /// whose private holders may not sleep (<see cref="SfBufPrivateRules.NoSleep"/>: kmap_atomic,
    /// the quick page) gets <see cref="SfBufFlags.NoWait"/> while one is held, as its callers must.
    /// </summary>
    public static SfBufFlags WhileHolding(SfBufStrategyInfo info, bool holdsPrivate, SfBufFlags flags) =>
        holdsPrivate && (info.PrivateRules & SfBufPrivateRules.NoSleep) != 0 ? flags | SfBufFlags.NoWait : flags;

    /// <summary>Joins every thread, then throws what any of them ended with (all of them, so none is left running).</summary>
    public static void JoinAll(IEnumerable<KernelThread> threads, TimeSpan patience)
    {
        var faults = new List<Exception>();
        foreach (var thread in threads)
        {
            try
            {
                thread.Join(patience);
            }
            catch (Exception e)
            {
                faults.Add(e);
            }
        }

        if (faults.Count > 0)
        {
            throw new AggregateException(faults);
        }
    }

    /// <summary>
    /// The frame <paramref name="cpu"/>'s TLB maps <paramref name="va"/> to, or -1 when it holds no
    /// entry. Only for a CPU no thread is running on (its TLB is written by its owner alone).
    /// </summary>
    public static unsafe long CachedFrame(Cpu cpu, ulong va)
    {
        TlbEntry* e = cpu.Tlb.Lookup(va >> Pte.PageShift);
        return e == null ? -1 : Pte.Frame(e->Pte);
    }
}

/// <summary>
/// Kernel threads bound to some CPUs that do nothing but answer IPIs (<see cref="Cpu.Poll"/>)
/// until disposed, so those CPUs are running, not idle: a shootdown interrupts them (IpisSent,
/// IpisReceived) instead of deferring a flush.
/// </summary>
internal sealed class BusyCpus : IDisposable
{
    private readonly List<KernelThread> _threads = [];
    private volatile bool _stop;
    private int _running;

    /// <summary>
    /// Keeps <paramref name="cpus"/> running a thread that answers IPIs. With
    /// <paramref name="polls"/> it polls as a waiting kernel loop does (<see cref="Cpu.Poll"/>);
    /// without, it only reads memory, as a long copy does, which services IPIs but is no poll.
    /// </summary>
    public BusyCpus(SimMachine m, IEnumerable<int> cpus, bool polls = true)
    {
        foreach (int cpu in cpus)
        {
            _threads.Add(m.StartThread($"busy-cpu{cpu}", () =>
            {
                Interlocked.Increment(ref _running);
                var self = m.CurrentCpu;
                ulong word = polls ? 0 : m.KernelMemory.Alloc(Pte.PageSize); // a wired kernel page to read
                while (!_stop)
                {
                    if (polls)
                    {
                        self.Poll();
                    }
                    else
                    {
                        self.ReadUInt64(word); // services IPIs, but is no poll
                    }

                    Thread.Yield();
                }

                if (!polls)
                {
                    m.KernelMemory.Free(word, Pte.PageSize);
                }
            }, cpu, bound: true));
        }

        SfBufRig.WaitUntil(() => Volatile.Read(ref _running) == _threads.Count, "every busy CPU runs its thread");
    }

    public void Dispose()
    {
        _stop = true;
        foreach (var thread in _threads)
        {
            thread.Join(SfBufRig.Patience);
        }
    }
}
