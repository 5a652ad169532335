using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using Hull.Linux;
using Hull.Vm.Qmp;

namespace Hull.Vm;

/// <summary>Starting QEMU, its state, stopping, pausing and resuming it.</summary>
public sealed partial class Vm
{
    static int? ReadPid(string dir)
    {
        try
        {
            var p = Path.Combine(dir, StateFiles.Pid);
            return File.Exists(p) && int.TryParse(File.ReadAllText(p).Trim(), out var pid) ? pid : null;
        }
        catch (IOException) { return null; }
    }

    void CleanRuntimeFiles()
    {
        foreach (var f in new[] { StateFiles.Qmp, StateFiles.Agent, StateFiles.Console, StateFiles.Pid,
            "migrate.sock" })
            Tools.TryDelete(Path.Combine(_dir, f));
    }

    /// <summary>The QEMU argv this VM starts with.</summary>
    public IReadOnlyList<string> CommandLine(bool paused = false)
    {
        var a = QemuCommand.Build(Config, _dir);
        if (paused) a.Add("-S");
        return a;
    }

    /// <summary>
    /// Starts QEMU (detached, in its own session) and connects QMP. If QEMU dies during start, its stderr is in the
    /// error and nothing is left running. <paramref name="paused"/> starts with the CPUs stopped (-S).
    /// </summary>
    public async Task StartAsync(bool paused = false, CancellationToken ct = default)
    {
        if (Pid is int running) throw new VmException(
            $"VM '{Name}' is already running (QEMU pid {running}): stop it first");
        CleanRuntimeFiles();
        RotateConsoleLog();
        foreach (var d in Config.Disks)
            if (!File.Exists(d.Path)) throw new VmException(
                $"disk image {d.Path} of VM '{Name}' is missing: restore it or remove the disk");
        var qemu = Tools.Qemu(Config);
        var args = CommandLine(paused);
        var log = Path.Combine(_dir, StateFiles.QemuLog);
        File.AppendAllText(log, $"--- {DateTimeOffset.UtcNow:O} starting QEMU\n");
        var logStart = new FileInfo(log).Length;
        _stopRequested = false;
        _lastShutdownReason = null;
        SpawnedChild child;
        using (var devnull = Sys.Open("/dev/null", O.RDWR))
        using (var logFd = Sys.Open(log, O.WRONLY | O.APPEND | O.CREAT, 0b110_100_000))
        {
            var req = new SpawnRequest
            {
                Path = qemu,
                Argv = [qemu, .. args],
                Env = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                Setsid = true,
                Chdir = _dir,
            };
            req.Fds.Add((devnull, 0));
            req.Fds.Add((devnull, 1));
            req.Fds.Add((logFd, 2));
            child = Spawner.Spawn(req);
        }
        var pid = child.Pid;
        var exited = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        _exited = exited;
        var t = new Thread(() =>
        {
            var status = Sys.WaitPid(pid);
            child.Dispose();
            exited.TrySetResult(status);
        }) { IsBackground = true, Name = $"qemu-wait-{pid}" };
        t.Start();
        _ = exited.Task.ContinueWith(s => Finished(s.Result, pid), TaskScheduler.Default);
        string QemuSaid() => ReadFrom(log, logStart);
        try
        {
            var sw = Stopwatch.StartNew();
            while (true)
            {
                ct.ThrowIfCancellationRequested();
                if (exited.Task.IsCompleted)
                    throw new VmException($"QEMU for VM '{Name}' exited during start " +
                        $"({Describe(exited.Task.Result)}): {QemuSaid().Trim()}");
                if (Path.Exists(QmpSocketPath))
                {
                    try { await ConnectAsync(ct, QemuSaid).ConfigureAwait(false); break; }
                    catch (QemuGoneException) when (!exited.Task.IsCompleted
                        && sw.Elapsed < TimeSpan.FromSeconds(30)) { }
                    catch (QemuGoneException) when (exited.Task.IsCompleted) { continue; }
                }
                if (sw.Elapsed > TimeSpan.FromSeconds(30))
                    throw new VmException($"QEMU for VM '{Name}' did not open its QMP socket within 30 s: " +
                        $"{QemuSaid().Trim()}");
                await Task.Delay(20, ct).ConfigureAwait(false);
            }
            Record(paused ? VmRecordState.Paused : VmRecordState.Running, null);
        }
        catch
        {
            _stopRequested = true;
            Libc.kill(pid, Signals.SIGKILL);
            await exited.Task.ConfigureAwait(false);
            _qmp?.Dispose();
            _qmp = null;
            CleanRuntimeFiles();
            throw;
        }
    }

