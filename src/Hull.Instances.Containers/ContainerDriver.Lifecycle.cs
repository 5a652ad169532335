using System.Globalization;
using Hull.Api;
using Hull.Containers;
using Hull.Linux;
using Hull.Oci;

namespace Hull.Instances.Containers;

/// <summary>The container's life, through the monitor: start, stop (returns when the monitor says the init is gone),
/// signals, pause and resume, limits, state, reattach, exit, exec and stats.</summary>
public sealed partial class ContainerDriver
{
    /// <summary>The instance's engine container as the monitor sees it; null if there is none.</summary>
    (ContainerStatus Status, int Pid, ulong StartTime)? Find(InstanceSpec spec)
    {
        // No engine container (the instance is stopped and cleaned up): nothing to ask, and no monitor to start for it.
        if (!_containers.Exists(spec.Name)) return null;
        try { return _monitor.State(spec.Name); }
        catch (MonitorException) { return null; }
    }

    bool IsRunning(InstanceSpec spec) => Find(spec) is { } f && f.Status.IsLive();

    /// <summary>Removes the engine container of an instance (the monitor kills and reaps an init still
    /// alive).</summary>
    void CleanupEngine(InstanceSpec spec)
    {
        if (_containers.Exists(spec.Name))
        {
            try { _monitor.Delete(spec.Name); }
            catch (MonitorException) when (!_containers.Exists(spec.Name)) { }
        }
        else if (Directory.Exists(_containers.Dir(spec.Name)))
        {
            try { _monitor.Delete(spec.Name); } catch (MonitorException) { }
        }
    }

    public async Task StartAsync(InstanceSpec spec, IReadOnlyList<DeviceRunConfig> devices, CancellationToken ct)
    {
        await Lock(spec).WaitAsync(ct);
        try
        {
            if (IsRunning(spec)) throw new InstanceException($"instance '{spec.Name}' is already running", 409);
            CleanupEngine(spec);
            File.Delete(P(spec, "exit"));
            if (Unprivileged.OnDisk(spec) != Unprivileged.Wanted(spec))
            {
                UnmountRootfs(spec); // a rootfs left mounted by create sees the image through the old map
                _ids.Shift(spec, Unprivileged.Wanted(spec));
            }
            MountRootfs(spec);
            try
            {
                var oci = BuildSpec(spec, devices, out var init);
                WriteOwn(spec, "config.json", System.Text.Json.JsonSerializer.Serialize(oci, OciJson.Default.Spec));
                using var devnull = Sys.Open("/dev/null", O.RDWR);
                using var log = OpenConsoleLog(spec);
                var logStart = (long)RootedFs.FStat(log).Size;
                // The monitor creates and starts it (and rolls back if that fails): the init is the monitor's child.
                var nics = devices.Select(d => d.Nic).OfType<NicSpec>().ToList();
                await Task.Run(() => _monitor.CreateAndStart(spec.Name, spec.Dir, oci, P(spec, "exit"),
                    [devnull, log, log], nics.Count > 0 ? nics : null), ct);
                if (init is not null) await FailIfInitDiesAtOnce(spec, logStart, ct);
            }
            catch (Exception e)
            {
                // Reap the init if it was ours and died, then drop everything made for this start.
                try { CleanupEngine(spec); } catch (Exception) { }
                UnmountRootfs(spec);
                if (e is InstanceException) throw;
                throw new InstanceException($"starting container '{spec.Name}' failed: {e.Message}", 500);
            }
        }
        finally { Lock(spec).Release(); }
    }

