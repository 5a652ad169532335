using System.Diagnostics;
using System.Reflection;
using System.Text;
using Hull.Sdk;
using Hull.TestSupport;

namespace Hull.Instances.Vms.Tests;

/// <summary>
/// A real hulld with the real drivers (the JIT build of Hull.Daemon.Program) on a private state dir and socket, with
/// the published hull-agent for the built-in VM image and the VM cache shared with the VM engine's tests (artifacts/).
/// Dispose (see <see cref="HulldProcess"/>) deletes every instance, kills any process (QEMU) still naming its dir and
/// removes everything.
/// </summary>
public sealed class VmDaemon : HulldProcess
{
    public static string HostExe
    {
        get
        {
            var rel = typeof(VmDaemon).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().First(a =>
                a.Key == "HullVmHostDir").Value!;
            return Path.Combine(Repo.Root, "tests", "Hull.Instances.Vms.Tests", rel, "hull-vm-testhost");
        }
    }

    public static string AgentBinary => Path.Combine(Repo.Bin, "hull-agent");
    public static string CacheDir => Path.Combine(Repo.Root, "artifacts", "vm-cache");

    public static void RequireVmHost()
    {
        Requires.Root();
        Requires.Program("qemu-system-x86_64");
        Requires.Program("qemu-img");
        Requires.Program("mkfs.ext4");
        Requires.File("/bin/busybox", "busybox-static");
        Requires.File(AgentBinary, "the published hull-agent (make build)");
        if (!Directory.EnumerateFiles("/boot", "vmlinuz-*").Any()) Requires.Missing(
            "a guest kernel in /boot (linux-image-amd64)");
    }

    /// <param name="defaultNetwork">The network hulld makes at its first start (on the default profile's eth0); null:
    /// none.</param>
    public VmDaemon(string? defaultNetwork = null) : base(Checked(HostExe), "hull-vmd-", TimeSpan.FromSeconds(30))
    {
        DefaultNetwork = defaultNetwork;
        Start();
    }

    static string Checked(string exe)
    {
        RequireVmHost();
        return exe;
    }

    protected override void Environment(ProcessStartInfo psi)
    {
        base.Environment(psi);
        psi.Environment["HULL_INIT_BINARY"] = Path.Combine(Repo.Bin, "hull-oci");
        psi.Environment["HULL_AGENT_BINARY"] = AgentBinary;
        psi.Environment["HULL_VM_CACHE"] = CacheDir;
    }

    /// <summary>QEMU processes whose command line names this path (a VM's state dir).</summary>
    public static List<int> QemuFor(string path)
    {
        var list = new List<int>();
        foreach (var d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), out var pid)) continue;
            try
            {
                var cmd = File.ReadAllText(Path.Combine(d, "cmdline")).Replace('\0', ' ');
                if (cmd.Contains("qemu-system", StringComparison.Ordinal)
                    && cmd.Contains(path, StringComparison.Ordinal)) list.Add(pid);
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
        return list;
    }
}
