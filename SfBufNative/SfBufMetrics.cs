using System.Diagnostics.Metrics;

namespace Native.SfBufNative;

/// <summary>
/// sf_buf statistics as observable instruments on the <c>SfBufNative</c> meter, tagged with
/// the strategy. Pull-style: computed only when a listener samples.
/// </summary>
internal static class SfBufMetrics
{
    public static Meter Create(SfBufMapper mapper)
    {
        var meter = new Meter("SfBufNative", "1.0");
        Measurement<long> M(long v) => new(v, new KeyValuePair<string, object?>("strategy", mapper.Name));
        meter.CreateObservableGauge("sfbuf.nsfbufs", () => M(mapper.Stats().Nsfbufs), description: "kern.ipc.nsfbufs");
        meter.CreateObservableGauge("sfbuf.nsfbufsused", () => M(mapper.Stats().NsfbufsUsed), description: "kern.ipc.nsfbufsused");
        meter.CreateObservableGauge("sfbuf.nsfbufspeak", () => M(mapper.Stats().NsfbufsPeak), description: "kern.ipc.nsfbufspeak");
        meter.CreateObservableCounter("sfbuf.sf_allocwait", () => M(mapper.Stats().AllocWait), description: "sfstat.sf_allocwait");
        meter.CreateObservableCounter("sfbuf.sf_allocfail", () => M(mapper.Stats().AllocFail), description: "sfstat.sf_allocfail");
        meter.CreateObservableCounter("sfbuf.hits", () => M(mapper.Stats().Hits));
        meter.CreateObservableCounter("sfbuf.misses", () => M(mapper.Stats().Misses));
        meter.CreateObservableCounter("sfbuf.recycles", () => M(mapper.Stats().Recycles));
        meter.CreateObservableCounter("sfbuf.failures", () => M(mapper.Stats().Failures));
        return meter;
    }
}
