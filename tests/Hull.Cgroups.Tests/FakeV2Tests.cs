using Hull.Cgroups;
using Hull.Linux;
using Hull.Oci;
using Xunit;

namespace Hull.Cgroups.Tests;

/// <summary>Every cgroup v2 controller's file writes and value conversions, against a fake tree (this host's real
/// cgroup2 mount has only hugetlb).</summary>
public class FakeV2Tests
{
    static (FakeTree T, ICgroup Cg) Made(string path = "/hull/c1")
    {
        var t = new FakeTree();
        var cg = t.Open(path);
        cg.Create();
        t.Populate(path);
        cg.Apply(new Resources());   // the engine's first apply: later ones are updates of an existing cgroup
        t.Writes.Clear();
        return (t, cg);
    }

    [Fact]
    public void Create_makes_the_path_and_enables_controllers_in_the_parents()
    {
        using var t = new FakeTree();
        var cg = t.Open("/hull/c1");
        cg.Create();
        Assert.True(t.Exists("hull/c1"));
        Assert.Equal("+cpuset +cpu +io +memory +hugetlb +pids +rdma", t.Read("cgroup.subtree_control"));
        cg.Create();   // idempotent
        Assert.Equal(t.Path("hull/c1"), cg.Directories["v2"]);
        Assert.Equal("/hull/c1", cg.Path);
    }

    [Fact]
    public void Create_does_not_reenable_controllers_already_enabled()
    {
        using var t = new FakeTree();
        t.Set("cgroup.subtree_control", "cpu memory\n");
        var cg = t.Open("/a");
        cg.Create();
        Assert.Equal("+cpuset +io +hugetlb +pids +rdma", t.Read("cgroup.subtree_control"));
    }

    [Fact]
    public void Memory_limit_swap_and_reservation_are_converted()
    {
        var (t, cg) = Made();
        using var _ = t;
        cg.Apply(new Resources { Memory = new Memory { Limit = 256 << 20, Swap = 512 << 20, Reservation = 128 << 20,
            Kernel = 1 << 20, Swappiness = 10, DisableOomKiller = true } });
        Assert.Contains(("hull/c1/memory.max", (256 << 20).ToString()), t.Writes);
        // swap only = (memory+swap) − memory
        Assert.Contains(("hull/c1/memory.swap.max", (256 << 20).ToString()), t.Writes);
        Assert.Contains(("hull/c1/memory.low", (128 << 20).ToString()), t.Writes);
        Assert.Contains(cg.Warnings, w => w.Contains("memory.kernel"));
        Assert.Contains(cg.Warnings, w => w.Contains("swappiness"));
        Assert.Contains(cg.Warnings, w => w.Contains("disableOOMKiller"));

        t.Writes.Clear();
        cg.Apply(new Resources { Memory = new Memory { Limit = -1 } });
        Assert.Equal([("hull/c1/memory.swap.max", "max"), ("hull/c1/memory.max", "max")], t.Writes);
        t.Writes.Clear();
        cg.Apply(new Resources { Memory = new Memory { Limit = 1 << 30, Swap = -1 } });
        Assert.Equal([("hull/c1/memory.swap.max", "max"), ("hull/c1/memory.max", (1 << 30).ToString())], t.Writes);
    }

    [Fact]
    public void Swap_below_the_limit_or_without_a_limit_is_rejected()
    {
        var (t, cg) = Made();
        using var _ = t;
        var e = Assert.Throws<CgroupException>(() =>
            cg.Apply(new Resources { Memory = new Memory { Limit = 2 << 20, Swap = 1 << 20 } }));
        Assert.Contains("≥ the limit", e.Message);
        e = Assert.Throws<CgroupException>(() => cg.Apply(new Resources { Memory = new Memory { Swap = 1 << 20 } }));
        Assert.Contains("needs memory.limit", e.Message);
    }

    [Fact]
    public void Cpu_shares_quota_period_burst_idle_and_cpuset()
    {
        var (t, cg) = Made();
        using var _ = t;
        t.Set("hull/c1/cpu.max", "max 100000\n");
        cg.Apply(new Resources { Cpu = new Cpu { Shares = 1024, Quota = 50000, Period = 100000, Burst = 1000, Idle = 1,
            Cpus = "0-1", Mems = "0" } });
        Assert.Equal(
        [
            ("hull/c1/cpu.weight", "39"), ("hull/c1/cpu.max", "50000 100000"), ("hull/c1/cpu.max.burst", "1000"),
            ("hull/c1/cpu.idle", "1"), ("hull/c1/cpuset.cpus", "0-1"), ("hull/c1/cpuset.mems", "0"),
        ], t.Writes);

        // An update of the period alone keeps the quota; quota -1 means "max".
        t.Set("hull/c1/cpu.max", "50000 100000\n");
        t.Writes.Clear();
        cg.Apply(new Resources { Cpu = new Cpu { Period = 200000 } });
        Assert.Equal([("hull/c1/cpu.max", "50000 200000")], t.Writes);
        t.Writes.Clear();
        cg.Apply(new Resources { Cpu = new Cpu { Quota = -1 } });
        Assert.Equal([("hull/c1/cpu.max", "max 200000")], t.Writes);
        // 0 means "not set" for quota and for byte limits (as in runc): nothing is written.
        t.Writes.Clear();
        cg.Apply(new Resources { Cpu = new Cpu { Quota = 0 }, Memory = new Memory { Limit = 0, Reservation = 0 } });
        Assert.Empty(t.Writes);
    }

