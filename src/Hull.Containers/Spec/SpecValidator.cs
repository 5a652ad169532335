using Hull.Oci;

namespace Hull.Containers;

/// <summary>Checks a spec against the runtime spec's rules before anything is created.</summary>
public static class SpecValidator
{
    public static readonly string[] NamespaceTypes =
        ["pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"];
    static readonly string[] Propagations = ["", "private", "rprivate", "shared", "rshared", "slave", "rslave",
        "unbindable", "runbindable"];
    static readonly string[] DeviceTypes = ["c", "b", "u", "p"];

    public static void Validate(Spec spec, string bundle)
    {
        if (string.IsNullOrEmpty(spec.OciVersion) || !spec.OciVersion.StartsWith("1.", StringComparison.Ordinal))
            throw new InvalidSpecException($"ociVersion \"{spec.OciVersion}\" is not supported: use a 1.x runtime " +
                "spec (hull-oci spec writes 1.2.0)");
        if (spec.Root is null || string.IsNullOrEmpty(spec.Root.Path))
            throw new InvalidSpecException("root.path is missing: set it to the container's root filesystem " +
                "directory (e.g. \"rootfs\")");
        var rootfs = RootfsPath(spec, bundle);
        if (rootfs == "/")
            throw new InvalidSpecException("root.path is \"/\", the host's own root: a container needs a root " +
                "filesystem directory of its own (e.g. \"rootfs\" in the bundle); share host directories with " +
                "bind mounts instead");
        if (!Directory.Exists(rootfs))
            throw new InvalidSpecException($"root.path {rootfs} does not exist or is not a directory: create the " +
                "rootfs (e.g. unpack an image into it) or fix root.path");
        ValidateProcess(spec.Process, "process");
        ValidateMounts(spec.Mounts);
        ValidateHooks(spec.Hooks);
        ValidateLinux(spec);
    }

    public static string RootfsPath(Spec spec, string bundle) =>
        Path.GetFullPath(Path.IsPathRooted(spec.Root!.Path) ? spec.Root.Path : Path.Combine(bundle, spec.Root.Path));

    public static void ValidateProcess(Hull.Oci.Process? p, string field)
    {
        if (p is null) throw new InvalidSpecException($"{field} is missing: a container needs a process to run");
        if (p.Args is null || p.Args.Count == 0 || string.IsNullOrEmpty(p.Args[0]))
            throw new InvalidSpecException($"{field}.args is empty: give the command to run, e.g. [\"sh\"]");
        if (string.IsNullOrEmpty(p.Cwd) || !p.Cwd.StartsWith('/'))
            throw new InvalidSpecException($"{field}.cwd \"{p.Cwd}\" must be an absolute path");
        foreach (var e in p.Env ?? [])
            if (!e.Contains('=')) throw new InvalidSpecException(
                $"{field}.env entry \"{e}\" is not of the form KEY=value");
        // (uid_t)-1 tells setresuid/setresgid "leave unchanged": the process would keep the runtime's root.
        if (p.User.Uid == uint.MaxValue || p.User.Gid == uint.MaxValue
            || p.User.AdditionalGids?.Contains(uint.MaxValue) == true)
            throw new InvalidSpecException(
                $"{field}.user: 4294967295 (-1) is not a user or group id: give one from 0 to 4294967294");
        if (p.Capabilities is { } caps)
        {
            foreach (var (set, names) in new[] { ("bounding", caps.Bounding), ("effective", caps.Effective),
                ("inheritable", caps.Inheritable), ("permitted", caps.Permitted), ("ambient", caps.Ambient) })
                foreach (var n in names ?? [])
                    if (!Capabilities.TryParse(n, out _))
                        throw new InvalidSpecException($"{field}.capabilities.{set}: unknown capability \"{n}\" " +
                            "(names look like CAP_NET_ADMIN; see capabilities(7))");
        }
        foreach (var r in p.Rlimits ?? [])
        {
            if (Rlimits.Resource(r.Type) < 0)
                throw new InvalidSpecException($"{field}.rlimits: unknown type \"{r.Type}\" (valid: " +
                    $"{string.Join(", ", Rlimits.Names)})");
            if (r.Soft > r.Hard)
                throw new InvalidSpecException($"{field}.rlimits {r.Type}: soft limit {r.Soft} is above the hard " +
                    $"limit {r.Hard}");
        }
        if (p.OomScoreAdj is { } oom && (oom < -1000 || oom > 1000))
            throw new InvalidSpecException($"{field}.oomScoreAdj {oom} is out of range: it must be between -1000 and " +
                "1000");
    }

    static void ValidateMounts(List<Mount>? mounts)
    {
        for (var i = 0; i < (mounts?.Count ?? 0); i++)
        {
            var m = mounts![i];
            if (string.IsNullOrEmpty(m.Destination))
                throw new InvalidSpecException($"mounts[{i}].destination is missing");
            if (!m.Destination.StartsWith('/'))
                throw new InvalidSpecException($"mounts[{i}].destination \"{m.Destination}\" must be an absolute " +
                    "path inside the container");
            var isBind = MountOptions.IsBind(m);
            foreach (var o in m.Options ?? [])
                if (!MountOptions.IsKnown(o, isBind))
                    throw new InvalidSpecException($"mounts[{i}] ({m.Destination}): unknown bind mount option " +
                        $"\"{o}\" (valid: ro, rw, nosuid, nodev, noexec, rbind, rprivate, rslave, ...)");
            if (isBind && string.IsNullOrEmpty(m.Source))
                throw new InvalidSpecException($"mounts[{i}] ({m.Destination}): a bind mount needs a source");
            if (m.UidMappings is null && m.GidMappings is null) continue;
            if (!isBind)
                throw new InvalidSpecException($"mounts[{i}] ({m.Destination}): uidMappings and gidMappings (an " +
                    "idmapped " +
                    "mount) need a bind mount: add the bind or rbind option");
            if (m.UidMappings is not { Count: > 0 } || m.GidMappings is not { Count: > 0 })
                throw new InvalidSpecException($"mounts[{i}] ({m.Destination}): an idmapped mount needs both " +
                    "uidMappings and gidMappings");
        }
    }

