using Hull.Cgroups;
using Hull.Linux;
using Hull.Oci;
using Hull.TestSupport;
using Xunit;

namespace Hull.Cgroups.Tests;

/// <summary>The driver on this host's real cgroups, with the detected layout (hybrid here; v1 or v2
/// elsewhere).</summary>
[Collection("real cgroups")]
public class RealHostTests
{
    /// <summary>Whether any block device offers the BFQ scheduler (v1's blkio.weight comes from it since 5.0).
    /// </summary>
    static bool BfqOnAnyDevice() => Directory.Exists("/sys/block") && Directory.GetDirectories("/sys/block").Any(d =>
        File.Exists(d + "/queue/scheduler") && File.ReadAllText(d + "/queue/scheduler").Contains("bfq"));

    static string? FirstBlockDevice()
    {
        foreach (var dev in Directory.Exists("/sys/block") ? Directory.GetDirectories("/sys/block").Order().ToArray()
            : [])
        {
            var name = System.IO.Path.GetFileName(dev);
            if (name.StartsWith("loop", StringComparison.Ordinal) || name.StartsWith("ram", StringComparison.Ordinal)
                || name.StartsWith("zram", StringComparison.Ordinal)) continue;
            if (File.Exists(dev + "/dev")) return File.ReadAllText(dev + "/dev").Trim();
        }
        return null;
    }

    static string ReadIn(ICgroup cg, CgroupLayoutInfo l, string controller, string file)
    {
        var key = l.V1(controller)?.Key ?? "v2";
        return File.ReadAllText(System.IO.Path.Combine(cg.Directories[key], file)).Trim();
    }

    [SkippableFact]
    public void A_v1_cpuset_parent_hands_cpus_and_mems_to_new_children_itself()
    {
        Requires.Root();
        var l = CgroupLayout.Detect();
        Skip.If(l.WhereIs("cpuset") != "v1", "cpuset is not a v1 hierarchy on this host");
        using var scope = new CgroupScope(l);
        var first = scope.Open("c1", l);
        first.Create(); // the scope's level is new and empty: filled by copy, and told to clone from now on
        var parent = System.IO.Path.GetDirectoryName(first.Directories[l.V1("cpuset")!.Key])!;
        Assert.Equal("1", File.ReadAllText(System.IO.Path.Combine(parent, "cgroup.clone_children")).Trim());
        // A plain mkdir (no writes of ours): the kernel copied cpus and mems, so a start writes no cpuset file.
        var second = System.IO.Path.Combine(parent, "c2");
        Directory.CreateDirectory(second);
        try
        {
            Assert.Equal(File.ReadAllText(System.IO.Path.Combine(parent, "cpuset.cpus")).Trim(),
                File.ReadAllText(System.IO.Path.Combine(second, "cpuset.cpus")).Trim());
            Assert.NotEqual("", File.ReadAllText(System.IO.Path.Combine(second, "cpuset.mems")).Trim());
        }
        finally { Directory.Delete(second); }
        // The hierarchy's own root is left as it was.
        var root = l.V1("cpuset")!.MountPoint;
        Assert.NotEqual(System.IO.Path.GetFullPath(root), System.IO.Path.GetFullPath(parent));
    }

