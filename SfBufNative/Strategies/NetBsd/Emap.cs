using Native.PageTable;

namespace Native.SfBufNative.Strategies.NetBsd;

/// <summary>
/// NetBSD's ephemeral mapping interface, <c>uvm_emap</c> (<c>sys/uvm/uvm_emap.c</c> rev 1.11,
/// with the x86 <c>pmap_emap_enter</c>/<c>pmap_emap_remove</c>/<c>pmap_emap_sync</c>).
/// <para>
/// A window of KVA (the sf_buf window here) handed out by a vmem-like allocator
/// (<c>uvm_emap_alloc</c>, which may sleep uninterruptibly). A global generation counter on its
/// own cache line, one per CPU ("this CPU's TLB has been fully flushed since the global counter
/// had this value": what <c>uvm_emap_consume</c> compares with and advances) and one per thread
/// (<c>l_emap_gen</c>: the CPU's generation when the thread last consumed, which
/// <c>uvm_emap_switch</c> compares with the CPU it resumes on). PTEs are written read-only
/// (<c>pmap_emap_enter(va, pa, VM_PROT_READ)</c>: a write through them faults) and without
/// <c>PG_G</c>, so any non-global flush removes them.
/// </para>
/// <para>
/// <c>uvm_emap_enter</c> writes the PTE with no invalidation at all and <c>uvm_emap_produce</c>
/// increments the global generation, skipping the inactive value 0. <c>uvm_emap_consume(gen)</c>,
/// on the CPU that is about to read: nothing when the CPU is not older than <c>gen</c> (signed
/// 32-bit difference, safe across wrap); otherwise read the global generation first, flush the
/// non-global TLB, then publish what was read. <c>uvm_emap_remove</c> clears the PTE, again with
/// no invalidation. A thread that resumes on a CPU older than its own generation flushes there
/// (<c>uvm_emap_switch</c>), and every whole-TLB flush done for another reason (address-space
/// switch, a flush an IPI asks for, an idle CPU's deferred flush) advances the CPU's generation
/// to the value sampled before it (<c>uvm_emap_update</c>). Never an IPI.
/// </para>
/// <para>
/// Memory ordering (the runtime may run on a weakly ordered CPU): one publication matters, a PTE
/// store followed by the generation that announces it. The store is an interlocked exchange and
/// the increment an interlocked add, both full fences, and the consumer side reads the global
/// generation with acquire semantics before it flushes (<see cref="Flushing"/>), so a CPU whose
/// generation covers a mapping refills its TLB from that mapping's PTE. The per-CPU generations
/// are read and written by the thread holding the CPU only; successive holders are ordered by the
/// scheduler's lock. The generation a consumer passes came with the handle, through whatever
/// ordered the producer's allocation before the use (a queue, a lock, a join).
/// </para>
/// </summary>
internal sealed unsafe class Emap : IContextSwitchHook, ITlbFlushHook, IDisposable
{
    /// <summary><c>UVM_EMAP_INACTIVE</c>: never produced; a thread that never consumed has it.</summary>
    public const uint Inactive = 0;

    private const int GenStride = 16; // uints: one cache line per CPU
    // VM_PROT_READ: no PG_RW, so a write faults; no PG_G, so a non-global flush removes it.
    private const ulong EmapProt = Pte.PG_V;

    private readonly Machine _machine;
    private readonly KvaArena _window;
    private readonly uint* _globalGen; // its own cache line
    private readonly uint* _cpuGen;
    private readonly ThreadLocal<uint> _lwpGen = new();
    private long _produces;
    private long _consumes;
    private long _consumeFlushes;
    private long _switchFlushes;
    private long _advances;
    private long _failures;
    private int _used;
    private int _peak;

