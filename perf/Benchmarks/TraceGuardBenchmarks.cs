using System.Diagnostics.CodeAnalysis;
using System.Diagnostics.Tracing;
using BenchmarkDotNet.Attributes;
using Native.PageTable;
using Native.SfBufNative;

namespace Native.Perf.Benchmarks;

/// <summary>
/// What the <c>SfBufNative</c> events cost on the sf_buf hit path (docs/profiling.md): the
/// one-thread <c>Hit</c> case of <see cref="SfBufBenchmarks"/> (alloc + kva + free of one page
/// on the default 2-CPU machine, CPU 1 answering IPIs) with no session (<c>off</c>: every event
/// call site is one untaken branch) and with an in-process <see cref="EventListener"/> taking the
/// Alloc events (<c>alloc-listener</c>: one event per allocation, what a trace costs).
/// </summary>
[SuppressMessage("Maintainability", "CA1515", Justification = "BenchmarkDotNet runs public classes only.")]
[SuppressMessage("Reliability", "CA1001", Justification = "BenchmarkDotNet disposes through [GlobalCleanup].")]
public class TraceGuardBenchmarks
{
    private const int Ops = 100_000;

    private BenchMachine _bench = null!;
    private SfBufMapper _mapper = null!;
    private VmPage _page;
    private AllocListener? _listener;
    private ulong _sink;

    /// <summary>The strategy.</summary>
    [Params(SfBufMapper.I386, SfBufMapper.EpochCache)]
    public string Strategy { get; set; } = SfBufMapper.I386;

    /// <summary><c>off</c>: no session; <c>alloc-listener</c>: an EventListener takes SfBufAlloc events.</summary>
    [Params("off", "alloc-listener")]
    public string Events { get; set; } = "off";

    /// <summary>Boots the machine and the strategy; starts the listener.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _bench = new BenchMachine(responder: true);
        _mapper = SfBufMapper.Create(Strategy, _bench.Machine);
        _page = _bench.Machine.Physical.Alloc(AllocFlags.Wired);
        if (Events == "alloc-listener")
        {
            _listener = new AllocListener();
        }
    }

    /// <summary>Stops everything.</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        _listener?.Dispose();
        _mapper.Dispose();
        _bench.Dispose();
    }

    /// <summary>alloc + kva + free of one page, a hit every time after the first.</summary>
    [Benchmark(OperationsPerInvoke = Ops)]
    public void HitAllocKvaFree()
    {
        _bench.Server.Start(_ =>
        {
            var mapper = _mapper;
            var page = _page;
            ulong sum = 0;
            for (int i = 0; i < Ops; i++)
            {
                var sf = mapper.Alloc(page);
                sum += mapper.Kva(sf);
                mapper.Free(sf);
            }

            _sink = sum;
        });
        _bench.Server.Wait();
        GC.KeepAlive(_sink);
    }

    /// <summary>Takes the Alloc events and counts them (what a consumer at least does).</summary>
    private sealed class AllocListener : EventListener
    {
        private long _events;

        public AllocListener() => EnableEvents(MachineEventSource.Log, EventLevel.Verbose, MachineEventSource.Keywords.Alloc);

        protected override void OnEventWritten(EventWrittenEventArgs eventData) => Interlocked.Increment(ref _events);
    }
}

/// <summary>
/// The guards alone, away from the machine's noise: a loop of arithmetic, and the same loop
/// with the sf_buf event call sites of one hit, one miss and one recycle (three
/// <see cref="SfBufTrace"/> calls, each inlined to a test of a static flag) and no session.
/// </summary>
[SuppressMessage("Maintainability", "CA1515", Justification = "BenchmarkDotNet runs public classes only.")]
[SuppressMessage("Reliability", "CA1001", Justification = "BenchmarkDotNet disposes through [GlobalCleanup].")]
public class TraceGuardCostBenchmarks
{
    private const int Ops = 100_000;

    private BenchMachine _bench = null!;
    private SfBufMapper _mapper = null!;
    private ulong _sink;

    /// <summary>Boots a machine for the mapper the call sites name.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _bench = new BenchMachine(responder: false);
        _mapper = SfBufMapper.Create(SfBufMapper.I386, _bench.Machine);
    }

    /// <summary>Stops everything.</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        _mapper.Dispose();
        _bench.Dispose();
    }

    /// <summary>The loop alone.</summary>
    [Benchmark(Baseline = true, OperationsPerInvoke = Ops)]
    public ulong Loop()
    {
        ulong sum = 0;
        for (uint i = 0; i < Ops; i++)
        {
            sum += (sum >> 3) ^ i;
        }

        _sink = sum;
        return sum;
    }

    /// <summary>The loop with three disabled event call sites per iteration.</summary>
    [Benchmark(OperationsPerInvoke = Ops)]
    public ulong LoopWithThreeDisabledCallSites()
    {
        var mapper = _mapper;
        ulong sum = 0;
        for (uint i = 0; i < Ops; i++)
        {
            sum += (sum >> 3) ^ i;
            SfBufTrace.Alloc(mapper, i, sum, hit: true);
            SfBufTrace.Miss(mapper, i, sum);
            SfBufTrace.Recycle(mapper, sum, i, i);
        }

        _sink = sum;
        return sum;
    }
}
