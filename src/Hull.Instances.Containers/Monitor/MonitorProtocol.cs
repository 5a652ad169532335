using System.Text.Json;
using System.Text.Json.Serialization;
using Hull.Linux;

namespace Hull.Instances.Containers;

/// <summary>
/// One message of the monitor protocol: a JSON object per SOCK_SEQPACKET message on &lt;state dir&gt;/monitor.sock,
/// with the container's stdin, stdout and stderr attached to a create request (SCM_RIGHTS).
/// Requests: hello, create, retire. Replies: ok or error.
/// Compatibility: "hello" and "retire" and the fields they use (Op, Version, Identity, Pid, Containers, Error) are
/// frozen for every protocol version, so that any hulld can tell any monitor its version and retire it. Everything
/// else may change with <see cref="ContainerMonitor.ProtocolVersion"/>.
/// </summary>
public sealed class MonitorMessage
{
    public string Op { get; set; } = "";
    public int Version { get; set; }
    /// <summary>hello reply: the identity of the monitor's executable (a changed binary is another build).</summary>
    public string? Identity { get; set; }
    public int Pid { get; set; }
    /// <summary>hello/retire reply: how many container inits the monitor is the parent of.</summary>
    public int Containers { get; set; }
    public string? Error { get; set; }
    // create
    public string? Id { get; set; }
    public string? Bundle { get; set; }
    /// <summary>The OCI spec, serialized with the runtime-spec context.</summary>
    public string? Spec { get; set; }
    /// <summary>Where the monitor writes the init's exit code (atomically: a temp file renamed into place).</summary>
    public string? ExitFile { get; set; }
}

[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
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
        try { return JsonSerializer.Deserialize(buffer.AsSpan(0, n), MonitorJson.Default.MonitorMessage) ?? throw new JsonException("null message"); }
        catch (JsonException e) { throw new IOException($"a malformed monitor message: {e.Message}"); }
    }
}
