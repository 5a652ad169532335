using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using Hull.Linux;
using Hull.Vm.Qmp;

namespace Hull.Vm;

/// <summary>Host-wide settings for the VM engine.</summary>
public sealed class VmHostOptions
{
    /// <summary>Where the accelerator verdict (and images) are cached.</summary>
    public required string CacheDir { get; init; }
}

/// <summary>
/// A VM: a state dir with its config, and (while running) a detached QEMU process driven over QMP.
/// QEMU runs in its own session, so the VM outlives the process that started it; <see cref="AttachAsync"/> reconnects.
/// </summary>
public sealed partial class Vm : IAsyncDisposable
{
    readonly string _dir;
    readonly string _cacheDir;
    QmpClient? _qmp;
    IDisposable? _eventSub;
    volatile bool _stopRequested;
    volatile string? _lastShutdownReason;
    TaskCompletionSource<int>? _exited; // set when QEMU (our child) exits: its wait status
    readonly List<Action<QmpEvent>> _handlers = [];

    public VmConfig Config { get; private set; }
    public string StateDir => _dir;
    public string Name => Config.Name;
    /// <summary>The accelerator in use (KVM or TCG), after Auto was resolved.</summary>
    public Accel Accel => Config.ResolvedAccel;
    public string? AccelReason => Config.AccelReason;
    public string AgentSocketPath => Path.Combine(_dir, StateFiles.Agent);
    public string ConsoleSocketPath => Path.Combine(_dir, StateFiles.Console);
    public string ConsoleLogPath => Path.Combine(_dir, StateFiles.ConsoleLog);
    public string QmpSocketPath => Path.Combine(_dir, StateFiles.Qmp);
    public string QemuLogPath => Path.Combine(_dir, StateFiles.QemuLog);
    public string PidFilePath => Path.Combine(_dir, StateFiles.Pid);
    /// <summary>Why <see cref="AttachAsync"/> could not connect QMP to a running QEMU (null when it did).</summary>
    public string? AttachError { get; private set; }

    /// <summary>The QMP connection while QEMU runs.</summary>
    public QmpClient Qmp => _qmp ?? throw new VmException($"VM '{Name}' is not running: start it first");
    /// <summary>QEMU's pid while it runs.</summary>
    public int? Pid => ReadPid(_dir) is int p && Sys.ProcessExists(p) ? p : null;

    /// <summary>QMP events of this VM (STOP, RESUME, SHUTDOWN, GUEST_PANICKED...).</summary>
    public event Action<QmpEvent>? Events;

    Vm(string dir, VmConfig config, string cacheDir)
    {
        _dir = dir;
        Config = config;
        _cacheDir = cacheDir;
    }

    static string Full(string p) => Path.GetFullPath(p);

    // ---------------------------------------------------------------- create / attach / delete

    /// <summary>
    /// Defines a VM in <paramref name="stateDir"/> (created; must not already hold a VM): validates the config, resolves
    /// the accelerator, makes qcow2 overlays for disks that have a <see cref="DiskConfig.Base"/>, writes config.json.
    /// On any failure nothing is left behind.
    /// </summary>
    public static Task<Vm> CreateAsync(string stateDir, VmConfig config, VmHostOptions host, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(config);
        var dir = Full(stateDir);
        if (File.Exists(Path.Combine(dir, StateFiles.Config)))
            throw new VmException($"{dir} already holds a VM ({StateFiles.Config} exists): delete it or choose another state dir");
        var createdDir = !Directory.Exists(dir);
        var made = new List<string>();
        try
        {
            Directory.CreateDirectory(dir);
            var c = JsonSerializer.Deserialize(JsonSerializer.Serialize(config, VmJson.Default.VmConfig), VmJson.Default.VmConfig)!;
            Validate(c);
            var qemu = Tools.Qemu(c);
            var verdict = AccelProbe.Resolve(c.Accel, Path.Combine(host.CacheDir, "accel"), qemu);
            c.ResolvedAccel = verdict.Accel;
            c.AccelReason = verdict.Reason;
            if (c.Boot == BootMode.Uefi)
            {
                var vars = Path.Combine(dir, StateFiles.OvmfVars);
                File.Copy(c.FirmwareVars!, vars, overwrite: true);
                made.Add(vars);
            }
            for (var i = 0; i < c.Disks.Count; i++)
            {
                var d = c.Disks[i];
                d.Node = $"disk{i}";
                if (d.Base is not null && string.IsNullOrEmpty(d.Path))
                {
                    d.Path = Path.Combine(dir, $"disk{i}.qcow2");
                    d.Format = DiskFormat.Qcow2;
                    d.Owned = true;
                    var baseFmt = ImageFormatCached(d.Base);
                    Tools.Run(Tools.QemuImg, ["create", "-q", "-f", "qcow2", "-F", baseFmt, "-b", d.Base, d.Path], $"creating the overlay for {d.Base}");
                    made.Add(d.Path);
                }
            }
            var vm = new Vm(dir, c, host.CacheDir);
            vm.SaveConfig();
            return Task.FromResult(vm);
        }
        catch
        {
            foreach (var f in made) Tools.TryDelete(f);
            Tools.TryDelete(Path.Combine(dir, StateFiles.Config));
            if (createdDir) { try { DeleteTree(dir); } catch (IOException) { } }
            throw;
        }
    }