    [Theory]
    [InlineData(2UL, 1UL)]
    [InlineData(1024UL, 39UL)]
    [InlineData(262144UL, 10000UL)]
    [InlineData(512UL, 20UL)]
    public void Shares_map_onto_weight_like_runc(ulong shares, ulong weight) =>
        Assert.Equal(weight, V2.V2Cpu.SharesToWeight(shares));

    [Fact]
    public void Realtime_is_rejected_on_v2()
    {
        var (t, cg) = Made();
        using var _ = t;
        var e = Assert.Throws<CgroupException>(() =>
            cg.Apply(new Resources { Cpu = new Cpu { RealtimeRuntime = 950000 } }));
        Assert.Contains("no realtime", e.Message);
    }

    [Fact]
    public void Block_io_weight_and_throttles()
    {
        var (t, cg) = Made();
        using var _ = t;
        cg.Apply(new Resources
        {
            BlockIo = new BlockIo
            {
                Weight = 500, LeafWeight = 300,
                WeightDevice = [new WeightDevice { Major = 8, Minor = 0, Weight = 10 }],
                ThrottleReadBpsDevice = [new ThrottleDevice { Major = 8, Minor = 0, Rate = 1048576 }],
                ThrottleWriteBpsDevice = [new ThrottleDevice { Major = 8, Minor = 0, Rate = 0 }],
                ThrottleReadIopsDevice = [new ThrottleDevice { Major = 8, Minor = 16, Rate = 100 }],
                ThrottleWriteIopsDevice = [new ThrottleDevice { Major = 8, Minor = 16, Rate = 200 }],
            },
        });
        Assert.Equal(
        [
            ("hull/c1/io.weight", "default 4950"), ("hull/c1/io.weight", "8:0 1"),
            ("hull/c1/io.max", "8:0 rbps=1048576"),
            ("hull/c1/io.max", "8:0 wbps=max"), ("hull/c1/io.max", "8:16 riops=100"),
            ("hull/c1/io.max", "8:16 wiops=200"),
        ], t.Writes);
        Assert.Contains(cg.Warnings, w => w.Contains("leafWeight"));
    }

    [Fact]
    public void Block_io_weight_goes_to_bfq_unconverted_when_bfq_is_there()
    {
        var (t, cg) = Made();
        using var _ = t;
        t.Populate("hull/c1", ["io.bfq.weight"]);
        cg.Apply(new Resources { BlockIo = new BlockIo { Weight = 500,
            WeightDevice = [new WeightDevice { Major = 8, Minor = 0, Weight = 100 }] } });
        Assert.Equal([("hull/c1/io.bfq.weight", "500"), ("hull/c1/io.bfq.weight", "8:0 100")], t.Writes);
    }

    [Fact]
    public void Pids_hugetlb_rdma_and_unified()
    {
        var (t, cg) = Made();
        using var _ = t;
        cg.Apply(new Resources
        {
            Pids = new Pids { Limit = 100 },
            HugepageLimits = [new HugepageLimit { PageSize = "2MB", Limit = 4 << 21 },
                new HugepageLimit { PageSize = "1GB", Limit = 0 }],
            Rdma = new() { ["mlx5_0"] = new Rdma { HcaHandles = 3 } },
            Unified = new() { ["memory.high"] = "100000000" },
        });
        Assert.Equal(
        [
            ("hull/c1/pids.max", "100"), ("hull/c1/hugetlb.2MB.max", (4 << 21).ToString()),
            ("hull/c1/hugetlb.2MB.rsvd.max", (4 << 21).ToString()),
            ("hull/c1/hugetlb.1GB.max", "0"), ("hull/c1/rdma.max", "mlx5_0 hca_handle=3 hca_object=max"),
            ("hull/c1/memory.high", "100000000"),
        ], t.Writes);
        t.Writes.Clear();
        cg.Apply(new Resources { Pids = new Pids { Limit = -1 } });
        cg.Apply(new Resources { Pids = new Pids { Limit = 0 } });
        Assert.Equal([("hull/c1/pids.max", "max"), ("hull/c1/pids.max", "max")], t.Writes);
    }