    [SkippableFact]
    public void Limits_join_freeze_stats_kill_and_destroy()
    {
        Requires.Root();
        var l = CgroupLayout.Detect();
        using var scope = new CgroupScope(l);
        var cg = scope.Open("c1", l);
        cg.Create();
        cg.Create();
        foreach (var d in cg.Directories.Values) Assert.True(Directory.Exists(d), d);

        var blk = FirstBlockDevice();
        var (maj, min) = blk is null ? (0L, 0L) : (long.Parse(blk.Split(':')[0]), long.Parse(blk.Split(':')[1]));
        // On cgroup v1 a block I/O weight exists only with the BFQ scheduler: without it a weight is refused with an
        // error that says so (and nothing is applied), and the rest is tested without one.
        var weighted = l.V1("blkio") is null || BfqOnAnyDevice();
        if (!weighted)
        {
            var e = Assert.Throws<CgroupException>(() =>
                cg.Apply(new Resources { BlockIo = new BlockIo { Weight = 300 } }));
            Assert.Contains("has no blkio.weight", e.Message);
            cg.Create();
        }
        cg.Apply(new Resources
        {
            Memory = new Memory { Limit = 64 << 20, Reservation = 32 << 20, Swap = 96 << 20 },
            Cpu = new Cpu { Shares = 512, Quota = 50000, Period = 100000, Cpus = "0", Mems = "0" },
            Pids = new Pids { Limit = 64 },
            BlockIo = new BlockIo
            {
                Weight = weighted ? 300 : null,
                ThrottleReadBpsDevice = blk is null ? null
                    : [new ThrottleDevice { Major = maj, Minor = min, Rate = 1048576 }],
            },
            Devices =
            [
                new DeviceCgroup { Allow = false, Access = "rwm" },
                new DeviceCgroup { Allow = true, Type = "c", Major = 1, Minor = 3, Access = "rwm" },
                new DeviceCgroup { Allow = true, Type = "c", Major = 1, Minor = 5, Access = "rwm" },
                new DeviceCgroup { Allow = true, Type = "c", Major = 136, Access = "rw" },
            ],
        });

        // Read every value back from the kernel's own files.
        if (l.WhereIs("memory") == "v1")
        {
            Assert.Equal((64 << 20).ToString(), ReadIn(cg, l, "memory", "memory.limit_in_bytes"));
            Assert.Equal((32 << 20).ToString(), ReadIn(cg, l, "memory", "memory.soft_limit_in_bytes"));
            Assert.Equal("512", ReadIn(cg, l, "cpu", "cpu.shares"));
            Assert.Equal("50000", ReadIn(cg, l, "cpu", "cpu.cfs_quota_us"));
            Assert.Equal("100000", ReadIn(cg, l, "cpu", "cpu.cfs_period_us"));
            var weightFile = File.Exists(cg.Directories[l.V1("blkio")!.Key] + "/blkio.weight") ? "blkio.weight"
                : "blkio.bfq.weight";
            if (weighted) Assert.Contains("300", ReadIn(cg, l, "blkio", weightFile));
            if (blk is not null) Assert.Equal($"{blk} 1048576",
                ReadIn(cg, l, "blkio", "blkio.throttle.read_bps_device"));
            var devices = ReadIn(cg, l, "devices", "devices.list").Split('\n');
            Assert.Equal(new[] { "c 1:3 rwm", "c 1:5 rwm", "c 136:* rw" }.Order(StringComparer.Ordinal),
                devices.Order(StringComparer.Ordinal));
            Assert.Null(cg.EffectiveDeviceRules!.Exceptions.FirstOrDefault(e => e.Major == 8));
        }
        else
        {
            Assert.Equal((64 << 20).ToString(), ReadIn(cg, l, "memory", "memory.max"));
            Assert.Equal((32 << 20).ToString(), ReadIn(cg, l, "memory", "memory.low"));
            Assert.Equal("20", ReadIn(cg, l, "cpu", "cpu.weight"));
            Assert.Equal("50000 100000", ReadIn(cg, l, "cpu", "cpu.max"));
            Assert.True(cg.DevicesNeedBpf);
        }
        // hugetlb: on v2 on this hybrid host, on v1 or v2 elsewhere.
        if (l.WhereIs("hugetlb") is { } hw && File.Exists("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"))
        {
            cg.Apply(new Resources { HugepageLimits = [new HugepageLimit { PageSize = "2MB", Limit = 8 << 20 }] });
            Assert.Equal((8 << 20).ToString(), ReadIn(cg, l, "hugetlb",
                hw == "v1" ? "hugetlb.2MB.limit_in_bytes" : "hugetlb.2MB.max"));
        }
        Assert.Equal("0", ReadIn(cg, l, "cpuset", "cpuset.cpus"));
        Assert.Equal("0", ReadIn(cg, l, "cpuset", "cpuset.mems"));
        Assert.Equal("64", ReadIn(cg, l, "pids", "pids.max"));

        if (l.WhereIs("memory") == "v1" && File.Exists(cg.Directories["memory"] + "/memory.memsw.limit_in_bytes"))
            Assert.Equal((96 << 20).ToString(), ReadIn(cg, l, "memory", "memory.memsw.limit_in_bytes"));
        else if (l.WhereIs("memory") == "v2" && File.Exists(cg.Directories["v2"] + "/memory.swap.max"))
            Assert.Equal((32 << 20).ToString(), ReadIn(cg, l, "memory", "memory.swap.max"));

        // Updates of the running cgroup: memory+swap grows past the old memsw (memsw first), then shrinks (limit
        // first).
        cg.Apply(new Resources { Pids = new Pids { Limit = 32 },
            Memory = new Memory { Limit = 256 << 20, Swap = 512 << 20 } });
        cg.Apply(new Resources { Memory = new Memory { Limit = 128 << 20, Swap = 160 << 20 } });
        Assert.Equal("32", ReadIn(cg, l, "pids", "pids.max"));
        Assert.Equal((128 << 20).ToString(), ReadIn(cg, l, "memory",
            l.WhereIs("memory") == "v1" ? "memory.limit_in_bytes" : "memory.max"));
        if (l.WhereIs("memory") == "v1" && File.Exists(cg.Directories["memory"] + "/memory.memsw.limit_in_bytes"))
            Assert.Equal((160 << 20).ToString(), ReadIn(cg, l, "memory", "memory.memsw.limit_in_bytes"));

        using var child = Child.Sleep(cg);
        var where = child.Cgroups();
        foreach (var h in l.V1Hierarchies)
            Assert.Equal(scope.Path + "/c1", where[h.Controllers.FirstOrDefault() ?? "name=" + h.Name]);
        if (l.UnifiedMount is not null) Assert.Equal(scope.Path + "/c1", where[""]);
        Assert.Equal([child.Pid], cg.Pids());
        Assert.StartsWith("S", child.WaitState('S'));

        cg.Freeze();
        Assert.True(cg.IsFrozen);
        // v1 freezer: the task sits in the freezer as TASK_FROZEN, shown as D; v2 parks it in a job-control trap (S).
        if (l.WhereIs("freezer") == "v1") Assert.StartsWith("D", child.WaitState('D'));
        else Assert.Contains("frozen 1", File.ReadAllText(cg.Directories["v2"] + "/cgroup.events"));
        cg.Freeze();   // idempotent
        cg.Thaw();
        Assert.False(cg.IsFrozen);
        Assert.StartsWith("S", child.WaitState('S'));

        var s = cg.Stats();
        Assert.True(s.Cpu.Usage.Total > 0, "cpu usage");
        Assert.True(s.Memory.Usage.Usage > 0, "memory usage");
        Assert.Equal((ulong)(128 << 20), s.Memory.Usage.Limit);
        Assert.Equal(1UL, s.Pids.Current);
        Assert.Equal(32UL, s.Pids.Limit);
        Assert.Equal([(ushort)0], s.Cpuset.Cpus!);
        if (l.WhereIs("cpuacct") == "v1") Assert.NotNull(s.Cpu.Usage.PerCpu);
        var json = System.Text.Json.JsonSerializer.Serialize(new CgroupEvent { Id = "c1", Data = s },
            CgroupJson.Default.CgroupEvent);
        Assert.Contains("\"pids\":{\"current\":1,\"limit\":32}", json);

        cg.Kill(Signals.SIGKILL);
        Assert.Equal(128 + Signals.SIGKILL, child.Wait());
        Assert.Empty(cg.Pids());

        cg.Destroy();
        foreach (var d in cg.Directories.Values) Assert.False(Directory.Exists(d), d);
        cg.Destroy();
    }