    /// <summary>Creates and starts; if the start fails, the VM is deleted again (nothing half-made is left).</summary>
    public static async Task<Vm> LaunchAsync(string stateDir, VmConfig config, VmHostOptions host, CancellationToken ct = default)
    {
        var createdDir = !Directory.Exists(stateDir);
        var vm = await CreateAsync(stateDir, config, host, ct).ConfigureAwait(false);
        try
        {
            await vm.StartAsync(ct: ct).ConfigureAwait(false);
            return vm;
        }
        catch
        {
            await vm.DeleteAsync(removeDir: createdDir).ConfigureAwait(false);
            throw;
        }
    }

    static string ImageFormat(string path)
    {
        var info = Tools.Run(Tools.QemuImg, ["info", "--output=json", path], $"reading the disk image {path}");
        return JsonNode.Parse(info)?["format"]?.GetValue<string>() ?? "raw";
    }

    static void Validate(VmConfig c)
    {
        if (string.IsNullOrWhiteSpace(c.Name) || c.Name.Any(ch => !(char.IsAsciiLetterOrDigit(ch) || ch is '-' or '_' or '.')))
            throw new VmException($"VM name '{c.Name}' is invalid: use letters, digits, '-', '_' and '.'");
        if (VmMemory.Problem(c.MemoryMiB) is { } memory) throw new VmException($"memory {c.MemoryMiB} MiB {memory}");
        if (c.Cpus < 1 || c.Cpus > 255) throw new VmException($"cpus {c.Cpus} is out of range: use 1 to 255");
        if (c.Hostname is not null && (c.Hostname.Length is 0 or > 63 || c.Hostname.Any(ch => !(char.IsAsciiLetterOrDigit(ch) || ch == '-'))))
            throw new VmException($"hostname '{c.Hostname}' is invalid: use up to 63 letters, digits and '-'");
        switch (c.Boot)
        {
            case BootMode.Direct:
                if (string.IsNullOrEmpty(c.Kernel)) throw new VmException("a direct-boot VM needs a kernel: set Kernel (or use the default image)");
                c.Kernel = Full(c.Kernel);
                if (!File.Exists(c.Kernel)) throw new VmException($"kernel {c.Kernel} does not exist: build the default image or give an existing kernel");
                if (c.Initrd is not null)
                {
                    c.Initrd = Full(c.Initrd);
                    if (!File.Exists(c.Initrd)) throw new VmException($"initrd {c.Initrd} does not exist: give an existing initrd");
                }
                break;
            case BootMode.Bios:
                c.Firmware = Full(c.Firmware ?? QemuCommand.DefaultSeaBios);
                if (!File.Exists(c.Firmware)) throw new VmException($"firmware {c.Firmware} does not exist: install the seabios package or give another BIOS image");
                break;
            case BootMode.Uefi:
                c.Firmware ??= QemuCommand.OvmfCodeCandidates.FirstOrDefault(File.Exists) ?? QemuCommand.OvmfCodeCandidates[0];
                c.Firmware = Full(c.Firmware);
                if (!File.Exists(c.Firmware)) throw new VmException($"firmware {c.Firmware} does not exist: install the ovmf package or give an OVMF code image");
                c.FirmwareVars ??= c.Firmware.Replace("OVMF_CODE", "OVMF_VARS", StringComparison.Ordinal);
                c.FirmwareVars = Full(c.FirmwareVars);
                if (!File.Exists(c.FirmwareVars)) throw new VmException($"firmware variable store {c.FirmwareVars} does not exist: give FirmwareVars");
                break;
        }
        foreach (var d in c.Disks)
        {
            if (d.Base is not null)
            {
                d.Base = Full(d.Base);
                if (!File.Exists(d.Base)) throw new VmException($"base image {d.Base} does not exist: build the default image or give an existing image");
                CheckImage(d.Base, null);
            }
            else
            {
                if (string.IsNullOrEmpty(d.Path)) throw new VmException("a disk needs a Path or a Base image");
                d.Path = Full(d.Path);
                if (!File.Exists(d.Path)) throw new VmException($"disk image {d.Path} does not exist: create it first (qemu-img create) or fix the path");
                CheckImage(d.Path, d.CdRom ? DiskFormat.Raw : d.Format);
            }
            if (d.CdRom && c.Boot == BootMode.Direct) throw new VmException("CD-ROM images need a firmware boot (Bios or Uefi)");
        }
    }

