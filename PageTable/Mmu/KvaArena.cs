namespace Native.PageTable;

/// <summary>
/// A kernel virtual address allocator over one region (<c>kernel_map</c>, kmem): a bitmap of
/// pages with next-fit search, behind a kernel mutex. When the region is full, callers either
/// fail at once (<c>M_NOWAIT</c>) or sleep until a free makes room (<c>kmem_alloc_wait</c>),
/// optionally cancellable.
/// </summary>
public sealed class KvaArena
{
    private readonly Machine _machine;
    private readonly ulong[] _used;
    private readonly KMutex _lock;
    private int _hint;
    private int _freePages;

    internal KvaArena(Machine machine, KvaRegion region)
    {
        _machine = machine;
        Region = region;
        _used = new ulong[(region.Pages + 63) / 64];
        _freePages = region.Pages;
        _lock = new KMutex(region.Name);
    }

    /// <summary>The region this arena allocates from.</summary>
    public KvaRegion Region { get; }

    /// <summary>Pages not allocated.</summary>
    public int FreePages => Volatile.Read(ref _freePages);

    /// <summary>Times a caller slept waiting for space.</summary>
    public long Waits { get; private set; }

    /// <summary>Times a no-wait caller found no space.</summary>
    public long Failures { get; private set; }

    /// <summary>
    /// Allocates <paramref name="pages"/> contiguous pages. Returns the address, or 0 when
    /// <paramref name="wait"/> is false and there is no room, or when the wait is cancelled.
    /// </summary>
    public ulong Alloc(int pages, bool wait, CancellationToken cancellation = default) =>
        Alloc(pages, wait, out _, cancellation);

    /// <summary>As <see cref="Alloc(int, bool, CancellationToken)"/>; <paramref name="slept"/> tells whether the caller had to wait.</summary>
    public ulong Alloc(int pages, bool wait, out bool slept, CancellationToken cancellation = default)
    {
        slept = false;
        _machine.ThrowIfDisposed();
        if (pages <= 0 || pages > Region.Pages)
        {
            throw new ArgumentOutOfRangeException(nameof(pages), pages, $"{Region.Name} has {Region.Pages} pages");
        }

        bool stoppedAsleep = false;
        _lock.Lock();
        try
        {
            while (true)
            {
                int first = Find(pages);
                if (first >= 0)
                {
                    Mark(first, pages, used: true);
                    _freePages -= pages;
                    _hint = first + pages;
                    return Region.Start + ((ulong)first << Pte.PageShift);
                }

                if (!wait)
                {
                    Failures++;
                    return 0;
                }

                Waits++;
                slept = true;
                if (_machine.Sleep(this, _lock, cancellation: cancellation) == SleepResult.Interrupted)
                {
                    return 0;
                }
            }
        }
        catch (MachineStoppedException)
        {
            stoppedAsleep = !_lock.IsOwned; // the sleep of a stopping machine throws without retaking the lock
            throw;
        }
        finally
        {
            if (!stoppedAsleep)
            {
                _lock.Unlock();
            }
        }
    }

    /// <summary>Frees an allocation and wakes every waiter (a smaller request may now fit).</summary>
    public void Free(ulong va, int pages)
    {
        _machine.ThrowIfDisposed();
        if (!Region.Contains(va) || (va & Pte.PageMask) != 0 || pages <= 0 || va + ((ulong)pages << Pte.PageShift) > Region.End)
        {
            throw new ArgumentException($"[0x{va:x}, +{pages} pages) is not inside {Region}");
        }

        int first = (int)((va - Region.Start) >> Pte.PageShift);
        _lock.Lock();
        try
        {
            for (int i = first; i < first + pages; i++)
            {
                if (!IsUsed(i))
                {
                    throw new InvalidOperationException($"page 0x{Region.PageAddress(i):x} of {Region.Name} is not allocated (double free?)");
                }
            }

            Mark(first, pages, used: false);
            _freePages += pages;
        }
        finally
        {
            _lock.Unlock();
        }

        _machine.Wakeup(this);
    }

    private bool IsUsed(int page) => (_used[page >> 6] & (1UL << (page & 63))) != 0;

    private void Mark(int first, int pages, bool used)
    {
        for (int i = first; i < first + pages; i++)
        {
            if (used)
            {
                _used[i >> 6] |= 1UL << (i & 63);
            }
            else
            {
                _used[i >> 6] &= ~(1UL << (i & 63));
            }
        }
    }

    private int Find(int pages)
    {
        if (_freePages < pages)
        {
            return -1;
        }

        int n = Region.Pages;
        int start = _hint >= n ? 0 : _hint;
        for (int pass = 0; pass < 2; pass++)
        {
            int run = 0;
            int end = pass == 0 ? n : Math.Min(n, start + pages - 1);
            for (int i = pass == 0 ? start : 0; i < end; i++)
            {
                // Skip whole used words quickly.
                if (run == 0 && (i & 63) == 0 && _used[i >> 6] == ulong.MaxValue)
                {
                    i += 63;
                    continue;
                }

                run = IsUsed(i) ? 0 : run + 1;
                if (run == pages)
                {
                    return i - pages + 1;
                }
            }
        }

        return -1;
    }
}
