using System.Collections.Concurrent;
using Hull.Api;
using Hull.Instances;

namespace Hull.Daemon;

/// <summary>
/// Owns the instance records and their state machine. Every engine call is bracketed by store writes: the row says
/// what was about to happen (state Starting/Stopping, pending create/delete/restore) before the call and what happened
/// after it, so <see cref="RecoverAsync"/> can finish or undo whatever a kill -9 interrupted.
/// </summary>
public sealed partial class InstanceManager
{
    readonly Store _store;
    readonly Lock _idmapLock = new();
    readonly ImageStore _images;
    readonly EventHub _events;
    readonly string _instancesDir;
    readonly IReadOnlyDictionary<string, IInstanceDriver> _drivers;
    readonly ConcurrentDictionary<string, SemaphoreSlim> _locks = new();
    readonly ConcurrentDictionary<string, CancellationTokenSource> _watchers = new();
    readonly CancellationToken _shutdown;

    public InstanceManager(string stateDir, Store store, ImageStore images, EventHub events, IEnumerable<IInstanceDriver> drivers, CancellationToken shutdown)
    {
        _store = store; _images = images; _events = events; _shutdown = shutdown;
        _instancesDir = Path.Combine(stateDir, "instances");
        Directory.CreateDirectory(_instancesDir);
        _drivers = drivers.ToDictionary(d => d.Type);
    }

    public IReadOnlyCollection<string> Types => _drivers.Keys.ToList();

    IInstanceDriver Driver(string type) => _drivers.TryGetValue(type, out var d) ? d
        : throw new InstanceException($"this hulld has no {type} engine: {(type == InstanceTypes.Vm ? "the VM engine is not built in" : "the container engine is not built in")}; available types: {(_drivers.Count == 0 ? "none" : string.Join(", ", _drivers.Keys))}", 501);

    string Dir(string name) => Path.Combine(_instancesDir, name);

    async Task<IDisposable> LockAsync(string name, CancellationToken ct)
    {
        var sem = _locks.GetOrAdd(name, _ => new SemaphoreSlim(1, 1));
        await sem.WaitAsync(ct);
        return new Releaser(sem);
    }

    sealed class Releaser(SemaphoreSlim s) : IDisposable { public void Dispose() => s.Release(); }

    public static InstanceException NotFound(string name) =>
        new($"instance '{name}' not found: 'hull list' shows the instances", 404);

    InstanceRecord Get(string name) => _store.GetInstance(name) ?? throw NotFound(name);

    // ---- views ----

    Dictionary<string, ProfileRecord> ProfilesByName() => _store.ListProfiles().ToDictionary(p => p.Name);

    /// <param name="profiles">the profiles, when the caller expands many instances (read once, not per instance)</param>
    (Dictionary<string, string> Config, Dictionary<string, Dictionary<string, string>> Devices) Expand(InstanceRecord r, Dictionary<string, ProfileRecord>? profiles = null)
    {
        var layers = new List<(IReadOnlyDictionary<string, string>, IReadOnlyDictionary<string, Dictionary<string, string>>)>();
        profiles ??= ProfilesByName();
        foreach (var p in r.Profiles)
            if (profiles.TryGetValue(p, out var pr)) layers.Add((pr.Config, pr.Devices));
        layers.Add((r.Config, r.Devices));
        return ConfigSchema.Expand(layers);
    }

    public Instance ToApi(InstanceRecord r, Dictionary<string, ProfileRecord>? profiles = null)
    {
        var (cfg, dev) = Expand(r, profiles);
        return new Instance
        {
            Name = r.Name, Type = r.Type, Image = r.Image, ImageFingerprint = r.ImageFingerprint, State = r.State, Config = r.Config, Devices = r.Devices, Profiles = r.Profiles,
            CreatedAt = r.Created, LastUsedAt = r.LastUsed, ExpandedConfig = cfg, ExpandedDevices = dev,
            Pid = r.State is InstanceStates.Running or InstanceStates.Frozen ? r.Pid : null, LastExitCode = r.LastExitCode, StatusMessage = r.StatusMessage,
        };
    }