    public Emap(Machine machine, int? windowPages)
    {
        _machine = machine;
        var window = machine.Layout.SfBufWindow;
        int pages = windowPages ?? machine.Options.EffectiveSfBufWindowPages; // nsfbufs, not the window's per-CPU KVA
        if (pages < 1 || pages > window.Pages)
        {
            throw new ArgumentOutOfRangeException(nameof(windowPages), pages, $"the emap window must be 1 to the sf_buf window's {window.Pages} pages");
        }

        _window = new KvaArena(machine, new KvaRegion("emap window", window.Start, pages));
        _globalGen = (uint*)machine.Ledger.AllocZeroed(64, 64);
        *_globalGen = 1;
        _cpuGen = (uint*)machine.Ledger.AllocZeroed((nuint)(machine.Options.Cpus * GenStride * sizeof(uint)), 64);
        for (int c = 0; c < machine.Options.Cpus; c++)
        {
            _cpuGen[c * GenStride] = 1;
        }

        machine.AddContextSwitchHook(this);
        machine.AddTlbFlushHook(this);
    }

    /// <summary>Pages of the emap window.</summary>
    public int WindowPages => _window.Region.Pages;

    public int Used => Volatile.Read(ref _used);

    public int Peak => Volatile.Read(ref _peak);

    public long Produces => Interlocked.Read(ref _produces);

    /// <summary>Sleeps for room in the window (counted as they begin).</summary>
    public long Waits => _window.Waits;

    public long Failures => Interlocked.Read(ref _failures);

    /// <summary>The global generation (tests).</summary>
    public uint GlobalGeneration => Volatile.Read(ref *_globalGen);

    /// <summary>A CPU's generation (tests).</summary>
    public uint CpuGeneration(int cpu) => Volatile.Read(ref _cpuGen[cpu * GenStride]);

    /// <summary>True when <paramref name="va"/> lies in the emap window.</summary>
    public bool Owns(ulong va) => _window.Region.Contains(va);

    public void AddDetails(Dictionary<string, long> details)
    {
        details["emap.produces"] = Produces;
        details["emap.consumes"] = Interlocked.Read(ref _consumes);
        details["emap.consume_flushes"] = Interlocked.Read(ref _consumeFlushes);
        details["emap.switch_flushes"] = Interlocked.Read(ref _switchFlushes);
        // Every advance of a CPU's generation follows a whole-TLB flush; those not done by
        // consume or switch were done for another reason and served emap for free.
        details["emap.piggybacked"] = Interlocked.Read(ref _advances) - Interlocked.Read(ref _consumeFlushes) - Interlocked.Read(ref _switchFlushes);
        details["emap.window_waits"] = Waits;
    }

    /// <summary><c>uvm_emap_alloc(PAGE_SIZE)</c> + <c>uvm_emap_enter</c> + <c>uvm_emap_produce</c>: the address and its generation; 0 when <paramref name="noWait"/> and the window is full.</summary>
    public ulong Map(VmPage page, bool noWait, out uint gen)
    {
        ulong va = _window.Alloc(1, wait: !noWait);
        if (va == 0)
        {
            Interlocked.Increment(ref _failures);
            gen = Inactive;
            return 0;
        }

        // pmap_emap_enter: the PTE, no invalidation anywhere. Then uvm_emap_produce: the PTE store
        // (an interlocked exchange) comes before the interlocked increment, so any CPU that reads
        // a global generation at least gen (Flushing's acquire read) sees this PTE afterwards.
        _machine.KernelPmap.ExchangePte(va, Pte.Make(page.Frame, EmapProt));
        _machine.KernelPmap.CountMapping(1);
        gen = Produce();
        int used = Interlocked.Increment(ref _used);
        HighWater.Raise(ref _peak, used);

        return va;
    }

    /// <summary><c>uvm_emap_remove</c> + <c>uvm_emap_free</c>: the PTE is cleared, nothing is invalidated.</summary>
    public void Unmap(ulong va)
    {
        // No barrier: the stale translations left behind are harmless until a consume of a newer
        // generation, and the window's mutex orders this clear before the page's next Map.
        _machine.KernelPmap.ExchangePte(va, 0);
        Interlocked.Decrement(ref _used); // before the page can be handed out again
        _window.Free(va, 1);
    }

