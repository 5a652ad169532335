using System.Collections;
using System.Globalization;
using System.Text;
using System.Text.Json;
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

    /// <param name="command">The program and arguments that run the monitor; "--state-dir DIR --ready-fd 3" are appended.
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
    public int CreateAndStart(string id, string bundle, Spec spec, string exitFile, IReadOnlyList<SafeFd> stdio)
    {
        var req = new MonitorMessage
        {
            Op = "create", Version = ContainerMonitor.ProtocolVersion, Id = id, Bundle = bundle, ExitFile = exitFile,
            Spec = JsonSerializer.Serialize(spec, OciJson.Default.Spec),
        };
        for (var attempt = 0; ; attempt++)
        {
            Ensure();
            MonitorMessage? reply;
            try
            {
                using var conn = MonitorInterop.Connect(ContainerMonitor.SocketPath(_stateDir));
                MonitorWire.Send(conn, req, stdio);
                // A create takes milliseconds; a monitor that does not answer in minutes is hung (stopped, stuck).
                if (!Sys.WaitPidfd(conn, 300_000))
                    throw new InstanceException($"the container monitor (pid {Pid}) did not answer within 5 minutes while starting '{id}'; see {ContainerMonitor.LogPath(_stateDir)}", 500);
                var fds = new List<SafeFd>();
                reply = MonitorWire.Receive(conn, fds, new byte[64 << 10]);
                foreach (var f in fds) f.Dispose();
            }
            catch (LinuxException) when (attempt == 0) { Lost(); continue; }
            if (reply is null)
            {
                // The monitor died while creating (the container, if any, is re-parented; hulld cleans up on error).
                if (attempt == 0) { Lost(); continue; }
                throw new InstanceException($"the container monitor went away while starting '{id}'; see {ContainerMonitor.LogPath(_stateDir)}", 500);
            }
            if (reply.Op == "error")
            {
                if (attempt == 0 && reply.Error?.Contains("retired", StringComparison.Ordinal) == true) { Lost(); continue; }
                throw new InstanceException($"starting container '{id}' failed: {reply.Error}", 500);
            }
            return reply.Pid;
        }
    }

    /// <summary>Drops the held connection (its thread closes it) so that the next <see cref="Ensure"/> looks again.</summary>
    void Lost()
    {
        lock (_gate)
        {
            if (_hold is not null) MonitorInterop.Shutdown(_hold);
            _hold = null;
        }
    }

    /// <summary>Connects to the monitor, starting (or replacing) it if needed. Thread-safe; cheap when connected.</summary>
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
                if (hello!.Version == ContainerMonitor.ProtocolVersion && hello.Identity == identity)
                {
                    Hold(conn, hello.Pid);
                    return;
                }
                // Another build (an upgrade or a downgrade): it keeps its containers and exits after the last one;
                // a monitor of this build takes over the socket for new ones.
                Console.Error.WriteLine($"hulld: retiring the container monitor (pid {hello.Pid}, protocol {hello.Version}) of another build; it keeps watching its {hello.Containers} container(s)");
                try
                {
                    MonitorWire.Send(conn, new MonitorMessage { Op = "retire", Version = ContainerMonitor.ProtocolVersion });
                    MonitorWire.Receive(conn, [], new byte[64 << 10]);
                }
                catch (Exception e) when (e is LinuxException or IOException) { }
                conn.Dispose();
                Spawn();
            }
            throw new InstanceException($"cannot reach the container monitor of {_stateDir}; see {ContainerMonitor.LogPath(_stateDir)}", 500);
        }
    }

    (SafeFd? Conn, MonitorMessage? Hello) TryHello()
    {
        SafeFd? conn = null;
        try
        {
            conn = MonitorInterop.Connect(ContainerMonitor.SocketPath(_stateDir));
            MonitorWire.Send(conn, new MonitorMessage { Op = "hello", Version = ContainerMonitor.ProtocolVersion });
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
        // The held connection is quiet; it ends when the monitor does. Then start a new one at once, so that
        // containers started from now on have a parent that records their exit.
        new Thread(() =>
        {
            try { MonitorInterop.Receive(conn, new byte[64], []); } catch (LinuxException) { }
            lock (_gate)
            {
                conn.Dispose();
                if (!ReferenceEquals(_hold, conn) || _disposed) return;
                _hold = null;
            }
            Console.Error.WriteLine($"hulld: the container monitor (pid {pid}) went away: containers it was the parent of are re-parented and their exit codes cannot be known; starting a new monitor");
            try { Ensure(); }
            catch (Exception e) when (e is InstanceException or LinuxException or IOException or ObjectDisposedException)
            {
                Console.Error.WriteLine($"hulld: warning: {e.Message} (retried at the next container start)");
            }
        }) { IsBackground = true, Name = "hull-monitor-hold" }.Start();
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
            using (var log = Sys.Open(ContainerMonitor.LogPath(_stateDir), O.WRONLY | O.CREAT | O.APPEND, 0b110_000_000))
            {
                var env = new List<string>();
                foreach (DictionaryEntry kv in Environment.GetEnvironmentVariables()) env.Add($"{kv.Key}={kv.Value}");
                // The monitor allocates little and lives long: a small gen0 budget keeps its resident memory near what
                // it holds (measured: 41 MB instead of 68 MB with 200 containers).
                if (Environment.GetEnvironmentVariable("DOTNET_GCgen0size") is null) env.Add("DOTNET_GCgen0size=0x200000");
                var req = new SpawnRequest
                {
                    Path = _command[0],
                    Argv = [.. _command, "--state-dir", _stateDir, "--ready-fd", "3"],
                    Env = env,
                    Setsid = true,
                };
                req.Fds.AddRange([(devnull, 0), (log, 1), (log, 2), (writeEnd, 3)]);
                try { child = Spawner.Start(req); child.Finish(); }
                catch (SpawnException e) { throw new InstanceException($"starting the container monitor ({_command[0]}): {e.Message}", 500); }
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
                throw new InstanceException(answer.Length > 0 ? answer.ToString() : $"the container monitor (pid {pid}) exited at start; see {ContainerMonitor.LogPath(_stateDir)}", 500);
            Console.Error.WriteLine($"hulld: started the container monitor (pid {pid.ToString(CultureInfo.InvariantCulture)})");
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
