using System.Buffers.Binary;
using System.Collections.Concurrent;
using Hull.Agent.Protocol;
using Hull.Linux;

namespace Hull.Agent;

/// <summary>
/// One exec: a process started with the native spawner (no managed code after clone), its stdio on pipes or on a
/// new pty, one thread per output stream (each takes send credit before it reads, so a host that does not read
/// stops the process at a full pipe instead of filling the agent's memory), one stdin thread, one waiter thread.
/// A non-root identity goes through "hull-agent --exec-as", which drops privileges and execs the command.
/// </summary>
public sealed class ExecSession(AgentServer agent, uint id) : AgentSession(agent, id)
{
    const string DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    SpawnedChild? _child;
    SafeFd? _master, _stdin, _stdout, _stderr;
    bool _tty;
    readonly Credit _outCredit = new(), _errCredit = new();
    BlockingCollection<byte[]?>? _stdinQueue;
    readonly List<Thread> _readers = [];
    Thread? _stdinThread;
    volatile bool _exited;
    int _aborted;

    public override void Start(byte[] payload)
    {
        var req = AgentJson.Decode(payload, AgentJson.Default.ExecRequest);
        if (req.Argv.Count == 0 || string.IsNullOrEmpty(req.Argv[0])) throw new AgentFailure(
            "exec: the command is empty (argv[0] missing)", Errors.EINVAL);
        _tty = req.Tty;
        var env = BuildEnv(req);
        var cwd = req.Cwd ?? (req.Uid == 0 && Directory.Exists("/root") ? "/root" : "/");
        if (!Directory.Exists(cwd)) throw new AgentFailure(
            $"exec {req.Argv[0]}: the working directory {cwd} does not exist in the guest", Errors.ENOENT);
        var path = Resolve(req.Argv[0], env, cwd);
        var sreq = new SpawnRequest { Path = path, Argv = req.Argv, Env = env, Chdir = cwd, Setsid = true };
        if (req.Uid != 0 || req.Gid != 0 || req.Groups.Count > 0)
        {
            var self = SelfCommand();
            var ids = $"{req.Uid}:{req.Gid}" + (req.Groups.Count > 0 ? ":" + string.Join(',', req.Groups) : "");
            sreq = new SpawnRequest
            {
                Path = self[0], Argv = [.. self, "--exec-as", ids, "--", path, .. req.Argv], Env = env, Chdir = cwd,
                Setsid = true,
            };
        }
        var childSide = new List<SafeFd>();
        try
        {
            if (_tty)
            {
                var (m, slave) = GuestSys.OpenPty();
                _master = m;
                childSide.Add(slave);
                GuestSys.SetWindowSize(_master, req.Rows == 0 ? (ushort)24 : req.Rows,
                    req.Cols == 0 ? (ushort)80 : req.Cols);
                sreq.Fds.Add((slave, 0));
                sreq.Fds.Add((slave, 1));
                sreq.Fds.Add((slave, 2));
                sreq.ControllingTty = 0;
            }
            else
            {
                if (req.Stdin)
                {
                    var (r, w) = Sys.Pipe();
                    childSide.Add(r);
                    _stdin = w;
                    sreq.Fds.Add((r, 0));
                }
                else
                {
                    var devnull = Sys.Open("/dev/null", O.RDONLY);
                    childSide.Add(devnull);
                    sreq.Fds.Add((devnull, 0));
                }
                var (or, ow) = Sys.Pipe();
                _stdout = or;
                childSide.Add(ow);
                sreq.Fds.Add((ow, 1));
                var (er, ew) = Sys.Pipe();
                _stderr = er;
                childSide.Add(ew);
                sreq.Fds.Add((ew, 2));
            }
            _child = Spawner.Spawn(sreq);
        }
        catch (SpawnException e)
        {
            DisposeFds();
            throw new AgentFailure($"exec {req.Argv[0]}: {e.Message}", e.Errno);
        }
        catch (LinuxException e)
        {
            DisposeFds();
            throw AgentFailure.From($"exec {req.Argv[0]}", e);
        }
        finally
        {
            foreach (var fd in childSide) fd.Dispose();
        }

        Send(FrameType.ExecStarted, 0, AgentJson.Encode(new ExecStartedMessage { Pid = _child.Pid },
            AgentJson.Default.ExecStartedMessage));
        if (_tty)
        {
            _readers.Add(StartThread($"exec {Id} out",
                () => PumpOutput(_master!, StreamId.Stdout, _outCredit, own: false)));
            _errCredit.Close();
        }
        else
        {
            var o = _stdout!;
            var e = _stderr!;
            _readers.Add(StartThread($"exec {Id} out", () => PumpOutput(o, StreamId.Stdout, _outCredit, own: true)));
            _readers.Add(StartThread($"exec {Id} err", () => PumpOutput(e, StreamId.Stderr, _errCredit, own: true)));
        }
        if (_tty || _stdin is not null)
        {
            _stdinQueue = new BlockingCollection<byte[]?>();
            _stdinThread = StartThread($"exec {Id} in", PumpStdin);
        }
        StartThread($"exec {Id} wait", WaitForExit);
    }