    /// <summary><c>uvm_emap_consume(gen)</c> on <paramref name="cpu"/>, the calling thread's CPU.</summary>
    public void Consume(Cpu cpu, uint gen)
    {
        if (gen == Inactive)
        {
            return;
        }

        Interlocked.Increment(ref _consumes);

        // A plain read: only the thread holding the CPU reads or writes its generation.
        ref uint mine = ref _cpuGen[cpu.Id * GenStride];
        if (!IsOlder(mine, gen))
        {
            // The CPU has consumed gen already (whichever thread made it flush): nothing to do
            // but record the CPU's generation in the thread (l->l_emap_gen = ucpu->emap_gen).
            // That never lowers the thread's: a thread runs only on a CPU at least as new as it
            // (SwitchIn flushes one that is behind), and a CPU's generation only grows.
            _lwpGen.Value = mine;
            return;
        }

        // pmap_emap_sync: the flush hook samples the global generation before the flush and
        // publishes it on this CPU after (see Flushing/Flushed); the thread records it too.
        Interlocked.Increment(ref _consumeFlushes);
        cpu.FlushNonGlobalForMapping();
        _lwpGen.Value = mine;
    }

    /// <summary>The calling thread's <c>l_emap_gen</c>: its CPU's generation when it last consumed (tests).</summary>
    public uint ThreadGeneration => _lwpGen.Value;

    /// <inheritdoc/>
    public void SwitchOut(Cpu cpu, KernelThread thread)
    {
    }

    /// <inheritdoc/>
    public void SwitchIn(Cpu cpu, KernelThread thread, int migratedFrom)
    {
        // uvm_emap_switch: a thread that consumed a generation this CPU has not reached flushes here.
        // This thread holds the CPU now; the previous holder's updates of its generation are
        // ordered before this read by the scheduler's lock, so plain reads suffice.
        uint gen = _lwpGen.IsValueCreated ? _lwpGen.Value : Inactive;
        if (gen == Inactive || !IsOlder(_cpuGen[cpu.Id * GenStride], gen))
        {
            return;
        }

        Interlocked.Increment(ref _switchFlushes);
        cpu.FlushNonGlobalForMapping();
    }

    /// <inheritdoc/>
    /// <remarks>
    /// The global generation is sampled with an acquire read before the flush (NetBSD:
    /// "pmap_emap_sync() must implicitly perform a full memory barrier, which prevents us from
    /// fetching a value from after the TLB flush"): the page walks that refill the TLB after the
    /// flush cannot move before this read, so they see every PTE stored before the increment that
    /// produced the value read. A stale, smaller value is harmless: the CPU records less than it could.
    /// </remarks>
    public long Flushing(Cpu cpu, bool global) => Volatile.Read(ref *_globalGen);

    /// <inheritdoc/>
    public void Flushed(Cpu cpu, bool global, long token)
    {
        // uvm_emap_update: only the owner of the CPU writes its generation (the volatile store is
        // for the tests' reads from other threads; the owner's own reads need nothing).
        ref uint mine = ref _cpuGen[cpu.Id * GenStride];
        uint gen = (uint)token;
        if (IsOlder(mine, gen))
        {
            Volatile.Write(ref mine, gen);
            Interlocked.Increment(ref _advances);
        }
    }

    public void Dispose()
    {
        _machine.RemoveContextSwitchHook(this);
        _machine.RemoveTlbFlushHook(this);
        _lwpGen.Dispose();
    }

    /// <summary><c>uvm_emap_gen_is_older</c>-style wrap-safe comparison: is <paramref name="a"/> older than <paramref name="b"/>?</summary>
    internal static bool IsOlder(uint a, uint b) => (int)(a - b) < 0;

    /// <summary><c>uvm_emap_produce</c>: a new generation, never the inactive value.</summary>
    private uint Produce()
    {
        uint gen;
        do
        {
            gen = Interlocked.Increment(ref *_globalGen);
        }
        while (gen == Inactive);

        Interlocked.Increment(ref _produces);
        return gen;
    }
}
