using System.Globalization;
using System.Text.Json;
using Hull.Api;
using Hull.Containers;
using Hull.Linux;
using Hull.Oci;
using Microsoft.Win32.SafeHandles;

namespace Hull.Instances.Containers;

/// <summary>The OCI spec of a start: the init to run, the environment, limits, id map, app containers and devices.
/// </summary>
public sealed partial class ContainerDriver
{
    const string KeepAlive = "trap 'echo \"$HOSTNAME: stopping\"; exit 0' TERM INT PWR; echo \"$HOSTNAME: started\"; " +
        "while :; do sleep 3600 & wait $!; done";

    Spec BuildSpec(InstanceSpec spec, IReadOnlyList<DeviceRunConfig> devices, out InitKind? init)
    {
        var root = Rootfs(spec);
        // An instance of the host image is an application container (AppContainers); oci.entrypoint + app.command
        // (an OCI image's Entrypoint + Cmd, or the user's command) replace the init.
        var app = AppContainers.IsHostImage(IsCopy(spec) ? root : LowerOf(spec));
        var custom = AppConfig.Process(spec.Config);
        List<string> args;
        // A full-OS image (its /sbin/init is an init system) boots as a system container (SystemContainers).
        init = custom is null && !app ? SystemContainers.Detect(root) : null;
        if (custom is not null || app) args = custom ?? ["/"];
        else if (init is not null) { args = ["/sbin/init"]; SystemContainers.RaiseHostLimits(); }
        else if (Exists(root, "bin/sh")) args = ["/bin/sh", "-c", KeepAlive];
        else throw new InstanceException($"the image of '{spec.Name}' has neither /sbin/init (with /etc/inittab) nor " +
            "/bin/sh: nothing to run as the container's init");
        var s = DefaultSpec.Create(args, terminal: false);
        s.Root = new Root { Path = "rootfs", Readonly = false };
        s.Hostname = spec.Name;
        var env = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", ["TERM"] = "xterm",
            ["HOME"] = "/root",
            ["container"] = "hull", ["HOSTNAME"] = spec.Name,
        };
        foreach (var (k, v) in spec.Environment) env[k] = v;
        s.Process!.Env = env.Select(kv => $"{kv.Key}={kv.Value}").ToList();
        // A full-OS container: the init may need to change identity, as in Incus (no no_new_privs on the init).
        s.Process.NoNewPrivileges = false;
        s.Linux!.CgroupsPath = _cgroupPrefix + spec.Name;
        if (Unprivileged.OnDisk(spec) is { } map)
        {
            Unprivileged.Apply(s, map);
            Unprivileged.MakeReachable(spec, map);
        }
        s.Linux.Resources = Resources(spec, s.Linux.Resources);
        if (init is { } kind) SystemContainers.Apply(s, kind, privileged: Unprivileged.OnDisk(spec) is null);
        if (app) AppContainers.Apply(spec, s, root);
        ApplyImageRun(spec, s, root, env);
        if (app && Unprivileged.OnDisk(spec) is { } appMap) _ids.IdmapReadOnlyBinds(spec, s, root, appMap);
        foreach (var disk in devices.SelectMany(d => d.Disks).Where(x => x.Target != "/"))
            throw new InstanceException($"a disk device at {disk.Target} (a block device or image file) cannot be " +
                $"given to container '{spec.Name}' yet: share a host directory with a bind device instead");
        // By path depth, so a device at /run/lock is not hidden by one at /run (as Incus orders them).
        foreach (var m in devices.SelectMany(d => d.Mounts).OrderBy(m => m.Target.TrimEnd('/').Count(c => c == '/'))
                     .ThenBy(m => m.Target, StringComparer.Ordinal))
        {
            if (!File.Exists(m.Source) && !Directory.Exists(m.Source))
                throw new InstanceException($"device source {m.Source} does not exist on the host");
            s.Mounts!.Add(new Mount
            {
                Destination = m.Target, Type = "bind", Source = m.Source,
                Options = m.ReadOnly ? ["rbind", "ro", "nosuid", "nodev"] : ["rbind", "rw", "nosuid", "nodev"],
            });
        }
        return s;
    }

    /// <summary>oci.cwd and oci.user (an OCI image's WorkingDir and User, or the user's): the working directory, and
    /// the user looked up in the container's own account files, with its groups and, unless set, its HOME.</summary>
    static void ApplyImageRun(InstanceSpec spec, Spec s, string root, Dictionary<string, string> env)
    {
        if (spec.Config.TryGetValue(AppConfig.CwdKey, out var cwd)) s.Process!.Cwd = cwd;
        if (!spec.Config.TryGetValue(AppConfig.UserKey, out var user)) return;
        using var r = Sys.Open(root, O.RDONLY | O.DIRECTORY);
        var u = ContainerUsers.Resolve(r, user);
        s.Process!.User = new User { Uid = u.Uid, Gid = u.Gid, AdditionalGids = u.Groups.Length > 0 ? [.. u.Groups]
            : null };
        if (!spec.Environment.ContainsKey("HOME"))
        {
            env["HOME"] = u.Home;
            s.Process.Env = env.Select(kv => $"{kv.Key}={kv.Value}").ToList();
        }
    }

    static bool Exists(string root, string rel)
    {
        using var r = Sys.Open(root, O.RDONLY | O.DIRECTORY);
        return RootedFs.Exists(r, rel);
    }

    static Resources Resources(InstanceSpec spec, Resources? baseRes)
    {
        var r = baseRes ?? new Resources();
        if (spec.Limits.MemoryBytes is { } mem) r.Memory = new Memory { Limit = mem };
        if (spec.Limits.Processes is { } pids) r.Pids = new Pids { Limit = pids };
        if (spec.Limits.Cpus is { } cpus) r.Cpu = new Cpu { Quota = cpus * 100_000L, Period = 100_000 };
        return r;
    }
}
