using System.Diagnostics.Metrics;

namespace Native.SfBufNative;

/// <summary>
/// sf_buf statistics as observable instruments on meters named <c>SfBufNative</c>, tagged with
/// the strategy. Pull-style: computed only when a listener samples.
/// <list type="bullet">
/// <item><c>sfbuf.*</c>, one meter per mapper: its pool gauges and counts.</item>
/// <item><c>total.sfbuf.*</c>, one meter per process: the counts over every mapper of each
/// strategy, disposed ones included (what to watch while <c>perf paper</c> boots one per trial).</item>
/// </list>
/// </summary>
internal static class SfBufMetrics
{
    private static readonly Lock s_lock = new();
    private static readonly List<SfBufMapper> s_live = [];

    /// <summary>Mappers whose instruments are published (tests: a failed construction leaves none behind).</summary>
    internal static int LiveCount
    {
        get
        {
            lock (s_lock)
            {
                return s_live.Count;
            }
        }
    }
    private static readonly Dictionary<string, SfBufStats> s_retired = new(StringComparer.Ordinal);
    private static Meter? s_totals;

    private static readonly (string Name, string Description, Func<SfBufStats, long> Value)[] s_counts =
    [
        ("sf_allocwait", "sfstat.sf_allocwait", s => s.AllocWait),
        ("sf_allocfail", "sfstat.sf_allocfail", s => s.AllocFail),
        ("hits", "allocations that found the page mapped", s => s.Hits),
        ("misses", "allocations that made a mapping", s => s.Misses),
        ("recycles", "misses that evicted another page's mapping", s => s.Recycles),
        ("failures", "allocations that returned no sf_buf", s => s.Failures),
    ];

    public static Meter Create(SfBufMapper mapper)
    {
        var meter = new Meter("SfBufNative", "1.0");
        Measurement<long> M(long v) => new(v, new KeyValuePair<string, object?>("strategy", mapper.Name));
        meter.CreateObservableGauge("sfbuf.nsfbufs", () => M(mapper.Stats().Nsfbufs), description: "kern.ipc.nsfbufs");
        meter.CreateObservableGauge("sfbuf.nsfbufsused", () => M(mapper.Stats().NsfbufsUsed), description: "kern.ipc.nsfbufsused");
        meter.CreateObservableGauge("sfbuf.nsfbufspeak", () => M(mapper.Stats().NsfbufsPeak), description: "kern.ipc.nsfbufspeak");
        foreach (var (name, description, value) in s_counts)
        {
            meter.CreateObservableCounter("sfbuf." + name, () => M(value(mapper.Stats())), description: description);
        }

        lock (s_lock)
        {
            s_totals ??= CreateTotals();
            s_live.Add(mapper);
        }

        return meter;
    }

    /// <summary>Folds a disposing mapper's counts into the process totals.</summary>
    public static void Retire(SfBufMapper mapper)
    {
        lock (s_lock)
        {
            if (s_live.Remove(mapper))
            {
                s_retired[mapper.Name] = Add(s_retired.GetValueOrDefault(mapper.Name), mapper.Stats());
            }
        }
    }

    private static Meter CreateTotals()
    {
        var meter = new Meter("SfBufNative", "1.0");
        foreach (var (name, description, value) in s_counts)
        {
            meter.CreateObservableCounter("total.sfbuf." + name, () => ObserveTotals(value), description: description + ", every mapper of the process");
        }

        return meter;
    }

    private static List<Measurement<long>> ObserveTotals(Func<SfBufStats, long> value)
    {
        lock (s_lock)
        {
            var totals = new Dictionary<string, long>(StringComparer.Ordinal);
            foreach (var (strategy, stats) in s_retired)
            {
                totals[strategy] = value(stats);
            }

            foreach (var mapper in s_live)
            {
                totals[mapper.Name] = totals.GetValueOrDefault(mapper.Name) + value(mapper.Stats());
            }

            return [.. totals.Select(t => new Measurement<long>(t.Value, new KeyValuePair<string, object?>("strategy", t.Key)))];
        }
    }

    private static SfBufStats Add(SfBufStats? a, SfBufStats b) => new()
    {
        Strategy = b.Strategy,
        AllocWait = (a?.AllocWait ?? 0) + b.AllocWait,
        AllocFail = (a?.AllocFail ?? 0) + b.AllocFail,
        Hits = (a?.Hits ?? 0) + b.Hits,
        Misses = (a?.Misses ?? 0) + b.Misses,
        Recycles = (a?.Recycles ?? 0) + b.Recycles,
        Failures = (a?.Failures ?? 0) + b.Failures,
    };
}
