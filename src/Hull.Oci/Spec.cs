using System.Text.Json.Serialization;

namespace Hull.Oci;

// The OCI runtime configuration (runtime-spec v1.2, config.md and config-linux.md). Property names follow the spec's
// JSON. Two fast paths copy these types by hand, Hull.Containers' SpecReader (config.json) and PlanCodec (runtime to
// init): a property added here must be added there too, which SpecCoverageTests checks.
// Numbers that the spec allows to be absent are nullable so that "not set" and "0" stay different.

public sealed class Spec
{
    [JsonPropertyName("ociVersion")] public string OciVersion { get; set; } = "1.2.0";
    [JsonPropertyName("process")] public Process? Process { get; set; }
    [JsonPropertyName("root")] public Root? Root { get; set; }
    [JsonPropertyName("hostname")] public string? Hostname { get; set; }
    [JsonPropertyName("domainname")] public string? Domainname { get; set; }
    [JsonPropertyName("mounts")] public List<Mount>? Mounts { get; set; }
    [JsonPropertyName("hooks")] public Hooks? Hooks { get; set; }
    [JsonPropertyName("annotations")] public Dictionary<string, string>? Annotations { get; set; }
    [JsonPropertyName("linux")] public Linux? Linux { get; set; }
}

public sealed class Process
{
    [JsonPropertyName("terminal")] public bool Terminal { get; set; }
    [JsonPropertyName("consoleSize")] public Box? ConsoleSize { get; set; }
    [JsonPropertyName("user")] public User User { get; set; } = new();
    [JsonPropertyName("args")] public List<string>? Args { get; set; }
    [JsonPropertyName("commandLine")] public string? CommandLine { get; set; }
    [JsonPropertyName("env")] public List<string>? Env { get; set; }
    [JsonPropertyName("cwd")] public string Cwd { get; set; } = "/";
    [JsonPropertyName("capabilities")] public Capabilities? Capabilities { get; set; }
    [JsonPropertyName("rlimits")] public List<Rlimit>? Rlimits { get; set; }
    [JsonPropertyName("noNewPrivileges")] public bool NoNewPrivileges { get; set; }
    [JsonPropertyName("apparmorProfile")] public string? ApparmorProfile { get; set; }
    [JsonPropertyName("oomScoreAdj")] public int? OomScoreAdj { get; set; }
    [JsonPropertyName("selinuxLabel")] public string? SelinuxLabel { get; set; }
    [JsonPropertyName("scheduler")] public Scheduler? Scheduler { get; set; }
    [JsonPropertyName("ioPriority")] public IoPriority? IoPriority { get; set; }
    [JsonPropertyName("execCPUAffinity")] public CpuAffinity? ExecCpuAffinity { get; set; }
}

public sealed class Box
{
    [JsonPropertyName("height")] public uint Height { get; set; }
    [JsonPropertyName("width")] public uint Width { get; set; }
}

public sealed class User
{
    [JsonPropertyName("uid")] public uint Uid { get; set; }
    [JsonPropertyName("gid")] public uint Gid { get; set; }
    [JsonPropertyName("umask")] public uint? Umask { get; set; }
    [JsonPropertyName("additionalGids")] public List<uint>? AdditionalGids { get; set; }
    [JsonPropertyName("username")] public string? Username { get; set; }
}

public sealed class Capabilities
{
    [JsonPropertyName("bounding")] public List<string>? Bounding { get; set; }
    [JsonPropertyName("effective")] public List<string>? Effective { get; set; }
    [JsonPropertyName("inheritable")] public List<string>? Inheritable { get; set; }
    [JsonPropertyName("permitted")] public List<string>? Permitted { get; set; }
    [JsonPropertyName("ambient")] public List<string>? Ambient { get; set; }
}

public sealed class Rlimit
{
    [JsonPropertyName("type")] public string Type { get; set; } = "";
    [JsonPropertyName("hard")] public ulong Hard { get; set; }
    [JsonPropertyName("soft")] public ulong Soft { get; set; }
}

public sealed class Scheduler
{
    [JsonPropertyName("policy")] public string Policy { get; set; } = "";
    [JsonPropertyName("nice")] public int? Nice { get; set; }
    [JsonPropertyName("priority")] public int? Priority { get; set; }
    [JsonPropertyName("flags")] public List<string>? Flags { get; set; }
    [JsonPropertyName("runtime")] public ulong? Runtime { get; set; }
    [JsonPropertyName("deadline")] public ulong? Deadline { get; set; }
    [JsonPropertyName("period")] public ulong? Period { get; set; }
}

