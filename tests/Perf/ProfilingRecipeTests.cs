using System.Diagnostics;
using System.Diagnostics.Tracing;
using System.Text;
using Native.PageTable;
using Native.Perf.Commands;
using Native.Perf.Paper;
using Native.SfBufNative;
using Native.Tests.Machine;
using NUnit.Framework;
using SfBufHandle = Native.SfBufNative.SfBuf;
using SimMachine = Native.PageTable.Machine;

namespace Native.Tests.Perf;

/// <summary>
/// docs/profiling.md: the trace recipe runs as written (dotnet-trace launches the built perf,
/// which runs its rounds in process, and the trace holds the sf_buf events), and the events that
/// a quick run does not reliably produce (waits, the epoch fallback, lock contention) are raised
/// with their fields; with no session listening, the guards are off.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class ProfilingRecipeTests
{
    /// <summary>The perf arguments of the documented trace recipe.</summary>
    private const string PaperArguments = "paper --quick --in-process --repeat 1 --cpus 2 --strategies sfbuf-i386 epoch-cache --experiments pipe";

    /// <summary>The documented recipe, with <c>{perf}</c> for perf.dll and <c>{trace}</c> for the output file.</summary>
    private const string TraceRecipe = "dotnet dotnet-trace collect --providers SfBufNative:0x1FF:5 -o {trace} -- dotnet {perf} " + PaperArguments;

    /// <summary>The documented counters recipe, with <c>{perf}</c> for perf.dll and <c>{counters}</c> for the output file.</summary>
    /// <remarks>Three experiments, three rounds: the run outlasts dotnet-counters' first one-second samples.</remarks>
    private const string CountersRecipe = "dotnet dotnet-counters collect --counters SfBufNative --format json -o {counters} -- dotnet {perf} "
        + "paper --quick --in-process --repeat 3 --cpus 2 --strategies sfbuf-i386 epoch-cache --experiments pipe sendfile-cold md-rand";

    private static readonly TimeSpan s_restoreTimeout = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan s_traceTimeout = TimeSpan.FromSeconds(120);

    [Test]
    public void TheDocsShowTheRecipeThisTestRuns()
    {
        string docs = File.ReadAllText(Path.Combine(TestRepository.Root, "docs", "profiling.md"));
        const string perf = "perf/bin/Release/net10.0/perf.dll";
        Assert.That(docs, Does.Contain(TraceRecipe.Replace("{trace}", "trace.nettrace", StringComparison.Ordinal).Replace("{perf}", perf, StringComparison.Ordinal)), "docs/profiling.md shows the trace recipe this test runs");
        Assert.That(docs, Does.Contain(CountersRecipe.Replace("{counters}", "counters.json", StringComparison.Ordinal).Replace("{perf}", perf, StringComparison.Ordinal)), "docs/profiling.md shows the counters recipe this test runs");
    }

    [Test]
    [CancelAfter(300_000)]
    public void ATraceTakenOutOfProcessByDotnetTraceHoldsTheSfBufEvents()
    {
        string root = TestRepository.Root;
        string perf = PerfDll(root);
        string dir = Path.Combine(Path.GetTempPath(), "sfbuf-trace-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            Run(root, "dotnet", "tool restore", s_restoreTimeout);
            string trace = Path.Combine(dir, "trace.nettrace");
            string command = TraceRecipe.Replace("{trace}", Quote(trace), StringComparison.Ordinal).Replace("{perf}", Quote(perf), StringComparison.Ordinal);
            string output = Run(root, "dotnet", command["dotnet ".Length..], s_traceTimeout);
            Assert.That(File.Exists(trace), Is.True, $"dotnet-trace wrote no trace; its output:{Environment.NewLine}{output}");

            var summary = TraceSummary.Read(trace);
            TestContext.Out.WriteLine(summary.ToMarkdown());
            Assert.Multiple(() =>
            {
                foreach (var strategy in new[] { SfBufMapper.I386, SfBufMapper.EpochCache })
                {
                    Assert.That(summary.Count("SfBufAlloc", strategy + " hit"), Is.GreaterThan(0), $"{strategy} hits");
                    Assert.That(summary.Count("SfBufAlloc", strategy + " miss"), Is.GreaterThan(0), $"{strategy} misses");
                    Assert.That(summary.Count("SfBufMiss", strategy), Is.EqualTo(summary.Count("SfBufAlloc", strategy + " miss")), $"{strategy}: one Miss event per allocation that missed");
                }

                Assert.That(summary.Count("ShootdownBegin"), Is.EqualTo(summary.Count("ShootdownEnd")), "every round that begins ends");
                Assert.That(summary.Count("ShootdownBegin"), Is.GreaterThan(0), "sfbuf-i386 shoots down");
                Assert.That(summary.Fields["SfBufAlloc"], Is.EqualTo(new[] { "strategy", "mapper", "cpu", "frame", "kva", "hit" }));
                Assert.That(summary.Fields["ShootdownEnd"], Does.Contain("ackWaitNanoseconds"));
            });
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Test]
    [CancelAfter(300_000)]
    public void CountersCollectedOutOfProcessByDotnetCountersShowTheSfBufInstruments()
    {
        string root = TestRepository.Root;
        string perf = PerfDll(root);
        string dir = Path.Combine(Path.GetTempPath(), "sfbuf-counters-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            Run(root, "dotnet", "tool restore", s_restoreTimeout);
            string counters = Path.Combine(dir, "counters.json");
            string command = CountersRecipe.Replace("{counters}", Quote(counters), StringComparison.Ordinal).Replace("{perf}", Quote(perf), StringComparison.Ordinal);
            string output = Run(root, "dotnet", command["dotnet ".Length..], s_traceTimeout);
            Assert.That(File.Exists(counters), Is.True, $"dotnet-counters wrote no file; its output:{Environment.NewLine}{output}");

            // A gauge shows from the first sample, a rate from the second (it needs two), so how
            // many instruments a short run shows depends on the host's speed: at least one.
            var names = System.Text.RegularExpressions.Regex.Matches(File.ReadAllText(counters), "\"name\": \"([^ \"]+)")
                .Select(m => m.Groups[1].Value).ToHashSet();
            Assert.That(names.Where(n => n.StartsWith("sfbuf.", StringComparison.Ordinal) || n.StartsWith("total.", StringComparison.Ordinal)), Is.Not.Empty,
                $"an SfBufNative instrument was sampled; seen: {string.Join(", ", names.Order())}; dotnet-counters said:{Environment.NewLine}{output}");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Test]
    public void WithNoSessionTheGuardsAreOff()
    {
        using (var listener = new SfBufListener(EventLevel.Verbose, (EventKeywords)0x1FF))
        {
            Assert.That(MachineEventSource.On.Alloc && MachineEventSource.On.Wait && MachineEventSource.On.Lock && MachineEventSource.On.EpochFallback, Is.True);
        }

        // Disabling leaves a flag set until the next command (the event method tests again), so
        // look at what the source itself says, then at a fresh enable of nothing.
        Assert.That(MachineEventSource.Log.IsEnabled(EventLevel.Verbose, MachineEventSource.Keywords.Alloc), Is.False);
        using (var none = new SfBufListener(EventLevel.Critical, MachineEventSource.Keywords.Fault))
        {
            Assert.That(MachineEventSource.On.Alloc || MachineEventSource.On.Miss || MachineEventSource.On.Recycle || MachineEventSource.On.Wait || MachineEventSource.On.Lock, Is.False);
        }
    }

    [Test]
    public void AWaitForAFreeMappingIsTracedWithItsWakeup()
    {
        foreach (var strategy in new[] { SfBufMapper.I386, SfBufMapper.EpochCache })
        {
            using var listener = new SfBufListener(EventLevel.Informational, MachineEventSource.Keywords.Wait);
            using var m = new SimMachine(Sim.Small());
            using var mapper = SfBufMapper.Create(strategy, m, 2);
            var pages = Enumerable.Range(0, 3).Select(_ => m.Physical.Alloc(AllocFlags.Wired)).ToArray();
            var held = new List<SfBufHandle>();
            m.Run(0, () => held.AddRange(pages.Take(2).Select(p => mapper.Alloc(p))));
            var waiter = m.StartThread("waiter", () => mapper.Free(mapper.Alloc(pages[2])), cpu: 1, bound: true);
            Sim.WaitUntil(() => mapper.Stats().AllocWait > 0, "the third allocation waits");
            m.Run(0, () => held.ForEach(mapper.Free));
            waiter.Join(TimeSpan.FromSeconds(30));
            Assert.That(waiter.HasExited, Is.True, "the waiter got its mapping");

            var wait = listener.Single("SfBufWait", strategy);
            var wakeup = listener.Single("SfBufWakeup", strategy);
            Assert.Multiple(() =>
            {
                Assert.That(wait["frame"], Is.EqualTo(pages[2].Frame), strategy);
                Assert.That(wait["cpu"], Is.EqualTo(1), strategy);
                Assert.That(wakeup["frame"], Is.EqualTo(pages[2].Frame), strategy);
                Assert.That((long)wakeup["waitNanoseconds"]!, Is.GreaterThan(0L), strategy);
                Assert.That(wakeup["interrupted"], Is.False, strategy);
            });
        }
    }

    [Test]
    public void TheEpochFallbackIsTraced()
    {
        using var listener = new SfBufListener(EventLevel.Informational, MachineEventSource.Keywords.EpochFallback);
        using var m = new SimMachine(Sim.Small());
        using var sfbufs = (EpochCacheMapper)SfBufMapper.Create(SfBufMapper.EpochCache, m, 8);
        var pages = Enumerable.Range(0, 16).Select(_ => m.Physical.Alloc(AllocFlags.Wired)).ToArray();

        // CPU 1 answers IPIs but passes no flush point: only the fallback advances its epoch.
        using (new Native.Tests.SfBuf.BusyCpus(m, [1], polls: false))
        {
            m.Run(0, () =>
            {
                foreach (var page in pages)
                {
                    sfbufs.Free(sfbufs.Alloc(page));
                }
            });
        }

        var events = listener.Named("EpochFallback");
        Assert.That(sfbufs.FallbackShootdowns, Is.GreaterThan(0));
        Assert.That(events, Has.Count.EqualTo(sfbufs.FallbackShootdowns), "one event per fallback shootdown");
        Assert.That(events[0]["laggards"], Is.EqualTo(2UL), "CPU 1 lagged");
        Assert.That(events[0]["laggardCount"], Is.EqualTo(1));
        Assert.That(events[0]["cpu"], Is.EqualTo(0));
    }

    [Test]
    public void AContendedKernelMutexIsTracedWithItsWait()
    {
        using var listener = new SfBufListener(EventLevel.Verbose, MachineEventSource.Keywords.Lock);
        using var m = new SimMachine(Sim.Small());
        var mutex = new KMutex("traced");
        int phase = 0;
        var holder = m.StartThread("holder", () =>
        {
            mutex.Lock();
            Volatile.Write(ref phase, 1);
            while (Volatile.Read(ref phase) < 2)
            {
                m.CurrentCpu.Poll();
            }

            // Held a while longer, so that the contender, which announced itself, finds it taken.
            var held = Stopwatch.StartNew();
            while (held.ElapsedMilliseconds < 200)
            {
                m.CurrentCpu.Poll();
            }

            mutex.Unlock();
        }, cpu: 0, bound: true);
        Sim.WaitUntil(() => Volatile.Read(ref phase) == 1, "the holder holds the mutex");
        var contender = m.StartThread("contender", () =>
        {
            Volatile.Write(ref phase, 2);
            mutex.Lock();
            mutex.Unlock();
        }, cpu: 1, bound: true);
        contender.Join(TimeSpan.FromSeconds(30));
        holder.Join(TimeSpan.FromSeconds(30));
        Assert.That(contender.HasExited && holder.HasExited, Is.True);

        var events = listener.Named("LockContended").Where(e => (string)e["lockName"]! == "traced").ToList();
        Assert.That(events, Has.Count.EqualTo(1), "one contended acquire");
        Assert.That(events[0]["cpu"], Is.EqualTo(1));
        Assert.That(events[0]["thread"], Is.EqualTo(contender.Id));
        Assert.That((long)events[0]["waitNanoseconds"]!, Is.GreaterThan(0L));
        Assert.That(events[0]["spin"], Is.False);
    }

    /// <summary>The built perf the docs name, or this test's copy when only another configuration is built.</summary>
    private static string PerfDll(string root)
    {
        string documented = Path.Combine(root, "perf", "bin", "Release", "net10.0", "perf.dll");
        return File.Exists(documented) ? documented : typeof(PaperRunner).Assembly.Location;
    }

    private static string Quote(string path) => path.Contains(' ', StringComparison.Ordinal) ? $"\"{path}\"" : path;

    /// <summary>Runs a command to its end within <paramref name="timeout"/>; fails with its output when it fails or hangs.</summary>
    private static string Run(string directory, string file, string arguments, TimeSpan timeout)
    {
        var start = new ProcessStartInfo(file, arguments)
        {
            WorkingDirectory = directory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"{file} did not start");
        var output = new StringBuilder();
        process.OutputDataReceived += (_, e) => Append(output, e.Data);
        process.ErrorDataReceived += (_, e) => Append(output, e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            Assert.Fail($"'{file} {arguments}' did not end within {timeout.TotalSeconds} s; its output:{Environment.NewLine}{Text(output)}");
        }

        process.WaitForExit(); // the output's end
        string text = Text(output);
        Assert.That(process.ExitCode, Is.Zero, $"'{file} {arguments}' exited with {process.ExitCode}; its output:{Environment.NewLine}{text}");
        return text;
    }

    private static void Append(StringBuilder output, string? line)
    {
        if (line != null)
        {
            lock (output)
            {
                output.AppendLine(line);
            }
        }
    }

    private static string Text(StringBuilder output)
    {
        lock (output)
        {
            return output.ToString();
        }
    }

    /// <summary>An in-process session of the SfBufNative source that keeps the events it hears, by name, as field dictionaries.</summary>
    private sealed class SfBufListener : EventListener
    {
        private readonly EventLevel _level;
        private readonly EventKeywords _keywords;
        private readonly List<(string Name, Dictionary<string, object?> Fields)> _events = [];
        private readonly bool _ready;

        public SfBufListener(EventLevel level, EventKeywords keywords)
        {
            _level = level;
            _keywords = keywords;
            _ready = true;
            EnableEvents(MachineEventSource.Log, _level, _keywords);
        }

        public List<Dictionary<string, object?>> Named(string name)
        {
            lock (_events)
            {
                return [.. _events.Where(e => e.Name == name).Select(e => e.Fields)];
            }
        }

        public Dictionary<string, object?> Single(string name, string strategy)
        {
            var matching = Named(name).Where(e => (string?)e["strategy"] == strategy).ToList();
            Assert.That(matching, Has.Count.EqualTo(1), $"one {name} event of {strategy}");
            return matching[0];
        }

        protected override void OnEventSourceCreated(EventSource eventSource)
        {
            // Called from the base constructor too, before the fields are set: enabled there by the constructor.
            if (_ready && eventSource == MachineEventSource.Log)
            {
                EnableEvents(eventSource, _level, _keywords);
            }
        }

        protected override void OnEventWritten(EventWrittenEventArgs eventData)
        {
            if (eventData.EventSource != MachineEventSource.Log || eventData.EventName == null || eventData.PayloadNames == null || eventData.Payload == null)
            {
                return;
            }

            var fields = new Dictionary<string, object?>(StringComparer.Ordinal);
            for (int i = 0; i < eventData.PayloadNames.Count; i++)
            {
                fields[eventData.PayloadNames[i]] = eventData.Payload[i];
            }

            lock (_events)
            {
                _events.Add((eventData.EventName, fields));
            }
        }
    }
}
