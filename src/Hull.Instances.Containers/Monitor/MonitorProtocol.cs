using System.Text.Json;
using System.Text.Json.Serialization;
using Hull.Containers;
using Hull.Linux;

namespace Hull.Instances.Containers;

/// <summary>What a monitor message is: a request, a reply or a pushed event. The wire carries the lower-case word.
/// </summary>
[JsonConverter(typeof(JsonStringEnumConverter<MonitorOp>))]
public enum MonitorOp
{
    // Frozen for every protocol version (see MonitorMessage).
    [JsonStringEnumMemberName("hello")] Hello,
    [JsonStringEnumMemberName("retire")] Retire,
    [JsonStringEnumMemberName("ok")] Ok,
    [JsonStringEnumMemberName("error")] Error,
    // Requests of this protocol version.
    [JsonStringEnumMemberName("create")] Create,
    [JsonStringEnumMemberName("state")] State,
    [JsonStringEnumMemberName("kill")] Kill,
    [JsonStringEnumMemberName("pause")] Pause,
    [JsonStringEnumMemberName("resume")] Resume,
    [JsonStringEnumMemberName("update")] Update,
    [JsonStringEnumMemberName("stats")] Stats,
    [JsonStringEnumMemberName("delete")] Delete,
    /// <summary>Prepares an exec: the process to run (the container's process settings with the caller's command).
    /// The monitor never enters a container: a fresh, sealed hull-oci does.</summary>
    [JsonStringEnumMemberName("exec")] Exec,
    /// <summary>Attaches to a system container's /dev/console (MonitorConsole): the reply carries a stream socket whose
    /// reads are the console's output from now on and whose writes are its input.</summary>
    [JsonStringEnumMemberName("console")] Console,
    /// <summary>Pushed by the monitor on every connection that said hello: a container's init has ended.</summary>
    [JsonStringEnumMemberName("exit")] Exit,
}

/// <summary>
/// One message of the monitor protocol: a JSON object per SOCK_SEQPACKET message on &lt;state dir&gt;/monitor.sock,
/// with the container's stdin, stdout and stderr attached to a create request (SCM_RIGHTS).
/// A request goes on a connection of its own and gets one reply (ok, with the request's answer, or error). The
/// connection hulld holds (the one it said hello on) carries the monitor's pushed events: exit (Id, Pid, ExitCode)
/// once a container's init has ended and its exit record is on disk.
/// Compatibility: "hello" and "retire" and the fields they use (Op, Version, Identity, Pid, Containers, Error) are
/// frozen for every protocol version, so that any hulld can tell any monitor its version and retire it. Everything
/// else may change with <see cref="ContainerMonitor.ProtocolVersion"/>.
/// </summary>
public sealed class MonitorMessage
{
    public MonitorOp Op { get; set; }
    public int Version { get; set; }
    /// <summary>hello reply: the identity of the monitor's executable (a changed binary is another build).</summary>
    public string? Identity { get; set; }
    /// <summary>hello/retire reply: the monitor's pid; create/state reply and exit event: the init's.</summary>
    public int Pid { get; set; }
    /// <summary>hello/retire reply: how many container inits the monitor is the parent of.</summary>
    public int Containers { get; set; }
    public string? Error { get; set; }
    /// <summary>The container (every request but hello/retire, and the exit event).</summary>
    public string? Id { get; set; }
    // create
    public string? Bundle { get; set; }
    /// <summary>create: the OCI spec; update: the resources; exec reply: the process. Serialized with the
    /// runtime-spec context.</summary>
    public string? Spec { get; set; }
    /// <summary>create: where the monitor records the init's exit code (atomically: a temp file renamed into place)
    /// before it reaps the init and pushes the exit event.</summary>
    public string? ExitFile { get; set; }
    /// <summary>create: the NICs whose peers the monitor moves into the container's network namespace and configures
    /// there, after the engine made the container and before its process starts.</summary>
    public List<NicSpec>? Nics { get; set; }
    /// <summary>state reply: the container's status (absent: no such container).</summary>
    public ContainerStatus? Status { get; set; }
    /// <summary>state reply: the init's start time (/proc/PID/stat field 22).</summary>
    public ulong PidStartTime { get; set; }
    // kill
    public int Signal { get; set; }
    /// <summary>kill: every process of the container's cgroup, not only the init.</summary>
    public bool All { get; set; }
    // exec
    public List<string>? Command { get; set; }
    /// <summary>exec: NAME=VALUE, after the container's own.</summary>
    public List<string>? Env { get; set; }
    public string? Cwd { get; set; }
    /// <summary>exec: UID[:GID].</summary>
    public string? User { get; set; }
    /// <summary>exit event: the init's shell-style exit code (128+n for signal n).</summary>
    public int? ExitCode { get; set; }
    /// <summary>stats reply.</summary>
    public MonitorStats? Stats { get; set; }
}

/// <summary>A container's usage from its cgroup.</summary>
public sealed class MonitorStats
{
    public long CpuUsageNs { get; set; }
    public long MemoryBytes { get; set; }
    public long Pids { get; set; }
    public long IoReadBytes { get; set; }
    public long IoWriteBytes { get; set; }
}

[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    Converters = [typeof(JsonStringEnumConverter<ContainerStatus>)])]
[JsonSerializable(typeof(MonitorMessage))]
sealed partial class MonitorJson : JsonSerializerContext;

static class MonitorWire
{
    /// <summary>The largest message (an OCI spec is a few KiB).</summary>
    public const int MaxMessage = 1 << 20;

    public static void Send(SafeFd socket, MonitorMessage m, IReadOnlyList<SafeFd>? fds = null) =>
        MonitorInterop.Send(socket, JsonSerializer.SerializeToUtf8Bytes(m, MonitorJson.Default.MonitorMessage), fds);

    /// <summary>Receives one message; null at end of stream.</summary>
    public static MonitorMessage? Receive(SafeFd socket, List<SafeFd> fds, byte[] buffer)
    {
        var n = MonitorInterop.Receive(socket, buffer, fds);
        if (n == 0) return null;
        try
        {
            return JsonSerializer.Deserialize(buffer.AsSpan(0, n), MonitorJson.Default.MonitorMessage)
                ?? throw new JsonException("null message");
        }
        catch (JsonException e) { throw new IOException($"a malformed monitor message: {e.Message}"); }
    }
}
