using System.Globalization;

namespace Native.PageTable;

/// <summary>
/// The host's TLB-shootdown interrupt counts from <c>/proc/interrupts</c> (the <c>TLB</c>
/// line: flush IPIs each CPU has handled since boot). These are system-wide, every process
/// included, and zero on hosts whose remote flushes are hypercalls rather than guest IPIs; the
/// per-thread tracepoint counts (<see cref="HostMmuCounts"/>) are the attributable ones.
/// </summary>
public static class HostInterrupts
{
    private const string Path = "/proc/interrupts";

    /// <summary>True when this host has a TLB line in <c>/proc/interrupts</c>.</summary>
    public static bool IsAvailable => ReadTlbShootdowns() != null;

    /// <summary>TLB shootdown interrupts handled per host CPU (indexed by CPU number), or null when the host has no such line.</summary>
    public static long[]? ReadTlbShootdowns()
    {
        if (!OperatingSystem.IsLinux() || !File.Exists(Path))
        {
            return null;
        }

        string[] lines;
        try
        {
            lines = File.ReadAllLines(Path);
        }
        catch (IOException)
        {
            return null;
        }

        return lines.Length == 0 ? null : Parse(lines[0], lines.FirstOrDefault(l => l.TrimStart().StartsWith("TLB:", StringComparison.Ordinal)));
    }

    /// <summary>The sum over <paramref name="hostCpus"/> of <paramref name="after"/> minus <paramref name="before"/>, or -1 when either is missing.</summary>
    public static long Delta(long[]? before, long[]? after, IEnumerable<int> hostCpus)
    {
        ArgumentNullException.ThrowIfNull(hostCpus);
        if (before == null || after == null)
        {
            return -1;
        }

        long sum = 0;
        foreach (int cpu in hostCpus)
        {
            if (cpu >= 0 && cpu < before.Length && cpu < after.Length)
            {
                sum += after[cpu] - before[cpu];
            }
        }

        return sum;
    }

    /// <summary>Parses the header (<c>CPU0 CPU1 ...</c>) and the TLB line; null when the line is absent or malformed.</summary>
    internal static long[]? Parse(string header, string? tlbLine)
    {
        if (tlbLine == null)
        {
            return null;
        }

        var cpus = header.Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .Select(c => c.StartsWith("CPU", StringComparison.Ordinal) && int.TryParse(c.AsSpan(3), NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n : -1)
            .ToArray();
        var fields = tlbLine.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (cpus.Length == 0 || cpus.Any(c => c < 0) || fields.Length < cpus.Length + 1)
        {
            return null;
        }

        var counts = new long[cpus.Max() + 1];
        for (int i = 0; i < cpus.Length; i++)
        {
            if (!long.TryParse(fields[i + 1], NumberStyles.None, CultureInfo.InvariantCulture, out counts[cpus[i]]))
            {
                return null;
            }
        }

        return counts;
    }
}
