using System.Runtime.CompilerServices;
using Native.PageTable;

namespace Native.SfBufNative;

/// <summary>
/// <c>sfbuf-amd64</c>: the direct map. The sf_buf is the page itself; its KVA is
/// <c>DMAP_BASE + physical address</c>; Free does nothing. It never fails, sleeps, writes a
/// PTE or invalidates a TLB entry, because direct-map PTEs never change.
/// <para>
/// Unchecked, Alloc is address arithmetic and nothing else (no statistics: FreeBSD's amd64
/// sf_buf keeps none either). Checked, it also validates the page and the pin, and keeps a
/// native per-frame count of outstanding handles so that a double free is caught.
/// </para>
/// </summary>
public sealed unsafe class DirectMapMapper : SfBufMapper
{
    private readonly ulong _dmapBytes;
    private readonly int* _outstanding;

    internal DirectMapMapper(Machine machine)
        : base(machine)
    {
        _dmapBytes = machine.Layout.DirectMapBytes;
        try
        {
            if (_dmapBytes == 0 || machine.Options.ExclusivePageOwnership)
            {
                throw new InvalidOperationException("sfbuf-amd64 needs the whole direct map: boot the machine with MachineFlavor.Amd64");
            }

            if (Checked)
            {
                _outstanding = (int*)machine.Ledger.AllocZeroed((nuint)machine.Physical.FrameCount * sizeof(int));
            }
        }
        catch
        {
            Dispose(); // the instruments
            throw;
        }
    }

    /// <inheritdoc/>
    public override string Name => Amd64;

    /// <inheritdoc/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    protected override SfBuf AllocCore(VmPage page, SfBufFlags flags = SfBufFlags.Default, CancellationToken cancellation = default)
    {
        ulong pa = page.PhysicalAddress;
        if (Checked)
        {
            CheckedAlloc(page, flags);
        }
        else if (pa >= _dmapBytes)
        {
            throw new ArgumentOutOfRangeException(nameof(page), $"{page} is outside physical memory");
        }

        return new SfBuf(VmLayout.DMAP_BASE + pa, page, -1, Id);
    }

    /// <inheritdoc/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    protected override void FreeCore(SfBuf sf)
    {
        if (Checked)
        {
            CheckedFree(sf);
        }
    }

    /// <inheritdoc/>
    public override SfBufStats Stats() => new() { Strategy = Name, AllocFail = AllocFailCount };

    private void CheckedAlloc(VmPage page, SfBufFlags flags)
    {
        Machine.Physical.CheckFrame(page.Frame);
        CheckAlloc(page, flags);
        if (Interlocked.Increment(ref _outstanding[page.Frame]) == int.MaxValue)
        {
            Interlocked.Decrement(ref _outstanding[page.Frame]);
            throw new OverflowException($"reference count of the direct-map sf_buf of {page} overflows");
        }
    }

    private void CheckedFree(SfBuf sf)
    {
        CheckOwner(sf);
        if (sf.Kva != VmLayout.DMAP_BASE + sf.Page.PhysicalAddress)
        {
            throw new ArgumentException($"{sf} is not a direct-map handle", nameof(sf));
        }

        if (Interlocked.Decrement(ref _outstanding[sf.Page.Frame]) < 0)
        {
            Interlocked.Increment(ref _outstanding[sf.Page.Frame]);
            throw new InvalidOperationException($"double free of {sf}: it has no outstanding allocation");
        }
    }
}
