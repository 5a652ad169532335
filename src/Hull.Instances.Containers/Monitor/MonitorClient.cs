using System.Collections;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Hull.Containers;
using Hull.Linux;
using Hull.Oci;

namespace Hull.Instances.Containers;

/// <summary>
/// hulld's side of the container monitor (<see cref="ContainerMonitor"/>): finds the monitor of its state dir or
/// starts one (in its own session, so it outlives hulld), retires a monitor of another build, holds one connection
/// open while hulld runs (the monitor does not exit while a hulld is connected) and restarts the monitor when that
/// connection drops.
/// </summary>
public sealed class MonitorClient : IDisposable
{
    readonly string _stateDir;
    readonly IReadOnlyList<string> _command;
    readonly object _gate = new();
    SafeFd? _hold;
    int _pid;
    volatile bool _disposed;
    /// <summary>The monitors whose events this hulld hears: the current one and those it retired that still have
    /// containers.</summary>
    readonly HashSet<int> _monitors = [];
    readonly List<Waiter> _waiters = [];
    readonly Lazy<PidfdWatcher> _orphans = new(() => new PidfdWatcher("hulld-container-exits"));

    /// <param name="command">The program and arguments that run the monitor; "--state-dir DIR --ready-fd 3" are
    /// appended.
    /// Default: this executable with "monitor" (hulld's monitor mode).</param>
    public MonitorClient(string stateDir, IReadOnlyList<string>? command = null)
    {
        _stateDir = Path.GetFullPath(stateDir);
        _command = command ?? [Environment.ProcessPath ?? "/proc/self/exe", "monitor"];
    }

    /// <summary>The pid of the monitor this hulld is connected to (0: none yet).</summary>
    public int Pid { get { lock (_gate) return _pid; } }

    public bool IsConnected { get { lock (_gate) return _hold is not null; } }

    /// <summary>Creates and starts a container through the monitor; returns the init's pid.</summary>
    public int CreateAndStart(string id, string bundle, Spec spec, string exitFile, IReadOnlyList<SafeFd> stdio,
        List<NicSpec>? nics = null) =>
        Request(new MonitorMessage
        {
            Op = MonitorOp.Create, Id = id, Bundle = bundle, ExitFile = exitFile, Nics = nics,
            Spec = JsonSerializer.Serialize(spec, OciJson.Default.Spec),
        }, $"starting container '{id}'", stdio).Pid;

    /// <summary>A container's status, its init's pid and start time; null if the engine has no such
    /// container.</summary>
    public (ContainerStatus Status, int Pid, ulong StartTime)? State(string id)
    {
        var r = Request(new MonitorMessage { Op = MonitorOp.State, Id = id }, $"reading the state of container '{id}'");
        return r.Status is { } s ? (s, r.Pid, r.PidStartTime) : null;
    }

    /// <summary>A signal to the container's init, or with <paramref name="all"/> to every process of its
    /// cgroup.</summary>
    public void Kill(string id, int signal, bool all) =>
        Request(new MonitorMessage { Op = MonitorOp.Kill, Id = id, Signal = signal, All = all }, Doing("signal", id));

    public void Pause(string id) => Request(new MonitorMessage { Op = MonitorOp.Pause, Id = id }, Doing("pause", id));

    public void Resume(string id) => Request(new MonitorMessage { Op = MonitorOp.Resume, Id = id },
        Doing("resume", id));

    public void Update(string id, Resources resources) => Request(new MonitorMessage
    {
        Op = MonitorOp.Update, Id = id, Spec = JsonSerializer.Serialize(resources, OciJson.Default.Resources),
    }, Doing("update", id));

    public MonitorStats Stats(string id) =>
        Request(new MonitorMessage { Op = MonitorOp.Stats, Id = id }, Doing("measure", id)).Stats ?? new MonitorStats();

    /// <summary>Removes the container (an init still alive is killed, and its exit recorded, first).</summary>
    public void Delete(string id) => Request(new MonitorMessage { Op = MonitorOp.Delete, Id = id },
        Doing("delete", id));

    /// <summary>The process of an exec: the container's own process settings with this command, env, cwd and user.
    /// </summary>
    public Hull.Oci.Process ExecProcess(string id, List<string> command, List<string> env, string? cwd, string? user)
    {
        var r = Request(new MonitorMessage { Op = MonitorOp.Exec, Id = id, Command = command, Env = env, Cwd = cwd,
            User = user },
            Doing("prepare an exec in", id));
        return JsonSerializer.Deserialize(r.Spec ?? "null", OciJson.Default.Process)
            ?? throw new MonitorException($"the container monitor prepared no process for the exec in '{id}'");
    }