public sealed class IoPriority
{
    [JsonPropertyName("class")] public string Class { get; set; } = "";
    [JsonPropertyName("priority")] public int Priority { get; set; }
}

public sealed class CpuAffinity
{
    [JsonPropertyName("initial")] public string? Initial { get; set; }
    [JsonPropertyName("final")] public string? Final { get; set; }
}

public sealed class Root
{
    [JsonPropertyName("path")] public string Path { get; set; } = "";
    [JsonPropertyName("readonly")] public bool Readonly { get; set; }
}

public sealed class Mount
{
    [JsonPropertyName("destination")] public string Destination { get; set; } = "";
    [JsonPropertyName("type")] public string? Type { get; set; }
    [JsonPropertyName("source")] public string? Source { get; set; }
    [JsonPropertyName("options")] public List<string>? Options { get; set; }
    [JsonPropertyName("uidMappings")] public List<IdMapping>? UidMappings { get; set; }
    [JsonPropertyName("gidMappings")] public List<IdMapping>? GidMappings { get; set; }
}

public sealed class Hooks
{
    [JsonPropertyName("prestart")] public List<Hook>? Prestart { get; set; }
    [JsonPropertyName("createRuntime")] public List<Hook>? CreateRuntime { get; set; }
    [JsonPropertyName("createContainer")] public List<Hook>? CreateContainer { get; set; }
    [JsonPropertyName("startContainer")] public List<Hook>? StartContainer { get; set; }
    [JsonPropertyName("poststart")] public List<Hook>? Poststart { get; set; }
    [JsonPropertyName("poststop")] public List<Hook>? Poststop { get; set; }
}

public sealed class Hook
{
    [JsonPropertyName("path")] public string Path { get; set; } = "";
    [JsonPropertyName("args")] public List<string>? Args { get; set; }
    [JsonPropertyName("env")] public List<string>? Env { get; set; }
    [JsonPropertyName("timeout")] public int? Timeout { get; set; }
}

public sealed class Linux
{
    [JsonPropertyName("namespaces")] public List<Namespace>? Namespaces { get; set; }
    [JsonPropertyName("uidMappings")] public List<IdMapping>? UidMappings { get; set; }
    [JsonPropertyName("gidMappings")] public List<IdMapping>? GidMappings { get; set; }
    [JsonPropertyName("timeOffsets")] public Dictionary<string, TimeOffset>? TimeOffsets { get; set; }
    [JsonPropertyName("devices")] public List<Device>? Devices { get; set; }
    [JsonPropertyName("cgroupsPath")] public string? CgroupsPath { get; set; }
    [JsonPropertyName("resources")] public Resources? Resources { get; set; }
    [JsonPropertyName("rootfsPropagation")] public string? RootfsPropagation { get; set; }
    [JsonPropertyName("seccomp")] public Seccomp? Seccomp { get; set; }
    [JsonPropertyName("sysctl")] public Dictionary<string, string>? Sysctl { get; set; }
    [JsonPropertyName("maskedPaths")] public List<string>? MaskedPaths { get; set; }
    [JsonPropertyName("readonlyPaths")] public List<string>? ReadonlyPaths { get; set; }
    [JsonPropertyName("mountLabel")] public string? MountLabel { get; set; }
    [JsonPropertyName("personality")] public Personality? Personality { get; set; }
    [JsonPropertyName("intelRdt")] public IntelRdt? IntelRdt { get; set; }
}

public sealed class Namespace
{
    [JsonPropertyName("type")] public string Type { get; set; } = "";
    [JsonPropertyName("path")] public string? Path { get; set; }
}

public sealed class IdMapping
{
    [JsonPropertyName("containerID")] public uint ContainerId { get; set; }
    [JsonPropertyName("hostID")] public uint HostId { get; set; }
    [JsonPropertyName("size")] public uint Size { get; set; }
}

public sealed class TimeOffset
{
    [JsonPropertyName("secs")] public long Secs { get; set; }
    [JsonPropertyName("nanosecs")] public uint Nanosecs { get; set; }
}