    static string ReadFrom(string path, long offset)
    {
        try
        {
            using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            if (f.Length <= offset) return "";
            f.Position = offset;
            using var r = new StreamReader(f);
            var s = r.ReadToEnd();
            return s.Length > 4000 ? s[^4000..] : s;
        }
        catch (IOException) { return ""; }
    }

    static string Describe(int status) => (status & 0x7f) == 0 ? $"exit code {(status >> 8) & 0xff}"
        : $"killed by signal {status & 0x7f}";

    async Task ConnectAsync(CancellationToken ct, Func<string>? diagnostics = null)
    {
        diagnostics ??= () => Tools.Tail(QemuLogPath);
        var pidAtConnect = ReadPid(_dir);
        var q = await QmpClient.ConnectAsync(QmpSocketPath, TimeSpan.FromSeconds(10), diagnostics,
            ct).ConfigureAwait(false);
        _qmp = q;
        _disposed = false;
        _eventSub = q.Subscribe(OnEvent);
        _ = q.Closed.ContinueWith(_ => OnQmpClosed(pidAtConnect), TaskScheduler.Default);
    }

    volatile bool _agentPortOpen;
    TaskCompletionSource _agentOpened = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>True while the guest holds the agent port open (seen through QMP VSERPORT_CHANGE events).</summary>
    public bool AgentPortOpen => _agentPortOpen;

    /// <summary>
    /// Waits until a program in the guest (the agent) opens the agent port. Throws a <see cref="VmException"/> naming
    /// the port and where to look when nothing opens it in time. (Only events seen by this object count: call it on
    /// the Vm that started or attached the VM before the guest gets there.)
    /// </summary>
    public async Task WaitForAgentPortAsync(TimeSpan timeout, CancellationToken ct = default)
    {
        if (_agentPortOpen) return;
        if (Pid is null) throw new VmException($"VM '{Name}' is not running: start it before waiting for its agent");
        var done = await Task.WhenAny(_agentOpened.Task, Task.Delay(timeout, ct),
            _exited?.Task ?? Task.Delay(Timeout.Infinite, ct)).ConfigureAwait(false);
        ct.ThrowIfCancellationRequested();
        if (done == _agentOpened.Task) return;
        if (Pid is null) throw new VmException(
            $"VM '{Name}' stopped while waiting for its agent ({LastRecord?.Reason})");
        throw new VmException($"the guest agent of VM '{Name}' did not answer within {timeout.TotalSeconds:0} s: " +
            "nothing in the guest opened " +
            $"the port {AgentChannel.PortName} ({AgentChannel.GuestDevice}). Check that the image includes " +
                $"hull-agent and see {ConsoleLogPath}");
    }

