using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.IO.Pipelines;
using System.Text;
using Hull.Agent.Protocol;
using Hull.Api;
using Hull.Linux;
using Hull.Vm;

namespace Hull.Instances.Vms;

/// <summary>Exec and files through the guest agent: one multiplexed <see cref="AgentClient"/> per running VM.</summary>
public sealed partial class VmDriver
{
    readonly ConcurrentDictionary<string, AgentClient> _agents = new(StringComparer.Ordinal);

    /// <summary>When the agent of each VM last became ready (after a start or reattach), and how long that
    /// took.</summary>
    readonly ConcurrentDictionary<string, TimeSpan> _agentReady = new(StringComparer.Ordinal);

    /// <summary>How long the last connection to the VM's agent took to become ready (from the first attempt), if
    /// known.</summary>
    public TimeSpan? AgentReadyAfter(string name) => _agentReady.TryGetValue(name, out var t) ? t : null;

    async Task DropAgentAsync(string name)
    {
        if (_agents.TryRemove(name, out var c)) await c.DisposeAsync();
    }

    /// <summary>
    /// The ready agent connection of a running VM. One connect attempt runs per VM at a time and every caller awaits it
    /// (the start's background connect and the first exec share one wait): it connects to QEMU's end of the agent port
    /// and says hello, retrying while the guest boots, up to <see cref="VmDriverOptions.AgentTimeout"/>.
    /// </summary>
    async Task<AgentClient> AgentAsync(InstanceSpec spec, CancellationToken ct)
    {
        if (_agents.TryGetValue(spec.Name, out var c)) return c;
        Task<AgentClient> connecting;
        lock (_connecting)
        {
            if (_agents.TryGetValue(spec.Name, out c)) return c;
            if (!_connecting.TryGetValue(spec.Name, out connecting!))
            {
                connecting = ConnectAgentAsync(spec);
                _connecting[spec.Name] = connecting;
                _ = connecting.ContinueWith(_ => { lock (_connecting) _connecting.Remove(spec.Name); },
                    TaskScheduler.Default);
            }
        }
        return await connecting.WaitAsync(ct);
    }

    readonly Dictionary<string, Task<AgentClient>> _connecting = new(StringComparer.Ordinal);

    async Task<AgentClient> ConnectAgentAsync(InstanceSpec spec)
    {
        await Task.Yield();
        var vm = await VmAsync(spec, CancellationToken.None);
        if (vm.Pid is null) throw new InstanceException($"VM '{spec.Name}' is not running: start it first", 409);
        var sw = Stopwatch.StartNew();
        // Hull's own images (direct kernel boot) carry the agent: wait for their boot. A foreign image booted by
        // firmware may have none: wait a short while after QEMU's start, then say so rather than hang.
        var foreign = vm.Config.Boot != BootMode.Direct;
        var timeout = foreign ? ForeignAgentWait(vm) : _o.AgentTimeout;
        string? last = null;
        while (true)
        {
            if (vm.Pid is null) throw new InstanceException(
                $"VM '{spec.Name}' stopped while waiting for its agent " +
                $"({vm.LastRecord?.Reason ?? "no reason recorded"})", 409);
            var left = timeout - sw.Elapsed;
            if (left <= TimeSpan.Zero && foreign)
                throw new InstanceException($"no Hull agent answered in VM '{spec.Name}': its guest (booted by " +
                    $"firmware from a disk image or ISO) may not run hull-agent: use 'hull console {spec.Name}'", 503);
            if (left <= TimeSpan.Zero)
                throw new InstanceException($"the guest agent of VM '{spec.Name}' did not answer within " +
                    $"{timeout.TotalSeconds:0} s" +
                    $"{(last is null ? "" : $" ({last})")}: the guest may still be booting (see 'hull logs " +
                        $"{spec.Name}') or its image has no working hull-agent", 503);
            AgentClient? client = null;
            try
            {
                client = await AgentClient.ConnectUnixAsync(vm.AgentSocketPath);
                await client.WaitReadyAsync(left < TimeSpan.FromSeconds(10) ? left : TimeSpan.FromSeconds(10));
                _agents[spec.Name] = client;
                _agentReady[spec.Name] = sw.Elapsed;
                return client;
            }
            catch (AgentUnavailableException e)
            {
                last = e.Message;
                if (client is not null) await client.DisposeAsync();
                await Task.Delay(200);
            }
        }
    }