    /// <summary>Checks that an image opens and is consistent (a corrupt qcow2 is refused here, before QEMU sees it).</summary>
    static readonly System.Collections.Concurrent.ConcurrentDictionary<string, string> s_checkedImages = new(StringComparer.Ordinal);

    static string ImageKey(string path)
    {
        var fi = new FileInfo(path);
        return $"{path}|{fi.Length}|{fi.LastWriteTimeUtc.Ticks}";
    }

    static void CheckImage(string path, DiskFormat? declared)
    {
        // Read-only base images are shared by many VMs: a verdict stays valid while the file is unchanged.
        var key = ImageKey(path);
        if (s_checkedImages.TryGetValue(key, out var known) && (declared != DiskFormat.Qcow2 || known == "qcow2")) return;
        string info;
        try { info = Tools.Run(Tools.QemuImg, ["info", "--output=json", path], "check"); }
        catch (VmException e) { throw new VmException($"disk image {path} cannot be opened ({e.Message.Replace("check: ", "", StringComparison.Ordinal)}): it is corrupt or not a disk image"); }
        var fmt = JsonNode.Parse(info)?["format"]?.GetValue<string>();
        if (declared == DiskFormat.Qcow2 && fmt != "qcow2")
            throw new VmException($"disk image {path} is {fmt}, not qcow2: set its format to Raw or convert it (qemu-img convert -O qcow2)");
        if (fmt == "qcow2")
        {
            try { Tools.Run(Tools.QemuImg, ["check", "-q", path], "check"); }
            catch (VmException e) { throw new VmException($"disk image {path} is a corrupt qcow2 ({e.Message.Replace("check: ", "", StringComparison.Ordinal)}): repair it with qemu-img check -r all or use another image"); }
        }
        var ro = !OperatingSystem.IsLinux() || (File.GetUnixFileMode(path) & (UnixFileMode.UserWrite | UnixFileMode.GroupWrite | UnixFileMode.OtherWrite)) == 0;
        if (ro && fmt is not null) s_checkedImages[key] = fmt;
    }

    static string ImageFormatCached(string path) =>
        s_checkedImages.TryGetValue(ImageKey(path), out var f) ? f : ImageFormat(path);

