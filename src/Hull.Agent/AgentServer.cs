using System.Collections.Concurrent;
using System.Globalization;
using Hull.Agent.Protocol;
using Hull.Linux;

namespace Hull.Agent;

public sealed class AgentOptions
{
    /// <summary>Answer power requests by exiting instead of powering the machine off (for tests on a host).</summary>
    public bool SimulatePower { get; init; }
    public bool Verbose { get; init; }
}

/// <summary>
/// The agent's protocol engine: reads frames from the current host connection, runs each session, and writes
/// every frame through one lock (one write per frame, so frames never interleave). A Hello ends the sessions of
/// earlier connections: their processes are killed, unfinished pushes removed, and none of their frames is sent
/// after the Ready that answers the Hello.
/// </summary>
public sealed class AgentServer(Port port, AgentOptions options)
{
    public const string Version = "0.1.0";

    readonly object _writeLock = new();
    readonly ConcurrentDictionary<uint, AgentSession> _sessions = new();
    Stream? _out;

    public AgentOptions Options => options;

    public static void Log(string message) => Console.Error.WriteLine($"hull-agent: {message}");

    public void Run(CancellationToken ct)
    {
        Log($"version {Version} on {port.Describe}");
        var first = true;
        while (!ct.IsCancellationRequested)
        {
            Stream s;
            try { s = port.Next(ct); }
            catch (OperationCanceledException) { break; }
            lock (_writeLock) _out = s;
            if (first || port is not SerialPort) SendReady(0, 0);
            first = false;
            var reader = new FrameReader(s);
            try
            {
                while (true)
                {
                    var (outcome, f) = reader.ReadAsync(ct).AsTask().GetAwaiter().GetResult();
                    if (outcome == ReadOutcome.EndOfStream) break;
                    if (outcome == ReadOutcome.Synced) continue;
                    Dispatch(f);
                }
            }
            catch (IOException e) { if (options.Verbose) Log($"host channel: {e.Message}"); }
            catch (OperationCanceledException) { }
            lock (_writeLock) _out = null;
            if (options.Verbose) Log("host disconnected");
            if (port is not SerialPort) s.Dispose();
        }
        foreach (var session in _sessions.Values) session.Abort();
    }

    void Dispatch(Frame f)
    {
        if (f.Type == FrameType.Hello)
        {
            HelloMessage hello;
            try { hello = AgentJson.Decode(f.Payload, AgentJson.Default.HelloMessage); }
            catch (AgentProtocolException e) { Log(e.Message); return; }
            var ended = 0;
            foreach (var id in _sessions.Keys)
                if (_sessions.TryRemove(id, out var old)) { old.Abort(); ended++; }
            if (ended > 0 || options.Verbose) Log(
                $"hello from {hello.Client ?? "host"}: ended {ended} session(s) of the previous connection");
            SendReady(hello.Nonce, ended);
            return;
        }
        if (f.Session == 0) return;
        try
        {
            switch (f.Type)
            {
                case FrameType.Ping:
                    Send(null, FrameType.Pong, 0, f.Session,
                        AgentJson.Encode(Ready(0, 0), AgentJson.Default.ReadyMessage));
                    return;
                case FrameType.ExecStart:
                    Begin(f, new ExecSession(this, f.Session));
                    return;
                case FrameType.PushStart:
                    Begin(f, new PushSession(this, f.Session));
                    return;
                case FrameType.PullStart:
                    Begin(f, new PullSession(this, f.Session));
                    return;
                case FrameType.List:
                    foreach (var part in FileOps.List(AgentJson.Decode(f.Payload, AgentJson.Default.PathRequest).Path))
                        Send(null, FrameType.Result, 0, f.Session, part);
                    return;
                case FrameType.Stat or FrameType.Mkdir or FrameType.Remove or FrameType.Power:
                    var result = FileOps.Run(f.Type, f.Payload);
                    Send(null, FrameType.Result, 0, f.Session, result);
                    if (f.Type == FrameType.Power) Power(
                        AgentJson.Decode(f.Payload, AgentJson.Default.PowerRequest).Action);
                    return;
            }
            if (_sessions.TryGetValue(f.Session, out var s)) s.OnFrame(f);
        }
        catch (AgentFailure e) { SendError(f.Session, e.Message, e.Errno); }
        catch (AgentProtocolException e) { SendError(f.Session, e.Message, 0); }
    }

    void Begin(Frame f, AgentSession s)
    {
        if (!_sessions.TryAdd(f.Session, s)) throw new AgentFailure($"session {f.Session} is already in use",
            Errors.EBUSY);
        try { s.Start(f.Payload); }
        catch
        {
            _sessions.TryRemove(new KeyValuePair<uint, AgentSession>(f.Session, s));
            s.Abort();
            throw;
        }
    }

