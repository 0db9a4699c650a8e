using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>Dispose returns every native byte, and refuses while kernel threads live.</summary>
[TestFixture]
[NonParallelizable]
public sealed class LifetimeTests
{
    [Test]
    public void DisposeReturnsEveryNativeByteTheMachineAllocated()
    {
        long processBefore = NativeLedger.ProcessOutstandingBytes;
        var m = new SimMachine(Sim.Small());
        long bootBytes = m.NativeBytes;

        // Grow it: user page tables, mapped kernel memory, TLB contents.
        var one = m.CreateVmSpace();
        var two = m.CreateVmSpace();
        m.Run(0, () =>
        {
            one.MapAnonymous(0x10_0000, 4 * Pte.PageSize);
            one.MapAnonymous(0x8000_0000, Pte.PageSize); // another PTE page
            m.KernelMemory.Alloc(5 * Pte.PageSize);
            m.CurrentCpu.Fill(0x10_0000, 4 * Pte.PageSize, 0x5a);
        }, one);
        m.Run(1, () => two.MapAnonymous(0x10_0000, Pte.PageSize), two);
        long grownBytes = m.NativeBytes;
        long processWhileAlive = NativeLedger.ProcessOutstandingBytes;

        m.Dispose();

        Assert.That(bootBytes, Is.GreaterThan(0));
        Assert.That(grownBytes, Is.GreaterThan(bootBytes), "the user page tables are native too");
        Assert.That(processWhileAlive - processBefore, Is.EqualTo(grownBytes));
        Assert.That(m.NativeBytes, Is.Zero);
        Assert.That(NativeLedger.ProcessOutstandingBytes, Is.EqualTo(processBefore));
    }

    [Test]
    public void ManyMachinesBootedAndDisposedLeakNothing()
    {
        long processBefore = NativeLedger.ProcessOutstandingBytes;
        for (int i = 0; i < 20; i++)
        {
            using var m = new SimMachine(Sim.Small(cpus: 1 + (i % 4)) with { Flavor = i % 2 == 0 ? MachineFlavor.Amd64 : MachineFlavor.I386 });
            var page = Sim.NewPage(m, (ulong)i);
            ulong seen = 0;
            m.Run(0, () =>
            {
                m.KernelPmap.KEnter(m.Layout.KernelMap.Start, page);
                seen = m.CurrentCpu.ReadUInt64(m.Layout.KernelMap.Start);
            });
            Assert.That(seen, Is.EqualTo((ulong)i));
        }

        Assert.That(NativeLedger.ProcessOutstandingBytes, Is.EqualTo(processBefore));
    }

    [Test]
    public void DisposeWithALiveKernelThreadThrowsAndNamesTheThread()
    {
        using var m = new SimMachine(Sim.Small());
        object channel = new();
        var asleep = new Flag();
        var lingerer = m.StartThread("lingering-sleeper", () =>
        {
            asleep.Set();
            m.Sleep(channel);
        }, cpu: 1, bound: true);
        Sim.WaitUntil(() => asleep.IsSet && lingerer.Cpu == null, "the thread sleeps");
        long bytes = m.NativeBytes;

        try
        {
            Assert.That(m.Dispose, Throws.InvalidOperationException.With.Message.Contains("lingering-sleeper"));
            Assert.That(m.NativeBytes, Is.EqualTo(bytes), "a refused Dispose frees nothing");
            Assert.That(() => m.Counters(), Throws.Nothing, "a refused Dispose leaves the machine usable");
            Assert.That(m.LiveThreads(), Is.EqualTo(new[] { lingerer }));
        }
        finally
        {
            m.Wakeup(channel);
            Sim.Join(lingerer);
        }

        m.Dispose();
        Assert.That(m.NativeBytes, Is.Zero);
    }

    [Test]
    public void AThreadThatThrowsHasExitedAndJoinRethrowsItsException()
    {
        using var m = new SimMachine(Sim.Small());
        var td = m.StartThread("thrower", () => throw new InvalidTimeZoneException("from the kernel thread"), cpu: 0);

        Assert.That(() => td.Join(Sim.Patience), Throws.TypeOf<InvalidTimeZoneException>().With.Message.EqualTo("from the kernel thread"));
        Assert.That(td.HasExited, Is.True);
        Assert.That(td.Fault, Is.TypeOf<InvalidTimeZoneException>());
        Assert.That(m.Cpus[0].IsIdle, Is.True, "a thread that throws still gives its CPU back");
        Assert.That(m.LiveThreads(), Is.Empty);
    }
}
