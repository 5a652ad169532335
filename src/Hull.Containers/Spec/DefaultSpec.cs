using Hull.Oci;

namespace Hull.Containers;

/// <summary>
/// The default spec: runc's `spec` output tightened to Podman's defaults (its capability set, the default seccomp
/// profile, masked and read-only paths, no_new_privs, a read-only root): the starting point for bundles and for
/// containers Hull makes without a bundle.
/// </summary>
public static class DefaultSpec
{
    public static readonly string[] MaskedPaths =
    [
        "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
        "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
        "/sys/dev/block",
    ];

    public static readonly string[] ReadonlyPaths =
        ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

    public static Spec Create(List<string> args, bool terminal)
    {
        var caps = Capabilities.Default.ToList();
        return new Spec
        {
            OciVersion = "1.2.0",
            Process = new Hull.Oci.Process
            {
                Terminal = terminal, User = new User { Uid = 0, Gid = 0 }, Args = args,
                Env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"], Cwd = "/",
                Capabilities = new Hull.Oci.Capabilities { Bounding = caps, Effective = caps, Permitted = caps },
                Rlimits = [new Rlimit { Type = "RLIMIT_NOFILE", Hard = 1024, Soft = 1024 }],
                NoNewPrivileges = true,
            },
            Root = new Root { Path = "rootfs", Readonly = true },
            Hostname = "hull",
            Mounts =
            [
                new Mount { Destination = "/proc", Type = "proc", Source = "proc" },
                new Mount { Destination = "/dev", Type = "tmpfs", Source = "tmpfs",
                    Options = ["nosuid", "strictatime", "mode=755", "size=65536k"] },
                new Mount { Destination = "/dev/pts", Type = "devpts", Source = "devpts",
                    Options = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
                new Mount { Destination = "/dev/shm", Type = "tmpfs", Source = "shm",
                    Options = ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
                new Mount { Destination = "/dev/mqueue", Type = "mqueue", Source = "mqueue",
                    Options = ["nosuid", "noexec", "nodev"] },
                new Mount { Destination = "/sys", Type = "sysfs", Source = "sysfs",
                    Options = ["nosuid", "noexec", "nodev", "ro"] },
                new Mount { Destination = "/sys/fs/cgroup", Type = "cgroup", Source = "cgroup",
                    Options = ["nosuid", "noexec", "nodev", "relatime", "ro"] },
            ],
            Linux = new Hull.Oci.Linux
            {
                Resources = new Resources { Devices = [new DeviceCgroup { Allow = false, Access = "rwm" }] },
                Namespaces = [new() { Type = "pid" }, new() { Type = "network" }, new() { Type = "ipc" },
                    new() { Type = "uts" }, new() { Type = "mount" }, new() { Type = "cgroup" }],
                MaskedPaths = [.. MaskedPaths],
                ReadonlyPaths = [.. ReadonlyPaths],
                Seccomp = Hull.Seccomp.SeccompProfiles.DefaultProfile(caps),
            },
        };
    }

    /// <summary>runc spec --rootless: a user namespace mapping the caller to root, no cgroup limits.</summary>
    public static void MakeRootless(Spec spec, uint hostUid)
    {
        spec.Linux!.Namespaces!.RemoveAll(n => n.Type == "network");
        spec.Linux.Namespaces.Add(new Namespace { Type = "user" });
        spec.Linux.UidMappings = [new IdMapping { ContainerId = 0, HostId = hostUid, Size = 1 }];
        spec.Linux.GidMappings = [new IdMapping { ContainerId = 0, HostId = hostUid, Size = 1 }];
        spec.Linux.Resources = null;
        spec.Mounts!.RemoveAll(m => m.Destination == "/sys/fs/cgroup");
    }
}
