using Hull.Cgroups;
using Hull.Oci;
using Xunit;

namespace Hull.Cgroups.Tests;

/// <summary>The v1 controllers this host does not mount (net_cls, net_prio, rdma, hugetlb on v1) and the write
/// orders that depend on current values, against a fake v1 tree.</summary>
public class FakeV1Tests
{
    sealed class V1Tree : IDisposable
    {
        public readonly FakeTree T = new();
        public readonly ICgroup Cg;
        static readonly string[] Hierarchies = ["memory", "cpu,cpuacct", "cpuset", "blkio", "devices", "net_cls",
            "net_prio", "rdma", "hugetlb", "freezer", "pids"];

        public V1Tree()
        {
            var map = new Dictionary<string, string>();
            foreach (var h in Hierarchies)
            {
                Directory.CreateDirectory(T.Path(h));
                map[h] = T.Path(h);
            }
            File.WriteAllText(T.Path("cpuset/cpuset.cpus"), "0-3\n");
            File.WriteAllText(T.Path("cpuset/cpuset.mems"), "0\n");
            var layout = CgroupLayoutInfo.ForV1(map);
            Cg = Cgroup.Open("/hull/c", "c", layout);
            ((CgroupManager)Cg).OnWrite = (p, v) => T.Writes.Add((System.IO.Path.GetRelativePath(T.Root, p), v));
        }

        public void Files(string hierarchy, params string[] files)
        {
            foreach (var f in files) File.WriteAllText(T.Path($"{hierarchy}/hull/c/{f}"), "");
        }

        public void Dispose() => T.Dispose();
    }

    [Fact]
    public void Create_copies_the_parent_cpuset_into_new_levels()
    {
        using var v = new V1Tree();
        // A fake tree has no interface files until "the kernel" makes them: make them empty as v1 does.
        Directory.CreateDirectory(v.T.Path("cpuset/hull"));
        File.WriteAllText(v.T.Path("cpuset/hull/cpuset.cpus"), "");
        File.WriteAllText(v.T.Path("cpuset/hull/cpuset.mems"), "\n");
        v.Cg.Create();
        Assert.Equal("0-3", v.T.Read("cpuset/hull/cpuset.cpus"));
        Assert.Equal("0", v.T.Read("cpuset/hull/cpuset.mems"));
        Assert.Equal(11, v.Cg.Directories.Count);
        Assert.False(v.Cg.DevicesNeedBpf);
    }

    [Fact]
    public void A_failed_create_removes_what_it_made()
    {
        using var t = new FakeTree();
        Directory.CreateDirectory(t.Path("memory"));
        var layout = CgroupLayoutInfo.ForV1(new Dictionary<string,
            string> { ["memory"] = t.Path("memory"), ["pids"] = t.Path("gone") });
        var cg = Cgroup.Open("/hull/c", "c", layout);
        var e = Assert.Throws<CgroupException>(() => cg.Create());
        Assert.Contains("is not there", e.Message);
        Assert.False(t.Exists("memory/hull"));
    }

    [Fact]
    public void Network_rdma_hugetlb_blkio_and_realtime()
    {
        using var v = new V1Tree();
        v.Cg.Create();
        v.Files("hugetlb", "hugetlb.2MB.limit_in_bytes", "hugetlb.1GB.limit_in_bytes");
        v.Files("blkio", "blkio.bfq.weight", "blkio.bfq.weight_device", "blkio.throttle.write_iops_device");
        v.Files("cpu,cpuacct", "cpu.rt_period_us", "cpu.rt_runtime_us");
        v.Files("net_cls", "net_cls.classid");
        v.Files("net_prio", "net_prio.ifpriomap");
        v.Files("rdma", "rdma.max");
        v.T.Writes.Clear();
        v.Cg.Apply(new Resources
        {
            Network = new Network { ClassId = 0x100001,
                Priorities = [new InterfacePriority { Name = "eth0", Priority = 5 },
                new InterfacePriority { Name = "lo", Priority = 1 }] },
            Rdma = new() { ["mlx4_0"] = new Rdma { HcaHandles = 2, HcaObjects = 2000 } },
            HugepageLimits = [new HugepageLimit { PageSize = "2MB", Limit = 1 << 22 }],
            BlockIo = new BlockIo
            {
                Weight = 200, LeafWeight = 100,
                WeightDevice = [new WeightDevice { Major = 8, Minor = 0, Weight = 300 }],
                ThrottleWriteIopsDevice = [new ThrottleDevice { Major = 8, Minor = 0, Rate = 50 }],
            },
            Cpu = new Cpu { RealtimePeriod = 1000000, RealtimeRuntime = 950000 },
        });
        Assert.Equal(
        [
            ("cpu,cpuacct/hull/c/cpu.rt_period_us", "1000000"), ("cpu,cpuacct/hull/c/cpu.rt_runtime_us", "950000"),
            ("blkio/hull/c/blkio.bfq.weight", "200"), ("blkio/hull/c/blkio.bfq.weight_device", "8:0 300"),
            ("blkio/hull/c/blkio.throttle.write_iops_device", "8:0 50"),
            ("hugetlb/hull/c/hugetlb.2MB.limit_in_bytes", (1 << 22).ToString()),
            ("net_cls/hull/c/net_cls.classid", "1048577"),
            ("net_prio/hull/c/net_prio.ifpriomap", "eth0 5"), ("net_prio/hull/c/net_prio.ifpriomap", "lo 1"),
            ("rdma/hull/c/rdma.max", "mlx4_0 hca_handle=2 hca_object=2000"),
        ], v.T.Writes);
        Assert.Contains(v.Cg.Warnings, w => w.Contains("leafWeight"));
    }

