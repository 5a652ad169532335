using System.Text;

namespace Hull.Cgroups;

/// <summary>How the host mounts cgroups.</summary>
public enum CgroupMode
{
    /// <summary>Only cgroup v1 hierarchies (no cgroup2 mount).</summary>
    V1,
    /// <summary>cgroup v1 hierarchies for the controllers plus a cgroup2 mount (usually /sys/fs/cgroup/unified) that
    /// holds the controllers no v1 hierarchy took (often none).</summary>
    Hybrid,
    /// <summary>One cgroup2 hierarchy with every controller (/sys/fs/cgroup): what most current distributions
    /// use.</summary>
    V2,
}

/// <summary>One mounted cgroup v1 hierarchy.</summary>
public sealed class V1Hierarchy
{
    /// <summary>Where it is mounted (the directory that shows its root cgroup, or <see cref="MountRoot"/>).</summary>
    public required string MountPoint { get; init; }
    /// <summary>The controllers bound to it (e.g. "cpu", "cpuacct"); empty for a named hierarchy.</summary>
    public required IReadOnlyList<string> Controllers { get; init; }
    /// <summary>For a named hierarchy (name=systemd): the name, else null.</summary>
    public string? Name { get; init; }
    /// <summary>The cgroup shown at <see cref="MountPoint"/> ("/" unless a sub-tree was bind-mounted).</summary>
    public string MountRoot { get; init; } = "/";
    /// <summary>This process's cgroup in the hierarchy (from /proc/self/cgroup), "/" if unknown.</summary>
    public string OwnPath { get; init; } = "/";

    /// <summary>A short key: the controllers joined by ",", or "name=X".</summary>
    public string Key => Name is not null ? "name=" + Name : string.Join(",", Controllers);

    public override string ToString() => $"{Key} at {MountPoint}";
}

/// <summary>What <see cref="CgroupLayout.Detect"/> found: the mode, each v1 hierarchy and the cgroup2 mount.</summary>
public sealed class CgroupLayoutInfo
{
    public required CgroupMode Mode { get; init; }
    /// <summary>Every mounted v1 hierarchy, controllers first, named ones (name=systemd) last.</summary>
    public required IReadOnlyList<V1Hierarchy> V1Hierarchies { get; init; }
    /// <summary>The cgroup2 mount point, or null on pure v1.</summary>
    public string? UnifiedMount { get; init; }
    /// <summary>The cgroup shown at <see cref="UnifiedMount"/> ("/" normally).</summary>
    public string UnifiedMountRoot { get; init; } = "/";
    /// <summary>The controllers the cgroup2 root offers (its cgroup.controllers).</summary>
    public IReadOnlySet<string> UnifiedControllers { get; init; } = new HashSet<string>();
    /// <summary>This process's cgroup2 path (the "0::" line of /proc/self/cgroup).</summary>
    public string UnifiedOwnPath { get; init; } = "/";

    /// <summary>The v1 hierarchy that has <paramref name="controller"/>, or null.</summary>
    public V1Hierarchy? V1(string controller)
    {
        foreach (var h in V1Hierarchies)
            if (h.Name is null && h.Controllers.Contains(controller)) return h;
        return null;
    }

    /// <summary>True if <paramref name="controller"/> is served by the cgroup2 hierarchy (and not by a v1
    /// one).</summary>
    public bool OnV2(string controller) => UnifiedMount is not null && V1(controller) is null
        && UnifiedControllers.Contains(controller);

    /// <summary>Where a controller lives: "v1", "v2" or null if the host does not have it.</summary>
    public string? WhereIs(string controller) => V1(controller) is not null ? "v1" : OnV2(controller) ? "v2" : null;

    /// <summary>Every controller the host has, by name, with its hierarchy ("v1" or "v2").</summary>
    public IReadOnlyDictionary<string, string> Controllers
    {
        get
        {
            var d = new SortedDictionary<string, string>(StringComparer.Ordinal);
            foreach (var h in V1Hierarchies) foreach (var c in h.Controllers) d[c] = "v1";
            if (UnifiedMount is not null)
                foreach (var c in UnifiedControllers) d.TryAdd(c, "v2");
            return d;
        }
    }