    /// <summary>A stream socket on the container's /dev/console (a system container's, held by the monitor): reads
    /// are its output from now on, writes its input. The caller owns it.</summary>
    public SafeFd AttachConsole(string id)
    {
        var got = new List<SafeFd>();
        Request(new MonitorMessage { Op = MonitorOp.Console, Id = id }, Doing("attach the console of", id), keep: got);
        if (got.Count == 1) return got[0];
        foreach (var f in got) f.Dispose();
        throw new MonitorException($"the container monitor sent no console for container '{id}'");
    }

    static string Doing(string verb, string id) => $"asking the container monitor to {verb} container '{id}'";

    /// <summary>
    /// Waits until the init <paramref name="pid"/> (started at <paramref name="startTime"/>) of container
    /// <paramref name="id"/> has ended, and returns its exit code: the one its monitor pushes (or, for an init that has
    /// ended already, the record <paramref name="recorded"/> reads from disk); null when nobody could see it (its
    /// monitor is gone). An init whose parent is no monitor this hulld is connected to is watched through a pidfd.
    /// </summary>
    public async Task<int?> WaitExitAsync(string id, int pid, ulong startTime, Func<int?> recorded,
        CancellationToken ct)
    {
        try { Ensure(); } catch (InstanceException) { }
        var w = new Waiter(id, pid);
        lock (_gate) _waiters.Add(w);
        try
        {
            // The monitor writes the record, then pushes the event: a record found after registering is this exit's
            // (the driver removes the record before each start), and an exit after registering is pushed.
            if (recorded() is { } done) return done;
            var st = ProcFs.Stat(pid);
            if (st is null || st.Value.StartTime != startTime) return recorded();
            bool ours;
            lock (_gate)
            {
                ours = _monitors.Contains(st.Value.Parent);
                if (ours) w.Monitor = st.Value.Parent;
            }
            if (ours && await w.Exit.Task.WaitAsync(ct) is { Exited: true } ev) return ev.Code ?? recorded();
            if (recorded() is { } last) return last;
            // Not (or no longer) a monitor's child: its monitor was killed, so nobody records its code and only its
            // end is waited for.
            SafeFd pidfd;
            try { pidfd = Sys.PidfdOpen(pid); }
            catch (LinuxException) { return recorded(); }
            if (!ProcFs.IsAlive(pid, startTime)) { pidfd.Dispose(); return recorded(); }
            var exited = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var key = _orphans.Value.Register(pidfd, () => exited.TrySetResult());
            try { await exited.Task.WaitAsync(ct); }
            finally { _orphans.Value.Unregister(key); }
            return recorded();
        }
        finally { lock (_gate) _waiters.Remove(w); }
    }

    sealed class Waiter(string id, int pid)
    {
        public string Id { get; } = id;
        public int Pid { get; } = pid;
        /// <summary>The pid of the monitor that is the init's parent (0: not yet known).</summary>
        public int Monitor { get; set; }
        /// <summary>Exited: the monitor saw the init end (Code: its exit code); not Exited: the monitor went away.
        /// </summary>
        public TaskCompletionSource<(bool Exited, int? Code)> Exit { get; } =
            new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <summary>One request on a connection of its own; returns the ok reply or throws with the monitor's error.
    /// </summary>
    /// <param name="keep">Takes the descriptors an ok reply carries (otherwise closed).</param>
    MonitorMessage Request(MonitorMessage req, string doing, IReadOnlyList<SafeFd>? fds = null)
        => Request(req, doing, null, fds);

