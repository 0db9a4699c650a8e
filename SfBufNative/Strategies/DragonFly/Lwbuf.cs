using System.Runtime.InteropServices;
using Native.PageTable;

namespace Native.SfBufNative.Strategies.DragonFly;

/// <summary>
/// DragonFly's lwbuf, i386 final form (<c>sys/cpu/i386/misc/lwbuf.c</c>, 2010), over a model of
/// its <c>objcache</c> (<c>kern_objcache.c</c>).
/// <para>
/// Each lwbuf object owns one page of KVA for its whole life: the constructor takes it from
/// <c>kernel_map</c> (<c>kmem_alloc_nofault</c>), and objects are cached, KVA and all, in per-CPU
/// magazines (a loaded and a previous one of <see cref="MagazineCapacity"/> objects, the
/// objcache minimum for lwbuf's zero nominal size) in front of a depot of full magazines behind a
/// spin lock. The cache is unbounded: when no object is cached a new one is built, and when
/// <c>kernel_map</c> has no page left <c>lwbuf_alloc</c> sleeps a tick (<c>tsleep(..., hz)</c>,
/// uninterruptible) and tries again.
/// </para>
/// <para>
/// <c>lwbuf_alloc</c>: take an object, set its page, set its <c>cpumask</c> to this CPU only,
/// <c>pmap_kenter_quick</c> (PTE write and a local <c>invlpg</c>). <c>lwbuf_kva</c> on a CPU not
/// in the mask: a local <c>invlpg</c> (<c>pmap_kenter_sync_quick</c>) and the CPU's bit ORed in,
/// no IPI. <c>lwbuf_set_global</c>: unless the mask is already full, a shootdown (to the CPUs
/// missing from the mask) and the mask set full. <c>lwbuf_free</c>: clear page and mask, put the
/// object back in this CPU's magazine; the PTE stays. There is no page index: a page mapped twice
/// gets two objects.
/// </para>
/// <para>
/// Memory ordering: the <c>cpumask</c> is the one datum CPUs share without a lock. Each CPU only
/// ever adds its own bit (in <see cref="Kva"/>, after its own <c>invlpg</c>, with an atomic OR
/// of its word so that no concurrent OR by another CPU is lost), and it is reset only by <c>lwbuf_alloc</c>
/// and <c>lwbuf_free</c>, which run before the handle is shared and after the last use. The
/// handle reaches other CPUs through the caller's own synchronisation, which orders the reset
/// and the new PTE before their <see cref="Kva"/>. The magazines are per-CPU data of the thread
/// holding the CPU (successive holders are ordered by the scheduler's lock); the depot is behind
/// its spin lock.
/// </para>
/// </summary>
internal sealed unsafe class Lwbuf
{
    /// <summary>Objects per magazine: objcache's minimum, which lwbuf's zero nominal size gets.</summary>
    public const int MagazineCapacity = 4;

    private const int MagsPerCpu = 2;
    private const int PerCpuInts = 16; // one 64-byte line: loaded rounds, previous rounds, 2 x 4 ids, padding
    private const ulong LwbufProt = Pte.PG_V | Pte.PG_RW | Pte.PG_G;

    private readonly Machine _machine;
    private readonly KvaArena _kernelMap;
    private readonly LwbufObject* _objects;
    private readonly int _maxObjects;
    private readonly int* _perCpu;
    private readonly int* _depot; // full magazines, MagazineCapacity ids each
    private readonly KMutex _depotLock = new("objcache depot", spinOnly: true);
    private readonly object _tsleepChannel = new();
    private int _objectCount;
    private int _depotFull;
    private int _count;
    private int _peak;
    private long _allocs;
    private long _kvaSyncs;
    private long _setGlobalSyncs;
    private long _tsleeps;
    private long _failures;

    public Lwbuf(Machine machine)
    {
        _machine = machine;
        _kernelMap = machine.KernelMap;
        _maxObjects = _kernelMap.Region.Pages;
        _objects = (LwbufObject*)machine.Ledger.AllocZeroed((nuint)_maxObjects * (nuint)sizeof(LwbufObject));
        _perCpu = (int*)machine.Ledger.AllocZeroed((nuint)(machine.Options.Cpus * PerCpuInts * sizeof(int)), 64);
        _depot = (int*)machine.Ledger.AllocZeroed((nuint)(_maxObjects + MagazineCapacity) * sizeof(int));
    }

    /// <summary>Planted bug (tests): remapping ORs the new CPU into the old mask instead of resetting it (Dillon's review).</summary>
    internal bool PlantOredMask { get; set; }

    /// <summary><c>kern.ipc.lwbuf_count</c>: lwbufs allocated now.</summary>
    public int Count => Volatile.Read(ref _count);

    public int Peak => Volatile.Read(ref _peak);

    /// <summary>Objects built so far, each holding a page of KVA (<c>kern.ipc.lwbuf_kva_bytes</c> / PAGE_SIZE).</summary>
    public int Objects => Volatile.Read(ref _objectCount);

    public long Allocs => Interlocked.Read(ref _allocs);