    /// <summary>A pure cgroup2 layout rooted at <paramref name="mount"/> (tests; or a private cgroup2 mount).
    /// Controllers are read from its cgroup.controllers unless given.</summary>
    public static CgroupLayoutInfo ForV2(string mount, IEnumerable<string>? controllers = null) => new()
    {
        Mode = CgroupMode.V2,
        V1Hierarchies = [],
        UnifiedMount = mount.TrimEnd('/') is "" ? "/" : mount.TrimEnd('/'),
        UnifiedControllers = new HashSet<string>(controllers ?? CgroupLayout.ReadControllers(mount)),
    };

    /// <summary>A v1 (or, with <paramref name="unifiedMount"/>, hybrid) layout from controller-list → mount point.
    /// For tests against a fake tree, and for hosts where mountinfo cannot be read.</summary>
    public static CgroupLayoutInfo ForV1(IReadOnlyDictionary<string, string> hierarchies, string? unifiedMount = null,
        IEnumerable<string>? unifiedControllers = null) => new()
    {
        Mode = unifiedMount is null ? CgroupMode.V1 : CgroupMode.Hybrid,
        V1Hierarchies = hierarchies.Select(kv => new V1Hierarchy
        {
            MountPoint = kv.Value,
            Controllers = kv.Key.StartsWith("name=", StringComparison.Ordinal) ? [] : kv.Key.Split(','),
            Name = kv.Key.StartsWith("name=", StringComparison.Ordinal) ? kv.Key[5..] : null,
        }).OrderBy(h => h.Name is null ? 0 : 1).ToList(),
        UnifiedMount = unifiedMount,
        UnifiedControllers = new HashSet<string>(unifiedControllers
            ?? (unifiedMount is null ? [] : CgroupLayout.ReadControllers(unifiedMount))),
    };

    public override string ToString()
    {
        var sb = new StringBuilder($"cgroup {Mode}");
        foreach (var h in V1Hierarchies) sb.Append($"; v1 {h.Key} at {h.MountPoint}");
        if (UnifiedMount is not null) sb.Append(
            $"; v2 at {UnifiedMount} [{string.Join(" ", UnifiedControllers.Order())}]");
        return sb.ToString();
    }
}

/// <summary>Finds out how cgroups are mounted, from /proc/self/mountinfo and /proc/self/cgroup.</summary>
public static class CgroupLayout
{
    /// <summary>Controllers a cgroup v1 mount can carry (its super options name them).</summary>
    public static readonly IReadOnlyList<string> KnownV1Controllers =
    [
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "net_cls", "net_prio",
        "perf_event", "hugetlb", "rdma", "misc",
    ];

    static CgroupLayoutInfo? s_cached;
    static readonly object s_lock = new();

    /// <summary>The host's layout, detected once and cached (call <see cref="Refresh"/> after mounting
    /// cgroups).</summary>
    public static CgroupLayoutInfo Detect()
    {
        lock (s_lock) return s_cached ??= Detect("/proc/self/mountinfo", "/proc/self/cgroup");
    }

    /// <summary>Forgets the cached layout.</summary>
    public static void Refresh()
    {
        lock (s_lock) s_cached = null;
    }

