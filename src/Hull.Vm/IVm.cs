namespace Hull.Vm;

/// <summary>
/// One VM as a user of the engine drives it (<see cref="Vm"/>, QEMU over QMP, is the real one). The VM driver holds
/// its VMs through this seam and makes them through <see cref="IVmEngine"/>, so its failure paths are tested with a
/// fake VM.
/// </summary>
public interface IVm : IAsyncDisposable
{
    VmConfig Config { get; }
    string StateDir { get; }
    Accel Accel { get; }
    string? AccelReason { get; }
    string AgentSocketPath { get; }
    string PidFilePath { get; }
    /// <summary>Why attaching could not connect QMP to a running QEMU (null when it did).</summary>
    string? AttachError { get; }
    /// <summary>QEMU's pid while it runs.</summary>
    int? Pid { get; }
    /// <summary>What was recorded when QEMU last ended (null if never).</summary>
    VmRecord? LastRecord { get; }

    Task StartAsync(bool paused = false, CancellationToken ct = default);
    Task<VmState> GetStateAsync(CancellationToken ct = default);
    /// <summary>ACPI power button, then forced after the timeout; true if the guest powered off by itself.</summary>
    Task<bool> StopAsync(TimeSpan? timeout = null, CancellationToken ct = default);
    /// <summary>Ends QEMU now.</summary>
    Task KillAsync();
    /// <summary>Presses the ACPI power button and returns.</summary>
    Task PowerButtonAsync(CancellationToken ct = default);
    Task PauseAsync(CancellationToken ct = default);
    Task ResumeAsync(CancellationToken ct = default);
    Task<VmConsole> OpenConsoleAsync(CancellationToken ct = default);
    Task ResizeDiskAsync(string node, long newSizeBytes, CancellationToken ct = default);
    Task SnapshotAsync(string tag, SnapshotKind kind, CancellationToken ct = default);
    Task<IReadOnlyList<VmSnapshot>> ListSnapshotsAsync(CancellationToken ct = default);
    Task RestoreSnapshotAsync(string tag, CancellationToken ct = default);
    Task DeleteSnapshotAsync(string tag, CancellationToken ct = default);
    /// <summary>Ends QEMU if it runs and removes the VM's files (with the state dir).</summary>
    Task DeleteAsync(bool removeDir = true);
    Task StartIncomingAsync(string incoming, bool blockMigration, CancellationToken ct = default);
    Task FinishIncomingAsync(CancellationToken ct = default);
    Task<VmMigrationStats> SendMigrationAsync(string uri, bool blockMigration, long? bandwidthBytesPerSecond = null,
        Func<string>? targetSaid = null, CancellationToken ct = default);
}

/// <summary>Defines VMs and attaches to them (<see cref="QemuVmEngine"/> is the real one).</summary>
public interface IVmEngine
{
    /// <summary>Defines a VM in a state dir that holds none (see <see cref="Vm.CreateAsync"/>).</summary>
    Task<IVm> CreateAsync(string stateDir, VmConfig config, CancellationToken ct);
    /// <summary>Reconnects to the VM in a state dir, running or not (see <see cref="Vm.AttachAsync"/>).</summary>
    Task<IVm> AttachAsync(string stateDir, CancellationToken ct);
}

/// <summary>The engine of QEMU VMs: <see cref="Vm"/>.</summary>
public sealed class QemuVmEngine(VmHostOptions host) : IVmEngine
{
    public async Task<IVm> CreateAsync(string stateDir, VmConfig config, CancellationToken ct) =>
        await Vm.CreateAsync(stateDir, config, host, ct).ConfigureAwait(false);

    public async Task<IVm> AttachAsync(string stateDir, CancellationToken ct) =>
        await Vm.AttachAsync(stateDir, host, ct).ConfigureAwait(false);
}
