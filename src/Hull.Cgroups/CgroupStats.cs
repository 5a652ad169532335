using System.Text.Json.Serialization;

namespace Hull.Cgroups;

// The statistics `runc events --stats` prints, with the same JSON names (runc's types/events.go), so tools that
// parse runc's output parse Hull's. Units: bytes, nanoseconds, counts.

/// <summary>One line of `events`: {"type":"stats","id":"...","data":{...}}.</summary>
public sealed class CgroupEvent
{
    [JsonPropertyName("type")] public string Type { get; set; } = "stats";
    [JsonPropertyName("id")] public string Id { get; set; } = "";
    [JsonPropertyName("data")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingNull)] public CgroupStats? Data { get; set; }
}

public sealed class CgroupStats
{
    [JsonPropertyName("cpu")] public CpuStats Cpu { get; set; } = new();
    [JsonPropertyName("cpuset")] public CpusetStats Cpuset { get; set; } = new();
    [JsonPropertyName("memory")] public MemoryStats Memory { get; set; } = new();
    [JsonPropertyName("pids")] public PidsStats Pids { get; set; } = new();
    [JsonPropertyName("blkio")] public BlkioStats Blkio { get; set; } = new();
    /// <summary>Per page size ("2MB", "1GB").</summary>
    [JsonPropertyName("hugetlb")] public Dictionary<string, HugetlbStats> Hugetlb { get; set; } = [];
}

public sealed class CpuUsage
{
    [JsonPropertyName("total")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingDefault)] public ulong Total { get; set; }
    [JsonPropertyName("percpu")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingNull)] public List<ulong>? PerCpu { get; set; }
    [JsonPropertyName("percpu_kernel")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingNull)] public List<ulong>? PerCpuKernel { get; set; }
    [JsonPropertyName("percpu_user")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingNull)] public List<ulong>? PerCpuUser { get; set; }
    [JsonPropertyName("kernel")] public ulong Kernel { get; set; }
    [JsonPropertyName("user")] public ulong User { get; set; }
}

public sealed class Throttling
{
    [JsonPropertyName("periods")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingDefault)] public ulong Periods { get; set; }
    [JsonPropertyName("throttledPeriods")] [
        JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)] public ulong ThrottledPeriods { get; set; }
    [JsonPropertyName("throttledTime")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingDefault)] public ulong ThrottledTime { get; set; }
}

public sealed class CpuStats
{
    [JsonPropertyName("usage")] public CpuUsage Usage { get; set; } = new();
    [JsonPropertyName("throttling")] public Throttling Throttling { get; set; } = new();
}

public sealed class CpusetStats
{
    [JsonPropertyName("cpus")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingNull)] public List<ushort>? Cpus { get; set; }
    [JsonPropertyName("cpu_exclusive")] public ulong CpuExclusive { get; set; }
    [JsonPropertyName("mems")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingNull)] public List<ushort>? Mems { get; set; }
    [JsonPropertyName("mem_hardwall")] public ulong MemHardwall { get; set; }
    [JsonPropertyName("mem_exclusive")] public ulong MemExclusive { get; set; }
    [JsonPropertyName("memory_migrate")] public ulong MemoryMigrate { get; set; }
    [JsonPropertyName("memory_spread_page")] public ulong MemorySpreadPage { get; set; }
    [JsonPropertyName("memory_spread_slab")] public ulong MemorySpreadSlab { get; set; }
    [JsonPropertyName("memory_pressure")] public ulong MemoryPressure { get; set; }
    [JsonPropertyName("sched_load_balance")] public ulong SchedLoadBalance { get; set; }
    [JsonPropertyName("sched_relax_domain_level")] public long SchedRelaxDomainLevel { get; set; }
}

public sealed class MemoryEntry
{
    /// <summary><see cref="ulong.MaxValue"/> when unlimited (as runc prints it).</summary>
    [JsonPropertyName("limit")] public ulong Limit { get; set; }
    [JsonPropertyName("usage")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingDefault)] public ulong Usage { get; set; }
    [JsonPropertyName("max")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingDefault)] public ulong Max { get; set; }
    [JsonPropertyName("failcnt")] public ulong Failcnt { get; set; }
}