    /// <summary>The wait for a foreign guest's agent: until <see cref="VmDriverOptions.ForeignAgentTimeout"/> after
    /// QEMU started (its pid file's time), and at least 3 s.</summary>
    TimeSpan ForeignAgentWait(IVm vm)
    {
        var started = File.Exists(vm.PidFilePath) ? File.GetLastWriteTimeUtc(vm.PidFilePath) : DateTime.UtcNow;
        var left = started + _o.ForeignAgentTimeout - DateTime.UtcNow;
        return left > TimeSpan.FromSeconds(3) ? left : TimeSpan.FromSeconds(3);
    }

    /// <summary>Runs an agent operation; a lost connection is re-made once (the guest agent restarted, QEMU
    /// reattached).</summary>
    async Task<T> WithAgentAsync<T>(InstanceSpec spec, Func<AgentClient, Task<T>> op, CancellationToken ct,
        bool retry = true)
    {
        for (var attempt = 0; ; attempt++)
        {
            var c = await AgentAsync(spec, ct);
            try { return await op(c); }
            catch (AgentUnavailableException e)
            {
                if (_agents.TryGetValue(spec.Name, out var cur)
                    && ReferenceEquals(cur, c)) await DropAgentAsync(spec.Name);
                if (!retry || attempt > 0) throw new InstanceException(
                    $"the connection to the guest agent of VM '{spec.Name}' failed: {e.Message}", 503);
            }
            catch (AgentProtocolException e) { throw new InstanceException(
                $"the guest agent of VM '{spec.Name}' broke the protocol: {e.Message}", 500); }
        }
    }

    static InstanceException FileError(InstanceSpec spec, string path, AgentOperationException e) => e.Errno switch
    {
        2 => new InstanceException($"{path} does not exist in instance '{spec.Name}'", 404),
        20 => new InstanceException($"{path} in instance '{spec.Name}': a parent is not a directory"),
        21 => new InstanceException($"{path} in instance '{spec.Name}' is a directory"),
        39 => new InstanceException($"{path} in instance '{spec.Name}' is a directory that is not empty", 409),
        13 or 1 => new InstanceException($"{path} in instance '{spec.Name}': permission denied", 403),
        _ => new InstanceException($"{path} in instance '{spec.Name}': {e.Message}", 500),
    };

    // ---- exec ----

