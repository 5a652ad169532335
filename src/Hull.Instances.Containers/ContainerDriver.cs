using System.Collections.Concurrent;
using System.Globalization;
using System.Text.Json;
using Hull.Api;
using Hull.Containers;
using Hull.Linux;
using Hull.Oci;
using Microsoft.Win32.SafeHandles;
using static Hull.Linux.Files;

namespace Hull.Instances.Containers;

/// <summary>
/// Instances of type "container" on the container engine (<see cref="ContainerEngine"/>).
/// Per instance, under <see cref="InstanceSpec.Dir"/>:
/// <list type="bullet">
/// <item>lower: the path of the read-only image root filesystem the instance is made from (or base/, an unpacked tarball);</item>
/// <item>upper/, work/: the overlayfs upper and work dirs (the instance's own changes);</item>
/// <item>rootfs/: the overlay mount point, mounted while the container runs (and briefly for file operations);</item>
/// <item>config.json: the OCI spec of the last start (the bundle is the instance dir);</item>
/// <item>console.log: the init's stdout and stderr; exit: the init's exit code once it ended;</item>
/// <item>snapshots/NAME/upper: copies of the upper dir;</item>
/// <item>idmap: the id map the files of upper/ (or of a copy's rootfs/) and of snapshots/ are owned in (an
/// <see cref="IdMap"/>, or "privileged" for the container's own view); see <see cref="Unprivileged"/>.</item>
/// </list>
/// The engine's state lives in &lt;state dir&gt;/containers. Containers are created and started by the container monitor
/// (<see cref="ContainerMonitor"/>): one long-lived process per state dir, the parent of every container init, which
/// writes each init's exit code into exit before reaping it. So containers outlive hulld, and their exit codes are
/// exact across a hulld stop, crash or upgrade. The engine container id is the instance name.
/// </summary>
public sealed class ContainerDriver : IInstanceDriver
{
    public string Type => InstanceTypes.Container;

    readonly ContainerEngine _engine;
    readonly string _cgroupPrefix;
    readonly MonitorClient _monitor;
    readonly Lazy<PidfdWatcher> _exits = new(() => new PidfdWatcher("hulld-container-exits"));
    readonly ConcurrentDictionary<string, SemaphoreSlim> _locks = new(StringComparer.Ordinal);
    readonly Unprivileged _ids = new();

    const string KeepAlive = "trap 'echo \"$HOSTNAME: stopping\"; exit 0' TERM INT PWR; echo \"$HOSTNAME: started\"; while :; do sleep 3600 & wait $!; done";

    /// <param name="stateDir">hulld's state dir; the engine keeps its container state in a "containers" dir below it.</param>
    /// <param name="monitorCommand">How to run the container monitor (default: this executable with "monitor").</param>
    public ContainerDriver(string stateDir, IReadOnlyList<string>? monitorCommand = null)
    {
        _monitor = new MonitorClient(stateDir, monitorCommand);
        // A monitor left running by the previous hulld: reconnect now (and retire it if it is of another build).
        if (File.Exists(ContainerMonitor.SocketPath(stateDir)))
            _ = Task.Run(() =>
            {
                try { _monitor.Ensure(); }
                catch (Exception e) when (e is InstanceException or LinuxException or IOException)
                { Console.Error.WriteLine($"hulld: warning: {e.Message} (retried at the next container start)"); }
            });
        var dir = Path.Combine(stateDir, "containers");
        Directory.CreateDirectory(dir);
        _engine = new ContainerEngine(new StateStore(dir), HostCgroups.Instance);
        // Two hullds on one host (distinct state dirs) may use the same instance names: their cgroups must not collide.
        uint h = 2166136261;
        foreach (var c in Path.GetFullPath(stateDir)) { h ^= c; h *= 16777619; }
        _cgroupPrefix = "/hull/i-" + h.ToString("x8", CultureInfo.InvariantCulture) + "-";
    }

    public ContainerEngine Engine => _engine;

    /// <summary>The connection to the container monitor.</summary>
    public MonitorClient Monitor => _monitor;

    static string P(InstanceSpec s, string name) => Path.Combine(s.Dir, name);
    static string Rootfs(InstanceSpec s) => P(s, "rootfs");
    static string Upper(InstanceSpec s) => P(s, "upper");
    static string Work(InstanceSpec s) => P(s, "work");

    // ---- the instance's own files and dirs: never reached through a symlink ----
    // An instance dir may come from a backup (or be changed by hand): Hull follows no symlink among its own files
    // (lower, config.json, console.log, exit) and dirs (upper, work, rootfs, base, snapshots), so none of them can
    // stand for a host path. The container's own files inside them are reached only through RootedFs, cp -a and rm
    // (which follow no link in what they copy or remove) or by the kernel inside the container.

    static InstanceException NotOwn(InstanceSpec spec, string rel, string what) => new(
        $"{rel} in the dir of instance '{spec.Name}' {what}: Hull follows no symlink among its own files. Delete the " +
        "instance and import it again from a backup made by 'hull export'", 500);

    static SafeFd? OpenInstanceDir(InstanceSpec spec)
    {
        try { return Sys.Open(spec.Dir, O.PATH | O.DIRECTORY); }
        catch (LinuxException e) when (e.Errno == Errors.ENOENT) { return null; }
    }

