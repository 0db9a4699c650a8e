namespace Native.SfBufNative;

/// <summary>A high-water mark (<c>nsfbufspeak</c> and its kin) raised without a lock.</summary>
internal static class HighWater
{
    /// <summary>Raises <paramref name="mark"/> to <paramref name="value"/> if that is higher; a racing raise to a higher value wins.</summary>
    public static void Raise(ref int mark, int value)
    {
        for (int seen = Volatile.Read(ref mark); value > seen; seen = Volatile.Read(ref mark))
        {
            if (Interlocked.CompareExchange(ref mark, value, seen) == seen)
            {
                return;
            }
        }
    }
}