    public List<Instance> List()
    {
        var profiles = ProfilesByName();
        return _store.ListInstances().Where(r => r.Pending != "create").Select(r => ToApi(r, profiles)).ToList();
    }

    public Instance GetApi(string name)
    {
        var r = Get(name);
        if (r.Pending == "create") throw NotFound(name);
        return ToApi(r);
    }

    public List<InstanceRecord> Records() => _store.ListInstances();

    InstanceSpec Spec(InstanceRecord r, InstanceSpec? copyOf = null)
    {
        var (cfg, dev) = Expand(r);
        var image = _store.ListImages().FirstOrDefault(i => i.Fingerprint == r.ImageFingerprint);
        var imageRef = image is not null ? _images.RefFor(image)
            : new ImageRef { Fingerprint = r.ImageFingerprint, Type = r.Type, File = "" };
        return new InstanceSpec
        {
            Name = r.Name, Type = r.Type, Dir = Dir(r.Name), Image = imageRef, Limits = ConfigSchema.ParseLimits(cfg),
            Environment = ConfigSchema.ParseEnvironment(cfg), Config = cfg, Devices = DeviceFactory.CreateAll(dev, validate: false), CopyOf = copyOf,
        };
    }

    void ValidateProfiles(IEnumerable<string> profiles)
    {
        var known = _store.ListProfiles().Select(p => p.Name).ToHashSet();
        foreach (var p in profiles)
            if (!known.Contains(p))
                throw new InstanceException($"profile '{p}' not found: 'hull profile list' shows the profiles ({string.Join(", ", known.Order())})", 404);
        var dup = profiles.GroupBy(p => p).FirstOrDefault(g => g.Count() > 1);
        if (dup is not null) throw new InstanceException($"profile '{dup.Key}' is listed twice: list each profile once");
    }

    /// <summary>Checks config, devices and profiles as they would be after a change (own keys and the expanded whole).</summary>
    void ValidateRecord(InstanceRecord r)
    {
        ValidateProfiles(r.Profiles);
        ConfigSchema.Validate(r.Config);
        var (cfg, dev) = Expand(r);
        ConfigSchema.Validate(cfg);
        DeviceFactory.CreateAll(dev);
    }

    public static void ValidateName(string name, string what = "instance")
    {
        if (!ConfigSchema.IsValidName(name))
            throw new InstanceException($"{what} name '{name}' is invalid: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit");
    }

    // ---- create / delete ----

