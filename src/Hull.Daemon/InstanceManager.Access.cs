using Hull.Api;
using Hull.Instances;

namespace Hull.Daemon;

/// <summary>What exec, files, console, logs and stats need: the engine and spec of a (running) instance; state and
/// stats.</summary>
public sealed partial class InstanceManager
{
    public (IInstanceDriver Driver, InstanceSpec Spec) Running(string name)
    {
        var r = Get(name);
        if (r.State == InstanceState.Paused) throw new InstanceException(
            $"instance '{name}' is paused: resume it first", 409);
        if (r.State != InstanceState.Running) throw new InstanceException(
            $"instance '{name}' is {r.State.ToWire().ToLowerInvariant()}, not running: start it first", 409);
        r.LastUsed = DateTimeOffset.UtcNow;
        try { _store.UpdateInstance(r); }
        catch (InstanceException e) when (e.Status == 507) { } // last-used is a hint: exec works on a full disk
        return (Driver(r.Type), Spec(r));
    }

    public (IInstanceDriver Driver, InstanceSpec Spec) Any(string name)
    {
        var r = Get(name);
        if (r.Pending == PendingOp.Create) throw NotFound(name);
        return (Driver(r.Type), Spec(r));
    }

    public async Task<InstanceStateInfo> StateAsync(string name, CancellationToken ct)
    {
        var r = Get(name);
        var info = new InstanceStateInfo { State = r.State.ToWire(), Pid = r.Pid, LastExitCode = r.LastExitCode };
        if (r.State.IsLive())
        {
            try { info.Stats = await Driver(r.Type).GetStatsAsync(Spec(r), ct); } catch (
                Exception e) { _events.Log("warning", $"stats of {name}: {e.Message}", name); }
            info.Addresses = NicAddresses(r);
        }
        if (_drivers.TryGetValue(r.Type, out var drv)
            && await SafeStateAsync(drv, Spec(r)) is { Details: { } details }) info.Details = new(details);
        return info;
    }

    public async Task<List<(string Name, InstanceStats Stats)>> AllStatsAsync(CancellationToken ct)
    {
        var list = new List<(string, InstanceStats)>();
        foreach (var r in _store.ListInstances())
        {
            if (!r.State.IsLive() || !_drivers.TryGetValue(r.Type, out var d)) continue;
            try { list.Add((r.Name, await d.GetStatsAsync(Spec(r), ct))); } catch (Exception) { }
        }
        return list;
    }
}