    internal void Finished(AgentSession s) => _sessions.TryRemove(new KeyValuePair<uint, AgentSession>(s.Id, s));

    void Power(string action)
    {
        var cmd = action switch
        {
            "poweroff" => GuestSys.LINUX_REBOOT_CMD_POWER_OFF,
            "reboot" => GuestSys.LINUX_REBOOT_CMD_RESTART,
            _ => 0u,
        };
        Log($"{action} requested by the host");
        if (options.SimulatePower)
        {
            Log($"{action} simulated: exiting");
            Environment.Exit(0);
        }
        foreach (var session in _sessions.Values) session.Abort();
        GuestSys.SyncAll();
        try { GuestSys.Reboot(cmd); }
        catch (LinuxException e) { Log($"{action} failed: {e.Message}"); }
    }

    ReadyMessage Ready(ulong nonce, int ended) => new()
    {
        Nonce = nonce,
        EndedSessions = ended,
        Guest = new GuestInfo
        {
            AgentVersion = Version,
            KernelRelease = ReadProc("/proc/sys/kernel/osrelease"),
            Hostname = ReadProc("/proc/sys/kernel/hostname"),
            UptimeSeconds = double.TryParse(ReadProc("/proc/uptime").Split(' ')[0], NumberStyles.Float,
                CultureInfo.InvariantCulture, out var up) ? up : 0,
            Transport = port.Name,
        },
    };

    static string ReadProc(string path)
    {
        try { return File.ReadAllText(path).Trim(); }
        catch (IOException) { return ""; }
    }

    void SendReady(ulong nonce, int ended)
    {
        var payload = AgentJson.Encode(Ready(nonce, ended), AgentJson.Default.ReadyMessage);
        var frame = Wire.Encode(FrameType.Ready, 0, 0, payload);
        var bytes = new byte[Wire.Sync.Length + frame.Length];
        Wire.Sync.CopyTo(bytes);
        frame.CopyTo(bytes, Wire.Sync.Length);
        Write(null, bytes);
    }

    internal void SendError(uint session, string message, int errno)
    {
        if (options.Verbose) Log($"session {session}: {message}");
        var m = new ErrorMessage { Message = message, Errno = errno,
            ErrnoName = errno == 0 ? null : Errors.Name(errno) };
        Send(null, FrameType.Error, 0, session, AgentJson.Encode(m, AgentJson.Default.ErrorMessage));
    }

    /// <summary>Sends one frame. Frames of a session that was ended are dropped; so is everything while no host is
    /// connected.</summary>
    internal bool Send(AgentSession? s, FrameType type, byte stream, uint session, ReadOnlySpan<byte> payload) =>
        Write(s, Wire.Encode(type, stream, session, payload));

    bool Write(AgentSession? s, byte[] bytes)
    {
        lock (_writeLock)
        {
            if (s is { Closed: true } || _out is null) return false;
            try
            {
                _out.Write(bytes);
                _out.Flush();
                return true;
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException)
            {
                if (options.Verbose) Log($"write to the host: {e.Message}");
                return false;
            }
        }
    }

    /// <summary>Marks a session closed under the write lock: after this returns, none of its frames is
    /// written.</summary>
    internal void Close(AgentSession s)
    {
        lock (_writeLock) s.Closed = true;
    }
}

/// <summary>An operation failed; its message goes to the host as an Error frame.</summary>
public sealed class AgentFailure(string message, int errno = 0) : Exception(message)
{
    public int Errno { get; } = errno;

    public static AgentFailure From(string what, LinuxException e) =>
        new($"{what}: {Errors.Describe(e.Errno)}", e.Errno);
}

/// <summary>One multiplexed operation in the agent.</summary>
public abstract class AgentSession(AgentServer agent, uint id)
{
    public uint Id => id;
    protected AgentServer Agent => agent;
    /// <summary>Set (under the write lock) when the session ended; its frames are dropped from then on.</summary>
    public volatile bool Closed;

    public abstract void Start(byte[] payload);
    public abstract void OnFrame(Frame f);
    /// <summary>Ends the session at once: kills what it runs, removes what it half made. Idempotent.</summary>
    public abstract void Abort();

    protected bool Send(FrameType type, byte stream, ReadOnlySpan<byte> payload) =>
        agent.Send(this, type, stream, id, payload);

    /// <summary>Ends the session with an error frame.</summary>
    protected void Fail(string message, int errno)
    {
        if (Closed) return;
        agent.SendError(id, message, errno);
        Abort();
        agent.Finished(this);
    }

    /// <summary>Runs a blocking loop on its own thread (the agent's I/O threads; small stacks).</summary>
    protected static Thread StartThread(string name, Action body)
    {
        var t = new Thread(() => body(), 256 * 1024) { IsBackground = true, Name = name };
        t.Start();
        return t;
    }
}
