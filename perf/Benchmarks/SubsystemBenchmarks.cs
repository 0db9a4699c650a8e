using System.Diagnostics.CodeAnalysis;
using BenchmarkDotNet.Attributes;
using Native.PageTable;
using Native.SfBufNative;
using Native.SfBufNative.Kernel;

namespace Native.Perf.Benchmarks;

/// <summary>
/// Kernel subsystems per strategy on the default 2-CPU machine (<c>zero</c> cost profile,
/// checked mode off), the other CPU running a responder so shootdowns are real:
/// <list type="bullet">
/// <item><c>MdRead4K</c>: one 4 KiB md read (a private sf_buf per page).</item>
/// <item><c>PtracePeek</c>: one <c>PT_READ_D</c> of another process's word (<c>proc_rwmem</c>).</item>
/// <item><c>CachedFileRead4K</c>: one 4 KiB <c>vn_read</c> of a cached file page (<c>uiomove_fromphys</c>).</item>
/// </list>
/// </summary>
[SuppressMessage("Maintainability", "CA1515", Justification = "BenchmarkDotNet runs public classes only.")]
[SuppressMessage("Design", "CA1001", Justification = "GlobalCleanup disposes the machine; BenchmarkDotNet does not call Dispose.")]
public class SubsystemBenchmarks
{
    private const int Ops = 20_000;
    private const ulong TargetVa = 0x1000_0000;

    private BenchMachine _bench = null!;
    private SimKernel _kernel = null!;
    private MemoryDisk _disk = null!;
    private Ptrace _tracer = null!;
    private VmSpace _target = null!;
    private Vnode _file = null!;
    private ulong _buffer;

    /// <summary>The strategy.</summary>
    [Params(SfBufMapper.Original, SfBufMapper.I386, SfBufMapper.Amd64)]
    public string Strategy { get; set; } = SfBufMapper.I386;

    /// <summary>Boots the machine and kernel and sets each subsystem up.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _bench = new BenchMachine(responder: true);
        _kernel = new SimKernel(_bench.Machine, Strategy);
        _file = _kernel.FileSystem.AddFile("file", new byte[64 << 10]);
        _bench.Server.Run(cpu =>
        {
            _buffer = _bench.Machine.KernelMemory.Alloc(Pte.PageSize);
            _disk = MemoryDisk.Create(_kernel, 1 << 20);
            for (long off = 0; off < 1 << 20; off += Pte.PageSize)
            {
                _disk.Strategy(BioCommand.Write, off, Pte.PageSize, _buffer);
            }

            _target = _bench.Machine.CreateVmSpace();
            _target.MapAnonymous(TargetVa, Pte.PageSize);
            _tracer = Ptrace.Create(_kernel);
            VnodePager.Read(_kernel, _file, new Uio(_buffer, Pte.PageSize, UioSegment.SystemSpace, UioDirection.Read));
        });
    }

    /// <summary>Frees everything.</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        _kernel.Dispose();
        _bench.Dispose();
    }

    /// <summary>One 4 KiB md read.</summary>
    [Benchmark(OperationsPerInvoke = Ops)]
    public void MdRead4K() => _bench.Server.Run(_ =>
    {
        for (int i = 0; i < Ops; i++)
        {
            _disk.Strategy(BioCommand.Read, (i % 256) * (long)Pte.PageSize, Pte.PageSize, _buffer);
        }
    });

    /// <summary>One PT_READ_D.</summary>
    [Benchmark(OperationsPerInvoke = Ops)]
    public void PtracePeek() => _bench.Server.Run(cpu =>
    {
        for (int i = 0; i < Ops; i++)
        {
            _tracer.PeekWord(_target, TargetVa + (ulong)(8 * (i % 512)), out _);
        }
    });

    /// <summary>One 4 KiB read of a cached file page.</summary>
    [Benchmark(OperationsPerInvoke = Ops)]
    public void CachedFileRead4K() => _bench.Server.Run(_ =>
    {
        for (int i = 0; i < Ops; i++)
        {
            VnodePager.Read(_kernel, _file, new Uio(_buffer, Pte.PageSize, UioSegment.SystemSpace, UioDirection.Read, 0));
        }
    });
}
