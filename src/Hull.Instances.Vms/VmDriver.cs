using System.Collections.Concurrent;
using System.Globalization;
using System.Text.Json.Nodes;
using Hull.Api;
using Hull.Linux;
using Hull.Linux.Net;
using Hull.Vm;

namespace Hull.Instances.Vms;

/// <summary>Host-wide settings of the VM driver.</summary>
public sealed class VmDriverOptions
{
    /// <summary>The VM engine's cache (accelerator verdict, extracted kernels, the default image's parts).</summary>
    public required string CacheDir { get; init; }
    /// <summary>The guest agent binary put into the built-in image (null: none known).</summary>
    public string? AgentBinary { get; init; }
    /// <summary>How long exec and file operations wait for the guest agent of a booting VM.</summary>
    public TimeSpan AgentTimeout { get; init; } = TimeSpan.FromSeconds(180);
    /// <summary>How long after QEMU's start they wait for an agent in a guest from a foreign image (a disk image or
    /// ISO booted by firmware, which may well have no hull-agent): then they fail, saying so.</summary>
    public TimeSpan ForeignAgentTimeout { get; init; } = TimeSpan.FromSeconds(20);
    /// <summary>Guest memory when limits.memory is unset.</summary>
    public int DefaultMemoryMiB { get; init; } = 256;

    /// <summary>Options from the environment: HULL_VM_CACHE (default STATE/vm-cache), HULL_AGENT_BINARY (default
    /// hull-agent
    /// next to the running program), HULL_AGENT_TIMEOUT (seconds).</summary>
    public static VmDriverOptions FromEnvironment(string stateDir)
    {
        var cache = Environment.GetEnvironmentVariable("HULL_VM_CACHE") is { Length: > 0 } c ? c
            : Path.Combine(stateDir, "vm-cache");
        var agent = Environment.GetEnvironmentVariable("HULL_AGENT_BINARY") is { Length: > 0 } a ? a
            : Path.Combine(AppContext.BaseDirectory, "hull-agent");
        var timeout = Environment.GetEnvironmentVariable("HULL_AGENT_TIMEOUT") is { Length: > 0 } t
            && int.TryParse(t, CultureInfo.InvariantCulture, out var s) && s > 0
            ? TimeSpan.FromSeconds(s) : TimeSpan.FromSeconds(180);
        return new VmDriverOptions { CacheDir = Path.GetFullPath(cache), AgentBinary = agent, AgentTimeout = timeout };
    }
}

/// <summary>
/// Instances of type "vm" on the VM engine (<see cref="Hull.Vm.Vm"/>: QEMU driven over QMP). Per instance, under
/// <see cref="InstanceSpec.Dir"/>/vm: the engine's state dir (config.json, disk0.qcow2 = the instance's overlay on the
/// image's root disk, console.log, and while it runs qmp.sock, agent.sock, console.sock, qemu.pid). QEMU runs in its
/// own session, so VMs outlive hulld; <see cref="ReattachAsync"/> reconnects QMP. Exec and files go through the guest
/// agent (hull-agent on a virtio-serial port), one multiplexed connection per VM.
/// Mapping: limits.cpu = vCPUs, limits.memory = guest RAM (default 256 MiB), environment.* = the default environment
/// of exec; disk devices with a source = extra virtio disks; limits.processes and bind devices are refused.
/// Snapshots: disk-only (qcow2 internal) when stopped, full (memory too) when running; restoring a full snapshot makes
/// the next start resume from it.
/// </summary>
public sealed partial class VmDriver : IInstanceDriver
{
    public string Type => InstanceTypes.Vm;

    readonly VmDriverOptions _o;
    readonly IVmEngine _engine;
    readonly ConcurrentDictionary<string, IVm> _vms = new(StringComparer.Ordinal);
    readonly ConcurrentDictionary<string, SemaphoreSlim> _locks = new(StringComparer.Ordinal);

    /// <summary>The file in the VM dir that says the next start resumes from this full snapshot's memory.</summary>
    const string ResumeMarker = "resume-snapshot";

    public VmDriver(VmDriverOptions options) : this(options, null) { }

    /// <summary>A driver over <paramref name="engine"/> (null: QEMU's, <see cref="QemuVmEngine"/>).</summary>
    public VmDriver(VmDriverOptions options, IVmEngine? engine)
    {
        _o = options;
        Directory.CreateDirectory(options.CacheDir);
        _engine = engine ?? new QemuVmEngine(new VmHostOptions { CacheDir = options.CacheDir });
        AccelProbe.Warn = m => DriverLog.Warning(m);
    }

