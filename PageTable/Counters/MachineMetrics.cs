using System.Diagnostics.Metrics;

namespace Native.PageTable;

/// <summary>
/// Exposes the machine's counters as <see cref="System.Diagnostics.Metrics"/> observable
/// instruments on the <c>SfBufNative</c> meter. They are pull-style: a listener such as
/// dotnet-counters runs the callback when it samples, so nothing is added to any hot path.
/// </summary>
internal static class MachineMetrics
{
    public const string MeterName = "SfBufNative";

    public static Meter Create(Machine machine)
    {
        var meter = new Meter(MeterName, "1.0");
        foreach (var counter in CounterNames.All)
        {
            var c = counter;
            meter.CreateObservableCounter(
                "machine." + CounterNames.Of(c),
                () => Observe(machine, c),
                unit: c == Counter.AckWaitNanoseconds ? "ns" : "{event}",
                description: $"{CounterNames.Of(c)} per simulated CPU");
        }

        return meter;
    }

    private static IEnumerable<Measurement<long>> Observe(Machine machine, Counter counter)
    {
        for (int cpu = 0; cpu < machine.Options.Cpus; cpu++)
        {
            yield return new Measurement<long>(machine.ReadCounter(cpu, counter), new KeyValuePair<string, object?>("cpu", cpu));
        }
    }
}
