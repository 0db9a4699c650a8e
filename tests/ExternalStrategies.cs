using System.Runtime.CompilerServices;
using Native.SfBufNative;

namespace Native.Tests;

/// <summary>
/// Registers the strategies that live outside <c>SfBufNative</c> (<see cref="Native.Perf.StrategyCatalog"/>)
/// when code of the tests assembly first runs, before NUnit's discovery enumerates the strategies.
/// </summary>
internal static class ExternalStrategies
{
    [ModuleInitializer]
    internal static void Register() => Native.Perf.StrategyCatalog.RegisterExternal();
}

/// <summary>
/// Every strategy, external ones included, for <c>[TestCaseSource(typeof(AllStrategies), nameof(AllStrategies.Names))]</c>.
/// A source must be a member of this assembly, not <see cref="SfBufMapper.StrategyNames"/> itself:
/// NUnit may read a member of another assembly before any code of this one has run, so before its
/// module initializer has registered the external strategies.
/// </summary>
public static class AllStrategies
{
    /// <summary><see cref="SfBufMapper.StrategyNames"/>, read after the module initializer.</summary>
    public static IReadOnlyList<string> Names => SfBufMapper.StrategyNames;
}
