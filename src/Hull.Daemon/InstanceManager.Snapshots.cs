using Hull.Api;
using Hull.Instances;

namespace Hull.Daemon;

/// <summary>Snapshots: create, restore, delete (the row is marked pending around each engine call).</summary>
public sealed partial class InstanceManager
{
    public List<Snapshot> Snapshots(string name)
    {
        Get(name);
        return _store.ListSnapshots(name);
    }

    public async Task<Snapshot> CreateSnapshotAsync(string name, string snap, CancellationToken ct)
    {
        ValidateName(snap, "snapshot");
        using var held = await LockAsync(name, ct);
        var r = Get(name);
        var s = new Snapshot { Instance = name, Name = snap, CreatedAt = DateTimeOffset.UtcNow, Config = r.Config,
            Devices = r.Devices, Profiles = r.Profiles };
        if (!_store.InsertSnapshot(s, PendingOp.Create))
            throw new InstanceException($"snapshot '{snap}' of '{name}' already exists: choose another name or " +
                "delete it first", 409);
        try
        {
            await Driver(r.Type).CreateSnapshotAsync(Spec(r), snap, ct);
        }
        catch
        {
            try { await Driver(r.Type).DeleteSnapshotAsync(Spec(r), snap, CancellationToken.None); } catch { }
            _store.DeleteSnapshot(name, snap);
            throw;
        }
        _store.SetSnapshotPending(name, snap, null);
        _events.Lifecycle("instance-snapshot-created", name);
        return s;
    }

    Snapshot GetSnapshot(string name, string snap) =>
        _store.ListSnapshots(name).FirstOrDefault(s => s.Name == snap)
        ?? throw new InstanceException($"snapshot '{snap}' of '{name}' not found: 'hull snapshot list {name}' shows " +
            "them", 404);

    public void PrecheckRestore(string name, string snap)
    {
        var r = Get(name);
        GetSnapshot(name, snap);
        if (r.State != InstanceState.Stopped)
            throw new InstanceException($"instance '{name}' is {r.State.ToWire().ToLowerInvariant()}: stop it before " +
                "restoring a snapshot", 409);
    }

    public async Task RestoreSnapshotAsync(string name, string snap, CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        PrecheckRestore(name, snap);
        var r = Get(name);
        var s = GetSnapshot(name, snap);
        r.Pending = PendingOp.Restore;
        _store.UpdateInstance(r);
        try { await Driver(r.Type).RestoreSnapshotAsync(Spec(r), snap, ct); }
        catch
        {
            r.State = InstanceState.Error; r.Pending = null;
            r.StatusMessage = $"restoring snapshot {snap} failed part way: restore it again";
            _store.UpdateInstance(r);
            throw;
        }
        r.Config = s.Config; r.Devices = s.Devices; r.Profiles =
            s.Profiles.Where(p => _store.GetProfile(p) is not null).ToList();
        r.Pending = null; r.StatusMessage = null;
        if (r.State == InstanceState.Error) r.State = InstanceState.Stopped;
        _store.UpdateInstance(r);
        _events.Lifecycle("instance-snapshot-restored", name);
    }

    public async Task DeleteSnapshotAsync(string name, string snap, CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        var r = Get(name);
        GetSnapshot(name, snap);
        _store.SetSnapshotPending(name, snap, PendingOp.Delete);
        await Driver(r.Type).DeleteSnapshotAsync(Spec(r), snap, ct);
        _store.DeleteSnapshot(name, snap);
        _events.Lifecycle("instance-snapshot-deleted", name);
    }
}
