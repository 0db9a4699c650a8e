using Native.PageTable;
using Native.SfBufNative.Strategies.Linux;

namespace Native.SfBufNative.Strategies.Asi;

/// <summary>
/// <c>asi-ephmap</c>: Address Space Isolation's <c>ephmap_get</c> / <c>ephmap_put</c>
/// (<c>mm/ephmap.c</c>, ASI branch) for private users, <c>kmap</c> for shared ones.
/// <para>
/// A private user disables migration, then calls <c>ephmap_get</c>; the handle holds the CPU's
/// region of its address space until <c>Free</c>, which calls <c>ephmap_put</c> and
/// enables migration. When <c>ephmap_get</c> returns NULL (another thread of the same address
/// space holds this CPU's region, or this thread already holds it) the adapter does what ASI's
/// callers do with NULL, the slow path: it falls back to <c>kmap</c> with the caller's flags
/// (counted in <c>ephmap.failures</c>, and in <c>ephmap.fallbacks</c> when kmap gave a mapping), so a waiting caller may wait
/// for a kmap slot and a <see cref="SfBufFlags.NoWait"/> caller gets <see cref="SfBuf.None"/> only
/// when kmap has no slot either. ASI maps nothing ephemerally for shared users (a mapping used on
/// several CPUs needs the shootdown ephmap exists to avoid); they get <c>kmap</c>.
/// </para>
/// </summary>
public sealed class AsiEphmapMapper : LinuxHighmemMapper
{
    private readonly Ephmap _ephmap;
    private readonly PerCpuCount _fallbacks;

    internal AsiEphmapMapper(Machine machine, int? lastPkmap)
        : base(machine, lastPkmap)
    {
        _fallbacks = new PerCpuCount(machine);
        _ephmap = new Ephmap(machine);
    }

    /// <summary>The detail counter of <c>ephmap_get</c> calls that returned NULL.</summary>
    public const string DetailFailures = "ephmap.failures";

    /// <inheritdoc/>
    public override string Name => AsiEphmap;

    /// <summary>The mechanism (tests).</summary>
    internal Ephmap Mechanism => _ephmap;

    private protected override long PrivateMaps => _ephmap.Gets;

    private protected override SfBuf MapPrivate(KernelThread td, VmPage page)
    {
        td.PinSelf(); // migrate_disable
        ulong va = _ephmap.Get(td, new ReadOnlySpan<VmPage>(in page), out int slot, out int generation);
        if (va == 0)
        {
            td.UnpinSelf(); // migrate_enable: the slow path has no CPU-local mapping to keep
            return SfBuf.None;
        }

        return new SfBuf(va, page, slot, Id, generation);
    }

    private protected override void PrivateFellBack(KernelThread td) => _fallbacks.Increment(td.Cpu!);

    private protected override bool UnmapPrivate(KernelThread td, SfBuf sf)
    {
        if (!_ephmap.Owns(sf.Kva))
        {
            return false;
        }

        _ephmap.Put(td, sf.Kva, 1, GenerationOf(sf));
        td.UnpinSelf(); // migrate_enable
        return true;
    }

    private protected override void AddDetails(Dictionary<string, long> details)
    {
        details["ephmap.gets"] = _ephmap.Gets;
        details[DetailFailures] = _ephmap.Failures;
        details["ephmap.fallbacks"] = _fallbacks.Value;
        details["ephmap.invlpgs"] = _ephmap.Invlpgs;
        details["ephmap.full_flushes"] = _ephmap.FullFlushes;
        details["ephmap.switch_saves"] = _ephmap.SwitchSaves;
        details["ephmap.switch_restores"] = _ephmap.SwitchRestores;
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _ephmap.Dispose();
        }

        base.Dispose(disposing);
    }
}