    MonitorMessage Request(MonitorMessage req, string doing, List<SafeFd>? keep, IReadOnlyList<SafeFd>? fds = null)
    {
        req.Version = ContainerMonitor.ProtocolVersion;
        for (var attempt = 0; ; attempt++)
        {
            Ensure();
            MonitorMessage? reply;
            try
            {
                using var conn = MonitorInterop.Connect(ContainerMonitor.SocketPath(_stateDir));
                MonitorWire.Send(conn, req, fds);
                // A request takes milliseconds; a monitor that does not answer in minutes is hung (stopped, stuck).
                if (!Sys.WaitPidfd(conn, 300_000))
                    throw new InstanceException($"the container monitor (pid {Pid}) did not answer within 5 minutes " +
                        $"while {doing}; see {ContainerMonitor.LogPath(_stateDir)}", 500);
                var got = new List<SafeFd>();
                reply = MonitorWire.Receive(conn, got, new byte[64 << 10]);
                if (keep is not null && reply?.Op == MonitorOp.Ok) keep.AddRange(got);
                else foreach (var f in got) f.Dispose();
            }
            catch (LinuxException) when (attempt == 0) { Lost(); continue; }
            catch (LinuxException e)
            {
                throw new InstanceException($"{doing}: {e.Message}; see {ContainerMonitor.LogPath(_stateDir)}", 500);
            }
            if (reply is null)
            {
                // The monitor died meanwhile (its containers, if any, are re-parented; hulld cleans up on error).
                if (attempt == 0) { Lost(); continue; }
                throw new InstanceException($"the container monitor went away while {doing}; see " +
                    ContainerMonitor.LogPath(_stateDir), 500);
            }
            if (reply.Op == MonitorOp.Error)
            {
                if (attempt == 0 && reply.Error?.Contains("retired",
                    StringComparison.Ordinal) == true) { Lost(); continue; }
                throw new MonitorException(req.Op == MonitorOp.Create
                    ? $"starting container '{req.Id}' failed: {reply.Error}"
                    : reply.Error ?? "the container monitor failed without saying why");
            }
            return reply;
        }
    }

    /// <summary>Drops the held connection (its thread closes it) so that the next <see cref="Ensure"/> looks
    /// again.</summary>
    void Lost()
    {
        lock (_gate)
        {
            if (_hold is not null) MonitorInterop.Shutdown(_hold);
            _hold = null;
        }
    }

    /// <summary>Connects to the monitor, starting (or replacing) it if needed. Thread-safe; cheap when
    /// connected.</summary>
    public void Ensure()
    {
        lock (_gate)
        {
            if (_disposed) throw new ObjectDisposedException(nameof(MonitorClient));
            if (_hold is not null) return;
            var identity = ContainerMonitor.Identity;
            for (var attempt = 0; attempt < 3; attempt++)
            {
                var (conn, hello) = TryHello();
                if (conn is null) { Spawn(); continue; }
                if (hello!.Op == MonitorOp.Ok && hello.Version == ContainerMonitor.ProtocolVersion
                    && hello.Identity == identity)
                {
                    Hold(conn, hello.Pid);
                    return;
                }
                // Another build (an upgrade or a downgrade): it keeps its containers and exits after the last one;
                // a monitor of this build takes over the socket for new ones.
                DriverLog.Info($"retiring the container monitor (pid {hello.Pid}, protocol {hello.Version}) of " +
                    "another " +
                    $"build; it keeps watching its {hello.Containers} container(s)");
                var listen = false;
                try
                {
                    MonitorWire.Send(conn, new MonitorMessage { Op = MonitorOp.Retire,
                        Version = ContainerMonitor.ProtocolVersion });
                    var retired = MonitorWire.Receive(conn, [], new byte[64 << 10]);
                    // One of this protocol pushes the exits of the containers it keeps on this connection.
                    listen = retired is { Op: MonitorOp.Ok, Containers: > 0 }
                        && hello.Version == ContainerMonitor.ProtocolVersion;
                }
                catch (Exception e) when (e is LinuxException or IOException) { }
                if (listen) Listen(conn, hello.Pid, current: false);
                else conn.Dispose();
                Spawn();
            }
            throw new InstanceException($"cannot reach the container monitor of {_stateDir}; see " +
                $"{ContainerMonitor.LogPath(_stateDir)}", 500);
        }
    }

    (SafeFd? Conn, MonitorMessage? Hello) TryHello()
    {
        SafeFd? conn = null;
        try
        {
            conn = MonitorInterop.Connect(ContainerMonitor.SocketPath(_stateDir));
            MonitorWire.Send(conn, new MonitorMessage { Op = MonitorOp.Hello,
                Version = ContainerMonitor.ProtocolVersion });
            if (!Sys.WaitPidfd(conn, 10_000)) { conn.Dispose(); return (null, null); } // hung: starting another says so
            var hello = MonitorWire.Receive(conn, [], new byte[64 << 10]);
            if (hello is null) { conn.Dispose(); return (null, null); }
            return (conn, hello);
        }
        catch (Exception e) when (e is LinuxException or IOException)
        {
            conn?.Dispose();
            return (null, null);
        }
    }

    void Hold(SafeFd conn, int pid)
    {
        _hold = conn;
        _pid = pid;
        Listen(conn, pid, current: true);
    }

