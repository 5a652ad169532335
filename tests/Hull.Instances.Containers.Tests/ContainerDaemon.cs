using System.Diagnostics;
using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using Hull.Sdk;
using Hull.TestSupport;

namespace Hull.Instances.Containers.Tests;

/// <summary>
/// A real hulld with the container driver (the JIT build of Hull.Daemon.Program) on a private state dir and socket,
/// with the published hull-oci as the container init. Dispose (see <see cref="HulldProcess"/>) deletes every instance,
/// kills any process still rooted under its dir, unmounts and removes everything, including engine cgroups left behind.
/// </summary>
public sealed class ContainerDaemon : HulldProcess
{
    public static string HostExe
    {
        get
        {
            var rel = typeof(ContainerDaemon).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().First(a =>
                a.Key == "HullContainerHostDir").Value!;
            return Path.Combine(Repo.Root, "tests", "Hull.Instances.Containers.Tests", rel, "hull-container-testhost");
        }
    }

    public static string InitBinary => Path.Combine(Repo.Bin, "hull-oci");

    /// <param name="stateOnOverlay">Puts the state dir on an overlayfs (as when hulld runs in a container), where the
    /// driver cannot stack its own overlays and must copy root filesystems.</param>
    /// <param name="defaultNetwork">The network hulld makes at its first start (on the default profile's eth0); null:
    /// none, as every other test daemon.</param>
    public ContainerDaemon(bool stateOnOverlay = false, string? defaultNetwork = null)
        : base(Checked(HostExe), "hull-ct-", TimeSpan.FromSeconds(20))
    {
        DefaultNetwork = defaultNetwork;
        if (stateOnOverlay)
        {
            foreach (var x in new[] { "ovl/lower", "ovl/upper", "ovl/work", "state" }) Directory.CreateDirectory(
                Path.Combine(Dir, x));
            Hull.Linux.Sys.Mount("overlay", StateDir, "overlay", 0,
                $"lowerdir={Dir}/ovl/lower,upperdir={Dir}/ovl/upper,workdir={Dir}/ovl/work");
        }
        Start();
    }

    static string Checked(string exe)
    {
        Requires.Root();
        Requires.File("/bin/busybox", "busybox-static");
        Requires.File(InitBinary, "the published hull-oci (make build)");
        return exe;
    }

    protected override void Environment(ProcessStartInfo psi)
    {
        base.Environment(psi);
        psi.Environment["HULL_INIT_BINARY"] = InitBinary;
    }

    /// <summary>The engine's cgroup directories of a running container (every hierarchy), from its init's
    /// /proc/PID/cgroup.</summary>
    public static List<string> CgroupDirsOf(int pid)
    {
        var dirs = new List<string>();
        foreach (var line in File.ReadAllLines($"/proc/{pid}/cgroup"))
        {
            var parts = line.Split(':', 3);
            if (parts.Length < 3 || !parts[2].Contains("/hull/", StringComparison.Ordinal)) continue;
            var ctrl = parts[1].Length == 0 ? "" : parts[1].StartsWith("name=", StringComparison.Ordinal)
                ? parts[1][5..] : parts[1];
            foreach (var mnt in ctrl.Length == 0 ? new[] { "/sys/fs/cgroup/unified", "/sys/fs/cgroup" }
                : [Path.Combine("/sys/fs/cgroup", ctrl)])
                if (Directory.Exists(mnt + parts[2])) { dirs.Add(mnt + parts[2]); break; }
        }
        return dirs;
    }

    /// <summary>The engine cgroups of containers left behind (after their processes were killed).</summary>
    protected override void CleanupExtra()
    {
        var engine = Path.Combine(StateDir, "containers");
        if (!Directory.Exists(engine)) return;
        foreach (var f in Directory.EnumerateFiles(engine, "state.json", SearchOption.AllDirectories))
            foreach (Match m in Regex.Matches(File.ReadAllText(f), "\"[cC]groupPath\"\\s*:\\s*\"([^\"]+)\""))
                foreach (var h in Directory.EnumerateDirectories("/sys/fs/cgroup").Append("/sys/fs/cgroup"))
                    try { if (Directory.Exists(h + m.Groups[1].Value)) Directory.Delete(h
                        + m.Groups[1].Value); } catch (Exception) { }
    }
}