    /// <summary>Opens <paramref name="rel"/> below the instance dir through no symlink; false if it does not exist.</summary>
    static bool TryOpenOwn(InstanceSpec spec, string rel, int flags, uint mode, out SafeFd fd)
    {
        using var dir = OpenInstanceDir(spec);
        fd = new SafeFd(-1);
        if (dir is null) return false;
        if (RootedFs.TryOpenBeneath(dir, rel, flags, mode, out fd, out var e)) return true;
        if (e == Errors.ENOENT) return false;
        throw NotOwn(spec, rel, e == Errors.ENOTDIR ? "is not a directory, or lies under a file"
            : e is Errors.ELOOP or Errors.EXDEV ? "is a symlink or lies under one" : $"cannot be opened ({Errors.Describe(e)})");
    }

    /// <summary>The path of the instance's own dir <paramref name="rel"/>, checked to be a directory reached through no
    /// symlink; null if it does not exist.</summary>
    internal static string? OwnDir(InstanceSpec spec, string rel)
    {
        if (!TryOpenOwn(spec, rel, O.PATH | O.DIRECTORY, 0, out var fd)) return null;
        fd.Dispose();
        return P(spec, rel);
    }

    /// <summary>The instance's own file <paramref name="rel"/> (a regular file, reached through no symlink); null if
    /// it does not exist.</summary>
    internal static string? ReadOwn(InstanceSpec spec, string rel)
    {
        if (!TryOpenOwn(spec, rel, O.RDONLY | O.NONBLOCK, 0, out var fd)) return null;
        using (fd)
        {
            if (TypeOf(RootedFs.FStat(fd).Mode) != "file") throw NotOwn(spec, rel, "is not a regular file");
            using var fs = new FileStream(new SafeFileHandle(fd.Detach(), true), FileAccess.Read, 1);
            return new StreamReader(fs).ReadToEnd();
        }
    }

