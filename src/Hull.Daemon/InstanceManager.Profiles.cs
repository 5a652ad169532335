using Hull.Api;
using Hull.Instances;

namespace Hull.Daemon;

/// <summary>Profiles: the config and devices instances inherit.</summary>
public sealed partial class InstanceManager
{
    public Profile ProfileApi(ProfileRecord p) => new()
    {
        Name = p.Name, Description = p.Description, Config = p.Config, Devices = p.Devices,
        UsedBy = _store.ListInstances().Where(i => i.Profiles.Contains(p.Name)).Select(i => i.Name).ToList(),
    };

    public List<Profile> Profiles() => _store.ListProfiles().Select(ProfileApi).ToList();

    public Profile GetProfile(string name) =>
        ProfileApi(_store.GetProfile(name) ?? throw new InstanceException(
            $"profile '{name}' not found: 'hull profile list' shows the profiles", 404));

    public Profile CreateProfile(ProfileCreateRequest req)
    {
        ValidateName(req.Name, "profile");
        ConfigSchema.Validate(req.Config);
        DeviceFactory.CreateAll(req.Devices);
        var p = new ProfileRecord { Name = req.Name, Description = req.Description, Config = req.Config,
            Devices = req.Devices };
        if (!_store.InsertProfile(p)) throw new InstanceException(
            $"profile '{req.Name}' already exists: choose another name or edit it", 409);
        return ProfileApi(p);
    }

    public Profile UpdateProfile(string name, ProfilePut put)
    {
        var old = _store.GetProfile(name) ?? throw new InstanceException(
            $"profile '{name}' not found: 'hull profile list' shows the profiles", 404);
        ConfigSchema.Validate(put.Config);
        DeviceFactory.CreateAll(put.Devices);
        var p = new ProfileRecord { Name = name, Description = put.Description, Config = put.Config,
            Devices = put.Devices };
        _store.UpdateProfile(p);
        try
        {
            // The merged result must stay valid for every instance using the profile.
            foreach (var i in _store.ListInstances().Where(i => i.Profiles.Contains(name)))
            {
                try { ValidateRecord(i); }
                catch (InstanceException e) { throw new InstanceException(
                    $"this change would make instance '{i.Name}' invalid: {e.Message}"); }
            }
        }
        catch { _store.UpdateProfile(old); throw; }
        return ProfileApi(p);
    }

    public void DeleteProfile(string name)
    {
        if (name == "default") throw new InstanceException("the default profile cannot be deleted: edit it instead",
            409);
        var p = GetProfile(name);
        if (p.UsedBy.Count > 0)
            throw new InstanceException($"profile '{name}' is used by {string.Join(", ", p.UsedBy)}: remove it from " +
                "them first ('hull profile assign')", 409);
        _store.DeleteProfile(name);
    }
}