    public VmDriverOptions Options => _o;

    static string VmDir(InstanceSpec s) => Path.Combine(s.Dir, "vm");
    SemaphoreSlim Lock(InstanceSpec s) => _locks.GetOrAdd(s.Name, _ => new SemaphoreSlim(1, 1));

    static InstanceException Fail(string what, Exception e, int status = 500) =>
        e is InstanceException ie ? ie : new InstanceException($"{what}: {e.Message}", status);

    // ---- validation and the VM definition ----

    public void Validate(InstanceSpec spec)
    {
        if (spec.Limits.Processes is not null)
            throw new InstanceException("limits.processes applies to containers only (a VM runs its own kernel and " +
                $"process table): remove it from instance '{spec.Name}' or from its profiles");
        if (spec.Limits.Cpus is < 1 or > 255)
            throw new InstanceException($"limits.cpu={spec.Limits.Cpus} is out of range for a VM: use 1 to 255 vCPUs");
        var mem = MemoryMiB(spec);
        if (VmMemory.Problem(mem) is { } memory)
            throw new InstanceException($"limits.memory={spec.Config.GetValueOrDefault("limits.memory")} ({mem} MiB) " +
                $"{memory}");
        foreach (var d in spec.Devices)
        {
            if (d.Type == "bind")
                throw new InstanceException($"device '{d.Name}': sharing a host directory (a bind device) with VM " +
                    $"'{spec.Name}' is not supported yet: copy files in with 'hull file push', or give the VM a disk " +
                    "image with a disk device (source=IMAGE, path=/mnt/NAME)");
            if (d.Type == "disk" && d.Config.TryGetValue("source", out var src) && Directory.Exists(src))
                throw new InstanceException($"device '{d.Name}': source {src} is a directory; a VM disk needs a " +
                    "block device or an image file");
        }
        if (FindOnPath("qemu-system-x86_64") is null)
            throw new InstanceException("qemu-system-x86_64 was not found on PATH: install the qemu-system-x86 " +
                "package to run VMs", 500);
    }

    int MemoryMiB(InstanceSpec spec) => spec.Limits.MemoryBytes is { } b
        ? (int)Math.Min(int.MaxValue, (b + (1L << 20) - 1) >> 20) : _o.DefaultMemoryMiB;

