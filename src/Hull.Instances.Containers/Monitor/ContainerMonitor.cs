using System.Globalization;
using System.Text;
using System.Text.Json;
using Hull.Containers;
using Hull.Linux;
using Hull.Oci;

namespace Hull.Instances.Containers;

/// <summary>
/// The container monitor: one long-lived process per hulld state dir ("hulld monitor --state-dir DIR") that is the
/// parent of every container init. hulld asks it to create and start containers; it watches each init through a pidfd
/// (one epoll thread for all), and when one ends it writes the exit code into the instance dir (atomically) before it
/// reaps the init. It runs in its own session, so it outlives hulld (stop, crash, upgrade); hulld reconnects when it
/// starts. It exits by itself when it is the parent of no container and no hulld is connected.
/// Files in the state dir: monitor.sock (the socket, 0600), monitor.lock (flock: one monitor per state dir),
/// monitor.pid (the pid of the monitor holding the lock), monitor.log (its output).
/// </summary>
public static class ContainerMonitor
{
    /// <summary>Bumped whenever a request or reply other than hello/retire changes.</summary>
    public const int ProtocolVersion = 1;

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
                case "--ready-fd" when i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out var fd): readyFd = fd; i++; break;
                case "--help" or "-h": Console.WriteLine(Usage); return 0;
                default: Console.Error.WriteLine($"hulld monitor: unknown or incomplete option '{args[i]}'\n{Usage}"); return 2;
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
            if (ready is not null) { try { Sys.WriteAll(ready, Encoding.UTF8.GetBytes(msg)); } catch (LinuxException) { } }
            return 1;
        }
        if (ready is not null) { try { Sys.WriteAll(ready, "ok"u8); } catch (LinuxException) { } ready.Dispose(); }
        return server.Run();
    }

    internal static void Log(string message) =>
        Console.Error.WriteLine($"{DateTime.UtcNow:yyyy-MM-ddTHH:mm:ss.fffZ} monitor[{Environment.ProcessId}]: {message}");
}

sealed class MonitorServer(string stateDir)
{
    readonly object _gate = new();
    readonly ManualResetEventSlim _done = new();
    ContainerEngine _engine = null!;
    PidfdWatcher _watcher = null!;
    SafeFd? _lock;
    SafeFd? _listener;
    string _identity = "";
    int _connections, _live;
    bool _retired, _exiting;
    Timer? _idle;

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
            var other = File.Exists(ContainerMonitor.PidPath(stateDir)) ? File.ReadAllText(ContainerMonitor.PidPath(stateDir)).Trim() : "?";
            throw new IOException($"another monitor (pid {other}) holds {ContainerMonitor.LockPath(stateDir)} and does not answer on its socket");
        }
        File.WriteAllText(ContainerMonitor.PidPath(stateDir), Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "\n");
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
        ContainerMonitor.Log($"serving {ContainerMonitor.SocketPath(stateDir)} (protocol {ContainerMonitor.ProtocolVersion})");
        var accept = new Thread(AcceptLoop) { IsBackground = true, Name = "hull-monitor-accept" };
        accept.Start();
        _done.Wait();
        ContainerMonitor.Log("no containers and no hulld left: exiting");
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
                try
                {
                    var m = MonitorWire.Receive(conn, fds, buffer);
                    if (m is null) return;
                    MonitorWire.Send(conn, Handle(m, fds));
                }
                finally { foreach (var f in fds) f.Dispose(); }
            }
        }
        catch (Exception e) when (e is LinuxException or IOException) { ContainerMonitor.Log($"a connection failed: {e.Message}"); }
        finally
        {
            conn.Dispose();
            lock (_gate) { _connections--; MaybeExit(); }
        }
    }

    MonitorMessage Reply(string? error = null) => new()
    {
        Op = error is null ? "ok" : "error", Error = error, Version = ContainerMonitor.ProtocolVersion, Identity = _identity,
        Pid = Environment.ProcessId, Containers = Volatile.Read(ref _live),
    };

    MonitorMessage Handle(MonitorMessage m, List<SafeFd> fds)
    {
        switch (m.Op)
        {
            case "hello": return Reply();
            case "retire":
                lock (_gate)
                {
                    if (!_retired)
                    {
                        _retired = true;
                        // No new containers: a newer monitor takes the socket and the lock; this one stays the parent
                        // of its containers and exits after the last one.
                        MonitorInterop.Shutdown(_listener!);
                        File.Delete(ContainerMonitor.SocketPath(stateDir));
                        _listener!.Dispose();
                        _lock!.Dispose();
                        ContainerMonitor.Log($"retired by a hulld of another build; {_live} container(s) left to watch");
                    }
                }
                return Reply();
            case "create": return Create(m, fds);
            default: return Reply($"unknown request '{m.Op}' (this monitor speaks protocol {ContainerMonitor.ProtocolVersion})");
        }
    }

    MonitorMessage Create(MonitorMessage m, List<SafeFd> fds)
    {
        if (m.Version != ContainerMonitor.ProtocolVersion)
            return Reply($"protocol version {m.Version} is not this monitor's ({ContainerMonitor.ProtocolVersion})");
        lock (_gate) if (_retired) return Reply("this monitor is retired: connect again to reach the current one");
        if (m.Id is null || m.Bundle is null || m.Spec is null || m.ExitFile is null || fds.Count != 3)
            return Reply("create needs id, bundle, spec, exitFile and three descriptors (stdin, stdout, stderr)");
        Spec spec;
        try { spec = JsonSerializer.Deserialize(m.Spec, OciJson.Default.Spec) ?? throw new JsonException("null"); }
        catch (JsonException e) { return Reply($"the spec of '{m.Id}' is not valid JSON: {e.Message}"); }
        int pid;
        try
        {
            pid = _engine.Create(new CreateOptions { Id = m.Id, Bundle = m.Bundle, Spec = spec, Stdio = fds });
            try { _engine.Start(m.Id); }
            catch { _engine.Delete(m.Id, force: true); throw; }
        }
        catch (Exception e) when (e is ContainerException or LinuxException or IOException or SpawnException or Hull.Cgroups.CgroupException)
        {
            return Reply(e.Message);
        }
        var exitFile = m.ExitFile;
        var id = m.Id;
        try
        {
            // The init is our child: its pidfd stays valid until we reap it, even if it has exited already.
            var pidfd = Sys.PidfdOpen(pid);
            lock (_gate)
            {
                _watcher.Register(pidfd, () => Reaped(id, pid, pidfd, exitFile));
                _live++;
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

    /// <summary>On the watcher thread: records the exit code, then reaps (the file exists before the pid is gone).</summary>
    void Reaped(string id, int pid, SafeFd pidfd, string exitFile)
    {
        var code = MonitorInterop.TryWaitPidfd(pidfd, reap: false);
        if (code is null) { ContainerMonitor.Log($"{id}: pid {pid} reported ready but has not exited"); return; }
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
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { ContainerMonitor.Log($"{id}: writing {exitFile}: {e.Message}"); }
        MonitorInterop.TryWaitPidfd(pidfd, reap: true);
        ContainerMonitor.Log($"{id}: init (pid {pid}) exited with code {code}");
        lock (_gate)
        {
            _live--;
            MaybeExit();
        }
    }

    /// <summary>Under the gate: exits once no container is left to watch and no hulld is connected.</summary>
    void MaybeExit()
    {
        if (_connections == 0 && _live == 0) Exit();
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
