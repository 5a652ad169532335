using System.Collections.Concurrent;
using Hull.Api;
using Hull.Instances;

namespace Hull.Daemon;

/// <summary>
/// Owns the instance records and their state machine. Every engine call is bracketed by store writes: the row says
/// what was about to happen (state Starting/Stopping, pending create/delete/restore) before the call and what happened
/// after it, so <see cref="RecoverAsync"/> can finish or undo whatever a kill -9 interrupted.
/// One job a file: here the records and their views; InstanceManager.Create (create, delete), .State (start, stop,
/// pause, resume, exit watching), .Recovery, .Config (update, rename), .Access (what exec, files and stats need),
/// .Snapshots, .Profiles, .Backup, .Migration.
/// </summary>
public sealed partial class InstanceManager
{
    readonly Store _store;
    readonly Lock _idmapLock = new();
    readonly ImageStore _images;
    readonly EventHub _events;
    readonly string _instancesDir;
    readonly string _stateDir;
    readonly IReadOnlyDictionary<string, IInstanceDriver> _drivers;
    readonly ConcurrentDictionary<string, SemaphoreSlim> _locks = new();
    readonly ConcurrentDictionary<string, CancellationTokenSource> _watchers = new();
    readonly CancellationToken _shutdown;
    readonly ExpandedInstances _expanded = new();

    public InstanceManager(string stateDir, Store store, ImageStore images, EventHub events,
        IEnumerable<IInstanceDriver> drivers, CancellationToken shutdown)
    {
        _store = store; _images = images; _events = events; _shutdown = shutdown;
        _stateDir = stateDir;
        _instancesDir = Path.Combine(stateDir, "instances");
        Directory.CreateDirectory(_instancesDir);
        _drivers = drivers.ToDictionary(d => d.Type);
        store.InstanceChanged += _expanded.MarkStale;
    }

    public IReadOnlyCollection<string> Types => _drivers.Keys.ToList();

    IInstanceDriver Driver(string type) => _drivers.TryGetValue(type, out var d) ? d
        : throw new InstanceException($"this hulld has no {type} engine: the " +
            (type == InstanceTypes.Vm ? "VM" : "container") + " engine is not built in; available types: " +
            (_drivers.Count == 0 ? "none" : string.Join(", ", _drivers.Keys)), 501);

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

    /// <param name="profiles">the profiles, when the caller expands many instances (read once, not per
    /// instance)</param>
    (Dictionary<string, string> Config, Dictionary<string, Dictionary<string, string>> Devices) Expand(InstanceRecord r,
        Dictionary<string, ProfileRecord>? profiles = null)
    {
        var layers = new List<(IReadOnlyDictionary<string, string>, IReadOnlyDictionary<string, Dictionary<string,
            string>>)>();
        profiles ??= ProfilesByName();
        foreach (var p in r.Profiles)
            if (profiles.TryGetValue(p, out var pr)) layers.Add((pr.Config, pr.Devices));
        layers.Add((r.Config, r.Devices));
        return ConfigSchema.Expand(layers);
    }

    /// <summary>Every instance with its expanded devices, from memory (see <see cref="ExpandedInstances"/>): for the
    /// code that reads them all on each start and stop. Read-only.</summary>
    List<ExpandedInstances.Entry> AllExpanded()
    {
        Dictionary<string, ProfileRecord>? profiles = null;
        return _expanded.All(_store.ListInstances, _store.GetInstance, r => Expand(r, profiles ??= ProfilesByName())
            .Devices);
    }

    public Instance ToApi(InstanceRecord r, Dictionary<string, ProfileRecord>? profiles = null)
    {
        var (cfg, dev) = Expand(r, profiles);
        return new Instance
        {
            Name = r.Name, Type = r.Type, Image = r.Image, ImageFingerprint = r.ImageFingerprint,
            State = r.State.ToWire(), Config = r.Config, Devices = r.Devices, Profiles = r.Profiles,
            CreatedAt = r.Created, LastUsedAt = r.LastUsed, ExpandedConfig = cfg, ExpandedDevices = dev,
            Pid = r.State.IsLive() ? r.Pid : null, LastExitCode = r.LastExitCode, StatusMessage = r.StatusMessage,
        };
    }

    public List<Instance> List()
    {
        var profiles = ProfilesByName();
        return _store.ListInstances().Where(r => r.Pending != PendingOp.Create).Select(r =>
            ToApi(r, profiles)).ToList();
    }

    public Instance GetApi(string name)
    {
        var r = Get(name);
        if (r.Pending == PendingOp.Create) throw NotFound(name);
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
            Environment = ConfigSchema.ParseEnvironment(cfg), Config = cfg,
            Devices = DeviceFactory.CreateAll(dev, validate: false), CopyOf = copyOf,
        };
    }

    void ValidateProfiles(IEnumerable<string> profiles)
    {
        var known = _store.ListProfiles().Select(p => p.Name).ToHashSet();
        foreach (var p in profiles)
            if (!known.Contains(p))
                throw new InstanceException($"profile '{p}' not found: 'hull profile list' shows the profiles " +
                    $"({string.Join(", ", known.Order())})", 404);
        var dup = profiles.GroupBy(p => p).FirstOrDefault(g => g.Count() > 1);
        if (dup is not null) throw new InstanceException(
            $"profile '{dup.Key}' is listed twice: list each profile once");
    }

    /// <summary>Checks config, devices and profiles as they would be after a change (own keys and the expanded
    /// whole).</summary>
    void ValidateRecord(InstanceRecord r)
    {
        ValidateProfiles(r.Profiles);
        ConfigSchema.Validate(r.Config);
        var (cfg, dev) = Expand(r);
        ConfigSchema.Validate(cfg);
        DeviceFactory.CreateAll(dev);
        CheckPublishedPorts(r, dev);
    }

    public static void ValidateName(string name, string what = "instance")
    {
        if (!ConfigSchema.IsValidName(name))
            throw new InstanceException($"{what} name '{name}' is invalid: use 1-63 letters, digits, '-', '_' or " +
                "'.', starting with a letter or digit");
    }
}
