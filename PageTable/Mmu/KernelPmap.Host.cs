namespace Native.PageTable;

/// <summary>The kernel pmap's PTE updates on the host backend: each one also changes the host mapping.</summary>
public sealed unsafe partial class KernelPmap
{
    // Null on the simulated backend.
    private readonly HostMmu? _host;

    /// <summary>
    /// The PTE exchange on the host backend. A new mapping is made in the host first and then
    /// published in the PTE word, so an access that sees the valid PTE finds the page mapped; a
    /// clear is published first and then unmapped (re-reserved) in the host. The host kernel
    /// flushes the old translation from every CPU inside that call.
    /// </summary>
    private ulong HostExchange(ulong va, ulong* ptep, ulong pte)
    {
        if (Pte.IsValid(pte))
        {
            _host!.Enter(va, Pte.Frame(pte));
            return Interlocked.Exchange(ref *ptep, pte);
        }

        ulong old = Interlocked.Exchange(ref *ptep, pte);
        if (Pte.IsValid(old))
        {
            _host!.Remove(va, 1);
        }

        return old;
    }

    /// <summary>
    /// <c>pmap_qremove</c>'s PTE clears on the host backend: every PTE is cleared and counted as
    /// on the simulation, then the whole range is re-reserved in one call, so the host kernel
    /// flushes it once, as <c>pmap_qremove</c>'s one range invalidation does.
    /// </summary>
    private void HostQRemove(ulong va, int count)
    {
        var cpu = _machine.CurrentCpu;
        bool mapped = false;
        for (int i = 0; i < count; i++)
        {
            ulong* ptep = Require(va + ((ulong)i << Pte.PageShift));
            ulong page = va + ((ulong)i << Pte.PageShift);
            mapped |= Pte.IsValid(Interlocked.Exchange(ref *ptep, 0));
            cpu.Count(_machine.Layout.KernelMemory.Contains(page) ? Counter.KmemPteWrites : Counter.KernelPteClears);
        }

        if (mapped)
        {
            _host!.Remove(va, count);
        }
    }
}