public sealed class MemoryStats
{
    [JsonPropertyName("cache")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingDefault)] public ulong Cache { get; set; }
    [JsonPropertyName("usage")] public MemoryEntry Usage { get; set; } = new();
    /// <summary>v1: memory+swap (memsw); v2: memory.swap.current + memory.current, to mean the same.</summary>
    [JsonPropertyName("swap")] public MemoryEntry Swap { get; set; } = new();
    [JsonPropertyName("kernel")] public MemoryEntry Kernel { get; set; } = new();
    [JsonPropertyName("kernelTCP")] public MemoryEntry KernelTcp { get; set; } = new();
    /// <summary>memory.stat as read.</summary>
    [JsonPropertyName("raw")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public Dictionary<string,
        ulong>? Raw { get; set; }
}

public sealed class PidsStats
{
    [JsonPropertyName("current")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingDefault)] public ulong Current { get; set; }
    /// <summary>0 when unlimited.</summary>
    [JsonPropertyName("limit")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingDefault)] public ulong Limit { get; set; }
}

public sealed class BlkioEntry
{
    [JsonPropertyName("major")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingDefault)] public ulong Major { get; set; }
    [JsonPropertyName("minor")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingDefault)] public ulong Minor { get; set; }
    [JsonPropertyName("op")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingNull)] public string? Op { get; set; }
    [JsonPropertyName("value")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingDefault)] public ulong Value { get; set; }
}

public sealed class BlkioStats
{
    [JsonPropertyName("ioServiceBytesRecursive")] [
        JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public List<BlkioEntry>? IoServiceBytesRecursive {
        get; set; }
    [JsonPropertyName("ioServicedRecursive")] [
        JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public List<BlkioEntry>? IoServicedRecursive { get;
        set; }
    [JsonPropertyName("ioQueueRecursive")] [
        JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public List<BlkioEntry>? IoQueuedRecursive { get;
        set; }
    [JsonPropertyName("ioServiceTimeRecursive")] [
        JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public List<BlkioEntry>? IoServiceTimeRecursive {
        get; set; }
    [JsonPropertyName("ioWaitTimeRecursive")] [
        JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public List<BlkioEntry>? IoWaitTimeRecursive { get;
        set; }
    [JsonPropertyName("ioMergedRecursive")] [
        JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public List<BlkioEntry>? IoMergedRecursive { get;
        set; }
    [JsonPropertyName("ioTimeRecursive")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingNull)] public List<BlkioEntry>? IoTimeRecursive { get; set; }
    [JsonPropertyName("sectorsRecursive")] [
        JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public List<BlkioEntry>? SectorsRecursive { get;
        set; }
}

public sealed class HugetlbStats
{
    [JsonPropertyName("usage")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingDefault)] public ulong Usage { get; set; }
    [JsonPropertyName("max")] [JsonIgnore(Condition =
        JsonIgnoreCondition.WhenWritingDefault)] public ulong Max { get; set; }
    [JsonPropertyName("failcnt")] public ulong Failcnt { get; set; }
}

/// <summary>The host facts the OCI `features` verb reports about cgroups.</summary>
public sealed class CgroupFeatures
{
    [JsonPropertyName("v1")] public bool V1 { get; set; }
    [JsonPropertyName("v2")] public bool V2 { get; set; }
    [JsonPropertyName("systemd")] public bool Systemd { get; set; }
    [JsonPropertyName("systemdUser")] public bool SystemdUser { get; set; }
    [JsonPropertyName("rdma")] public bool Rdma { get; set; }
    /// <summary>Hull's extension: "hybrid", "v1" or "v2".</summary>
    [JsonPropertyName("mode")] public string Mode { get; set; } = "";
    /// <summary>Hull's extension: controller → "v1" or "v2".</summary>
    [JsonPropertyName("controllers")] public Dictionary<string, string> Controllers { get; set; } = [];
}

[JsonSourceGenerationOptions(WriteIndented = false)]
[JsonSerializable(typeof(CgroupEvent))]
[JsonSerializable(typeof(CgroupStats))]
[JsonSerializable(typeof(CgroupFeatures))]
public sealed partial class CgroupJson : JsonSerializerContext;
