using Hull.Cgroups;
using Hull.Linux;
using Hull.Oci;
using Hull.TestSupport;
using Xunit;

namespace Hull.Cgroups.Tests;

/// <summary>
/// The pure-v2 code paths on this host's real cgroup2 mount (a layout made of the cgroup2 mount alone), and the
/// pure-v1 paths (a layout made of the v1 hierarchies alone). On a hybrid host the two together are everything.
/// </summary>
[Collection("real cgroups")]
public class RealUnifiedTests
{
    static CgroupLayoutInfo V2Only()
    {
        var unified = CgroupLayout.Detect().UnifiedMount;
        if (unified is null) Requires.Missing("a cgroup2 mount");
        return CgroupLayoutInfo.ForV2(unified!);
    }

    [SkippableFact]
    public void V2_create_join_freeze_kill_destroy_and_hugetlb()
    {
        Requires.Root();
        var l = V2Only();
        using var scope = new CgroupScope(l);
        var cg = scope.Open("c1", l);
        cg.Create();
        var dir = cg.Directories["v2"];
        Assert.True(Directory.Exists(dir));
        Assert.Equal(l.UnifiedControllers.Order(), CgroupLayout.ReadControllers(dir).Order());

        if (l.UnifiedControllers.Contains("hugetlb") && File.Exists(dir + "/hugetlb.2MB.max"))
        {
            cg.Apply(new Resources { HugepageLimits = [new HugepageLimit { PageSize = "2MB", Limit = 4 << 21 }] });
            Assert.Equal((4 << 21).ToString(), File.ReadAllText(dir + "/hugetlb.2MB.max").Trim());
            var e = Assert.Throws<CgroupException>(() =>
                cg.Apply(new Resources { HugepageLimits = [new HugepageLimit { PageSize = "3MB", Limit = 1 }] }));
            Assert.Contains("2MB", e.Message);
            Assert.Equal((4 << 21).ToString(), cg.Stats().Hugetlb.ContainsKey("2MB")
                ? File.ReadAllText(dir + "/hugetlb.2MB.max").Trim() : "");
        }
        var u = Assert.Throws<CgroupException>(() =>
            cg.Apply(new Resources { Unified = new() { ["hugetlb.2MB.bogus"] = "1" } }));
        Assert.Contains("has no such file", u.Message);

        using var a = Child.Sleep(cg);                 // CLONE_INTO_CGROUP
        using var join = cg.PrepareJoin();
        Assert.NotNull(join.CgroupDir);
        Assert.Empty(join.TaskFiles);
        Assert.Equal(scope.Path + "/c1", a.Cgroups()[""]);
        using var b = Child.Sleep(null);
        cg.AddProcess(b.Pid);
        Assert.Equal(scope.Path + "/c1", b.Cgroups()[""]);
        Assert.Equal(new[] { a.Pid, b.Pid }.Order(), cg.Pids());

        cg.Freeze();
        Assert.True(cg.IsFrozen);
        Assert.Contains("frozen 1", File.ReadAllText(dir + "/cgroup.events"));
        cg.Thaw();
        Assert.False(cg.IsFrozen);
        Assert.Contains("frozen 0", File.ReadAllText(dir + "/cgroup.events"));

        var s = cg.Stats();
        Assert.True(s.Cpu.Usage.Total > 0, "cpu.stat usage_usec");

        Assert.True(File.Exists(dir + "/cgroup.kill"));
        cg.Kill(Signals.SIGKILL);                      // cgroup.kill
        Assert.Equal(128 + Signals.SIGKILL, a.Wait());
        Assert.Equal(128 + Signals.SIGKILL, b.Wait());
        Assert.Empty(cg.Pids());
        cg.Destroy();
        Assert.False(Directory.Exists(dir));
        cg.Destroy();
    }

    [SkippableFact]
    public void V1_only_layout_joins_through_tasks_files_and_kills_without_cgroup_kill()
    {
        Requires.Root();
        var host = CgroupLayout.Detect();
        if (host.V1Hierarchies.Count == 0) Requires.Missing("cgroup v1 hierarchies");
        var l = new CgroupLayoutInfo { Mode = CgroupMode.V1, V1Hierarchies = host.V1Hierarchies };
        using var scope = new CgroupScope(l);
        var cg = scope.Open("c1", l);
        cg.Create();
        Assert.False(cg.Directories.ContainsKey("v2"));
        using (var join = cg.PrepareJoin())
        {
            Assert.Null(join.CgroupDir);
            Assert.Equal(host.V1Hierarchies.Count, join.TaskFiles.Count);
        }
        using var a = Child.Sleep(cg);
        using var b = new Child(cg, ["/bin/sh", "-c", "sleep 30 & sleep 30 & wait"]);
        for (var i = 0; i < 500 && cg.Pids().Count < 4; i++) Thread.Sleep(5);
        Assert.Equal(4, cg.Pids().Count);
        var e = Assert.Throws<CgroupException>(() =>
            cg.Apply(new Resources { Unified = new() { ["memory.high"] = "1" } }));
        Assert.Contains("pure cgroup v1", e.Message);
        cg.Kill(Signals.SIGKILL);                      // freeze, kill each, thaw, until empty
        Assert.Equal(128 + Signals.SIGKILL, a.Wait());
        Assert.Equal(128 + Signals.SIGKILL, b.Wait());
        Assert.Empty(cg.Pids());
        cg.Destroy();
        foreach (var d in cg.Directories.Values) Assert.False(Directory.Exists(d), d);
    }

    [SkippableFact]
    public void Destroy_waits_out_a_busy_cgroup_and_reports_one_that_stays_busy()
    {
        Requires.Root();
        var l = V2Only();
        using var scope = new CgroupScope(l);
        var cg = scope.Open("busy", l);
        cg.Create();
        using var a = Child.Sleep(cg);
        var e = Assert.Throws<CgroupException>(() => cg.Destroy());
        Assert.Contains("EBUSY", e.Message);
        Assert.Contains(a.Pid.ToString(), e.Message);
        Assert.Contains("kill them first", e.Message);
        cg.Kill(Signals.SIGKILL);
        a.Wait();
        cg.Destroy();
        Assert.False(Directory.Exists(cg.Directories["v2"]));
    }
}
