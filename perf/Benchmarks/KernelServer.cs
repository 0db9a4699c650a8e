using System.Runtime.ExceptionServices;
using Native.PageTable;

namespace Native.Perf.Benchmarks;

/// <summary>
/// A kernel thread bound to one simulated CPU that runs work posted from an ordinary host thread.
/// MMU operations must run on the kernel thread that holds the CPU, but BenchmarkDotNet calls
/// benchmarks on its own thread: the benchmark posts a work item (an inner loop of many
/// operations, to amortise the handoff), and waits for it.
/// <para>
/// Between items the server spins, polling its CPU's mailbox, and never blocks: a CPU whose
/// thread is blocked in a host primitive would never answer a shootdown.
/// </para>
/// <para>
/// The posting thread blocks rather than spins. The kernel threads are pinned and the development
/// machines have two cores, so a spinning poster competes with them for a core, at the raised
/// priority BenchmarkDotNet gives its thread (nice -11 here); and a yielding spin makes a system
/// call every other iteration, which in an isolated test slowed copies out of the machine's
/// frames on the other core by 40%. Blocking costs one wakeup per item instead, which the large
/// inner loops make negligible (see <see cref="MachineHandoffBenchmarks"/>).
/// </para>
/// </summary>
internal sealed class KernelServer : IDisposable
{
    private readonly KernelThread _thread;
    private readonly ManualResetEventSlim _done = new(false);
    private Action<Cpu>? _work;
    private Exception? _fault;
    private int _posted;
    private int _request;
    private volatile bool _stopping;

    /// <summary>Starts the server on a kernel thread bound to <paramref name="cpu"/>.</summary>
    public KernelServer(Machine machine, int cpu) =>
        _thread = machine.StartThread($"bench-server-cpu{cpu}", Serve, cpu, bound: true);

    /// <summary>Runs <paramref name="work"/> on the server's CPU and waits for it; rethrows what it threw.</summary>
    public void Run(Action<Cpu> work)
    {
        Start(work);
        Wait();
    }

    /// <summary>Posts <paramref name="work"/> to the server's CPU without waiting (pair with <see cref="Wait"/>).</summary>
    public void Start(Action<Cpu> work)
    {
        ObjectDisposedException.ThrowIf(_stopping, this);
        _work = work;
        _fault = null;
        _done.Reset();

        // A full fence: the server sees _work, _fault and the reset once it sees the new ticket.
        Interlocked.Exchange(ref _request, ++_posted);
    }

    /// <summary>Waits for the posted work; rethrows what it threw.</summary>
    public void Wait()
    {
        _done.Wait();
        if (_fault is { } fault)
        {
            ExceptionDispatchInfo.Throw(fault);
        }
    }

    /// <summary>Stops the server and joins its thread.</summary>
    public void Dispose()
    {
        if (_stopping)
        {
            return;
        }

        _stopping = true;
        _thread.Join();
        _done.Dispose();
    }

    private void Serve()
    {
        var cpu = KernelThread.Current.Cpu!; // bound: the same CPU for the thread's whole life
        int served = 0;
        var spin = default(SpinWait);
        while (true)
        {
            int request = Volatile.Read(ref _request);
            if (request == served)
            {
                if (_stopping)
                {
                    return;
                }

                cpu.Poll();
                spin.SpinOnce(sleep1Threshold: -1);
                continue;
            }

            spin = default;
            try
            {
                _work!(cpu);
            }
            catch (Exception ex)
            {
                _fault = ex;
            }

            served = request;
            _done.Set();
        }
    }
}