    [SkippableFact]
    public void Add_process_signal_and_kill_several()
    {
        Requires.Root();
        var l = CgroupLayout.Detect();
        using var scope = new CgroupScope(l);
        var cg = scope.Open("c", l);
        cg.Create();
        cg.Apply(new Resources());
        using var a = Child.Sleep(null);
        using var b = Child.Sleep(cg);
        cg.AddProcess(a.Pid);
        Assert.Equal(new[] { a.Pid, b.Pid }.Order(), cg.Pids());
        foreach (var h in l.V1Hierarchies) Assert.Equal(scope.Path + "/c",
            a.Cgroups()[h.Controllers.FirstOrDefault() ?? "name=" + h.Name]);
        cg.Kill(Signals.SIGTERM);
        Assert.Equal(128 + Signals.SIGTERM, a.Wait());
        Assert.Equal(128 + Signals.SIGTERM, b.Wait());
        Assert.Empty(cg.Pids());
        var e = Assert.Throws<CgroupException>(() => cg.AddProcess(999999));
        Assert.Contains("cgroup.procs = 999999", e.Message);
        cg.Destroy();
    }

    [SkippableFact]
    public void Kill_reaches_a_frozen_cgroup()
    {
        Requires.Root();
        var l = CgroupLayout.Detect();
        using var scope = new CgroupScope(l);
        var cg = scope.Open("fz", l);
        cg.Create();
        using var a = Child.Sleep(cg);
        cg.Freeze();
        cg.Kill(Signals.SIGKILL);
        Assert.Equal(128 + Signals.SIGKILL, a.Wait());
        Assert.Empty(cg.Pids());
        Assert.False(cg.IsFrozen);
        cg.Destroy();
    }

