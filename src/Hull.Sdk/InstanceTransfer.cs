using Hull.Api;

namespace Hull.Sdk;

/// <summary>
/// Copy and move of instances between two hullds (two hosts, or two state dirs on one host). The data flows through
/// the caller: the source's backup stream is piped into the target's import; the image the instance was made from is
/// copied first if the target lacks it. A failure leaves the source as it was (a running source that was stopped for
/// a stateless move is started again).
/// </summary>
public static class InstanceTransfer
{
    /// <summary>Copies the stopped instance <paramref name="name"/> of <paramref name="source"/> to
    /// <paramref name="target"/>
    /// as <paramref name="newName"/> (default: the same name).</summary>
    public static async Task<Instance> CopyAsync(HullClient source, string name, HullClient target,
        string? newName = null, bool start = false,
        IProgress<string>? progress = null, CancellationToken ct = default)
    {
        await RefuseSameDaemonAsync(source, target, ct);
        var inst = await source.GetInstanceAsync(name, ct);
        await EnsureImageAsync(source, target, inst, progress, ct);
        progress?.Report($"copying {name}");
        await using var backup = await source.ExportInstanceAsync(name, ct);
        return await target.ImportInstanceAsync(backup, newName, start, null, ct);
    }

    /// <summary>
    /// Moves <paramref name="name"/> to <paramref name="target"/>: copies it, then deletes it on the source. A running
    /// container is moved only with <paramref name="stateless"/> (stopped, moved, started again there: its processes
    /// restart); containers cannot be moved live. A running VM moves live (<see cref="MoveLiveAsync"/>) unless
    /// <paramref name="stateless"/>; <paramref name="listenAddress"/> is the target host's address as the source host
    /// reaches it (the engines' migration stream goes directly between the hosts).
    /// </summary>
    public static async Task<Instance> MoveAsync(HullClient source, string name, HullClient target,
        string? newName = null, bool stateless = false,
        string listenAddress = "127.0.0.1", IProgress<string>? progress = null, CancellationToken ct = default)
    {
        await RefuseSameDaemonAsync(source, target, ct);
        var inst = await source.GetInstanceAsync(name, ct);
        var running = inst.State is InstanceStates.Running or InstanceStates.Frozen;
        if (running && inst.Type == InstanceTypes.Vm && !stateless)
            return (await MoveLiveAsync(source, inst, target, newName, listenAddress, progress, ct)).Instance;
        if (running && !stateless)
            throw new HullException($"instance '{name}' is {inst.State.ToLowerInvariant()}: stop it first, or move " +
                "it with --stateless (stopped here, started there; its processes restart)", 409);
        if (running)
        {
            progress?.Report($"stopping {name}");
            await source.StopAsync(name, ct: ct);
        }
        Instance moved;
        try { moved = await CopyAsync(source, name, target, newName, start: running, progress, ct); }
        catch
        {
            if (running) await source.StartAsync(name, CancellationToken.None);
            throw;
        }
        progress?.Report($"deleting {name} on the source");
        try { await source.DeleteInstanceAsync(name, ct: CancellationToken.None); }
        catch (HullException e)
        {
            throw new HullException($"'{name}' is now on the target as '{moved.Name}', but deleting it on the source " +
                $"failed: {e.Message}. Delete it there by hand.", e.StatusCode);
        }
        return moved;
    }

    /// <summary>The outcome of a live move: the instance on the target and what the engine measured.</summary>
    public sealed record LiveMoveResult(Instance Instance, TimeSpan Total, TimeSpan Downtime, long TransferredBytes);

    /// <summary>
    /// Moves a running VM without stopping it: the target makes it over the same image and waits; the source sends
    /// memory, device state and its writable disks straight to the target (pre-copy), then forgets it; the target takes
    /// over. If the send fails, the target's copy is removed and the VM keeps running on the source.
    /// </summary>
    public static async Task<LiveMoveResult> MoveLiveAsync(HullClient source, Instance inst, HullClient target,
        string? newName = null,
        string listenAddress = "127.0.0.1", IProgress<string>? progress = null, CancellationToken ct = default)
    {
        var name = newName ?? inst.Name;
        await EnsureImageAsync(source, target, inst, progress, ct);
        progress?.Report($"preparing {name} on the target");
        var index = new InstanceBackup
        {
            Name = name, Type = inst.Type, Image = inst.Image, ImageFingerprint = inst.ImageFingerprint,
            Config = inst.Config,
            Devices = inst.Devices, Profiles = inst.Profiles, CreatedAt = inst.CreatedAt,
        };
        var where = await target.PrepareIncomingMigrationAsync(index, listenAddress, ct);
        Operation op;
        try
        {
            progress?.Report($"migrating {inst.Name}");
            op = await source.SendMigrationAsync(inst.Name, where.Uri, null, ct);
        }
        catch
        {
            try { await target.FinishIncomingMigrationAsync(name, false, CancellationToken.None); } catch (
                HullException) { }
            throw;
        }
        var moved = await target.FinishIncomingMigrationAsync(name, true, ct)
            ?? throw new HullException($"the target did not take '{name}' over", 500);
        static long Num(Operation o, string key) => o.Metadata is { } m && m.TryGetValue(key, out var v)
            && long.TryParse(v, out var n) ? n : 0;
        return new LiveMoveResult(moved, TimeSpan.FromMilliseconds(Num(op, "total_ms")),
            TimeSpan.FromMilliseconds(Num(op, "downtime_ms")), Num(op, "transferred_bytes"));
    }

    static async Task RefuseSameDaemonAsync(HullClient source, HullClient target, CancellationToken ct)
    {
        var a = await source.ServerAsync(ct);
        var b = await target.ServerAsync(ct);
        if (a.StateDir == b.StateDir && a.Pid == b.Pid)
            throw new HullException("the source and the target are the same hulld: to rename an instance use 'hull " +
                "move OLD NEW'", 400);
    }

    /// <summary>Copies the instance's image to the target unless it holds one with the same fingerprint.</summary>
    static async Task EnsureImageAsync(HullClient source, HullClient target, Instance inst, IProgress<string>? progress,
        CancellationToken ct)
    {
        if (inst.ImageFingerprint.Length == 0) return;
        if ((await target.ListImagesAsync(ct)).Any(i => i.Fingerprint == inst.ImageFingerprint)) return;
        var img = (await source.ListImagesAsync(ct)).FirstOrDefault(i => i.Fingerprint == inst.ImageFingerprint);
        // gone on the source too; the instance may not need it (a full copy). The import says if it does.
        if (img is null) return;
        progress?.Report($"copying image {img.Fingerprint[..12]}");
        await using var content = await source.ExportImageAsync(img.Fingerprint, ct);
        var copied = await target.ImportImageAsync(content, img.Type, null, img.Description, null, ct);
        if (copied.Fingerprint != img.Fingerprint)
            throw new HullException($"the image copied to the target has fingerprint {copied.Fingerprint[..12]}, not " +
                $"{img.Fingerprint[..12]}: the export changed on the way", 500);
    }
}
