using Hull.Linux;
using Hull.Oci;

namespace Hull.Cgroups;

/// <summary>
/// One container's cgroup, in every hierarchy the host has: each cgroup v1 controller mount (and named hierarchies
/// such as name=systemd, joined but not configured), and the cgroup2 tree. Not thread-safe.
/// </summary>
public interface ICgroup
{
    /// <summary>The cgroup path relative to each hierarchy's root, e.g. "/hull/abc".</summary>
    string Path { get; }
    /// <summary>The directory of this cgroup in each hierarchy: "v2" and each v1 hierarchy's key ("cpu,cpuacct",
    /// "memory", "name=systemd") → absolute directory.</summary>
    IReadOnlyDictionary<string, string> Directories { get; }
    /// <summary>Settings this host could not apply but that did not fail the call (e.g. kernel memory on v2).</summary>
    IReadOnlyList<string> Warnings { get; }
    /// <summary>After <see cref="Apply"/> with devices: the effective device rules (see <see cref="DeviceRuleSet"/>
    /// for the evaluation order). On v1 the devices controller enforces them; where the devices controller is not
    /// on v1 (<see cref="DevicesNeedBpf"/>), Apply compiles them into a BPF_CGROUP_DEVICE program and attaches it to
    /// the v2 directory (<see cref="DeviceFilter"/>).</summary>
    DeviceRuleSet? EffectiveDeviceRules { get; }
    /// <summary>True if device rules are enforced by a BPF program (the devices controller is not on v1).</summary>
    bool DevicesNeedBpf { get; }

    /// <summary>Makes the directory in every hierarchy (v2: enables the controllers in each parent's
    /// cgroup.subtree_control). Idempotent. On failure removes what it made.</summary>
    void Create();
    /// <summary>Writes every linux.resources value (also as an update of a running cgroup). Each failed write throws
    /// a <see cref="CgroupException"/> naming the file, value and errno. If it fails after this object's
    /// <see cref="Create"/> before any process joined or any Apply succeeded, the directories Create made are
    /// removed again.</summary>
    void Apply(Resources resources);
    /// <summary>What <see cref="Spawner"/> needs to start a process directly in this cgroup.</summary>
    CgroupJoin PrepareJoin();
    /// <summary>Moves a process (all its threads) into the cgroup in every hierarchy via cgroup.procs.</summary>
    void AddProcess(int pid);
    /// <summary>The processes in the cgroup (any hierarchy), sorted.</summary>
    IReadOnlyList<int> Pids();
    void Freeze();
    void Thaw();
    bool IsFrozen { get; }
    CgroupStats Stats();
    /// <summary>Sends <paramref name="signal"/> to every process; for SIGKILL waits (bounded) until none is
    /// left.</summary>
    void Kill(int signal);
    /// <summary>Removes the cgroup (and any child cgroups) from every hierarchy. Idempotent.</summary>
    void Destroy();
}

/// <summary>
/// The fds a new process needs to start inside a cgroup (see <see cref="ICgroup.PrepareJoin"/>). Dispose after the
/// spawn. <see cref="AddTo"/> fills a <see cref="SpawnRequest"/>.
/// </summary>
public sealed class CgroupJoin : IDisposable
{
    /// <summary>The cgroup2 directory (for CLONE_INTO_CGROUP), or null on pure v1 or when the v2 tree is
    /// unusable.</summary>
    public SafeFd? CgroupDir { get; }
    /// <summary>Each v1 hierarchy's "tasks" file, opened O_WRONLY: the child writes "0" to each before exec.
    /// Writing to "tasks" moves one thread (the whole single-threaded child), which takes a cheaper path than a
    /// cgroup.procs write of a pid (see docs/cgroups.md for the measurements).</summary>
    public IReadOnlyList<SafeFd> TaskFiles { get; }

    internal CgroupJoin(SafeFd? dir, IReadOnlyList<SafeFd> tasks) { CgroupDir = dir; TaskFiles = tasks; }

    public void AddTo(SpawnRequest request)
    {
        request.CgroupDir = CgroupDir;
        request.CgroupTaskFiles.AddRange(TaskFiles);
    }

    public void Dispose()
    {
        CgroupDir?.Dispose();
        foreach (var f in TaskFiles) f.Dispose();
    }
}

