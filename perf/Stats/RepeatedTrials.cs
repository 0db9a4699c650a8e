namespace Native.Perf.Stats;

/// <summary>
/// Repeated, interleaved trials. Cells that are compared with each other form a group (for
/// <c>perf paper</c>: the strategies of one experiment at one CPU count). Each of R rounds runs
/// every group once, and within a group every member once, in an order rotated by the round, so
/// that drift of the host (another process starting, frequency changes) hits all members alike
/// and the trials of one round can be paired. Any command that measures can use it.
/// </summary>
public static class RepeatedTrials
{
    /// <summary>
    /// The cells of round <paramref name="round"/> (0-based) in the order they run: groups in the
    /// order they first appear in <paramref name="cells"/>, each group's members rotated left by
    /// <paramref name="round"/>.
    /// </summary>
    public static IReadOnlyList<TCell> RoundOrder<TCell, TGroup>(IReadOnlyList<TCell> cells, Func<TCell, TGroup> group, int round)
        where TGroup : notnull
    {
        ArgumentNullException.ThrowIfNull(cells);
        ArgumentNullException.ThrowIfNull(group);
        ArgumentOutOfRangeException.ThrowIfNegative(round);
        var order = new List<TCell>(cells.Count);
        foreach (var members in cells.GroupBy(group).Select(g => g.ToList()))
        {
            int shift = round % members.Count;
            order.AddRange(members.Skip(shift));
            order.AddRange(members.Take(shift));
        }

        return order;
    }

    /// <summary>
    /// Runs <paramref name="rounds"/> rounds of <paramref name="trial"/> over every cell in
    /// <see cref="RoundOrder"/> and returns, per cell, its results in round order.
    /// </summary>
    public static Dictionary<TCell, List<TResult>> Run<TCell, TGroup, TResult>(
        IReadOnlyList<TCell> cells,
        Func<TCell, TGroup> group,
        int rounds,
        Func<TCell, int, TResult> trial,
        Action<TCell, int>? done = null)
        where TCell : notnull
        where TGroup : notnull
    {
        ArgumentNullException.ThrowIfNull(trial);
        ArgumentOutOfRangeException.ThrowIfLessThan(rounds, 1);
        var results = cells.ToDictionary(c => c, _ => new List<TResult>(rounds));
        for (int round = 0; round < rounds; round++)
        {
            foreach (var cell in RoundOrder(cells, group, round))
            {
                results[cell].Add(trial(cell, round));
                done?.Invoke(cell, round);
            }
        }

        return results;
    }
}
