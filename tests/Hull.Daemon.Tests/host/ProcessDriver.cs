using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using Hull.Api;
using Hull.Daemon;
using Hull.Instances;
using Hull.Linux;
using Microsoft.Win32.SafeHandles;

namespace Hull.TestHost;

/// <summary>
/// A TEST DOUBLE of an engine: an instance is a host process tree chrooted into a copy of the image's rootfs. It is
/// started detached (its own session, under a small shell monitor that records the exit code), so it outlives hulld
/// exactly as real instances must. No isolation beyond chroot, no limits: it exists so the daemon, API, SDK and CLI
/// can be tested end to end before the container and VM engines land.
/// Files in the instance dir: rootfs/, snapshots/NAME/, init.sh, monitor.sh, pid, exit, frozen, mounts, console.log,
/// console.in.
/// </summary>
public sealed class ProcessDriver(string type) : IInstanceDriver
{
    public string Type { get; } = type;
    const string Chroot = "/usr/sbin/chroot";
    const string DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    static string Rootfs(InstanceSpec s) => Path.Combine(s.Dir, "rootfs");
    static string F(InstanceSpec s, string name) => Path.Combine(s.Dir, name);

    public void Validate(InstanceSpec spec)
    {
        if (!File.Exists(Chroot)) throw new InstanceException($"the process test driver needs {Chroot} (coreutils)",
            500);
    }

    public async Task CreateAsync(InstanceSpec spec, CancellationToken ct)
    {
        var rootfs = Rootfs(spec);
        if (spec.Config.ContainsKey("user.test.fail-create"))
        {
            // Failure injection for tests: fail after part of the work is done, so the rollback is exercised.
            Directory.CreateDirectory(Path.Combine(rootfs, "partial"));
            throw new InstanceException("injected engine failure during create (user.test.fail-create)", 500);
        }
        if (spec.CopyOf is { } src)
        {
            await Run(ct, "cp", "-a", "--reflink=auto", Rootfs(src), rootfs);
            return;
        }
        if (spec.Image.Rootfs is { } ir)
            await Run(ct, "cp", "-a", "--reflink=auto", ir, rootfs);
        else
        {
            Directory.CreateDirectory(rootfs);
            await Run(ct, "tar", "--numeric-owner", "-xpf", spec.Image.File, "-C", rootfs);
        }
    }

    static Task Run(CancellationToken ct, string program, params string[] args) =>
        HostProgram.RunAsync(program, args, new() { Error = e => new InstanceException(e.Message, 500) }, ct);

    static string Q(string s) => "'" + s.Replace("'", "'\\''") + "'";