    [SkippableFact]
    public void Bad_values_fail_clearly_and_a_failed_create_and_apply_leaves_nothing()
    {
        Requires.Root();
        var l = CgroupLayout.Detect();
        using var scope = new CgroupScope(l);

        var cg = scope.Open("bad", l);
        cg.Create();
        var e = Assert.Throws<CgroupException>(() => cg.Apply(new Resources { Cpu = new Cpu { Cpus = "99" } }));
        Assert.Contains("cpuset.cpus = 99", e.Message);
        // this kernel says ERANGE for a CPU it lacks
        Assert.True(e.Errno is Errors.ERANGE or Errors.EINVAL, e.Message);
        Assert.Contains(Errors.Name(e.Errno), e.Message);
        Assert.Contains("the parent allows", e.Message);
        foreach (var d in cg.Directories.Values)
        {
            Assert.False(Directory.Exists(d), "left behind: " + d);
            // Create made it too
            Assert.False(Directory.Exists(System.IO.Path.GetDirectoryName(d)), "left behind: the parent of " + d);
        }
        // Validation errors after a Create roll back as well.
        var cg1 = scope.Open("bad1", l);
        cg1.Create();
        Assert.Throws<CgroupException>(() => cg1.Apply(new Resources { Pids = new Pids { Limit = -7 } }));
        foreach (var d in cg1.Directories.Values) Assert.False(Directory.Exists(d), "left behind: " + d);

        var cg2 = scope.Open("bad2", l);
        cg2.Create();
        cg2.Apply(new Resources());
        e = Assert.Throws<CgroupException>(() => cg2.Apply(new Resources { Pids = new Pids { Limit = -5 } }));
        Assert.Contains("pids.limit -5 is invalid", e.Message);
        e = Assert.Throws<CgroupException>(() => cg2.Apply(new Resources { Unified = new() { ["foo.bar"] = "1" } }));
        Assert.Contains(l.UnifiedMount is null ? "pure cgroup v1" : "foo.bar", e.Message);
        if (l.Mode == CgroupMode.Hybrid && l.WhereIs("memory") == "v1")
        {
            e = Assert.Throws<CgroupException>(() =>
                cg2.Apply(new Resources { Unified = new() { ["memory.high"] = "1" } }));
            Assert.Contains("memory controller is on cgroup v1", e.Message);
        }
        if (l.WhereIs("cpu") == "v1")
        {
            e = Assert.Throws<CgroupException>(() => cg2.Apply(new Resources { Cpu = new Cpu { Shares = 1 } }));
            Assert.Contains("clamped it to 2", e.Message);
        }
        // An update that fails keeps the existing cgroup.
        foreach (var d in cg2.Directories.Values) Assert.True(Directory.Exists(d), d);
        cg2.Destroy();
    }

    [SkippableFact]
    public void Memory_limit_below_usage_names_the_file_and_the_fix()
    {
        Requires.Root();
        var l = CgroupLayout.Detect();
        Skip.If(l.WhereIs("memory") != "v1", "v1-only behaviour: v2 memory.max reclaims instead of refusing");
        using var scope = new CgroupScope(l);
        var cg = scope.Open("m", l);
        cg.Create();
        // swappiness 0: memcg reclaim may not swap anonymous memory out, so the usage cannot shrink below the limit.
        cg.Apply(new Resources { Memory = new Memory { Limit = 64 << 20, DisableOomKiller = true, Swappiness = 0 } });
        Assert.Equal("0", File.ReadAllText(cg.Directories["memory"] + "/memory.swappiness").Trim());
        Assert.Contains("oom_kill_disable 1", File.ReadAllText(cg.Directories["memory"] + "/memory.oom_control"));
        // A shell that holds ~8 MiB of anonymous memory in a variable, then waits.
        using var child = new Child(cg, ["/bin/sh", "-c",
            "x=$(head -c 8000000 /dev/zero | tr '\\0' a); echo ready > /dev/null; exec sleep 30"]);
        for (var i = 0; i < 200 && cg.Stats().Memory.Usage.Usage < (4 << 20); i++) Thread.Sleep(10);
        var e = Assert.Throws<CgroupException>(() => cg.Apply(new Resources { Memory = new Memory { Limit = 4096 } }));
        Assert.Contains("memory.limit_in_bytes = 4096", e.Message);
        Assert.Contains("EBUSY", e.Message);
        Assert.Contains("below current usage", e.Message);
        cg.Kill(Signals.SIGKILL);
        child.Wait();
        cg.Destroy();
    }
}
