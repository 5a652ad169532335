using System.Reflection;
using Hull.TestSupport;

namespace Hull.Daemon.Tests;

/// <summary>
/// A real hulld (the JIT build of the test host: hulld plus the process test driver) on a private state dir and socket.
/// Dispose (see <see cref="HulldProcess"/>) restarts a stopped daemon to delete every instance, then removes
/// everything.
/// </summary>
public sealed class TestDaemon : HulldProcess
{
    public static string HostDir
    {
        get
        {
            var rel = typeof(TestDaemon).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().First(a =>
                a.Key == "HullTestHostDir").Value!;
            return Path.Combine(Repo.Root, "tests", "Hull.Daemon.Tests", rel);
        }
    }

    public static string HostExe => Path.Combine(HostDir, "hull-testhost");

    public TestDaemon(bool start = true, string[]? extraArgs = null)
        : base(Checked(HostExe), "hull-dt-", TimeSpan.FromSeconds(10))
    {
        if (start) Start(extraArgs);
    }

    static string Checked(string exe)
    {
        Requires.Root();
        Requires.Program("chroot");
        Requires.File("/bin/busybox", "busybox-static");
        return exe;
    }

    protected override void DeleteInstances()
    {
        // A test that stopped the daemon: start it again so that it deletes its instances (and their processes).
        try { if (!Running && File.Exists(Path.Combine(StateDir, "hull.db"))) Start(); } catch (Exception) { }
        base.DeleteInstances();
    }
}
