using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Hull.Linux;
using Hull.Oci;

namespace Hull.Seccomp;

/// <summary>
/// The "container process state" a runtime sends to the seccomp agent listening on linux.seccomp.listenerPath
/// (runtime-spec config-linux.md), together with the notify fd in SCM_RIGHTS.
/// </summary>
public sealed class ContainerProcessState
{
    [JsonPropertyName("ociVersion")] public string OciVersion { get; set; } = "1.2.0";
    /// <summary>Names of the fds passed in SCM_RIGHTS, in order; "seccompFd" for the notify fd.</summary>
    [JsonPropertyName("fds")] public List<string> Fds { get; set; } = [];
    /// <summary>The container process (the one that loaded the filter).</summary>
    [JsonPropertyName("pid")] public int Pid { get; set; }
    /// <summary>linux.seccomp.listenerMetadata, passed through unchanged.</summary>
    [JsonPropertyName("metadata")] public string? Metadata { get; set; }
    [JsonPropertyName("state")] public State State { get; set; } = new();
}

[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(ContainerProcessState))]
[JsonSerializable(typeof(Hull.Oci.Seccomp))]
public sealed partial class SeccompJson : JsonSerializerContext;

/// <summary>Hands the notify fd to the seccomp agent (listenerPath) as the runtime spec describes.</summary>
public static unsafe class SeccompListener
{
    /// <summary>The name of the notify fd in <see cref="ContainerProcessState.Fds"/>.</summary>
    public const string SeccompFdName = "seccompFd";

    /// <summary>The state document for a container process: the fds list names the notify fd.</summary>
    public static ContainerProcessState CreateState(State state, int pid, string? metadata) =>
        new() { Fds = [SeccompFdName], Pid = pid, Metadata = metadata, State = state };

    /// <summary>
    /// Connects to the AF_UNIX SOCK_STREAM socket at <paramref name="listenerPath"/>, sends the JSON of
    /// <paramref name="state"/> with <paramref name="notifyFd"/> attached (SCM_RIGHTS), and closes the connection:
    /// one state per connection. Throws <see cref="LinuxException"/> when any step fails (the runtime must then fail
    /// the container start).
    /// </summary>
    public static void Send(string listenerPath, SafeFd notifyFd, ContainerProcessState state)
    {
        ArgumentNullException.ThrowIfNull(notifyFd);
        ArgumentNullException.ThrowIfNull(state);
        using var sock = Connect(listenerPath);
        Send(sock, listenerPath, notifyFd, state);
    }

    /// <summary>Connects to the agent's socket; with <see cref="Send(SafeFd, string, SafeFd, ContainerProcessState)"/>
    /// later, for a process that connects while the path is reachable (before pivot_root) and sends
    /// afterwards.</summary>
    public static SafeFd Connect(string listenerPath)
    {
        ArgumentException.ThrowIfNullOrEmpty(listenerPath);
        var path = Encoding.UTF8.GetBytes(listenerPath);
        if (path.Length > 107)
            throw new SeccompException($"linux.seccomp.listenerPath \"{listenerPath}\" is {path.Length} bytes; a " +
                "unix socket path has at most 107. Use a shorter path.");
        var s = Libc.socket(1 /* AF_UNIX */, 1 /* SOCK_STREAM */ | O.CLOEXEC, 0);
        if (s < 0) throw LinuxException.FromLastError("socket AF_UNIX for the seccomp listener");
        var sock = new SafeFd(s);

        byte* addr = stackalloc byte[110];
        new Span<byte>(addr, 110).Clear();
        *(ushort*)addr = 1; // AF_UNIX
        path.CopyTo(new Span<byte>(addr + 2, 108));
        while (Libc.connect(sock.Fd, addr, 2 + path.Length + 1) < 0)
        {
            var e = Marshal.GetLastPInvokeError();
            if (e != Errors.EINTR) { sock.Dispose(); throw new LinuxException(e,
                $"connect to the seccomp listener {listenerPath}"); }
        }
        return sock;
    }

    /// <summary>Sends the state and the notify fd on a socket from <see cref="Connect"/> (the caller closes
    /// it).</summary>
    public static void Send(SafeFd sock, string listenerPath, SafeFd notifyFd, ContainerProcessState state)
    {
        if (state.Fds.Count != 1)
            throw new ArgumentException("the state must name exactly the one fd sent (seccompFd)", nameof(state));
        var json = JsonSerializer.SerializeToUtf8Bytes(state, SeccompJson.Default.ContainerProcessState);
        var added = false;
        notifyFd.DangerousAddRef(ref added);
        try
        {
            var sent = 0;
            fixed (byte* data = json)
            {
                // First message carries the fd; the kernel delivers it with the first byte of data.
                const int cmsgSpace = 24; // CMSG_SPACE(sizeof(int))
                byte* control = stackalloc byte[cmsgSpace];
                new Span<byte>(control, cmsgSpace).Clear();
                *(nint*)control = 20; // cmsg_len = CMSG_LEN(sizeof(int))
                *(int*)(control + 8) = 1; // SOL_SOCKET
                *(int*)(control + 12) = 1; // SCM_RIGHTS
                *(int*)(control + 16) = notifyFd.Fd;
                while (sent < json.Length)
                {
                    var iov = new IoVec { Base = data + sent, Len = json.Length - sent };
                    var msg = new MsgHdr { Iov = &iov, IovLen = 1 };
                    if (sent == 0) { msg.Control = control; msg.ControlLen = cmsgSpace; }
                    var r = Libc.sendmsg(sock.Fd, &msg, 0x4000 /* MSG_NOSIGNAL */);
                    if (r < 0)
                    {
                        var e = Marshal.GetLastPInvokeError();
                        if (e == Errors.EINTR) continue;
                        throw new LinuxException(e, $"send the seccomp state to {listenerPath}");
                    }
                    sent += (int)r;
                }
            }
        }
        finally
        {
            if (added) notifyFd.DangerousRelease();
        }
    }
}
