using System.Text.Json;
using System.Text.Json.Serialization;

namespace Hull.Agent.Protocol;

/// <summary>Host to agent: the first frame of every connection (after the sync sequence).</summary>
public sealed class HelloMessage
{
    public int Version { get; set; } = Wire.Version;
    /// <summary>Echoed in the Ready answer so the host can tell its answer from a stale one.</summary>
    public ulong Nonce { get; set; }
    /// <summary>Who is asking (for the agent's log).</summary>
    public string? Client { get; set; }
}

/// <summary>Agent to host: ready, with the guest's identity.</summary>
public sealed class ReadyMessage
{
    public int Version { get; set; } = Wire.Version;
    /// <summary>The Hello's nonce, or 0 for the announcement the agent makes when it starts.</summary>
    public ulong Nonce { get; set; }
    public GuestInfo Guest { get; set; } = new();
    /// <summary>Sessions of the previous connection that were ended by this Hello.</summary>
    public int EndedSessions { get; set; }
}

public sealed class GuestInfo
{
    public string AgentVersion { get; set; } = "";
    public string KernelRelease { get; set; } = "";
    public string Hostname { get; set; } = "";
    public double UptimeSeconds { get; set; }
    /// <summary>The transport the agent uses: "virtio-serial", "vsock", "unix".</summary>
    public string Transport { get; set; } = "";
}

/// <summary>A command to run in the guest (or a container).</summary>
public sealed class ExecRequest
{
    public List<string> Argv { get; set; } = [];
    /// <summary>"NAME=value" entries; the complete environment of the process. Empty: a default PATH, HOME and
    /// TERM.</summary>
    public List<string> Env { get; set; } = [];
    public string? Cwd { get; set; }
    public uint Uid { get; set; }
    public uint Gid { get; set; }
    /// <summary>Supplementary groups (with a non-root uid or gid).</summary>
    public List<uint> Groups { get; set; } = [];
    /// <summary>Run on a new pseudo-terminal (stdin, stdout and stderr are the terminal; stderr is merged into
    /// stdout).</summary>
    public bool Tty { get; set; }
    public ushort Rows { get; set; } = 24;
    public ushort Cols { get; set; } = 80;
    /// <summary>When false the process's stdin is /dev/null.</summary>
    public bool Stdin { get; set; }
}

public sealed class ExecStartedMessage
{
    public int Pid { get; set; }
}

/// <summary>How an exec ended.</summary>
public sealed class ExecResult
{
    /// <summary>The exit code, or 128 + signal when a signal ended it (as a shell reports it).</summary>
    public int ExitCode { get; set; }
    /// <summary>The terminating signal, or 0.</summary>
    public int Signal { get; set; }
    public bool CoreDumped { get; set; }
}

public sealed class PushRequest
{
    public string Path { get; set; } = "";
    /// <summary>Permission bits (and setuid/setgid/sticky) of the new file.</summary>
    public uint Mode { get; set; } = 0b110_100_100;
    public uint Uid { get; set; }
    public uint Gid { get; set; }
    /// <summary>Create missing parent directories (mode 0755, owned by root).</summary>
    public bool MakeParents { get; set; }
}

public sealed class PathRequest
{
    public string Path { get; set; } = "";
}

public sealed class MkdirRequest
{
    public string Path { get; set; } = "";
    public uint Mode { get; set; } = 0b111_101_101;
    public bool Parents { get; set; }
    public uint Uid { get; set; }
    public uint Gid { get; set; }
}

public sealed class RemoveRequest
{
    public string Path { get; set; } = "";
    public bool Recursive { get; set; }
}

public sealed class PowerRequest
{
    /// <summary>"poweroff" or "reboot".</summary>
    public string Action { get; set; } = "poweroff";
}

/// <summary>The result of stat, push and pull.</summary>
public sealed class FileStat
{
    public string Path { get; set; } = "";
    /// <summary>"file", "directory", "symlink", "char", "block", "fifo", "socket".</summary>
    public string Type { get; set; } = "";
    public long Size { get; set; }
    /// <summary>Permission bits plus setuid/setgid/sticky (st_mode &amp; 07777).</summary>
    public uint Mode { get; set; }
    public uint Uid { get; set; }
    public uint Gid { get; set; }
    public long MtimeUnixNs { get; set; }
    public string? LinkTarget { get; set; }
}

/// <summary>One part of a directory listing (entries as lstat sees them, without "." and "..").</summary>
public sealed class DirectoryListing
{
    public List<FileStat> Entries { get; set; } = [];
    /// <summary>True when more Result frames with entries follow.</summary>
    public bool More { get; set; }
}

public sealed class OkMessage
{
    public string? Message { get; set; }
}

public sealed class ErrorMessage
{
    public string Message { get; set; } = "";
    /// <summary>The errno of the failed call, or 0.</summary>
    public int Errno { get; set; }
    public string? ErrnoName { get; set; }
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(HelloMessage))]
[JsonSerializable(typeof(ReadyMessage))]
[JsonSerializable(typeof(ExecRequest))]
[JsonSerializable(typeof(ExecStartedMessage))]
[JsonSerializable(typeof(ExecResult))]
[JsonSerializable(typeof(PushRequest))]
[JsonSerializable(typeof(PathRequest))]
[JsonSerializable(typeof(MkdirRequest))]
[JsonSerializable(typeof(RemoveRequest))]
[JsonSerializable(typeof(PowerRequest))]
[JsonSerializable(typeof(FileStat))]
[JsonSerializable(typeof(DirectoryListing))]
[JsonSerializable(typeof(OkMessage))]
[JsonSerializable(typeof(ErrorMessage))]
public sealed partial class AgentJson : JsonSerializerContext
{
    public static byte[] Encode<T>(T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info) =>
        JsonSerializer.SerializeToUtf8Bytes(value, info);

    /// <summary>Decodes a control payload; a malformed one becomes an <see cref="AgentProtocolException"/>.</summary>
    public static T Decode<T>(byte[] payload, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info)
    {
        try
        {
            return JsonSerializer.Deserialize(payload, info)
                ?? throw new AgentProtocolException($"empty {typeof(T).Name} message");
        }
        catch (JsonException e)
        {
            throw new AgentProtocolException($"malformed {typeof(T).Name} message: {e.Message}");
        }
    }
}

/// <summary>The peer broke the protocol (malformed message, unexpected frame).</summary>
public sealed class AgentProtocolException(string message) : Exception(message);

/// <summary>An operation failed in the guest: the agent's message, with the errno when a system call failed.</summary>
public sealed class AgentOperationException(string message, int errno = 0, string? errnoName = null)
    : Exception(message)
{
    public int Errno { get; } = errno;
    public string? ErrnoName { get; } = errnoName;
}

/// <summary>The agent could not be reached, did not answer in time, or the connection to it was lost.</summary>
public sealed class AgentUnavailableException(string message, Exception? inner = null) : Exception(message, inner);
