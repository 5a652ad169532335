using System.Text;
using System.Text.Json;
using Hull.Oci;
using Xunit;

namespace Hull.Containers.Tests;

/// <summary>The direct config.json reader gives exactly what the serializer gives, or gives up (no root
/// needed).</summary>
public class SpecReaderTests
{
    static string Json(Spec s) => JsonSerializer.Serialize(s, OciJson.Default.Spec);

    static void Same(string json)
    {
        var bytes = Encoding.UTF8.GetBytes(json);
        var fast = SpecReader.TryRead(bytes);
        Assert.NotNull(fast);
        var slow = JsonSerializer.Deserialize(bytes, OciJson.Default.Spec)!;
        Assert.Equal(Json(slow), Json(fast));
    }

    [Fact]
    public void Default_spec_reads_the_same()
    {
        var spec = DefaultSpec.Create(["sh"], terminal: true);
        Same(Json(spec));
        DefaultSpec.MakeRootless(spec, 1000);
        Same(Json(spec));
    }

    [Fact]
    public void Every_field_reads_the_same()
    {
        var spec = JsonSerializer.Deserialize(JsonSerializer.Serialize(PlanCodecTests.FullSpec(), OciJson.Default.Spec),
            OciJson.Default.Spec)!;
        spec.Linux!.Resources = new Resources
        {
            Devices = [new DeviceCgroup { Allow = false, Access = "rwm" },
                new DeviceCgroup { Allow = true, Type = "c", Major = 1, Minor = null, Access = "r" }],
            Memory = new Memory { Limit = 1 << 30, Reservation = -1, Swap = 2, Kernel = 3, KernelTcp = 4,
                Swappiness = 60, DisableOomKiller = true, UseHierarchy = false, CheckBeforeUpdate = true },
            Cpu = new Cpu { Shares = 1024, Quota = -1, Burst = 5, Period = 100000, RealtimeRuntime = 6,
                RealtimePeriod = 7, Cpus = "0-1", Mems = "0", Idle = 1 },
            Pids = new Pids { Limit = 100 },
            BlockIo = new BlockIo
            {
                Weight = 500, LeafWeight = 300, WeightDevice =
                    [new WeightDevice { Major = 8, Minor = 0, Weight = 10, LeafWeight = null }],
                ThrottleReadBpsDevice = [new ThrottleDevice { Major = 8, Minor = 0, Rate = ulong.MaxValue }],
                ThrottleWriteBpsDevice = [],
                ThrottleReadIopsDevice = [new ThrottleDevice { Major = 8, Minor = 16, Rate = 3 }],
                ThrottleWriteIopsDevice = null,
            },
            HugepageLimits = [new HugepageLimit { PageSize = "2MB", Limit = 4096 }],
            Network = new Network { ClassId = 9, Priorities = [new InterfacePriority { Name = "eth0", Priority = 3 }] },
            Rdma = new() { ["mlx"] = new Rdma { HcaHandles = 1, HcaObjects = null } },
            Unified = new() { ["memory.high"] = "max" },
        };
        spec.Linux.IntelRdt = new IntelRdt { ClosId = "c", L3CacheSchema = "L3:0=f", MemBwSchema = null };
        Same(Json(spec));
    }

    [Fact]
    public void Serializer_rules_hold_comments_trailing_commas_unknown_and_duplicate_properties_nulls_and_escapes()
    {
        Same("""
            // a comment
            { "ociVersion": "1.0.2", "future": {"x": [1, {"y": null}]}, /* more */ "hostname": "a", "hostname": "b\u00e9",
              "process": { "args": ["sh", null,], "user": {"uid": 0, "gid": 0, "extra": true}, "cwd": "/", "oomScoreAdj": null },
              "mounts": [null, {"destination": "/x", "options": []}],
              "annotations": {"k": "v", "k": "w", "n": null},
              "linux": null,
            }
            """);
        Same("{}");
        Same("""{"process": {"user": null, "args": null}}""");
    }

    [Theory]
    [InlineData("""{"process": {"args": 5}}""")]
    [InlineData("""{"process": {"user": {"uid": -1}}}""")]
    [InlineData("""{"process": {"user": {"uid": 1.5}}}""")]
    [InlineData("""{"process": {"user": {"uid": "0"}}}""")]
    [InlineData("""{"process": {"terminal": null}}""")]
    [InlineData("""{"linux": {"resources": {"blockIO": {"weight": 70000}}}}""")]
    [InlineData("""{"hostname": "a"} {}""")]
    [InlineData("""{"hostname": "a" """)]
    [InlineData("[]")]
    [InlineData("")]
    public void Input_the_serializer_rejects_is_left_to_it(string json)
    {
        Assert.Null(SpecReader.TryRead(Encoding.UTF8.GetBytes(json)));
        Assert.ThrowsAny<Exception>(() => SpecLoader.Parse(json, "config.json"));
    }

    [Fact]
    public void Null_root_is_left_to_the_serializer()
    {
        Assert.Null(SpecReader.TryRead("null"u8));
        var e = Assert.Throws<InvalidSpecException>(() => SpecLoader.Parse("null", "config.json"));
        Assert.Contains("empty (null)", e.Message);
    }
}