    /// <summary>Reconnects to the VM in <paramref name="stateDir"/> (running or not).</summary>
    public static async Task<Vm> AttachAsync(string stateDir, VmHostOptions host, CancellationToken ct = default)
    {
        var dir = Full(stateDir);
        var cfgPath = Path.Combine(dir, StateFiles.Config);
        if (!File.Exists(cfgPath)) throw new VmException($"{dir} holds no VM ({StateFiles.Config} is missing)");
        var c = JsonSerializer.Deserialize(File.ReadAllText(cfgPath), VmJson.Default.VmConfig)
            ?? throw new VmException($"{cfgPath} is empty or invalid");
        var vm = new Vm(dir, c, host.CacheDir);
        if (ReadPid(dir) is int && vm.Pid is null) vm.EndedUnwatched();
        if (vm.Pid is int && Path.Exists(vm.QmpSocketPath))
        {
            // QEMU serves one QMP client at a time: if another holds it, the VM is still attached (state from the
            // pid), and KillAsync falls back to signals.
            try { await vm.ConnectAsync(ct).ConfigureAwait(false); }
            catch (Exception e) when (e is TimeoutException or QemuGoneException) { vm.AttachError = e.Message; }
        }
        return vm;
    }

    void SaveConfig()
    {
        var p = Path.Combine(_dir, StateFiles.Config);
        File.WriteAllText(p + ".tmp", JsonSerializer.Serialize(Config, VmJson.Default.VmConfig));
        File.Move(p + ".tmp", p, overwrite: true);
    }

