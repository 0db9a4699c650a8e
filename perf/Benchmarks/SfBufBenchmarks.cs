using System.Diagnostics.CodeAnalysis;
using BenchmarkDotNet.Attributes;
using Native.PageTable;
using Native.SfBufNative;

namespace Native.Perf.Benchmarks;

/// <summary>
/// <c>sf_buf_alloc</c> + <c>sf_buf_kva</c> + <c>sf_buf_free</c> per strategy on the default
/// 2-CPU machine (<c>zero</c> cost profile, checked mode off), next to the raw direct-map address
/// arithmetic that is the floor:
/// <list type="bullet">
/// <item><c>Hit</c>: each thread maps its own single page again and again (a cache hit for
/// <c>sfbuf-i386</c>; the original mechanisms have no cache, so every call maps anew).</item>
/// <item><c>Miss</c>: each thread cycles through twice <c>nsfbufs</c> pages, so every
/// <c>sfbuf-i386</c> allocation recycles the least recently freed sf_buf.</item>
/// </list>
/// Allocations are shared (<c>SFB_DEFAULT</c>); the mapping is not touched, so a recycled
/// victim's <c>PG_A</c> is clear. With one thread the other CPU runs a responder that answers
/// IPIs, so shootdowns are real; with two, both CPUs run the loop at once. Mean is the time of
/// one operation on one thread.
/// </summary>
[SuppressMessage("Maintainability", "CA1515", Justification = "BenchmarkDotNet runs public classes only.")]
[SuppressMessage("Reliability", "CA1001", Justification = "BenchmarkDotNet disposes through [GlobalCleanup].")]
public class SfBufBenchmarks
{
    private const int Ops = 100_000;

    private BenchMachine _bench = null!;
    private KernelServer? _second;
    private SfBufMapper _mapper = null!;
    private VmPage[][] _pages = null!;
    private ulong _sink;

    /// <summary>The strategy.</summary>
    [Params(SfBufMapper.Original, SfBufMapper.I386, SfBufMapper.Amd64, SfBufMapper.EpochCache)]
    public string Strategy { get; set; } = SfBufMapper.I386;

    /// <summary>Hit (one page) or miss (more pages than the pool).</summary>
    [Params("Hit", "Miss")]
    public string Path { get; set; } = "Hit";

    /// <summary>Threads running the loop at once, each pinned to its own CPU.</summary>
    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    /// <summary>Boots the machine, the strategy, the servers and the pages.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _bench = new BenchMachine(responder: Threads == 1);
        var m = _bench.Machine;
        _mapper = SfBufMapper.Create(Strategy, m);
        if (Threads == 2)
        {
            _second = new KernelServer(m, 1);
        }

        int perThread = Path == "Hit" ? 1 : 2 * m.Options.EffectiveSfBufWindowPages;
        _pages = new VmPage[Threads][];
        for (int t = 0; t < Threads; t++)
        {
            _pages[t] = new VmPage[perThread];
            for (int i = 0; i < perThread; i++)
            {
                _pages[t][i] = m.Physical.Alloc(AllocFlags.Wired);
            }
        }
    }

    /// <summary>Stops the threads and frees everything.</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        _second?.Dispose();
        _mapper.Dispose();
        _bench.Dispose();
    }

    /// <summary>The floor: <c>DMAP_BASE + pa</c> for the same pages, on the same threads.</summary>
    [Benchmark(Baseline = true, OperationsPerInvoke = Ops)]
    public void RawAddressArithmetic() => OnThreads(pages =>
    {
        ulong sum = 0;
        for (int i = 0; i < Ops; i++)
        {
            sum += VmLayout.DMAP_BASE + pages[i % pages.Length].PhysicalAddress;
        }

        _sink = sum;
    });

    /// <summary>alloc + kva + free through the interface (a virtual call per operation).</summary>
    [Benchmark(OperationsPerInvoke = Ops)]
    public void AllocKvaFree() => OnThreads(pages =>
    {
        var mapper = _mapper;
        ulong sum = 0;
        for (int i = 0; i < Ops; i++)
        {
            var sf = mapper.Alloc(pages[i % pages.Length]);
            sum += mapper.Kva(sf);
            mapper.Free(sf);
        }

        _sink = sum;
    });

    /// <summary>
    /// The same, called on the sealed strategy type, so the JIT can devirtualize and inline:
    /// what a kernel built for one architecture gets (FreeBSD's are compile-time choices).
    /// </summary>
    [Benchmark(OperationsPerInvoke = Ops)]
    public void AllocKvaFreeSealed() => OnThreads(pages =>
    {
        _sink = _mapper switch
        {
            DirectMapMapper d => Sealed(d, pages),
            I386Mapper i => Sealed(i, pages),
            OriginalMapper o => Sealed(o, pages),
            EpochCacheMapper e => Sealed(e, pages),
            _ => throw new InvalidOperationException(_mapper.Name),
        };
    });

    // One copy per sealed type on purpose: a shared generic over reference types would be compiled
    // once for all of them and call through the vtable again.
    private static ulong Sealed(DirectMapMapper mapper, VmPage[] pages)
    {
        ulong sum = 0;
        for (int i = 0; i < Ops; i++)
        {
            var sf = mapper.Alloc(pages[i % pages.Length]);
            sum += mapper.Kva(sf);
            mapper.Free(sf);
        }

        return sum;
    }

    private static ulong Sealed(I386Mapper mapper, VmPage[] pages)
    {
        ulong sum = 0;
        for (int i = 0; i < Ops; i++)
        {
            var sf = mapper.Alloc(pages[i % pages.Length]);
            sum += mapper.Kva(sf);
            mapper.Free(sf);
        }

        return sum;
    }

    private static ulong Sealed(OriginalMapper mapper, VmPage[] pages)
    {
        ulong sum = 0;
        for (int i = 0; i < Ops; i++)
        {
            var sf = mapper.Alloc(pages[i % pages.Length]);
            sum += mapper.Kva(sf);
            mapper.Free(sf);
        }

        return sum;
    }

    private static ulong Sealed(EpochCacheMapper mapper, VmPage[] pages)
    {
        ulong sum = 0;
        for (int i = 0; i < Ops; i++)
        {
            var sf = mapper.Alloc(pages[i % pages.Length]);
            sum += mapper.Kva(sf);
            mapper.Free(sf);
        }

        return sum;
    }

    private void OnThreads(Action<VmPage[]> loop)
    {
        _bench.Server.Start(_ => loop(_pages[0]));
        _second?.Start(_ => loop(_pages[1]));
        _bench.Server.Wait();
        _second?.Wait();
        GC.KeepAlive(_sink);
    }
}
