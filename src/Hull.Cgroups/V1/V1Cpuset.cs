using Hull.Linux;
using Hull.Oci;

namespace Hull.Cgroups.V1;

/// <summary>cgroup v1 cpuset. A new v1 cpuset cgroup starts with empty cpus and mems (no process could join it),
/// so <see cref="InitLevels"/> copies the parent's into every level that is empty, and sets the parent's
/// <c>cgroup.clone_children</c> (below the hierarchy's root) so that the kernel copies them at the next mkdir: a
/// write to cpuset.cpus checks every sibling and rebuilds the scheduler domains, a cost that grew with each running
/// container (measured: 4.4 % of a start's CPU with 1,500 running).</summary>
internal static class V1Cpuset
{
    public static void InitLevels(CgroupFiles f, string mount, string dir)
    {
        var root = mount.TrimEnd('/');
        var rel = dir[root.Length..].Split('/', StringSplitOptions.RemoveEmptyEntries);
        var parent = root;
        foreach (var part in rel)
        {
            var cur = parent + "/" + part;
            var filled = false;
            foreach (var file in new[] { "cpuset.cpus", "cpuset.mems" })
            {
                var mine = f.ReadOrNull(cur, file);
                if (mine is null || mine.Trim().Length > 0) continue;
                var theirs = f.ReadOrNull(parent, file)?.Trim();
                if (!string.IsNullOrEmpty(theirs)) { f.Write(cur, file, theirs); filled = true; }
            }
            // Not on the hierarchy's root: that would change the cgroups other software makes there.
            if (filled && parent != root) f.TryWrite(parent, "cgroup.clone_children", "1", out _);
            parent = cur;
        }
    }

    public static void Apply(CgroupFiles f, string d, Cpu c) =>
        Write(f, d, c, "cpuset.effective_cpus", "cpuset.effective_mems");

    /// <summary>Shared with v2 (same file names and syntax; only the parent's effective files differ).</summary>
    internal static void Write(CgroupFiles f, string d, Cpu c, string effCpus, string effMems)
    {
        var parent = Path.GetDirectoryName(d) ?? d;
        if (!string.IsNullOrEmpty(c.Cpus))
            f.Write(d, "cpuset.cpus", c.Cpus, e => e is Errors.EINVAL or Errors.ERANGE
                ? $"CPU list \"{c.Cpus}\" is malformed or names CPUs this cgroup may not use: the parent allows " +
                    $"{f.ReadOrNull(parent, effCpus)?.Trim() ?? "?"} (use a list such as \"0-1\" or \"0,2\")"
                : CgroupFiles.GenericHint("cpuset.cpus", e));
        if (!string.IsNullOrEmpty(c.Mems))
            f.Write(d, "cpuset.mems", c.Mems, e => e is Errors.EINVAL or Errors.ERANGE
                ? $"memory node list \"{c.Mems}\" is malformed or names nodes this cgroup may not use: the parent " +
                    $"allows {f.ReadOrNull(parent, effMems)?.Trim() ?? "?"}"
                : CgroupFiles.GenericHint("cpuset.mems", e));
    }

    public static void Stats(CgroupFiles f, string d, CgroupStats s)
    {
        var c = s.Cpuset;
        c.Cpus = ParseList(f.ReadOrNull(d, "cpuset.cpus"));
        c.Mems = ParseList(f.ReadOrNull(d, "cpuset.mems"));
        c.CpuExclusive = f.ReadU64(d, "cpuset.cpu_exclusive");
        c.MemExclusive = f.ReadU64(d, "cpuset.mem_exclusive");
        c.MemHardwall = f.ReadU64(d, "cpuset.mem_hardwall");
        c.MemoryMigrate = f.ReadU64(d, "cpuset.memory_migrate");
        c.MemorySpreadPage = f.ReadU64(d, "cpuset.memory_spread_page");
        c.MemorySpreadSlab = f.ReadU64(d, "cpuset.memory_spread_slab");
        c.MemoryPressure = f.ReadU64(d, "cpuset.memory_pressure");
        c.SchedLoadBalance = f.ReadU64(d, "cpuset.sched_load_balance");
        c.SchedRelaxDomainLevel = long.TryParse(f.ReadOrNull(d, "cpuset.sched_relax_domain_level")?.Trim(), out var l)
            ? l : 0;
    }

    /// <summary>"0-2,5" → [0,1,2,5]; null for empty.</summary>
    public static List<ushort>? ParseList(string? text)
    {
        if (string.IsNullOrWhiteSpace(text)) return null;
        var list = new List<ushort>();
        foreach (var part in text.Trim().Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            var dash = part.IndexOf('-');
            if (dash < 0) { if (ushort.TryParse(part, out var one)) list.Add(one); continue; }
            if (ushort.TryParse(part[..dash], out var a) && ushort.TryParse(part[(dash + 1)..], out var b))
                for (var i = a; i <= b && list.Count < 65536; i++) list.Add(i);
        }
        return list;
    }
}
