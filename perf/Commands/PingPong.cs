using System.Diagnostics;
using System.Runtime.ExceptionServices;
using Native.PageTable;

namespace Native.Perf.Commands;

/// <summary>What a shootdown ping-pong run measured.</summary>
/// <param name="Rounds">Rounds run (one remap and shootdown each).</param>
/// <param name="Elapsed">Wall time from the first round's start to the last round's end.</param>
/// <param name="Counters">The machine's counters over exactly those rounds.</param>
internal sealed record PingPongResult(int Rounds, TimeSpan Elapsed, CounterSnapshot Counters);

/// <summary>
/// The shootdown ping-pong: one kernel thread bound to each CPU, each owning one page of
/// <c>kernel_map</c> KVA and two physical frames. Round <c>r</c> belongs to CPU <c>r % N</c>: it
/// remaps its page onto its other frame (<c>pmap_kenter</c>), invalidates it everywhere
/// (<c>pmap_invalidate_page</c>: local <c>invlpg</c> plus a broadcast shootdown), stamps the new
/// frame and passes the turn on. The others meanwhile touch their own pages and poll, so they
/// answer the shootdown as running CPUs.
/// <para>
/// The shootdowns are not vacuous: before its own remap, each CPU reads the page the previous CPU
/// just remapped and checks the stamp. That caches the translation in its TLB, and the next time
/// that page is remapped only the shootdown can remove it; a missed one would be reported by the
/// oracle (checked mode) or as a wrong stamp (unchecked). The read is race-free: a page changes
/// only in its owner's rounds, and the reader finishes before it passes the turn on.
/// </para>
/// </summary>
internal sealed class PingPong
{
    private const int NotStarted = -1;

    private readonly Machine _machine;
    private readonly int _cpus;
    private readonly int _rounds;
    private readonly ulong[] _vas;
    private int _ready;
    private int _turn = NotStarted;
    private int _finished;
    private int _tearDown;
    private volatile bool _aborted;
    private long _start;
    private long _end;
    private CounterSnapshot? _before;
    private CounterSnapshot? _after;

    private PingPong(Machine machine, int rounds)
    {
        _machine = machine;
        _cpus = machine.Options.Cpus;
        _rounds = rounds;
        _vas = new ulong[_cpus];
    }