    void OnEvent(QmpEvent e)
    {
        if (e.Name == "VSERPORT_CHANGE" && e.Data?["id"]?.GetValue<string>() == AgentChannel.DeviceId)
        {
            _agentPortOpen = e.Data?["open"]?.GetValue<bool>() == true;
            if (_agentPortOpen) _agentOpened.TrySetResult();
            else _agentOpened = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        if (e.Name == "SHUTDOWN") _lastShutdownReason = e.Data?["reason"]?.GetValue<string>();
        if (e.Name == "GUEST_PANICKED")
        {
            Record(VmRecordState.Crashed, "the guest kernel panicked");
            if (Config.OnPanic == PanicPolicy.Stop) _ = Task.Run(() => KillAsync());
        }
        Events?.Invoke(e);
        Action<QmpEvent>[] hs;
        lock (_handlers) hs = [.. _handlers];
        foreach (var h in hs) h(e);
    }

    volatile bool _disposed;

    void OnQmpClosed(int? pid)
    {
        if (_disposed) return; // we closed it; QEMU goes on
        if (_exited is not null) return; // our child: the reaper has the exit status
        // Attached to a QEMU we did not start: wait for it to go, then record why it went.
        for (var i = 0; i < 100 && pid is int p && Sys.ProcessExists(p); i++) Thread.Sleep(50);
        if (pid is int p2 && Sys.ProcessExists(p2)) return;
        Finished(null, pid);
    }

    /// <summary>
    /// QEMU ended while no Hull process watched it (hulld was down): its exit status is lost. A guest that powered
    /// off says so last on its console; anything else (QEMU killed, or crashed) is recorded as a crash with what
    /// QEMU's log says, so the instance shows Error with the reason rather than a plain Stopped.
    /// </summary>
    void EndedUnwatched()
    {
        if (Tools.Tail(ConsoleLogPath, 3).Contains("reboot: Power down", StringComparison.Ordinal))
            Record(VmRecordState.Stopped, "the guest powered off (while no Hull process was watching)");
        else
        {
            var log = Tools.Tail(QemuLogPath, 6).Trim();
            Record(VmRecordState.Crashed, "QEMU ended while no Hull process was watching it (killed, or crashed; " +
                $"its exit status is unknown){(log.Length > 0 ? ": " + log : "")}");
        }
        CleanRuntimeFiles();
    }

    void Finished(int? status, int? pid)
    {
        // A QEMU started since (restart) owns the state dir now: leave its files and record alone.
        if (ReadPid(_dir) is int current && current != pid) return;
        var last = LastRecord;
        if (_stopRequested) { if (last?.State is not (VmRecordState.Crashed or VmRecordState.Migrated)) Record(
            VmRecordState.Stopped, "stopped by Hull"); }
        else if (last?.State == VmRecordState.Crashed) { }
        else if (_lastShutdownReason is "guest-shutdown" or "host-qmp-system-reset" || (status is int s && s == 0))
            Record(VmRecordState.Stopped, _lastShutdownReason == "guest-shutdown" ? "the guest powered off"
                : "QEMU exited");
        else
            Record(VmRecordState.Crashed, "QEMU exited unexpectedly " +
                $"({(status is int st ? Describe(st) : "exit status unknown")}): {Tools.Tail(QemuLogPath, 6).Trim()}");
        CleanRuntimeFiles();
    }

    /// <summary>The current state, asked from QEMU when it runs.</summary>
    public async Task<VmState> GetStateAsync(CancellationToken ct = default)
    {
        if (Pid is null || _qmp is null)
        {
            return LastRecord?.State == VmRecordState.Crashed ? VmState.Crashed : VmState.Stopped;
        }
        try
        {
            var st = await _qmp.ExecuteObjectAsync("query-status", ct: ct).ConfigureAwait(false);
            return st["status"]?.GetValue<string>() switch
            {
                "running" => VmState.Running,
                "paused" or "suspended" or "debug" => VmState.Paused,
                "guest-panicked" or "internal-error" or "io-error" => VmState.Crashed,
                "inmigrate" or "prelaunch" when Config.Incoming is not null => VmState.Incoming,
                "prelaunch" => VmState.Paused,
                "shutdown" or "postmigrate" => VmState.Stopped,
                _ => VmState.Busy,
            };
        }
        catch (QemuGoneException)
        {
            await Task.Delay(100, ct).ConfigureAwait(false);
            return LastRecord?.State == VmRecordState.Crashed ? VmState.Crashed : VmState.Stopped;
        }
    }

    /// <summary>
    /// Stops the VM: presses the ACPI power button and waits up to <paramref name="timeout"/> (default: the config's
    /// StopTimeoutSeconds) for the guest to power off, then ends QEMU. Returns true if the guest shut down by itself.
    /// </summary>
    public async Task<bool> StopAsync(TimeSpan? timeout = null, CancellationToken ct = default)
    {
        if (Pid is null) return true;
        _stopRequested = true;
        var graceful = false;
        try
        {
            if (_qmp is not null)
            {
                var st = await _qmp.ExecuteObjectAsync("query-status", ct: ct).ConfigureAwait(false);
                if (st["status"]?.GetValue<string>() == "running")
                {
                    await _qmp.ExecuteAsync("system_powerdown", ct: ct).ConfigureAwait(false);
                    graceful = await WaitExitAsync(timeout ?? TimeSpan.FromSeconds(Config.StopTimeoutSeconds),
                        ct).ConfigureAwait(false);
                }
            }
        }
        catch (QemuGoneException) { graceful = await WaitExitAsync(TimeSpan.FromSeconds(2), ct).ConfigureAwait(false); }
        if (!graceful) await KillAsync().ConfigureAwait(false);
        Record(VmRecordState.Stopped, graceful ? "the guest powered off (ACPI)"
            : "stopped by Hull (forced after the ACPI timeout)");
        return graceful;
    }

    async Task<bool> WaitExitAsync(TimeSpan timeout, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < timeout)
        {
            if (_exited is not null ? _exited.Task.IsCompleted : Pid is null) return true;
            await Task.Delay(50, ct).ConfigureAwait(false);
        }
        return false;
    }

