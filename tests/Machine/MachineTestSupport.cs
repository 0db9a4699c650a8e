using System.Runtime.InteropServices;
using Native.PageTable;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>Small machines and the waiting helpers the machine tests share.</summary>
internal static class Sim
{
    /// <summary>How long any test waits for another thread before it gives up (a hang, not a timing).</summary>
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    /// <summary>A small machine: 16 MiB, 64-page sf_buf window and kernel_map, 256 pages of kmem.</summary>
    public static MachineOptions Small(int cpus = 2) => new()
    {
        Cpus = cpus,
        PhysicalMemoryBytes = 16UL << 20,
        SfBufWindowPages = 64,
        KernelMapPages = 64,
        KernelMemoryPages = 256,
        ShootdownWatchdog = TimeSpan.FromSeconds(15),
    };

    /// <summary>A zeroed wired page whose first word is <paramref name="marker"/> (written physically).</summary>
    public static VmPage NewPage(SimMachine m, ulong marker)
    {
        var page = m.Physical.Alloc(AllocFlags.Zero | AllocFlags.Wired);
        MemoryMarshal.Write(m.Physical.PhysicalBytes(page), in marker);
        return page;
    }

    /// <summary>Blocks the (non-kernel) calling thread until <paramref name="condition"/> holds.</summary>
    public static void WaitUntil(Func<bool> condition, string what)
    {
        if (!SpinWait.SpinUntil(condition, Patience))
        {
            throw new TimeoutException($"timed out waiting until {what}");
        }
    }

    /// <summary>
    /// Spins on the calling kernel thread's CPU until <paramref name="condition"/> holds,
    /// servicing the CPU's mailbox like a kernel wait loop.
    /// </summary>
    public static void SpinOnCpu(SimMachine m, Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + Patience;
        var spin = default(SpinWait);
        while (true)
        {
            m.CurrentCpu.Poll();
            if (condition())
            {
                return;
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"timed out spinning until {what}");
            }

            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    /// <summary>Joins every thread (rethrowing what it ended with), with <see cref="Patience"/>.</summary>
    public static void Join(params KernelThread[] threads)
    {
        foreach (var thread in threads)
        {
            thread.Join(Patience);
        }
    }
}

/// <summary>A flag one thread raises and another polls.</summary>
internal sealed class Flag
{
    private volatile bool _set;

    public bool IsSet => _set;

    public void Set() => _set = true;
}
