using System.Globalization;
using System.Text;
using System.Text.Json;
using Hull.Containers;
using Hull.Linux;
using Hull.Oci;

namespace Hull.Instances.Containers;

/// <summary>
/// The container monitor: one long-lived process per hulld state dir ("hulld monitor --state-dir DIR") that is the
/// parent of every container init and the only process of hulld's that runs the container engine on it. hulld asks
/// it to create, start, signal, pause, resume, update, measure and delete containers (<see cref="MonitorOp"/>); it
/// watches each init through a pidfd (one epoll thread for all), and when one ends it writes the exit code into the
/// instance dir (atomically: the record hulld reads when it was away), pushes an exit event on every connection that
/// said hello, then reaps the init. It runs in its own session, so it outlives hulld (stop, crash, upgrade); hulld
/// reconnects when it starts. It exits by itself when it is the parent of no container and no hulld is connected (a
/// retired one: after its last container).
/// Files in the state dir: monitor.sock (the socket, 0600), monitor.lock (flock: one monitor per state dir),
/// monitor.pid (the pid of the monitor holding the lock), monitor.log (its output).
/// </summary>
public static class ContainerMonitor
{
    /// <summary>Bumped whenever a request or reply other than hello/retire changes.</summary>
    public const int ProtocolVersion = 3;

    public static string SocketPath(string stateDir) => Path.Combine(stateDir, "monitor.sock");
    public static string LockPath(string stateDir) => Path.Combine(stateDir, "monitor.lock");
    public static string LogPath(string stateDir) => Path.Combine(stateDir, "monitor.log");
    public static string PidPath(string stateDir) => Path.Combine(stateDir, "monitor.pid");

    /// <summary>The identity of this build: its executable file (and, on a JIT host, this assembly's file).</summary>
    public static string Identity
    {
        get
        {
            using var exe = Sys.Open("/proc/self/exe", O.RDONLY);
            var id = MonitorInterop.FileIdentity(exe);
            // On a JIT host the code lives in this library beside the executable (NativeAOT: no such file).
            var asm = Path.Combine(AppContext.BaseDirectory, "Hull.Instances.Containers.dll");
            if (File.Exists(asm))
            {
                using var a = Sys.Open(asm, O.RDONLY);
                id += "+" + MonitorInterop.FileIdentity(a);
            }
            return id;
        }
    }

    public const string Usage = "usage: hulld monitor --state-dir DIR [--ready-fd N]\n" +
        "  The container monitor (started by hulld when needed): the parent of every container init of one state dir.";

    /// <summary>Entry point of "hulld monitor ...".</summary>
    public static int Run(string[] args)
    {
        string? stateDir = null;
        var readyFd = -1;
        for (var i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--state-dir" when i + 1 < args.Length: stateDir = Path.GetFullPath(args[++i]); break;
                case "--ready-fd" when i + 1 < args.Length
                    && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out var fd): readyFd = fd; i++; break;
                case "--help" or "-h": Console.WriteLine(Usage); return 0;
                default: Console.Error.WriteLine("hulld monitor: unknown or incomplete option " +
                    $"'{args[i]}'\n{Usage}"); return 2;
            }
        }
        if (stateDir is null) { Console.Error.WriteLine($"hulld monitor: --state-dir is required\n{Usage}"); return 2; }
        using var ready = readyFd >= 0 ? new SafeFd(readyFd) : null;
        var server = new MonitorServer(stateDir);
        try { server.Open(); }
        catch (Exception e) when (e is LinuxException or IOException or InstanceException)
        {
            var msg = $"the container monitor for {stateDir} cannot start: {e.Message}";
            Log(msg);
            if (ready is not null) { try { Sys.WriteAll(ready, Encoding.UTF8.GetBytes(msg)); } catch (
                LinuxException) { } }
            return 1;
        }
        if (ready is not null) { try { Sys.WriteAll(ready, "ok"u8); } catch (LinuxException) { } ready.Dispose(); }
        return server.Run();
    }

    internal static void Log(string message) =>
        Console.Error.WriteLine($"{DateTime.UtcNow:yyyy-MM-ddTHH:mm:ss.fffZ} monitor[{Environment.ProcessId}]: " +
            $"{message}");
}