    /// <summary>Ends QEMU now: QMP quit, then SIGKILL if it does not go within 3 s.</summary>
    public async Task KillAsync()
    {
        _stopRequested = true;
        var pid = ReadPid(_dir);
        if (_qmp is not null)
        {
            try { await _qmp.ExecuteAsync("quit", timeout: TimeSpan.FromSeconds(3)).ConfigureAwait(false); }
            catch (Exception e) when (e is QemuGoneException or TimeoutException or QmpException) { }
        }
        if (!await WaitExitAsync(TimeSpan.FromSeconds(3), CancellationToken.None).ConfigureAwait(false) && pid is int p)
        {
            Libc.kill(p, Signals.SIGKILL);
            if (_exited is not null) await _exited.Task.ConfigureAwait(false);
            else for (var i = 0; i < 100 && Sys.ProcessExists(p); i++) await Task.Delay(20).ConfigureAwait(false);
        }
        if (_exited is not null) await _exited.Task.ConfigureAwait(false);
        _eventSub?.Dispose();
        _qmp?.Dispose();
        _qmp = null;
        CleanRuntimeFiles();
        if (LastRecord?.State is not (VmRecordState.Crashed or VmRecordState.Migrated)) Record(VmRecordState.Stopped,
            "stopped by Hull");
    }

    public Task PowerButtonAsync(CancellationToken ct = default) => Qmp.ExecuteAsync("system_powerdown", ct: ct);
    public Task PauseAsync(CancellationToken ct = default) => Qmp.ExecuteAsync("stop", ct: ct);
    public Task ResumeAsync(CancellationToken ct = default) => Qmp.ExecuteAsync("cont", ct: ct);

    /// <summary>Stops (ACPI with timeout, then forced) and starts again.</summary>
    public async Task RestartAsync(TimeSpan? stopTimeout = null, CancellationToken ct = default)
    {
        await StopAsync(stopTimeout, ct).ConfigureAwait(false);
        await StartAsync(ct: ct).ConfigureAwait(false);
    }

    /// <summary>Hard reset of the running guest (like the reset button).</summary>
    public Task ResetAsync(CancellationToken ct = default) => Qmp.ExecuteAsync("system_reset", ct: ct);

    /// <summary>Closes the QMP connection; QEMU keeps running.</summary>
    public async ValueTask DisposeAsync()
    {
        _disposed = true;
        _eventSub?.Dispose();
        if (_qmp is not null) await _qmp.DisposeAsync().ConfigureAwait(false);
        _qmp = null;
    }
}
