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
public sealed partial class Vm : IVm
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
    /// Defines a VM in <paramref name="stateDir"/> (created; must not already hold a VM): validates the config,
    /// resolves
    /// the accelerator, makes qcow2 overlays for disks that have a <see cref="DiskConfig.Base"/>, writes config.json.
    /// On any failure nothing is left behind.
    /// </summary>
    public static Task<Vm> CreateAsync(string stateDir, VmConfig config, VmHostOptions host,
        CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(config);
        var dir = Full(stateDir);
        if (File.Exists(Path.Combine(dir, StateFiles.Config)))
            throw new VmException($"{dir} already holds a VM ({StateFiles.Config} exists): delete it or choose " +
                "another state dir");
        var createdDir = !Directory.Exists(dir);
        var made = new List<string>();
        try
        {
            Directory.CreateDirectory(dir);
            var c = JsonSerializer.Deserialize(JsonSerializer.Serialize(config, VmJson.Default.VmConfig),
                VmJson.Default.VmConfig)!;
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
                    Tools.Run(Tools.QemuImg, ["create", "-q", "-f", "qcow2", "-F", baseFmt, "-b", d.Base, d.Path],
                        $"creating the overlay for {d.Base}");
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
    public static async Task<Vm> LaunchAsync(string stateDir, VmConfig config, VmHostOptions host,
        CancellationToken ct = default)
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
        if (string.IsNullOrWhiteSpace(c.Name) || c.Name.Any(ch =>
            !(char.IsAsciiLetterOrDigit(ch) || ch is '-' or '_' or '.')))
            throw new VmException($"VM name '{c.Name}' is invalid: use letters, digits, '-', '_' and '.'");
        if (VmMemory.Problem(c.MemoryMiB) is { } memory) throw new VmException($"memory {c.MemoryMiB} MiB {memory}");
        if (c.Cpus < 1 || c.Cpus > 255) throw new VmException($"cpus {c.Cpus} is out of range: use 1 to 255");
        if (c.Hostname is not null && (c.Hostname.Length is 0 or > 63
            || c.Hostname.Any(ch => !(char.IsAsciiLetterOrDigit(ch) || ch == '-'))))
            throw new VmException($"hostname '{c.Hostname}' is invalid: use up to 63 letters, digits and '-'");
        switch (c.Boot)
        {
            case BootMode.Direct:
                if (string.IsNullOrEmpty(c.Kernel)) throw new VmException(
                    "a direct-boot VM needs a kernel: set Kernel (or use the default image)");
                c.Kernel = Full(c.Kernel);
                if (!File.Exists(c.Kernel)) throw new VmException(
                    $"kernel {c.Kernel} does not exist: build the default image or give an existing kernel");
                if (c.Initrd is not null)
                {
                    c.Initrd = Full(c.Initrd);
                    if (!File.Exists(c.Initrd)) throw new VmException(
                        $"initrd {c.Initrd} does not exist: give an existing initrd");
                }
                break;
            case BootMode.Bios:
                c.Firmware = Full(c.Firmware ?? QemuCommand.DefaultSeaBios);
                if (!File.Exists(c.Firmware)) throw new VmException(
                    $"firmware {c.Firmware} does not exist: install the seabios package or give another BIOS image");
                break;
            case BootMode.Uefi:
                c.Firmware ??= QemuCommand.OvmfCodeCandidates.FirstOrDefault(File.Exists)
                    ?? QemuCommand.OvmfCodeCandidates[0];
                c.Firmware = Full(c.Firmware);
                if (!File.Exists(c.Firmware)) throw new VmException(
                    $"firmware {c.Firmware} does not exist: install the ovmf package or give an OVMF code image");
                c.FirmwareVars ??= c.Firmware.Replace("OVMF_CODE", "OVMF_VARS", StringComparison.Ordinal);
                c.FirmwareVars = Full(c.FirmwareVars);
                if (!File.Exists(c.FirmwareVars)) throw new VmException(
                    $"firmware variable store {c.FirmwareVars} does not exist: give FirmwareVars");
                break;
        }
        foreach (var d in c.Disks)
        {
            if (d.Base is not null)
            {
                d.Base = Full(d.Base);
                if (!File.Exists(d.Base)) throw new VmException(
                    $"base image {d.Base} does not exist: build the default image or give an existing image");
                CheckImage(d.Base, null);
            }
            else
            {
                if (string.IsNullOrEmpty(d.Path)) throw new VmException("a disk needs a Path or a Base image");
                d.Path = Full(d.Path);
                if (!File.Exists(d.Path)) throw new VmException(
                    $"disk image {d.Path} does not exist: create it first (qemu-img create) or fix the path");
                CheckImage(d.Path, d.CdRom ? DiskFormat.Raw : d.Format);
            }
            if (d.CdRom && c.Boot == BootMode.Direct) throw new VmException(
                "CD-ROM images need a firmware boot (Bios or Uefi)");
        }
    }

    /// <summary>Checks that an image opens and is consistent (a corrupt qcow2 is refused here, before QEMU sees
    /// it).</summary>
    static readonly System.Collections.Concurrent.ConcurrentDictionary<string,
        string> s_checkedImages = new(StringComparer.Ordinal);

    static string ImageKey(string path)
    {
        var fi = new FileInfo(path);
        return $"{path}|{fi.Length}|{fi.LastWriteTimeUtc.Ticks}";
    }

    static void CheckImage(string path, DiskFormat? declared)
    {
        // Read-only base images are shared by many VMs: a verdict stays valid while the file is unchanged.
        var key = ImageKey(path);
        if (s_checkedImages.TryGetValue(key, out var known)
            && (declared != DiskFormat.Qcow2 || known == "qcow2")) return;
        string info;
        try { info = Tools.Run(Tools.QemuImg, ["info", "--output=json", path], "check"); }
        catch (VmException e) { throw new VmException(
            $"disk image {path} cannot be opened ({e.Message.Replace("check: ", "", StringComparison.Ordinal)}): it " +
            "is corrupt or not a disk image"); }
        var fmt = JsonNode.Parse(info)?["format"]?.GetValue<string>();
        if (declared == DiskFormat.Qcow2 && fmt != "qcow2")
            throw new VmException($"disk image {path} is {fmt}, not qcow2: set its format to Raw or convert it " +
                "(qemu-img convert -O qcow2)");
        if (fmt == "qcow2")
        {
            try { Tools.Run(Tools.QemuImg, ["check", "-q", path], "check"); }
            catch (VmException e) { throw new VmException(
                $"disk image {path} is a corrupt qcow2 " +
                $"({e.Message.Replace("check: ", "", StringComparison.Ordinal)}): repair it with qemu-img check -r " +
                "all or use another image"); }
        }
        var ro = !OperatingSystem.IsLinux() || (
            File.GetUnixFileMode(path) & (UnixFileMode.UserWrite | UnixFileMode.GroupWrite | UnixFileMode.OtherWrite))
            == 0;
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

    void Record(VmRecordState state, string? reason)
    {
        var p = Path.Combine(_dir, StateFiles.Record);
        try
        {
            File.WriteAllText(p + ".tmp", JsonSerializer.Serialize(
                new VmRecord { State = state, Reason = reason, When = DateTimeOffset.UtcNow },
                VmJson.Default.VmRecord));
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
            try { return File.Exists(p) ? JsonSerializer.Deserialize(File.ReadAllText(p), VmJson.Default.VmRecord)
                : null; }
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
            foreach (var f in new[] { StateFiles.Config, StateFiles.Record, StateFiles.ConsoleLog,
                StateFiles.ConsoleLog + ".1", StateFiles.QemuLog, StateFiles.OvmfVars })
                Tools.TryDelete(Path.Combine(_dir, f));
        }
    }
}