    [Fact]
    public void Bad_values_are_rejected_before_anything_is_written()
    {
        var (t, cg) = Made();
        using var _ = t;
        Assert.Contains("pids.limit -5", Assert.Throws<CgroupException>(() =>
            cg.Apply(new Resources { Pids = new Pids { Limit = -5 } })).Message);
        Assert.Contains("\"3MB\" is not supported here", Assert.Throws<CgroupException>(() =>
            cg.Apply(new Resources { HugepageLimits = [new HugepageLimit { PageSize = "3MB", Limit = 1 }] })).Message);
        Assert.Contains("2MB, 1GB", Assert.Throws<CgroupException>(() =>
            cg.Apply(new Resources { HugepageLimits =
                [new HugepageLimit { PageSize = "3MB", Limit = 1 }] })).Message.Replace("1GB, 2MB", "2MB, 1GB"));
        Assert.Contains("not a cgroup v2 controller", Assert.Throws<CgroupException>(() =>
            cg.Apply(new Resources { Unified = new() { ["foo.bar"] = "1" } })).Message);
        Assert.Contains("managed by the runtime", Assert.Throws<CgroupException>(() =>
            cg.Apply(new Resources { Unified = new() { ["cgroup.procs"] = "1" } })).Message);
        Assert.Contains("has no such file", Assert.Throws<CgroupException>(() =>
            cg.Apply(new Resources { Unified = new() { ["memory.nonexistent"] = "1" } })).Message);
        Assert.Contains("0 to 100", Assert.Throws<CgroupException>(() =>
            cg.Apply(new Resources { Memory = new Memory { Swappiness = 101 } })).Message);
        Assert.Empty(t.Writes);
    }

    [Fact]
    public void Missing_controller_files_name_the_controller()
    {
        var (t, cg) = Made();
        using var _ = t;
        File.Delete(t.Path("hull/c1/memory.max"));
        t.Set("hull/c1/cgroup.controllers", "cpu pids\n");
        var e = Assert.Throws<CgroupException>(() =>
            cg.Apply(new Resources { Memory = new Memory { Limit = 1 << 20 } }));
        Assert.Contains("memory.max = 1048576", e.Message);
        Assert.Contains("ENOENT", e.Message);
        Assert.Contains("memory controller is not enabled", e.Message);
        Assert.Equal(Hull.Linux.Errors.ENOENT, e.Errno);
    }

    [Fact]
    public void Devices_on_v2_need_a_real_cgroup2_directory_for_the_bpf_program()
    {
        // The program is attached with bpf(2), which a directory of plain files cannot take: a clear error, no write.
        // (RealDeviceFilterTests attach real programs.)
        var (t, cg) = Made();
        using var _ = t;
        Assert.True(cg.DevicesNeedBpf);
        var e = Assert.Throws<CgroupException>(() =>
            cg.Apply(new Resources { Devices = [new DeviceCgroup { Allow = false, Access = "rwm" },
            new DeviceCgroup { Allow = true, Type = "c", Major = 1, Minor = 3, Access = "rwm" }] }));
        Assert.Contains(cg.Directories["v2"], e.Message);
        Assert.Contains(Libc.geteuid() == 0 ? "not on a cgroup2 mount" : "CAP_SYS_ADMIN", e.Message);
        Assert.Empty(t.Writes);
    }

    [Fact]
    public void Network_settings_warn_on_v2()
    {
        var (t, cg) = Made();
        using var _ = t;
        cg.Apply(new Resources { Network = new Network { ClassId = 0x100001,
            Priorities = [new InterfacePriority { Name = "eth0", Priority = 5 }] } });
        Assert.Equal(2, cg.Warnings.Count(w => w.Contains("network")));
    }

    [Fact]
    public void Failed_apply_after_create_removes_what_create_made()
    {
        using var t = new FakeTree();
        var first = t.Open("/hull/c2");
        first.Create();
        t.Populate("hull/c2");
        Assert.Throws<CgroupException>(() => first.Apply(new Resources { Unified = new() { ["memory.nope"] = "1" } }));
        Assert.False(t.Exists("hull"));   // both levels were made by that Create

        Directory.CreateDirectory(t.Path("hull"));
        var cg = t.Open("/hull/c2");
        cg.Create();
        t.Populate("hull/c2", except: "pids.max");
        t.Set("hull/c2/cgroup.controllers", "cpu\n");
        Assert.Throws<CgroupException>(() => cg.Apply(
            new Resources { Cpu = new Cpu { Shares = 100 }, Pids = new Pids { Limit = 10 } }));
        Assert.False(t.Exists("hull/c2"));
        Assert.True(t.Exists("hull"));
    }