public sealed class Device
{
    [JsonPropertyName("type")] public string Type { get; set; } = "";
    [JsonPropertyName("path")] public string Path { get; set; } = "";
    [JsonPropertyName("major")] public long Major { get; set; }
    [JsonPropertyName("minor")] public long Minor { get; set; }
    [JsonPropertyName("fileMode")] public uint? FileMode { get; set; }
    [JsonPropertyName("uid")] public uint? Uid { get; set; }
    [JsonPropertyName("gid")] public uint? Gid { get; set; }
}

public sealed class Resources
{
    [JsonPropertyName("devices")] public List<DeviceCgroup>? Devices { get; set; }
    [JsonPropertyName("memory")] public Memory? Memory { get; set; }
    [JsonPropertyName("cpu")] public Cpu? Cpu { get; set; }
    [JsonPropertyName("pids")] public Pids? Pids { get; set; }
    [JsonPropertyName("blockIO")] public BlockIo? BlockIo { get; set; }
    [JsonPropertyName("hugepageLimits")] public List<HugepageLimit>? HugepageLimits { get; set; }
    [JsonPropertyName("network")] public Network? Network { get; set; }
    [JsonPropertyName("rdma")] public Dictionary<string, Rdma>? Rdma { get; set; }
    [JsonPropertyName("unified")] public Dictionary<string, string>? Unified { get; set; }
}

public sealed class DeviceCgroup
{
    [JsonPropertyName("allow")] public bool Allow { get; set; }
    [JsonPropertyName("type")] public string? Type { get; set; }
    [JsonPropertyName("major")] public long? Major { get; set; }
    [JsonPropertyName("minor")] public long? Minor { get; set; }
    [JsonPropertyName("access")] public string? Access { get; set; }
}

public sealed class Memory
{
    [JsonPropertyName("limit")] public long? Limit { get; set; }
    [JsonPropertyName("reservation")] public long? Reservation { get; set; }
    [JsonPropertyName("swap")] public long? Swap { get; set; }
    [JsonPropertyName("kernel")] public long? Kernel { get; set; }
    [JsonPropertyName("kernelTCP")] public long? KernelTcp { get; set; }
    [JsonPropertyName("swappiness")] public ulong? Swappiness { get; set; }
    [JsonPropertyName("disableOOMKiller")] public bool? DisableOomKiller { get; set; }
    [JsonPropertyName("useHierarchy")] public bool? UseHierarchy { get; set; }
    [JsonPropertyName("checkBeforeUpdate")] public bool? CheckBeforeUpdate { get; set; }
}

public sealed class Cpu
{
    [JsonPropertyName("shares")] public ulong? Shares { get; set; }
    [JsonPropertyName("quota")] public long? Quota { get; set; }
    [JsonPropertyName("burst")] public ulong? Burst { get; set; }
    [JsonPropertyName("period")] public ulong? Period { get; set; }
    [JsonPropertyName("realtimeRuntime")] public long? RealtimeRuntime { get; set; }
    [JsonPropertyName("realtimePeriod")] public ulong? RealtimePeriod { get; set; }
    [JsonPropertyName("cpus")] public string? Cpus { get; set; }
    [JsonPropertyName("mems")] public string? Mems { get; set; }
    [JsonPropertyName("idle")] public long? Idle { get; set; }
}

public sealed class Pids
{
    [JsonPropertyName("limit")] public long Limit { get; set; }
}

public sealed class BlockIo
{
    [JsonPropertyName("weight")] public ushort? Weight { get; set; }
    [JsonPropertyName("leafWeight")] public ushort? LeafWeight { get; set; }
    [JsonPropertyName("weightDevice")] public List<WeightDevice>? WeightDevice { get; set; }
    [JsonPropertyName("throttleReadBpsDevice")] public List<ThrottleDevice>? ThrottleReadBpsDevice { get; set; }
    [JsonPropertyName("throttleWriteBpsDevice")] public List<ThrottleDevice>? ThrottleWriteBpsDevice { get; set; }
    [JsonPropertyName("throttleReadIOPSDevice")] public List<ThrottleDevice>? ThrottleReadIopsDevice { get; set; }
    [JsonPropertyName("throttleWriteIOPSDevice")] public List<ThrottleDevice>? ThrottleWriteIopsDevice { get; set; }
}

