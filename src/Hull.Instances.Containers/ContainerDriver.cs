using System.Collections.Concurrent;
using System.Globalization;
using System.Text.Json;
using Hull.Api;
using Hull.Containers;
using Hull.Linux;
using Hull.Oci;
using Microsoft.Win32.SafeHandles;

namespace Hull.Instances.Containers;

/// <summary>
/// Instances of type "container" on the container engine (<see cref="ContainerEngine"/>).
/// Per instance, under <see cref="InstanceSpec.Dir"/>:
/// <list type="bullet">
/// <item>lower: the path of the read-only image root filesystem the instance is made from (or base/, an unpacked
/// tarball);</item>
/// <item>upper/, work/: the overlayfs upper and work dirs (the instance's own changes);</item>
/// <item>rootfs/: the overlay mount point, mounted while the container runs (and briefly for file operations);</item>
/// <item>config.json: the OCI spec of the last start (the bundle is the instance dir);</item>
/// <item>console.log: the init's stdout and stderr; exit: the init's exit code once it ended;</item>
/// <item>snapshots/NAME/upper: copies of the upper dir;</item>
/// <item>idmap: the id map the files of upper/ (or of a copy's rootfs/) and of snapshots/ are owned in (an
/// <see cref="IdMap"/>, or "privileged" for the container's own view); see <see cref="Unprivileged"/>.</item>
/// </list>
/// The engine's state lives in &lt;state dir&gt;/containers. The container monitor (<see cref="ContainerMonitor"/>) is
/// the
/// only process of hulld's that runs the container engine: one long-lived process per state dir, the parent of every
/// container init, which records each init's exit code in exit and tells hulld before it reaps it. So containers
/// outlive hulld, and their exit codes are exact across a hulld stop, crash or upgrade. The engine container id is the
/// instance name. This driver is the monitor's typed client (<see cref="MonitorClient"/>) plus the instance's storage
/// and spec building, one job per file: ContainerDriver.Storage.cs (the instance dir and its overlay, create, delete,
/// import), .Spec.cs (the OCI spec of a start), .Lifecycle.cs (start, stop, signals, state, exec, stats), .Files.cs
/// (the file API, console and log) and .Snapshots.cs.
/// </summary>
public sealed partial class ContainerDriver : IInstanceDriver
{
    public string Type => InstanceTypes.Container;

    /// <summary>The engine's state dir, read for whether an instance has an engine container (storage only: every
    /// operation on one goes through the monitor).</summary>
    readonly StateStore _containers;
    readonly string _cgroupPrefix;
    readonly MonitorClient _monitor;
    readonly ConcurrentDictionary<string, SemaphoreSlim> _locks = new(StringComparer.Ordinal);
    readonly Unprivileged _ids = new();

    /// <param name="stateDir">hulld's state dir; the engine keeps its container state in a "containers" dir below
    /// it.</param>
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
                { DriverLog.Warning($"{e.Message} (retried at the next container start)"); }
            });
        var dir = Path.Combine(stateDir, "containers");
        Directory.CreateDirectory(dir);
        _containers = new StateStore(dir);
        // Two hullds on one host (distinct state dirs) may use the same instance names: their cgroups must not collide.
        uint h = 2166136261;
        foreach (var c in Path.GetFullPath(stateDir)) { h ^= c; h *= 16777619; }
        _cgroupPrefix = "/hull/i-" + h.ToString("x8", CultureInfo.InvariantCulture) + "-";
    }

    /// <summary>The connection to the container monitor.</summary>
    public MonitorClient Monitor => _monitor;

    static string P(InstanceSpec s, string name) => Path.Combine(s.Dir, name);
    static string Rootfs(InstanceSpec s) => P(s, "rootfs");
    static string Upper(InstanceSpec s) => P(s, "upper");
    static string Work(InstanceSpec s) => P(s, "work");

    SemaphoreSlim Lock(InstanceSpec s) => _locks.GetOrAdd(s.Name, _ => new SemaphoreSlim(1, 1));

    public void Validate(InstanceSpec spec)
    {
        var init = ContainerEngine.InitBinary;
        if (!File.Exists(init))
            throw new InstanceException($"the container init binary {init} does not exist: install hull-oci next to " +
                "hulld (make install) or set HULL_INIT_BINARY", 500);
        try { StateStore.ValidateId(spec.Name); }
        catch (ContainerException e) { throw new InstanceException(
            $"instance name '{spec.Name}' cannot name a container: {e.Message}"); }
        if (spec.Limits.Cpus is < 1) throw new InstanceException("limits.cpu must be at least 1");
    }

    // ---- helpers ----

    static Task Run(CancellationToken ct, string program, params string[] args) =>
        HostProgram.RunAsync(program, args, new() { Error = e => new InstanceException(e.Message, 500) }, ct);
}
