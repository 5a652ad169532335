using Hull.Api;

namespace Hull.Instances;

/// <summary>
/// The seam between hulld and an engine. One driver serves one instance type (container or vm). hulld owns the
/// records, the state machine and the API; the driver owns the running thing. Every method is called with the
/// instance's spec; drivers keep whatever they need to find an instance again under <see cref="InstanceSpec.Dir"/>
/// so that <see cref="ReattachAsync"/> works after hulld was restarted or killed.
/// Errors: throw <see cref="InstanceException"/> with a message a user can act on; anything else is reported as an
/// engine failure.
/// </summary>
public interface IInstanceDriver
{
    /// <summary>"container" or "vm".</summary>
    string Type { get; }

    /// <summary>Checks the type-specific parts of a spec before anything is made (limits this engine cannot
    /// honour...).</summary>
    void Validate(InstanceSpec spec);

    /// <summary>Makes the instance's root filesystem or disk from <see cref="InstanceSpec.Image"/> (or from
    /// <see cref="InstanceSpec.CopyOf"/>). On failure it leaves nothing behind.</summary>
    Task CreateAsync(InstanceSpec spec, CancellationToken ct);

    /// <summary>Starts the instance, detached so that it outlives hulld. Devices are already started: their run configs
    /// are in
    /// <paramref name="devices"/>.</summary>
    Task StartAsync(InstanceSpec spec, IReadOnlyList<DeviceRunConfig> devices, CancellationToken ct);

    /// <summary>Asks the instance to stop (SIGTERM / ACPI power button), waits up to <paramref name="timeout"/>, then
    /// kills it.
    /// With <paramref name="force"/> it kills at once. Returns the exit code of the main process if known.</summary>
    Task<int?> StopAsync(InstanceSpec spec, bool force, TimeSpan timeout, CancellationToken ct);

    /// <summary>Sends a signal to the instance's main process.</summary>
    Task KillAsync(InstanceSpec spec, int signal, CancellationToken ct);

    Task PauseAsync(InstanceSpec spec, CancellationToken ct);
    Task ResumeAsync(InstanceSpec spec, CancellationToken ct);

    /// <summary>Removes everything the driver made for a stopped instance (root filesystem, disks,
    /// snapshots).</summary>
    Task DeleteAsync(InstanceSpec spec, CancellationToken ct);

    /// <summary>The live state as the engine sees it.</summary>
    Task<DriverState> GetStateAsync(InstanceSpec spec, CancellationToken ct);

    /// <summary>Runs a command inside a running instance.</summary>
    Task<IExecSession> ExecAsync(InstanceSpec spec, ExecSpec exec, CancellationToken ct);

    /// <summary>Writes a file inside the instance (parents are created).</summary>
    Task PushFileAsync(InstanceSpec spec, string path, Stream content, FileMeta meta, CancellationToken ct);

    /// <summary>Describes a path inside the instance; null if it does not exist.</summary>
    Task<FileEntry?> StatFileAsync(InstanceSpec spec, string path, CancellationToken ct);

    /// <summary>Opens a regular file inside the instance for reading.</summary>
    Task<Stream> PullFileAsync(InstanceSpec spec, string path, CancellationToken ct);

    /// <summary>Lists a directory inside the instance.</summary>
    Task<IReadOnlyList<FileEntry>> ListFilesAsync(InstanceSpec spec, string path, CancellationToken ct);

    Task DeleteFileAsync(InstanceSpec spec, string path, CancellationToken ct);

    /// <summary>Attaches to the console (container: the main process's terminal; VM: the serial console).</summary>
    Task<IConsoleSession> AttachConsoleAsync(InstanceSpec spec, CancellationToken ct);

    /// <summary>The console log so far; with <paramref name="follow"/> the stream goes on until <paramref name="ct"/>
    /// or the instance stops.</summary>
    Task<Stream> OpenLogAsync(InstanceSpec spec, bool follow, CancellationToken ct);