    public async Task<IExecSession> ExecAsync(InstanceSpec spec, ExecSpec exec, CancellationToken ct)
    {
        if (exec.Command.Count == 0) throw new InstanceException("exec needs a command");
        var vm = await VmAsync(spec, ct);
        if (vm.Pid is null) throw new InstanceException($"VM '{spec.Name}' is not running: start it first", 409);
        var (uid, gid) = ParseUser(exec.User);
        var env = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ["HOME"] = uid == 0 ? "/root" : "/", ["TERM"] = exec.Tty ? "xterm" : "dumb",
        };
        foreach (var (k, v) in spec.Environment) env[k] = v;
        foreach (var (k, v) in exec.Environment) env[k] = v;
        var req = new Hull.Agent.Protocol.ExecRequest
        {
            Argv = [.. exec.Command], Env = env.Select(kv => $"{kv.Key}={kv.Value}").ToList(), Cwd = exec.Cwd,
            Uid = uid, Gid = gid,
            Tty = exec.Tty, Rows = (ushort)Math.Clamp(exec.Height, 1, ushort.MaxValue),
            Cols = (ushort)Math.Clamp(exec.Width, 1, ushort.MaxValue),
        };
        return await WithAgentAsync(spec, c => VmExec.StartAsync(c, req, ct), ct);
    }

    static (uint Uid, uint Gid) ParseUser(string? user)
    {
        if (string.IsNullOrEmpty(user) || user is "root" or "0" or "0:0") return (0, 0);
        var parts = user.Split(':');
        if (parts.Length <= 2 && uint.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out var u)
            && u != uint.MaxValue)
        {
            if (parts.Length == 1) return (u, u);
            if (uint.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var g)
                && g != uint.MaxValue) return (u, g);
        }
        throw new InstanceException($"user '{user}' is not supported for a VM exec: give a numeric UID or UID:GID " +
            "from 0 to 4294967294 (names are not looked up in the guest)");
    }

    // ---- files ----

    public async Task PushFileAsync(InstanceSpec spec, string path, Stream content, FileMeta meta, CancellationToken ct)
    {
        if (!path.StartsWith('/') || path.EndsWith('/') || path.Split('/').Any(s => s == ".."))
            throw new InstanceException($"push target '{path}' must be an absolute file path without '..', such as " +
                "/root/file.txt");
        var req = new PushRequest { Path = path, Mode = (uint)meta.Mode & 0xFFF, Uid = (uint)meta.Uid,
            Gid = (uint)meta.Gid, MakeParents = true };
        try { await WithAgentAsync(spec, c => c.PushFileAsync(req, content, ct), ct, retry: false); }
        catch (AgentOperationException e) { throw FileError(spec, path, e); }
    }

    static FileEntry Entry(string name, FileStat st) => new()
    {
        Name = name, Type = st.Type switch { "file" or "directory" or "symlink" => st.Type, _ => "special" },
        Size = st.Size, Mode = (int)(st.Mode & 0xFFF), Uid = (int)st.Uid, Gid = (int)st.Gid,
    };

    public async Task<FileEntry?> StatFileAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        try
        {
            var st = await WithAgentAsync(spec, c => c.StatAsync(path, ct), ct);
            return Entry(Path.GetFileName(path.TrimEnd('/')) is { Length: > 0 } n ? n : "/", st);
        }
        catch (AgentOperationException e) when (e.Errno is 2 or 20) { return null; }
        catch (AgentOperationException e) { throw FileError(spec, path, e); }
    }

    public async Task<Stream> PullFileAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        var st = await StatFileAsync(spec, path, ct)
            ?? throw new InstanceException($"{path} does not exist in instance '{spec.Name}'", 404);
        if (st.Type != "file") throw new InstanceException($"{path} in instance '{spec.Name}' is not a regular file");
        var client = await AgentAsync(spec, ct);
        var pipe = new Pipe();
        var writer = pipe.Writer.AsStream();
        _ = Task.Run(async () =>
        {
            Exception? error = null;
            try { await client.PullFileAsync(path, writer, CancellationToken.None); }
            catch (Exception e) { error = e is AgentOperationException ae ? FileError(spec, path, ae)
                : new IOException($"pulling {path} from VM '{spec.Name}': {e.Message}", e); }
            await pipe.Writer.CompleteAsync(error);
        }, CancellationToken.None);
        return pipe.Reader.AsStream();
    }

    public async Task<IReadOnlyList<FileEntry>> ListFilesAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        var dir = await StatFileAsync(spec, path, ct)
            ?? throw new InstanceException($"{path} does not exist in instance '{spec.Name}'", 404);
        if (dir.Type != "directory") throw new InstanceException(
            $"{path} in instance '{spec.Name}' is not a directory");
        // The agent has no directory listing: the guest's shell names the entries (NUL-separated), the agent stats
        // each.
        const string script = "cd -- \"$1\" || exit 2; for f in * .*; do case \"$f\" in .|..) continue;; esac; if [ " +
            "-e \"$f\" ] || [ -L \"$f\" ]; then printf '%s\\0' \"$f\"; fi; done";
        var req = new Hull.Agent.Protocol.ExecRequest { Argv = ["/bin/sh", "-c", script, "sh", path] };
        var output = new MemoryStream();
        var err = new MemoryStream();
        Hull.Agent.Protocol.ExecResult res;
        try { res = await WithAgentAsync(spec, c => c.ExecAsync(req, null, output, err, ct), ct); }
        catch (AgentOperationException e) { throw new InstanceException(
            $"listing {path} in VM '{spec.Name}' needs /bin/sh in the guest: {e.Message}", 500); }
        if (res.ExitCode != 0) throw new InstanceException(
            $"listing {path} in VM '{spec.Name}' failed: {Encoding.UTF8.GetString(err.ToArray()).Trim()}", 500);
        var names = Encoding.UTF8.GetString(output.ToArray()).Split('\0',
            StringSplitOptions.RemoveEmptyEntries).Order(StringComparer.Ordinal).ToList();
        var client = await AgentAsync(spec, ct);
        var entries = new FileEntry?[names.Count];
        using var gate = new SemaphoreSlim(16);
        await Task.WhenAll(names.Select(async (n, i) =>
        {
            await gate.WaitAsync(ct);
            try { entries[i] = Entry(n, await client.StatAsync(path.TrimEnd('/') + "/" + n, ct)); }
            catch (AgentOperationException) { } // gone meanwhile
            finally { gate.Release(); }
        }));
        return entries.OfType<FileEntry>().ToList();
    }

    public async Task DeleteFileAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        if (path.TrimEnd('/').Length == 0) throw new InstanceException("cannot delete / of an instance");
        try { await WithAgentAsync(spec, async c => { await c.RemoveAsync(path, recursive: false, ct); return true; },
            ct); }
        catch (AgentOperationException e) { throw FileError(spec, path, e); }
    }
}

