using System.Text;
using CsCheck;
using Native.PageTable;
using Native.SfBufNative;
using NUnit.Framework;
using SfBufHandle = Native.SfBufNative.SfBuf;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.SfBuf;

/// <summary>
/// sfbuf-i386 against a plain managed model of reference A.3 (hash, LRU free list, reference
/// counts, cpumasks, PG_A, used/peak, and the TLB work each operation must do), driven by
/// random operation sequences from CsCheck with shrinking.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class I386ModelTests
{
    private const int Nsfbufs = 6;
    private const int Pages = 12;

    [Test]
    public void RandomAllocFreeAndTouchSequencesAgreeWithAPlainModelOfTheCache()
    {
        using var m = new SimMachine(SfBufRig.Small());
        var pages = SfBufRig.NewPages(m, Pages);
        CachedMappings? current = null;
        long cases = 0, failures = 0, recycles = 0, hits = 0, shootdowns = 0, keptMasks = 0;

        // Every Alloc and Free needs kernel-thread context: the whole sampling runs on one
        // kernel thread bound to CPU 0, on one CsCheck thread; each case gets a fresh mapper.
        var initial = Gen.Const(() =>
        {
            if (current != null)
            {
                Tally(current.Model);
                current.Dispose();
            }

            current = new CachedMappings(m, pages);
            cases++;
            return (current, current.Model);
        });

        void Tally(CacheModel model)
        {
            failures += model.Failures;
            recycles += model.Recycles;
            hits += model.Hits;
            shootdowns += model.ShootdownRounds;
            keptMasks += model.KeptMasks;
        }

        var allocShared = Gen.Int[0, Pages - 1].Operation<CachedMappings, CacheModel>(
            k => $"AllocShared({k})", (a, k) => a.Alloc(k, SfBufFlags.NoWait), (o, k) => o.Alloc(k, cpuPrivate: false));
        var allocPrivate = Gen.Int[0, Pages - 1].Operation<CachedMappings, CacheModel>(
            k => $"AllocPrivate({k})", (a, k) => a.Alloc(k, SfBufFlags.NoWait | SfBufFlags.CpuPrivate), (o, k) => o.Alloc(k, cpuPrivate: true));
        var free = Gen.Int[0, 63].Operation<CachedMappings, CacheModel>(
            i => $"Free({i})", (a, i) => a.Free(i), (o, i) => o.Free(i));
        var touch = Gen.Int[0, 63].Operation<CachedMappings, CacheModel>(
            i => $"Touch({i})", (a, i) => a.Touch(i), (o, i) => o.Touch(i));

        m.Run(0, () => initial.SampleModelBased(
            [allocShared, allocPrivate, free, touch],
            equal: (a, o) => a.Describe() == o.Describe(),
            iter: 1000,
            threads: 1,
            printActual: a => a.Describe(),
            printModel: o => o.Describe()));
        Tally(current!.Model);
        current.Dispose();

        Assert.That(cases, Is.GreaterThanOrEqualTo(1000));
        Assert.That(failures, Is.GreaterThan(0), "some sequences exhaust the pool (NoWait returns none)");
        Assert.That(recycles, Is.GreaterThan(0), "some allocations recycle an inactive sf_buf");
        Assert.That(hits, Is.GreaterThan(0), "some allocations hit");
        Assert.That(shootdowns, Is.GreaterThan(0), "some shared allocations shoot down CPU 1");
        Assert.That(keptMasks, Is.GreaterThan(0), "some recycles keep the mask of an unused mapping");
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.EqualTo(0));
    }

    /// <summary>The real mapper, the pages, and what the operations observed.</summary>
    private sealed class CachedMappings : IDisposable
    {
        private readonly SimMachine _m;
        private readonly VmPage[] _pages;
        private readonly I386Mapper _mapper;
        private readonly List<(SfBufHandle Sf, int Page)> _held = [];
        private readonly List<string> _trace = [];
        private long _localInvalidations;
        private long _shootdownRounds;
        private long _pteWrites;

        public CachedMappings(SimMachine m, VmPage[] pages)
        {
            _m = m;
            _pages = pages;
            _mapper = SfBufRig.I386(m, Nsfbufs);
            Model = new CacheModel(pages.Select(p => p.Frame).ToArray());
        }

        public CacheModel Model { get; }

        public void Alloc(int k, SfBufFlags flags)
        {
            var before = _m.Counters();
            var sf = _mapper.Alloc(_pages[k], flags);
            var d = _m.Counters() - before;
            _localInvalidations += d[Counter.LocalInvalidations];
            _shootdownRounds += d[Counter.ShootdownRounds];
            _pteWrites += d[Counter.KernelPteWrites];
            if (sf.IsNone)
            {
                _trace.Add($"alloc {k}: none");
                return;
            }

            bool consistent = sf.Page == _pages[k] && sf.Kva == _m.Layout.SfBufWindow.PageAddress(sf.Slot);
            _trace.Add($"alloc {k}: slot {sf.Slot}{(consistent ? "" : " (inconsistent handle)")}");
            _held.Add((sf, k));
        }

        public void Free(int i)
        {
            if (_held.Count == 0)
            {
                return;
            }

            var (sf, _) = _held[i % _held.Count];
            _held.RemoveAt(i % _held.Count);
            _mapper.Free(sf);
            _trace.Add($"free slot {sf.Slot}");
        }

        public void Touch(int i)
        {
            if (_held.Count == 0)
            {
                return;
            }

            var (sf, k) = _held[i % _held.Count];
            ulong word = _m.CurrentCpu.ReadUInt64(sf.Kva + (ulong)(8 * (i % 512)));
            _trace.Add($"touch slot {sf.Slot}: {(word == SfBufRig.Stamp(_pages[k]) ? "ok" : $"read 0x{word:x}")}");
        }

        public string Describe()
        {
            var stats = _mapper.Stats();
            var text = new StringBuilder();
            for (int s = 0; s < Nsfbufs; s++)
            {
                var e = _mapper.TestHookEntry(s);
                bool accessed = e.HasPage && (_m.KernelPmap.ReadPte(_m.Layout.SfBufWindow.PageAddress(s)) & Pte.PG_A) != 0;
                text.Append($"sf {s}: ").Append(e.HasPage ? $"frame 0x{e.Frame:x} ref {e.RefCount} mask {e.CpuMask} accessed {accessed}" : "never used").AppendLine();
            }

            text.Append("free list: ").AppendJoin(' ', _mapper.TestHookFreeList()).AppendLine();
            text.Append("hash: ").AppendJoin(' ', _pages.Select(p => _mapper.TestHookLookup(p.Frame))).Append($" ({_mapper.TestHookHashCount()} entries)").AppendLine();
            text.Append($"used {stats.NsfbufsUsed} peak {stats.NsfbufsPeak} hits {stats.Hits} misses {stats.Misses} recycles {stats.Recycles} failures {stats.Failures}").AppendLine();
            text.Append($"invlpg {_localInvalidations} shootdowns {_shootdownRounds} pte writes {_pteWrites}").AppendLine();
            text.AppendJoin(Environment.NewLine, _trace);
            return text.ToString();
        }

        public void Dispose() => _mapper.Dispose();
    }

    /// <summary>Reference A.3 on CPU 0 of a 2-CPU machine, in plain managed collections.</summary>
    private sealed class CacheModel(uint[] frames)
    {
        private const ulong AllCpus = 0b11;
        private const ulong Self = 0b01;
        private readonly int?[] _page = new int?[Nsfbufs];
        private readonly int[] _ref = new int[Nsfbufs];
        private readonly ulong[] _mask = new ulong[Nsfbufs];
        private readonly bool[] _accessed = new bool[Nsfbufs];
        private readonly List<int> _freeList = [.. Enumerable.Range(0, Nsfbufs)];
        private readonly Dictionary<int, int> _hash = [];
        private readonly List<(int Slot, int Page)> _held = [];
        private readonly List<string> _trace = [];
        private int _used;
        private int _peak;
        private long _misses;
        private long _localInvalidations;
        private long _pteWrites;

        public long Hits { get; private set; }

        public long Recycles { get; private set; }

        public long Failures { get; private set; }

        public long ShootdownRounds { get; private set; }

        public long KeptMasks { get; private set; }

        public void Alloc(int k, bool cpuPrivate)
        {
            if (_hash.TryGetValue(k, out int s))
            {
                if (++_ref[s] == 1)
                {
                    _freeList.Remove(s);
                    Use();
                }

                Hits++;
            }
            else if (_freeList.Count > 0)
            {
                s = _freeList[0];
                _freeList.RemoveAt(0);
                if (_page[s] is int old)
                {
                    _hash.Remove(old);
                    Recycles++;
                    if (_accessed[s])
                    {
                        _mask[s] = 0;
                    }
                    else if (_mask[s] != 0)
                    {
                        KeptMasks++;
                    }
                }

                _page[s] = k;
                _hash[k] = s;
                _ref[s] = 1;
                _accessed[s] = false;
                _pteWrites++;
                _misses++;
                Use();
            }
            else
            {
                Failures++;
                _trace.Add($"alloc {k}: none");
                return;
            }

            if ((_mask[s] & Self) == 0)
            {
                _mask[s] |= Self;
                _localInvalidations++;
            }

            if (!cpuPrivate && (AllCpus & ~_mask[s]) != 0)
            {
                _mask[s] = AllCpus;
                ShootdownRounds++;
            }

            _trace.Add($"alloc {k}: slot {s}");
            _held.Add((s, k));
        }

        public void Free(int i)
        {
            if (_held.Count == 0)
            {
                return;
            }

            var (s, _) = _held[i % _held.Count];
            _held.RemoveAt(i % _held.Count);
            if (--_ref[s] == 0)
            {
                _freeList.Add(s);
                _used--;
            }

            _trace.Add($"free slot {s}");
        }

        public void Touch(int i)
        {
            if (_held.Count == 0)
            {
                return;
            }

            var (s, _) = _held[i % _held.Count];
            _accessed[s] = true;
            _trace.Add($"touch slot {s}: ok");
        }

        public string Describe()
        {
            var text = new StringBuilder();
            for (int s = 0; s < Nsfbufs; s++)
            {
                text.Append($"sf {s}: ").Append(_page[s] is int k ? $"frame 0x{frames[k]:x} ref {_ref[s]} mask {_mask[s]} accessed {_accessed[s]}" : "never used").AppendLine();
            }

            text.Append("free list: ").AppendJoin(' ', _freeList).AppendLine();
            text.Append("hash: ").AppendJoin(' ', Enumerable.Range(0, frames.Length).Select(k => _hash.TryGetValue(k, out int s) ? s : -1)).Append($" ({_hash.Count} entries)").AppendLine();
            text.Append($"used {_used} peak {_peak} hits {Hits} misses {_misses} recycles {Recycles} failures {Failures}").AppendLine();
            text.Append($"invlpg {_localInvalidations} shootdowns {ShootdownRounds} pte writes {_pteWrites}").AppendLine();
            text.AppendJoin(Environment.NewLine, _trace);
            return text.ToString();
        }

        private void Use() => _peak = Math.Max(_peak, ++_used);
    }
}
