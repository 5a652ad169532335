using Hull.Api;
using Hull.Instances;

namespace Hull.Daemon;

/// <summary>A change of state asked for (PUT /1.0/instances/{name}/state).</summary>
public enum StateAction { Start, Stop, Restart, Pause, Resume }

public static class StateActions
{
    /// <summary>The action's word on the wire and in operation descriptions.</summary>
    public static string Word(this StateAction a) => a switch
    {
        StateAction.Start => "start",
        StateAction.Stop => "stop",
        StateAction.Restart => "restart",
        StateAction.Pause => "pause",
        _ => "resume",
    };

    /// <summary>An action word of the API ("freeze" and "unfreeze" are aliases of pause and resume); null if
    /// unknown.</summary>
    public static StateAction? Parse(string word) => word switch
    {
        "start" => StateAction.Start,
        "stop" => StateAction.Stop,
        "restart" => StateAction.Restart,
        "pause" or "freeze" => StateAction.Pause,
        "resume" or "unfreeze" => StateAction.Resume,
        _ => null,
    };
}

/// <summary>State changes (start, stop, restart, pause, resume) and watching a running instance for its exit.</summary>
public sealed partial class InstanceManager
{
    /// <summary>Checks a state change asked for by its API word before the operation starts; returns the
    /// action.</summary>
    public StateAction PrecheckState(string name, string action)
    {
        var r = CheckNotBusy(name);
        var a = StateActions.Parse(action)
            ?? throw new InstanceException($"state action '{action}' is unknown: use start, stop, restart, pause or " +
                "resume");
        PrecheckState(r, a);
        return a;
    }

    void PrecheckState(string name, StateAction action) => PrecheckState(CheckNotBusy(name), action);

    InstanceRecord CheckNotBusy(string name)
    {
        var r = Get(name);
        if (r.Pending is { } p && p != PendingOp.Restore)
            throw new InstanceException($"instance '{name}' is busy ({p.Word()}): wait for the running operation to " +
                "end", 409);
        return r;
    }

    static void PrecheckState(InstanceRecord r, StateAction action)
    {
        var name = r.Name;
        switch (action)
        {
            case StateAction.Start:
                if (r.State is InstanceState.Running or InstanceState.Starting)
                    throw new InstanceException($"instance '{name}' is already running", 409);
                if (r.State is InstanceState.Paused) throw new InstanceException(
                    $"instance '{name}' is paused: resume it instead", 409);
                break;
            case StateAction.Stop:
                if (r.State is InstanceState.Stopped) throw new InstanceException(
                    $"instance '{name}' is already stopped", 409);
                break;
            case StateAction.Restart:
                if (!r.State.IsLive())
                    throw new InstanceException($"instance '{name}' is {r.State.ToWire().ToLowerInvariant()}, not " +
                        "running: start it instead", 409);
                break;
            case StateAction.Pause:
                if (r.State is InstanceState.Paused) throw new InstanceException($"instance '{name}' is already paused",
                    409);
                if (r.State is not InstanceState.Running) throw new InstanceException(
                    $"instance '{name}' is {r.State.ToWire().ToLowerInvariant()}, not running: only a running " +
                    "instance can be paused", 409);
                break;
            case StateAction.Resume:
                if (r.State is not InstanceState.Paused) throw new InstanceException(
                    $"instance '{name}' is {r.State.ToWire().ToLowerInvariant()}, not paused: only a paused instance " +
                    "can be resumed", 409);
                break;
        }
    }

    public async Task StartAsync(string name, OperationContext? op, CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        PrecheckState(name, StateAction.Start);
        var r = Get(name);
        await StartLockedAsync(r, ct);
    }

    async Task StartLockedAsync(InstanceRecord r, CancellationToken ct)
    {
        var driver = Driver(r.Type);
        InstanceSpec spec;
        try
        {
            AssignIdmap(r);
            spec = Spec(r);
            ConfigSchema.Validate(spec.Config);
            driver.Validate(spec);
        }
        catch (Exception e)
        {
            r.StatusMessage = $"the last start failed: {ApiErrors.Describe(e).Message}";
            _store.UpdateInstance(r);
            throw;
        }
        r.State = InstanceState.Starting; r.Pending = PendingOp.Start; r.StatusMessage = null;
        _store.UpdateInstance(r);
        var started = new List<IDevice>();
        try
        {
            var runs = new List<DeviceRunConfig>();
            foreach (var d in spec.Devices) { runs.Add(d.Start(spec.Dir)); started.Add(d); }
            StartNics(r, spec, runs);
            await driver.StartAsync(spec, runs, ct);
            var st = await driver.GetStateAsync(spec, CancellationToken.None);
            r.State = InstanceState.Running; r.Pid = st.Pid; r.Pending = null; r.LastUsed = DateTimeOffset.UtcNow;
            _store.UpdateInstance(r);
        }
        catch (Exception e)
        {
            foreach (var d in started) TryDo(() => d.Stop(spec.Dir), r.Name);
            StopNics(r.Name, spec);
            try
            {
                await driver.StopAsync(spec, force: true, TimeSpan.Zero, CancellationToken.None);
                r.State = InstanceState.Stopped; r.StatusMessage =
                    $"the last start failed: {ApiErrors.Describe(e).Message}";
            }
            catch (Exception e2)
            {
                r.State = InstanceState.Error; r.StatusMessage =
                    $"start failed ({ApiErrors.Describe(e).Message}) and cleanup failed ({e2.Message}): stop with " +
                    "--force or delete it";
            }
            r.Pending = null; r.Pid = null;
            _store.UpdateInstance(r);
            throw;
        }
        _store.AddCounter("instances_started", 1);
        _events.Lifecycle("instance-started", r.Name);
        Watch(r.Name, driver, spec);
    }