    [Fact]
    public void Stats_read_v2_files()
    {
        var (t, cg) = Made();
        using var _ = t;
        t.Set("hull/c1/cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled " +
            "2\nthrottled_usec 30\n");
        t.Set("hull/c1/memory.current", "4096\n");
        t.Set("hull/c1/memory.peak", "8192\n");
        t.Set("hull/c1/memory.max", "max\n");
        t.Set("hull/c1/memory.stat", "anon 100\nfile 200\n");
        t.Set("hull/c1/memory.events", "low 0\nhigh 0\nmax 3\noom 0\n");
        t.Set("hull/c1/memory.swap.current", "10\n");
        t.Set("hull/c1/memory.swap.max", "max\n");
        t.Set("hull/c1/pids.current", "4\n");
        t.Set("hull/c1/pids.max", "100\n");
        t.Set("hull/c1/io.stat", "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n");
        t.Set("hull/c1/hugetlb.2MB.current", "2097152\n");
        t.Set("hull/c1/hugetlb.2MB.events", "max 1\n");
        t.Set("hull/c1/cpuset.cpus.effective", "0-1,3\n");
        var s = cg.Stats();
        Assert.Equal(1_500_000UL, s.Cpu.Usage.Total);
        Assert.Equal(1_000_000UL, s.Cpu.Usage.User);
        Assert.Equal(500_000UL, s.Cpu.Usage.Kernel);
        Assert.Equal(2UL, s.Cpu.Throttling.ThrottledPeriods);
        Assert.Equal(30_000UL, s.Cpu.Throttling.ThrottledTime);
        Assert.Equal(4096UL, s.Memory.Usage.Usage);
        Assert.Equal(8192UL, s.Memory.Usage.Max);
        Assert.Equal(ulong.MaxValue, s.Memory.Usage.Limit);
        Assert.Equal(3UL, s.Memory.Usage.Failcnt);
        Assert.Equal(200UL, s.Memory.Cache);
        Assert.Equal(4106UL, s.Memory.Swap.Usage);
        Assert.Equal(100UL, s.Memory.Raw!["anon"]);
        Assert.Equal(4UL, s.Pids.Current);
        Assert.Equal(100UL, s.Pids.Limit);
        Assert.Contains(s.Blkio.IoServiceBytesRecursive!, e => e is { Major: 8, Minor: 0, Op: "Write", Value: 8192 });
        Assert.Contains(s.Blkio.IoServicedRecursive!, e => e is { Op: "Read", Value: 1 });
        Assert.Equal(2097152UL, s.Hugetlb["2MB"].Usage);
        Assert.Equal(1UL, s.Hugetlb["2MB"].Failcnt);
        Assert.Equal([0, 1, 3], s.Cpuset.Cpus!.Select(x => (int)x));

        var json = System.Text.Json.JsonSerializer.Serialize(new CgroupEvent { Id = "c1", Data = s },
            CgroupJson.Default.CgroupEvent);
        Assert.Contains("\"type\":\"stats\"", json);
        Assert.Contains("\"ioServiceBytesRecursive\"", json);
        Assert.Contains("\"throttledPeriods\":2", json);
        Assert.Contains("\"2MB\":{\"usage\":2097152,\"failcnt\":1}", json);
    }

    [Fact]
    public void Destroy_removes_the_cgroup_and_its_children_and_is_idempotent()
    {
        var (t, cg) = Made("/hull/c3");
        using var _ = t;
        Directory.CreateDirectory(t.Path("hull/c3/inner/deeper"));
        cg.Destroy();
        Assert.False(t.Exists("hull/c3"));
        cg.Destroy();
    }

    [Fact]
    public void Prepare_join_gives_the_v2_directory_and_refuses_a_missing_cgroup()
    {
        using var t = new FakeTree();
        var cg = t.Open("/hull/j");
        var e = Assert.Throws<CgroupException>(() => cg.PrepareJoin());
        Assert.Contains("call Create() first", e.Message);
        cg.Create();
        using var join = cg.PrepareJoin();
        Assert.NotNull(join.CgroupDir);
        Assert.Empty(join.TaskFiles);
        var req = new Hull.Linux.SpawnRequest { Path = "/bin/true", Argv = ["true"], Env = [] };
        join.AddTo(req);
        Assert.Same(join.CgroupDir, req.CgroupDir);
    }

    [Fact]
    public void Unified_is_rejected_on_pure_v1()
    {
        using var t = new FakeTree();
        Directory.CreateDirectory(t.Path("memory"));
        var cg = Cgroup.Open("/x", "x", CgroupLayoutInfo.ForV1(new Dictionary<string,
            string> { ["memory"] = t.Path("memory") }));
        var e = Assert.Throws<CgroupException>(() =>
            cg.Apply(new Resources { Unified = new() { ["memory.high"] = "1" } }));
        Assert.Contains("pure cgroup v1", e.Message);
    }
}