    IEnumerable<string> Env(InstanceSpec spec, IReadOnlyDictionary<string, string>? extra = null)
    {
        var env = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["PATH"] = DefaultPath[5..], ["HOME"] = "/root", ["TERM"] = "xterm", ["container"] = "hull",
        };
        foreach (var (k, v) in spec.Environment) env[k] = v;
        if (extra is not null) foreach (var (k, v) in extra) env[k] = v;
        return env.Select(kv => $"{kv.Key}={kv.Value}");
    }

    public async Task StartAsync(InstanceSpec spec, IReadOnlyList<DeviceRunConfig> devices, CancellationToken ct)
    {
        var rootfs = Rootfs(spec);
        foreach (var f in new[] { "exit", "pid", "frozen" }) File.Delete(F(spec, f));
        MountDevices(spec, devices);
        var init = spec.Config.TryGetValue("user.test.init", out var i) ? i
            : "trap 'echo stopping; exit 0' TERM; echo \"$HOSTNAME booted\"; while :; do sleep 1000 & wait $!; done";
        await File.WriteAllTextAsync(F(spec, "init.sh"),
            "exec env -i " +
                string.Join(' ', Env(spec, new Dictionary<string, string> { ["HOSTNAME"] = spec.Name }).Select(Q)) +
                $" {Chroot} {Q(rootfs)} /bin/sh -c {Q(init)}\n", ct);
        await File.WriteAllTextAsync(F(spec, "monitor.sh"), """
            # The instance's monitor: runs init.sh in its own session and records how it ended.
            cd "$(dirname "$0")" || exit 1
            [ -p console.in ] || mkfifo console.in
            exec 3<>console.in
            setsid /bin/sh ./init.sh <&3 >>console.log 2>&1 &
            child=$!
            echo "$child $(cut -d' ' -f22 /proc/$child/stat)" > pid.tmp && mv pid.tmp pid
            wait $child
            rc=$?
            echo $rc > exit.tmp && mv exit.tmp exit
            """, ct);
        var psi = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        foreach (var a in new[] { "-c", "setsid /bin/sh \"$0\" </dev/null >>\"$1\" 2>&1 &", F(spec, "monitor.sh"),
            F(spec, "monitor.log") }) psi.ArgumentList.Add(a);
        using (var p = Process.Start(psi)!) await p.WaitForExitAsync(ct);
        // The monitor writes pid once the init runs.
        for (var n = 0; n < 500 && !File.Exists(F(spec, "pid"))
            && !File.Exists(F(spec, "exit")); n++) await Task.Delay(10, ct);
        if (!File.Exists(F(spec, "pid"))) throw new InstanceException(
            $"instance {spec.Name} did not start: see {F(spec, "monitor.log")}", 500);
    }

    static void MountDevices(InstanceSpec spec, IReadOnlyList<DeviceRunConfig> devices)
    {
        var rootfs = Rootfs(spec);
        var done = new List<string>();
        try
        {
            foreach (var m in devices.SelectMany(d => d.Mounts))
            {
                var target = rootfs + m.Target;
                if (m.IsFile) { Directory.CreateDirectory(Path.GetDirectoryName(target)!); if (
                    !File.Exists(target)) File.WriteAllBytes(target, []); }
                else Directory.CreateDirectory(target);
                Sys.Mount(m.Source, target, null, MS.BIND | MS.REC, null);
                done.Add(target);
                File.AppendAllText(F(spec, "mounts"), target + "\n");
                if (m.ReadOnly) Sys.Mount(null, target, null, MS.REMOUNT | MS.BIND | MS.RDONLY, null);
            }
        }
        catch
        {
            UnmountAll(spec);
            throw;
        }
    }

    static void UnmountAll(InstanceSpec spec)
    {
        var f = F(spec, "mounts");
        if (!File.Exists(f)) return;
        foreach (var t in File.ReadAllLines(f).Reverse()) Libc.umount2(t, MS.MNT_DETACH);
        File.Delete(f);
    }

    (int Pid, long Start)? ReadPid(InstanceSpec spec)
    {
        try
        {
            var parts = File.ReadAllText(F(spec, "pid")).Split(' ',
                StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            return (int.Parse(parts[0], CultureInfo.InvariantCulture),
                long.Parse(parts[1], CultureInfo.InvariantCulture));
        }
        catch (Exception e) when (e is IOException or FormatException or IndexOutOfRangeException) { return null; }
    }

    static long? StartTime(int pid)
    {
        try
        {
            var s = File.ReadAllText($"/proc/{pid}/stat");
            return long.Parse(s[(s.LastIndexOf(')') + 2)..].Split(' ')[19], CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or FormatException) { return null; }
    }

    /// <summary>The init's pid if it still runs (same process: the start time matches).</summary>
    int? Alive(InstanceSpec spec) => ReadPid(spec) is { } p && StartTime(p.Pid) == p.Start
        && !File.Exists(F(spec, "exit")) ? p.Pid : null;

    int? ExitCode(InstanceSpec spec) =>
        File.Exists(F(spec, "exit")) && int.TryParse(File.ReadAllText(F(spec, "exit")).Trim(),
            CultureInfo.InvariantCulture, out var c) ? c : null;

    public async Task<int?> StopAsync(InstanceSpec spec, bool force, TimeSpan timeout, CancellationToken ct)
    {
        if (Alive(spec) is { } pid)
        {
            File.Delete(F(spec, "frozen"));
            if (!force)
            {
                Libc.kill(-pid, Signals.SIGTERM);
                Libc.kill(-pid, Signals.SIGCONT);
                var deadline = timeout == Timeout.InfiniteTimeSpan ? DateTime.MaxValue : DateTime.UtcNow + timeout;
                while (Alive(spec) is not null && DateTime.UtcNow < deadline) await Task.Delay(20, ct);
            }
            if (Alive(spec) is not null) { Libc.kill(-pid, Signals.SIGKILL); Libc.kill(-pid, Signals.SIGCONT); }
            for (var n = 0; n < 1000 && !File.Exists(F(spec, "exit"))
                && StartTime(pid) is not null; n++) await Task.Delay(10, ct);
            for (var n = 0; n < 200 && !File.Exists(F(spec, "exit")); n++) await Task.Delay(10, ct);
        }
        UnmountAll(spec);
        File.Delete(F(spec, "pid"));
        return ExitCode(spec);
    }

    public Task KillAsync(InstanceSpec spec, int signal, CancellationToken ct)
    {
        if (Alive(spec) is { } pid) Libc.kill(pid, signal);
        return Task.CompletedTask;
    }

    public Task PauseAsync(InstanceSpec spec, CancellationToken ct)
    {
        var pid = Alive(spec) ?? throw new InstanceException($"instance {spec.Name} is not running", 409);
        Sys.Check(Libc.kill(-pid, Signals.SIGSTOP), "kill SIGSTOP");
        File.WriteAllText(F(spec, "frozen"), "");
        return Task.CompletedTask;
    }

    public Task ResumeAsync(InstanceSpec spec, CancellationToken ct)
    {
        var pid = Alive(spec) ?? throw new InstanceException($"instance {spec.Name} is not running", 409);
        Sys.Check(Libc.kill(-pid, Signals.SIGCONT), "kill SIGCONT");
        File.Delete(F(spec, "frozen"));
        return Task.CompletedTask;
    }

    public async Task DeleteAsync(InstanceSpec spec, CancellationToken ct)
    {
        if (Alive(spec) is not null) await StopAsync(spec, true, TimeSpan.Zero, ct);
        UnmountAll(spec);
        Files.RemoveTree(Rootfs(spec));
        Files.RemoveTree(F(spec, "snapshots"));
    }

    public Task<DriverState> GetStateAsync(InstanceSpec spec, CancellationToken ct)
    {
        var pid = Alive(spec);
        return Task.FromResult(new DriverState
        {
            State = pid is null ? InstanceState.Stopped : File.Exists(F(spec, "frozen")) ? InstanceState.Paused
                : InstanceState.Running,
            Pid = pid, ExitCode = ExitCode(spec),
        });
    }

    public Task<ReattachResult> ReattachAsync(InstanceSpec spec, CancellationToken ct)
    {
        var pid = Alive(spec);
        if (pid is null) UnmountAll(spec);
        return Task.FromResult(new ReattachResult
        {
            State = pid is null ? InstanceState.Stopped : File.Exists(F(spec, "frozen")) ? InstanceState.Paused
                : InstanceState.Running,
            Pid = pid, ExitCode = pid is null ? ExitCode(spec) : null,
        });
    }

    public async Task<int?> WaitForExitAsync(InstanceSpec spec, CancellationToken ct)
    {
        while (Alive(spec) is not null) await Task.Delay(100, ct);
        for (var n = 0; n < 100 && !File.Exists(F(spec, "exit")); n++) await Task.Delay(10, ct);
        return ExitCode(spec) ?? 137;
    }

    public Task<bool> ApplyLimitsAsync(InstanceSpec spec, CancellationToken ct) => Task.FromResult(false);

    // ---- exec ----

    public Task<IExecSession> ExecAsync(InstanceSpec spec, ExecSpec exec, CancellationToken ct)
    {
        var argv = new List<string> { Chroot };
        if (!string.IsNullOrEmpty(exec.User)) argv.Add("--userspec=" + exec.User);
        argv.AddRange([Rootfs(spec), "/bin/sh", "-c", "cd \"$0\" && exec \"$@\"", exec.Cwd ?? "/"]);
        argv.AddRange(exec.Command);
        var env = Env(spec, exec.Environment).ToList();
        return Task.FromResult(exec.Tty ? PtyExec.Start(argv, env, exec.Width, exec.Height)
            : PipeExec.Start(argv, env));
    }

    sealed class PipeExec(Process p) : IExecSession
    {
        public static IExecSession Start(List<string> argv, List<string> env)
        {
            var psi = new ProcessStartInfo(argv[0]) { RedirectStandardInput = true, RedirectStandardOutput = true,
                RedirectStandardError = true, UseShellExecute = false };
            foreach (var a in argv.Skip(1)) psi.ArgumentList.Add(a);
            psi.Environment.Clear();
            foreach (var e in env) { var i = e.IndexOf('='); psi.Environment[e[..i]] = e[(i + 1)..]; }
            var p = Process.Start(psi)!;
            return new PipeExec(p);
        }

        public Stream Stdin => p.StandardInput.BaseStream;
        public Stream Stdout => p.StandardOutput.BaseStream;
        public Stream? Stderr => p.StandardError.BaseStream;
        public Task<int> Exit { get; } = WaitAsync(p);

        static async Task<int> WaitAsync(Process p)
        {
            await p.WaitForExitAsync();
            return p.ExitCode;
        }

        public void Resize(int width, int height) { }
        public void Signal(int signal) => Libc.kill(p.Id, signal);

        public async ValueTask DisposeAsync()
        {
            if (!p.HasExited) { try { p.Kill(true); } catch (InvalidOperationException) { } }
            try { await Exit.WaitAsync(TimeSpan.FromSeconds(5)); } catch (TimeoutException) { }
            p.Dispose();
        }
    }

    sealed class PtyExec : IExecSession
    {
        readonly SafeFd _master;
        readonly SpawnedChild _child;
        readonly FileStream _stream;
        public Stream Stdin => _stream;
        public Stream Stdout => _stream;
        public Stream? Stderr => null;
        public Task<int> Exit { get; }

        PtyExec(SafeFd master, SpawnedChild child)
        {
            _master = master;
            _child = child;
            _stream = new FileStream(new SafeFileHandle(master.DangerousGetHandle(), false), FileAccess.ReadWrite, 1,
                false);
            Exit = Task.Factory.StartNew(() => Sys.ExitCode(Sys.WaitPid(child.Pid)), TaskCreationOptions.LongRunning);
        }

        public static unsafe IExecSession Start(List<string> argv, List<string> env, int width, int height)
        {
            var m = Libc.posix_openpt(O.RDWR | O.NOCTTY | O.CLOEXEC);
            if (m < 0) throw LinuxException.FromLastError("posix_openpt");
            var master = new SafeFd(m);
            try
            {
                Sys.Check(Libc.grantpt(m), "grantpt");
                Sys.Check(Libc.unlockpt(m), "unlockpt");
                var buf = stackalloc byte[128];
                if (Libc.ptsname_r(m, buf, 128) != 0) throw new LinuxException(Errors.ENOTTY, "ptsname_r");
                var name = Marshal.PtrToStringUTF8((nint)buf)!;
                SetSize(master, width, height);
                using var slave = Sys.Open(name, O.RDWR | O.NOCTTY);
                var child = Spawner.Spawn(new SpawnRequest
                {
                    Path = argv[0], Argv = argv, Env = env, Setsid = true, ControllingTty = 0,
                    Fds = [(slave, 0), (slave, 1), (slave, 2)],
                });
                return new PtyExec(master, child);
            }
            catch { master.Dispose(); throw; }
        }

        [StructLayout(LayoutKind.Sequential)]
        struct WinSize { public ushort Rows, Cols, X, Y; }

        static unsafe void SetSize(SafeFd fd, int w, int h)
        {
            var ws = new WinSize { Rows = (ushort)h, Cols = (ushort)w };
            Libc.ioctl(fd.Fd, 0x5414 /* TIOCSWINSZ */, (nint)(&ws));
        }

        public void Resize(int width, int height) => SetSize(_master, width, height);
        public void Signal(int signal) => Libc.kill(_child.Pid, signal);

        public async ValueTask DisposeAsync()
        {
            if (!Exit.IsCompleted) Libc.kill(_child.Pid, Signals.SIGKILL);
            try { await Exit.WaitAsync(TimeSpan.FromSeconds(5)); } catch (TimeoutException) { }
            _stream.Dispose();
            _master.Dispose();
            _child.Dispose();
        }
    }

    // ---- files (resolved inside the rootfs with openat2 RESOLVE_IN_ROOT) ----

    static SafeFd Root(InstanceSpec spec) => Sys.Open(Rootfs(spec), O.RDONLY | O.DIRECTORY);

    static string TypeOf(uint mode) => (mode & 0xF000) switch
    {
        0x8000 => "file", 0x4000 => "directory", 0xA000 => "symlink", _ => "special",
    };

    static FileEntry Entry(string name, SafeFd fd)
    {
        var st = RootedFs.FStat(fd);
        return new FileEntry { Name = name, Type = TypeOf(st.Mode), Size = st.Size, Mode = (int)(st.Mode & 0xFFF),
            Uid = (int)st.Uid, Gid = (int)st.Gid };
    }

    public Task<FileEntry?> StatFileAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        using var root = Root(spec);
        if (!RootedFs.TryOpen(root, path, O.PATH, 0, out var fd, out var e))
            return e == Errors.ENOENT || e == Errors.ENOTDIR ? Task.FromResult<FileEntry?>(null)
                : throw new LinuxException(e, $"open {path}");
        using (fd) return Task.FromResult<FileEntry?>(Entry(Path.GetFileName(path), fd));
    }

    public Task<Stream> PullFileAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        using var root = Root(spec);
        var fd = RootedFs.Open(root, path, O.RDONLY);
        return Task.FromResult<Stream>(new FileStream(new SafeFileHandle(fd.Detach(), true), FileAccess.Read));
    }

    public Task<IReadOnlyList<FileEntry>> ListFilesAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        using var root = Root(spec);
        using var dir = RootedFs.Open(root, path, O.RDONLY | O.DIRECTORY);
        var list = new List<FileEntry>();
        foreach (var child in Directory.EnumerateFileSystemEntries($"/proc/self/fd/{dir.Fd}").Select(
            Path.GetFileName).Order(StringComparer.Ordinal))
        {
            if (RootedFs.TryOpen(root, path.TrimEnd('/') + "/" + child, O.PATH | O.NOFOLLOW, 0, out var cfd, out _))
                using (cfd) list.Add(Entry(child!, cfd));
        }
        return Task.FromResult<IReadOnlyList<FileEntry>>(list);
    }

    public async Task PushFileAsync(InstanceSpec spec, string path, Stream content, FileMeta meta, CancellationToken ct)
    {
        using var root = Root(spec);
        var parent = Path.GetDirectoryName(path) ?? "/";
        // Make missing parents one level at a time, each resolved inside the root.
        var cur = "/";
        foreach (var part in parent.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            using (var d = RootedFs.Open(root, cur, O.RDONLY | O.DIRECTORY)) RootedFs.MkdirAt(d, part, 0b111_101_101);
            cur = cur.TrimEnd('/') + "/" + part;
        }
        var tmp = path + ".hull-push-" + Guid.NewGuid().ToString("N")[..8];
        using (var fd = RootedFs.Open(root, tmp, O.WRONLY | O.CREAT | O.EXCL, (uint)meta.Mode))
        {
            RootedFs.FChown(fd, (uint)meta.Uid, (uint)meta.Gid);
            RootedFs.FChmod(fd, (uint)meta.Mode);
            await using var fs = new FileStream(new SafeFileHandle(fd.DangerousGetHandle(), false), FileAccess.Write,
                1);
            try { await content.CopyToAsync(fs, ct); }
            catch
            {
                using var d = RootedFs.Open(root, parent, O.RDONLY | O.DIRECTORY);
                RootedFs.UnlinkAt(d, Path.GetFileName(tmp), false);
                throw;
            }
        }
        using var pd = RootedFs.Open(root, parent, O.RDONLY | O.DIRECTORY);
        File.Move($"/proc/self/fd/{pd.Fd}/{Path.GetFileName(tmp)}", $"/proc/self/fd/{pd.Fd}/{Path.GetFileName(path)}",
            overwrite: true);
    }

    public Task DeleteFileAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        using var root = Root(spec);
        var st = StatFileAsync(spec, path, ct).Result
            ?? throw new InstanceException($"{path} does not exist in instance '{spec.Name}'", 404);
        using var d = RootedFs.Open(root, Path.GetDirectoryName(path) ?? "/", O.RDONLY | O.DIRECTORY);
        RootedFs.UnlinkAt(d, Path.GetFileName(path), st.Type == "directory");
        return Task.CompletedTask;
    }

    // ---- console and logs ----

    public Task<IConsoleSession> AttachConsoleAsync(InstanceSpec spec, CancellationToken ct)
    {
        var input = new FileStream(F(spec, "console.in"), FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 1);
        return Task.FromResult<IConsoleSession>(
            new Console(new LogFileStream(F(spec, "console.log"), () => Alive(spec) is not null, follow: true,
            fromEnd: true), input));
    }

    sealed class Console(Stream output, Stream input) : IConsoleSession
    {
        public Stream Output => output;
        public Stream? Input => input;
        public ValueTask DisposeAsync() { output.Dispose(); input.Dispose(); return ValueTask.CompletedTask; }
    }

    public Task<Stream> OpenLogAsync(InstanceSpec spec, bool follow, CancellationToken ct) =>
        Task.FromResult<Stream>(new LogFileStream(F(spec, "console.log"), () => Alive(spec) is not null, follow,
            fromEnd: false));

    // ---- snapshots ----

    string SnapDir(InstanceSpec spec, string snap) => Path.Combine(spec.Dir, "snapshots", snap);

    public async Task CreateSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct)
    {
        Directory.CreateDirectory(Path.Combine(spec.Dir, "snapshots"));
        await Run(ct, "cp", "-a", "--reflink=auto", Rootfs(spec), SnapDir(spec, snapshot));
    }

    public async Task RestoreSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct)
    {
        var next = Rootfs(spec) + ".restore";
        Files.RemoveTree(next);
        await Run(ct, "cp", "-a", "--reflink=auto", SnapDir(spec, snapshot), next);
        var old = Rootfs(spec) + ".old";
        Files.RemoveTree(old);
        Directory.Move(Rootfs(spec), old);
        Directory.Move(next, Rootfs(spec));
        Files.RemoveTree(old);
    }

    public Task DeleteSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct)
    {
        Files.RemoveTree(SnapDir(spec, snapshot));
        return Task.CompletedTask;
    }

    // ---- stats: the init's process group, from /proc ----

    public Task<InstanceStats> GetStatsAsync(InstanceSpec spec, CancellationToken ct)
    {
        var s = new InstanceStats();
        if (Alive(spec) is not { } pgid) return Task.FromResult(s);
        foreach (var d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), CultureInfo.InvariantCulture, out var pid)) continue;
            try
            {
                var stat = File.ReadAllText($"/proc/{pid}/stat");
                var f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                if (int.Parse(f[2], CultureInfo.InvariantCulture) != pgid && pid != pgid) continue;
                s.Pids++;
                s.CpuUsageNs += (long.Parse(f[11], CultureInfo.InvariantCulture)
                    + long.Parse(f[12], CultureInfo.InvariantCulture)) * 10_000_000;
                s.MemoryBytes += long.Parse(f[21], CultureInfo.InvariantCulture) * Environment.SystemPageSize;
                foreach (var line in File.ReadLines($"/proc/{pid}/io"))
                {
                    if (line.StartsWith("read_bytes:", StringComparison.Ordinal)) s.IoReadBytes += long.Parse(
                        line[11..].Trim(), CultureInfo.InvariantCulture);
                    else if (line.StartsWith("write_bytes:", StringComparison.Ordinal)) s.IoWriteBytes += long.Parse(
                        line[12..].Trim(), CultureInfo.InvariantCulture);
                }
            }
            catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException) { }
        }
        return Task.FromResult(s);
    }
}
