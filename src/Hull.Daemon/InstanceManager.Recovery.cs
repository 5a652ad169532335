using Hull.Api;
using Hull.Instances;

namespace Hull.Daemon;

/// <summary>After a (re)start of hulld: finishing or undoing what a crash interrupted, finding running instances
/// again.</summary>
public sealed partial class InstanceManager
{
    /// <summary>After a (re)start of hulld: finishes or undoes interrupted work and finds running instances
    /// again.</summary>
    public async Task RecoverAsync(CancellationToken ct)
    {
        using var essential = _store.Essential();
        SweepBackupStaging();
        foreach (var (inst, snap, pending) in _store.PendingSnapshots())
        {
            var r = _store.GetInstance(inst);
            if (r is null || !_drivers.TryGetValue(r.Type, out var d)) { _store.DeleteSnapshot(inst, snap); continue; }
            try { await d.DeleteSnapshotAsync(Spec(r), snap, ct); } catch (
                Exception e) { _events.Log("warning", $"recovering snapshot {inst}/{snap}: {e.Message}", inst); }
            _store.DeleteSnapshot(inst, snap);
        }
        foreach (var r in _store.ListInstances())
        {
            if (!_drivers.TryGetValue(r.Type, out var driver))
            {
                if (r.Pending is PendingOp.Create or PendingOp.MigrateIn) { Files.RemoveTree(
                    Dir(r.Name)); _store.DeleteInstance(r.Name); }
                continue;
            }
            try { await RecoverOneAsync(r, driver, ct); }
            catch (Exception e)
            {
                r.State = InstanceState.Error; r.Pending = null; r.StatusMessage =
                    $"recovery after a hulld restart failed: {e.Message}";
                _store.UpdateInstance(r);
            }
        }
        SyncNics();
        foreach (var r in _store.ListInstances())
        {
            if (r.State != InstanceState.Stopped || r.Pending is not null) continue;
            try { if (ConfigSchema.Autostart(Expand(r).Config) && _drivers.ContainsKey(r.Type)) await StartAsync(r.Name,
                null, ct); }
            catch (Exception e) { _events.Log("error", $"autostart of {r.Name} failed: {e.Message}", r.Name); }
        }
    }

    async Task RecoverOneAsync(InstanceRecord r, IInstanceDriver driver, CancellationToken ct)
    {
        switch (r.Pending)
        {
            case PendingOp.Create:
            case PendingOp.MigrateIn:
                await RollbackCreateAsync(r, driver);
                return;
            case PendingOp.Delete:
                await FinishDeleteAsync(r, driver, Spec(r));
                return;
        }
        var spec = Spec(r);
        var res = await driver.ReattachAsync(spec, ct);
        var was = r.State;
        if (r.Pending == PendingOp.Restore)
        {
            r.State = InstanceState.Error;
            r.StatusMessage = "a snapshot restore was interrupted by a hulld crash: restore the snapshot again";
        }
        else if (res.State.IsLive())
        {
            r.State = res.State; r.Pid = res.Pid;
        }
        else
        {
            r.State = InstanceState.Stopped; r.Pid = null;
            if (was is InstanceState.Running or InstanceState.Paused or InstanceState.Stopping or
                InstanceState.Starting)
            {
                r.LastExitCode = res.ExitCode;
                r.StatusMessage = res.ExitCode is null ? UnknownExitCode : null;
                // An engine that knows the instance died badly meanwhile (QEMU killed or crashed) says why: Error.
                if (await SafeStateAsync(driver, spec) is { State: InstanceState.Error } ds)
                {
                    r.State = InstanceState.Error; r.StatusMessage = ds.Message;
                }
                StopDevices(r.Name, spec);
                _events.Lifecycle("instance-exited", r.Name);
            }
        }
        r.Pending = null;
        _store.UpdateInstance(r);
        if (r.State.IsLive()) Watch(r.Name, driver, spec);
    }
}
