using Native.SfBufNative;

namespace Native.Perf;

/// <summary>
/// The sf_buf strategies that live outside <c>SfBufNative</c>, registered with one line each.
/// <c>perf</c> calls <see cref="RegisterExternal"/> at start-up and the tests assembly from its
/// module initializer, before anything enumerates the strategies.
/// </summary>
public static class StrategyCatalog
{
    private static readonly Lock s_lock = new();
    private static bool s_registered;

    /// <summary>Registers every external strategy, once per process (later calls do nothing).</summary>
    public static void RegisterExternal()
    {
        lock (s_lock)
        {
            if (s_registered)
            {
                return;
            }

            s_registered = true;
            SfBufStrategyInfo.Register(SampleStrategy.BatchedFlushMapper.Info);
        }
    }
}
