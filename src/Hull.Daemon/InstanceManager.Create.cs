using Hull.Api;
using Hull.Instances;

namespace Hull.Daemon;

/// <summary>Creating an instance (from an image or a copy) and deleting one; the id range of an isolated
/// container.</summary>
public sealed partial class InstanceManager
{
    /// <summary>Checks a create request fully before any work starts (so a bad request fails synchronously).</summary>
    public void PrecheckCreate(InstanceCreateRequest req)
    {
        ValidateName(req.Name);
        if (req.CopyFrom is null)
        {
            if (!InstanceTypes.IsValid(req.Type)) throw new InstanceException(
                $"instance type '{req.Type}' is invalid: use container or vm");
            if (string.IsNullOrEmpty(req.Image)) throw new InstanceException(
                "no image given: name an image (e.g. busybox) or an instance to copy");
        }
        Driver(req.CopyFrom is null ? req.Type : Get(req.CopyFrom).Type);
        if (_store.GetInstance(req.Name) is not null)
            throw new InstanceException($"instance '{req.Name}' already exists: choose another name or delete it first",
                409);
        var r = new InstanceRecord { Name = req.Name, Type = req.Type, Config = req.Config, Devices = req.Devices,
            Profiles = req.Profiles ?? ["default"] };
        if (req.CopyFrom is null && _images.Find(req.Image, req.Type) is null
            && !_images.Builtins.Contains((req.Image, req.Type))
            // a registry reference is pulled by the create operation
            && !Hull.Registry.ImageReference.LooksLikeReference(req.Image))
            // throws the right not-found error
            _images.ResolveAsync(req.Image, req.Type, null, CancellationToken.None).GetAwaiter().GetResult();
        ValidateRecord(r);
    }

    public async Task<Instance> CreateAsync(InstanceCreateRequest req, OperationContext? op, CancellationToken ct)
    {
        PrecheckCreate(req);
        InstanceRecord? source = null;
        InstanceSpec? sourceSpec = null;
        if (req.CopyFrom is not null)
        {
            source = Get(req.CopyFrom);
            sourceSpec = Spec(source);
        }
        var type = source?.Type ?? req.Type;
        var driver = Driver(type);
        var image = source is null ? await _images.ResolveAsync(req.Image, type, op, ct) : null;
        var config = source is not null
            // A copy gets a MAC and an address of its own.
            ? new Dictionary<string, string>(WithoutNicVolatile(source.Config).Concat(req.Config).GroupBy(k => k.Key)
                .Select(g => g.Last()))
            // An OCI image runs as its author meant: its run settings become the instance's own keys (the request's
            // win).
            : image is not null && type == InstanceTypes.Container && _images.RunConfigOf(image) is { } run
                ? new Dictionary<string, string>(req.Config.Concat(AppConfig.FromImage(run, req.Config)))
                : req.Config;
        var r = new InstanceRecord
        {
            Name = req.Name, Type = type, Image = source?.Image ?? req.Image,
            ImageFingerprint = image?.Fingerprint ?? source!.ImageFingerprint,
            Config = config,
            Devices = source is null ? req.Devices : new Dictionary<string, Dictionary<string,
            string>>(source.Devices.Concat(req.Devices).GroupBy(k => k.Key).Select(g => g.Last())),
            Profiles = req.Profiles ?? source?.Profiles ?? ["default"],
            State = InstanceState.Stopped, Created = DateTimeOffset.UtcNow, Pending = PendingOp.Create,
        };
        ValidateRecord(r);
        using (await LockAsync(r.Name, ct))
        {
            if (!_store.InsertInstance(r))
                throw new InstanceException($"instance '{r.Name}' already exists: choose another name or delete it " +
                    "first", 409);
            InstanceSpec spec;
            try { AssignIdmap(r); spec = Spec(r, sourceSpec); }
            catch { await RollbackCreateAsync(r, null); throw; }
            try
            {
                driver.Validate(spec);
                Files.RemoveTree(spec.Dir);
                Directory.CreateDirectory(spec.Dir);
                op?.Progress(source is null ? "creating the root filesystem" : $"copying {source.Name}");
                await driver.CreateAsync(spec, ct);
                foreach (var d in spec.Devices) d.Add(spec.Dir);
                r.Pending = null;
                _store.UpdateInstance(r);
            }
            catch
            {
                await RollbackCreateAsync(r, driver);
                throw;
            }
        }
        _store.AddCounter("instances_created", 1);
        _events.Lifecycle("instance-created", r.Name);
        if (req.Start) await StartAsync(r.Name, op, ct);
        return GetApi(r.Name);
    }