    /// <summary>One-tick sleeps waiting for KVA.</summary>
    public long Tsleeps => Interlocked.Read(ref _tsleeps);

    public long Failures => Interlocked.Read(ref _failures);

    /// <summary><c>lwbuf_kva</c> calls that found their CPU missing from the mask (one local invlpg each).</summary>
    public long KvaSyncs => Interlocked.Read(ref _kvaSyncs);

    /// <summary><c>lwbuf_set_global</c> calls that shot the mapping down on other CPUs.</summary>
    public long SetGlobalSyncs => Interlocked.Read(ref _setGlobalSyncs);

    /// <summary>True when <paramref name="va"/> is an lwbuf object's address.</summary>
    public bool Owns(ulong va) => _kernelMap.Region.Contains(va);

    /// <summary>
    /// <c>lwbuf_alloc</c>: an object mapping <paramref name="page"/> on this CPU; -1 when
    /// <paramref name="noWait"/> and no KVA is left.
    /// </summary>
    public int Alloc(KernelThread td, VmPage page, bool noWait)
    {
        int id;
        while ((id = ObjcacheGet(td)) < 0)
        {
            if (noWait)
            {
                Interlocked.Increment(ref _failures);
                return -1;
            }

            Interlocked.Increment(ref _tsleeps);
            _machine.Sleep(_tsleepChannel, timeout: TimeSpan.FromMilliseconds(10)); // tsleep(lwbuf_cache, 0, "lwbuf", hz)
        }

        // The CPU is read here, after ObjcacheGet and the tsleep above, either of which may give
        // the CPU up (a new object takes kernel_map's sleep mutex).
        var cpu = td.Cpu!;
        LwbufObject* o = _objects + id;
        if (o->HasPage != 0)
        {
            throw new InvalidOperationException($"lwbuf_alloc: object {id} still maps frame 0x{o->Frame:x} (KKASSERT(lwb->m == NULL))");
        }

        o->Frame = page.Frame;
        o->HasPage = 1;
        o->Generation++;
        if (PlantOredMask)
        {
            CpuSet.AtomicAdd(ref o->CpuMask, cpu.Id);
        }
        else
        {
            CpuSet.VolatileWrite(ref o->CpuMask, cpu.Mask);
        }

        // pmap_kenter_quick: the PTE and a local invlpg.
        _machine.KernelPmap.ExchangePte(o->Kva, Pte.Make(page.Frame, LwbufProt));
        _machine.KernelPmap.CountMapping(1);
        cpu.InvalidateLocal(o->Kva >> Pte.PageShift);
        Interlocked.Increment(ref _allocs);
        int count = Interlocked.Increment(ref _count);
        HighWater.Raise(ref _peak, count);

        return id;
    }

    /// <summary>The object's address and generation (for handles).</summary>
    public (ulong Kva, int Generation) Describe(int id) => (_objects[id].Kva, _objects[id].Generation);

    /// <summary><c>lwbuf_kva</c> on the calling thread's CPU.</summary>
    public ulong Kva(Cpu cpu, SfBuf sf)
    {
        LwbufObject* o = Check(sf);

        // Check, then act, on a word other CPUs write: only this CPU sets its bit (below, after
        // its invlpg; or lwbuf_alloc on this CPU, after the PTE and its invlpg), and nobody clears
        // it while the handle is live. So the bit means this CPU has invalidated since the PTE
        // was written; the acquire read keeps the access that follows after it.
        if (CpuSet.VolatileContains(ref o->CpuMask, cpu.Id))
        {
            return o->Kva;
        }

        // _lwbuf_kva: pmap_kenter_sync_quick (a local invlpg), then OR this CPU in.
        cpu.InvalidateLocal(o->Kva >> Pte.PageShift);
        CpuSet.AtomicAdd(ref o->CpuMask, cpu.Id);
        Interlocked.Increment(ref _kvaSyncs);
        return o->Kva;
    }

    /// <summary><c>lwbuf_set_global</c>: valid on every CPU from now on.</summary>
    public void SetGlobal(Cpu cpu, int id)
    {
        LwbufObject* o = _objects + id;
        var all = _machine.AllCpusMask;

        // Called by lwbuf_alloc's caller before the handle is shared, so no lwbuf_kva can OR a
        // bit in between this read and the store of all ones below; that store is a release,
        // after the shootdown has been acknowledged.
        var mask = CpuSet.VolatileRead(ref o->CpuMask);
        if (mask == all)
        {
            return;
        }

        // pmap_kenter_sync: a cross-CPU invalidation of the address, to the CPUs that may hold an
        // old translation (those missing from the mask); this CPU is in it since lwbuf_alloc.
        if (!mask.Contains(cpu.Id))
        {
            cpu.InvalidateLocal(o->Kva >> Pte.PageShift);
        }

        var others = all.Except(mask);
        others.Remove(cpu.Id);
        if (cpu.Shootdown(others, ShootdownKind.Page, o->Kva) > 0)
        {
            Interlocked.Increment(ref _setGlobalSyncs);
        }

        CpuSet.VolatileWrite(ref o->CpuMask, all);
    }

