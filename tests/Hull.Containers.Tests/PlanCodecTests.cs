using System.Text.Json;
using Hull.Oci;
using Hull.TestSupport;
using Xunit;

namespace Hull.Containers.Tests;

/// <summary>The binary runtime ⇄ init messages, state.json and the seccomp program cache (no root needed).</summary>
public class PlanCodecTests
{
    internal static Spec FullSpec() => new()
    {
        OciVersion = "1.2.0", Hostname = "h", Domainname = "d.example",
        Root = new Root { Path = "rootfs", Readonly = true },
        Annotations = new() { ["a"] = "1", ["ü"] = "✓" },
        Process = new Hull.Oci.Process
        {
            Terminal = true, ConsoleSize = new Box { Height = 24, Width = 80 },
            User = new User { Uid = 1000, Gid = 1001, Umask = 18, AdditionalGids = [5, 7], Username = "u" },
            Args = ["sh", "-c", "echo \"ünïcödé\""], CommandLine = "cmd", Env = ["PATH=/bin", "EMPTY="], Cwd = "/work",
            Capabilities = new Hull.Oci.Capabilities { Bounding = ["CAP_KILL"], Effective = ["CAP_KILL"],
                Inheritable = [], Permitted = ["CAP_KILL", "CAP_CHOWN"], Ambient = null },
            Rlimits = [new Rlimit { Type = "RLIMIT_NOFILE", Hard = ulong.MaxValue, Soft = 1024 }],
            NoNewPrivileges = true, ApparmorProfile = "p", OomScoreAdj = -17, SelinuxLabel = "l",
            Scheduler = new Scheduler { Policy = "SCHED_FIFO", Nice = -5, Priority = 10,
                Flags = ["SCHED_FLAG_RESET_ON_FORK"], Runtime = 1, Deadline = 2, Period = 3 },
            IoPriority = new IoPriority { Class = "IOPRIO_CLASS_BE", Priority = 4 },
            ExecCpuAffinity = new CpuAffinity { Initial = "0", Final = "0-1" },
        },
        Mounts =
        [
            new Mount { Destination = "/proc", Type = "proc", Source = "proc" },
            new Mount { Destination = "/data", Type = "bind", Source = "/srv", Options = ["rbind", "ro"],
                UidMappings = [new IdMapping { ContainerId = 0, HostId = 100000, Size = 65536 }], GidMappings = [] },
        ],
        Hooks = new Hooks
        {
            CreateContainer = [new Hook { Path = "/bin/true", Args = ["true", "x"], Env = ["A=b"], Timeout = 5 }],
            StartContainer = [new Hook { Path = "/bin/false" }],
            Poststop = [],
        },
        Linux = new Hull.Oci.Linux
        {
            Namespaces = [new Namespace { Type = "pid" }, new Namespace { Type = "network", Path = "/proc/1/ns/net" }],
            UidMappings = [new IdMapping { ContainerId = 0, HostId = 1000, Size = 1 }],
            GidMappings = [new IdMapping { ContainerId = 0, HostId = 1000, Size = 1 }],
            TimeOffsets = new() { ["monotonic"] = new TimeOffset { Secs = -86400, Nanosecs = 5 } },
            Devices = [new Device { Type = "c", Path = "/dev/fuse", Major = 10, Minor = 229, FileMode = 0x1b6, Uid = 0,
                Gid = null }],
            CgroupsPath = "/x/y", RootfsPropagation = "rslave",
            Seccomp = new Hull.Oci.Seccomp
            {
                DefaultAction = "SCMP_ACT_ERRNO", DefaultErrnoRet = 1, Architectures = ["SCMP_ARCH_X86_64"],
                Flags = ["SECCOMP_FILTER_FLAG_LOG"],
                ListenerPath = "/run/l.sock", ListenerMetadata = "m",
                Syscalls = [new SeccompSyscall { Names = ["read", "write"], Action = "SCMP_ACT_ALLOW",
                    Args = [new SeccompArg { Index = 1, Value = ulong.MaxValue, ValueTwo = 3, Op = "SCMP_CMP_EQ" }] }],
            },
            Sysctl = new() { ["net.ipv4.ip_forward"] = "1" },
            MaskedPaths = ["/proc/kcore"], ReadonlyPaths = ["/proc/sys"], MountLabel = "ml",
            Personality = new Personality { Domain = "LINUX32", Flags = [] },
        },
    };

    static string Json(Spec s) => JsonSerializer.Serialize(s, OciJson.Default.Spec);

