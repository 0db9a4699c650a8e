using Native.PageTable;

namespace Native.Perf.Real;

/// <summary>
/// A trial's measurement window on the host backend: the remaps the machine made and the TLB
/// flushes the host kernel performed for its kernel threads (per-thread tracepoint counts), plus
/// the system-wide TLB-shootdown interrupts of the host cores it ran on (<c>/proc/interrupts</c>).
/// </summary>
internal sealed class HostWindow(Machine machine)
{
    /// <summary>The host counters a row carries, in schema order.</summary>
    public static readonly string[] CounterKeys =
        ["host_maps", "host_unmaps", "host_remaps", "host_flushes_sent", "host_flushes_received", "host_tlb_ipis"];

    private HostMmuCounts? _before;
    private HostMmuCounts? _after;
    private long[]? _interruptsBefore;
    private long[]? _interruptsAfter;

    public void Begin()
    {
        // A first call compiles HostCounts, and installing compiled code remaps the runtime's code
        // pages (a host flush) after the counters were read: not in the window.
        _ = machine.HostCounts() - machine.HostCounts();
        _interruptsBefore = HostInterrupts.ReadTlbShootdowns();
        _before = machine.HostCounts();
    }

    public void End()
    {
        _after = machine.HostCounts();
        _interruptsAfter = HostInterrupts.ReadTlbShootdowns();
    }

    /// <summary>Adds the window's host counters; -1 marks a count this host cannot provide.</summary>
    public void AddCounters(Dictionary<string, long> counters)
    {
        if (_before is null || _after is null)
        {
            throw new InvalidOperationException("Begin and End frame the measurement");
        }

        var d = _after - _before;
        counters["host_maps"] = d.Maps;
        counters["host_unmaps"] = d.Unmaps;
        counters["host_remaps"] = d.Remaps;
        counters["host_flushes_sent"] = d.RemoteFlushesSent;
        counters["host_flushes_received"] = d.RemoteFlushesReceived;
        var cores = Enumerable.Range(0, machine.Options.Cpus).Select(machine.HostCoreOf);
        counters["host_tlb_ipis"] = HostInterrupts.Delta(_interruptsBefore, _interruptsAfter, cores);
    }
}