    /// <summary><c>lwbuf_free</c>: back into this CPU's magazine; the PTE stays.</summary>
    public void Free(KernelThread td, SfBuf sf)
    {
        LwbufObject* o = Check(sf);
        o->HasPage = 0;
        if (!PlantOredMask)
        {
            CpuSet.VolatileWrite(ref o->CpuMask, CpuSet.Empty);
        }

        ObjcachePut(td, sf.Slot);
        Interlocked.Decrement(ref _count);
    }

    /// <summary>An object's cpumask (tests).</summary>
    internal CpuSet MaskOf(int id) => CpuSet.VolatileRead(ref _objects[id].CpuMask);

    private LwbufObject* Check(SfBuf sf)
    {
        if ((uint)sf.Slot >= (uint)_objectCount)
        {
            throw new ArgumentException($"{sf} is not an lwbuf", nameof(sf));
        }

        LwbufObject* o = _objects + sf.Slot;
        if (o->HasPage == 0 || o->Frame != sf.Page.Frame || o->Generation != sf.Generation || o->Kva != sf.Kva)
        {
            throw new InvalidOperationException($"stale lwbuf handle {sf}: the object was freed (double free?) or now maps another page");
        }

        return o;
    }

    // ------------------------------------------------------------ objcache

    private int* Magazines(int cpu) => _perCpu + (cpu * PerCpuInts);

    /// <summary><c>objcache_get</c>: loaded magazine, previous magazine, a full one from the depot, or a new object; -1 without KVA.</summary>
    private int ObjcacheGet(KernelThread td)
    {
        // The per-CPU part runs without a switch (crit_enter): the magazines are this CPU's, and
        // the depot's lock is a spin mutex. Only Construct may block (kernel_map's sleep mutex)
        // and resume the thread on another CPU: m is not used after it.
        int* m = Magazines(td.Cpu!.Id);
        int* loadedRounds = m;
        int* previousRounds = m + 1;
        int* loaded = m + 2;
        int* previous = m + 2 + MagazineCapacity;
        if (*loadedRounds > 0)
        {
            return loaded[--*loadedRounds];
        }

        if (*previousRounds > 0)
        {
            SwapMagazines(m);
            return loaded[--*loadedRounds];
        }

        _depotLock.Lock(td);
        try
        {
            if (_depotFull > 0)
            {
                // Exchange our empty loaded magazine for a full one.
                _depotFull--;
                new ReadOnlySpan<int>(_depot + (_depotFull * MagazineCapacity), MagazineCapacity).CopyTo(new Span<int>(loaded, MagazineCapacity));
                *loadedRounds = MagazineCapacity;
                return loaded[--*loadedRounds];
            }
        }
        finally
        {
            _depotLock.Unlock(td);
        }

        return Construct();
    }

    /// <summary><c>objcache_put</c>: loaded magazine, else swap with an empty previous one, else hand the full one to the depot.</summary>
    private void ObjcachePut(KernelThread td, int id)
    {
        int* m = Magazines(td.Cpu!.Id);
        int* loadedRounds = m;
        int* previousRounds = m + 1;
        int* loaded = m + 2;
        if (*loadedRounds < MagazineCapacity)
        {
            loaded[(*loadedRounds)++] = id;
            return;
        }

        if (*previousRounds == 0)
        {
            SwapMagazines(m);
            loaded[(*loadedRounds)++] = id;
            return;
        }

        _depotLock.Lock(td);
        try
        {
            new ReadOnlySpan<int>(loaded, MagazineCapacity).CopyTo(new Span<int>(_depot + (_depotFull * MagazineCapacity), MagazineCapacity));
            _depotFull++;
        }
        finally
        {
            _depotLock.Unlock(td);
        }

        *loadedRounds = 0;
        loaded[(*loadedRounds)++] = id;
    }

    private static void SwapMagazines(int* m)
    {
        var loaded = new Span<int>(m + 2, MagazineCapacity);
        var previous = new Span<int>(m + 2 + MagazineCapacity, MagazineCapacity);
        Span<int> tmp = stackalloc int[MagazineCapacity];
        loaded.CopyTo(tmp);
        previous.CopyTo(loaded);
        tmp.CopyTo(previous);
        (m[0], m[1]) = (m[1], m[0]);
    }

    /// <summary><c>lwbuf_cache_ctor</c>: a new object with its own page of KVA (<c>kmem_alloc_nofault</c>), or -1.</summary>
    private int Construct()
    {
        ulong kva = _kernelMap.Alloc(1, wait: false);
        if (kva == 0)
        {
            return -1;
        }

        int id = Interlocked.Increment(ref _objectCount) - 1;
        LwbufObject* o = _objects + id;
        o->Kva = kva;
        return id;
    }
}

/// <summary>One <c>struct lwbuf</c> in native memory.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct LwbufObject
{
    /// <summary>CPUs known to hold no stale translation for <see cref="Kva"/> (up to <see cref="CpuSet.Capacity"/>).</summary>
    public CpuSet CpuMask;

    /// <summary>The object's page of KVA, for its whole life.</summary>
    public ulong Kva;

    public uint Frame;
    public int HasPage;
    public int Generation;
    public int Reserved;
}