    [Fact]
    public void Memory_and_swap_are_written_in_the_order_the_kernel_accepts()
    {
        using var v = new V1Tree();
        v.Cg.Create();
        v.Files("memory", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.soft_limit_in_bytes",
            "memory.swappiness", "memory.oom_control");
        v.Cg.Apply(new Resources());
        v.T.Set("memory/hull/c/memory.memsw.limit_in_bytes", "9223372036854771712\n");
        v.T.Writes.Clear();
        // Shrinking from unlimited: the limit first, then memory+swap.
        v.Cg.Apply(new Resources { Memory = new Memory { Limit = 100, Swap = 200, Swappiness = 0,
            DisableOomKiller = true } });
        Assert.Equal(
        [
            ("memory/hull/c/memory.limit_in_bytes", "100"), ("memory/hull/c/memory.memsw.limit_in_bytes", "200"),
            ("memory/hull/c/memory.swappiness", "0"), ("memory/hull/c/memory.oom_control", "1"),
        ], v.T.Writes);
        // Growing: memory+swap first.
        v.T.Writes.Clear();
        v.Cg.Apply(new Resources { Memory = new Memory { Limit = 300, Swap = 600 } });
        Assert.Equal([("memory/hull/c/memory.memsw.limit_in_bytes", "600"),
            ("memory/hull/c/memory.limit_in_bytes", "300")], v.T.Writes);
        v.T.Writes.Clear();
        v.Cg.Apply(new Resources { Memory = new Memory { Limit = -1, Swap = -1 } });
        Assert.Equal([("memory/hull/c/memory.memsw.limit_in_bytes", "-1"),
            ("memory/hull/c/memory.limit_in_bytes", "-1")], v.T.Writes);
    }

    [Fact]
    public void Swap_without_swap_accounting_is_a_clear_error()
    {
        using var v = new V1Tree();
        v.Cg.Create();
        v.Files("memory", "memory.limit_in_bytes");
        v.Cg.Apply(new Resources());
        var e = Assert.Throws<CgroupException>(() =>
            v.Cg.Apply(new Resources { Memory = new Memory { Limit = 100, Swap = 200 } }));
        Assert.Contains("swapaccount=1", e.Message);
        v.Cg.Apply(new Resources { Memory = new Memory { Limit = 100, Swap = -1 } });   // nothing to enforce: fine
    }

    [Fact]
    public void Devices_reset_then_exceptions_on_a_new_cgroup()
    {
        using var v = new V1Tree();
        v.Cg.Create();
        v.Files("devices", "devices.allow", "devices.deny");
        v.T.Writes.Clear();
        v.Cg.Apply(new Resources
        {
            Devices = [new DeviceCgroup { Allow = false },
                new DeviceCgroup { Allow = true, Type = "c", Major = 1, Minor = 3, Access = "rw" },
                new DeviceCgroup { Allow = true, Type = "b", Access = "m" }],
        });
        Assert.Equal([("devices/hull/c/devices.deny", "a"), ("devices/hull/c/devices.allow", "c 1:3 rw"),
            ("devices/hull/c/devices.allow", "b *:* m")], v.T.Writes);
    }

    [Fact]
    public void Devices_update_of_an_allowlist_writes_only_the_difference()
    {
        using var v = new V1Tree();
        v.Cg.Create();
        v.Files("devices", "devices.allow", "devices.deny");
        v.T.Set("devices/hull/c/devices.list", "c 1:3 rwm\nc 1:5 rwm\n");
        v.T.Writes.Clear();
        var e = Assert.Throws<CgroupException>(() => v.Cg.Apply(new Resources
        {
            Devices = [new DeviceCgroup { Allow = false },
                new DeviceCgroup { Allow = true, Type = "c", Major = 1, Minor = 3, Access = "rw" },
                new DeviceCgroup { Allow = true, Type = "c", Major = 1, Minor = 9 }],
        }));
        // The fake devices.list does not change, so the read-back check fails — after the right writes.
        Assert.Contains("devices.list does not show", e.Message);
        Assert.Equal(
        [
            ("devices/hull/c/devices.deny", "c 1:3 m"), ("devices/hull/c/devices.deny", "c 1:5 rwm"),
            ("devices/hull/c/devices.allow", "c 1:9 rwm"),
        ], v.T.Writes);
    }
}