    [Fact]
    public void Plan_round_trips_every_field_the_init_reads()
    {
        var plan = new InitPlan
        {
            Mode = InitMode.Run, Id = "c1", Bundle = "/b", Rootfs = "/b/rootfs", Spec = FullSpec(),
            Process = new Hull.Oci.Process { Args = ["ls"], Cwd = "/" },
            NewMountNamespace = true, NewUserNamespace = false, NewNetworkNamespace = true, NewUtsNamespace = false,
            NewCgroupNamespace = true, InUserNamespace = false, NoPivot = true, ParentHooks = true,
            ConsoleSocketFd = 5, FifoFd = -1, FirstPrivateFd = 3, MountNamespaceFd = 7,
            SeccompProgram = [1, 2, 3, 4, 5, 6, 7, 8], SeccompFlags = 9,
            CgroupPaths = ["/sys/fs/cgroup/memory/hull/c1", "/sys/fs/cgroup/unified/hull/c1"],
            HookState = new State { Id = "c1", Status = "creating", Pid = 42, Bundle = "/b",
                Annotations = new() { ["k"] = "v" } },
        };
        var back = PlanCodec.DecodePlan(PlanCodec.Encode(plan));

        // linux.resources and intelRdt are not carried; FullSpec has none
        Assert.Equal(Json(plan.Spec), Json(back.Spec!));
        Assert.Equal((InitMode.Run, "c1", "/b", "/b/rootfs"), (back.Mode, back.Id, back.Bundle, back.Rootfs));
        Assert.Equal((true, false, true, false, true, false, true, true),
            (back.NewMountNamespace, back.NewUserNamespace, back.NewNetworkNamespace, back.NewUtsNamespace,
                back.NewCgroupNamespace, back.InUserNamespace, back.NoPivot, back.ParentHooks));
        Assert.Equal((5, -1, 3, 9u), (back.ConsoleSocketFd, back.FifoFd, back.FirstPrivateFd, back.SeccompFlags));
        Assert.Equal(7, back.MountNamespaceFd);
        Assert.Equal(plan.CgroupPaths, back.CgroupPaths);
        Assert.Equal(plan.SeccompProgram, back.SeccompProgram);
        Assert.Equal(JsonSerializer.Serialize(plan.HookState, OciJson.Default.State),
            JsonSerializer.Serialize(back.HookState!, OciJson.Default.State));
        Assert.Equal(["ls"], back.Process!.Args!);
    }

    [Fact]
    public void Plan_with_nulls_round_trips()
    {
        var spec = new Spec { Process = new Hull.Oci.Process() };
        var back = PlanCodec.DecodePlan(PlanCodec.Encode(new InitPlan { Spec = spec }));
        Assert.Equal(Json(spec), Json(back.Spec!));
        Assert.Null(back.SeccompProgram);
        Assert.Null(back.HookState);
        Assert.Null(back.Process);
    }

    [Fact]
    public void Truncated_or_foreign_plan_is_rejected_with_a_message()
    {
        var bytes = PlanCodec.Encode(new InitPlan { Spec = FullSpec() });
        for (var n = 0; n < bytes.Length; n += 7)
        {
            var e = Assert.Throws<ContainerException>(() => PlanCodec.DecodePlan(bytes[..n]));
            Assert.Contains("init plan", e.Message);
        }
        Assert.Throws<ContainerException>(() => PlanCodec.DecodePlan([.. bytes, 0]));
        Assert.Throws<ContainerException>(() => PlanCodec.DecodePlan("{\"mode\":\"create\"}"u8.ToArray()));
    }

    [Fact]
    public void Sync_messages_round_trip()
    {
        var m = PlanCodec.DecodeMessage(PlanCodec.Encode(
            new SyncMessage { Type = SyncType.Error, Message = "mount /x: ENOENT ✗", ExitCode = 127 }));
        Assert.Equal((SyncType.Error, "mount /x: ENOENT ✗", 0, 127), (m.Type, m.Message, m.Pid, m.ExitCode));
        var n = PlanCodec.DecodeMessage(PlanCodec.Encode(new SyncMessage { Type = SyncType.Ready, Pid = -1 }));
        Assert.Equal((SyncType.Ready, null, -1, 0), (n.Type, n.Message, n.Pid, n.ExitCode));
    }

