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
/// random operation sequences from CsCheck with shrinking. Operations run on both CPUs of the
/// machine, so the model predicts remote caching too: which CPU invalidates locally, which CPUs
/// a shootdown targets, and when a mapping touched on the other CPU clears the mask.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class I386ModelTests
{
    private const int Nsfbufs = 6;
    private const int Pages = 12;

    [Test]
    public void RandomAllocFreeAndTouchSequencesOnBothCpusAgreeWithAPlainModelOfTheCache()
    {
        using var m = new SimMachine(SfBufRig.Small());
        var pages = SfBufRig.NewPages(m, Pages);
        CachedMappings? current = null;
        long cases = 0, failures = 0, recycles = 0, hits = 0, shootdowns = 0, keptMasks = 0, remoteShootdowns = 0, remoteTouches = 0;

        // Every Alloc and Free needs kernel-thread context: the sampling runs on one kernel
        // thread bound to CPU 0, on one CsCheck thread, and hands CPU 1's operations to a server
        // thread bound to CPU 1 (both spin servicing their mailboxes while the other works).
        using var cpu1 = new CpuServer(m, 1);
        var initial = Gen.Const(() =>
        {
            if (current != null)
            {
                Tally(current.Model);
                current.Dispose();
            }

            current = new CachedMappings(m, pages, cpu1);
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
            remoteShootdowns += model.RemoteShootdowns;
            remoteTouches += model.RemoteTouches;
        }

        var cpuAndPage = Gen.Select(Gen.Int[0, 1], Gen.Int[0, Pages - 1]);
        var cpuAndIndex = Gen.Select(Gen.Int[0, 1], Gen.Int[0, 63]);
        var allocShared = cpuAndPage.Operation<CachedMappings, CacheModel>(
            t => $"AllocShared(cpu {t.Item1}, {t.Item2})", (a, t) => a.Alloc(t.Item1, t.Item2, SfBufFlags.NoWait), (o, t) => o.Alloc(t.Item1, t.Item2, cpuPrivate: false));
        var allocPrivate = cpuAndPage.Operation<CachedMappings, CacheModel>(
            t => $"AllocPrivate(cpu {t.Item1}, {t.Item2})", (a, t) => a.Alloc(t.Item1, t.Item2, SfBufFlags.NoWait | SfBufFlags.CpuPrivate), (o, t) => o.Alloc(t.Item1, t.Item2, cpuPrivate: true));
        var free = cpuAndIndex.Operation<CachedMappings, CacheModel>(
            t => $"Free(cpu {t.Item1}, {t.Item2})", (a, t) => a.Free(t.Item1, t.Item2), (o, t) => o.Free(t.Item1, t.Item2));
        var touch = cpuAndIndex.Operation<CachedMappings, CacheModel>(
            t => $"Touch(cpu {t.Item1}, {t.Item2})", (a, t) => a.Touch(t.Item1, t.Item2), (o, t) => o.Touch(t.Item1, t.Item2));

        m.Run(0, () => initial.SampleModelBased(
            [allocShared, allocPrivate, free, touch],
            equal: (a, o) => a.Describe() == o.Describe(),
            iter: 1000,
            threads: 1,
            printActual: a => a.Describe(),
            printModel: o => o.Describe()));
        Tally(current!.Model);
        m.Run(0, current.Dispose);

        Assert.That(cases, Is.GreaterThanOrEqualTo(1000));
        Assert.That(failures, Is.GreaterThan(0), "some sequences exhaust the pool (NoWait returns none)");
        Assert.That(recycles, Is.GreaterThan(0), "some allocations recycle an inactive sf_buf");
        Assert.That(hits, Is.GreaterThan(0), "some allocations hit");
        Assert.That(shootdowns, Is.GreaterThan(0), "some shared allocations shoot down CPU 1");
        Assert.That(keptMasks, Is.GreaterThan(0), "some recycles keep the mask of an unused mapping");
        Assert.That(remoteShootdowns, Is.GreaterThan(0), "some shared allocations on CPU 1 shoot down CPU 0");
        Assert.That(remoteTouches, Is.GreaterThan(0), "some mappings are used on the CPU that did not allocate them");
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.EqualTo(0));
        Assert.That(m.Counters()[Counter.LatentStaleAccesses], Is.EqualTo(0));
    }

    /// <summary>The real mapper, the pages, and what the operations observed.</summary>
    private sealed class CachedMappings : IDisposable
    {
        private readonly SimMachine _m;
        private readonly VmPage[] _pages;
        private readonly I386Mapper _mapper;
        private readonly CpuServer _cpu1;
        private readonly List<(SfBufHandle Sf, int Page, int Cpu, bool Private)> _held = [];
        private readonly List<string> _trace = [];
        private readonly long[] _localInvalidations = new long[2];
        private long _shootdownRounds;
        private long _pteWrites;

        public CachedMappings(SimMachine m, VmPage[] pages, CpuServer cpu1)
        {
            _m = m;
            _pages = pages;
            _cpu1 = cpu1;
            _mapper = SfBufRig.I386(m, Nsfbufs);
            Model = new CacheModel(pages.Select(p => p.Frame).ToArray());
        }

        public CacheModel Model { get; }

        public void Alloc(int cpu, int k, SfBufFlags flags)
        {
            var before = _m.Counters();
            var sf = On(cpu, () => _mapper.Alloc(_pages[k], flags));
            var d = _m.Counters() - before;
            _localInvalidations[cpu] += d.OnCpu(cpu, Counter.LocalInvalidations);
            _shootdownRounds += d[Counter.ShootdownRounds];
            _pteWrites += d[Counter.KernelPteWrites];
            string targets = d[Counter.ShootdownRounds] == 0 ? "" : $", shot {d[Counter.IpiTargets]} cpu(s), cpu {1 - cpu} received {d.OnCpu(1 - cpu, Counter.IpisReceived)}";
            if (sf.IsNone)
            {
                _trace.Add($"cpu {cpu} alloc {k}: none");
                return;
            }

            bool consistent = sf.Page == _pages[k] && sf.Kva == _m.Layout.SfBufWindow.PageAddress(sf.Slot);
            _trace.Add($"cpu {cpu} alloc {k}: slot {sf.Slot}{targets}{(consistent ? "" : " (inconsistent handle)")}");
            _held.Add((sf, k, cpu, (flags & SfBufFlags.CpuPrivate) != 0));
        }

        public void Free(int cpu, int i)
        {
            if (_held.Count == 0)
            {
                return;
            }

            var (sf, _, owner, isPrivate) = _held[i % _held.Count];
            _held.RemoveAt(i % _held.Count);
            On(isPrivate ? owner : cpu, () => _mapper.Free(sf));
            _trace.Add($"free slot {sf.Slot}");
        }

        public void Touch(int cpu, int i)
        {
            if (_held.Count == 0)
            {
                return;
            }

            // A private mapping may only be used on its own CPU; a shared one anywhere.
            var (sf, k, owner, isPrivate) = _held[i % _held.Count];
            int on = isPrivate ? owner : cpu;
            ulong word = On(on, () => _m.CurrentCpu.ReadUInt64(sf.Kva + (ulong)(8 * (i % 512))));
            _trace.Add($"cpu {on} touch slot {sf.Slot}: {(word == SfBufRig.Stamp(_pages[k]) ? "ok" : $"read 0x{word:x}")}");
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
            text.Append($"invlpg cpu0 {_localInvalidations[0]} cpu1 {_localInvalidations[1]} shootdowns {_shootdownRounds} pte writes {_pteWrites}").AppendLine();
            text.AppendJoin(Environment.NewLine, _trace);
            return text.ToString();
        }

        public void Dispose()
        {
            // Free what the sequence left held, on the right CPUs, so the next case starts clean.
            foreach (var (sf, _, owner, _) in _held)
            {
                On(owner, () => _mapper.Free(sf));
            }

            _mapper.Dispose();
        }

        private T On<T>(int cpu, Func<T> operation) => cpu == 0 ? operation() : _cpu1.Do(operation);

        private void On(int cpu, Action operation) => On(cpu, () =>
        {
            operation();
            return 0;
        });
    }

    /// <summary>
    /// A kernel thread bound to a CPU that runs operations handed to it by the kernel thread on
    /// CPU 0. Both sides wait by polling, so each keeps answering the other's shootdowns.
    /// </summary>
    private sealed class CpuServer : IDisposable
    {
        private readonly SimMachine _m;
        private readonly KernelThread _thread;
        private volatile Func<object?>? _work;
        private volatile bool _done;
        private volatile bool _stop;
        private object? _result;
        private Exception? _error;

        public CpuServer(SimMachine m, int cpu)
        {
            _m = m;
            _thread = m.StartThread($"cpu{cpu}-server", Serve, cpu, bound: true);
        }

        public T Do<T>(Func<T> operation)
        {
            _done = false;
            _work = () => operation();
            var spin = default(SpinWait);
            while (!_done)
            {
                _m.CurrentCpu.Poll();
                spin.SpinOnce(sleep1Threshold: -1);
            }

            if (_error is { } error)
            {
                _error = null;
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(error).Throw();
            }

            return (T)_result!;
        }

        public void Dispose()
        {
            _stop = true;
            _thread.Join(SfBufRig.Patience);
        }

        private void Serve()
        {
            var spin = default(SpinWait);
            while (!_stop)
            {
                var work = _work;
                if (work == null)
                {
                    _m.CurrentCpu.Poll();
                    spin.SpinOnce(sleep1Threshold: -1);
                    continue;
                }

                _work = null;
                try
                {
                    _result = work();
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    _error = e;
                }

                _done = true;
            }
        }
    }

    /// <summary>Reference A.3 on a 2-CPU machine, in plain managed collections.</summary>
    private sealed class CacheModel(uint[] frames)
    {
        private const ulong AllCpus = 0b11;
        private readonly int?[] _page = new int?[Nsfbufs];
        private readonly int[] _ref = new int[Nsfbufs];
        private readonly ulong[] _mask = new ulong[Nsfbufs];
        private readonly bool[] _accessed = new bool[Nsfbufs];
        private readonly List<int> _freeList = [.. Enumerable.Range(0, Nsfbufs)];
        private readonly Dictionary<int, int> _hash = [];
        private readonly List<(int Slot, int Page, int Cpu, bool Private)> _held = [];
        private readonly List<string> _trace = [];
        private readonly long[] _localInvalidations = new long[2];
        private int _used;
        private int _peak;
        private long _misses;
        private long _pteWrites;

        public long Hits { get; private set; }

        public long Recycles { get; private set; }

        public long Failures { get; private set; }

        public long ShootdownRounds { get; private set; }

        public long RemoteShootdowns { get; private set; }

        public long RemoteTouches { get; private set; }

        public long KeptMasks { get; private set; }

        public void Alloc(int cpu, int k, bool cpuPrivate)
        {
            ulong self = 1UL << cpu;
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
                        _mask[s] = 0; // used (on either CPU): no CPU is known clean
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
                _trace.Add($"cpu {cpu} alloc {k}: none");
                return;
            }

            if ((_mask[s] & self) == 0)
            {
                _mask[s] |= self;
                _localInvalidations[cpu]++;
            }

            string targets = "";
            if (!cpuPrivate && (AllCpus & ~_mask[s]) != 0)
            {
                _mask[s] = AllCpus;
                ShootdownRounds++;
                RemoteShootdowns += cpu == 1 ? 1 : 0;
                targets = $", shot 1 cpu(s), cpu {1 - cpu} received 1";
            }

            _trace.Add($"cpu {cpu} alloc {k}: slot {s}{targets}");
            _held.Add((s, k, cpu, cpuPrivate));
        }

        public void Free(int cpu, int i)
        {
            _ = cpu;
            if (_held.Count == 0)
            {
                return;
            }

            var (s, _, _, _) = _held[i % _held.Count];
            _held.RemoveAt(i % _held.Count);
            if (--_ref[s] == 0)
            {
                _freeList.Add(s);
                _used--;
            }

            _trace.Add($"free slot {s}");
        }

        public void Touch(int cpu, int i)
        {
            if (_held.Count == 0)
            {
                return;
            }

            var (s, _, owner, isPrivate) = _held[i % _held.Count];
            int on = isPrivate ? owner : cpu;
            RemoteTouches += on != owner ? 1 : 0;
            _accessed[s] = true;
            _trace.Add($"cpu {on} touch slot {s}: ok");
        }

        public string Describe()
        {
            var text = new StringBuilder();
            for (int s = 0; s < Nsfbufs; s++)
            {
                text.Append($"sf {s}: ").Append(_page[s] is int k ? $"frame 0x{frames[k]:x} ref {_ref[s]} mask {CpuSet.FromWord(_mask[s])} accessed {_accessed[s]}" : "never used").AppendLine();
            }

            text.Append("free list: ").AppendJoin(' ', _freeList).AppendLine();
            text.Append("hash: ").AppendJoin(' ', Enumerable.Range(0, frames.Length).Select(k => _hash.TryGetValue(k, out int s) ? s : -1)).Append($" ({_hash.Count} entries)").AppendLine();
            text.Append($"used {_used} peak {_peak} hits {Hits} misses {_misses} recycles {Recycles} failures {Failures}").AppendLine();
            text.Append($"invlpg cpu0 {_localInvalidations[0]} cpu1 {_localInvalidations[1]} shootdowns {ShootdownRounds} pte writes {_pteWrites}").AppendLine();
            text.AppendJoin(Environment.NewLine, _trace);
            return text.ToString();
        }

        private void Use() => _peak = Math.Max(_peak, ++_used);
    }
}