public sealed class WeightDevice
{
    [JsonPropertyName("major")] public long Major { get; set; }
    [JsonPropertyName("minor")] public long Minor { get; set; }
    [JsonPropertyName("weight")] public ushort? Weight { get; set; }
    [JsonPropertyName("leafWeight")] public ushort? LeafWeight { get; set; }
}

public sealed class ThrottleDevice
{
    [JsonPropertyName("major")] public long Major { get; set; }
    [JsonPropertyName("minor")] public long Minor { get; set; }
    [JsonPropertyName("rate")] public ulong Rate { get; set; }
}

public sealed class HugepageLimit
{
    [JsonPropertyName("pageSize")] public string PageSize { get; set; } = "";
    [JsonPropertyName("limit")] public ulong Limit { get; set; }
}

public sealed class Network
{
    [JsonPropertyName("classID")] public uint? ClassId { get; set; }
    [JsonPropertyName("priorities")] public List<InterfacePriority>? Priorities { get; set; }
}

public sealed class InterfacePriority
{
    [JsonPropertyName("name")] public string Name { get; set; } = "";
    [JsonPropertyName("priority")] public uint Priority { get; set; }
}

public sealed class Rdma
{
    [JsonPropertyName("hcaHandles")] public uint? HcaHandles { get; set; }
    [JsonPropertyName("hcaObjects")] public uint? HcaObjects { get; set; }
}

public sealed class Seccomp
{
    [JsonPropertyName("defaultAction")] public string DefaultAction { get; set; } = "";
    [JsonPropertyName("defaultErrnoRet")] public uint? DefaultErrnoRet { get; set; }
    [JsonPropertyName("architectures")] public List<string>? Architectures { get; set; }
    [JsonPropertyName("flags")] public List<string>? Flags { get; set; }
    [JsonPropertyName("listenerPath")] public string? ListenerPath { get; set; }
    [JsonPropertyName("listenerMetadata")] public string? ListenerMetadata { get; set; }
    [JsonPropertyName("syscalls")] public List<SeccompSyscall>? Syscalls { get; set; }
}

public sealed class SeccompSyscall
{
    [JsonPropertyName("names")] public List<string> Names { get; set; } = [];
    [JsonPropertyName("action")] public string Action { get; set; } = "";
    [JsonPropertyName("errnoRet")] public uint? ErrnoRet { get; set; }
    [JsonPropertyName("args")] public List<SeccompArg>? Args { get; set; }
}

public sealed class SeccompArg
{
    [JsonPropertyName("index")] public uint Index { get; set; }
    [JsonPropertyName("value")] public ulong Value { get; set; }
    [JsonPropertyName("valueTwo")] public ulong ValueTwo { get; set; }
    [JsonPropertyName("op")] public string Op { get; set; } = "";
}

public sealed class Personality
{
    [JsonPropertyName("domain")] public string Domain { get; set; } = "";
    [JsonPropertyName("flags")] public List<string>? Flags { get; set; }
}

public sealed class IntelRdt
{
    [JsonPropertyName("closID")] public string? ClosId { get; set; }
    [JsonPropertyName("l3CacheSchema")] public string? L3CacheSchema { get; set; }
    [JsonPropertyName("memBwSchema")] public string? MemBwSchema { get; set; }
}

/// <summary>The state of a container (runtime.md "State").</summary>
public sealed class State
{
    [JsonPropertyName("ociVersion")] public string OciVersion { get; set; } = "1.2.0";
    [JsonPropertyName("id")] public string Id { get; set; } = "";
    [JsonPropertyName("status")] public string Status { get; set; } = "";
    [JsonPropertyName("pid")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public int Pid { get; set; }
    [JsonPropertyName("bundle")] public string Bundle { get; set; } = "";
    [JsonPropertyName("annotations")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public Dictionary<string, string>? Annotations { get; set; }
}

[JsonSourceGenerationOptions(WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    ReadCommentHandling = System.Text.Json.JsonCommentHandling.Skip, AllowTrailingCommas = true)]
[JsonSerializable(typeof(Spec))]
[JsonSerializable(typeof(State))]
[JsonSerializable(typeof(Process))]
[JsonSerializable(typeof(List<State>))]
public sealed partial class OciJson : JsonSerializerContext;
