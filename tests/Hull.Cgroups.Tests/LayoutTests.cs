using Hull.Cgroups;
using Xunit;

namespace Hull.Cgroups.Tests;

public class LayoutTests
{
    // This host's layout: v1 controllers, a named systemd hierarchy, and cgroup2 at /sys/fs/cgroup/unified.
    const string HybridMountinfo = """
        23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
        31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
        32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
        33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
        34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
        36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
        37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
        38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
        39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
        40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
        """;

    const string HybridProcCgroup =
        "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n4:memory:/svc/a\n3:cpuset:/\n" +
        "2:cpuacct:/\n1:cpu:/\n0::/\n";

    [Fact]
    public void Parses_the_hybrid_layout()
    {
        var l = CgroupLayout.Parse(HybridMountinfo, HybridProcCgroup, _ => ["hugetlb"]);
        Assert.Equal(CgroupMode.Hybrid, l.Mode);
        Assert.Equal("/sys/fs/cgroup/unified", l.UnifiedMount);
        Assert.Equal(9, l.V1Hierarchies.Count);
        Assert.Equal("name=systemd", l.V1Hierarchies[^1].Key);
        Assert.Equal("/sys/fs/cgroup/memory", l.V1("memory")!.MountPoint);
        Assert.Equal("/svc/a", l.V1("memory")!.OwnPath);
        Assert.Equal("v1", l.WhereIs("memory"));
        Assert.Equal("v2", l.WhereIs("hugetlb"));
        Assert.Null(l.WhereIs("rdma"));
        Assert.True(l.OnV2("hugetlb"));
        var f = Cgroup.Features(l);
        Assert.True(f.V1);
        Assert.True(f.V2);
        Assert.Equal("hybrid", f.Mode);
        Assert.Equal("v2", f.Controllers["hugetlb"]);
        Assert.Equal("v1", f.Controllers["cpuacct"]);
    }

    [Fact]
    public void Parses_pure_v2_and_pure_v1()
    {
        var v2 = CgroupLayout.Parse("30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
            "0::/user.slice/session-1.scope\n", _ => ["cpuset", "cpu", "io", "memory", "pids"]);
        Assert.Equal(CgroupMode.V2, v2.Mode);
        Assert.Empty(v2.V1Hierarchies);
        Assert.Equal("/user.slice/session-1.scope", v2.UnifiedOwnPath);
        Assert.Equal("v2", v2.WhereIs("memory"));

        var v1 = CgroupLayout.Parse("""
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
            33 31 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
            34 31 0:30 / /mnt/again rw - cgroup cgroup rw,memory
            """, "2:cpu,cpuacct:/a\n1:memory:/b\n");
        Assert.Equal(CgroupMode.V1, v1.Mode);
        Assert.Equal(2, v1.V1Hierarchies.Count);   // the second mount of memory is ignored
        Assert.Equal("cpu,cpuacct", v1.V1("cpuacct")!.Key);
        Assert.Equal("/a", v1.V1("cpu")!.OwnPath);
        Assert.Null(v1.UnifiedMount);
    }

    [Fact]
    public void Decodes_escaped_mount_points_and_bind_mounted_roots()
    {
        var l = CgroupLayout.Parse("32 31 0:29 /ctr /my\\040cg/memory rw - cgroup cgroup rw,memory\n",
            "1:memory:/ctr\n");
        var h = l.V1("memory")!;
        Assert.Equal("/my cg/memory", h.MountPoint);
        Assert.Equal("/ctr", h.MountRoot);
        var cg = Cgroup.Open("/ctr/x", "id", l);
        Assert.Equal("/my cg/memory/x", cg.Directories["memory"]);
    }

    [Fact]
    public void No_cgroup_mount_is_a_clear_error()
    {
        var e = Assert.Throws<CgroupException>(() => CgroupLayout.Parse("1 0 0:1 / / rw - ext4 /dev/vda rw\n", ""));
        Assert.Contains("no cgroup filesystem", e.Message);
    }

    [Fact]
    public void Detects_this_host()
    {
        var l = CgroupLayout.Detect();
        Assert.Same(l, CgroupLayout.Detect());
        Assert.True(l.UnifiedMount is not null || l.V1Hierarchies.Count > 0);
    }

    [Theory]
    [InlineData("", "abc", "/hull/abc", false)]
    [InlineData("/a/b", "abc", "/a/b", false)]
    [InlineData("//a//b/", "abc", "/a/b", false)]
    [InlineData("a/b", "abc", "a/b", true)]
    [InlineData("machine.slice:libpod:abc", "abc", "/machine.slice/libpod-abc.scope", false)]
    [InlineData("system-hull.slice:hull:abc", "abc", "/system.slice/system-hull.slice/hull-abc.scope", false)]
    [InlineData(":hull:abc", "abc", "/system.slice/hull-abc.scope", false)]
    [InlineData("-.slice::x", "abc", "/x.scope", false)]
    [InlineData("user.slice::my.slice", "abc", "/user.slice/my.slice", false)]
    public void Resolves_cgroups_paths(string input, string id, string path, bool relative)
    {
        Assert.Equal((path, relative), Cgroup.ResolvePath(input, id));
    }

    [Theory]
    [InlineData("/a/../b", "..")]
    [InlineData("/", "root cgroup")]
    [InlineData("machine:libpod:abc", "not a slice")]
    [InlineData("machine.slice:libpod:", "non-empty name")]
    public void Rejects_bad_cgroups_paths(string input, string message)
    {
        var e = Assert.Throws<CgroupException>(() => Cgroup.ResolvePath(input, "abc"));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void Relative_paths_go_under_the_callers_own_cgroup_per_hierarchy()
    {
        var l = CgroupLayout.Parse(HybridMountinfo, HybridProcCgroup, _ => ["hugetlb"]);
        var cg = Cgroup.Open("sub/c1", "c1", l);
        Assert.Equal("/sys/fs/cgroup/memory/svc/a/sub/c1", cg.Directories["memory"]);
        Assert.Equal("/sys/fs/cgroup/cpu/sub/c1", cg.Directories["cpu"]);
        Assert.Equal("/sys/fs/cgroup/unified/sub/c1", cg.Directories["v2"]);
        Assert.Equal("/sys/fs/cgroup/systemd/sub/c1", cg.Directories["name=systemd"]);
    }
}