/// <summary>Opens container cgroups.</summary>
public static class Cgroup
{
    /// <summary>
    /// The cgroup for a container. <paramref name="cgroupsPath"/> is linux.cgroupsPath:
    /// <list type="bullet">
    /// <item>absolute ("/a/b"): used as is in every hierarchy;</item>
    /// <item>relative ("a/b"): under the calling process's own cgroup in each hierarchy;</item>
    /// <item>systemd form "slice:prefix:name" (Podman/containerd with --systemd-cgroup): mapped to the cgroupfs
    /// path systemd would use, e.g. "machine.slice:libpod:abc" → "/machine.slice/libpod-abc.scope".
    /// There is no systemd driver: the directories are made directly in cgroupfs and systemd is not told about the
    /// scope (no transient unit, no D-Bus);</item>
    /// <item>empty or null: "/hull/&lt;containerId&gt;".</item>
    /// </list>
    /// Nothing is created until <see cref="ICgroup.Create"/>.
    /// </summary>
    public static ICgroup Open(string? cgroupsPath, string containerId, CgroupLayoutInfo? layout = null)
    {
        var (path, relative) = ResolvePath(cgroupsPath, containerId);
        return new CgroupManager(layout ?? CgroupLayout.Detect(), path, relative);
    }

    /// <summary>The normalized cgroup path and whether it is relative to the caller's own cgroup.</summary>
    public static (string Path, bool Relative) ResolvePath(string? cgroupsPath, string containerId)
    {
        var p = cgroupsPath?.Trim() ?? "";
        if (p.Length == 0)
        {
            if (string.IsNullOrEmpty(containerId) || containerId.Contains('/') || containerId is "." or "..")
                throw new CgroupException($"container id \"{containerId}\" cannot name a cgroup: use an id without " +
                    "'/'");
            return ("/hull/" + containerId, false);
        }
        if (p.Contains('\0')) throw new CgroupException("linux.cgroupsPath contains a NUL byte");
        if (!p.StartsWith('/') && p.Count(c => c == ':') == 2) return (SystemdToPath(p), false);
        var relative = !p.StartsWith('/');
        var parts = p.Split('/', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Any(x => x is "." or ".."))
            throw new CgroupException($"linux.cgroupsPath \"{p}\" has a \".\" or \"..\" component: give a plain path " +
                $"such as /hull/{containerId}");
        if (parts.Length == 0) throw new CgroupException(
            $"linux.cgroupsPath \"{p}\" names the root cgroup: give a sub-path such as /hull/{containerId}");
        return ((relative ? "" : "/") + string.Join('/', parts), relative);
    }

    /// <summary>"slice:prefix:name" → "/parent.slice/slice/prefix-name.scope".</summary>
    public static string SystemdToPath(string systemdPath)
    {
        var sp = systemdPath.Split(':');
        var slice = sp[0].Length == 0 ? "system.slice" : sp[0];
        var (prefix, name) = (sp[1], sp[2]);
        if (name.Length == 0 || name.Contains('/') || prefix.Contains('/'))
            throw new CgroupException($"linux.cgroupsPath \"{systemdPath}\": the systemd form is " +
                "\"slice:prefix:name\" with a non-empty name and no '/'");
        var unit = name.EndsWith(".slice", StringComparison.Ordinal) ? name
            : (prefix.Length == 0 ? name : prefix + "-" + name) + ".scope";
        return ExpandSlice(slice, systemdPath) + "/" + unit;
    }

    /// <summary>systemd's slice nesting: "a-b-c.slice" → "/a.slice/a-b.slice/a-b-c.slice"; "-.slice" → "".</summary>
    public static string ExpandSlice(string slice, string whole)
    {
        if (!slice.EndsWith(".slice", StringComparison.Ordinal) || slice.Contains('/'))
            throw new CgroupException($"linux.cgroupsPath \"{whole}\": \"{slice}\" is not a slice name (it must end " +
                "in .slice and have no '/')");
        if (slice == "-.slice") return "";
        var stem = slice[..^6];
        if (stem.Length == 0 || stem.StartsWith('-') || stem.EndsWith('-') || stem.Contains("--"))
            throw new CgroupException($"linux.cgroupsPath \"{whole}\": slice \"{slice}\" is malformed");
        var sb = new System.Text.StringBuilder();
        var acc = "";
        foreach (var part in stem.Split('-'))
        {
            acc = acc.Length == 0 ? part : acc + "-" + part;
            sb.Append('/').Append(acc).Append(".slice");
        }
        return sb.ToString();
    }

    /// <summary>The cgroup facts for the OCI `features` verb.</summary>
    public static CgroupFeatures Features(CgroupLayoutInfo? layout = null)
    {
        var l = layout ?? CgroupLayout.Detect();
        return new CgroupFeatures
        {
            V1 = l.Mode != CgroupMode.V2,
            V2 = l.Mode != CgroupMode.V1,
            Systemd = false,
            SystemdUser = false,
            Rdma = l.WhereIs("rdma") is not null,
            Mode = l.Mode switch { CgroupMode.V1 => "v1", CgroupMode.Hybrid => "hybrid", _ => "v2" },
            Controllers = new Dictionary<string, string>(l.Controllers),
        };
    }
}