    /// <summary>Checks a create request fully before any work starts (so a bad request fails synchronously).</summary>
    public void PrecheckCreate(InstanceCreateRequest req)
    {
        ValidateName(req.Name);
        if (req.CopyFrom is null)
        {
            if (!InstanceTypes.IsValid(req.Type)) throw new InstanceException($"instance type '{req.Type}' is invalid: use container or vm");
            if (string.IsNullOrEmpty(req.Image)) throw new InstanceException("no image given: name an image (e.g. busybox) or an instance to copy");
        }
        Driver(req.CopyFrom is null ? req.Type : Get(req.CopyFrom).Type);
        if (_store.GetInstance(req.Name) is not null)
            throw new InstanceException($"instance '{req.Name}' already exists: choose another name or delete it first", 409);
        var r = new InstanceRecord { Name = req.Name, Type = req.Type, Config = req.Config, Devices = req.Devices, Profiles = req.Profiles ?? ["default"] };
        if (req.CopyFrom is null && _images.Find(req.Image, req.Type) is null && !_images.Builtins.Contains((req.Image, req.Type))
            && !Hull.Registry.ImageReference.LooksLikeReference(req.Image)) // a registry reference is pulled by the create operation
            _images.ResolveAsync(req.Image, req.Type, null, CancellationToken.None).GetAwaiter().GetResult(); // throws the right not-found error
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
        var r = new InstanceRecord
        {
            Name = req.Name, Type = type, Image = source?.Image ?? req.Image, ImageFingerprint = image?.Fingerprint ?? source!.ImageFingerprint,
            Config = source is null ? req.Config : new Dictionary<string, string>(source.Config.Concat(req.Config).GroupBy(k => k.Key).Select(g => g.Last())),
            Devices = source is null ? req.Devices : new Dictionary<string, Dictionary<string, string>>(source.Devices.Concat(req.Devices).GroupBy(k => k.Key).Select(g => g.Last())),
            Profiles = req.Profiles ?? source?.Profiles ?? ["default"],
            State = InstanceStates.Stopped, Created = DateTimeOffset.UtcNow, Pending = "create",
        };
        ValidateRecord(r);
        using (await LockAsync(r.Name, ct))
        {
            if (!_store.InsertInstance(r))
                throw new InstanceException($"instance '{r.Name}' already exists: choose another name or delete it first", 409);
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
                ?? throw new InstanceException($"no free range of {size} host ids is left for isolated container '{r.Name}' in root's range (uids {IdMaps.Uids}): delete an isolated container, lower {IdMaps.SizeKey}, or give root a wider range in /etc/subuid and /etc/subgid", 507);
            r.Config[IdMaps.AllocatedKey] = next.ToString(System.Globalization.CultureInfo.InvariantCulture);
            _store.UpdateInstance(r);
        }

        static bool IsFree(long b, long size, List<IdMap> others)
        {
            var uids = IdMaps.Uids;
            return b >= uids.Start + IdMaps.DefaultSize && b + size <= uids.End && !others.Any(o => o.UidBase < b + size && b < o.UidBase + o.Size);
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
        if (!force && r.State is InstanceStates.Running or InstanceStates.Frozen or InstanceStates.Starting or InstanceStates.Stopping)
            throw new InstanceException($"instance '{name}' is {r.State.ToLowerInvariant()}: stop it first or delete with --force", 409);
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
            if (r.State is not InstanceStates.Stopped)
            {
                op?.Progress("stopping");
                await StopLockedAsync(r, driver, spec, force: true, TimeSpan.Zero, ct);
            }
            r.Pending = "delete";
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
        Files.RemoveTree(spec.Dir);
        _store.DeleteInstance(r.Name);
    }

    // ---- state ----

    public void PrecheckState(string name, string action)
    {
        var r = Get(name);
        if (r.Pending is not null && r.Pending != "restore")
            throw new InstanceException($"instance '{name}' is busy ({r.Pending}): wait for the running operation to end", 409);
        switch (action)
        {
            case "start":
                if (r.State is InstanceStates.Running or InstanceStates.Starting)
                    throw new InstanceException($"instance '{name}' is already running", 409);
                if (r.State is InstanceStates.Frozen) throw new InstanceException($"instance '{name}' is paused: resume it instead", 409);
                break;
            case "stop":
                if (r.State is InstanceStates.Stopped) throw new InstanceException($"instance '{name}' is already stopped", 409);
                break;
            case "restart":
                if (r.State is not (InstanceStates.Running or InstanceStates.Frozen))
                    throw new InstanceException($"instance '{name}' is {r.State.ToLowerInvariant()}, not running: start it instead", 409);
                break;
            case "pause" or "freeze":
                if (r.State is InstanceStates.Frozen) throw new InstanceException($"instance '{name}' is already paused", 409);
                if (r.State is not InstanceStates.Running) throw new InstanceException($"instance '{name}' is {r.State.ToLowerInvariant()}, not running: only a running instance can be paused", 409);
                break;
            case "resume" or "unfreeze":
                if (r.State is not InstanceStates.Frozen) throw new InstanceException($"instance '{name}' is {r.State.ToLowerInvariant()}, not paused: only a paused instance can be resumed", 409);
                break;
            default:
                throw new InstanceException($"state action '{action}' is unknown: use start, stop, restart, pause or resume");
        }
    }

    public async Task StartAsync(string name, OperationContext? op, CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        PrecheckState(name, "start");
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
        r.State = InstanceStates.Starting; r.Pending = "start"; r.StatusMessage = null;
        _store.UpdateInstance(r);
        var started = new List<IDevice>();
        try
        {
            var runs = new List<DeviceRunConfig>();
            foreach (var d in spec.Devices) { runs.Add(d.Start(spec.Dir)); started.Add(d); }
            await driver.StartAsync(spec, runs, ct);
            var st = await driver.GetStateAsync(spec, CancellationToken.None);
            r.State = InstanceStates.Running; r.Pid = st.Pid; r.Pending = null; r.LastUsed = DateTimeOffset.UtcNow;
            _store.UpdateInstance(r);
        }
        catch (Exception e)
        {
            foreach (var d in started) TryDo(() => d.Stop(spec.Dir), r.Name);
            try
            {
                await driver.StopAsync(spec, force: true, TimeSpan.Zero, CancellationToken.None);
                r.State = InstanceStates.Stopped; r.StatusMessage = $"the last start failed: {ApiErrors.Describe(e).Message}";
            }
            catch (Exception e2)
            {
                r.State = InstanceStates.Error; r.StatusMessage = $"start failed ({ApiErrors.Describe(e).Message}) and cleanup failed ({e2.Message}): stop with --force or delete it";
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
        PrecheckState(name, "stop");
        var r = Get(name);
        await StopLockedAsync(r, Driver(r.Type), Spec(r), force, timeout, ct);
    }

    async Task StopLockedAsync(InstanceRecord r, IInstanceDriver driver, InstanceSpec spec, bool force, TimeSpan timeout, CancellationToken ct)
    {
        StopWatcher(r.Name);
        r.State = InstanceStates.Stopping; r.Pending = "stop";
        _store.UpdateInstance(r);
        int? code;
        try { code = await driver.StopAsync(spec, force, timeout, ct); }
        catch (Exception e)
        {
            var st = await SafeStateAsync(driver, spec);
            r.State = st?.State ?? InstanceStates.Error; r.Pending = null;
            r.StatusMessage = $"stop failed: {ApiErrors.Describe(e).Message}";
            _store.UpdateInstance(r);
            if (r.State is InstanceStates.Running or InstanceStates.Frozen) Watch(r.Name, driver, spec);
            throw;
        }
        foreach (var d in spec.Devices) TryDo(() => d.Stop(spec.Dir), r.Name);
        r.State = InstanceStates.Stopped; r.Pending = null; r.Pid = null; r.LastExitCode = code;
        r.StatusMessage = code is null ? UnknownExitCode : null;
        _store.UpdateInstance(r);
        _events.Lifecycle("instance-stopped", r.Name);
    }

    public async Task RestartAsync(string name, bool force, TimeSpan timeout, OperationContext? op, CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        PrecheckState(name, "restart");
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
        PrecheckState(name, "pause");
        var r = Get(name);
        await Driver(r.Type).PauseAsync(Spec(r), ct);
        r.State = InstanceStates.Frozen;
        _store.UpdateInstance(r);
        _events.Lifecycle("instance-paused", name);
    }

    public async Task ResumeAsync(string name, CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        PrecheckState(name, "resume");
        var r = Get(name);
        await Driver(r.Type).ResumeAsync(Spec(r), ct);
        r.State = InstanceStates.Running;
        _store.UpdateInstance(r);
        _events.Lifecycle("instance-resumed", name);
    }

    static async Task<DriverState?> SafeStateAsync(IInstanceDriver driver, InstanceSpec spec)
    {
        try { return await driver.GetStateAsync(spec, CancellationToken.None); } catch { return null; }
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
        if (r is null || r.State is not (InstanceStates.Running or InstanceStates.Frozen)) return;
        var spec = Spec(r);
        foreach (var d in spec.Devices) TryDo(() => d.Stop(spec.Dir), name);
        r.State = InstanceStates.Stopped; r.Pid = null; r.LastExitCode = code;
        r.StatusMessage = code is null ? UnknownExitCode : null;
        // An engine that knows the instance died badly (a VM's guest panicked) says why: the instance shows Error.
        if (_drivers.TryGetValue(r.Type, out var drv) && await SafeStateAsync(drv, spec) is { State: InstanceStates.Error } ds)
        {
            r.State = InstanceStates.Error; r.StatusMessage = ds.Message;
        }
        _store.UpdateInstance(r);
        _events.Lifecycle("instance-exited", name);
    }

    // ---- recovery ----

    /// <summary>After a (re)start of hulld: finishes or undoes interrupted work and finds running instances again.</summary>
    public async Task RecoverAsync(CancellationToken ct)
    {
        using var essential = _store.Essential();
        SweepBackupStaging();
        foreach (var (inst, snap, pending) in _store.PendingSnapshots())
        {
            var r = _store.GetInstance(inst);
            if (r is null || !_drivers.TryGetValue(r.Type, out var d)) { _store.DeleteSnapshot(inst, snap); continue; }
            try { await d.DeleteSnapshotAsync(Spec(r), snap, ct); } catch (Exception e) { _events.Log("warning", $"recovering snapshot {inst}/{snap}: {e.Message}", inst); }
            _store.DeleteSnapshot(inst, snap);
        }
        foreach (var r in _store.ListInstances())
        {
            if (!_drivers.TryGetValue(r.Type, out var driver))
            {
                if (r.Pending is "create" or MigrateIn) { Files.RemoveTree(Dir(r.Name)); _store.DeleteInstance(r.Name); }
                continue;
            }
            try { await RecoverOneAsync(r, driver, ct); }
            catch (Exception e)
            {
                r.State = InstanceStates.Error; r.Pending = null; r.StatusMessage = $"recovery after a hulld restart failed: {e.Message}";
                _store.UpdateInstance(r);
            }
        }
        foreach (var r in _store.ListInstances())
        {
            if (r.State != InstanceStates.Stopped || r.Pending is not null) continue;
            try { if (ConfigSchema.Autostart(Expand(r).Config) && _drivers.ContainsKey(r.Type)) await StartAsync(r.Name, null, ct); }
            catch (Exception e) { _events.Log("error", $"autostart of {r.Name} failed: {e.Message}", r.Name); }
        }
    }

    async Task RecoverOneAsync(InstanceRecord r, IInstanceDriver driver, CancellationToken ct)
    {
        switch (r.Pending)
        {
            case "create":
            case MigrateIn:
                await RollbackCreateAsync(r, driver);
                return;
            case "delete":
                await FinishDeleteAsync(r, driver, Spec(r));
                return;
        }
        var spec = Spec(r);
        var res = await driver.ReattachAsync(spec, ct);
        var was = r.State;
        if (r.Pending == "restore")
        {
            r.State = InstanceStates.Error;
            r.StatusMessage = "a snapshot restore was interrupted by a hulld crash: restore the snapshot again";
        }
        else if (res.State is InstanceStates.Running or InstanceStates.Frozen)
        {
            r.State = res.State; r.Pid = res.Pid;
        }
        else
        {
            r.State = InstanceStates.Stopped; r.Pid = null;
            if (was is InstanceStates.Running or InstanceStates.Frozen or InstanceStates.Stopping or InstanceStates.Starting)
            {
                r.LastExitCode = res.ExitCode;
                r.StatusMessage = res.ExitCode is null ? UnknownExitCode : null;
                // An engine that knows the instance died badly meanwhile (QEMU killed or crashed) says why: Error.
                if (await SafeStateAsync(driver, spec) is { State: InstanceStates.Error } ds)
                {
                    r.State = InstanceStates.Error; r.StatusMessage = ds.Message;
                }
                foreach (var d in spec.Devices) TryDo(() => d.Stop(spec.Dir), r.Name);
                _events.Lifecycle("instance-exited", r.Name);
            }
        }
        r.Pending = null;
        _store.UpdateInstance(r);
        if (r.State is InstanceStates.Running or InstanceStates.Frozen) Watch(r.Name, driver, spec);
    }

    // ---- config ----

    public async Task<Instance> UpdateAsync(string name, InstancePut put, CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        var r = Get(name);
        var next = new InstanceRecord
        {
            Name = r.Name, Type = r.Type, Image = r.Image, ImageFingerprint = r.ImageFingerprint, Config = put.Config ?? [],
            Devices = put.Devices ?? [], Profiles = put.Profiles ?? [], State = r.State, Created = r.Created, LastUsed = r.LastUsed,
            Pending = r.Pending, Pid = r.Pid, LastExitCode = r.LastExitCode, StatusMessage = r.StatusMessage,
        };
        ValidateRecord(next);
        var driver = Driver(r.Type);
        var spec = Spec(next);
        driver.Validate(spec);
        _store.UpdateInstance(next);
        if (next.State is InstanceStates.Running or InstanceStates.Frozen)
        {
            try
            {
                if (!await driver.ApplyLimitsAsync(spec, ct))
                    _events.Log("info", $"{name}: the new limits apply at the next start", name);
            }
            catch
            {
                _store.UpdateInstance(r);
                throw;
            }
        }
        _events.Lifecycle("instance-updated", name);
        return ToApi(next);
    }

    public async Task RenameAsync(string name, string newName, CancellationToken ct)
    {
        ValidateName(newName);
        using var held = await LockAsync(name, ct);
        var r = Get(name);
        if (r.State != InstanceStates.Stopped)
            throw new InstanceException($"instance '{name}' is {r.State.ToLowerInvariant()}: stop it before renaming", 409);
        if (_store.GetInstance(newName) is not null)
            throw new InstanceException($"instance '{newName}' already exists: choose another name", 409);
        if (Directory.Exists(Dir(newName))) Files.RemoveTree(Dir(newName));
        Directory.Move(Dir(name), Dir(newName));
        if (!_store.RenameInstance(name, newName))
        {
            Directory.Move(Dir(newName), Dir(name));
            throw new InstanceException($"instance '{newName}' already exists: choose another name", 409);
        }
        _events.Lifecycle("instance-renamed", newName);
    }

    // ---- exec, files, console, logs, stats ----

    public (IInstanceDriver Driver, InstanceSpec Spec) Running(string name)
    {
        var r = Get(name);
        if (r.State == InstanceStates.Frozen) throw new InstanceException($"instance '{name}' is paused: resume it first", 409);
        if (r.State != InstanceStates.Running) throw new InstanceException($"instance '{name}' is {r.State.ToLowerInvariant()}, not running: start it first", 409);
        r.LastUsed = DateTimeOffset.UtcNow;
        try { _store.UpdateInstance(r); }
        catch (InstanceException e) when (e.Status == 507) { } // last-used is a hint: exec works on a full disk
        return (Driver(r.Type), Spec(r));
    }

    public (IInstanceDriver Driver, InstanceSpec Spec) Any(string name)
    {
        var r = Get(name);
        if (r.Pending == "create") throw NotFound(name);
        return (Driver(r.Type), Spec(r));
    }

    public async Task<InstanceStateInfo> StateAsync(string name, CancellationToken ct)
    {
        var r = Get(name);
        var info = new InstanceStateInfo { State = r.State, Pid = r.Pid, LastExitCode = r.LastExitCode };
        if (r.State is InstanceStates.Running or InstanceStates.Frozen)
        {
            try { info.Stats = await Driver(r.Type).GetStatsAsync(Spec(r), ct); } catch (Exception e) { _events.Log("warning", $"stats of {name}: {e.Message}", name); }
        }
        if (_drivers.TryGetValue(r.Type, out var drv) && await SafeStateAsync(drv, Spec(r)) is { Details: { } details }) info.Details = new(details);
        return info;
    }

    public async Task<List<(string Name, InstanceStats Stats)>> AllStatsAsync(CancellationToken ct)
    {
        var list = new List<(string, InstanceStats)>();
        foreach (var r in _store.ListInstances())
        {
            if (r.State is not (InstanceStates.Running or InstanceStates.Frozen) || !_drivers.TryGetValue(r.Type, out var d)) continue;
            try { list.Add((r.Name, await d.GetStatsAsync(Spec(r), ct))); } catch (Exception) { }
        }
        return list;
    }

    // ---- snapshots ----

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
        var s = new Snapshot { Instance = name, Name = snap, CreatedAt = DateTimeOffset.UtcNow, Config = r.Config, Devices = r.Devices, Profiles = r.Profiles };
        if (!_store.InsertSnapshot(s, "create"))
            throw new InstanceException($"snapshot '{snap}' of '{name}' already exists: choose another name or delete it first", 409);
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
        ?? throw new InstanceException($"snapshot '{snap}' of '{name}' not found: 'hull snapshot list {name}' shows them", 404);

    public void PrecheckRestore(string name, string snap)
    {
        var r = Get(name);
        GetSnapshot(name, snap);
        if (r.State != InstanceStates.Stopped)
            throw new InstanceException($"instance '{name}' is {r.State.ToLowerInvariant()}: stop it before restoring a snapshot", 409);
    }

    public async Task RestoreSnapshotAsync(string name, string snap, CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        PrecheckRestore(name, snap);
        var r = Get(name);
        var s = GetSnapshot(name, snap);
        r.Pending = "restore";
        _store.UpdateInstance(r);
        try { await Driver(r.Type).RestoreSnapshotAsync(Spec(r), snap, ct); }
        catch
        {
            r.State = InstanceStates.Error; r.Pending = null;
            r.StatusMessage = $"restoring snapshot {snap} failed part way: restore it again";
            _store.UpdateInstance(r);
            throw;
        }
        r.Config = s.Config; r.Devices = s.Devices; r.Profiles = s.Profiles.Where(p => _store.GetProfile(p) is not null).ToList();
        r.Pending = null; r.StatusMessage = null;
        if (r.State == InstanceStates.Error) r.State = InstanceStates.Stopped;
        _store.UpdateInstance(r);
        _events.Lifecycle("instance-snapshot-restored", name);
    }

    public async Task DeleteSnapshotAsync(string name, string snap, CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        var r = Get(name);
        GetSnapshot(name, snap);
        _store.SetSnapshotPending(name, snap, "delete");
        await Driver(r.Type).DeleteSnapshotAsync(Spec(r), snap, ct);
        _store.DeleteSnapshot(name, snap);
        _events.Lifecycle("instance-snapshot-deleted", name);
    }

    // ---- profiles ----

    public Profile ProfileApi(ProfileRecord p) => new()
    {
        Name = p.Name, Description = p.Description, Config = p.Config, Devices = p.Devices,
        UsedBy = _store.ListInstances().Where(i => i.Profiles.Contains(p.Name)).Select(i => i.Name).ToList(),
    };

    public List<Profile> Profiles() => _store.ListProfiles().Select(ProfileApi).ToList();

    public Profile GetProfile(string name) =>
        ProfileApi(_store.GetProfile(name) ?? throw new InstanceException($"profile '{name}' not found: 'hull profile list' shows the profiles", 404));

    public Profile CreateProfile(ProfileCreateRequest req)
    {
        ValidateName(req.Name, "profile");
        ConfigSchema.Validate(req.Config);
        DeviceFactory.CreateAll(req.Devices);
        var p = new ProfileRecord { Name = req.Name, Description = req.Description, Config = req.Config, Devices = req.Devices };
        if (!_store.InsertProfile(p)) throw new InstanceException($"profile '{req.Name}' already exists: choose another name or edit it", 409);
        return ProfileApi(p);
    }

    public Profile UpdateProfile(string name, ProfilePut put)
    {
        var old = _store.GetProfile(name) ?? throw new InstanceException($"profile '{name}' not found: 'hull profile list' shows the profiles", 404);
        ConfigSchema.Validate(put.Config);
        DeviceFactory.CreateAll(put.Devices);
        var p = new ProfileRecord { Name = name, Description = put.Description, Config = put.Config, Devices = put.Devices };
        _store.UpdateProfile(p);
        try
        {
            // The merged result must stay valid for every instance using the profile.
            foreach (var i in _store.ListInstances().Where(i => i.Profiles.Contains(name)))
            {
                try { ValidateRecord(i); }
                catch (InstanceException e) { throw new InstanceException($"this change would make instance '{i.Name}' invalid: {e.Message}"); }
            }
        }
        catch { _store.UpdateProfile(old); throw; }
        return ProfileApi(p);
    }

    public void DeleteProfile(string name)
    {
        if (name == "default") throw new InstanceException("the default profile cannot be deleted: edit it instead", 409);
        var p = GetProfile(name);
        if (p.UsedBy.Count > 0)
            throw new InstanceException($"profile '{name}' is used by {string.Join(", ", p.UsedBy)}: remove it from them first ('hull profile assign')", 409);
        _store.DeleteProfile(name);
    }
}
