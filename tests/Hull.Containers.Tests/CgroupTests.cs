using Hull.Oci;
using Hull.TestSupport;
using Xunit;

namespace Hull.Containers.Tests;

/// <summary>linux.resources and the verbs that work through the container's cgroup, on this host's real
/// hierarchies.</summary>
[Collection("oci")]
public class CgroupTests(OciHarnessFixture f)
{
    OciHarness H => f.H;

    static string HostFile(string controllerFile, string cgroupPath)
    {
        var hierarchy = Hull.Cgroups.CgroupLayout.Detect();
        foreach (var dir in Directory.EnumerateDirectories("/sys/fs/cgroup"))
        {
            var p = dir + cgroupPath + "/" + controllerFile;
            if (File.Exists(p)) return p;
        }
        var unified = "/sys/fs/cgroup" + cgroupPath + "/" + controllerFile;
        if (File.Exists(unified)) return unified;
        throw new FileNotFoundException($"{controllerFile} for {cgroupPath} (mode {hierarchy.Mode})");
    }

    [SkippableFact]
    public void Resources_are_applied_and_the_process_starts_in_the_cgroup()
    {
        var id = H.NewId();
        var b = H.Bundle(s =>
        {
            s.Linux!.CgroupsPath = $"/hull-test/{id}";
            s.Linux.Resources = new Resources
            {
                Memory = new Memory { Limit = 64 << 20 },
                Cpu = new Cpu { Shares = 512, Quota = 50000, Period = 100000 },
                Pids = new Pids { Limit = 64 },
            };
        }, "sleep", "100");
        Assert.Equal(0, H.Run("run", "-d", "--bundle", b, id).Code);
        try
        {
            var pid = H.State(id).Pid;
            var cg = File.ReadAllText($"/proc/{pid}/cgroup");
            Assert.Contains($"/hull-test/{id}", cg);
            var mem = Hull.Cgroups.CgroupLayout.Detect().Mode == Hull.Cgroups.CgroupMode.V2 ? "memory.max"
                : "memory.limit_in_bytes";
            Assert.Equal((64 << 20).ToString(), File.ReadAllText(HostFile(mem, $"/hull-test/{id}")).Trim());
            Assert.Equal("64", File.ReadAllText(HostFile("pids.max", $"/hull-test/{id}")).Trim());
            var (code, o, e) = H.Run("ps", "--format", "json", id);
            Assert.True(code == 0, e);
            Assert.Contains(pid.ToString(), o);

            // update
            Assert.Equal(0, H.Run("update", "--pids-limit", "32", id).Code);
            Assert.Equal("32", File.ReadAllText(HostFile("pids.max", $"/hull-test/{id}")).Trim());
            var stats = H.Run("events", "--stats", id);
            Assert.Equal(0, stats.Code);
            Assert.Contains("\"type\":\"stats\"", stats.Out);
            Assert.Contains("\"pids\"", stats.Out);
        }
        finally { H.Run("delete", "--force", id); }
        Assert.False(Directory.EnumerateDirectories("/sys/fs/cgroup").Any(d =>
            Directory.Exists(d + $"/hull-test/{id}")), "the cgroup must be removed by delete");
    }

    [SkippableFact]
    public void A_cgroup_namespace_is_rooted_at_the_containers_own_cgroup_in_every_hierarchy()
    {
        var id = H.NewId();
        var b = H.Bundle(s => s.Linux!.CgroupsPath = $"/hull-test/{id}", "sh", "-c",
            "cat /proc/self/cgroup; echo ---; ls /sys/fs/cgroup/*/ | grep -c hull-test; echo ---; "
            + "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max");
        var (code, o, e) = H.Run("run", "--bundle", b, id);
        Assert.True(code == 0, e);
        var parts = o.Split("---\n");
        // Each hierarchy (v1 ones and the unified one) shows the container's cgroup as its root ...
        foreach (var line in parts[0].Split('\n', StringSplitOptions.RemoveEmptyEntries))
            Assert.EndsWith(":/", line);
        // ... and /sys/fs/cgroup is that cgroup, not the host's tree with the other containers in it.
        Assert.Equal("0", parts[1].Trim());
        Assert.Equal("max", parts[2].Trim());
    }

    [SkippableFact]
    public void Pause_and_resume()
    {
        var id = H.NewId();
        Assert.Equal(0, H.Run("run", "-d", "--bundle", H.Bundle(null, "sleep", "100"), id).Code);
        try
        {
            Assert.Equal(0, H.Run("pause", id).Code);
            Assert.Equal("paused", H.State(id).Status);
            var again = H.Run("pause", id);
            Assert.NotEqual(0, again.Code);
            Assert.Contains("not running", again.Err);
            Assert.Equal(0, H.Run("resume", id).Code);
            Assert.Equal("running", H.State(id).Status);
        }
        finally { H.Run("delete", "--force", id); }
    }

    [SkippableFact]
    public void Kill_all_signals_every_process_in_the_cgroup()
    {
        var id = H.NewId();
        Assert.Equal(0, H.Run("run", "-d", "--bundle", H.Bundle(null, "sh", "-c", "sleep 100 & sleep 100 & wait"),
            id).Code);
        try
        {
            for (var i = 0; i < 50 && H.Run("ps", "--format", "json",
                id).Out.Count(c => c == ',') < 2; i++) Thread.Sleep(20);
            Assert.Equal(0, H.Run("kill", "--all", id, "KILL").Code);
            for (var i = 0; i < 100 && H.State(id).Status != "stopped"; i++) Thread.Sleep(20);
            Assert.Equal("stopped", H.State(id).Status);
        }
        finally { H.Run("delete", "--force", id); }
    }

    [SkippableFact]
    public void A_bad_resource_value_fails_create_and_leaves_nothing()
    {
        var before = OciHarness.Snapshot(H.Root);
        var id = H.NewId();
        var (code, _, e) = H.Run("create", "--bundle",
            H.Bundle(s => s.Linux!.Resources = new Resources { Cpu = new Cpu { Cpus = "99" } }, "sleep", "1"), id);
        Assert.NotEqual(0, code);
        Assert.Contains("cpuset.cpus", e);
        Assert.Equal(before, OciHarness.Snapshot(H.Root));
    }
}
