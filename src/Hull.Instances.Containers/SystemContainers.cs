using Hull.Containers;
using Hull.Linux;
using Hull.Oci;

namespace Hull.Instances.Containers;

/// <summary>The init a full-OS image runs as /sbin/init, which decides the signals that stop and reboot it.</summary>
public enum InitKind { Systemd, Busybox, SysV }

/// <summary>
/// Full-OS (system) containers: an image whose /sbin/init is an init system (systemd, busybox init, sysvinit) boots
/// it as the container's pid 1, as Incus does; no flag chooses this, the image does. What such an init needs of its
/// container is what systemd documents as its "Container Interface" and what LXC sets up: a cgroup namespace rooted at
/// the container's own cgroup with a writable, delegated subtree (the engine chowns the name=systemd and cgroup2
/// directories to the container's root when the cgroup mount is read-write and the container has a user namespace),
/// /run and /run/lock as tmpfs, `container=` in its environment, no no_new_privs, the capabilities of root (inside
/// its user namespace when unprivileged), and the signals the init takes for halt and reboot.
/// </summary>
public static class SystemContainers
{
    /// <summary>Dropped from every system container, as LXC's default lxc.cap.drop: they act on the host (and
    /// without CAP_SYS_RAWIO systemd skips the debugfs and tracefs mounts a container cannot make).</summary>
    static readonly string[] Dropped = ["CAP_SYS_MODULE", "CAP_SYS_TIME", "CAP_SYS_RAWIO", "CAP_MAC_ADMIN",
        "CAP_MAC_OVERRIDE"];

    /// <summary>The OCI annotation in which a start records the init it booted (hull stop signals that one, whatever
    /// /sbin/init has become since).</summary>
    public const string InitAnnotation = "org.hull.init";

    /// <summary>The init system of a root filesystem whose /sbin/init is one; null otherwise.</summary>
    public static InitKind? Detect(string root)
    {
        using var r = Sys.Open(root, O.RDONLY | O.DIRECTORY);
        if (!RootedFs.TryOpen(r, "sbin", O.PATH | O.DIRECTORY, 0, out var sbin, out _)) return null;
        using (sbin)
        {
            var link = FsAt.ReadLinkAt(sbin, "init", out var errno);
            if (link is null && errno != Errors.EINVAL) return null; // no /sbin/init at all
            var name = link is null ? "init" : Path.GetFileName(link.TrimEnd('/'));
            if (name == "systemd") return InitKind.Systemd;
            // busybox init and sysvinit without an inittab: not a system image (the built-in busybox image links
            // /sbin/init to busybox and runs a shell loop instead).
            if (!RootedFs.Exists(r, "etc/inittab")) return null;
            return name == "busybox" ? InitKind.Busybox : InitKind.SysV;
        }
    }

    /// <summary>The signal that halts the init (hull stop), and the one that reboots it.</summary>
    public static (int Halt, int Reboot) SignalsOf(InitKind kind) => kind switch
    {
        // SIGRTMIN+3 is systemd's "halt" (SIGTERM would make it re-execute itself); SIGUSR2 busybox init's poweroff.
        InitKind.Systemd => (Signals.SIGRTMIN + 3, Signals.SIGINT),
        InitKind.Busybox => (Signals.SIGUSR2, Signals.SIGTERM),
        // sysvinit's SIGPWR runs inittab's power-failure entries, which Debian's inittab no longer acts on; SIGINT
        // runs its ctrlaltdel entry (shutdown -r): the rc scripts stop everything and the reboot ends the pid
        // namespace's init, so the instance stops cleanly.
        _ => (Signals.SIGINT, Signals.SIGINT),
    };

    /// <summary>Whether an init system ended on reboot(2) with a restart: in a pid namespace the kernel ends its init
    /// with SIGHUP for a restart and SIGINT for a halt or power-off (reboot_pid_ns), which is what LXC looks at
    /// (systemctl reboot, busybox's reboot, sysvinit's shutdown -r all end so).</summary>
    public static bool IsReboot(int exitCode) => exitCode == 128 + Signals.SIGHUP;