    [Fact]
    public void Container_record_json_round_trips_and_keeps_its_format()
    {
        var r = new ContainerRecord
        {
            Id = "c\"1", Bundle = "/b", Rootfs = "/b/rootfs", Pid = 7, PidStartTime = ulong.MaxValue,
            Created = new DateTime(2026, 1, 2, 3, 4, 5, 678, DateTimeKind.Utc),
            CgroupPath = "/hull/c1", Namespaces = ["pid", "mount"], Annotations = new() { ["k"] = "v\n" },
            Owner = "root",
            HasPoststart = true, HasPoststop = false, Started = true,
        };
        var json = r.ToJson();
        using var doc = JsonDocument.Parse(json);
        Assert.Equal("c\"1", doc.RootElement.GetProperty("id").GetString());
        Assert.Equal(7, doc.RootElement.GetProperty("pid").GetInt32());
        Assert.True(doc.RootElement.GetProperty("hasPoststart").GetBoolean());
        var back = ContainerRecord.FromJson(json);
        Assert.Equal(System.Text.Encoding.UTF8.GetString(json), System.Text.Encoding.UTF8.GetString(back.ToJson()));
        // unknown properties (a newer writer) are skipped; absent ones keep their defaults
        var old = ContainerRecord.FromJson("{\"id\":\"x\",\"future\":{\"a\":[1,2]},\"pid\":3,\"annotations\":null}"u8);
        Assert.Equal(("x", 3, "root", false), (old.Id, old.Pid, old.Owner, old.Started));
        Assert.Null(old.Annotations);
    }

    [Fact]
    public void Corrupt_state_json_names_the_file()
    {
        using var dir = new TempDir();
        var store = new StateStore(dir.Path);
        store.Claim("c1");
        File.WriteAllText(Path.Combine(dir.Path, "c1", "state.json"), "{\"id\": 5");
        var e = Assert.Throws<ContainerException>(() => store.Load("c1"));
        Assert.Contains("state.json", e.Message);
    }

    [Fact]
    public void Seccomp_cache_returns_the_compiled_program_only_for_the_same_profile()
    {
        using var dir = new TempDir();
        var cache = new SeccompCache(Path.Combine(dir.Path, "@cache"));
        var profile = Hull.Seccomp.SeccompProfiles.DefaultProfile(["CAP_KILL"]);
        var fresh = SeccompSupport.Compile(profile)!.Value;

        var first = SeccompSupport.Compile(profile, cache)!.Value;   // a miss: compiled and stored
        Assert.Single(Directory.GetFiles(cache.Directory));
        var second = SeccompSupport.Compile(profile, cache)!.Value;  // a hit
        Assert.Equal(fresh.Program, first.Program);
        Assert.Equal(fresh.Program, second.Program);
        Assert.Equal(fresh.Flags, second.Flags);
        Assert.False(second.NeedsListener);

        // another profile (one rule less) is not served the cached program
        var other = Hull.Seccomp.SeccompProfiles.DefaultProfile(["CAP_KILL"]);
        other.Syscalls!.RemoveAt(0);
        var o = SeccompSupport.Compile(other, cache)!.Value;
        Assert.Equal(SeccompSupport.Compile(other)!.Value.Program, o.Program);
        Assert.NotEqual(fresh.Program, o.Program);

        // a damaged entry is a miss, and is replaced
        foreach (var f in Directory.GetFiles(cache.Directory)) File.WriteAllBytes(f, [1, 2, 3]);
        Assert.Equal(fresh.Program, SeccompSupport.Compile(profile, cache)!.Value.Program);
        Assert.Equal(fresh.Program, SeccompSupport.Compile(profile, cache)!.Value.Program);
    }

    [Fact]
    public void Seccomp_cache_entry_with_the_same_hash_but_another_profile_is_not_used()
    {
        using var dir = new TempDir();
        var cache = new SeccompCache(Path.Combine(dir.Path, "@cache"));
        var a = Hull.Seccomp.SeccompProfiles.DefaultProfile([]);
        var b = Hull.Seccomp.SeccompProfiles.DefaultProfile([]);
        b.DefaultErrnoRet = 13;
        SeccompSupport.Compile(a, cache);
        // Put b's file where a's lives (as if the two hashed alike): the stored key differs, so a is compiled afresh.
        var aFile = Directory.GetFiles(cache.Directory).Single();
        SeccompSupport.Compile(b, cache);
        var bFile = Directory.GetFiles(cache.Directory).Single(f => f != aFile);
        File.Copy(bFile, aFile, overwrite: true);
        Assert.Equal(SeccompSupport.Compile(a)!.Value.Program, SeccompSupport.Compile(a, cache)!.Value.Program);
    }
}