    Task CreateSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct);
    /// <summary>Restores the root filesystem from a snapshot; the instance is stopped.</summary>
    Task RestoreSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct);
    Task DeleteSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct);

    Task<InstanceStats> GetStatsAsync(InstanceSpec spec, CancellationToken ct);

    /// <summary>After hulld (re)started: finds an instance that was running, or learns how it ended
    /// meanwhile.</summary>
    Task<ReattachResult> ReattachAsync(InstanceSpec spec, CancellationToken ct);

    /// <summary>Completes with the main process's exit code (128+n for signal n) when a started or reattached instance
    /// ends by itself or is stopped; null when the code is unknown (what records it was gone). Cancelled through
    /// <paramref name="ct"/> when hulld stops watching.</summary>
    Task<int?> WaitForExitAsync(InstanceSpec spec, CancellationToken ct);

    /// <summary>Applies changed limits to a running instance; returns false if a restart is needed to apply
    /// them.</summary>
    Task<bool> ApplyLimitsAsync(InstanceSpec spec, CancellationToken ct);

    // ---- backup / move to another host (optional: the defaults say the type cannot be exported) ----

    /// <summary>
    /// For a backup of a stopped instance: the paths under <see cref="InstanceSpec.Dir"/> to leave out (scratch dirs,
    /// mount points, sockets), relative to it. Null means this instance type cannot be exported.
    /// </summary>
    IReadOnlyList<string>? ExportExcludes(InstanceSpec spec) => null;

    /// <summary>Before a backup of a stopped instance is written: puts its files in the form a backup holds (a
    /// container's: the owners as the container sees them).</summary>
    Task PrepareExportAsync(InstanceSpec spec, CancellationToken ct) => Task.CompletedTask;

    /// <summary>
    /// The dirs of an instance dir (relative to it; a "*" component stands for one snapshot name) whose contents are
    /// the instance's own files, where a backup may hold any file type, symlinks and hard links (within the same dir).
    /// Everywhere else a backup may hold only regular files and directories: Hull's own files are checked against this
    /// before anything is unpacked.
    /// </summary>
    IReadOnlyList<string> BackupContentDirs => [];

    /// <summary>
    /// After an import unpacked a backup's instance dir into <see cref="InstanceSpec.Dir"/> (on this host, maybe under
    /// a
    /// new name): makes it usable here (re-links the image, rewrites absolute paths, makes scratch dirs). On failure
    /// the
    /// caller removes the dir.
    /// </summary>
    Task ImportAsync(InstanceSpec spec, CancellationToken ct) =>
        throw new InstanceException($"{Type} instances cannot be imported by this hulld: upgrade it", 501);

    // ---- live migration to another host (optional) ----

    /// <summary>True if running instances of this type can move live (<see cref="MigrateOutAsync"/> and
    /// friends).</summary>
    bool CanMigrateLive => false;

    /// <summary>
    /// Target side: the instance was created here (<see cref="CreateAsync"/>, over the same image) and its devices
    /// started; starts it waiting for the incoming state on <paramref name="listenAddress"/> and returns the URI the
    /// source sends to. On failure it leaves nothing running.
    /// </summary>
    Task<string> PrepareIncomingAsync(InstanceSpec spec, IReadOnlyList<DeviceRunConfig> devices, string listenAddress,
        CancellationToken ct) =>
        throw new InstanceException($"running {Type} instances cannot move live: stop them first", 501);

    /// <summary>Source side: sends the running instance's memory, devices and writable disks to <paramref name="uri"/>.
    /// On success the instance no longer runs here; on failure it keeps running here.</summary>
    Task<MigrationStats> MigrateOutAsync(InstanceSpec spec, string uri, CancellationToken ct) =>
        throw new InstanceException($"running {Type} instances cannot move live: stop them first", 501);

    /// <summary>Target side, after the source completed: the instance runs here now (wait until it does).</summary>
    Task CompleteIncomingAsync(InstanceSpec spec, CancellationToken ct) => Task.CompletedTask;
}

/// <summary>A failure with a message for the user and the HTTP status it maps to.</summary>
public class InstanceException(string message, int status = 400) : Exception(message)
{
    public int Status { get; } = status;
}

