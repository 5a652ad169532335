using Hull.Linux;

namespace Hull.Cgroups.V2;

/// <summary>linux.resources.unified: raw cgroup v2 "file": "value" pairs, written after everything else.
/// A key must name an interface file of a controller that is on the v2 hierarchy (or a cgroup.* file).</summary>
internal static class V2Unified
{
    static readonly HashSet<string> Forbidden =
        ["cgroup.procs", "cgroup.threads", "cgroup.kill", "cgroup.freeze", "cgroup.subtree_control", "cgroup.type"];

    public static void Validate(CgroupLayoutInfo layout, Dictionary<string, string> unified)
    {
        foreach (var key in unified.Keys)
        {
            if (key.Length == 0 || key.Contains('/') || key.StartsWith('.') || !key.Contains('.'))
                throw new CgroupException($"linux.resources.unified key \"{key}\" is not a cgroup v2 file name (such " +
                    "as \"memory.high\")", key);
            if (Forbidden.Contains(key))
                throw new CgroupException($"linux.resources.unified key \"{key}\" is managed by the runtime and " +
                    "cannot be set through unified", key);
            var controller = key[..key.IndexOf('.')];
            if (controller == "cgroup") continue;
            if (layout.V1(controller) is not null)
                throw new CgroupException($"linux.resources.unified key \"{key}\": on this host the {controller} " +
                    $"controller is on cgroup v1 ({layout.Mode} layout), so v2 files for it do not exist; use the " +
                    "matching linux.resources field instead", key);
            if (!layout.UnifiedControllers.Contains(controller) && !IsCoreFile(controller))
                throw new CgroupException($"linux.resources.unified key \"{key}\" is unknown: \"{controller}\" is " +
                    "not a cgroup v2 controller of this host (it has: " +
                    $"{string.Join(" ", layout.UnifiedControllers.Order())})", key);
        }
    }

    // Files that exist on every v2 cgroup without a controller ("cpu.stat", "io.pressure" ... are core files).
    static bool IsCoreFile(string prefix) => prefix is "cpu" or "io" or "memory" or "irq";

    public static void Apply(CgroupFiles f, CgroupLayoutInfo layout, string d, Dictionary<string, string> unified)
    {
        foreach (var (key, value) in unified)
        {
            if (!f.Exists(d, key))
                throw new CgroupException($"linux.resources.unified key \"{key}\" is unknown: {d} has no such file " +
                    $"({V2Tree.MissingHint(d, key)})", key, value, Errors.ENOENT);
            f.Write(d, key, value);
        }
    }
}