/// <summary>An exec in a VM: the agent's streams bridged to pipes that hulld reads and writes.</summary>
sealed class VmExec : IExecSession
{
    readonly IExecProcess _p;
    readonly Pipe _in, _out;
    readonly Pipe? _err;
    public Stream Stdin { get; }
    public Stream Stdout { get; }
    public Stream? Stderr { get; }
    public Task<int> Exit { get; }

    VmExec(IExecProcess p, Pipe @in, Pipe @out, Pipe? err)
    {
        _p = p;
        _in = @in;
        _out = @out;
        _err = err;
        Stdin = @in.Writer.AsStream();
        Stdout = @out.Reader.AsStream();
        Stderr = err?.Reader.AsStream();
        Exit = WaitAsync();
    }

    async Task<int> WaitAsync()
    {
        try { return (await _p.WaitAsync()).ExitCode; }
        catch (AgentUnavailableException) { return 128 + Signals.SIGKILL; }
        finally
        {
            await _out.Writer.CompleteAsync();
            if (_err is not null) await _err.Writer.CompleteAsync();
        }
    }

    public static async Task<IExecSession> StartAsync(AgentClient c, Hull.Agent.Protocol.ExecRequest req,
        CancellationToken ct)
    {
        var @in = new Pipe();
        var @out = new Pipe();
        var err = req.Tty ? null : new Pipe();
        try
        {
            var p = await c.StartExecAsync(req, @in.Reader.AsStream(), @out.Writer.AsStream(), err?.Writer.AsStream(),
                ct);
            return new VmExec(p, @in, @out, err);
        }
        catch (AgentOperationException e) when (e.Errno is 2 or 13 or 8 or 20)
        {
            // As a shell would: the program cannot be run, so the exec ends at once with 127 (not found) or 126.
            return new FailedExecSession(e.Errno == 2 ? 127 : 126, $"{req.Argv[0]}: {e.Message}", req.Tty);
        }
    }

    public void Resize(int width, int height) =>
        _ = _p.ResizeAsync((ushort)Math.Clamp(height, 1, ushort.MaxValue),
            (ushort)Math.Clamp(width, 1, ushort.MaxValue)).ContinueWith(t => _ = t.Exception, TaskScheduler.Default);

    public void Signal(int signal)
    {
        if (!Exit.IsCompleted) _ = _p.SignalAsync(signal).ContinueWith(t => _ = t.Exception, TaskScheduler.Default);
    }

    public async ValueTask DisposeAsync()
    {
        await _in.Writer.CompleteAsync();
        await _p.DisposeAsync();
        try { await Exit.WaitAsync(TimeSpan.FromSeconds(10)); } catch (TimeoutException) { }
        await _out.Reader.CompleteAsync();
        if (_err is not null) await _err.Reader.CompleteAsync();
    }
}