/// <summary>Everything a driver needs to know about an instance, already validated and with profiles merged.</summary>
public sealed class InstanceSpec
{
    public required string Name { get; init; }
    public required string Type { get; init; }
    /// <summary>The instance's own directory under the state dir; the driver may keep anything it wants here.</summary>
    public required string Dir { get; init; }
    public required ImageRef Image { get; init; }
    public required InstanceLimits Limits { get; init; }
    public required IReadOnlyDictionary<string, string> Environment { get; init; }
    /// <summary>The expanded config (profiles merged), for keys a driver wants beyond the parsed ones.</summary>
    public required IReadOnlyDictionary<string, string> Config { get; init; }
    public required IReadOnlyList<IDevice> Devices { get; init; }
    /// <summary>For a copy: the source instance's spec (stopped, or a snapshot thereof).</summary>
    public InstanceSpec? CopyOf { get; init; }
}

/// <summary>The image an instance is made from, as the image store holds it.</summary>
public sealed class ImageRef
{
    public required string Fingerprint { get; init; }
    public required string Type { get; init; }
    /// <summary>The image file as imported (a rootfs tarball for containers, a disk image for VMs).</summary>
    public required string File { get; init; }
    /// <summary>For container images: the unpacked root filesystem (read-only, shared by every instance).</summary>
    public string? Rootfs { get; init; }
}

public sealed class InstanceLimits
{
    /// <summary>Number of CPUs, or null for no limit.</summary>
    public int? Cpus { get; init; }
    /// <summary>Memory in bytes, or null for no limit.</summary>
    public long? MemoryBytes { get; init; }
    /// <summary>Maximum number of processes (pids.max), or null for no limit.</summary>
    public int? Processes { get; init; }
}

/// <summary>What a live migration took.</summary>
public sealed record MigrationStats(TimeSpan Total, TimeSpan Downtime, long TransferredBytes);

public sealed class DriverState
{
    public required InstanceState State { get; init; }
    public int? Pid { get; init; }
    public int? ExitCode { get; init; }
    /// <summary>Why the instance is in the Error state (a VM's guest panicked...), if it is.</summary>
    public string? Message { get; init; }
    /// <summary>Stopped because its guest asked to reboot (a system container's init ended on reboot(2)): hulld starts
    /// it again when nobody asked it to stop.</summary>
    public bool Rebooted { get; init; }
    /// <summary>Engine facts shown by 'hull info' (a VM: accelerator and why, vCPUs, memory...); null if
    /// none.</summary>
    public IReadOnlyDictionary<string, string>? Details { get; init; }
}

public sealed class ReattachResult
{
    /// <summary>Running, Paused or Stopped.</summary>
    public required InstanceState State { get; init; }
    public int? Pid { get; init; }
    /// <summary>If the instance ended while hulld was away: its main process's exit code.</summary>
    public int? ExitCode { get; init; }
}

public sealed class ExecSpec
{
    public required IReadOnlyList<string> Command { get; init; }
    public IReadOnlyDictionary<string, string> Environment { get; init; } = new Dictionary<string, string>();
    public string? Cwd { get; init; }
    public string? User { get; init; }
    public bool Tty { get; init; }
    public int Width { get; init; } = 80;
    public int Height { get; init; } = 24;
}

/// <summary>A running exec. With a pty, stdout carries both output streams and <see cref="Stderr"/> is null.</summary>
public interface IExecSession : IAsyncDisposable
{
    Stream Stdin { get; }
    Stream Stdout { get; }
    Stream? Stderr { get; }
    /// <summary>Completes with the exit code (128+n for a signal) once the process ended and its output was
    /// drained.</summary>
    Task<int> Exit { get; }
    void Resize(int width, int height);
    void Signal(int signal);
}

public interface IConsoleSession : IAsyncDisposable
{
    Stream Output { get; }
    /// <summary>Null if the console takes no input.</summary>
    Stream? Input { get; }
}

public sealed class FileMeta
{
    public int Mode { get; init; } = 0b110_100_100;
    public int Uid { get; init; }
    public int Gid { get; init; }
}
