using Native.Interop;
using Native.PageTable;
using NUnit.Framework;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Machine;

/// <summary>Kernel threads run on the host core of their simulated CPU; bad affinity requests fail with errno.</summary>
[TestFixture]
[NonParallelizable]
public sealed class PinningTests
{
    private const int Checks = 20_000;

    [TestCase(0)]
    [TestCase(1)]
    public void AThreadBoundToACpuRunsOnThatCpusHostCore(int cpu)
    {
        if (!HostCpu.IsPinningAvailable || Environment.ProcessorCount < 2 || HostCpu.AllowedCpus().Length < 2)
        {
            Assert.Ignore($"needs thread pinning and two allowed host cores (pinning available: {HostCpu.IsPinningAvailable}, "
                + $"processors: {Environment.ProcessorCount})");
        }

        using var m = new SimMachine(Sim.Small());
        int expected = m.HostCoreOf(cpu);
        int mismatches = 0, checks = 0, recorded = -2;

        m.Run(cpu, () =>
        {
            recorded = KernelThread.Current.HostCore;
            for (int i = 0; i < Checks; i++)
            {
                checks++;
                if (HostCpu.CurrentCpu() != expected)
                {
                    mismatches++;
                }

                if ((i & 255) == 0)
                {
                    Thread.Yield(); // give the host scheduler chances to move us, if it could
                }
            }
        });

        Assert.That(m.PinsHostThreads, Is.True, string.Join("; ", m.Warnings));
        Assert.That(expected, Is.GreaterThanOrEqualTo(0));
        Assert.That(HostCpu.AllowedCpus(), Does.Contain(expected));
        Assert.That(recorded, Is.EqualTo(expected));
        Assert.That(checks, Is.EqualTo(Checks));
        Assert.That(mismatches, Is.Zero);
    }

    [Test]
    public void AMachineToldItsHostIsOversubscribedParksEarlyWhateverItsCpuCount()
    {
        // Two CPUs fit a host with two cores, but other processes may keep those cores busy:
        // the option makes the machine wait as one with more CPUs than cores does.
        using var told = new SimMachine(Sim.Small() with { Oversubscribed = true, PinThreads = false });
        Assert.That(told.Oversubscribed, Is.True);
        Assert.That(told.CrossCpuSpin, Is.EqualTo(TimeSpan.FromMicroseconds(5)));
        Assert.That(told.PinsHostThreads, Is.False);

        using var notTold = new SimMachine(Sim.Small() with { Cpus = 1 });
        Assert.That(notTold.Oversubscribed, Is.False, "one CPU never outnumbers the host's cores");
        Assert.That(notTold.CrossCpuSpin, Is.EqualTo(TimeSpan.FromMicroseconds(50)));

        using var denied = new SimMachine(Sim.Small() with { Cpus = HostCpu.AllowedCpus().Length + 1, Oversubscribed = false });
        Assert.That(denied.Oversubscribed, Is.False, "the option overrides the CPU count both ways");
    }

    [Test]
    public void TwoCpusOfATwoCpuMachineMapToDistinctHostCores()
    {
        if (!HostCpu.IsPinningAvailable || HostCpu.AllowedCpus().Length < 2)
        {
            Assert.Ignore("needs thread pinning and two allowed host cores");
        }

        using var m = new SimMachine(Sim.Small());

        Assert.That(m.HostCoreOf(0), Is.Not.EqualTo(m.HostCoreOf(1)));
        Assert.That(m.Describe(), Does.Contain($"cpu1->core{m.HostCoreOf(1)}"));
    }

    [Test]
    public void AMachineWithMoreCpusThanHostCoresRunsUnpinnedAndSaysSo()
    {
        int cpus = HostCpu.AllowedCpus().Length + 1;
        if (cpus > MachineOptions.MaxCpus)
        {
            Assert.Ignore($"the host has more cores than a machine has CPUs ({cpus - 1})");
        }

        using var m = new SimMachine(Sim.Small(cpus));

        Assert.That(m.PinsHostThreads, Is.False);
        Assert.That(m.HostCoreOf(0), Is.EqualTo(-1));
        Assert.That(m.Warnings, Has.Some.Contains("unpinned"));
    }

