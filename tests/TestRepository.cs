using Native.Perf.Report;
using NUnit.Framework;

namespace Native.Tests;

/// <summary>The repository the tests run from: the folder holding <c>Native.sln</c> above the test's directory.</summary>
internal static class TestRepository
{
    /// <summary>The repository's root.</summary>
    public static string Root { get; } = DocResults.FindRoot(TestContext.CurrentContext.TestDirectory);
}
