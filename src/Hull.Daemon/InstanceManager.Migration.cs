using System.Globalization;
using Hull.Api;
using Hull.Instances;

namespace Hull.Daemon;

/// <summary>
/// Live migration between two hullds, driven by a client (the SDK's InstanceTransfer): (1) the target makes the
/// instance over the same image and starts it waiting for state (<see cref="PrepareIncomingAsync"/>, record pending
/// "migrate-in"); (2) the source sends (<see cref="SendAsync"/>) and, once the engine says completed, forgets the
/// instance; (3) the client tells the target how it ended (<see cref="FinishIncomingAsync"/>): it takes over, or
/// removes its copy. A failed send leaves the source running. A target whose hulld restarts while pending drops its
/// copy (crash recovery rolls a pending "migrate-in" back like a create).
/// </summary>
public sealed partial class InstanceManager
{
    public async Task<MigrationTarget> PrepareIncomingAsync(string name, MigrationIncomingRequest req,
        CancellationToken ct)
    {
        var b = req.Instance;
        if (b.Name.Length > 0 && b.Name != name) throw new InstanceException(
            $"the body names instance '{b.Name}' but the path '{name}': send the same name");
        ValidateName(name);
        var driver = Driver(b.Type);
        if (!driver.CanMigrateLive) throw new InstanceException(
            $"running {b.Type} instances cannot move live: stop it and move it, or use --stateless", 501);
        if (string.IsNullOrWhiteSpace(req.ListenAddress)) throw new InstanceException(
            "listen_address is empty: give an address of this host that the source can reach");
        var image = _store.ListImages().FirstOrDefault(i => i.Fingerprint == b.ImageFingerprint)
            ?? throw new InstanceException($"image {Short(b.ImageFingerprint)} is not on this host: copy the image " +
                "here first", 409);
        var r = RecordOf(b, name);
        r.Pending = PendingOp.MigrateIn;
        ValidateRecord(r);
        using (await LockAsync(name, ct))
        {
            if (!_store.InsertInstance(r))
                throw new InstanceException($"instance '{name}' already exists here: move it under another name or " +
                    "delete it first", 409);
            var spec = Spec(r);
            var started = new List<IDevice>();
            try
            {
                driver.Validate(spec);
                Files.RemoveTree(spec.Dir);
                Directory.CreateDirectory(spec.Dir);
                await driver.CreateAsync(spec, ct);
                foreach (var d in spec.Devices) d.Add(spec.Dir);
                var runs = new List<DeviceRunConfig>();
                foreach (var d in spec.Devices) { runs.Add(d.Start(spec.Dir)); started.Add(d); }
                // The guest's NICs come along (same MAC; its address where this host's network of that name has it
                // free): the target's QEMU must have the same devices as the source's.
                StartNics(r, spec, runs);
                var uri = await driver.PrepareIncomingAsync(spec, runs, req.ListenAddress, ct);
                r.State = InstanceState.Starting;
                _store.UpdateInstance(r);
                _events.Lifecycle("instance-migration-incoming", name);
                return new MigrationTarget { Uri = uri };
            }
            catch
            {
                foreach (var d in started) TryDo(() => d.Stop(spec.Dir), name);
                StopNics(name, spec);
                await RollbackCreateAsync(r, driver);
                throw;
            }
        }

        static string Short(string fp) => fp.Length > 12 ? fp[..12] : fp;
    }

    /// <summary>Sends the running instance to <paramref name="uri"/>; on success it is gone from this host.</summary>
    public async Task SendAsync(string name, string uri, OperationContext? op, CancellationToken ct)
    {
        using (await LockAsync(name, ct))
        {
            var r = Get(name);
            if (!r.State.IsLive())
                throw new InstanceException($"instance '{name}' is {r.State.ToWire().ToLowerInvariant()}: only a " +
                    "running instance moves live (a stopped one moves as a backup)", 409);
            var driver = Driver(r.Type);
            if (!driver.CanMigrateLive) throw new InstanceException(
                $"running {r.Type} instances cannot move live: stop it first, or use --stateless", 501);
            var spec = Spec(r);
            op?.Progress("sending memory, devices and disks");
            StopWatcher(name);
            MigrationStats stats;
            try { stats = await driver.MigrateOutAsync(spec, uri, ct); }
            catch
            {
                Watch(name, driver, spec);
                throw;
            }
            op?.Result("total_ms", ((long)stats.Total.TotalMilliseconds).ToString(CultureInfo.InvariantCulture));
            op?.Result("downtime_ms", ((long)stats.Downtime.TotalMilliseconds).ToString(CultureInfo.InvariantCulture));
            op?.Result("transferred_bytes", stats.TransferredBytes.ToString(CultureInfo.InvariantCulture));
            // The instance runs on the target now: forget it here.
            foreach (var d in spec.Devices) TryDo(() => d.Stop(spec.Dir), name);
            r.Pending = PendingOp.Delete;
            _store.UpdateInstance(r);
            await FinishDeleteAsync(r, driver, spec);
        }
        _locks.TryRemove(name, out _);
        _events.Lifecycle("instance-migrated", name);
    }

    /// <summary>Target side: the source's send ended (<paramref name="succeeded"/>); take over or drop the
    /// copy.</summary>
    public async Task<Instance?> FinishIncomingAsync(string name, bool succeeded, CancellationToken ct)
    {
        using (await LockAsync(name, ct))
        {
            var r = Get(name);
            if (r.Pending != PendingOp.MigrateIn) throw new InstanceException(
                $"instance '{name}' is not waiting for a migration", 409);
            var driver = Driver(r.Type);
            var spec = Spec(r);
            if (!succeeded)
            {
                foreach (var d in spec.Devices) TryDo(() => d.Stop(spec.Dir), name);
                StopNics(name, spec);
                await RollbackCreateAsync(r, driver);
                return null;
            }
            try { await driver.CompleteIncomingAsync(spec, ct); }
            catch (Exception e)
            {
                r.State = InstanceState.Error; r.Pending = null; r.StatusMessage =
                    $"the migrated instance did not come up here: {ApiErrors.Describe(e).Message}";
                _store.UpdateInstance(r);
                throw;
            }
            var st = await driver.GetStateAsync(spec, ct);
            r.State = InstanceState.Running; r.Pid = st.Pid; r.Pending = null; r.LastUsed = DateTimeOffset.UtcNow;
            _store.UpdateInstance(r);
            _events.Lifecycle("instance-started", name);
            Watch(name, driver, spec);
        }
        return GetApi(name);
    }
}