    [Test]
    public void PinningToANonexistentCpuThrowsAffinityExceptionWithEinval()
    {
        if (!HostCpu.IsPinningAvailable)
        {
            Assert.Ignore("thread pinning is unavailable on this platform");
        }

        var (error, before, after) = OnDedicatedThread(() => HostCpu.PinCurrentThread(100_000));

        Assert.That(error, Is.TypeOf<AffinityException>());
        var affinity = (AffinityException)error!;
        Assert.That(affinity.Errno, Is.EqualTo(Errno.EINVAL));
        Assert.That(affinity.HostCpu, Is.EqualTo(100_000));
        Assert.That(affinity.Call, Is.EqualTo("sched_setaffinity"));
        Assert.That(after, Is.EqualTo(before), "a refused pin leaves the affinity alone");
    }

    [Test]
    public void PinningToACpuOutsideTheAllowedSetThrowsAffinityExceptionWithEinval()
    {
        if (!HostCpu.IsPinningAvailable)
        {
            Assert.Ignore("thread pinning is unavailable on this platform");
        }

        int[] allowed = HostCpu.AllowedCpus();
        int outside = Enumerable.Range(0, 1024).FirstOrDefault(c => !allowed.Contains(c), -1);
        if (outside < 0)
        {
            Assert.Ignore("every CPU a cpu_set_t can name is allowed");
        }

        var (error, before, after) = OnDedicatedThread(() => HostCpu.PinCurrentThread(outside));

        Assert.That(error, Is.TypeOf<AffinityException>());
        Assert.That(((AffinityException)error!).Errno, Is.EqualTo(Errno.EINVAL));
        Assert.That(((AffinityException)error!).HostCpu, Is.EqualTo(outside));
        Assert.That(after, Is.EqualTo(before));
    }

    [Test]
    public void PinningAThreadToAnAllowedCpuRunsItThereAndTheAffinityCanBeRestored()
    {
        if (!HostCpu.IsPinningAvailable)
        {
            Assert.Ignore("thread pinning is unavailable on this platform");
        }

        int[] allowed = HostCpu.AllowedCpus();
        int core = allowed[^1];
        int seen = -1;
        int[] pinnedSet = [];
        var (error, before, after) = OnDedicatedThread(() =>
        {
            HostCpu.PinCurrentThread(core);
            pinnedSet = HostCpu.AllowedCpus();
            seen = HostCpu.CurrentCpu();
        });

        Assert.That(error, Is.Null);
        Assert.That(pinnedSet, Is.EqualTo(new[] { core }));
        Assert.That(seen, Is.EqualTo(core));
        Assert.That(after, Is.EqualTo(before));
    }

    /// <summary>
    /// Runs <paramref name="body"/> on a fresh host thread (so the test runner's affinity is never
    /// touched), restoring that thread's affinity afterwards; returns what it threw and the
    /// affinity before the body and after the restore.
    /// </summary>
    private static (Exception? Error, int[] Before, int[] After) OnDedicatedThread(Action body)
    {
        Exception? error = null;
        int[] before = [], after = [];
        var thread = new Thread(() =>
        {
            before = HostCpu.AllowedCpus();
            try
            {
                body();
            }
            catch (Exception e)
            {
                error = e;
            }
            finally
            {
                HostCpu.SetCurrentThreadAffinity(before);
                after = HostCpu.AllowedCpus();
            }
        })
        { IsBackground = true, Name = "affinity-test" };
        thread.Start();
        Assert.That(thread.Join(Sim.Patience), Is.True, "the affinity thread finished");
        return (error, before, after);
    }
}