    static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Concat(["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"])
            .Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);

    static string? Hostname(string name)
    {
        var h = new string(name.Select(c => char.IsAsciiLetterOrDigit(c) || c == '-' ? c : '-').ToArray()).Trim('-');
        if (h.Length > 63) h = h[..63].TrimEnd('-');
        return h.Length == 0 ? null : h;
    }

    /// <summary>The disks of the devices: extra virtio disks after the root disk (disk0).</summary>
    static List<DiskConfig> DeviceDisks(IEnumerable<DiskSpec> disks)
    {
        var list = new List<DiskConfig>();
        foreach (var d in disks.Where(d => d.Target != "/" && d.Source is not null))
        {
            var fmt = DiskFormat.Raw;
            try
            {
                var info = JsonNode.Parse(VmImages.RunAsync("qemu-img", ["info", "-U", "--output=json", d.Source!],
                    CancellationToken.None).GetAwaiter().GetResult());
                if (info?["format"]?.GetValue<string>() == "qcow2") fmt = DiskFormat.Qcow2;
            }
            catch (InstanceException e) { throw new InstanceException(
                $"disk {d.Source} cannot be opened as a disk image: {e.Message}"); }
            list.Add(new DiskConfig { Path = d.Source!, Format = fmt, ReadOnly = d.ReadOnly });
        }
        return list;
    }

    static IEnumerable<DiskSpec> SpecDisks(InstanceSpec spec) =>
        spec.Devices.Where(d => d.Type == "disk").Select(d => d.Start(spec.Dir)).SelectMany(r => r.Disks);

    /// <summary>The engine config this spec asks for, given the current one (disk0 and the boot parts are
    /// kept).</summary>
    VmConfig Desired(InstanceSpec spec, VmConfig current, IEnumerable<DiskSpec> disks, IEnumerable<NicSpec> nics)
    {
        var root = current.Disks[0];
        return new VmConfig
        {
            Name = current.Name, MemoryMiB = MemoryMiB(spec), Cpus = spec.Limits.Cpus ?? 1, Accel = current.Accel,
            Boot = current.Boot, Kernel = current.Kernel, Initrd = current.Initrd, Cmdline = current.Cmdline,
            Firmware = current.Firmware, FirmwareVars = current.FirmwareVars, Hostname = Hostname(spec.Name),
            OnPanic = PanicPolicy.Stop, StopTimeoutSeconds = current.StopTimeoutSeconds,
            ConsoleLogLimit = current.ConsoleLogLimit,
            QemuBinary = current.QemuBinary,
            Disks =
            [
                root.CdRom ? new DiskConfig { Path = root.Path, Format = root.Format, CdRom = true, ReadOnly = true }
                : new DiskConfig { Path = Path.Combine(VmDir(spec), Path.GetFileName(root.Path)),
                    Format = root.Format, Base = root.Base, Owned = true },
                .. DeviceDisks(disks),
            ],
            Nics = nics.Select((n, i) => new NicConfig { Tap = n.HostName, Mac = n.HwAddr, Id = $"net{i}" }).ToList(),
        };
    }

    static bool Same(VmConfig a, VmConfig b) =>
        a.MemoryMiB == b.MemoryMiB && a.Cpus == b.Cpus && a.Hostname == b.Hostname && a.OnPanic == b.OnPanic &&
        a.Disks.Count == b.Disks.Count &&
        a.Disks.Zip(b.Disks).All(p => p.First.Path == p.Second.Path && p.First.Format == p.Second.Format
            && p.First.ReadOnly == p.Second.ReadOnly) &&
        a.Nics.Count == b.Nics.Count && a.Nics.Zip(b.Nics).All(p => p.First.Tap == p.Second.Tap
            && p.First.Mac == p.Second.Mac);

    /// <summary>
    /// Re-defines a stopped VM when the spec changed (limits, devices, a renamed instance dir): the engine validates
    /// the
    /// new definition (memory against the host, disks that open) and keeps the root overlay; on failure the old one
    /// stays.
    /// </summary>
    async Task<IVm> RedefineAsync(InstanceSpec spec, IVm vm, IReadOnlyList<DeviceRunConfig> devices,
        CancellationToken ct)
    {
        var want = Desired(spec, vm.Config, devices.SelectMany(d => d.Disks),
            devices.Select(d => d.Nic).OfType<NicSpec>());
        if (Same(want, vm.Config)) return vm;
        var dir = VmDir(spec);
        var cfg = Path.Combine(dir, StateFiles.Config);
        var old = cfg + ".old";
        await vm.DisposeAsync();
        _vms.TryRemove(spec.Name, out _);
        File.Move(cfg, old, overwrite: true);
        try
        {
            var nvm = await _engine.CreateAsync(dir, want, ct);
            File.Delete(old);
            _vms[spec.Name] = nvm;
            return nvm;
        }
        catch (Exception e)
        {
            File.Move(old, cfg, overwrite: true);
            throw Fail($"VM '{spec.Name}' cannot be started with its current config", e, 400);
        }
    }

    /// <summary>The engine's VM of an instance, attached (QMP connected when QEMU runs) and cached.</summary>
    async Task<IVm> VmAsync(InstanceSpec spec, CancellationToken ct)
    {
        if (Cached(spec) is { } hit) return hit;
        // One attach at a time per instance: QEMU serves one QMP client, a second attach would wait for the first.
        var gate = _attachLocks.GetOrAdd(spec.Name, _ => new SemaphoreSlim(1, 1));
        await gate.WaitAsync(ct);
        try
        {
            if (Cached(spec) is { } again) return again;
            if (!File.Exists(Path.Combine(VmDir(spec), StateFiles.Config)))
                throw new InstanceException($"instance '{spec.Name}' has no VM definition " +
                    $"({VmDir(spec)}/{StateFiles.Config} is missing): delete it and create it again", 500);
            IVm vm;
            try { vm = await _engine.AttachAsync(VmDir(spec), ct); }
            catch (VmException e) { throw Fail($"attaching VM '{spec.Name}'", e); }
            if (_vms.TryGetValue(spec.Name, out var old) && !ReferenceEquals(old, vm)) await old.DisposeAsync();
            _vms[spec.Name] = vm;
            return vm;
        }
        finally { gate.Release(); }
    }

    readonly ConcurrentDictionary<string, SemaphoreSlim> _attachLocks = new(StringComparer.Ordinal);

    /// <summary>The cached engine object, unless it is for another dir (a renamed instance) or lost its QMP connection
    /// while QEMU runs.</summary>
    IVm? Cached(InstanceSpec spec) =>
        _vms.TryGetValue(spec.Name, out var vm) && vm.StateDir == Path.GetFullPath(VmDir(spec))
            && (vm.Pid is null || vm.AttachError is null) ? vm : null;

    /// <summary>
    /// The engine's VM of an instance (attached, QMP connected while QEMU runs), for operations beyond the driver seam
    /// such as a live migration (<see cref="Hull.Vm.Vm.MigrateAsync"/>). A caller that moves the VM away must call
    /// <see cref="ForgetInstanceAsync"/> afterwards so the driver drops its connections to it.
    /// </summary>
    public async Task<Hull.Vm.Vm> EngineVmAsync(InstanceSpec spec, CancellationToken ct) =>
        await VmAsync(spec, ct) as Hull.Vm.Vm
        ?? throw new InvalidOperationException($"VM '{spec.Name}' is not a QEMU VM of this driver's engine");

    /// <summary>Drops the driver's cached engine object and agent connection of an instance (QEMU is left
    /// alone).</summary>
    public Task ForgetInstanceAsync(InstanceSpec spec) => ForgetAsync(spec);

    async Task ForgetAsync(InstanceSpec spec)
    {
        await DropAgentAsync(spec.Name);
        if (_vms.TryRemove(spec.Name, out var vm)) await vm.DisposeAsync();
    }

    // ---- create / delete ----

    public async Task CreateAsync(InstanceSpec spec, CancellationToken ct)
    {
        Directory.CreateDirectory(spec.Dir);
        var dir = VmDir(spec);
        try
        {
            VmConfig c;
            if (spec.CopyOf is { } src)
            {
                var sdir = VmDir(src);
                var scfg = (await VmAsync(src, ct)).Config;
                if (scfg.Disks.Count == 0 || !scfg.Disks[0].Owned) throw new InstanceException(
                    $"instance '{src.Name}' has no root disk of its own to copy", 500);
                Directory.CreateDirectory(dir);
                var disk0 = Path.Combine(dir, Path.GetFileName(scfg.Disks[0].Path));
                // The overlay (with its internal snapshots) is copied; it keeps its backing image, the shared base.
                await VmImages.RunAsync("cp", ["--reflink=auto", "--sparse=always", scfg.Disks[0].Path, disk0], ct);
                if (Directory.GetFiles(sdir, StateFiles.OvmfVars).Length > 0) File.Copy(
                    Path.Combine(sdir, StateFiles.OvmfVars), Path.Combine(dir, StateFiles.OvmfVars));
                c = new VmConfig
                {
                    Name = spec.Name, Boot = scfg.Boot, Kernel = scfg.Kernel, Initrd = scfg.Initrd,
                    Cmdline = scfg.Cmdline,
                    Firmware = scfg.Firmware, FirmwareVars = scfg.FirmwareVars, QemuBinary = scfg.QemuBinary,
                    Disks = [new DiskConfig { Path = disk0, Base = scfg.Disks[0].Base, Format = DiskFormat.Qcow2,
                        Owned = true }],
                };
            }
            else
            {
                var layout = await VmImages.ResolveAsync(spec.Image.File, ct);
                // An ISO (install or live media) is a read-only CD-ROM the firmware boots; a disk image gets an
                // overlay of the instance's own.
                var iso = !layout.Direct && VmImages.IsIso(layout.RootDisk);
                c = new VmConfig
                {
                    Name = spec.Name,
                    Boot = layout.Direct ? BootMode.Direct : BootMode.Bios,
                    Kernel = layout.Kernel, Initrd = layout.Initrd, Cmdline = layout.Cmdline,
                    Disks = [iso ? new DiskConfig { Path = layout.RootDisk, CdRom = true, ReadOnly = true,
                        Format = DiskFormat.Raw } : new DiskConfig { Base = layout.RootDisk }],
                };
            }
            c.MemoryMiB = MemoryMiB(spec);
            c.Cpus = spec.Limits.Cpus ?? 1;
            c.Hostname = Hostname(spec.Name);
            c.OnPanic = PanicPolicy.Stop;
            c.Disks.AddRange(DeviceDisks(SpecDisks(spec)));
            IVm vm;
            try { vm = await _engine.CreateAsync(dir, c, ct); }
            catch (VmException e) { throw new InstanceException($"creating VM '{spec.Name}': {e.Message}"); }
            // A root disk device with a size grows the virtual disk (the guest's filesystem is not resized).
            var rootSize = SpecDisks(spec).FirstOrDefault(d => d.Target == "/")?.SizeBytes;
            if (rootSize is { } size)
            {
                try { await vm.ResizeDiskAsync("disk0", size, ct); }
                catch (VmException e) { throw new InstanceException($"device root: size: {e.Message}"); }
            }
            _vms[spec.Name] = vm;
        }
        catch (Exception e)
        {
            _vms.TryRemove(spec.Name, out _);
            try { if (Directory.Exists(dir)) Directory.Delete(dir, true); } catch (IOException) { }
            if (e is InstanceException or OperationCanceledException) throw;
            throw new InstanceException($"creating VM '{spec.Name}' failed: {e.Message}", 500);
        }
    }

    public async Task DeleteAsync(InstanceSpec spec, CancellationToken ct)
    {
        await Lock(spec).WaitAsync(ct);
        try
        {
            await DropAgentAsync(spec.Name);
            var dir = VmDir(spec);
            if (File.Exists(Path.Combine(dir, StateFiles.Config)))
            {
                var vm = await VmAsync(spec, ct);
                try { await vm.DeleteAsync(removeDir: true); }
                catch (VmException e) { throw Fail($"deleting VM '{spec.Name}'", e); }
                _vms.TryRemove(spec.Name, out _);
            }
            else if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
        finally { Lock(spec).Release(); }
    }

    // ---- lifecycle ----

    public async Task StartAsync(InstanceSpec spec, IReadOnlyList<DeviceRunConfig> devices, CancellationToken ct)
    {
        await Lock(spec).WaitAsync(ct);
        try
        {
            if (devices.Any(d => d.Mounts.Count > 0))
                throw new InstanceException($"VM '{spec.Name}' has a bind device: sharing host directories with a VM " +
                    "is not supported yet: remove it and use 'hull file push' or a disk device");
            var vm = await VmAsync(spec, ct);
            if (vm.Pid is int running) throw new InstanceException(
                $"VM '{spec.Name}' is already running (QEMU pid {running})", 409);
            vm = await RedefineAsync(spec, vm, devices, ct);
            await DropAgentAsync(spec.Name);
            MakeTaps(devices);
            var marker = Path.Combine(VmDir(spec), ResumeMarker);
            try
            {
                if (File.Exists(marker))
                {
                    // A restored full snapshot: start paused, load its memory and devices, run.
                    var tag = File.ReadAllText(marker).Trim();
                    File.Delete(marker);
                    try { await vm.RestoreSnapshotAsync(tag, ct); }
                    catch (Exception e) when (e is VmException or Hull.Vm.Qmp.QmpException)
                    {
                        try { await vm.KillAsync(); } catch (VmException) { }
                        throw new InstanceException($"VM '{spec.Name}' could not resume from the memory of snapshot " +
                            $"'{tag}' ({e.Message}); its disks are at that snapshot: start it again to boot from them",
                            500);
                    }
                }
                else await vm.StartAsync(ct: ct);
            }
            catch (VmException e) { throw new InstanceException($"starting VM '{spec.Name}' failed: {e.Message}",
                500); }
            // Connect the agent in the background: the first exec finds it ready (or waits for the rest of the boot).
            _ = Task.Run(async () =>
            {
                try { await AgentAsync(spec, CancellationToken.None); } catch (Exception) { }
            });
        }
        finally { Lock(spec).Release(); }
    }

    /// <summary>A persistent tap per NIC, in its network's bridge, for QEMU to open by name (hulld removes it with
    /// the NIC when the VM stops).</summary>
    static void MakeTaps(IReadOnlyList<DeviceRunConfig> devices)
    {
        foreach (var n in devices.Select(d => d.Nic).OfType<NicSpec>())
        {
            try
            {
                using var links = Rtnl.Open();
                if (links.Link(n.HostName) is not null) links.DeleteLink(n.HostName); // left by a crash
                Tun.CreatePersistentTap(n.HostName);
                if (n.Mtu > 0) links.SetMtu(n.HostName, n.Mtu);
                links.SetMaster(n.HostName, n.Bridge);
                links.SetUp(n.HostName, true);
            }
            catch (LinuxException e)
            {
                throw new InstanceException($"making the tap device {n.HostName} on network '{n.Bridge}' failed: " +
                    $"{e.Message}", 500);
            }
        }
    }

    public async Task<int?> StopAsync(InstanceSpec spec, bool force, TimeSpan timeout, CancellationToken ct)
    {
        await Lock(spec).WaitAsync(ct);
        try
        {
            if (!File.Exists(Path.Combine(VmDir(spec), StateFiles.Config))) return null;
            var vm = await VmAsync(spec, ct);
            await DropAgentAsync(spec.Name);
            if (vm.Pid is null) return ExitCode(vm);
            try
            {
                if (force || timeout == TimeSpan.Zero)
                {
                    await vm.KillAsync();
                    return 128 + Signals.SIGKILL;
                }
                if (await vm.GetStateAsync(ct) == VmState.Paused) await vm.ResumeAsync(ct);
                var t = timeout < TimeSpan.Zero ? TimeSpan.FromDays(365) : timeout;
                var graceful = await vm.StopAsync(t, ct);
                return graceful ? 0 : 128 + Signals.SIGKILL;
            }
            catch (Exception e) when (e is VmException or Hull.Vm.Qmp.QmpException or TimeoutException)
            {
                // QMP failed part way: end QEMU the hard way rather than leave it half-stopped.
                try { await vm.KillAsync(); } catch (Exception) { }
                if (vm.Pid is not null) throw Fail($"stopping VM '{spec.Name}'", e);
                return 128 + Signals.SIGKILL;
            }
            finally
            {
                if (vm.Pid is null) await ForgetAsync(spec);
            }
        }
        finally { Lock(spec).Release(); }
    }

    /// <summary>The "exit code" of a VM that ended: 0 when the guest powered off, 137 when Hull ended QEMU, 1 on a
    /// crash.</summary>
    static int? ExitCode(IVm vm) => vm.LastRecord switch
    {
        null => null,
        { State: VmRecordState.Crashed } => 1,
        { Reason: { } r } when r.StartsWith("the guest powered off", StringComparison.Ordinal) => 0,
        { State: VmRecordState.Stopped } => 128 + Signals.SIGKILL,
        _ => null,
    };

    public async Task KillAsync(InstanceSpec spec, int signal, CancellationToken ct)
    {
        var vm = await VmAsync(spec, ct);
        if (vm.Pid is null) throw new InstanceException($"VM '{spec.Name}' is not running", 409);
        try
        {
            switch (signal)
            {
                case Signals.SIGKILL:
                    await DropAgentAsync(spec.Name);
                    await vm.KillAsync();
                    break;
                case Signals.SIGTERM or Signals.SIGINT or 30 /* SIGPWR */:
                    await vm.PowerButtonAsync(ct);
                    break;
                default:
                    throw new InstanceException($"signal {signal} has no meaning for VM '{spec.Name}': send 15 (the " +
                        "ACPI power button) or 9 (power off at once)");
            }
        }
        catch (Exception e) when (e is VmException or Hull.Vm.Qmp.QmpException) { throw Fail(
            $"signalling VM '{spec.Name}'", e, 409); }
    }

    public async Task PauseAsync(InstanceSpec spec, CancellationToken ct)
    {
        var vm = await VmAsync(spec, ct);
        try { await vm.PauseAsync(ct); }
        catch (Exception e) when (e is VmException or Hull.Vm.Qmp.QmpException) { throw Fail(
            $"pausing VM '{spec.Name}'", e, 409); }
    }

    public async Task ResumeAsync(InstanceSpec spec, CancellationToken ct)
    {
        var vm = await VmAsync(spec, ct);
        try { await vm.ResumeAsync(ct); }
        catch (Exception e) when (e is VmException or Hull.Vm.Qmp.QmpException) { throw Fail(
            $"resuming VM '{spec.Name}'", e, 409); }
    }

    public async Task<DriverState> GetStateAsync(InstanceSpec spec, CancellationToken ct)
    {
        if (!File.Exists(Path.Combine(VmDir(spec), StateFiles.Config))) return new DriverState { State =
            InstanceState.Stopped };
        var vm = await VmAsync(spec, ct);
        VmState st;
        try { st = await vm.GetStateAsync(ct); }
        catch (Exception e) when (e is VmException or Hull.Vm.Qmp.QmpException or TimeoutException) { st =
            vm.Pid is null ? VmState.Stopped : VmState.Busy; }
        var details = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["accelerator"] = vm.Accel.ToString().ToLowerInvariant(),
            ["vcpus"] = vm.Config.Cpus.ToString(CultureInfo.InvariantCulture),
            ["memory"] = $"{vm.Config.MemoryMiB}MiB",
            ["boot"] = vm.Config.Boot == BootMode.Direct ? "direct kernel boot"
                : vm.Config.Boot.ToString().ToLowerInvariant() + " firmware",
        };
        if (vm.AccelReason is { Length: > 0 } why) details["accelerator-reason"] = why;
        if (vm.Pid is int pid) details["qemu-pid"] = pid.ToString(CultureInfo.InvariantCulture);
        var state = st switch
        {
            VmState.Running or VmState.Busy or VmState.Incoming => InstanceState.Running,
            VmState.Paused => InstanceState.Paused,
            VmState.Crashed => InstanceState.Error,
            _ => InstanceState.Stopped,
        };
        return new DriverState
        {
            State = state, Pid = vm.Pid, ExitCode = state == InstanceState.Stopped ? ExitCode(vm) : null,
            Message = state == InstanceState.Error
                ? $"the VM crashed: {vm.LastRecord?.Reason ?? "the guest kernel panicked"}" : null,
            Details = details,
        };
    }

    public async Task<ReattachResult> ReattachAsync(InstanceSpec spec, CancellationToken ct)
    {
        if (!File.Exists(Path.Combine(VmDir(spec), StateFiles.Config))) return new ReattachResult { State =
            InstanceState.Stopped };
        await ForgetAsync(spec);
        var vm = await VmAsync(spec, ct);
        if (vm.Pid is null) return new ReattachResult { State = InstanceState.Stopped, ExitCode = ExitCode(vm) };
        var st = await GetStateAsync(spec, ct);
        if (st.State.IsLive())
        {
            _ = Task.Run(async () =>
            {
                try { await AgentAsync(spec, CancellationToken.None); } catch (Exception) { }
            });
            return new ReattachResult { State = st.State, Pid = vm.Pid };
        }
        // QEMU runs but the guest is dead (panicked and kept): end it, report it stopped with the crash recorded.
        if (st.State == InstanceState.Error) { try { await vm.KillAsync(); } catch (Exception) { } }
        return new ReattachResult { State = InstanceState.Stopped, ExitCode = ExitCode(vm) };
    }

    public async Task<int?> WaitForExitAsync(InstanceSpec spec, CancellationToken ct)
    {
        var vm = await VmAsync(spec, ct);
        while (vm.Pid is int pid)
        {
            SafeFd? pidfd = null;
            try { pidfd = Sys.PidfdOpen(pid); } catch (LinuxException) { }
            using (pidfd)
            {
                while (!ct.IsCancellationRequested && vm.Pid == pid)
                {
                    if (pidfd is not null) { if (await Task.Run(() => Sys.WaitPidfd(pidfd, 500), ct)) break; }
                    else await Task.Delay(200, ct);
                }
            }
            ct.ThrowIfCancellationRequested();
            if (vm.Pid == pid) await Task.Delay(200, ct);
        }
        // QEMU is gone (perhaps before this wait began: a guest that powers off at once): give the engine a moment to
        // record why (it reaps its child, or sees QMP close; QEMU removes its pid file itself, before that).
        for (var i = 0; i < 60 && ExitCode(vm) is null; i++) await Task.Delay(50, ct);
        await DropAgentAsync(spec.Name);
        return ExitCode(vm) ?? 128 + Signals.SIGKILL;
    }

    public async Task<bool> ApplyLimitsAsync(InstanceSpec spec, CancellationToken ct)
    {
        var vm = await VmAsync(spec, ct);
        if (vm.Pid is null) return true; // picked up at the next start
        // vCPU and memory hotplug are not implemented: a running VM keeps its size until restarted.
        return vm.Config.Cpus == (spec.Limits.Cpus ?? 1) && vm.Config.MemoryMiB == MemoryMiB(spec);
    }

    // ---- console and log ----

    public async Task<IConsoleSession> AttachConsoleAsync(InstanceSpec spec, CancellationToken ct)
    {
        var vm = await VmAsync(spec, ct);
        try
        {
            var con = await vm.OpenConsoleAsync(ct);
            return new VmConsoleSession(con);
        }
        catch (VmException e) { throw new InstanceException(e.Message, 409); }
    }

    sealed class VmConsoleSession(VmConsole con) : IConsoleSession
    {
        public Stream Output => con.Stream;
        public Stream? Input => con.Stream;
        public ValueTask DisposeAsync() { con.Dispose(); return ValueTask.CompletedTask; }
    }

    public Task<Stream> OpenLogAsync(InstanceSpec spec, bool follow, CancellationToken ct)
    {
        var log = Path.Combine(VmDir(spec), StateFiles.ConsoleLog);
        var pidFile = Path.Combine(VmDir(spec), StateFiles.Pid);
        return Task.FromResult<Stream>(new LogFileStream(log, () => File.Exists(pidFile), follow));
    }

    // ---- snapshots: qcow2 internal snapshots; with memory while running ----

    public async Task CreateSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct)
    {
        await Lock(spec).WaitAsync(ct);
        try
        {
            var vm = await VmAsync(spec, ct);
            var kind = vm.Pid is null ? SnapshotKind.Disk : SnapshotKind.Full;
            try { await vm.SnapshotAsync(snapshot, kind, ct); }
            catch (Exception e) when (e is VmException or Hull.Vm.Qmp.QmpException or TimeoutException) { throw Fail(
                $"snapshotting VM '{spec.Name}'", e, 400); }
        }
        finally { Lock(spec).Release(); }
    }

    public async Task RestoreSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct)
    {
        await Lock(spec).WaitAsync(ct);
        try
        {
            var vm = await VmAsync(spec, ct);
            if (vm.Pid is not null) throw new InstanceException(
                $"VM '{spec.Name}' is running: stop it before restoring a snapshot", 409);
            var marker = Path.Combine(VmDir(spec), ResumeMarker);
            File.Delete(marker);
            try
            {
                var snap = (await vm.ListSnapshotsAsync(ct)).FirstOrDefault(s => s.Name == snapshot)
                    ?? throw new InstanceException($"VM '{spec.Name}' has no snapshot '{snapshot}' on its disks", 404);
                // The disks go back now (whatever kind); a full snapshot's memory is loaded by the next start.
                if (snap.Kind == SnapshotKind.Disk) await vm.RestoreSnapshotAsync(snapshot, ct);
                else
                {
                    foreach (var d in vm.Config.Disks.Where(d => !d.ReadOnly && !d.CdRom))
                        await VmImages.RunAsync("qemu-img", ["snapshot", "-q", "-a", snapshot, d.Path], ct);
                    File.WriteAllText(marker, snapshot + "\n");
                }
            }
            catch (VmException e) { throw Fail($"restoring snapshot '{snapshot}' of VM '{spec.Name}'", e); }
        }
        finally { Lock(spec).Release(); }
    }

    public async Task DeleteSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct)
    {
        await Lock(spec).WaitAsync(ct);
        try
        {
            var vm = await VmAsync(spec, ct);
            var marker = Path.Combine(VmDir(spec), ResumeMarker);
            if (File.Exists(marker) && File.ReadAllText(marker).Trim() == snapshot) File.Delete(marker);
            try
            {
                if (!(await vm.ListSnapshotsAsync(ct)).Any(s => s.Name == snapshot)) return;
                await vm.DeleteSnapshotAsync(snapshot, ct);
            }
            catch (Exception e) when (e is VmException or Hull.Vm.Qmp.QmpException or TimeoutException) { throw Fail(
                $"deleting snapshot '{snapshot}' of VM '{spec.Name}'", e); }
        }
        finally { Lock(spec).Release(); }
    }

    // ---- stats: the QEMU process ----

    public async Task<InstanceStats> GetStatsAsync(InstanceSpec spec, CancellationToken ct)
    {
        var s = new InstanceStats();
        var vm = await VmAsync(spec, ct);
        if (vm.Pid is not int pid) return s;
        s.Pids = vm.Config.Cpus;
        try
        {
            if (ProcFs.Stat(pid) is not { } stat) return s;
            s.CpuUsageNs = (long)(stat.UserTicks + stat.SystemTicks) * (1_000_000_000L / 100);
            foreach (var l in File.ReadLines($"/proc/{pid}/status"))
                if (l.StartsWith("VmRSS:", StringComparison.Ordinal))
                    s.MemoryBytes = long.Parse(l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1],
                        CultureInfo.InvariantCulture) * 1024;
            foreach (var l in File.ReadLines($"/proc/{pid}/io"))
            {
                var kv = l.Split(':', 2);
                if (kv.Length != 2) continue;
                if (kv[0] == "read_bytes") s.IoReadBytes = long.Parse(kv[1].Trim(), CultureInfo.InvariantCulture);
                else if (kv[0] == "write_bytes") s.IoWriteBytes =
                    long.Parse(kv[1].Trim(), CultureInfo.InvariantCulture);
            }
        }
        catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException or
            IndexOutOfRangeException) { }
        return s;
    }
}