    static void ValidateHooks(Hooks? hooks)
    {
        if (hooks is null) return;
        foreach (var (kind, list) in HookRunner.All(hooks))
            for (var i = 0; i < list.Count; i++)
            {
                var h = list[i];
                if (string.IsNullOrEmpty(h.Path) || !h.Path.StartsWith('/'))
                    throw new InvalidSpecException($"hooks.{kind}[{i}].path \"{h.Path}\" must be an absolute path");
                if (h.Timeout is <= 0)
                    throw new InvalidSpecException($"hooks.{kind}[{i}].timeout must be a positive number of seconds");
            }
    }

    static void ValidateLinux(Spec spec)
    {
        var linux = spec.Linux;
        if (linux is null) return;
        var seen = new HashSet<string>();
        foreach (var ns in linux.Namespaces ?? [])
        {
            if (!NamespaceTypes.Contains(ns.Type))
                throw new InvalidSpecException($"linux.namespaces: unknown namespace type \"{ns.Type}\" (valid: " +
                    $"{string.Join(", ", NamespaceTypes)})");
            if (!seen.Add(ns.Type))
                throw new InvalidSpecException($"linux.namespaces: \"{ns.Type}\" is listed twice");
            if (!string.IsNullOrEmpty(ns.Path) && !File.Exists(ns.Path))
                throw new InvalidSpecException($"linux.namespaces: the {ns.Type} namespace path {ns.Path} does not " +
                    "exist");
        }
        var hasUser = seen.Contains("user");
        if (!hasUser && ((linux.UidMappings?.Count ?? 0) > 0 || (linux.GidMappings?.Count ?? 0) > 0))
            throw new InvalidSpecException("linux.uidMappings/gidMappings are set but there is no user namespace: " +
                "add {\"type\": \"user\"} to linux.namespaces");
        if (hasUser && linux.Namespaces!.First(n => n.Type == "user").Path is null or ""
            && ((linux.UidMappings?.Count ?? 0) == 0 || (linux.GidMappings?.Count ?? 0) == 0))
            throw new InvalidSpecException("a new user namespace needs linux.uidMappings and linux.gidMappings");
        if (linux.TimeOffsets is { Count: > 0 } && !seen.Contains("time"))
            throw new InvalidSpecException("linux.timeOffsets is set but there is no time namespace: add {\"type\": " +
                "\"time\"} to linux.namespaces");
        foreach (var k in linux.TimeOffsets?.Keys ?? Enumerable.Empty<string>())
            if (k is not ("monotonic" or "boottime"))
                throw new InvalidSpecException($"linux.timeOffsets: unknown clock \"{k}\" (valid: monotonic, " +
                    "boottime)");
        if (!Propagations.Contains(linux.RootfsPropagation ?? ""))
            throw new InvalidSpecException($"linux.rootfsPropagation \"{linux.RootfsPropagation}\" is not valid " +
                $"(valid: {string.Join(", ", Propagations.Skip(1))})");
        foreach (var d in linux.Devices ?? [])
        {
            if (!DeviceTypes.Contains(d.Type))
                throw new InvalidSpecException($"linux.devices {d.Path}: unknown type \"{d.Type}\" (valid: c, b, u, " +
                    "p)");
            if (!d.Path.StartsWith("/dev/", StringComparison.Ordinal))
                throw new InvalidSpecException($"linux.devices {d.Path}: the path must be under /dev");
        }
        foreach (var (key, _) in linux.Sysctl ?? [])
        {
            var ok = key.StartsWith("net.", StringComparison.Ordinal) ? seen.Contains("network")
                : key.StartsWith("kernel.msg", StringComparison.Ordinal)
                    || key.StartsWith("kernel.sem", StringComparison.Ordinal)
                  || key.StartsWith("kernel.shm", StringComparison.Ordinal)
                      || key.StartsWith("fs.mqueue.", StringComparison.Ordinal) ? seen.Contains("ipc")
                : key is "kernel.hostname" or "kernel.domainname" ? seen.Contains("uts")
                : false;
            if (!ok)
                throw new InvalidSpecException($"linux.sysctl \"{key}\" is not namespaced by this container (net.* " +
                    "needs a network namespace, kernel.shm*/msg*/sem* and fs.mqueue.* an ipc namespace, " +
                    "kernel.hostname a uts namespace; others would change the host)");
        }
        if (linux.Personality is { } pers && pers.Domain is not ("LINUX" or "LINUX32"))
            throw new InvalidSpecException($"linux.personality.domain \"{pers.Domain}\" is not valid (valid: LINUX, " +
                "LINUX32)");
        if (!string.IsNullOrEmpty(spec.Hostname) && !seen.Contains("uts"))
            throw new InvalidSpecException("hostname is set but there is no uts namespace: add {\"type\": \"uts\"} " +
                "to linux.namespaces");
        // linux.seccomp is checked by compiling it (SeccompSupport.Compile), once, by the caller that needs the
        // program.
    }
}

