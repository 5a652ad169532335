using Hull.Api;
using Hull.Instances;

namespace Hull.Daemon;

/// <summary>Changing an instance's config, devices and profiles; renaming it.</summary>
public sealed partial class InstanceManager
{
    public async Task<Instance> UpdateAsync(string name, InstancePut put, CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        var r = Get(name);
        var next = new InstanceRecord
        {
            Name = r.Name, Type = r.Type, Image = r.Image, ImageFingerprint = r.ImageFingerprint,
            Config = put.Config ?? [],
            Devices = put.Devices ?? [], Profiles = put.Profiles ?? [], State = r.State, Created = r.Created,
            LastUsed = r.LastUsed,
            Pending = r.Pending, Pid = r.Pid, LastExitCode = r.LastExitCode, StatusMessage = r.StatusMessage,
        };
        ValidateRecord(next);
        var driver = Driver(r.Type);
        var spec = Spec(next);
        driver.Validate(spec);
        _store.UpdateInstance(next);
        if (next.State.IsLive())
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
            // Published ports and NIC filters apply at once, as Incus applies a proxy device to a running instance.
            foreach (var net in NicNetworks(r).Union(NicNetworks(next))) RefreshDns(net);
        }
        _events.Lifecycle("instance-updated", name);
        return ToApi(next);
    }

    public async Task RenameAsync(string name, string newName, CancellationToken ct)
    {
        ValidateName(newName);
        using var held = await LockAsync(name, ct);
        var r = Get(name);
        if (r.State != InstanceState.Stopped)
            throw new InstanceException($"instance '{name}' is {r.State.ToWire().ToLowerInvariant()}: stop it before " +
                "renaming", 409);
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
}