    /// <summary>Replaces the instance's own file <paramref name="rel"/>: a new file (O_EXCL, so never through a
    /// symlink) renamed over it (rename replaces a symlink itself, not its target).</summary>
    internal static void WriteOwn(InstanceSpec spec, string rel, string text)
    {
        var tmp = P(spec, rel + ".tmp");
        File.Delete(tmp);
        using (var f = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write)) f.Write(System.Text.Encoding.UTF8.GetBytes(text));
        File.Move(tmp, P(spec, rel), overwrite: true);
    }

    /// <summary>console.log opened for appending: a regular file of the instance's own (created if missing).</summary>
    static SafeFd OpenConsoleLog(InstanceSpec spec)
    {
        if (TryOpenOwn(spec, "console.log", O.PATH, 0, out var probe))
            using (probe)
                if (TypeOf(RootedFs.FStat(probe).Mode) != "file") throw NotOwn(spec, "console.log", "is not a regular file");
        if (!TryOpenOwn(spec, "console.log", O.WRONLY | O.CREAT | O.APPEND, 0b110_000_000, out var fd))
            throw new InstanceException($"the dir of instance '{spec.Name}' is gone", 500);
        return fd;
    }

    /// <summary>console.log for reading (null while it does not exist), refused if it is not a regular file.</summary>
    static string ConsoleLogPath(InstanceSpec spec)
    {
        if (TryOpenOwn(spec, "console.log", O.PATH, 0, out var probe))
            using (probe)
                if (TypeOf(RootedFs.FStat(probe).Mode) != "file") throw NotOwn(spec, "console.log", "is not a regular file");
        return P(spec, "console.log");
    }
    SemaphoreSlim Lock(InstanceSpec s) => _locks.GetOrAdd(s.Name, _ => new SemaphoreSlim(1, 1));

    public void Validate(InstanceSpec spec)
    {
        var init = ContainerEngine.InitBinary;
        if (!File.Exists(init))
            throw new InstanceException($"the container init binary {init} does not exist: install hull-oci next to hulld (make install) or set HULL_INIT_BINARY", 500);
        try { StateStore.ValidateId(spec.Name); }
        catch (ContainerException e) { throw new InstanceException($"instance name '{spec.Name}' cannot name a container: {e.Message}"); }
        if (spec.Limits.Cpus is < 1) throw new InstanceException("limits.cpu must be at least 1");
    }

    // ---- create / delete ----

    public async Task CreateAsync(InstanceSpec spec, CancellationToken ct)
    {
        Directory.CreateDirectory(spec.Dir);
        var made = new List<string>();
        try
        {
            string lower;
            if (spec.CopyOf is { } cs && IsCopy(cs))
            {
                made.Add(Rootfs(spec));
                await Run(ct, "cp", "-a", "--reflink=auto", OwnDir(cs, "rootfs") ?? throw NotOwn(cs, "rootfs", "is missing"), Rootfs(spec));
                WriteOwn(spec, "lower", "copy\n");
                made.Add(P(spec, Unprivileged.File));
                Unprivileged.Record(spec, Unprivileged.OnDisk(cs));
                _ids.Shift(spec, Unprivileged.Wanted(spec));
                return;
            }
            if (spec.CopyOf is { } src)
            {
                lower = LowerOf(src);
                if (lower == P(src, "base")) { made.Add(P(spec, "base")); await Run(ct, "cp", "-a", "--reflink=auto", lower, P(spec, "base")); lower = P(spec, "base"); }
                made.Add(Upper(spec));
                await Run(ct, "cp", "-a", "--reflink=auto", OwnDir(src, "upper") ?? throw NotOwn(src, "upper", "is missing"), Upper(spec));
            }
            else if (spec.Image.Rootfs is { } ir && Directory.Exists(ir)) lower = ir;
            else
            {
                lower = P(spec, "base");
                made.Add(lower);
                Directory.CreateDirectory(lower);
                await Run(ct, "tar", "--numeric-owner", "-xpf", spec.Image.File, "-C", lower);
            }
            foreach (var d in new[] { Upper(spec), Work(spec), Rootfs(spec) })
            {
                if (!Directory.Exists(d)) { made.Add(d); Directory.CreateDirectory(d); }
            }
            // An unpacked tarball is the instance's own: recorded relative, so a renamed instance still finds it.
            WriteOwn(spec, "lower", (lower == P(spec, "base") ? "base" : lower) + "\n");
            made.Add(P(spec, "lower"));
            // The upper dir is owned in the instance's id map (a copy's in its source's until shifted).
            made.Add(P(spec, Unprivileged.File));
            Unprivileged.Record(spec, spec.CopyOf is { } from ? Unprivileged.OnDisk(from) : null);
            _ids.Shift(spec, Unprivileged.Wanted(spec));
            // Prove the overlay can be made here now, rather than at the first start. Where it cannot (the state dir is
            // itself on an overlayfs, or on a filesystem overlayfs does not take as upper), the instance gets a full copy.
            try { MountRootfs(spec); }
            catch (OverlayUnsupportedException) when (spec.CopyOf is null)
            {
                RemoveTree(Upper(spec));
                RemoveTree(Work(spec));
                RemoveTree(Rootfs(spec));
                made.Add(Rootfs(spec));
                await Run(ct, "cp", "-a", "--reflink=auto", lower, Rootfs(spec));
                if (lower == P(spec, "base")) RemoveTree(lower);
                WriteOwn(spec, "lower", "copy\n");
                Unprivileged.Record(spec, null);
                _ids.Shift(spec, Unprivileged.Wanted(spec));
            }
            UnmountRootfs(spec);
        }
        catch (Exception e)
        {
            UnmountRootfs(spec);
            foreach (var m in made) RemoveTree(m);
            if (e is InstanceException or OperationCanceledException) throw;
            throw new InstanceException($"creating the root filesystem of '{spec.Name}' failed: {e.Message}", 500);
        }
    }

    public async Task DeleteAsync(InstanceSpec spec, CancellationToken ct)
    {
        await StopAsync(spec, true, TimeSpan.Zero, ct);
        await Lock(spec).WaitAsync(ct);
        try
        {
            CleanupEngine(spec);
            UnmountRootfs(spec);
            foreach (var d in new[] { "rootfs", "upper", "work", "base", "snapshots" }) RemoveTree(P(spec, d));
            foreach (var f in new[] { "lower", "config.json", "exit", Unprivileged.File }) File.Delete(P(spec, f));
        }
        finally { Lock(spec).Release(); }
    }

    // ---- the overlay ----

    static bool IsMounted(string path)
    {
        if (MountPoint.IsMountRoot(path) is { } root) return root;
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            var mp = line.Split(' ')[4].Replace("\\040", " ");
            if (mp == path) return true;
        }
        return false;
    }

    /// <summary>True for an instance whose rootfs/ is a plain copy of the image (no overlayfs here).</summary>
    static bool IsCopy(InstanceSpec spec) => ReadOwn(spec, "lower")?.Trim() == "copy";

    /// <summary>The dir that holds the instance's own state: the overlay's upper dir, or the whole copy.</summary>
    internal static string Layer(InstanceSpec spec)
    {
        var rel = IsCopy(spec) ? "rootfs" : "upper";
        return OwnDir(spec, rel) ?? throw NotOwn(spec, rel, "is missing");
    }

    sealed class OverlayUnsupportedException(string message) : InstanceException(message, 500);

    void MountRootfs(InstanceSpec spec)
    {
        // Checked first in both modes: a copy's rootfs/ is the container's root as it is.
        var target = OwnDir(spec, "rootfs");
        if (IsCopy(spec))
        {
            if (target is null) throw NotOwn(spec, "rootfs", "is missing");
            return;
        }
        if (target is not null && IsMounted(target)) return;
        var lower = LowerOf(spec);
        if (!Directory.Exists(lower))
            throw new InstanceException($"the image root filesystem {lower} of instance '{spec.Name}' is gone: was its image deleted?", 500);
        var upper = OwnDir(spec, "upper") ?? throw NotOwn(spec, "upper", "is missing");
        var work = OwnDir(spec, "work") ?? throw NotOwn(spec, "work", "is missing");
        foreach (var p in new[] { lower, upper, work })
            if (p.IndexOfAny([',', ':']) >= 0) throw new InstanceException($"the path {p} contains ',' or ':' and cannot be an overlayfs layer: use a state dir without them", 500);
        target ??= Directory.CreateDirectory(Rootfs(spec)).FullName;
        // Unprivileged: the shared image is seen through an idmapped mount (its files stay as they are on disk).
        SafeFd? idmapped;
        try { idmapped = Unprivileged.OnDisk(spec) is { } map ? _ids.IdmappedLower(spec, lower, map) : null; }
        catch (InstanceException e) { throw new OverlayUnsupportedException(e.Message); }
        using var _ = idmapped;
        var lowerdir = idmapped is null ? lower : $"/proc/self/fd/{idmapped.Fd}";
        try { Sys.Mount("overlay", target, "overlay", 0, $"lowerdir={lowerdir},upperdir={upper},workdir={work}"); }
        catch (LinuxException e) { throw new OverlayUnsupportedException($"mounting the overlay root filesystem of '{spec.Name}' at {target}: {e.Message}"); }
    }

    static string LowerOf(InstanceSpec spec)
    {
        var lower = ReadOwn(spec, "lower")?.Trim()
            ?? throw new InstanceException($"instance '{spec.Name}' has no root filesystem ({P(spec, "lower")} is missing): delete it and create it again", 500);
        return lower == "base" ? OwnDir(spec, "base") ?? P(spec, "base") : lower;
    }

    static void UnmountRootfs(InstanceSpec spec)
    {
        var target = Rootfs(spec);
        for (var i = 0; i < 8 && File.Exists("/proc/self/mountinfo") && IsMounted(target); i++) Libc.umount2(target, MS.MNT_DETACH | MS.UMOUNT_NOFOLLOW);
    }

    // ---- lifecycle ----

    (ContainerRecord Record, string Status)? Find(InstanceSpec spec)
    {
        if (!_engine.Store.Exists(spec.Name)) return null;
        try
        {
            var r = _engine.Store.Load(spec.Name);
            return (r, _engine.StatusOf(r));
        }
        catch (Exception e) when (e is IOException or JsonException or ContainerException) { return null; }
    }

    bool IsRunning(InstanceSpec spec) => Find(spec) is { Status: "running" or "paused" or "created" };

    /// <summary>Removes the engine container of an instance whose init has ended, and the overlay mount.</summary>
    void CleanupEngine(InstanceSpec spec)
    {
        if (Find(spec) is { } f)
        {
            try { _engine.Delete(spec.Name, force: true); }
            catch (ContainerNotFoundException) { }
        }
        else if (Directory.Exists(_engine.Store.Dir(spec.Name)))
        {
            try { _engine.Delete(spec.Name, force: true); } catch (ContainerException) { }
        }
    }

    Spec BuildSpec(InstanceSpec spec, IReadOnlyList<DeviceRunConfig> devices)
    {
        var root = Rootfs(spec);
        // An instance of the host image is an application container (AppContainers); app.command replaces the init.
        var app = AppContainers.IsHostImage(IsCopy(spec) ? root : LowerOf(spec));
        var custom = AppConfig.Command(spec.Config);
        List<string> args;
        var hasInit = Exists(root, "etc/inittab") || Exists(root, "lib/systemd/systemd");
        if (custom is not null || app) args = custom ?? ["/"];
        else if (hasInit && Exists(root, "sbin/init")) args = ["/sbin/init"];
        else if (Exists(root, "bin/sh")) args = ["/bin/sh", "-c", KeepAlive];
        else throw new InstanceException($"the image of '{spec.Name}' has neither /sbin/init (with /etc/inittab) nor /bin/sh: nothing to run as the container's init");
        var s = DefaultSpec.Create(args, terminal: false);
        s.Root = new Root { Path = "rootfs", Readonly = false };
        s.Hostname = spec.Name;
        var env = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", ["TERM"] = "xterm", ["HOME"] = "/root",
            ["container"] = "hull", ["HOSTNAME"] = spec.Name,
        };
        foreach (var (k, v) in spec.Environment) env[k] = v;
        s.Process!.Env = env.Select(kv => $"{kv.Key}={kv.Value}").ToList();
        // A full-OS container: the init may need to change identity, as in Incus (no no_new_privs on the init).
        s.Process.NoNewPrivileges = false;
        s.Linux!.CgroupsPath = _cgroupPrefix + spec.Name;
        if (Unprivileged.OnDisk(spec) is { } map)
        {
            Unprivileged.Apply(s, map);
            Unprivileged.MakeReachable(spec);
        }
        s.Linux.Resources = Resources(spec, s.Linux.Resources);
        if (app) AppContainers.Apply(spec, s, root);
        if (app && Unprivileged.OnDisk(spec) is { } appMap) _ids.IdmapReadOnlyBinds(spec, s, root, appMap);
        foreach (var disk in devices.SelectMany(d => d.Disks).Where(x => x.Target != "/"))
            throw new InstanceException($"a disk device at {disk.Target} (a block device or image file) cannot be given to container '{spec.Name}' yet: share a host directory with a bind device instead");
        foreach (var m in devices.SelectMany(d => d.Mounts))
        {
            if (!File.Exists(m.Source) && !Directory.Exists(m.Source))
                throw new InstanceException($"device source {m.Source} does not exist on the host");
            s.Mounts!.Add(new Mount
            {
                Destination = m.Target, Type = "bind", Source = m.Source,
                Options = m.ReadOnly ? ["rbind", "ro", "nosuid", "nodev"] : ["rbind", "rw", "nosuid", "nodev"],
            });
        }
        return s;
    }

    static bool Exists(string root, string rel)
    {
        using var r = Sys.Open(root, O.RDONLY | O.DIRECTORY);
        if (!RootedFs.TryOpen(r, rel, O.PATH, 0, out var fd, out _)) return false;
        fd.Dispose();
        return true;
    }

    static Resources Resources(InstanceSpec spec, Resources? baseRes)
    {
        var r = baseRes ?? new Resources();
        if (spec.Limits.MemoryBytes is { } mem) r.Memory = new Memory { Limit = mem };
        if (spec.Limits.Processes is { } pids) r.Pids = new Pids { Limit = pids };
        if (spec.Limits.Cpus is { } cpus) r.Cpu = new Cpu { Quota = cpus * 100_000L, Period = 100_000 };
        return r;
    }

    public async Task StartAsync(InstanceSpec spec, IReadOnlyList<DeviceRunConfig> devices, CancellationToken ct)
    {
        await Lock(spec).WaitAsync(ct);
        try
        {
            if (IsRunning(spec)) throw new InstanceException($"instance '{spec.Name}' is already running", 409);
            CleanupEngine(spec);
            File.Delete(P(spec, "exit"));
            _ids.Shift(spec, Unprivileged.Wanted(spec));
            MountRootfs(spec);
            try
            {
                var oci = BuildSpec(spec, devices);
                WriteOwn(spec, "config.json", JsonSerializer.Serialize(oci, OciJson.Default.Spec));
                using var devnull = Sys.Open("/dev/null", O.RDWR);
                using var log = OpenConsoleLog(spec);
                // The monitor creates and starts it (and rolls back if that fails): the init is the monitor's child.
                await Task.Run(() => _monitor.CreateAndStart(spec.Name, spec.Dir, oci, P(spec, "exit"), [devnull, log, log]), ct);
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

    /// <summary>After the init ended: removes the engine container (cgroup, state) and unmounts the overlay.</summary>
    void AfterExit(InstanceSpec spec)
    {
        Lock(spec).Wait();
        try
        {
            if (Find(spec) is { Status: "stopped" }) CleanupEngine(spec);
            if (!IsRunning(spec)) UnmountRootfs(spec);
        }
        catch (Exception e) { Console.Error.WriteLine($"hulld: warning: cleaning up container '{spec.Name}': {e.Message}"); }
        finally { Lock(spec).Release(); }
    }

    static void WriteExit(InstanceSpec spec, int code)
    {
        if (!Directory.Exists(spec.Dir)) return;
        WriteOwn(spec, "exit", code.ToString(CultureInfo.InvariantCulture));
    }

    static int? ReadExit(InstanceSpec spec) =>
        int.TryParse(ReadOwn(spec, "exit")?.Trim(), CultureInfo.InvariantCulture, out var c) ? c : null;

    /// <summary>
    /// The exit code the monitor recorded for an init that has ended (or is ending). The monitor writes the file before
    /// it reaps the init, so while the init is still a zombie the file is on its way; once the pid is gone without a
    /// file, nobody recorded it (the init was not the monitor's child: started before the monitor existed, or its
    /// monitor died) and the code is unknown.
    /// </summary>
    async Task<int?> RecordedExitAsync(InstanceSpec spec, int pid, ulong startTime, CancellationToken ct)
    {
        for (var i = 0; ; i++)
        {
            if (ReadExit(spec) is { } c) return c;
            if (ProcFs.Stat(pid) is not { } st || st.StartTime != startTime) return ReadExit(spec);
            // A zombie whose parent does not reap it (a stopped or hung monitor): do not wait forever.
            if (i >= 2000) return null;
            await Task.Delay(5, ct);
        }
    }

    public async Task<int?> StopAsync(InstanceSpec spec, bool force, TimeSpan timeout, CancellationToken ct)
    {
        if (Find(spec) is { } f && f.Status is not "stopped")
        {
            if (f.Status == "paused") { try { _engine.Resume(spec.Name); } catch (ContainerException) { } }
            if (!force)
            {
                try { _engine.Kill(spec.Name, Signals.SIGTERM, all: false); } catch (ContainerException) { }
                var deadline = timeout == Timeout.InfiniteTimeSpan ? DateTime.MaxValue : DateTime.UtcNow + timeout;
                while (IsRunning(spec) && DateTime.UtcNow < deadline) await Task.Delay(25, ct);
            }
            if (IsRunning(spec))
            {
                try { _engine.Kill(spec.Name, Signals.SIGKILL, all: true); } catch (ContainerException) { }
                for (var n = 0; n < 1000 && IsRunning(spec); n++) await Task.Delay(10, ct);
                if (IsRunning(spec)) throw new InstanceException($"container '{spec.Name}' did not die within 10 s of SIGKILL; try again", 500);
                if (await RecordedExitAsync(spec, f.Record.Pid, f.Record.PidStartTime, ct) is null) WriteExit(spec, 128 + Signals.SIGKILL);
            }
            // Not recorded (an init the monitor is not the parent of): it ended after the SIGTERM, with a code
            // nobody saw, so it stays unknown.
            else await RecordedExitAsync(spec, f.Record.Pid, f.Record.PidStartTime, ct);
        }
        AfterExit(spec);
        return ReadExit(spec);
    }

    public Task KillAsync(InstanceSpec spec, int signal, CancellationToken ct)
    {
        try { _engine.Kill(spec.Name, signal, all: false); }
        catch (ContainerException e) { throw new InstanceException($"instance '{spec.Name}': {e.Message}", 409); }
        return Task.CompletedTask;
    }

    public Task PauseAsync(InstanceSpec spec, CancellationToken ct)
    {
        try { _engine.Pause(spec.Name); }
        catch (ContainerException e) { throw new InstanceException($"instance '{spec.Name}': {e.Message}", 409); }
        return Task.CompletedTask;
    }

    public Task ResumeAsync(InstanceSpec spec, CancellationToken ct)
    {
        try { _engine.Resume(spec.Name); }
        catch (ContainerException e) { throw new InstanceException($"instance '{spec.Name}': {e.Message}", 409); }
        return Task.CompletedTask;
    }

    static string MapState(string status) => status switch
    {
        "running" or "created" => InstanceStates.Running,
        "paused" => InstanceStates.Frozen,
        _ => InstanceStates.Stopped,
    };

    public Task<DriverState> GetStateAsync(InstanceSpec spec, CancellationToken ct)
    {
        var f = Find(spec);
        var state = f is { } x ? MapState(x.Status) : InstanceStates.Stopped;
        return Task.FromResult(new DriverState
        {
            State = state, Pid = state == InstanceStates.Stopped ? null : f!.Value.Record.Pid,
            ExitCode = state == InstanceStates.Stopped ? ReadExit(spec) : null,
        });
    }

    public async Task<ReattachResult> ReattachAsync(InstanceSpec spec, CancellationToken ct)
    {
        var f = Find(spec);
        var state = f is { } x ? MapState(x.Status) : InstanceStates.Stopped;
        if (state == InstanceStates.Stopped)
        {
            // It ended while hulld was away: the monitor recorded its exit code (unless it was not the init's parent).
            if (f is { } ended) await RecordedExitAsync(spec, ended.Record.Pid, ended.Record.PidStartTime, ct);
            AfterExit(spec);
            return new ReattachResult { State = state, ExitCode = ReadExit(spec) };
        }
        return new ReattachResult { State = state, Pid = f!.Value.Record.Pid };
    }

    public async Task<int?> WaitForExitAsync(InstanceSpec spec, CancellationToken ct)
    {
        // The init is the monitor's child, not ours: watch it through a pidfd (one thread watches every instance), then
        // read the code the monitor recorded.
        if (Find(spec) is { } f && f.Status != "stopped")
        {
            SafeFd? pidfd = null;
            try { pidfd = Sys.PidfdOpen(f.Record.Pid); } catch (LinuxException) { }
            if (pidfd is not null && ProcFs.IsAlive(f.Record.Pid, f.Record.PidStartTime))
            {
                var exited = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                var key = _exits.Value.Register(pidfd, () => exited.TrySetResult());
                try { await exited.Task.WaitAsync(ct); }
                finally { _exits.Value.Unregister(key); }
            }
            else
            {
                pidfd?.Dispose();
                while (!ct.IsCancellationRequested && IsRunning(spec)) await Task.Delay(200, ct);
            }
            ct.ThrowIfCancellationRequested();
            await RecordedExitAsync(spec, f.Record.Pid, f.Record.PidStartTime, ct);
        }
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
        r.Cpu = spec.Limits.Cpus is { } c ? new Cpu { Quota = c * 100_000L, Period = 100_000 } : new Cpu { Quota = -1, Period = 100_000 };
        try { _engine.Update(spec.Name, r); }
        catch (ContainerException) { return Task.FromResult(false); }
        return Task.FromResult(true);
    }

    // ---- exec ----

    public Task<IExecSession> ExecAsync(InstanceSpec spec, ExecSpec exec, CancellationToken ct)
    {
        if (Find(spec) is not { Status: "running" } f)
            throw new InstanceException($"instance '{spec.Name}' is not running" + (Find(spec) is { Status: "paused" } ? " (it is frozen: resume it first)" : ""), 409);
        var env = exec.Environment.Select(kv => $"{kv.Key}={kv.Value}").ToList();
        Hull.Oci.Process p;
        try { p = _engine.ExecProcess(spec.Name, [.. exec.Command], false, env, exec.Cwd, exec.User, null); }
        catch (ContainerException e) { throw new InstanceException(e.Message); }
        try
        {
            return Task.FromResult(exec.Tty ? ContainerExec.StartPty(_engine, spec.Name, f.Record.Pid, p, exec.Width, exec.Height)
                                            : ContainerExec.StartPipes(_engine, spec.Name, p));
        }
        catch (ContainerException e) when (e.ExitCode is 126 or 127)
        {
            // As a shell would: the program cannot be run, so the exec ends at once with 127 (not found) or 126.
            return Task.FromResult(ContainerExec.Failed(e.ExitCode, e.Message, exec.Tty));
        }
        catch (ContainerException e) { throw new InstanceException(e.Message, 500); }
    }

    // ---- files: resolved inside the container's root (its mount namespace view while it runs) ----

    /// <summary>An fd for the instance's root: /proc/PID/root while it runs, else the overlay (mounted for the call and
    /// detached at once: the fd keeps it alive until closed).</summary>
    SafeFd OpenRoot(InstanceSpec spec)
    {
        if (Find(spec) is { Status: "running" or "paused" } f)
        {
            var fd = Sys.Open($"/proc/{f.Record.Pid}/root", O.RDONLY | O.DIRECTORY);
            if (ProcFs.IsAlive(f.Record.Pid, f.Record.PidStartTime)) return fd;
            fd.Dispose();
        }
        Lock(spec).Wait();
        try
        {
            if (IsMounted(Rootfs(spec))) return Sys.Open(Rootfs(spec), O.RDONLY | O.DIRECTORY);
            MountRootfs(spec);
            try { return Sys.Open(Rootfs(spec), O.RDONLY | O.DIRECTORY); }
            finally { UnmountRootfs(spec); }
        }
        finally { Lock(spec).Release(); }
    }

    static string TypeOf(uint mode) => (mode & 0xF000) switch { 0x8000 => "file", 0x4000 => "directory", 0xA000 => "symlink", _ => "special" };

    /// <summary>A file's description, with its owners as the container sees them.</summary>
    static FileEntry Entry(InstanceSpec spec, string name, SafeFd fd)
    {
        var st = RootedFs.FStat(fd);
        var (uid, gid) = Unprivileged.Inside(Unprivileged.OnDisk(spec), st.Uid, st.Gid);
        return new FileEntry { Name = name, Type = TypeOf(st.Mode), Size = st.Size, Mode = (int)(st.Mode & 0xFFF), Uid = uid, Gid = gid };
    }

    static InstanceException NotFound(InstanceSpec spec, string path) => new($"{path} does not exist in instance '{spec.Name}'", 404);

    static SafeFd OpenIn(InstanceSpec spec, SafeFd root, string path, int flags, uint mode = 0)
    {
        if (RootedFs.TryOpen(root, path, flags, mode, out var fd, out var e)) return fd;
        if (e == Errors.ENOENT) throw NotFound(spec, path);
        if (e == Errors.ENOTDIR) throw new InstanceException($"{path} in instance '{spec.Name}': a parent is not a directory");
        if (e == Errors.EISDIR) throw new InstanceException($"{path} in instance '{spec.Name}' is a directory");
        throw new InstanceException($"{path} in instance '{spec.Name}': {Errors.Describe(e)}", 500);
    }

    public Task<FileEntry?> StatFileAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        using var root = OpenRoot(spec);
        if (!RootedFs.TryOpen(root, path, O.PATH, 0, out var fd, out var e))
            return e == Errors.ENOENT || e == Errors.ENOTDIR ? Task.FromResult<FileEntry?>(null) : throw new InstanceException($"{path}: {Errors.Describe(e)}", 500);
        using (fd) return Task.FromResult<FileEntry?>(Entry(spec, Path.GetFileName(path.TrimEnd('/')) is { Length: > 0 } n ? n : "/", fd));
    }

    public Task<Stream> PullFileAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        using var root = OpenRoot(spec);
        // O_NONBLOCK: a fifo swapped in after the stat must not hang the open (it is refused below).
        var fd = OpenIn(spec, root, path, O.RDONLY | O.NONBLOCK);
        if (TypeOf(RootedFs.FStat(fd).Mode) != "file") { fd.Dispose(); throw new InstanceException($"{path} in instance '{spec.Name}' is not a regular file"); }
        return Task.FromResult<Stream>(new FileStream(new SafeFileHandle(fd.Detach(), true), FileAccess.Read, 1));
    }

    public Task<IReadOnlyList<FileEntry>> ListFilesAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        using var root = OpenRoot(spec);
        using var dir = OpenIn(spec, root, path, O.RDONLY | O.DIRECTORY);
        var list = new List<FileEntry>();
        foreach (var child in Directory.EnumerateFileSystemEntries($"/proc/self/fd/{dir.Fd}").Select(x => Path.GetFileName(x)!).Order(StringComparer.Ordinal))
        {
            if (RootedFs.TryOpen(dir, child, O.PATH | O.NOFOLLOW, 0, out var cfd, out _))
                using (cfd) list.Add(Entry(spec, child, cfd));
        }
        return Task.FromResult<IReadOnlyList<FileEntry>>(list);
    }

    public async Task PushFileAsync(InstanceSpec spec, string path, Stream content, FileMeta meta, CancellationToken ct)
    {
        if (!path.StartsWith('/') || Path.GetFileName(path).Length == 0)
            throw new InstanceException($"push target '{path}' must be an absolute file path such as /root/file.txt");
        var (uid, gid) = Unprivileged.Outside(spec, meta.Uid, meta.Gid);
        using var root = OpenRoot(spec);
        var parent = Path.GetDirectoryName(path) ?? "/";
        var cur = "/";
        foreach (var part in parent.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            using (var d = OpenIn(spec, root, cur, O.RDONLY | O.DIRECTORY))
                if (RootedFs.MkdirAt(d, part, 0b111_101_101)) Unprivileged.OwnByRoot(spec, d, part);
            cur = cur.TrimEnd('/') + "/" + part;
        }
        using var pd = OpenIn(spec, root, parent, O.RDONLY | O.DIRECTORY);
        var name = Path.GetFileName(path);
        var tmp = "." + name + ".hull-push-" + Guid.NewGuid().ToString("N")[..8];
        using (var fd = OpenIn(spec, pd, tmp, O.WRONLY | O.CREAT | O.EXCL, (uint)meta.Mode & 0xFFF))
        {
            try
            {
                RootedFs.FChown(fd, uid, gid);
                RootedFs.FChmod(fd, (uint)meta.Mode & 0xFFF);
                await using var fs = new FileStream(new SafeFileHandle(fd.DangerousGetHandle(), false), FileAccess.Write, 1);
                await content.CopyToAsync(fs, ct);
            }
            catch
            {
                RootedFs.UnlinkAt(pd, tmp, false);
                throw;
            }
        }
        // renameat within one directory fd: the final name cannot escape the root.
        File.Move($"/proc/self/fd/{pd.Fd}/{tmp}", $"/proc/self/fd/{pd.Fd}/{name}", overwrite: true);
    }

    public async Task DeleteFileAsync(InstanceSpec spec, string path, CancellationToken ct)
    {
        await Task.CompletedTask;
        if (path.TrimEnd('/').Length == 0) throw new InstanceException("cannot delete / of an instance");
        using var root = OpenRoot(spec);
        FileEntry st;
        // The entry itself (a symlink is removed, not its target).
        using (var self = OpenIn(spec, root, path, O.PATH | O.NOFOLLOW)) st = Entry(spec, path, self);
        using var d = OpenIn(spec, root, Path.GetDirectoryName(path.TrimEnd('/')) ?? "/", O.RDONLY | O.DIRECTORY);
        try { RootedFs.UnlinkAt(d, Path.GetFileName(path.TrimEnd('/')), st.Type == "directory"); }
        catch (LinuxException e) { throw new InstanceException($"deleting {path} in instance '{spec.Name}': {e.Message}", e.Errno == Errors.ENOTEMPTY ? 409 : 500); }
    }

    // ---- console and log ----

    public Task<IConsoleSession> AttachConsoleAsync(InstanceSpec spec, CancellationToken ct)
    {
        if (!IsRunning(spec)) throw new InstanceException($"instance '{spec.Name}' is not running", 409);
        return Task.FromResult<IConsoleSession>(new LogConsole(new LogFileStream(ConsoleLogPath(spec), () => IsRunning(spec), follow: true, fromEnd: true)));
    }

    sealed class LogConsole(Stream output) : IConsoleSession
    {
        public Stream Output => output;
        public Stream? Input => null;
        public ValueTask DisposeAsync() { output.Dispose(); return ValueTask.CompletedTask; }
    }

    public Task<Stream> OpenLogAsync(InstanceSpec spec, bool follow, CancellationToken ct) =>
        Task.FromResult<Stream>(new LogFileStream(ConsoleLogPath(spec), () => IsRunning(spec), follow, fromEnd: false));

    // ---- snapshots: copies of the upper dir ----

    /// <summary>snapshots/NAME, relative to the instance dir (the name checked: one plain path component).</summary>
    static string SnapRel(InstanceSpec spec, string snap) => ConfigSchema.IsValidName(snap) ? "snapshots/" + snap
        : throw new InstanceException($"snapshot name '{snap}' of '{spec.Name}' is invalid: use 1-63 letters, digits, '-', '_' or '.'");

    public async Task CreateSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct)
    {
        var rel = SnapRel(spec, snapshot);
        var layer = Layer(spec);
        OwnDir(spec, "snapshots");
        if (OwnDir(spec, rel) is not null) throw new InstanceException($"snapshot '{snapshot}' of '{spec.Name}' exists already", 409);
        var dir = Directory.CreateDirectory(P(spec, rel)).FullName;
        try { await Run(ct, "cp", "-a", "--reflink=auto", layer, Path.Combine(dir, "upper")); }
        catch { RemoveTree(dir); throw; }
    }

    public async Task RestoreSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct)
    {
        var src = OwnDir(spec, SnapRel(spec, snapshot) + "/upper")
            ?? throw new InstanceException($"snapshot '{snapshot}' of '{spec.Name}' does not exist", 404);
        if (IsRunning(spec)) throw new InstanceException($"instance '{spec.Name}' is running: stop it before restoring a snapshot", 409);
        UnmountRootfs(spec);
        var layer = Layer(spec);
        var next = layer + ".restore";
        RemoveTree(next);
        await Run(ct, "cp", "-a", "--reflink=auto", src, next);
        var old = layer + ".old";
        RemoveTree(old);
        Directory.Move(layer, old);
        Directory.Move(next, layer);
        RemoveTree(old);
        if (!IsCopy(spec))
        {
            RemoveTree(Work(spec));
            Directory.CreateDirectory(Work(spec));
        }
    }

    public Task DeleteSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct)
    {
        if (OwnDir(spec, SnapRel(spec, snapshot)) is { } dir) RemoveTree(dir);
        return Task.CompletedTask;
    }

    // ---- backup / move: the instance dir travels; the image root filesystem is the importing host's own ----

    /// <summary>A backup holds the files with the owners the container sees (shifted back at the next start).</summary>
    public Task PrepareExportAsync(InstanceSpec spec, CancellationToken ct) => Task.Run(() => _ids.Shift(spec, null), ct);

    public IReadOnlyList<string>? ExportExcludes(InstanceSpec spec) =>
        IsCopy(spec) ? ["work", "config.json", "exit"] : ["rootfs", "work", "config.json", "exit"];

    public IReadOnlyList<string> BackupContentDirs => ["upper", "rootfs", "base", "snapshots/*/upper"];

    public Task ImportAsync(InstanceSpec spec, CancellationToken ct)
    {
        var lower = ReadOwn(spec, "lower")?.Trim()
            ?? throw new InstanceException($"the backup of '{spec.Name}' has no root filesystem record (lower): it was not made by a container export", 400);
        // A backup holds the owners as the container sees them (whatever its idmap file says): mapped to this host's.
        Unprivileged.Record(spec, null);
        if (lower == "copy")
        {
            if (OwnDir(spec, "rootfs") is null) throw new InstanceException($"the backup of '{spec.Name}' lacks its root filesystem (rootfs/)", 400);
            _ids.Shift(spec, Unprivileged.Wanted(spec));
            return Task.CompletedTask;
        }
        if (lower != "base")
        {
            // The source host's image path: this host's copy of the same image (same fingerprint) takes its place.
            if (spec.Image.Rootfs is not { } ir || !Directory.Exists(ir))
                throw new InstanceException($"image {spec.Image.Fingerprint[..Math.Min(12, spec.Image.Fingerprint.Length)]} of '{spec.Name}' is not on this host: copy the image here first (hull image export/import)", 409);
            WriteOwn(spec, "lower", ir + "\n");
        }
        foreach (var d in new[] { Upper(spec), Work(spec), Rootfs(spec) }) Directory.CreateDirectory(d);
        _ids.Shift(spec, Unprivileged.Wanted(spec));
        // Prove the overlay mounts here now rather than at the first start.
        try { MountRootfs(spec); }
        finally { UnmountRootfs(spec); }
        return Task.CompletedTask;
    }

    // ---- stats: the container's cgroup ----

    public Task<InstanceStats> GetStatsAsync(InstanceSpec spec, CancellationToken ct)
    {
        var s = new InstanceStats();
        if (Find(spec) is not { Status: not "stopped" } f) return Task.FromResult(s);
        try
        {
            var st = Hull.Cgroups.Cgroup.Open(f.Record.CgroupPath, spec.Name).Stats();
            s.CpuUsageNs = (long)st.Cpu.Usage.Total;
            s.MemoryBytes = (long)st.Memory.Usage.Usage;
            s.Pids = (long)st.Pids.Current;
            foreach (var e in st.Blkio.IoServiceBytesRecursive ?? [])
            {
                if (string.Equals(e.Op, "read", StringComparison.OrdinalIgnoreCase)) s.IoReadBytes += (long)e.Value;
                else if (string.Equals(e.Op, "write", StringComparison.OrdinalIgnoreCase)) s.IoWriteBytes += (long)e.Value;
            }
        }
        catch (Hull.Cgroups.CgroupException) { }
        return Task.FromResult(s);
    }

    // ---- helpers ----

    static Task Run(CancellationToken ct, string program, params string[] args) =>
        HostProgram.RunAsync(program, args, new() { Error = e => new InstanceException(e.Message, 500) }, ct);
}
