using Native.PageTable;

namespace Native.Perf.Benchmarks;

/// <summary>
/// The machine a benchmark suite measures: the embedded default machine with the <c>zero</c> cost
/// profile and checked mode off, a <see cref="KernelServer"/> on CPU 0 that runs the measured
/// loops, one kernel page mapped and resident in CPU 0's TLB, and optionally a responder on CPU 1
/// that spins on <see cref="Cpu.Poll"/> so that shootdowns find it running.
/// </summary>
internal sealed class BenchMachine : IDisposable
{
    /// <summary>cpumask of the responder's CPU.</summary>
    public static readonly CpuSet ResponderMask = CpuSet.Single(ResponderCpu);

    private const int ServerCpu = 0;
    private const int ResponderCpu = 1;

    private readonly KernelThread? _responder;
    private VmPage _page;
    private volatile bool _stopping;
    private bool _disposed;

    /// <summary>Boots the machine and starts the server (and the responder when <paramref name="responder"/>); <paramref name="isChecked"/> turns the oracle on.</summary>
    public BenchMachine(bool responder, bool isChecked = false)
    {
        Machine = new Machine(new MachineOptions { Cost = CostModel.Zero, Checked = isChecked });
        try
        {
            Server = new KernelServer(Machine, ServerCpu);
            Server.Run(MapPage);
            if (responder)
            {
                _responder = Machine.StartThread($"bench-responder-cpu{ResponderCpu}", Respond, ResponderCpu, bound: true);
                EnsureResponderAnswers();
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The machine.</summary>
    public Machine Machine { get; }

    /// <summary>Runs work on CPU 0.</summary>
    public KernelServer Server { get; }

    /// <summary>A kernel page of <c>kernel_map</c>, mapped, and resident in CPU 0's TLB after setup.</summary>
    public ulong Va { get; private set; }

    /// <summary>The physical page mapped at <see cref="Va"/>.</summary>
    public VmPage Page => _page;

    /// <summary>Unmaps the page, stops both threads and frees the machine.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _stopping = true;
        try
        {
            _responder?.Join();
            if (Va != 0)
            {
                Server?.Run(UnmapPage);
            }
        }
        finally
        {
            // Constructor failures land here too, with the server possibly never started.
            Server?.Dispose();
            Machine.Dispose();
        }
    }

    private void MapPage(Cpu cpu)
    {
        Va = Machine.KernelMap.Alloc(1, wait: false);
        if (Va == 0)
        {
            throw new InvalidOperationException("kernel_map has no free page");
        }

        _page = Machine.Physical.Alloc(AllocFlags.Zero);
        Machine.KernelPmap.KEnter(Va, _page);
        cpu.ReadUInt64(Va); // loads the translation into the TLB
    }

    private void UnmapPage(Cpu cpu)
    {
        Machine.KernelPmap.KRemove(Va);
        Machine.KernelPmap.InvalidatePage(Va);
        Machine.KernelMap.Free(Va, 1);
        Machine.Physical.Free(_page);
        Va = 0;
    }

    private void Respond()
    {
        var cpu = KernelThread.Current.Cpu!;

        // No pause or yield: the round trip should measure the machine, not a spin back-off.
        while (!_stopping)
        {
            cpu.Poll();
        }
    }

    /// <summary>
    /// Waits until the responder holds its CPU, then checks that a shootdown reaches it as an IPI:
    /// while it is idle, shootdowns are deferred and would measure the wrong path.
    /// </summary>
    private void EnsureResponderAnswers()
    {
        var spin = default(SpinWait);
        while (Machine.Cpus[ResponderCpu].IsIdle)
        {
            if (_responder!.HasExited)
            {
                _responder.Join(); // rethrows its failure
            }

            spin.SpinOnce(sleep1Threshold: -1);
        }

        long before = Machine.Counters()[Counter.IpisSent];
        Server.Run(cpu => cpu.Shootdown(ResponderMask, ShootdownKind.Page, Va, serialize: false));
        if (Machine.Counters()[Counter.IpisSent] != before + 1)
        {
            throw new InvalidOperationException("the responder CPU did not receive the test shootdown as an IPI");
        }
    }
}