    /// <summary>The init a start recorded in <paramref name="oci"/> (<see cref="InitAnnotation"/>); null for a
    /// container whose init is not an init system.</summary>
    public static InitKind? Recorded(Spec oci) =>
        oci.Annotations?.GetValueOrDefault(InitAnnotation) is { } v && Enum.TryParse<InitKind>(v, out var k) ? k : null;

    /// <summary>Makes <paramref name="oci"/> a system container's spec (after the default spec and the id
    /// map).</summary>
    public static void Apply(Spec oci, InitKind kind, bool privileged)
    {
        (oci.Annotations ??= [])[InitAnnotation] = kind.ToString();
        var p = oci.Process!;
        p.Args = ["/sbin/init"];
        p.NoNewPrivileges = false;
        // /dev/console is a pty: the init allocates it in the container's devpts, binds its slave on /dev/console and
        // makes it its stdio; the monitor holds the master (MonitorConsole: console.log, hull console).
        p.Terminal = true;
        // Privileged: no more than hulld has (root here may lack some, e.g. CAP_SYS_RESOURCE in a container).
        var have = privileged ? Hull.Containers.Capabilities.OwnBounding() : ulong.MaxValue;
        var caps = Hull.Containers.Capabilities.Names.Take(Hull.Containers.Capabilities.LastCap + 1)
            .Where((c, i) => !Dropped.Contains(c) && (have & (1UL << i)) != 0).ToList();
        p.Capabilities = new Hull.Oci.Capabilities { Bounding = caps, Effective = caps, Permitted = caps };
        // Limits as the host gives them (systemd sets its own); the monitor's hard limits bound them.
        p.Rlimits = null;
        oci.Linux!.Seccomp = Hull.Seccomp.SeccompProfiles.DefaultProfile(caps);
        foreach (var m in oci.Mounts!.Where(m => m.Destination == "/sys/fs/cgroup"))
            m.Options = [.. (m.Options ?? []).Where(o => o != "ro"), "rw"];
        oci.Mounts!.Add(new Mount { Destination = "/run", Type = "tmpfs", Source = "tmpfs",
            Options = ["nosuid", "nodev", "mode=755", "size=20%"] });
        oci.Mounts.Add(new Mount { Destination = "/run/lock", Type = "tmpfs", Source = "tmpfs",
            Options = ["nosuid", "nodev", "noexec", "mode=1777", "size=5m"] });
    }

    /// <summary>
    /// The host's inotify limits are per host user, and every unprivileged container of the shared id range is the
    /// same host user: the kernel's default of 128 inotify instances runs out at about 15 systemd containers (their
    /// path units then fail and the system is "degraded"). Before a system container starts, the limits are raised
    /// to what Incus's production setup recommends, never lowered.
    /// </summary>
    public static void RaiseHostLimits()
    {
        if (Interlocked.Exchange(ref s_raised, 1) != 0) return;
        foreach (var (name, floor) in HostLimits)
        {
            var path = "/proc/sys/fs/inotify/" + name;
            try
            {
                var now = long.Parse(File.ReadAllText(path).Trim(), System.Globalization.CultureInfo.InvariantCulture);
                if (now < floor)
                {
                    File.WriteAllText(path, floor.ToString(System.Globalization.CultureInfo.InvariantCulture));
                    DriverLog.Info($"raised fs.inotify.{name} to {floor} for system containers");
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
            {
                DriverLog.Warning($"fs.inotify.{name} could not be raised ({e.Message}): many system containers " +
                    "may run out of inotify instances");
            }
        }
    }

    static int s_raised;

    static readonly (string Name, long Floor)[] HostLimits =
        [("max_user_instances", 1048576), ("max_user_watches", 1048576), ("max_queued_events", 1048576)];
}