    public async Task StopAsync(string name, bool force, TimeSpan timeout, OperationContext? op, CancellationToken ct)
    {
        using var essential = _store.Essential();
        using var held = await LockAsync(name, ct);
        PrecheckState(name, StateAction.Stop);
        var r = Get(name);
        await StopLockedAsync(r, Driver(r.Type), Spec(r), force, timeout, ct);
    }

    async Task StopLockedAsync(InstanceRecord r, IInstanceDriver driver, InstanceSpec spec, bool force,
        TimeSpan timeout, CancellationToken ct)
    {
        StopWatcher(r.Name);
        r.State = InstanceState.Stopping; r.Pending = PendingOp.Stop;
        _store.UpdateInstance(r);
        int? code;
        try { code = await driver.StopAsync(spec, force, timeout, ct); }
        catch (Exception e)
        {
            var st = await SafeStateAsync(driver, spec);
            r.State = st?.State ?? InstanceState.Error; r.Pending = null;
            r.StatusMessage = $"stop failed: {ApiErrors.Describe(e).Message}";
            _store.UpdateInstance(r);
            if (r.State.IsLive()) Watch(r.Name, driver, spec);
            throw;
        }
        StopDevices(r.Name, spec);
        r.State = InstanceState.Stopped; r.Pending = null; r.Pid = null; r.LastExitCode = code;
        r.StatusMessage = code is null ? UnknownExitCode : null;
        _store.UpdateInstance(r);
        _events.Lifecycle("instance-stopped", r.Name);
    }

    public async Task RestartAsync(string name, bool force, TimeSpan timeout, OperationContext? op,
        CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        PrecheckState(name, StateAction.Restart);
        var r = Get(name);
        op?.Progress("stopping");
        await StopLockedAsync(r, Driver(r.Type), Spec(r), force, timeout, ct);
        op?.Progress("starting");
        await StartLockedAsync(Get(name), ct);
        _events.Lifecycle("instance-restarted", name);
    }

    public async Task PauseAsync(string name, CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        PrecheckState(name, StateAction.Pause);
        var r = Get(name);
        await Driver(r.Type).PauseAsync(Spec(r), ct);
        r.State = InstanceState.Paused;
        _store.UpdateInstance(r);
        _events.Lifecycle("instance-paused", name);
    }

    public async Task ResumeAsync(string name, CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        PrecheckState(name, StateAction.Resume);
        var r = Get(name);
        await Driver(r.Type).ResumeAsync(Spec(r), ct);
        r.State = InstanceState.Running;
        _store.UpdateInstance(r);
        _events.Lifecycle("instance-resumed", name);
    }

    static async Task<DriverState?> SafeStateAsync(IInstanceDriver driver, InstanceSpec spec)
    {
        try { return await driver.GetStateAsync(spec, CancellationToken.None); } catch { return null; }
    }

    /// <summary>After an instance stopped: every device's <see cref="IDevice.Stop"/>, and its NICs go.</summary>
    void StopDevices(string name, InstanceSpec spec)
    {
        foreach (var d in spec.Devices) TryDo(() => d.Stop(spec.Dir), name);
        StopNics(name, spec);
    }

    void TryDo(Action a, string instance)
    {
        try { a(); } catch (Exception e) { _events.Log("warning", e.Message, instance); }
    }

    // ---- exit watching ----

    void Watch(string name, IInstanceDriver driver, InstanceSpec spec)
    {
        StopWatcher(name);
        var cts = CancellationTokenSource.CreateLinkedTokenSource(_shutdown);
        _watchers[name] = cts;
        _ = Task.Run(async () =>
        {
            int? code;
            try { code = await driver.WaitForExitAsync(spec, cts.Token); }
            catch (OperationCanceledException) { return; }
            catch (Exception e) { _events.Log("error", $"watching {name}: {e.Message}", name); return; }
            await OnExitedAsync(name, code, cts);
        });
    }

    void StopWatcher(string name)
    {
        if (_watchers.TryRemove(name, out var c)) { c.Cancel(); c.Dispose(); }
    }

    /// <summary>Why an instance that ended has no last exit code.</summary>
    public const string UnknownExitCode = "exit code unknown: the engine could not learn how the main process ended " +
        "(what records it, such as the container monitor, was gone)";

    async Task OnExitedAsync(string name, int? code, CancellationTokenSource watcher)
    {
        using var essential = _store.Essential();
        using var held = await LockAsync(name, CancellationToken.None);
        if (!_watchers.TryGetValue(name, out var current) || current != watcher) return; // a stop or restart took over
        _watchers.TryRemove(name, out _);
        var r = _store.GetInstance(name);
        if (r is null || !r.State.IsLive()) return;
        var spec = Spec(r);
        StopDevices(name, spec);
        r.State = InstanceState.Stopped; r.Pid = null; r.LastExitCode = code;
        r.StatusMessage = code is null ? UnknownExitCode : null;
        // An engine that knows the instance died badly (a VM's guest panicked) says why: the instance shows Error.
        var ds = _drivers.TryGetValue(r.Type, out var drv) ? await SafeStateAsync(drv, spec) : null;
        if (ds is { State: InstanceState.Error }) { r.State = InstanceState.Error; r.StatusMessage = ds.Message; }
        _store.UpdateInstance(r);
        _events.Lifecycle("instance-exited", name);
        // A guest that rebooted itself (systemctl reboot in a system container) is started again, as Incus does.
        if (ds is { Rebooted: true })
        {
            try
            {
                await StartLockedAsync(r, CancellationToken.None);
                _events.Lifecycle("instance-restarted", name);
            }
            catch (Exception e) { _events.Log("error", $"starting {name} again after its reboot: {e.Message}", name); }
        }
    }
}
