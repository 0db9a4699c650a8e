using System.Runtime.InteropServices;

namespace Native.PageTable;

/// <summary>
/// Every native allocation a machine makes goes through its ledger, so that <c>Dispose</c>
/// provably returns every byte (<see cref="OutstandingBytes"/> is back to zero) and tests can
/// check it. Allocation happens at set-up and on slow paths only.
/// </summary>
internal sealed unsafe class NativeLedger
{
    private static long s_processOutstanding;

    // Fault injection (tests): allocations this thread may still make before one is refused; -1 = no limit.
    [ThreadStatic]
    private static int s_allocationsLeft;

    [ThreadStatic]
    private static bool s_limited;

    private readonly Dictionary<nint, nuint> _blocks = [];
    private readonly Lock _lock = new();
    private long _outstanding;

    /// <summary>Native bytes held by all ledgers of this process.</summary>
    public static long ProcessOutstandingBytes => Volatile.Read(ref s_processOutstanding);

    /// <summary>Native bytes held by this ledger.</summary>
    public long OutstandingBytes => Volatile.Read(ref _outstanding);

    /// <summary>Zeroed, aligned native memory.</summary>
    public void* AllocZeroed(nuint bytes, nuint alignment = 64)
    {
        void* p = Alloc(bytes, alignment);
        NativeMemory.Clear(p, bytes);
        return p;
    }

    /// <summary>
    /// Aligned native memory, not touched: for the page-frame arena this keeps memory lazily
    /// committed (the host kernel maps zero pages on first touch).
    /// </summary>
    public void* Alloc(nuint bytes, nuint alignment = 64)
    {
        if (bytes == 0)
        {
            bytes = 1;
        }

        if (s_limited && s_allocationsLeft-- <= 0)
        {
            throw new NativeAllocationException(bytes);
        }

        void* p = NativeMemory.AlignedAlloc(bytes, alignment);
        lock (_lock)
        {
            _blocks.Add((nint)p, bytes);
        }

        Interlocked.Add(ref _outstanding, (long)bytes);
        Interlocked.Add(ref s_processOutstanding, (long)bytes);
        return p;
    }

    /// <summary>
    /// Tests: lets the calling thread make <paramref name="allocations"/> more native allocations,
    /// then refuses the next one with <see cref="NativeAllocationException"/>, as an exhausted
    /// host would; null lifts the limit.
    /// </summary>
    public static void TestHookLimitAllocations(int? allocations)
    {
        s_limited = allocations.HasValue;
        s_allocationsLeft = allocations ?? 0;
    }

    /// <summary>Frees a block this ledger allocated; a foreign or freed pointer throws.</summary>
    public void Free(void* p)
    {
        nuint bytes;
        lock (_lock)
        {
            if (!_blocks.Remove((nint)p, out bytes))
            {
                throw new InvalidOperationException($"native block 0x{(nint)p:x} is not held by this machine (double free?)");
            }
        }

        NativeMemory.AlignedFree(p);
        Interlocked.Add(ref _outstanding, -(long)bytes);
        Interlocked.Add(ref s_processOutstanding, -(long)bytes);
    }

    /// <summary>Frees everything still held.</summary>
    public void FreeAll()
    {
        nint[] blocks;
        lock (_lock)
        {
            blocks = [.. _blocks.Keys];
        }

        foreach (nint p in blocks)
        {
            Free((void*)p);
        }
    }
}