    void Record(string state, string? reason)
    {
        var p = Path.Combine(_dir, StateFiles.Record);
        try
        {
            File.WriteAllText(p + ".tmp", JsonSerializer.Serialize(new VmRecord { State = state, Reason = reason, When = DateTimeOffset.UtcNow }, VmJson.Default.VmRecord));
            File.Move(p + ".tmp", p, overwrite: true);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>What was recorded when QEMU last ended (null if never).</summary>
    public VmRecord? LastRecord
    {
        get
        {
            var p = Path.Combine(_dir, StateFiles.Record);
            try { return File.Exists(p) ? JsonSerializer.Deserialize(File.ReadAllText(p), VmJson.Default.VmRecord) : null; }
            catch (Exception e) when (e is IOException or JsonException) { return null; }
        }
    }

    /// <summary>
    /// Removes a VM directory. A QEMU that is still exiting (or its console relay) can add a file while the tree is
    /// being removed, which makes the final rmdir fail with ENOTEMPTY: retry briefly before giving up.
    /// </summary>
    static void DeleteTree(string dir)
    {
        for (var attempt = 0; ; attempt++)
        {
            try { Directory.Delete(dir, true); return; }
            catch (DirectoryNotFoundException) { return; }
            catch (IOException) when (attempt < 20) { Thread.Sleep(50); }
        }
    }

    /// <summary>Ends QEMU if it runs and removes the VM's state dir (or only the files Hull made in it).</summary>
    public async Task DeleteAsync(bool removeDir = true)
    {
        if (Pid is not null) await KillAsync().ConfigureAwait(false);
        CleanRuntimeFiles();
        if (removeDir)
        {
            DeleteTree(_dir);
        }
        else
        {
            foreach (var d in Config.Disks.Where(d => d.Owned)) Tools.TryDelete(d.Path);
            foreach (var f in new[] { StateFiles.Config, StateFiles.Record, StateFiles.ConsoleLog, StateFiles.ConsoleLog + ".1", StateFiles.QemuLog, StateFiles.OvmfVars })
                Tools.TryDelete(Path.Combine(_dir, f));
        }
    }

    // ---------------------------------------------------------------- start / stop

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
        foreach (var f in new[] { StateFiles.Qmp, StateFiles.Agent, StateFiles.Console, StateFiles.Pid, "migrate.sock" })
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
        if (Pid is int running) throw new VmException($"VM '{Name}' is already running (QEMU pid {running}): stop it first");
        CleanRuntimeFiles();
        RotateConsoleLog();
        foreach (var d in Config.Disks)
            if (!File.Exists(d.Path)) throw new VmException($"disk image {d.Path} of VM '{Name}' is missing: restore it or remove the disk");
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
                    throw new VmException($"QEMU for VM '{Name}' exited during start ({Describe(exited.Task.Result)}): {QemuSaid().Trim()}");
                if (Path.Exists(QmpSocketPath))
                {
                    try { await ConnectAsync(ct, QemuSaid).ConfigureAwait(false); break; }
                    catch (QemuGoneException) when (!exited.Task.IsCompleted && sw.Elapsed < TimeSpan.FromSeconds(30)) { }
                    catch (QemuGoneException) when (exited.Task.IsCompleted) { continue; }
                }
                if (sw.Elapsed > TimeSpan.FromSeconds(30))
                    throw new VmException($"QEMU for VM '{Name}' did not open its QMP socket within 30 s: {QemuSaid().Trim()}");
                await Task.Delay(20, ct).ConfigureAwait(false);
            }
            Record(paused ? "paused" : "running", null);
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

    static string Describe(int status) => (status & 0x7f) == 0 ? $"exit code {(status >> 8) & 0xff}" : $"killed by signal {status & 0x7f}";

    async Task ConnectAsync(CancellationToken ct, Func<string>? diagnostics = null)
    {
        diagnostics ??= () => Tools.Tail(QemuLogPath);
        var pidAtConnect = ReadPid(_dir);
        var q = await QmpClient.ConnectAsync(QmpSocketPath, TimeSpan.FromSeconds(10), diagnostics, ct).ConfigureAwait(false);
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
        var done = await Task.WhenAny(_agentOpened.Task, Task.Delay(timeout, ct), _exited?.Task ?? Task.Delay(Timeout.Infinite, ct)).ConfigureAwait(false);
        ct.ThrowIfCancellationRequested();
        if (done == _agentOpened.Task) return;
        if (Pid is null) throw new VmException($"VM '{Name}' stopped while waiting for its agent ({LastRecord?.Reason})");
        throw new VmException($"the guest agent of VM '{Name}' did not answer within {timeout.TotalSeconds:0} s: nothing in the guest opened " +
            $"the port {AgentChannel.PortName} ({AgentChannel.GuestDevice}). Check that the image includes hull-agent and see {ConsoleLogPath}");
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
            Record("crashed", "the guest kernel panicked");
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
            Record("stopped", "the guest powered off (while no Hull process was watching)");
        else
        {
            var log = Tools.Tail(QemuLogPath, 6).Trim();
            Record("crashed", "QEMU ended while no Hull process was watching it (killed, or crashed; " +
                $"its exit status is unknown){(log.Length > 0 ? ": " + log : "")}");
        }
        CleanRuntimeFiles();
    }

    void Finished(int? status, int? pid)
    {
        // A QEMU started since (restart) owns the state dir now: leave its files and record alone.
        if (ReadPid(_dir) is int current && current != pid) return;
        var last = LastRecord;
        if (_stopRequested) { if (last?.State is not ("crashed" or "migrated")) Record("stopped", "stopped by Hull"); }
        else if (last?.State == "crashed") { }
        else if (_lastShutdownReason is "guest-shutdown" or "host-qmp-system-reset" || (status is int s && s == 0))
            Record("stopped", _lastShutdownReason == "guest-shutdown" ? "the guest powered off" : "QEMU exited");
        else
            Record("crashed", $"QEMU exited unexpectedly ({(status is int st ? Describe(st) : "exit status unknown")}): {Tools.Tail(QemuLogPath, 6).Trim()}");
        CleanRuntimeFiles();
    }

    /// <summary>The current state, asked from QEMU when it runs.</summary>
    public async Task<VmState> GetStateAsync(CancellationToken ct = default)
    {
        if (Pid is null || _qmp is null)
        {
            return LastRecord?.State == "crashed" ? VmState.Crashed : VmState.Stopped;
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
            return LastRecord?.State == "crashed" ? VmState.Crashed : VmState.Stopped;
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
                    graceful = await WaitExitAsync(timeout ?? TimeSpan.FromSeconds(Config.StopTimeoutSeconds), ct).ConfigureAwait(false);
                }
            }
        }
        catch (QemuGoneException) { graceful = await WaitExitAsync(TimeSpan.FromSeconds(2), ct).ConfigureAwait(false); }
        if (!graceful) await KillAsync().ConfigureAwait(false);
        Record("stopped", graceful ? "the guest powered off (ACPI)" : "stopped by Hull (forced after the ACPI timeout)");
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
        if (LastRecord?.State is not ("crashed" or "migrated")) Record("stopped", "stopped by Hull");
    }

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

    // ---------------------------------------------------------------- console

    void RotateConsoleLog()
    {
        var log = ConsoleLogPath;
        try
        {
            var fi = new FileInfo(log);
            if (!fi.Exists || fi.Length <= Config.ConsoleLogLimit) return;
            File.Copy(log, log + ".1", overwrite: true);
            using var f = new FileStream(log, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
            f.SetLength(0); // QEMU appends (O_APPEND), so it goes on at the new end
        }
        catch (IOException) { }
    }

    /// <summary>Keeps console.log within its size limit (rotating to console.log.1); Hull calls this periodically.</summary>
    public void MaintainConsoleLog() => RotateConsoleLog();

    /// <summary>The console log's size now (an offset to pass to <see cref="WaitForConsoleAsync"/>).</summary>
    public long ConsoleLogLength => File.Exists(ConsoleLogPath) ? new FileInfo(ConsoleLogPath).Length : 0;

    /// <summary>Waits until <paramref name="text"/> appears in the console log after <paramref name="fromOffset"/>; returns the log from there.</summary>
    public async Task<string> WaitForConsoleAsync(string text, TimeSpan timeout, long fromOffset = 0, CancellationToken ct = default)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var s = ReadFrom(ConsoleLogPath, fromOffset, int.MaxValue);
            if (s.Contains(text, StringComparison.Ordinal)) return s;
            if (sw.Elapsed > timeout)
                throw new TimeoutException($"'{text}' did not appear on VM '{Name}''s console within {timeout.TotalSeconds:0} s; the console ends with:\n{Last(s, 1500)}");
            if (Pid is null && sw.Elapsed > TimeSpan.FromSeconds(1))
                throw new VmException($"VM '{Name}' stopped before '{text}' appeared on its console ({LastRecord?.Reason}); the console ends with:\n{Last(s, 1500)}");
            await Task.Delay(100, ct).ConfigureAwait(false);
        }
    }

    static string Last(string s, int n) => s.Length > n ? s[^n..] : s;

    static string ReadFrom(string path, long offset, int max)
    {
        try
        {
            using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            if (f.Length <= offset) return "";
            f.Position = offset;
            var len = (int)Math.Min(max, f.Length - offset);
            var buf = new byte[len];
            f.ReadExactly(buf);
            return System.Text.Encoding.UTF8.GetString(buf);
        }
        catch (IOException) { return ""; }
    }

    /// <summary>
    /// Types text on the serial console and returns once the guest has taken it (its echo is in the console log) or
    /// the timeout passed. The connection stays open and drained until then: QEMU drops unread input when a console
    /// client disconnects, and stalls the guest's serial output when a client does not read.
    /// </summary>
    public async Task<bool> SendConsoleAsync(string text, TimeSpan timeout, CancellationToken ct = default)
    {
        var from = ConsoleLogLength;
        using var con = await OpenConsoleAsync(ct).ConfigureAwait(false);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var drain = Task.Run(async () =>
        {
            var buf = new byte[4096];
            try { while (await con.Stream.ReadAsync(buf, cts.Token).ConfigureAwait(false) > 0) { } }
            catch (Exception e) when (e is OperationCanceledException or IOException or ObjectDisposedException) { }
        }, CancellationToken.None);
        await con.WriteAsync(text, ct).ConfigureAwait(false);
        var lines = text.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var tail = lines.Length == 0 ? "" : lines[^1].TrimEnd('\r');
        if (tail.Length > 24) tail = tail[^24..];
        var sw = Stopwatch.StartNew();
        var seen = tail.Length == 0;
        while (!seen && sw.Elapsed < timeout && Pid is not null)
        {
            await Task.Delay(50, ct).ConfigureAwait(false);
            seen = ReadFrom(ConsoleLogPath, from, int.MaxValue).Contains(tail, StringComparison.Ordinal);
        }
        await Task.Delay(200, ct).ConfigureAwait(false);
        // Disconnect while still draining, then stop the drain. A client that stops reading while QEMU writes makes
        // its non-blocking write fail with EAGAIN, and QEMU 7.2 then logs the byte to console.log and sends it again
        // (the log shows it twice); after the disconnect the writes fail for good and are logged once.
        con.Dispose();
        await cts.CancelAsync().ConfigureAwait(false);
        await drain.ConfigureAwait(false);
        return seen;
    }

    /// <summary>Connects to the serial console (one client at a time; output also goes to console.log).</summary>
    public async Task<VmConsole> OpenConsoleAsync(CancellationToken ct = default)
    {
        if (Pid is null) throw new VmException($"VM '{Name}' is not running: start it before attaching its console");
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try { await s.ConnectAsync(new UnixDomainSocketEndPoint(ConsoleSocketPath), ct).ConfigureAwait(false); }
        catch (SocketException e)
        {
            s.Dispose();
            throw new VmException($"cannot attach VM '{Name}''s console ({ConsoleSocketPath}): {e.Message}");
        }
        return new VmConsole(s);
    }
}

