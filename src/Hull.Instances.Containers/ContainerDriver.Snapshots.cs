using System.Globalization;
using System.Text.Json;
using Hull.Api;
using Hull.Containers;
using Hull.Linux;
using Hull.Oci;
using Microsoft.Win32.SafeHandles;
using static Hull.Linux.Files;

namespace Hull.Instances.Containers;

/// <summary>Snapshots: copies of the instance's own layer (the overlay's upper dir, or the whole copy).</summary>
public sealed partial class ContainerDriver
{
    // ---- snapshots: copies of the upper dir ----

    /// <summary>snapshots/NAME, relative to the instance dir (the name checked: one plain path component).</summary>
    static string SnapRel(InstanceSpec spec, string snap) => ConfigSchema.IsValidName(snap) ? "snapshots/" + snap
        : throw new InstanceException($"snapshot name '{snap}' of '{spec.Name}' is invalid: use 1-63 letters, " +
            "digits, '-', '_' or '.'");

    public async Task CreateSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct)
    {
        var rel = SnapRel(spec, snapshot);
        var layer = Layer(spec);
        OwnDir(spec, "snapshots");
        if (OwnDir(spec, rel) is not null) throw new InstanceException(
            $"snapshot '{snapshot}' of '{spec.Name}' exists already", 409);
        var dir = Directory.CreateDirectory(P(spec, rel)).FullName;
        try { await Run(ct, "cp", "-a", "--reflink=auto", layer, Path.Combine(dir, "upper")); }
        catch { RemoveTree(dir); throw; }
    }

    public async Task RestoreSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct)
    {
        var src = OwnDir(spec, SnapRel(spec, snapshot) + "/upper")
            ?? throw new InstanceException($"snapshot '{snapshot}' of '{spec.Name}' does not exist", 404);
        if (IsRunning(spec)) throw new InstanceException(
            $"instance '{spec.Name}' is running: stop it before restoring a snapshot", 409);
        UnmountRootfs(spec);
        var layer = Layer(spec);
        var next = layer + ".restore";
        RemoveTree(next);
        await Run(ct, "cp", "-a", "--reflink=auto", src, next);
        var old = layer + ".old";
        RemoveTree(old);
        Directory.Move(layer, old);
        Directory.Move(next, layer);
        RemoveTree(old);
        if (!IsCopy(spec))
        {
            RemoveTree(Work(spec));
            Directory.CreateDirectory(Work(spec));
        }
    }

    public Task DeleteSnapshotAsync(InstanceSpec spec, string snapshot, CancellationToken ct)
    {
        if (OwnDir(spec, SnapRel(spec, snapshot)) is { } dir) RemoveTree(dir);
        return Task.CompletedTask;
    }
}
