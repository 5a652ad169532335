using Hull.Cgroups;
using Hull.TestSupport;

namespace Hull.Cgroups.Tests;

/// <summary>A cgroupfs imitation in a temp dir: plain files where the kernel has interface files. Every write the
/// driver makes is recorded in <see cref="Writes"/> (files only keep the last value, as a kernel list file would
/// not).</summary>
sealed class FakeTree : IDisposable
{
    readonly TempDir _tmp = new("hull-cgfake");
    public string Root => _tmp.Path;
    public List<(string File, string Value)> Writes { get; } = [];

    public static readonly string[] V2Files =
    [
        "cgroup.controllers", "cgroup.subtree_control", "cgroup.procs", "cgroup.events", "cgroup.freeze", "cgroup.kill",
        "cpu.weight", "cpu.max", "cpu.max.burst", "cpu.idle", "cpu.stat", "cpuset.cpus", "cpuset.mems",
        "cpuset.cpus.effective",
        "cpuset.mems.effective", "memory.max", "memory.low", "memory.high", "memory.swap.max", "memory.current",
        "memory.peak",
        "memory.stat", "memory.events", "memory.swap.current", "memory.swap.events", "pids.max", "pids.current",
        "io.weight",
        "io.max", "io.stat", "hugetlb.2MB.max", "hugetlb.2MB.rsvd.max", "hugetlb.2MB.current", "hugetlb.2MB.events",
        "hugetlb.1GB.max", "hugetlb.1GB.current", "rdma.max",
    ];

    public FakeTree(string controllers = "cpuset cpu io memory hugetlb pids rdma")
    {
        File.WriteAllText(System.IO.Path.Combine(Root, "cgroup.controllers"), controllers + "\n");
        File.WriteAllText(System.IO.Path.Combine(Root, "cgroup.subtree_control"), "");
    }

    public ICgroup Open(string path, string[]? controllers = null)
    {
        var cg = Cgroup.Open(path, "id", CgroupLayoutInfo.ForV2(Root, controllers));
        ((CgroupManager)cg).OnWrite = (p, v) => Writes.Add((System.IO.Path.GetRelativePath(Root, p), v));
        return cg;
    }

    /// <summary>What the kernel would show in a new cgroup: its interface files.</summary>
    public void Populate(string relDir, IEnumerable<string>? files = null, string? except = null)
    {
        var dir = System.IO.Path.Combine(Root, relDir.TrimStart('/'));
        foreach (var f in files ?? V2Files)
            if (f != except) File.WriteAllText(System.IO.Path.Combine(dir, f), "");
    }

    public string Read(string rel) => File.ReadAllText(System.IO.Path.Combine(Root, rel.TrimStart('/')));
    public void Set(string rel, string text) =>
        File.WriteAllText(System.IO.Path.Combine(Root, rel.TrimStart('/')), text);
    public string Path(string rel) => System.IO.Path.Combine(Root, rel.TrimStart('/'));
    public bool Exists(string rel) => Directory.Exists(System.IO.Path.Combine(Root, rel.TrimStart('/')));

    public void Dispose() => _tmp.Dispose();
}