    /// <summary>Reads the events a monitor pushes on <paramref name="conn"/> until it ends. The current monitor's end
    /// starts a new one at once, so that containers started from now on have a parent that records their exit.
    /// </summary>
    void Listen(SafeFd conn, int pid, bool current)
    {
        _monitors.Add(pid);
        new Thread(() =>
        {
            var buffer = new byte[64 << 10];
            try
            {
                while (MonitorWire.Receive(conn, [], buffer) is { } m)
                {
                    if (m.Op != MonitorOp.Exit) continue;
                    lock (_gate)
                        foreach (var w in _waiters)
                            if (w.Id == m.Id && w.Pid == m.Pid) w.Exit.TrySetResult((true, m.ExitCode));
                }
            }
            catch (Exception e) when (e is LinuxException or IOException) { }
            lock (_gate)
            {
                conn.Dispose();
                _monitors.Remove(pid);
                // Their parent is gone: whoever waits reads the record on disk (if it got that far) or watches the
                // re-parented init.
                foreach (var w in _waiters) if (w.Monitor == pid) w.Exit.TrySetResult((false, null));
                if (!current || !ReferenceEquals(_hold, conn) || _disposed) return;
                _hold = null;
            }
            DriverLog.Warning($"the container monitor (pid {pid}) went away: containers it was the parent of are " +
                "re-parented and their exit codes cannot be known; starting a new monitor");
            try { Ensure(); }
            catch (Exception e) when (e is InstanceException or LinuxException or IOException or
                ObjectDisposedException)
            {
                DriverLog.Warning($"{e.Message} (retried at the next container start)");
            }
        }) { IsBackground = true, Name = current ? "hull-monitor-hold" : "hull-monitor-retired" }.Start();
    }

    void Spawn()
    {
        Directory.CreateDirectory(_stateDir);
        var (readEnd, writeEnd) = Sys.Pipe();
        using (readEnd)
        {
            SpawnedChild child;
            using (writeEnd)
            using (var devnull = Sys.Open("/dev/null", O.RDWR))
            using (var log = Sys.Open(ContainerMonitor.LogPath(_stateDir), O.WRONLY | O.CREAT | O.APPEND,
                0b110_000_000))
            {
                var env = new List<string>();
                foreach (DictionaryEntry kv in Environment.GetEnvironmentVariables()) env.Add($"{kv.Key}={kv.Value}");
                // The monitor allocates little and lives long: a small gen0 budget keeps its resident memory near what
                // it holds (measured: 41 MB instead of 68 MB with 200 containers).
                if (Environment.GetEnvironmentVariable("DOTNET_GCgen0size") is null) env.Add(
                    "DOTNET_GCgen0size=0x200000");
                var req = new SpawnRequest
                {
                    Path = _command[0],
                    Argv = [.. _command, "--state-dir", _stateDir, "--ready-fd", "3"],
                    Env = env,
                    Setsid = true,
                };
                req.Fds.AddRange([(devnull, 0), (log, 1), (log, 2), (writeEnd, 3)]);
                try { child = Spawner.Start(req); child.Finish(); }
                catch (SpawnException e) { throw new InstanceException(
                    $"starting the container monitor ({_command[0]}): {e.Message}", 500); }
            }
            var pid = child.Pid;
            // Our child until we exit: reap it when it ends (it exits by itself when idle).
            new Thread(() =>
            {
                try { Sys.WaitPid(pid); } catch (LinuxException) { }
                child.Dispose();
            }) { IsBackground = true, Name = "hull-monitor-reap" }.Start();
            var buf = new byte[4096];
            var answer = new StringBuilder();
            while (true)
            {
                var n = Sys.Read(readEnd, buf);
                if (n <= 0) break;
                answer.Append(Encoding.UTF8.GetString(buf, 0, n));
            }
            if (answer.ToString() != "ok")
                throw new InstanceException(answer.Length > 0 ? answer.ToString()
                    : $"the container monitor (pid {pid}) exited at start; see {ContainerMonitor.LogPath(_stateDir)}",
                    500);
            DriverLog.Info($"started the container monitor (pid {pid.ToString(CultureInfo.InvariantCulture)})");
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            _disposed = true;
            if (_hold is not null) MonitorInterop.Shutdown(_hold);
            _hold = null;
        }
    }
}

/// <summary>The container monitor refused a request (its message says why).</summary>
public sealed class MonitorException(string message) : InstanceException(message, 500);
