using System.Text.Json;
using Native.Interop;
using Native.PageTable;
using Native.Perf.Paper;
using Native.Perf.Real;
using NUnit.Framework;

namespace Native.Tests.Perf;

/// <summary>
/// <c>perf calibrate</c>'s <c>host</c> profile: every virtual-time price measured and written, and
/// the profile file read back, including one written before those prices existed. Presence,
/// positivity and finiteness only: what the host measures is not asserted.
/// </summary>
[TestFixture]
[NonParallelizable] // points SFBUF_HOST_PROFILE, read by the whole process, at a temporary file
public sealed class CalibrateTests
{
    private const string Variable = "SFBUF_HOST_PROFILE";

    // The profile's virtual-time prices, as the file names them.
    private static readonly string[] s_virtualTimeFields = ["CopyBytesPerNs", "KernelEntryNs", "LockNs", "LockHandoffNs", "WakeupNs", "ContextSwitchNs", "SpinNs"];

    private string? _saved;
    private string _directory = string.Empty;

    private string ProfilePath => Path.Combine(_directory, "cost-host.json");

    [SetUp]
    public void PointTheHostProfileAtATemporaryFile()
    {
        _saved = Environment.GetEnvironmentVariable(Variable);
        _directory = Path.Combine(Path.GetTempPath(), $"calibrate-{Guid.NewGuid():N}");
        Environment.SetEnvironmentVariable(Variable, ProfilePath);
    }

    [TearDown]
    public void Restore()
    {
        Environment.SetEnvironmentVariable(Variable, _saved);
        if (Directory.Exists(_directory))
        {
            Directory.Delete(_directory, recursive: true);
        }
    }

    [Test]
    public void CalibrateWritesEveryVirtualTimePriceAsAPositiveFiniteNumber()
    {
        Assume.That(HostCpu.IsPinningAvailable, "calibrate needs thread pinning");
        Assert.That(CalibrateCommand.Run(iterations: 2_000, probeScale: 0.05), Is.Zero);

        using var file = JsonDocument.Parse(File.ReadAllText(ProfilePath));
        foreach (string field in s_virtualTimeFields)
        {
            Assert.That(file.RootElement.TryGetProperty(field, out var value), Is.True, $"{field} is written");
            Assert.That(value.ValueKind, Is.EqualTo(JsonValueKind.Number), field);
            Assert.That(double.IsFinite(value.GetDouble()) && value.GetDouble() > 0, Is.True, $"{field} = {value}");
        }

        var host = CostProfiles.Load("host");
        Assert.That(host.Name, Is.EqualTo("host"));
        Assert.That(host.CanRunVirtualTime, Is.True);
        foreach (string price in new[] { "copy", "kernel entry", "lock", "lock hand-off", "wakeup", "context switch", "spin turn" })
        {
            Assert.That(host.Source, Does.Contain($"{price} = "), "the source says how each price was measured");
        }
    }

    [Test]
    public void TheProbeMeasuresEveryPriceItWritesAndBothCrossCpuOnesWithASecondCore()
    {
        Assume.That(HostCpu.IsPinningAvailable, "the probe pins its CPUs");
        double? roundTrip = CrossCoreRoundTrip.Measure(roundTrips: 200, batches: 3);
        var prices = VirtualPriceProbe.Measure(roundTrip, scale: 0.05);

        Assert.That(prices.Lines.Count(), Is.EqualTo(8), "seven prices and the 64 KiB copy beside the page");
        foreach (var price in prices.Lines)
        {
            Assert.That(double.IsFinite(price.Value) && price.Value > 0, Is.True, $"{price.Name} = {price.Value}");
            Assert.That(price.Method, Is.Not.Empty, price.Name);
        }

        var profile = prices.ApplyTo(CostModel.Default);
        Assert.That(
            new[] { profile.CopyBytesPerNs, profile.KernelEntryNs, profile.LockNs, profile.LockHandoffNs, profile.WakeupNs, profile.ContextSwitchNs, profile.SpinNs },
            Is.EqualTo(new[] { prices.Copy.Value, prices.KernelEntry.Value, prices.Lock.Value, prices.LockHandoff.Value, prices.Wakeup.Value, prices.ContextSwitch.Value, prices.Spin.Value }));
        Assert.That(profile.LocalInvalidateNs, Is.EqualTo(CostModel.Default.LocalInvalidateNs), "the hardware prices are the caller's");

        if (roundTrip is not null && HostCpu.AllowedCpus().Length >= 2)
        {
            Assert.That(prices.LockHandoff.Method, Does.StartWith("a KMutex ping-ponged"));
            Assert.That(prices.Wakeup.Method, Does.StartWith("half a tsleep/wakeup round trip"));
        }
    }

    [Test]
    public void TheHostProfileRoundTripsThroughItsFile()
    {
        var profile = new CostModel("host", 1, 2, 3, 4, 5, 6, 7, "test profile: every price its own value")
        {
            CopyBytesPerNs = 8.5,
            KernelEntryNs = 9,
            LockNs = 10,
            LockHandoffNs = 11,
            WakeupNs = 12,
            ContextSwitchNs = 13,
            SpinNs = 14,
        };

        CostProfiles.SaveHost(profile);

        Assert.That(CostProfiles.Load("host"), Is.EqualTo(profile));
    }

    [Test]
    public void AHostProfileWrittenBeforeTheVirtualTimePricesLoadsWithTheDefaults()
    {
        // What calibrate wrote before it measured the virtual-time prices: the hardware prices only.
        Directory.CreateDirectory(_directory);
        File.WriteAllText(ProfilePath, """
            {
              "Name": "host",
              "LocalInvalidateNs": 1250.9,
              "FullFlushNs": 5003.5,
              "TlbMissWalkNs": 16.5,
              "PteWriteNs": 5,
              "IpiSendNs": 1029.7,
              "IpiDeliveryNs": 3432.2,
              "IpiHandlerNs": 2402.5,
              "Source": "perf calibrate before the virtual-time prices"
            }
            """);

        var host = CostProfiles.Load("host");

        Assert.That(host, Is.EqualTo(CostModel.Default with
        {
            Name = "host",
            LocalInvalidateNs = 1250.9,
            FullFlushNs = 5003.5,
            TlbMissWalkNs = 16.5,
            PteWriteNs = 5,
            IpiSendNs = 1029.7,
            IpiDeliveryNs = 3432.2,
            IpiHandlerNs = 2402.5,
            Source = "perf calibrate before the virtual-time prices",
        }));
        Assert.That(host.CanRunVirtualTime, Is.True);
    }
}
