using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

namespace Native.Perf.Benchmarks;

/// <summary>
/// The configuration <c>perf bench</c> runs every suite with: BenchmarkDotNet's defaults, the
/// median and minimum columns, a workstation non-concurrent GC and tiered PGO off, so that a
/// background GC thread or a late PGO re-JIT does not move the numbers between runs.
/// </summary>
internal sealed class BenchConfig : ManualConfig
{
    /// <summary>The full configuration, or the CI smoke one when <paramref name="smoke"/>.</summary>
    public BenchConfig(bool smoke)
    {
        Add(DefaultConfig.Instance);

        // The machines are 2-core VMs, often busy with builds and tests: other processes inflate
        // the mean, and the minimum is the least disturbed iteration.
        AddColumn(StatisticColumn.Median, StatisticColumn.Min);
        if (smoke)
        {
            // In process there is no child build and no new runtime, so no GC or environment
            // settings: the process already runs with the GC perf.csproj asks for.
            AddJob(Job.Dry.WithToolchain(InProcessEmitToolchain.Instance).WithId("Smoke"));
        }
        else
        {
            // A mutator is applied to whichever job runs: the default one, or the one named by
            // --job on the command line (short, medium, ...).
            AddJob(Job.Default
                .WithGcServer(false)
                .WithGcConcurrent(false)
                .WithEnvironmentVariables(new EnvironmentVariable("DOTNET_TieredPGO", "0"))
                .AsMutator());
        }
    }
}