    /// <summary>Runs <paramref name="rounds"/> rounds on every CPU of <paramref name="machine"/>; rethrows the first failure.</summary>
    public static PingPongResult Run(Machine machine, int rounds)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rounds, 1);
        var run = new PingPong(machine, rounds);
        var threads = new KernelThread[run._cpus];
        for (int cpu = 0; cpu < threads.Length; cpu++)
        {
            int id = cpu;
            threads[cpu] = machine.StartThread($"pingpong-cpu{id}", () => run.Body(id), id, bound: true);
        }

        // Join every thread before reporting, so the machine can be disposed whatever happened.
        var faults = new List<Exception>();
        foreach (var td in threads)
        {
            try
            {
                td.Join();
            }
            catch (Exception ex)
            {
                faults.Add(ex);
            }
        }

        if (faults.Count == 1)
        {
            ExceptionDispatchInfo.Throw(faults[0]);
        }

        if (faults.Count > 1)
        {
            throw new AggregateException("several CPUs failed", faults);
        }

        return new PingPongResult(rounds, Stopwatch.GetElapsedTime(run._start, run._end), run._after! - run._before!);
    }

    private static ulong Stamp(int cpu, int round) => ((ulong)(cpu + 1) << 32) | (uint)(round + 1);

    private void Body(int id)
    {
        try
        {
            if (RunRounds(id) is { } owned)
            {
                TearDown(owned);
            }
        }
        catch
        {
            _aborted = true;
            throw;
        }
    }

    /// <summary>The rounds of CPU <paramref name="id"/>; null when another CPU failed.</summary>
    private Owned? RunRounds(int id)
    {
        var cpu = _machine.CurrentCpu; // bound: the same CPU for the whole run
        ulong va = _machine.KernelMap.Alloc(1, wait: false);
        if (va == 0)
        {
            throw new InvalidOperationException("kernel_map has no free page for the ping-pong");
        }

        var owned = new Owned(va, _machine.Physical.Alloc(AllocFlags.Zero), _machine.Physical.Alloc(AllocFlags.Zero));
        _machine.KernelPmap.KEnter(va, owned.Frame(0));
        ulong mine = 0;
        cpu.WriteUInt64(va, mine);
        _vas[id] = va;
        Interlocked.Increment(ref _ready);

        if (id == 0)
        {
            if (!SpinUntil(cpu, () => Volatile.Read(ref _ready) == _cpus))
            {
                return null;
            }

            _before = _machine.Counters();
            _start = Stopwatch.GetTimestamp();
            Volatile.Write(ref _turn, 0);
        }
        else if (!SpinUntil(cpu, () => Volatile.Read(ref _turn) != NotStarted))
        {
            return null;
        }

        int previous = (id + _cpus - 1) % _cpus;
        for (int round = id, k = 0; round < _rounds; round += _cpus, k++)
        {
            if (!AwaitTurn(cpu, round, va, mine))
            {
                return null;
            }

            if (round > 0)
            {
                Expect(cpu, _vas[previous], Stamp(previous, round - 1));
            }

            _machine.KernelPmap.KEnter(va, owned.Frame(k + 1));
            _machine.KernelPmap.InvalidatePage(va);
            mine = Stamp(id, round);
            cpu.WriteUInt64(va, mine);
            Volatile.Write(ref _turn, round + 1);
        }

        if (!AwaitTurn(cpu, _rounds, va, mine))
        {
            return null;
        }

        // Everyone stops touching memory before CPU 0 reads the counters, so the snapshot holds
        // exactly the rounds; teardown comes after it.
        Interlocked.Increment(ref _finished);
        if (id == 0)
        {
            if (!SpinUntil(cpu, () => Volatile.Read(ref _finished) == _cpus))
            {
                return null;
            }

            _end = Stopwatch.GetTimestamp();
            _after = _machine.Counters();
            Volatile.Write(ref _tearDown, 1);
        }
        else if (!SpinUntil(cpu, () => Volatile.Read(ref _tearDown) != 0))
        {
            return null;
        }

        return owned;
    }

    /// <summary>
    /// Waits for <paramref name="round"/> while touching the CPU's own page (and checking it still
    /// holds this CPU's last stamp) and polling for IPIs. False when another CPU failed.
    /// </summary>
    private bool AwaitTurn(Cpu cpu, int round, ulong va, ulong mine)
    {
        var spin = default(SpinWait);
        while (Volatile.Read(ref _turn) != round)
        {
            if (_aborted)
            {
                return false;
            }

            Expect(cpu, va, mine);
            cpu.Poll();
            spin.SpinOnce(sleep1Threshold: -1);
        }

        return true;
    }

    /// <summary>Spins, servicing IPIs, until <paramref name="done"/>; false when another CPU failed.</summary>
    private bool SpinUntil(Cpu cpu, Func<bool> done)
    {
        var spin = default(SpinWait);
        while (!done())
        {
            if (_aborted)
            {
                return false;
            }

            cpu.Poll();
            spin.SpinOnce(sleep1Threshold: -1);
        }

        return true;
    }

    private static void Expect(Cpu cpu, ulong va, ulong expected)
    {
        ulong seen = cpu.ReadUInt64(va);
        if (seen != expected)
        {
            throw new InvalidOperationException(
                $"cpu {cpu.Id} read 0x{seen:x} at 0x{va:x}, expected 0x{expected:x}: the access went through a stale translation");
        }
    }

    private void TearDown(Owned owned)
    {
        _machine.KernelPmap.KRemove(owned.Va);
        _machine.KernelPmap.InvalidatePage(owned.Va);
        _machine.KernelMap.Free(owned.Va, 1);
        _machine.Physical.Free(owned.Frame(0));
        _machine.Physical.Free(owned.Frame(1));
    }

    /// <summary>The KVA page and the two frames one CPU remaps it between.</summary>
    private sealed record Owned(ulong Va, VmPage Even, VmPage Odd)
    {
        public VmPage Frame(int k) => (k & 1) == 0 ? Even : Odd;
    }
}
