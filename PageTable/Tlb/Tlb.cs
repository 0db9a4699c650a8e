using System.Numerics;
using System.Runtime.CompilerServices;

namespace Native.PageTable;

/// <summary>
/// One CPU's software TLB: set-associative, in native memory, written only by the thread that
/// holds the CPU (fills, <c>invlpg</c>, flushes, IPI handlers). Nobody else ever edits it: another
/// CPU that wants an entry gone sends a shootdown.
/// <para>
/// An entry caches the virtual page and a snapshot of the PTE as the walk left it (with
/// <c>PG_A</c>, and <c>PG_M</c> after a write, already set in the page table). Replacement is
/// round-robin within a set.
/// </para>
/// </summary>
internal sealed unsafe class Tlb
{
    private readonly TlbEntry* _entries;
    private readonly byte* _victim;
    private readonly int _ways;
    private readonly ulong _setMask;

    public Tlb(NativeLedger ledger, int entries, int ways)
    {
        if (ways <= 0 || entries <= 0 || entries % ways != 0 || !BitOperations.IsPow2(entries / ways) || ways > 255)
        {
            throw new ArgumentException($"a TLB of {entries} entries and {ways} ways needs a power-of-two number of sets");
        }

        _ways = ways;
        Sets = entries / ways;
        _setMask = (ulong)Sets - 1;
        _entries = (TlbEntry*)ledger.AllocZeroed((nuint)(entries * sizeof(TlbEntry)));
        _victim = (byte*)ledger.AllocZeroed((nuint)Sets);
    }

    public int Sets { get; }

    public int Ways => _ways;

    /// <summary>Finds the entry for <paramref name="vpn"/>, or null.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public TlbEntry* Lookup(ulong vpn)
    {
        ulong tag = vpn + 1;
        TlbEntry* e = _entries + ((int)(vpn & _setMask) * _ways);
        if (_ways == 4)
        {
            // The default geometry, unrolled: the lookup is on every memory access.
            return e[0].Tag == tag ? e : e[1].Tag == tag ? e + 1 : e[2].Tag == tag ? e + 2 : e[3].Tag == tag ? e + 3 : null;
        }

        for (int w = 0; w < _ways; w++, e++)
        {
            if (e->Tag == tag)
            {
                return e;
            }
        }

        return null;
    }

    /// <summary>Caches <paramref name="pte"/> for <paramref name="vpn"/>, replacing an entry if the set is full.</summary>
    public TlbEntry* Insert(ulong vpn, ulong pte) => Insert(vpn, pte, out _);

    /// <summary>
    /// <see cref="Insert(ulong, ulong)"/>, telling what it evicted: the victim's tag (its virtual page
    /// plus one), or 0 when a free way took the entry (checked mode closes the victim's exposure window).
    /// </summary>
    public TlbEntry* Insert(ulong vpn, ulong pte, out ulong evictedTag)
    {
        int set = (int)(vpn & _setMask);
        TlbEntry* first = _entries + (set * _ways);
        TlbEntry* slot = null;
        for (int w = 0; w < _ways; w++)
        {
            if (first[w].Tag == 0)
            {
                slot = first + w;
                break;
            }
        }

        evictedTag = 0;
        if (slot == null)
        {
            int v = _victim[set];
            slot = first + v;
            _victim[set] = (byte)((v + 1) % _ways);
            evictedTag = slot->Tag;
        }

        slot->Pte = pte;
        slot->Tag = vpn + 1;
        return slot;
    }

    /// <summary>
    /// An observer's read (another CPU's, in checked mode): true when an entry caches
    /// <paramref name="vpn"/> to <paramref name="frame"/>. Reads only, with volatile loads: the
    /// owner may be changing the set meanwhile (its protocol with the observer is in Cpu.Exposure.cs).
    /// </summary>
    public bool Holds(ulong vpn, uint frame, out bool global)
    {
        ulong tag = vpn + 1;
        TlbEntry* e = _entries + ((int)(vpn & _setMask) * _ways);
        for (int w = 0; w < _ways; w++, e++)
        {
            ulong pte = Volatile.Read(ref e->Pte);
            if (Volatile.Read(ref e->Tag) == tag && Pte.Frame(pte) == frame)
            {
                global = (pte & Pte.PG_G) != 0;
                return true;
            }
        }

        global = false;
        return false;
    }

    /// <summary><c>invlpg</c>: drops the entry for one page, global or not.</summary>
    public void Invalidate(ulong vpn)
    {
        TlbEntry* e = Lookup(vpn);
        if (e != null)
        {
            e->Tag = 0;
        }
    }

    /// <summary>Drops every entry, global ones included.</summary>
    public void FlushAll() => new Span<TlbEntry>(_entries, Sets * _ways).Clear();

    /// <summary>Drops entries without <c>PG_G</c>: what a CR3 load does on an address-space switch.</summary>
    public void FlushNonGlobal()
    {
        int n = Sets * _ways;
        for (int i = 0; i < n; i++)
        {
            if ((_entries[i].Pte & Pte.PG_G) == 0)
            {
                _entries[i].Tag = 0;
            }
        }
    }

    /// <summary>Number of valid entries (for tests and diagnostics).</summary>
    public int ValidEntries()
    {
        int n = 0;
        for (int i = 0; i < Sets * _ways; i++)
        {
            if (_entries[i].Tag != 0)
            {
                n++;
            }
        }

        return n;
    }
}

/// <summary>One TLB entry: tag is the virtual page number plus one (0 = empty), and the PTE snapshot.</summary>
internal struct TlbEntry
{
    public ulong Tag;
    public ulong Pte;
}
