using System.Runtime.InteropServices;
using Xunit;

namespace Hull.TestSupport;

/// <summary>
/// Checks for what a test needs (root, /dev/kvm, a binary, a kernel feature). A missing capability fails the test
/// with a message saying what is missing, unless HULL_TEST_SKIP_MISSING=1 is set, which turns it into a skip.
/// That switch is for other machines; CI never sets it.
/// </summary>
public static partial class Requires
{
    public static bool SkipMissing => Environment.GetEnvironmentVariable("HULL_TEST_SKIP_MISSING") == "1";

    [LibraryImport("libc")]
    private static partial uint geteuid();

    public static void Missing(string what)
    {
        Skip.If(SkipMissing, $"skipped (HULL_TEST_SKIP_MISSING=1): {what}");
        throw new InvalidOperationException($"this test needs {what}. Run the tests as root on a Linux host that has " +
            "it (set HULL_TEST_SKIP_MISSING=1 to skip instead).");
    }

    public static void Root()
    {
        if (geteuid() != 0) Missing("root (euid 0)");
    }

    public static void File(string path, string what)
    {
        if (!System.IO.File.Exists(path) && !Directory.Exists(path)) Missing($"{what} ({path})");
    }

    public static string Program(string name)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':'))
        {
            var p = Path.Combine(dir, name);
            if (System.IO.File.Exists(p)) return p;
        }
        foreach (var dir in new[] { "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/local/sbin" })
        {
            var p = Path.Combine(dir, name);
            if (System.IO.File.Exists(p)) return p;
        }
        Missing($"the program '{name}' on PATH (scripts/setup.sh installs it)");
        return name;
    }
}

/// <summary>Where the repository and the built binaries are.</summary>
public static class Repo
{
    public static string Root { get; } = FindRoot();

    static string FindRoot()
    {
        var d = AppContext.BaseDirectory;
        while (d is not null && !System.IO.File.Exists(Path.Combine(d, "Directory.Build.props"))) d =
            Path.GetDirectoryName(d);
        return d ?? throw new InvalidOperationException("cannot find the repository root above "
            + AppContext.BaseDirectory);
    }

    /// <summary>The NativeAOT binaries (make build puts them in out/bin; HULL_BIN overrides).</summary>
    public static string Bin => Environment.GetEnvironmentVariable("HULL_BIN") ?? Path.Combine(Root, "out", "bin");

    public static string Hull
    {
        get
        {
            var p = Path.Combine(Bin, "hull");
            if (!System.IO.File.Exists(p)) throw new InvalidOperationException(
                $"{p} is missing: run 'make build' first (the test script does).");
            return p;
        }
    }
}

/// <summary>A temporary directory removed at dispose.</summary>
public sealed class TempDir : IDisposable
{
    public string Path { get; }

    public TempDir(string prefix = "hull-test")
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(),
            $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)]);
        Directory.CreateDirectory(Path);
    }

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
