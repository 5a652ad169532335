using Hull.Api;
using Hull.Instances;

namespace Hull.Daemon.Tests.InProcess;

/// <summary>
/// An engine that runs nothing: it records the calls it gets and fails the ones a test names
/// (<see cref="Fail"/>), so <see cref="InstanceManager"/>'s transitions can be driven in process.
/// </summary>
public sealed class FakeDriver(string type = InstanceTypes.Vm) : IInstanceDriver
{
    public string Type => type;
    /// <summary>Calls in order: "create v1", "start v1"...</summary>
    public List<string> Calls { get; } = [];
    /// <summary>Call names ("create", "start", "stop", "delete", "snapshot"...) that throw.</summary>
    public HashSet<string> Fail { get; } = [];
    /// <summary>What the engine reports: by instance name, Running/Frozen/Stopped.</summary>
    public Dictionary<string, InstanceState> Live { get; } = [];
    /// <summary>The exit code <see cref="ReattachAsync"/> reports for an instance that ended meanwhile.</summary>
    public int? ExitCodeWhileAway { get; set; }

    Task Do(string call, InstanceSpec spec)
    {
        Calls.Add($"{call} {spec.Name}");
        if (Fail.Contains(call)) throw new InstanceException($"fake {call} of {spec.Name} failed", 500);
        return Task.CompletedTask;
    }

    InstanceState LiveState(InstanceSpec spec) => Live.GetValueOrDefault(spec.Name, InstanceState.Stopped);

    public void Validate(InstanceSpec spec) { }

    public async Task CreateAsync(InstanceSpec spec, CancellationToken ct)
    {
        // A half-made create: the driver wrote a file before it failed (the manager must not leave it).
        await File.WriteAllTextAsync(Path.Combine(spec.Dir, "rootfs.img"), "disk", ct);
        await Do("create", spec);
    }

    public async Task StartAsync(InstanceSpec spec, IReadOnlyList<DeviceRunConfig> devices, CancellationToken ct)
    {
        await Do("start", spec);
        Live[spec.Name] = InstanceState.Running;
    }

    public async Task<int?> StopAsync(InstanceSpec spec, bool force, TimeSpan timeout, CancellationToken ct)
    {
        await Do(force ? "stop --force" : "stop", spec);
        if (Fail.Contains("stop")) throw new InstanceException($"fake stop of {spec.Name} failed", 500);
        Live.Remove(spec.Name);
        return 0;
    }

    public Task KillAsync(InstanceSpec spec, int signal, CancellationToken ct) => Do("kill", spec);

    public async Task PauseAsync(InstanceSpec spec, CancellationToken ct)
    {
        await Do("pause", spec);
        Live[spec.Name] = InstanceState.Paused;
    }

    public async Task ResumeAsync(InstanceSpec spec, CancellationToken ct)
    {
        await Do("resume", spec);
        Live[spec.Name] = InstanceState.Running;
    }

    public Task DeleteAsync(InstanceSpec spec, CancellationToken ct) => Do("delete", spec);

    public Task<DriverState> GetStateAsync(InstanceSpec spec, CancellationToken ct) =>
        Task.FromResult(new DriverState
        {
            State = LiveState(spec), Pid = LiveState(spec) == InstanceState.Stopped ? null : 4242,
        });

    public Task CreateSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct) => Do("snapshot", spec);
    public Task RestoreSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct) => Do("restore", spec);
    public Task DeleteSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct) =>
        Do("delete-snapshot", spec);

    public Task<InstanceStats> GetStatsAsync(InstanceSpec spec, CancellationToken ct) =>
        Task.FromResult(new InstanceStats());

    public async Task<ReattachResult> ReattachAsync(InstanceSpec spec, CancellationToken ct)
    {
        await Do("reattach", spec);
        return new ReattachResult { State = LiveState(spec), Pid = 4242, ExitCode = ExitCodeWhileAway };
    }

    /// <summary>Never completes by itself: the tests end instances through the manager.</summary>
    public async Task<int?> WaitForExitAsync(InstanceSpec spec, CancellationToken ct)
    {
        await Task.Delay(Timeout.Infinite, ct);
        return null;
    }

    public Task<bool> ApplyLimitsAsync(InstanceSpec spec, CancellationToken ct) => Task.FromResult(true);

    public Task<IExecSession> ExecAsync(InstanceSpec spec, ExecSpec exec, CancellationToken ct) =>
        throw new NotSupportedException();
    public Task PushFileAsync(InstanceSpec spec, string path, Stream content, FileMeta meta, CancellationToken ct) =>
        throw new NotSupportedException();
    public Task<FileEntry?> StatFileAsync(InstanceSpec spec, string path, CancellationToken ct) =>
        throw new NotSupportedException();
    public Task<Stream> PullFileAsync(InstanceSpec spec, string path, CancellationToken ct) =>
        throw new NotSupportedException();
    public Task<IReadOnlyList<FileEntry>> ListFilesAsync(InstanceSpec spec, string path, CancellationToken ct) =>
        throw new NotSupportedException();
    public Task DeleteFileAsync(InstanceSpec spec, string path, CancellationToken ct) =>
        throw new NotSupportedException();
    public Task<IConsoleSession> AttachConsoleAsync(InstanceSpec spec, CancellationToken ct) =>
        throw new NotSupportedException();
    public Task<Stream> OpenLogAsync(InstanceSpec spec, bool follow, CancellationToken ct) =>
        throw new NotSupportedException();
}
