using System.Text;
using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>User address spaces: isolation, copyin/copyout, and what an address-space switch flushes.</summary>
[TestFixture]
[NonParallelizable]
public sealed class AddressSpaceTests
{
    private const ulong UserVa = 0x20_0000;

    [Test]
    public void TwoAddressSpacesMappingTheSameUserAddressSeeTheirOwnBytes()
    {
        using var m = new SimMachine(Sim.Small());
        var one = m.CreateVmSpace();
        var two = m.CreateVmSpace();
        byte[] seenByOne = new byte[8], seenByTwo = new byte[8];

        m.Run(0, () =>
        {
            one.MapAnonymous(UserVa, 2 * Pte.PageSize);
            m.CurrentCpu.Write(UserVa + Pte.PageSize - 4, "one-one-"u8); // crosses a page boundary
        }, one);
        m.Run(0, () =>
        {
            two.MapAnonymous(UserVa, 2 * Pte.PageSize);
            m.CurrentCpu.Write(UserVa + Pte.PageSize - 4, "two-two-"u8);
        }, two);

        // Read back on the other CPU, interleaved, so each read must walk its own page table.
        m.Run(1, () => m.CurrentCpu.Read(UserVa + Pte.PageSize - 4, seenByOne), one);
        m.Run(1, () => m.CurrentCpu.Read(UserVa + Pte.PageSize - 4, seenByTwo), two);

        Assert.That(Encoding.ASCII.GetString(seenByOne), Is.EqualTo("one-one-"));
        Assert.That(Encoding.ASCII.GetString(seenByTwo), Is.EqualTo("two-two-"));
        Assert.That(one.Pmap.Extract(UserVa), Is.Not.EqualTo(two.Pmap.Extract(UserVa)));
        Assert.That(one.ResidentPages, Is.EqualTo(2));
        Assert.That(two.ResidentPages, Is.EqualTo(2));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void ThreadsOfDifferentAddressSpacesRunningAtOnceSeeTheirOwnBytes()
    {
        using var m = new SimMachine(Sim.Small());
        var one = m.CreateVmSpace();
        var two = m.CreateVmSpace();
        m.Run(0, () => one.MapAnonymous(UserVa, Pte.PageSize), one);
        m.Run(0, () => two.MapAnonymous(UserVa, Pte.PageSize), two);
        int ready = 0;
        long badOne = -1, badTwo = -1;

        KernelThread Worker(VmSpace space, int cpu, ulong value, Action<long> report) => m.StartThread($"pid{space.Pid}", () =>
        {
            Interlocked.Increment(ref ready);
            Sim.SpinOnCpu(m, () => Volatile.Read(ref ready) == 2, "both workers run");
            long bad = 0;
            for (int i = 0; i < 10_000; i++)
            {
                m.CurrentCpu.WriteUInt64(UserVa, value + (ulong)i);
                if (m.CurrentCpu.ReadUInt64(UserVa) != value + (ulong)i)
                {
                    bad++;
                }
            }

            report(bad);
        }, cpu, bound: true, vmspace: space);

        Sim.Join(Worker(one, 0, 1UL << 40, b => badOne = b), Worker(two, 1, 2UL << 40, b => badTwo = b));

        Assert.That(badOne, Is.Zero);
        Assert.That(badTwo, Is.Zero);
    }

    [Test]
    public void CopyOutAndCopyInMoveBytesAcrossTheUserBoundary()
    {
        using var m = new SimMachine(Sim.Small());
        var space = m.CreateVmSpace();
        byte[] message = Encoding.ASCII.GetBytes("copied across a page boundary into user space");
        byte[] back = new byte[message.Length];
        int outcome = -1, income = -1;
        ulong at = UserVa + Pte.PageSize - 10;

        m.Run(0, () =>
        {
            space.MapAnonymous(UserVa, 2 * Pte.PageSize);
            outcome = m.CurrentCpu.CopyOut(message, at);
            income = m.CurrentCpu.CopyIn(at, back);
        }, space);

        Assert.That(outcome, Is.EqualTo(Errno.OK));
        Assert.That(income, Is.EqualTo(Errno.OK));
        Assert.That(back, Is.EqualTo(message));
        var secondPage = space.Pmap.Extract(UserVa + Pte.PageSize)!.Value;
        Assert.That(m.Physical.PhysicalBytes(secondPage)[..(message.Length - 10)].ToArray(), Is.EqualTo(message[10..]));
    }

    [Test]
    public void CopyInAndCopyOutReturnEfaultForBadUserAddresses()
    {
        using var m = new SimMachine(Sim.Small());
        var space = m.CreateVmSpace();
        var results = new Dictionary<string, int>();

        m.Run(0, () =>
        {
            var cpu = m.CurrentCpu;
            space.MapAnonymous(UserVa, Pte.PageSize);
            space.MapAnonymous(UserVa + (4 * Pte.PageSize), Pte.PageSize, writable: false);
            byte[] buffer = new byte[64];
            results["copyin unmapped"] = cpu.CopyIn(UserVa + (2 * Pte.PageSize), buffer);
            results["copyout unmapped"] = cpu.CopyOut(buffer, UserVa + (2 * Pte.PageSize));
            results["copyin running off the mapping"] = cpu.CopyIn(UserVa + Pte.PageSize - 8, buffer);
            results["copyout to a read-only page"] = cpu.CopyOut(buffer, UserVa + (4 * Pte.PageSize));
            results["copyin from a kernel address"] = cpu.CopyIn(m.Layout.KernelMap.Start, buffer);
            results["copyout to page zero"] = cpu.CopyOut(buffer, 0);
            results["copyin past the top of user space"] = cpu.CopyIn(VmLayout.UserMax - 8, buffer);
            results["copyin mapped"] = cpu.CopyIn(UserVa, buffer);
        }, space);

        Assert.That(results, Has.Count.EqualTo(8));
        foreach (var (what, errno) in results)
        {
            Assert.That(errno, Is.EqualTo(what == "copyin mapped" ? Errno.OK : Errno.EFAULT), what);
        }
    }

    [Test]
    public void AnAddressSpaceSwitchDropsUserTranslationsAndKeepsKernelOnes()
    {
        using var m = new SimMachine(Sim.Small());
        var one = m.CreateVmSpace();
        var two = m.CreateVmSpace();
        ulong kva = m.Layout.KernelMap.Start;
        var kpage = Sim.NewPage(m, 0x77);
        CounterSnapshot? kernelAgain = null, userAgain = null, switched = null, warm = null;
        ulong userValueAfter = 1;

        m.Run(0, () =>
        {
            m.KernelPmap.KEnter(kva, kpage);
            one.MapAnonymous(UserVa, Pte.PageSize);
            m.CurrentCpu.WriteUInt64(UserVa, 0x1111);
        }, one);
        m.Run(0, () => two.MapAnonymous(UserVa, Pte.PageSize), two);

        m.Run(0, () =>
        {
            var cpu = m.CurrentCpu;
            var self = KernelThread.Current;
            cpu.ReadUInt64(kva);
            cpu.ReadUInt64(UserVa);

            var s0 = m.Counters();
            cpu.ReadUInt64(kva);
            cpu.ReadUInt64(UserVa);
            var s1 = m.Counters();
            warm = s1 - s0;

            self.SwitchVmSpace(two);
            var s2 = m.Counters();
            switched = s2 - s1;

            cpu.ReadUInt64(kva);
            var s3 = m.Counters();
            kernelAgain = s3 - s2;

            userValueAfter = cpu.ReadUInt64(UserVa);
            userAgain = m.Counters() - s3;
        }, one);

        Assert.That(warm![Counter.TlbHits], Is.EqualTo(2), "both translations were cached before the switch");
        Assert.That(warm[Counter.TlbMisses], Is.Zero);
        Assert.That(switched![Counter.NonGlobalFlushes], Is.EqualTo(1));
        Assert.That(switched[Counter.FullFlushes], Is.Zero);
        Assert.That(kernelAgain![Counter.TlbMisses], Is.Zero, "the global kernel entry survived the switch");
        Assert.That(kernelAgain[Counter.TlbHits], Is.EqualTo(1));
        Assert.That(userAgain![Counter.TlbMisses], Is.EqualTo(1), "the user entry was dropped");
        Assert.That(userValueAfter, Is.Zero, "the new address space's page, not the old one's");
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void ReplacingAUserMappingInvalidatesItOnEveryCpuThatHasTheAddressSpaceLoaded()
    {
        using var m = new SimMachine(Sim.Small());
        var space = m.CreateVmSpace();
        var cached = new Flag();
        var replaced = new Flag();
        ulong before = 1, after = 0;
        m.Run(0, () => space.MapAnonymous(UserVa, Pte.PageSize), space);
        var replacement = Sim.NewPage(m, 0xabc);

        var reader = m.StartThread("reader", () =>
        {
            before = m.CurrentCpu.ReadUInt64(UserVa);
            cached.Set();
            Sim.SpinOnCpu(m, () => replaced.IsSet, "the mapping is replaced");
            after = m.CurrentCpu.ReadUInt64(UserVa);
        }, cpu: 1, bound: true, vmspace: space);
        Sim.WaitUntil(() => cached.IsSet, "the reader cached the user translation");

        var start = m.Counters();
        m.Run(0, () => space.Pmap.Enter(UserVa, replacement, writable: true), space);
        var d = m.Counters() - start;
        replaced.Set();
        Sim.Join(reader);

        Assert.That(before, Is.Zero);
        Assert.That(after, Is.EqualTo(0xabcUL));
        Assert.That(d[Counter.UserPteWrites], Is.EqualTo(1));
        Assert.That(d[Counter.KernelPteWrites], Is.Zero, "user page-table updates are counted apart");
        Assert.That(d.OnCpu(0, Counter.ShootdownRounds), Is.EqualTo(1));
        Assert.That(d.OnCpu(1, Counter.IpisReceived), Is.EqualTo(1));
        Assert.That(m.Counters()[Counter.StaleAccesses], Is.Zero);
    }

    [Test]
    public void DestroyingAnAddressSpaceFreesItsPagesAndItsPageTable()
    {
        using var m = new SimMachine(Sim.Small());
        int freeBefore = m.Physical.FreePages;
        long nativeBefore = m.NativeBytes;
        var space = m.CreateVmSpace();
        int freeMapped = 0;

        m.Run(0, () =>
        {
            space.MapAnonymous(UserVa, 3 * Pte.PageSize);
            m.CurrentCpu.ReadUInt64(UserVa);
            freeMapped = m.Physical.FreePages;
            space.Destroy();
        }, space);

        Assert.That(freeMapped, Is.EqualTo(freeBefore - 3));
        Assert.That(m.Physical.FreePages, Is.EqualTo(freeBefore));
        Assert.That(space.ResidentPages, Is.Zero);
        Assert.That(m.NativeBytes, Is.EqualTo(nativeBefore));
        Assert.That(() => m.Run(0, () => space.MapAnonymous(UserVa, Pte.PageSize)), Throws.TypeOf<ObjectDisposedException>());
    }
}
