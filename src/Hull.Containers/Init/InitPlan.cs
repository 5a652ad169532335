using System.Buffers.Binary;
using Hull.Linux;
using Hull.Oci;

namespace Hull.Containers;

/// <summary>What the parent tells the container init (hull in init mode) to do. Sent once over the sync socket.</summary>
public sealed class InitPlan
{
    /// <summary>"create" (wait for start on the exec fifo), "run" (wait for "start" on the sync socket) or "exec".</summary>
    public string Mode { get; set; } = "create";
    public string Id { get; set; } = "";
    public string Bundle { get; set; } = "";
    public string Rootfs { get; set; } = "";
    public Spec? Spec { get; set; }
    /// <summary>For exec: the process to start (for create/run it is Spec.Process).</summary>
    public Hull.Oci.Process? Process { get; set; }
    public bool NewMountNamespace { get; set; }
    public bool NewUserNamespace { get; set; }
    public bool NewNetworkNamespace { get; set; }
    public bool NewUtsNamespace { get; set; }
    /// <summary>The init unshares a cgroup namespace first (after the spawner put it in its cgroup everywhere).</summary>
    public bool NewCgroupNamespace { get; set; }
    public bool InUserNamespace { get; set; }
    public bool NoPivot { get; set; }
    /// <summary>The init's fd numbers: the console socket (or -1), the exec fifo opened O_PATH (or -1).</summary>
    public int ConsoleSocketFd { get; set; } = -1;
    public int FifoFd { get; set; } = -1;
    /// <summary>A mount namespace joined by path, for the init to enter itself (or -1).</summary>
    public int MountNamespaceFd { get; set; } = -1;
    /// <summary>
    /// Per entry of Spec.Mounts: the fd of its bind source, cloned by the runtime (open_tree) where the path resolves
    /// with host root's rights, or -1 for the init to mount by path. Empty when the runtime cloned none.
    /// </summary>
    public List<int> BindSourceFds { get; set; } = [];
    /// <summary>Fds below this (3 + --preserve-fds) are passed on to the container process.</summary>
    public int FirstPrivateFd { get; set; } = 3;
    /// <summary>Whether to report back before pivot_root so that the parent runs prestart/createRuntime hooks.</summary>
    public bool ParentHooks { get; set; }
    /// <summary>linux.seccomp compiled by the runtime (the spec sent to the init then carries no profile), or null.</summary>
    public byte[]? SeccompProgram { get; set; }
    public uint SeccompFlags { get; set; }
    /// <summary>The state passed to hooks the init runs (createContainer, startContainer).</summary>
    public State? HookState { get; set; }
}

/// <summary>A message on the sync socket between the runtime and the init.</summary>
public sealed class SyncMessage
{
    public string Type { get; set; } = "";
    public string? Message { get; set; }
    public int Pid { get; set; }

    public const string Hooks = "hooks", HooksDone = "hooks-done", Ready = "ready", Start = "start", Error = "error";
}

/// <summary>Length-prefixed messages over a socket (the runtime ⇄ init channel), in <see cref="PlanCodec"/>'s binary form.</summary>
public sealed class SyncChannel(SafeFd fd) : IDisposable
{
    public SafeFd Fd { get; } = fd;

    public void Send(InitPlan plan) => SendBytes(PlanCodec.Encode(plan));
    public void Send(SyncMessage m) => SendBytes(PlanCodec.Encode(m));
    public void Send(string type, string? message = null) => Send(new SyncMessage { Type = type, Message = message });

    void SendBytes(byte[] body)
    {
        Span<byte> len = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(len, body.Length);
        var all = new byte[4 + body.Length];
        len.CopyTo(all);
        body.CopyTo(all, 4);
        Sys.WriteAll(Fd, all, "write to the init sync socket");
    }

    /// <summary>Reads one message; null at EOF (the peer exited).</summary>
    public byte[]? ReceiveBytes()
    {
        var len = new byte[4];
        if (!ReadExactly(len)) return null;
        var n = BinaryPrimitives.ReadInt32LittleEndian(len);
        if (n < 0 || n > 64 << 20) throw new ContainerException($"corrupt message on the init sync socket (length {n})");
        var body = new byte[n];
        if (!ReadExactly(body)) return null;
        return body;
    }

    public SyncMessage? Receive() => ReceiveBytes() is { } b ? PlanCodec.DecodeMessage(b) : null;
    public InitPlan? ReceivePlan() => ReceiveBytes() is { } b ? PlanCodec.DecodePlan(b) : null;

    bool ReadExactly(Span<byte> buf)
    {
        var got = 0;
        while (got < buf.Length)
        {
            var n = Sys.Read(Fd, buf[got..]);
            if (n == 0) return false;
            got += n;
        }
        return true;
    }

    public void Dispose() => Fd.Dispose();
}
