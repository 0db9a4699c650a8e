using System.Text.Json;
using Native.PageTable;

namespace Native.Perf.Paper;

/// <summary>
/// Cost profiles by name: the built-in ones, and <c>host</c>, which <c>perf calibrate</c>
/// measures and writes to <see cref="HostProfilePath"/>.
/// </summary>
internal static class CostProfiles
{
    private static readonly JsonSerializerOptions s_indented = new() { WriteIndented = true };

    /// <summary>Where the measured host profile lives (per user, outside the repository).</summary>
    public static string HostProfilePath =>
        Environment.GetEnvironmentVariable("SFBUF_HOST_PROFILE")
        ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.ApplicationData, Environment.SpecialFolderOption.Create), "SfBufNative", "cost-host.json");

    public static CostModel Load(string name)
    {
        if (name != "host")
        {
            return CostModel.Named(name);
        }

        if (!File.Exists(HostProfilePath))
        {
            throw new ArgumentException($"no host profile at {HostProfilePath}: run `perf calibrate` first");
        }

        return JsonSerializer.Deserialize<CostModel>(File.ReadAllText(HostProfilePath))
            ?? throw new ArgumentException($"{HostProfilePath} holds no cost profile");
    }

    public static void SaveHost(CostModel model)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(HostProfilePath)!);
        File.WriteAllText(HostProfilePath, JsonSerializer.Serialize(model, s_indented));
    }
}
