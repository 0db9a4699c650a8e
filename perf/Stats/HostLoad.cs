using System.Diagnostics;
using System.Globalization;

namespace Native.Perf.Stats;

/// <summary>
/// How busy the host was during a measurement, from Linux's <c>/proc</c>: the load average
/// when it began, and the CPU time other processes used meanwhile (all CPU time of the host
/// minus this process's and its waited-for children's), in cores. Simulated CPUs are host
/// threads, so every core another process takes is a simulated CPU descheduled. On a host
/// without <c>/proc</c> nothing is known and nothing is claimed.
/// </summary>
public sealed class HostLoad
{
    private readonly long _startTicks;
    private readonly long _startBusy;
    private readonly long _startOwn;

    private HostLoad(double? loadAverage, int cores)
    {
        LoadAverageAtStart = loadAverage;
        Cores = cores;
        _startTicks = Stopwatch.GetTimestamp();
        (_startBusy, _startOwn) = (BusyJiffies() ?? -1, OwnJiffies() ?? -1);
    }

    /// <summary>Cores other processes must keep busy for the host to count as busy.</summary>
    public const double BusyCores = 0.25;

    /// <summary>The 1-minute load average when the measurement began, or null when unknown.</summary>
    public double? LoadAverageAtStart { get; }

    /// <summary>Host cores this process may use.</summary>
    public int Cores { get; }

    /// <summary>Starts watching the host.</summary>
    public static HostLoad Start(int cores) => new(ReadLoadAverage(), cores);

    /// <summary>
    /// Cores other processes keep busy now: <see cref="OtherCoresBusy"/> over
    /// <paramref name="window"/> of sleep (the load average would still count a run that just
    /// ended); null when <c>/proc</c> cannot tell.
    /// </summary>
    public static double? SampleOtherCoresBusy(int cores, TimeSpan window)
    {
        var load = Start(cores);
        Thread.Sleep(window);
        return load.OtherCoresBusy();
    }

    /// <summary>
    /// Cores other processes kept busy on average since <see cref="Start"/> (0 to
    /// <see cref="Cores"/>), or null when <c>/proc</c> cannot tell.
    /// </summary>
    public double? OtherCoresBusy()
    {
        long? busy = BusyJiffies();
        long? own = OwnJiffies();
        if (busy is null || own is null || _startBusy < 0 || _startOwn < 0)
        {
            return null;
        }

        double seconds = Stopwatch.GetElapsedTime(_startTicks).TotalSeconds;
        if (seconds <= 0)
        {
            return null;
        }

        // /proc/stat counts every CPU of the machine; only our cores matter, and never more than them.
        double others = (busy.Value - _startBusy - (own.Value - _startOwn)) / (double)ClockTicksPerSecond / seconds;
        return Math.Clamp(others * Cores / Environment.ProcessorCount, 0, Cores);
    }

    /// <summary>
    /// A warning when the host was busy (other processes used at least a quarter of a core on
    /// average; where <c>/proc/stat</c> cannot tell, the load average at the start exceeded the
    /// cores), saying what it means for the figures; null on a quiet host. The load average alone
    /// does not count where the CPU time can be measured: it still holds a run that just ended.
    /// </summary>
    public string? Warning() => Warning(OtherCoresBusy(), LoadAverageAtStart, Cores);

    /// <summary>
    /// The rule of <see cref="Warning()"/> on given readings: <paramref name="others"/> cores kept
    /// busy by other processes (null when unknown) and the load average when the run began.
    /// </summary>
    internal static string? Warning(double? others, double? loadAverageAtStart, int cores)
    {
        bool busyBefore = others is null && loadAverageAtStart is { } load && load > cores;
        if ((others is null || others < BusyCores) && !busyBefore)
        {
            return null;
        }

        string during = others is { } o ? $"other processes kept {o:0.0#} of the {cores} host cores busy on average during the run" : "the host's CPU use during the run is unknown";
        string before = loadAverageAtStart is { } l ? $"; load average {l:0.0#} when it began" : string.Empty;
        return $"host busy: {during}{before}. Simulated CPUs are host threads, so they were descheduled: "
            + $"throughput is lower and noisier than on a quiet host, and the within-run intervals are wider (speedups whose interval holds 1.0 are marked {WithinRun.HoldsOne}). "
            + "Counts and the modelled mapping cost are not affected. Rerun on a quiet host for timings.";
    }

    private static long ClockTicksPerSecond => 100; // USER_HZ, fixed at 100 on Linux for /proc

    private static double? ReadLoadAverage()
    {
        try
        {
            string text = File.ReadAllText("/proc/loadavg");
            return double.Parse(text.Split(' ')[0], CultureInfo.InvariantCulture);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return null;
        }
    }

    /// <summary>Jiffies every CPU of the host spent not idle (<c>/proc/stat</c>, first line).</summary>
    private static long? BusyJiffies()
    {
        try
        {
            using var reader = new StreamReader("/proc/stat");
            var fields = reader.ReadLine()!.Split(' ', StringSplitOptions.RemoveEmptyEntries);

            // cpu user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait.
            long total = 0;
            for (int i = 1; i < Math.Min(fields.Length, 9); i++)
            {
                total += long.Parse(fields[i], CultureInfo.InvariantCulture);
            }

            return total - long.Parse(fields[4], CultureInfo.InvariantCulture) - long.Parse(fields[5], CultureInfo.InvariantCulture);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException or NullReferenceException or IndexOutOfRangeException)
        {
            return null;
        }
    }

    /// <summary>Jiffies this process and its waited-for children used (<c>/proc/self/stat</c> utime, stime, cutime, cstime).</summary>
    private static long? OwnJiffies()
    {
        try
        {
            string text = File.ReadAllText("/proc/self/stat");

            // The command name may hold spaces: fields are counted after its closing parenthesis.
            var fields = text[(text.LastIndexOf(')') + 2)..].Split(' ');
            return Enumerable.Range(11, 4).Sum(i => long.Parse(fields[i], CultureInfo.InvariantCulture));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return null;
        }
    }
}