sealed class MonitorServer(string stateDir)
{
    readonly object _gate = new();
    readonly ManualResetEventSlim _done = new();
    /// <summary>The inits this monitor is the parent of and has not reaped yet, by container id.</summary>
    readonly Dictionary<string, Init> _inits = new(StringComparer.Ordinal);
    /// <summary>Connections that said hello: they get the pushed events.</summary>
    readonly List<SafeFd> _subscribers = [];
    /// <summary>The /dev/console of each system container, by container id (MonitorConsole).</summary>
    readonly Dictionary<string, MonitorConsole> _consoles = new(StringComparer.Ordinal);
    ContainerEngine _engine = null!;
    PidfdWatcher _watcher = null!;
    SafeFd? _lock;
    SafeFd? _listener;
    string _identity = "";
    int _connections;
    bool _retired, _exiting;
    Timer? _idle;

    sealed class Init(int pid)
    {
        public int Pid { get; } = pid;
        public ManualResetEventSlim Reaped { get; } = new();
    }

    public void Open()
    {
        Directory.CreateDirectory(stateDir);
        var containers = Path.Combine(stateDir, "containers");
        Directory.CreateDirectory(containers);
        _engine = new ContainerEngine(new StateStore(containers), HostCgroups.Instance);
        _identity = ContainerMonitor.Identity;
        _lock = Sys.Open(ContainerMonitor.LockPath(stateDir), O.RDWR | O.CREAT, 0b110_000_000);
        // A monitor that is exiting (idle) or retiring holds the lock briefly; a live one would have answered hulld.
        var locked = false;
        for (var i = 0; i < 100 && !(locked = DaemonInterop.TryLockExclusive(_lock)); i++) Thread.Sleep(50);
        if (!locked)
        {
            var pidPath = ContainerMonitor.PidPath(stateDir);
            var other = File.Exists(pidPath) ? File.ReadAllText(pidPath).Trim() : "?";
            throw new IOException($"another monitor (pid {other}) holds {ContainerMonitor.LockPath(stateDir)} and " +
                "does not answer on its socket");
        }
        // Written whole (temp file + rename): a reader never sees it empty.
        var pidFile = ContainerMonitor.PidPath(stateDir);
        File.WriteAllText(pidFile + ".tmp", Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "\n");
        File.Move(pidFile + ".tmp", pidFile, overwrite: true);
        var sock = ContainerMonitor.SocketPath(stateDir);
        File.Delete(sock); // stale: we hold the lock, so no live monitor serves it
        _listener = MonitorInterop.Listen(sock);
        Sys.Check(Libc.chmod(sock, 0b110_000_000), $"chmod {sock}");
        _watcher = new PidfdWatcher("hull-monitor-reaper");
        // Started but never contacted (hulld died right after starting it): do not linger.
        _idle = new Timer(_ => { lock (_gate) MaybeExit(); }, null, TimeSpan.FromSeconds(60), Timeout.InfiniteTimeSpan);
    }

    public int Run()
    {
        ContainerMonitor.Log($"serving {ContainerMonitor.SocketPath(stateDir)} (protocol " +
            $"{ContainerMonitor.ProtocolVersion})");
        var accept = new Thread(AcceptLoop) { IsBackground = true, Name = "hull-monitor-accept" };
        accept.Start();
        _done.Wait();
        ContainerMonitor.Log(_retired ? "retired, and its last container has ended: exiting"
            : "no containers and no hulld left: exiting");
        return 0;
    }

    void AcceptLoop()
    {
        var listener = _listener!;
        while (true)
        {
            SafeFd? conn;
            try { conn = MonitorInterop.Accept(listener); }
            catch (LinuxException e) { ContainerMonitor.Log($"accept: {e.Message}"); Thread.Sleep(100); continue; }
            if (conn is null) return;
            try
            {
                if (MonitorInterop.PeerCredentials(conn).Uid != Libc.geteuid()) { conn.Dispose(); continue; }
            }
            catch (LinuxException) { conn.Dispose(); continue; }
            lock (_gate)
            {
                if (_exiting) { conn.Dispose(); return; }
                _connections++;
            }
            new Thread(() => Serve(conn)) { IsBackground = true, Name = "hull-monitor-conn" }.Start();
        }
    }