    static List<string> BuildEnv(ExecRequest req)
    {
        var env = new List<string>(req.Env);
        bool Has(string name) => env.Exists(e => e.StartsWith(name + "=", StringComparison.Ordinal));
        if (!Has("PATH")) env.Add("PATH=" + DefaultPath);
        if (!Has("HOME")) env.Add("HOME=" + (req.Uid == 0 ? "/root" : "/"));
        if (req.Tty && !Has("TERM")) env.Add("TERM=xterm");
        return env;
    }

    /// <summary>execvp's search, done here because the spawner calls execve.</summary>
    static string Resolve(string cmd, List<string> env, string cwd)
    {
        if (cmd.Contains('/'))
        {
            var full = Path.IsPathRooted(cmd) ? cmd : Path.Combine(cwd, cmd);
            if (!File.Exists(full)) throw new AgentFailure($"exec {cmd}: no such file in the guest", Errors.ENOENT);
            return full;
        }
        var pathVar = env.FindLast(e => e.StartsWith("PATH=", StringComparison.Ordinal))?[5..] ?? DefaultPath;
        foreach (var dir in pathVar.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, cmd);
            if (File.Exists(candidate) && Libc.access(candidate, 1 /* X_OK */) == 0) return candidate;
        }
        throw new AgentFailure($"exec {cmd}: command not found in the guest (PATH={pathVar})", Errors.ENOENT);
    }

    /// <summary>How to run this agent again: the NativeAOT binary, or "dotnet hull-agent.dll" under the JIT.</summary>
    internal static string[] SelfCommand()
    {
        var exe = Environment.ProcessPath ?? "/proc/self/exe";
        if (Path.GetFileNameWithoutExtension(exe) == "dotnet") return [exe, Environment.GetCommandLineArgs()[0]];
        return [exe];
    }

    void PumpOutput(SafeFd fd, byte stream, Credit credit, bool own)
    {
        var buf = new byte[Wire.ChunkSize];
        try
        {
            while (true)
            {
                var n = credit.Take(buf.Length, CancellationToken.None);
                if (n == 0) break;
                int r;
                try { r = Sys.Read(fd, buf.AsSpan(0, n)); }
                catch (LinuxException e) when (e.Errno == Errors.EIO) { r = 0; } // pty: every slave fd closed
                if (r < n) credit.Add(n - r);
                if (r == 0) break;
                Send(FrameType.Data, stream, buf.AsSpan(0, r));
            }
            Send(FrameType.Eof, stream, []);
        }
        catch (LinuxException e)
        {
            AgentServer.Log($"exec {Id}: reading output: {e.Message}");
            Send(FrameType.Eof, stream, []);
        }
        finally
        {
            if (own) fd.Dispose();
        }
    }

    void PumpStdin()
    {
        var broken = false;
        try
        {
            foreach (var chunk in _stdinQueue!.GetConsumingEnumerable())
            {
                if (chunk is null)
                {
                    // End of stdin: close the pipe; on a terminal, type the EOF character (^D) as a user would.
                    if (_tty) { if (!broken) TryWrite(_master!, [0x04]); }
                    else { _stdin?.Dispose(); _stdin = null; }
                    continue;
                }
                if (!broken) broken = !TryWrite(_tty ? _master! : _stdin!, chunk);
                Send(FrameType.Window, StreamId.Stdin, Wire.U32((uint)chunk.Length));
            }
        }
        finally
        {
            if (!_tty) { _stdin?.Dispose(); _stdin = null; }
        }
    }

    static bool TryWrite(SafeFd? fd, byte[] data)
    {
        if (fd is null || fd.IsClosed) return false;
        try { Sys.WriteAll(fd, data, "stdin"); return true; }
        catch (LinuxException) { return false; } // EPIPE (stdin closed by the process) or EIO (terminal gone)
    }

    void WaitForExit()
    {
        var child = _child!;
        int status;
        try { status = Sys.WaitPid(child.Pid); }
        catch (LinuxException e)
        {
            AgentServer.Log($"exec {Id}: {e.Message}");
            status = 0xff00; // exit code 255: the status is unknown
        }
        _exited = true;
        foreach (var t in _readers) t.Join();
        _stdinQueue?.CompleteAdding();
        if (_tty)
        {
            _stdinThread?.Join();
            _master?.Dispose();
        }
        var sig = status & 0x7f;
        var result = new ExecResult { ExitCode = Sys.ExitCode(status), Signal = sig,
            CoreDumped = sig != 0 && (status & 0x80) != 0 };
        Send(FrameType.ExecExit, 0, AgentJson.Encode(result, AgentJson.Default.ExecResult));
        Agent.Close(this);
        Agent.Finished(this);
        child.Dispose();
    }

    public override void OnFrame(Frame f)
    {
        switch (f.Type)
        {
            case FrameType.Data when f.Stream == StreamId.Stdin:
                TryQueue(f.Payload);
                break;
            case FrameType.Eof when f.Stream == StreamId.Stdin:
                TryQueue(null);
                break;
            case FrameType.Window when f.Payload.Length == 4:
                (f.Stream == StreamId.Stderr ? _errCredit : _outCredit).Add(
                    BinaryPrimitives.ReadUInt32LittleEndian(f.Payload));
                break;
            case FrameType.Resize when f.Payload.Length == 4:
                if (_master is { IsClosed: false } m)
                {
                    try { GuestSys.SetWindowSize(m, BinaryPrimitives.ReadUInt16LittleEndian(f.Payload),
                        BinaryPrimitives.ReadUInt16LittleEndian(f.Payload.AsSpan(2))); }
                    catch (LinuxException e) { AgentServer.Log($"exec {Id}: resize: {e.Message}"); }
                }
                break;
            case FrameType.Signal when f.Payload.Length == 4:
                var sig = BinaryPrimitives.ReadInt32LittleEndian(f.Payload);
                if (_child is { } c && !_exited)
                {
                    // SIGKILL is "kill this exec": its whole process group goes, so no child keeps its output open.
                    if (sig == Signals.SIGKILL) Libc.kill(-c.Pid, Signals.SIGKILL);
                    try { Sys.PidfdSendSignal(c.Pidfd, sig); }
                    catch (LinuxException e) when (e.Errno == Errors.ESRCH) { }
                    catch (LinuxException e) { AgentServer.Log($"exec {Id}: {e.Message}"); }
                }
                break;
            case FrameType.Cancel:
                Abort();
                Agent.Finished(this);
                break;
        }
    }

    void TryQueue(byte[]? chunk)
    {
        try { _stdinQueue?.TryAdd(chunk); }
        catch (InvalidOperationException) { } // already completed: the process is gone
    }

    public override void Abort()
    {
        if (Interlocked.Exchange(ref _aborted, 1) == 1) return;
        Agent.Close(this);
        _outCredit.Close();
        _errCredit.Close();
        if (_child is { } c && !_exited)
        {
            Libc.kill(-c.Pid, Signals.SIGKILL); // its session and process group (setsid made pgid = pid)
            try { Sys.PidfdSendSignal(c.Pidfd, Signals.SIGKILL); } catch (LinuxException) { }
        }
        try { _stdinQueue?.CompleteAdding(); } catch (ObjectDisposedException) { }
    }

    void DisposeFds()
    {
        _master?.Dispose();
        _stdin?.Dispose();
        _stdout?.Dispose();
        _stderr?.Dispose();
    }
}