    /// <summary>
    /// Gives a container with security.idmap.isolated=true a host id range of its own, unique among this hulld's
    /// instances, kept in its config as volatile.idmap.base (a range it has already, e.g. from a backup, is kept if it
    /// is free here); removes it from one that is no longer isolated. The range is freed with the instance record.
    /// </summary>
    void AssignIdmap(InstanceRecord r)
    {
        if (r.Type != InstanceTypes.Container) return;
        lock (_idmapLock)
        {
            var cfg = Expand(r).Config;
            var had = r.Config.TryGetValue(IdMaps.AllocatedKey, out var cur);
            if (!IdMaps.Isolated(cfg))
            {
                if (had && r.Config.Remove(IdMaps.AllocatedKey)) _store.UpdateInstance(r);
                return;
            }
            var size = IdMaps.Size(cfg);
            var profiles = ProfilesByName();
            var others = new List<IdMap>();
            foreach (var o in _store.ListInstances().Where(o => o.Name != r.Name && o.Type == InstanceTypes.Container))
            {
                try { if (IdMaps.For(Expand(o, profiles).Config) is { } m) others.Add(m); }
                catch (InstanceException) { } // an isolated one without a range yet: it gets one at its start
            }
            if (had && long.TryParse(cur, System.Globalization.CultureInfo.InvariantCulture, out var b)
                && IsFree(b, size, others)) return;
            var next = IdMaps.Allocate(size, others)
                ?? throw new InstanceException($"no free range of {size} host ids is left for isolated container " +
                    $"'{r.Name}' in root's range (uids {IdMaps.Uids}): delete an isolated container, lower " +
                    $"{IdMaps.SizeKey}, or give root a wider range in /etc/subuid and /etc/subgid", 507);
            r.Config[IdMaps.AllocatedKey] = next.ToString(System.Globalization.CultureInfo.InvariantCulture);
            _store.UpdateInstance(r);
        }

        static bool IsFree(long b, long size, List<IdMap> others)
        {
            var uids = IdMaps.Uids;
            return b >= uids.Start + IdMaps.DefaultSize && b + size <= uids.End
                && !others.Any(o => o.UidBase < b + size && b < o.UidBase + o.Size);
        }
    }

    async Task RollbackCreateAsync(InstanceRecord r, IInstanceDriver? driver)
    {
        using var essential = _store.Essential();
        try
        {
            if (driver is not null) await driver.DeleteAsync(Spec(r), CancellationToken.None);
        }
        catch (Exception e) { _events.Log("warning", $"rolling back the create of {r.Name}: {e.Message}", r.Name); }
        Files.RemoveTree(Dir(r.Name));
        _store.DeleteInstance(r.Name);
    }

    public void PrecheckDelete(string name, bool force)
    {
        var r = Get(name);
        if (!force && r.State is InstanceState.Running or InstanceState.Paused or InstanceState.Starting or
            InstanceState.Stopping)
            throw new InstanceException($"instance '{name}' is {r.State.ToWire().ToLowerInvariant()}: stop it first " +
                "or delete with --force", 409);
    }

    public async Task DeleteAsync(string name, bool force, OperationContext? op, CancellationToken ct)
    {
        using var essential = _store.Essential();
        using (await LockAsync(name, ct))
        {
            PrecheckDelete(name, force);
            var r = Get(name);
            var driver = Driver(r.Type);
            var spec = Spec(r);
            if (r.State is not InstanceState.Stopped)
            {
                op?.Progress("stopping");
                await StopLockedAsync(r, driver, spec, force: true, TimeSpan.Zero, ct);
            }
            r.Pending = PendingOp.Delete;
            _store.UpdateInstance(r);
            await FinishDeleteAsync(r, driver, spec);
        }
        _locks.TryRemove(name, out _);
        _events.Lifecycle("instance-deleted", name);
    }

    async Task FinishDeleteAsync(InstanceRecord r, IInstanceDriver driver, InstanceSpec spec)
    {
        StopWatcher(r.Name);
        await driver.DeleteAsync(spec, CancellationToken.None);
        foreach (var d in spec.Devices) d.Remove(spec.Dir);
        StopNics(r.Name, spec);
        Files.RemoveTree(spec.Dir);
        _store.DeleteInstance(r.Name);
    }
}
