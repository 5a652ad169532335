using Hull.Vm;

namespace Hull.Instances.Vms.Tests;

/// <summary>
/// A VM engine without QEMU: defines a VM by writing its config.json (as the real one), keeps one <see cref="FakeVm"/>
/// per state dir, and fails what a test tells it to.
/// </summary>
sealed class FakeVmEngine : IVmEngine
{
    public readonly Dictionary<string, FakeVm> Vms = new(StringComparer.Ordinal);
    /// <summary>Thrown by the next create.</summary>
    public Exception? CreateFails;
    /// <summary>Called with each VM made (to set its failures before the driver uses it).</summary>
    public Action<FakeVm>? OnCreate;

    public Task<IVm> CreateAsync(string stateDir, VmConfig config, CancellationToken ct)
    {
        if (CreateFails is { } e) throw e;
        Directory.CreateDirectory(stateDir);
        config.Disks[0].Path = Path.Combine(stateDir, "disk0.qcow2");
        config.Disks[0].Owned = true;
        File.WriteAllText(Path.Combine(stateDir, StateFiles.Config), "{}");
        var vm = new FakeVm(stateDir, config);
        Vms[stateDir] = vm;
        OnCreate?.Invoke(vm);
        return Task.FromResult<IVm>(vm);
    }

    public Task<IVm> AttachAsync(string stateDir, CancellationToken ct) =>
        Vms.TryGetValue(stateDir, out var vm)
            ? Task.FromResult<IVm>(vm) : throw new VmException($"{stateDir} holds no VM");
}

/// <summary>A VM whose operations succeed (and are logged) unless a test set a failure for them.</summary>
sealed class FakeVm(string dir, VmConfig config) : IVm
{
    /// <summary>Operation name → what it throws.</summary>
    public readonly Dictionary<string, Exception> Fails = new(StringComparer.Ordinal);
    public readonly List<string> Calls = [];
    public readonly List<VmSnapshot> Snapshots = [];
    /// <summary>Whether KillAsync really ends "QEMU".</summary>
    public bool KillWorks = true;

    public VmConfig Config { get; } = config;
    public string StateDir { get; } = Path.GetFullPath(dir);
    public Accel Accel => Accel.Tcg;
    public string? AccelReason => null;
    public string AgentSocketPath => Path.Combine(StateDir, StateFiles.Agent);
    public string PidFilePath => Path.Combine(StateDir, StateFiles.Pid);
    public string? AttachError => null;
    public int? Pid { get; set; }
    public VmRecord? LastRecord { get; set; }

    Task Do(string op)
    {
        Calls.Add(op);
        return Fails.TryGetValue(op, out var e) ? Task.FromException(e) : Task.CompletedTask;
    }

    public async Task StartAsync(bool paused = false, CancellationToken ct = default)
    {
        await Do("start");
        Pid = 4242;
    }

    public async Task<VmState> GetStateAsync(CancellationToken ct = default)
    {
        await Do("state");
        return Pid is null ? VmState.Stopped : VmState.Running;
    }

    public async Task<bool> StopAsync(TimeSpan? timeout = null, CancellationToken ct = default)
    {
        await Do("stop");
        Pid = null;
        return true;
    }

    public async Task KillAsync()
    {
        await Do("kill");
        if (KillWorks) Pid = null;
    }

    public Task PowerButtonAsync(CancellationToken ct = default) => Do("power-button");
    public Task PauseAsync(CancellationToken ct = default) => Do("pause");
    public Task ResumeAsync(CancellationToken ct = default) => Do("resume");
    public Task<VmConsole> OpenConsoleAsync(CancellationToken ct = default) =>
        throw new VmException("the fake VM has no console");
    public Task ResizeDiskAsync(string node, long newSizeBytes, CancellationToken ct = default) => Do("resize");

    public async Task SnapshotAsync(string tag, SnapshotKind kind, CancellationToken ct = default)
    {
        await Do("snapshot");
        Snapshots.Add(new VmSnapshot(tag, kind, 0, DateTimeOffset.UtcNow));
    }

    public async Task<IReadOnlyList<VmSnapshot>> ListSnapshotsAsync(CancellationToken ct = default)
    {
        await Do("list-snapshots");
        return Snapshots;
    }

    public Task RestoreSnapshotAsync(string tag, CancellationToken ct = default) => Do("restore");
    public Task DeleteSnapshotAsync(string tag, CancellationToken ct = default) => Do("delete-snapshot");

    public async Task DeleteAsync(bool removeDir = true)
    {
        await Do("delete");
        if (removeDir) Directory.Delete(StateDir, recursive: true);
    }

    public Task StartIncomingAsync(string incoming, bool blockMigration, CancellationToken ct = default) =>
        Do("start-incoming");
    public Task FinishIncomingAsync(CancellationToken ct = default) => Do("finish-incoming");
    public Task<VmMigrationStats> SendMigrationAsync(string uri, bool blockMigration,
        long? bandwidthBytesPerSecond = null, Func<string>? targetSaid = null, CancellationToken ct = default) =>
        throw new VmException("the fake VM does not migrate");

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