    void Serve(SafeFd conn)
    {
        var buffer = new byte[MonitorWire.MaxMessage];
        try
        {
            while (true)
            {
                var fds = new List<SafeFd>();
                var replyFds = new List<SafeFd>();
                try
                {
                    var m = MonitorWire.Receive(conn, fds, buffer);
                    if (m is null) return;
                    var reply = Handle(m, fds, replyFds);
                    // Events go out under the gate too: a reply and an event never interleave within a message.
                    lock (_gate)
                    {
                        MonitorWire.Send(conn, reply, replyFds);
                        if (m.Op == MonitorOp.Hello && reply.Op == MonitorOp.Ok) _subscribers.Add(conn);
                    }
                }
                finally { foreach (var f in fds.Concat(replyFds)) f.Dispose(); }
            }
        }
        catch (Exception e) when (e is LinuxException or IOException) { ContainerMonitor.Log(
            $"a connection failed: {e.Message}"); }
        finally
        {
            lock (_gate)
            {
                _subscribers.Remove(conn);
                conn.Dispose();
                _connections--;
                MaybeExit();
            }
        }
    }

    MonitorMessage Reply(string? error = null) => new()
    {
        Op = error is null ? MonitorOp.Ok : MonitorOp.Error, Error = error, Version = ContainerMonitor.ProtocolVersion,
        Identity = _identity, Pid = Environment.ProcessId, Containers = Live,
    };

    int Live { get { lock (_gate) return _inits.Count; } }

    MonitorMessage Handle(MonitorMessage m, List<SafeFd> fds, List<SafeFd> replyFds)
    {
        switch (m.Op)
        {
            case MonitorOp.Hello: return Reply();
            case MonitorOp.Retire:
                lock (_gate)
                {
                    if (!_retired)
                    {
                        _retired = true;
                        // No new containers: a newer monitor takes the socket and the lock; this one stays the parent
                        // of its containers (and tells the hulld that retired it when each ends) and exits after the
                        // last one.
                        MonitorInterop.Shutdown(_listener!);
                        File.Delete(ContainerMonitor.SocketPath(stateDir));
                        _listener!.Dispose();
                        _lock!.Dispose();
                        ContainerMonitor.Log($"retired by a hulld of another build; {_inits.Count} container(s) left " +
                            "to watch");
                    }
                }
                return Reply();
        }
        if (m.Version != ContainerMonitor.ProtocolVersion)
            return Reply($"protocol version {m.Version} is not this monitor's ({ContainerMonitor.ProtocolVersion})");
        if (m.Id is null) return Reply($"{m.Op} needs the container's id");
        try
        {
            switch (m.Op)
            {
                case MonitorOp.Create: return Create(m, fds);
                case MonitorOp.State: return State(m.Id);
                case MonitorOp.Kill: _engine.Kill(m.Id, m.Signal, m.All); return Reply();
                case MonitorOp.Pause: _engine.Pause(m.Id); return Reply();
                case MonitorOp.Resume: _engine.Resume(m.Id); return Reply();
                case MonitorOp.Update:
                    _engine.Update(m.Id, JsonSerializer.Deserialize(m.Spec ?? "null", OciJson.Default.Resources)
                        ?? throw new ContainerException("update needs the resources"));
                    return Reply();
                case MonitorOp.Stats: return Stats(m.Id);
                case MonitorOp.Delete: return Delete(m.Id);
                case MonitorOp.Console:
                    MonitorConsole? console;
                    lock (_gate) _consoles.TryGetValue(m.Id, out console);
                    if (console is null) return Reply($"container '{m.Id}' has no console held by this monitor (only " +
                        "a system container has one)");
                    replyFds.Add(console.Attach());
                    return Reply();
                case MonitorOp.Exec:
                    var process = _engine.ExecProcess(m.Id, m.Command ?? [], false, m.Env, m.Cwd, m.User, null);
                    var r = Reply();
                    r.Spec = JsonSerializer.Serialize(process, OciJson.Default.Process);
                    return r;
                default:
                    return Reply($"unknown request '{m.Op}' (this monitor speaks protocol " +
                        $"{ContainerMonitor.ProtocolVersion})");
            }
        }
        catch (Exception e) when (e is ContainerException or LinuxException or IOException or JsonException
            or SpawnException or UnauthorizedAccessException or Hull.Cgroups.CgroupException)
        {
            return Reply(e.Message);
        }
    }