    /// <summary>Detects the layout from the given files (uncached): for tests and for another process's view.</summary>
    public static CgroupLayoutInfo Detect(string mountinfoPath, string procCgroupPath)
    {
        string mountinfo, procCgroup;
        try { mountinfo = File.ReadAllText(mountinfoPath); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CgroupException($"cannot read {mountinfoPath} to find the cgroup mounts: {e.Message}. Is /proc " +
                "mounted?", inner: e);
        }
        try { procCgroup = File.ReadAllText(procCgroupPath); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { procCgroup = ""; }
        return Parse(mountinfo, procCgroup);
    }

    /// <summary>Parses mountinfo and /proc/self/cgroup text. <paramref name="readControllers"/> reads a cgroup2
    /// mount's cgroup.controllers (default: the real file).</summary>
    public static CgroupLayoutInfo Parse(string mountinfo, string procSelfCgroup, Func<string,
        IEnumerable<string>>? readControllers = null)
    {
        readControllers ??= ReadControllers;
        var own = ParseProcCgroup(procSelfCgroup);
        var v1 = new List<V1Hierarchy>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        string? unified = null, unifiedRoot = null;
        foreach (var raw in mountinfo.Split('\n'))
        {
            if (raw.Length == 0) continue;
            var dash = raw.IndexOf(" - ", StringComparison.Ordinal);
            if (dash < 0) continue;
            var pre = raw[..dash].Split(' ');
            var post = raw[(dash + 3)..].Split(' ');
            if (pre.Length < 5 || post.Length < 3) continue;
            var fstype = post[0];
            if (fstype != "cgroup" && fstype != "cgroup2") continue;
            var root = Unescape(pre[3]);
            var mountPoint = Unescape(pre[4]);
            if (fstype == "cgroup2")
            {
                // The first cgroup2 mount wins (later ones are usually bind mounts of it into containers).
                if (unified is null) { unified = mountPoint; unifiedRoot = root; }
                continue;
            }
            var opts = post[2].Split(',');
            var controllers = opts.Where(o => KnownV1Controllers.Contains(o)).ToList();
            var name = opts.FirstOrDefault(o => o.StartsWith("name=", StringComparison.Ordinal))?[5..];
            if (controllers.Count == 0 && name is null) continue;
            var key = name is not null && controllers.Count == 0 ? "name=" + name : string.Join(",", controllers);
            if (!seen.Add(key)) continue;   // the same hierarchy mounted twice: keep the first
            var ownKey = controllers.Count > 0 ? controllers[0] : "name=" + name;
            v1.Add(new V1Hierarchy
            {
                MountPoint = mountPoint, Controllers = controllers, Name = controllers.Count == 0 ? name : null,
                MountRoot = root,
                OwnPath = own.TryGetValue(ownKey, out var p) ? p : "/",
            });
        }
        v1.Sort((a, b) => (a.Name is null ? 0 : 1).CompareTo(b.Name is null ? 0 : 1));
        var hasV1Controllers = v1.Any(h => h.Controllers.Count > 0);
        var mode = unified is null ? CgroupMode.V1 : hasV1Controllers ? CgroupMode.Hybrid : CgroupMode.V2;
        if (unified is null && !hasV1Controllers)
            throw new CgroupException("no cgroup filesystem is mounted (neither cgroup2 nor cgroup v1 controllers in " +
                "/proc/self/mountinfo): mount cgroup2 on /sys/fs/cgroup");
        if (mode == CgroupMode.V2) v1.Clear();  // a lone named hierarchy next to cgroup2 is not ours to manage
        return new CgroupLayoutInfo
        {
            Mode = mode, V1Hierarchies = v1, UnifiedMount = unified, UnifiedMountRoot = unifiedRoot ?? "/",
            UnifiedControllers = new HashSet<string>(unified is null ? [] : readControllers(unified)),
            UnifiedOwnPath = own.TryGetValue("", out var u) ? u : "/",
        };
    }

    /// <summary>Parses /proc/PID/cgroup: controller (or "name=X", or "" for cgroup2) → path.</summary>
    public static Dictionary<string, string> ParseProcCgroup(string text)
    {
        var d = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in text.Split('\n'))
        {
            var a = line.IndexOf(':');
            var b = a < 0 ? -1 : line.IndexOf(':', a + 1);
            if (b < 0) continue;
            var path = line[(b + 1)..];
            var list = line[(a + 1)..b];
            if (list.Length == 0) { d[""] = path; continue; }
            foreach (var c in list.Split(',')) d[c] = path;
        }
        return d;
    }

    /// <summary>The controllers listed in DIR/cgroup.controllers (empty if unreadable).</summary>
    public static IEnumerable<string> ReadControllers(string dir)
    {
        try { return File.ReadAllText(Path.Combine(dir, "cgroup.controllers")).Split([' ', '\n'],
            StringSplitOptions.RemoveEmptyEntries); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return []; }
    }

    /// <summary>mountinfo escapes space, tab, newline and backslash as \ooo.</summary>
    public static string Unescape(string s)
    {
        if (!s.Contains('\\')) return s;
        var sb = new StringBuilder();
        for (var i = 0; i < s.Length; i++)
        {
            if (s[i] == '\\' && i + 3 < s.Length && s[(i + 1)..(i + 4)].All(c => c is >= '0' and <= '7'))
            {
                sb.Append((char)Convert.ToInt32(s.Substring(i + 1, 3), 8));
                i += 3;
            }
            else sb.Append(s[i]);
        }
        return sb.ToString();
    }
}