    /// <summary>
    /// An init system that ends before it has started a process of its own failed to boot (every init's first act is
    /// to run something: systemd its generators and journald, busybox init and sysvinit their sysinit entries, while
    /// the failures the issue saw, such as systemd unable to mount /run, end it before that): the start fails with its
    /// exit status and its last console lines, rather than leaving a silent Stopped instance. The monitor's exit event
    /// says so as soon as it ends; a healthy start returns once its init has a child (looked at every
    /// <see cref="LifeSignPoll"/>), or after <see cref="EarlyExit"/> for an init that neither forks nor ends.
    /// </summary>
    async Task FailIfInitDiesAtOnce(InstanceSpec spec, long logStart, CancellationToken ct)
    {
        if (Find(spec) is not { } f) return;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var exit = ExitOf(spec, f, stop.Token);
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (!exit.IsCompleted && !ProcFs.HasChildren(f.Pid) && waited.Elapsed < EarlyExit)
            await Task.WhenAny(exit, Task.Delay(LifeSignPoll, ct));
        if (!exit.IsCompleted)
        {
            await stop.CancelAsync();
            try { await exit; return; }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested) { return; }
        }
        await exit;
        var code = ReadExit(spec);
        var status = code is null ? "with an unknown status" : code > 128 ? $"on signal {code - 128} (code {code})"
            : $"with code {code}";
        var tail = ConsoleTail(spec, logStart, 10);
        throw new InstanceException($"the init of container '{spec.Name}' (/sbin/init) exited at once {status}" +
            (tail.Length > 0 ? $"; its last console lines:\n{tail}" : "; it wrote nothing to its console") +
            $"\n(all of it: hull logs {spec.Name})", 500);
    }

    /// <summary>The longest a start waits for a sign of life of an init that neither forks nor ends.</summary>
    static readonly TimeSpan EarlyExit = TimeSpan.FromMilliseconds(300);

    /// <summary>How often a start looks for the init's first child.</summary>
    static readonly TimeSpan LifeSignPoll = TimeSpan.FromMilliseconds(2);

    /// <summary>The last <paramref name="lines"/> lines console.log got since <paramref name="from"/>.</summary>
    static string ConsoleTail(InstanceSpec spec, long from, int lines)
    {
        try
        {
            using var fs = new FileStream(ConsoleLogPath(spec), FileMode.Open, FileAccess.Read);
            fs.Seek(Math.Max(from, fs.Length - 16384), SeekOrigin.Begin);
            // A system container's console is a pty: its lines end in \r\n.
            var text = new StreamReader(fs).ReadToEnd().Replace("\r\n", "\n").TrimEnd('\n');
            return string.Join('\n', text.Split('\n').TakeLast(lines));
        }
        catch (IOException) { return ""; }
    }

    /// <summary>After the init ended: removes the engine container (cgroup, state) and unmounts the overlay.</summary>
    void AfterExit(InstanceSpec spec)
    {
        Lock(spec).Wait();
        try
        {
            if (Find(spec) is { Status: ContainerStatus.Stopped }) CleanupEngine(spec);
            if (!IsRunning(spec)) UnmountRootfs(spec);
        }
        catch (Exception e) { DriverLog.Warning($"cleaning up container '{spec.Name}': {e.Message}", spec.Name); }
        finally { Lock(spec).Release(); }
    }

    static void WriteExit(InstanceSpec spec, int code)
    {
        if (!Directory.Exists(spec.Dir)) return;
        WriteOwn(spec, "exit", code.ToString(CultureInfo.InvariantCulture));
    }

    /// <summary>The exit record the monitor wrote (before it reaped the init and told hulld).</summary>
    static int? ReadExit(InstanceSpec spec) =>
        int.TryParse(ReadOwn(spec, "exit")?.Trim(), CultureInfo.InvariantCulture, out var c) ? c : null;

    /// <summary>Waits until the init has ended (the monitor's exit event, or the record on disk if it ended already);
    /// its exit code, or null if nobody saw it (the init was not the monitor's child: its monitor died).</summary>
    Task<int?> ExitOf(InstanceSpec spec, (ContainerStatus Status, int Pid, ulong StartTime) f, CancellationToken ct) =>
        _monitor.WaitExitAsync(spec.Name, f.Pid, f.StartTime, () => ReadExit(spec), ct);

    /// <summary><see cref="ExitOf"/> within <paramref name="timeout"/>; false when it has not ended by then.</summary>
    async Task<bool> EndsWithin(InstanceSpec spec, (ContainerStatus, int, ulong) f, TimeSpan timeout,
        CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        if (timeout != Timeout.InfiniteTimeSpan) cts.CancelAfter(timeout);
        try { await ExitOf(spec, f, cts.Token); return true; }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested) { return false; }
    }

    public async Task<int?> StopAsync(InstanceSpec spec, bool force, TimeSpan timeout, CancellationToken ct)
    {
        if (Find(spec) is { } f && f.Status is not ContainerStatus.Stopped)
        {
            if (f.Status == ContainerStatus.Paused) { try { _monitor.Resume(spec.Name); } catch (MonitorException) { } }
            var ended = false;
            if (!force)
            {
                try { _monitor.Kill(spec.Name, HaltSignal(spec), all: false); } catch (MonitorException) { }
                ended = await EndsWithin(spec, f, timeout, ct);
            }
            if (!ended && IsRunning(spec))
            {
                try { _monitor.Kill(spec.Name, Signals.SIGKILL, all: true); } catch (MonitorException) { }
                if (!await EndsWithin(spec, f, TimeSpan.FromSeconds(10), ct))
                    throw new InstanceException($"container '{spec.Name}' did not die within 10 s of SIGKILL; try " +
                        "again", 500);
                if (ReadExit(spec) is null) WriteExit(spec, 128 + Signals.SIGKILL);
            }
            // Not recorded (an init the monitor is not the parent of): it ended after the SIGTERM, with a code
            // nobody saw, so it stays unknown.
            else if (!ended) await ExitOf(spec, f, ct);
        }
        AfterExit(spec);
        return ReadExit(spec);
    }

    /// <summary>The signal that stops the instance's init cleanly: oci.stopsignal if set (an OCI image's StopSignal),
    /// else the halt signal of the init system its start booted (recorded in config.json; systemd takes SIGTERM as
    /// "re-execute"), SIGTERM for any other init.</summary>
    static int HaltSignal(InstanceSpec spec) =>
        spec.Config.TryGetValue(AppConfig.StopSignalKey, out var stop) ? AppConfig.ParseSignal(stop)
        : RecordedInit(spec) is { } k ? SystemContainers.SignalsOf(k).Halt : Signals.SIGTERM;

    /// <summary>The init system the instance's last start booted (recorded in its config.json); null for any other
    /// init.</summary>
    static InitKind? RecordedInit(InstanceSpec spec)
    {
        try
        {
            var oci = ReadOwn(spec, "config.json") is { } json
                ? System.Text.Json.JsonSerializer.Deserialize(json, OciJson.Default.Spec) : null;
            return oci is null ? null : SystemContainers.Recorded(oci);
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InstanceException or IOException)
        {
            return null;
        }
    }

    /// <summary>A refusal of the monitor's for a running instance (not running, already paused...): a
    /// conflict.</summary>
    static InstanceException Conflict(InstanceSpec spec, MonitorException e) =>
        new($"instance '{spec.Name}': {e.Message}", 409);

    public Task KillAsync(InstanceSpec spec, int signal, CancellationToken ct)
    {
        try { _monitor.Kill(spec.Name, signal, all: false); }
        catch (MonitorException e) { throw Conflict(spec, e); }
        return Task.CompletedTask;
    }

    public Task PauseAsync(InstanceSpec spec, CancellationToken ct)
    {
        try { _monitor.Pause(spec.Name); }
        catch (MonitorException e) { throw Conflict(spec, e); }
        return Task.CompletedTask;
    }

    public Task ResumeAsync(InstanceSpec spec, CancellationToken ct)
    {
        try { _monitor.Resume(spec.Name); }
        catch (MonitorException e) { throw Conflict(spec, e); }
        return Task.CompletedTask;
    }

    static InstanceState MapState(ContainerStatus status) => status switch
    {
        ContainerStatus.Running or ContainerStatus.Created => InstanceState.Running,
        ContainerStatus.Paused => InstanceState.Paused,
        _ => InstanceState.Stopped,
    };

    public Task<DriverState> GetStateAsync(InstanceSpec spec, CancellationToken ct)
    {
        var f = Find(spec);
        var state = f is { } x ? MapState(x.Status) : InstanceState.Stopped;
        var code = state == InstanceState.Stopped ? ReadExit(spec) : null;
        return Task.FromResult(new DriverState
        {
            State = state, Pid = state == InstanceState.Stopped ? null : f!.Value.Pid, ExitCode = code,
            Rebooted = code is { } c && SystemContainers.IsReboot(c) && RecordedInit(spec) is not null,
        });
    }

    public async Task<ReattachResult> ReattachAsync(InstanceSpec spec, CancellationToken ct)
    {
        var f = Find(spec);
        var state = f is { } x ? MapState(x.Status) : InstanceState.Stopped;
        if (state == InstanceState.Stopped)
        {
            // It ended while hulld was away: the monitor recorded its exit code (unless it was not the init's parent).
            if (f is { } ended) await ExitOf(spec, ended, ct);
            AfterExit(spec);
            return new ReattachResult { State = state, ExitCode = ReadExit(spec) };
        }
        return new ReattachResult { State = state, Pid = f!.Value.Pid };
    }

    public async Task<int?> WaitForExitAsync(InstanceSpec spec, CancellationToken ct)
    {
        // The init is the monitor's child, not ours: the monitor tells when it has ended (an init of a monitor that
        // died is watched through a pidfd).
        if (Find(spec) is { } f) await ExitOf(spec, f, ct);
        await Task.Run(() => AfterExit(spec), ct);
        // Not recorded (its monitor was killed): unknown, not made up.
        return ReadExit(spec);
    }

    public Task<bool> ApplyLimitsAsync(InstanceSpec spec, CancellationToken ct)
    {
        if (!IsRunning(spec)) return Task.FromResult(true);
        var r = new Resources();
        r.Memory = new Memory { Limit = spec.Limits.MemoryBytes ?? -1 };
        r.Pids = new Pids { Limit = spec.Limits.Processes ?? -1 };
        r.Cpu = spec.Limits.Cpus is { } c ? new Cpu { Quota = c * 100_000L, Period = 100_000 }
            : new Cpu { Quota = -1, Period = 100_000 };
        try { _monitor.Update(spec.Name, r); }
        catch (MonitorException) { return Task.FromResult(false); }
        return Task.FromResult(true);
    }

    // ---- exec ----

    /// <summary>
    /// The monitor prepares the exec's process (the container's own process settings with the caller's command); a
    /// fresh, sealed hull-oci spawned here enters the container (<see cref="ContainerExec"/>): no process that shares
    /// memory with hulld or the monitor ever does. hulld spawns it rather than the monitor because the exec's stdio,
    /// pty and pidfd live here, with the session that streams them.
    /// </summary>
    public Task<IExecSession> ExecAsync(InstanceSpec spec, ExecSpec exec, CancellationToken ct)
    {
        if (Find(spec) is not { Status: ContainerStatus.Running } f)
            throw new InstanceException($"instance '{spec.Name}' is not running"
                + (Find(spec) is { Status: ContainerStatus.Paused } ? " (it is paused: resume it first)" : ""), 409);
        var env = exec.Environment.Select(kv => $"{kv.Key}={kv.Value}").ToList();
        Hull.Oci.Process p;
        try { p = _monitor.ExecProcess(spec.Name, [.. exec.Command], env, exec.Cwd, NumericUser(f.Pid, exec.User)); }
        catch (MonitorException e) { throw new InstanceException(e.Message); }
        try
        {
            return Task.FromResult(exec.Tty ? ContainerExec.StartPty(_containers.Root, spec.Name, f.Pid, p, exec.Width,
                exec.Height)
                                            : ContainerExec.StartPipes(_containers.Root, spec.Name, p));
        }
        catch (ContainerException e) when (e.ExitCode is 126 or 127)
        {
            // As a shell would: the program cannot be run, so the exec ends at once with 127 (not found) or 126.
            return Task.FromResult(ContainerExec.Failed(e.ExitCode, e.Message, exec.Tty));
        }
        catch (ContainerException e) { throw new InstanceException(e.Message, 500); }
    }

    /// <summary>An exec's user as UID:GID, names looked up in the running container's own account files.</summary>
    static string? NumericUser(int initPid, string? user)
    {
        if (user is null || user.Split(':').All(p => uint.TryParse(p, out _))) return user;
        using var root = Sys.Open($"/proc/{initPid}/root", O.RDONLY | O.DIRECTORY);
        var u = ContainerUsers.Resolve(root, user);
        return string.Create(CultureInfo.InvariantCulture, $"{u.Uid}:{u.Gid}");
    }

    // ---- stats: the container's cgroup ----

    public Task<InstanceStats> GetStatsAsync(InstanceSpec spec, CancellationToken ct)
    {
        var s = new InstanceStats();
        if (Find(spec) is not { Status: not ContainerStatus.Stopped }) return Task.FromResult(s);
        try
        {
            var m = _monitor.Stats(spec.Name);
            s.CpuUsageNs = m.CpuUsageNs;
            s.MemoryBytes = m.MemoryBytes;
            s.Pids = m.Pids;
            s.IoReadBytes = m.IoReadBytes;
            s.IoWriteBytes = m.IoWriteBytes;
        }
        catch (MonitorException) { }
        return Task.FromResult(s);
    }
}