    MonitorMessage State(string id)
    {
        var r = Reply();
        if (!_engine.Store.Exists(id)) return r;
        var rec = _engine.Store.Load(id);
        r.Status = _engine.Status(rec);
        r.Pid = rec.Pid;
        r.PidStartTime = rec.PidStartTime;
        return r;
    }

    MonitorMessage Stats(string id)
    {
        var r = Reply();
        var s = new MonitorStats();
        r.Stats = s;
        if (!_engine.Store.Exists(id) || _engine.Status(_engine.Store.Load(id)) == ContainerStatus.Stopped) return r;
        using var doc = JsonDocument.Parse(_engine.StatsJson(id));
        var root = doc.RootElement;
        static long Get(JsonElement e, params string[] path)
        {
            foreach (var p in path)
                if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(p, out e)) return 0;
            return e.ValueKind == JsonValueKind.Number ? (long)e.GetUInt64() : 0;
        }
        s.CpuUsageNs = Get(root, "cpu", "usage", "total");
        s.MemoryBytes = Get(root, "memory", "usage", "usage");
        s.Pids = Get(root, "pids", "current");
        if (root.TryGetProperty("blkio", out var blkio) && blkio.TryGetProperty("ioServiceBytesRecursive", out var io)
            && io.ValueKind == JsonValueKind.Array)
        {
            foreach (var e in io.EnumerateArray())
            {
                var op = e.TryGetProperty("op", out var o) ? o.GetString() : null;
                if (string.Equals(op, "read", StringComparison.OrdinalIgnoreCase)) s.IoReadBytes += Get(e, "value");
                else if (string.Equals(op, "write", StringComparison.OrdinalIgnoreCase)) s.IoWriteBytes += Get(e,
                    "value");
            }
        }
        return r;
    }

    /// <summary>Removes a container. An init of ours still alive is killed and reaped (its exit recorded) first, so
    /// the engine never reaps a child the watcher is waiting for.</summary>
    MonitorMessage Delete(string id)
    {
        Init? init;
        lock (_gate) _inits.TryGetValue(id, out init);
        if (init is not null)
        {
            try { _engine.Kill(id, Signals.SIGKILL, all: true); } catch (ContainerException) { }
            if (!init.Reaped.Wait(TimeSpan.FromSeconds(10)))
                return Reply($"container \"{id}\" (pid {init.Pid}) did not die within 10 s of SIGKILL; try again");
        }
        _engine.Delete(id, force: true);
        return Reply();
    }

    MonitorMessage Create(MonitorMessage m, List<SafeFd> fds)
    {
        lock (_gate) if (_retired) return Reply("this monitor is retired: connect again to reach the current one");
        if (m.Id is null || m.Bundle is null || m.Spec is null || m.ExitFile is null || fds.Count != 3)
            return Reply("create needs id, bundle, spec, exitFile and three descriptors (stdin, stdout, stderr)");
        Spec spec;
        try { spec = JsonSerializer.Deserialize(m.Spec, OciJson.Default.Spec) ?? throw new JsonException("null"); }
        catch (JsonException e) { return Reply($"the spec of '{m.Id}' is not valid JSON: {e.Message}"); }
        // A terminal: the init sends the master of /dev/console's pty on this socket pair (MonitorConsole).
        var (consoleMine, consoleTheirs) = spec.Process?.Terminal == true ? Sys.SocketPair() : (null, null);
        int pid;
        using (consoleMine) using (consoleTheirs)
        {
            pid = _engine.Create(new CreateOptions { Id = m.Id, Bundle = m.Bundle, Spec = spec, Stdio = fds,
                ConsoleConnection = consoleTheirs });
            MonitorConsole? console = null;
            try
            {
                if (consoleMine is not null)
                {
                    console = new MonitorConsole(m.Id, UnixSockets.ReceiveFd(consoleMine).Fd, Dup(fds[1]));
                    lock (_gate) _consoles[m.Id] = console;
                }
                if (m.Nics is { Count: > 0 } nics) ContainerNics.Configure(pid, nics);
                _engine.Start(m.Id);
            }
            catch
            {
                lock (_gate) _consoles.Remove(m.Id);
                _engine.Delete(m.Id, force: true);
                console?.End(TimeSpan.Zero);
                throw;
            }
        }
        var exitFile = m.ExitFile;
        var id = m.Id;
        try
        {
            // The init is our child: its pidfd stays valid until we reap it, even if it has exited already.
            var pidfd = Sys.PidfdOpen(pid);
            var init = new Init(pid);
            lock (_gate)
            {
                _inits[id] = init;
                try { _watcher.Register(pidfd, () => Reaped(id, init, pidfd, exitFile)); }
                catch { _inits.Remove(id); throw; }
            }
        }
        catch (LinuxException e)
        {
            try { _engine.Delete(id, force: true); } catch (ContainerException) { }
            return Reply($"watching the init of '{id}' (pid {pid}): {e.Message}");
        }
        var r = Reply();
        r.Pid = pid;
        return r;
    }

    /// <summary>On the watcher thread: records the exit code, tells every hulld, then reaps (the record exists before
    /// the pid is gone).</summary>
    void Reaped(string id, Init init, SafeFd pidfd, string exitFile)
    {
        var pid = init.Pid;
        var code = MonitorInterop.TryWaitPidfd(pidfd, reap: false);
        if (code is null) { ContainerMonitor.Log($"{id}: pid {pid} reported ready but has not exited"); return; }
        // Its last console output is in console.log before the exit is: a start that failed shows why.
        MonitorConsole? console;
        lock (_gate) _consoles.Remove(id, out console);
        if (console is not null && !console.End(TimeSpan.FromSeconds(2)))
            ContainerMonitor.Log($"{id}: the console is still open 2 s after the init ended");
        try
        {
            if (Directory.Exists(Path.GetDirectoryName(exitFile)))
            {
                var tmp = exitFile + ".tmp";
                // A new file (never through a symlink left in the instance dir), renamed over the old one.
                File.Delete(tmp);
                using (var f = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write))
                    f.Write(Encoding.UTF8.GetBytes(code.Value.ToString(CultureInfo.InvariantCulture) + "\n"));
                File.Move(tmp, exitFile, overwrite: true);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { ContainerMonitor.Log(
            $"{id}: writing {exitFile}: {e.Message}"); }
        MonitorInterop.TryWaitPidfd(pidfd, reap: true);
        ContainerMonitor.Log($"{id}: init (pid {pid}) exited with code {code}");
        lock (_gate)
        {
            if (_inits.TryGetValue(id, out var cur) && ReferenceEquals(cur, init)) _inits.Remove(id);
            init.Reaped.Set();
            var ev = new MonitorMessage
            {
                Op = MonitorOp.Exit, Version = ContainerMonitor.ProtocolVersion, Id = id, Pid = pid, ExitCode = code,
            };
            foreach (var s in _subscribers)
            {
                // A hulld that went away is dropped by its connection's thread; it reads the record on disk.
                try { MonitorWire.Send(s, ev); }
                catch (LinuxException e) { ContainerMonitor.Log($"{id}: telling a hulld of the exit: {e.Message}"); }
            }
            MaybeExit();
        }
    }

    static SafeFd Dup(SafeFd fd)
    {
        var d = Libc.fcntl(fd.Fd, O.F_DUPFD_CLOEXEC, 3);
        return d >= 0 ? new SafeFd(d) : throw LinuxException.FromLastError("dup");
    }

    /// <summary>Under the gate: exits once no container is left to watch and no hulld is connected (retired: once no
    /// container is left; the hulld that retired it holds a connection only to hear of their exits).</summary>
    void MaybeExit()
    {
        if (_inits.Count == 0 && (_connections == 0 || _retired)) Exit();
    }

    void Exit()
    {
        if (_exiting) return;
        _exiting = true;
        _idle?.Dispose();
        if (!_retired)
        {
            MonitorInterop.Shutdown(_listener!);
            File.Delete(ContainerMonitor.SocketPath(stateDir));
        }
        _done.Set();
    }
}
