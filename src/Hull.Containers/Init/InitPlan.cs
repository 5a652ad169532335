using System.Buffers.Binary;
using Hull.Linux;
using Hull.Oci;

namespace Hull.Containers;

/// <summary>What the parent tells the container init (hull in init mode) to do. Sent once over the sync
/// socket.</summary>
public sealed class InitPlan
{
    public InitMode Mode { get; set; } = InitMode.Create;
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
    /// <summary>The init unshares a cgroup namespace first (after the spawner put it in its cgroup
    /// everywhere).</summary>
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
    /// <summary>The container's cgroup directory in each hierarchy, as the host sees them: the init bind-mounts its v1
    /// ones at /sys/fs/cgroup (a cgroupfs mount per container makes a superblock the next mount searches).</summary>
    public List<string> CgroupPaths { get; set; } = [];
    /// <summary>Fds below this (3 + --preserve-fds) are passed on to the container process.</summary>
    public int FirstPrivateFd { get; set; } = 3;
    /// <summary>Whether to report back before pivot_root so that the parent runs prestart/createRuntime
    /// hooks.</summary>
    public bool ParentHooks { get; set; }
    /// <summary>linux.seccomp compiled by the runtime (the spec sent to the init then carries no profile), or
    /// null.</summary>
    public byte[]? SeccompProgram { get; set; }
    public uint SeccompFlags { get; set; }
    /// <summary>The state passed to hooks the init runs (createContainer, startContainer).</summary>
    public State? HookState { get; set; }
}

/// <summary>How the init waits before it runs the process.</summary>
public enum InitMode : byte
{
    /// <summary>create: for start on the exec fifo.</summary>
    Create,
    /// <summary>run: for <see cref="SyncType.Start"/> on the sync socket.</summary>
    Run,
}

/// <summary>What a message on the sync socket says.</summary>
public enum SyncType : byte
{
    /// <summary>init → runtime: run the prestart and createRuntime hooks now.</summary>
    Hooks,
    /// <summary>runtime → init: the hooks ran.</summary>
    HooksDone,
    /// <summary>init → runtime: set up, waiting to run the process (<see cref="SyncMessage.Pid"/> is the
    /// init's).</summary>
    Ready,
    /// <summary>runtime → init (run): run the process.</summary>
    Start,
    /// <summary>Either way: setup failed (<see cref="SyncMessage.Message"/> says why).</summary>
    Error,
}

/// <summary>A message on the sync socket between the runtime and the init.</summary>
public sealed class SyncMessage
{
    public SyncType Type { get; set; }
    public string? Message { get; set; }
    /// <summary><see cref="SyncType.Ready"/>: the init's pid.</summary>
    public int Pid { get; set; }
    /// <summary><see cref="SyncType.Error"/>: the exit code the runtime exits with (0: the default, 1).</summary>
    public int ExitCode { get; set; }
}

/// <summary>Length-prefixed messages over a socket (the runtime ⇄ init channel), in <see cref="PlanCodec"/>'s binary
/// form.</summary>
public sealed class SyncChannel(SafeFd fd) : IDisposable
{
    public SafeFd Fd { get; } = fd;

    public void Send(InitPlan plan) => SendBytes(PlanCodec.Encode(plan));
    public void Send(SyncMessage m) => SendBytes(PlanCodec.Encode(m));
    public void Send(SyncType type, string? message = null) => Send(new SyncMessage { Type = type, Message = message });

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
        if (n < 0 || n > 64 << 20) throw new ContainerException(
            $"corrupt message on the init sync socket (length {n})");
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