/// <summary>An attached serial console. Dispose detaches (the guest keeps running).</summary>
public sealed class VmConsole : IDisposable
{
    readonly Socket _socket;
    public Stream Stream { get; }

    /// <summary>Ctrl-] : the default detach key of <see cref="AttachAsync"/>.</summary>
    public const byte DetachKey = 0x1d;

    internal VmConsole(Socket s)
    {
        _socket = s;
        Stream = new NetworkStream(s, ownsSocket: true);
    }

    /// <summary>Sends text as typed on the console.</summary>
    public Task WriteAsync(string text, CancellationToken ct = default) =>
        Stream.WriteAsync(System.Text.Encoding.UTF8.GetBytes(text), ct).AsTask();

    /// <summary>
    /// Interactive attach: copies <paramref name="input"/> to the console and the console to <paramref name="output"/>
    /// until the detach key is typed, the input ends, or <paramref name="ct"/> is cancelled. The VM keeps running.
    /// </summary>
    public async Task AttachAsync(Stream input, Stream output, byte detachKey = DetachKey, CancellationToken ct = default)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var toGuest = Task.Run(async () =>
        {
            var buf = new byte[4096];
            while (!cts.IsCancellationRequested)
            {
                var n = await input.ReadAsync(buf, cts.Token).ConfigureAwait(false);
                if (n == 0) return;
                var k = Array.IndexOf(buf, detachKey, 0, n);
                if (k >= 0)
                {
                    if (k > 0) await Stream.WriteAsync(buf.AsMemory(0, k), cts.Token).ConfigureAwait(false);
                    return;
                }
                await Stream.WriteAsync(buf.AsMemory(0, n), cts.Token).ConfigureAwait(false);
            }
        }, cts.Token);
        // The socket is read at once into a queue, and a second task writes the queue to the output: a slow output
        // must not make this client lag, because QEMU 7.2 logs a byte twice in console.log when its write to a
        // client that is not reading fails with EAGAIN (and it stalls the guest's serial port meanwhile).
        var queue = System.Threading.Channels.Channel.CreateUnbounded<byte[]>();
        var fromGuest = Task.Run(async () =>
        {
            var buf = new byte[16384];
            try
            {
                while (!cts.IsCancellationRequested)
                {
                    var n = await Stream.ReadAsync(buf, cts.Token).ConfigureAwait(false);
                    if (n == 0) return;
                    queue.Writer.TryWrite(buf.AsSpan(0, n).ToArray());
                }
            }
            finally { queue.Writer.TryComplete(); }
        }, cts.Token);
        var toOutput = Task.Run(async () =>
        {
            await foreach (var chunk in queue.Reader.ReadAllAsync(cts.Token).ConfigureAwait(false))
            {
                await output.WriteAsync(chunk, cts.Token).ConfigureAwait(false);
                if (queue.Reader.Count == 0) await output.FlushAsync(cts.Token).ConfigureAwait(false);
            }
        }, cts.Token);
        try { await Task.WhenAny(toGuest, fromGuest, toOutput).ConfigureAwait(false); }
        finally
        {
            // Detach first (QEMU's later writes fail for good, logged once), then stop the tasks.
            try { _socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
            await cts.CancelAsync().ConfigureAwait(false);
            try { await Task.WhenAll(toGuest, fromGuest, toOutput).ConfigureAwait(false); }
            catch (OperationCanceledException) { }
            catch (IOException) { }
            catch (System.Threading.Channels.ChannelClosedException) { }
        }
    }

    public void Dispose()
    {
        try { _socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
        Stream.Dispose();
    }
}
