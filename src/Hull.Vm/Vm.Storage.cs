using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using Hull.Vm.Qmp;

namespace Hull.Vm;

public sealed partial class Vm
{
    // ---------------------------------------------------------------- disks

    /// <summary>Adds an empty data disk (qcow2 or raw, owned by the VM) while the VM is stopped. Returns its node
    /// name.</summary>
    public string AddDataDisk(long sizeBytes, DiskFormat format = DiskFormat.Qcow2)
    {
        if (Pid is not null) throw new VmException($"VM '{Name}' is running: stop it before adding a disk");
        if (sizeBytes < 1 << 20) throw new VmException($"disk size {sizeBytes} is too small: give at least 1 MiB");
        var i = Config.Disks.Count;
        var path = Path.Combine(_dir, $"disk{i}.{(format == DiskFormat.Qcow2 ? "qcow2" : "raw")}");
        Tools.Run(Tools.QemuImg, ["create", "-q", "-f", format == DiskFormat.Qcow2 ? "qcow2" : "raw", path,
            sizeBytes.ToString(CultureInfo.InvariantCulture)], "creating a data disk");
        Config.Disks.Add(new DiskConfig { Path = path, Format = format, Owned = true, Node = $"disk{i}" });
        try { SaveConfig(); }
        catch { Tools.TryDelete(path); Config.Disks.RemoveAt(i); throw; }
        return $"disk{i}";
    }

    /// <summary>Grows a disk (online with block_resize when running, with qemu-img when stopped). Shrinking is
    /// refused.</summary>
    public async Task ResizeDiskAsync(string node, long newSizeBytes, CancellationToken ct = default)
    {
        var d = Config.Disks.FirstOrDefault(x => x.Node == node)
            ?? throw new VmException($"VM '{Name}' has no disk '{node}' (disks: " +
            $"{string.Join(", ", Config.Disks.Select(x => x.Node))})");
        if (d.ReadOnly || d.CdRom) throw new VmException($"disk '{node}' is read-only: it cannot be resized");
        var info = JsonNode.Parse(Tools.Run(Tools.QemuImg, ["info", "-U", "--output=json", d.Path],
            $"reading {d.Path}"));
        var current = info?["virtual-size"]?.GetValue<long>() ?? 0;
        if (newSizeBytes < current) throw new VmException(
            $"disk '{node}' is {current} bytes; shrinking to {newSizeBytes} is refused (it would destroy data)");
        if (newSizeBytes == current) return;
        if (Pid is not null && _qmp is not null)
            await _qmp.ExecuteAsync("block_resize", new JsonObject { ["node-name"] = node, ["size"] = newSizeBytes },
                ct: ct).ConfigureAwait(false);
        else
            Tools.Run(Tools.QemuImg, ["resize", "-q", "-f", d.Format == DiskFormat.Qcow2 ? "qcow2" : "raw", d.Path,
                newSizeBytes.ToString(CultureInfo.InvariantCulture)], $"resizing {d.Path}");
    }

    // ---------------------------------------------------------------- snapshots

    IEnumerable<DiskConfig> WritableDisks => Config.Disks.Where(d => !d.ReadOnly && !d.CdRom);

    void RequireQcow2(string what)
    {
        var w = WritableDisks.ToList();
        if (w.Count == 0) throw new VmException($"VM '{Name}' has no writable disk to hold {what}: add a qcow2 disk");
        var raw = w.FirstOrDefault(d => d.Format != DiskFormat.Qcow2);
        if (raw is not null) throw new VmException(
            $"{what} needs qcow2 disks, but {raw.Path} is raw: convert it (qemu-img convert -O qcow2)");
    }

    static void CheckTag(string tag)
    {
        if (string.IsNullOrWhiteSpace(tag) || tag.Length > 64
            || tag.Any(ch => !(char.IsAsciiLetterOrDigit(ch) || ch is '-' or '_' or '.')))
            throw new VmException($"snapshot name '{tag}' is invalid: use up to 64 letters, digits, '-', '_' and '.'");
    }

    /// <summary>
    /// Takes a snapshot. Disk-only: an internal qcow2 snapshot of every writable disk (online through QMP, or with
    /// qemu-img when stopped). Full: memory and device state as well (QEMU's snapshot-save job; the VM must run).
    /// </summary>
    public async Task SnapshotAsync(string tag, SnapshotKind kind, CancellationToken ct = default)
    {
        CheckTag(tag);
        RequireQcow2(kind == SnapshotKind.Full ? "a full snapshot" : "a disk snapshot");
        if ((await ListSnapshotsAsync(ct).ConfigureAwait(false)).Any(s => s.Name == tag))
            throw new VmException($"VM '{Name}' already has a snapshot '{tag}': delete it first or pick another name");
        var disks = WritableDisks.ToList();
        if (kind == SnapshotKind.Full)
        {
            if (Pid is null) throw new VmException(
                $"a full snapshot needs VM '{Name}' running (it saves its memory): start it first");
            await RunJobAsync("snapshot-save", new JsonObject
            {
                ["tag"] = tag, ["vmstate"] = disks[0].Node,
                ["devices"] = new JsonArray([.. disks.Select(d => (JsonNode)d.Node)]),
            }, ct).ConfigureAwait(false);
            return;
        }
        if (Pid is not null)
        {
            var done = new List<string>();
            try
            {
                foreach (var d in disks)
                {
                    await Qmp.ExecuteAsync("blockdev-snapshot-internal-sync",
                        new JsonObject { ["device"] = d.Node, ["name"] = tag }, ct: ct).ConfigureAwait(false);
                    done.Add(d.Node);
                }
            }
            catch
            {
                foreach (var n in done)
                {
                    try { await Qmp.ExecuteAsync("blockdev-snapshot-delete-internal-sync",
                        new JsonObject { ["device"] = n, ["name"] = tag }, ct: ct).ConfigureAwait(false); }
                    catch (QmpException) { }
                }
                throw;
            }
        }
        else
        {
            foreach (var d in disks) Tools.Run(Tools.QemuImg, ["snapshot", "-q", "-c", tag, d.Path],
                $"snapshotting {d.Path}");
        }
    }

    /// <summary>Lists snapshots (those present on the first writable disk; full ones carry memory state).</summary>
    public async Task<IReadOnlyList<VmSnapshot>> ListSnapshotsAsync(CancellationToken ct = default)
    {
        var first = WritableDisks.FirstOrDefault(d => d.Format == DiskFormat.Qcow2);
        if (first is null) return [];
        JsonArray? snaps = null;
        if (Pid is not null && _qmp is not null)
        {
            var nodes = await _qmp.ExecuteAsync("query-named-block-nodes", new JsonObject { ["flat"] = true },
                ct: ct).ConfigureAwait(false) as JsonArray;
            snaps = nodes?.FirstOrDefault(n => n?["node-name"]?.GetValue<string>() == first.Node)?["image"]?[
                "snapshots"] as JsonArray;
        }
        else
        {
            snaps = JsonNode.Parse(Tools.Run(Tools.QemuImg, ["info", "-U", "--output=json", first.Path],
                $"reading {first.Path}"))?["snapshots"] as JsonArray;
        }
        var list = new List<VmSnapshot>();
        foreach (var s in snaps ?? [])
        {
            if (s is null) continue;
            var size = s["vm-state-size"]?.GetValue<long>() ?? 0;
            list.Add(new VmSnapshot(s["name"]!.GetValue<string>(), size > 0 ? SnapshotKind.Full : SnapshotKind.Disk,
                size,
                DateTimeOffset.FromUnixTimeSeconds(s["date-sec"]?.GetValue<long>() ?? 0)));
        }
        return list;
    }

    async Task<VmSnapshot> FindSnapshotAsync(string tag, CancellationToken ct) =>
        (await ListSnapshotsAsync(ct).ConfigureAwait(false)).FirstOrDefault(s => s.Name == tag)
        ?? throw new VmException($"VM '{Name}' has no snapshot '{tag}' (see its snapshot list)");

    /// <summary>
    /// Restores a snapshot. Full: memory and devices come back (the VM is started first if stopped). Disk-only: the
    /// VM must be stopped; the disks are reverted and the next start boots from them.
    /// </summary>
    public async Task RestoreSnapshotAsync(string tag, CancellationToken ct = default)
    {
        var snap = await FindSnapshotAsync(tag, ct).ConfigureAwait(false);
        var disks = WritableDisks.ToList();
        if (snap.Kind == SnapshotKind.Full)
        {
            var started = false;
            if (Pid is null) { await StartAsync(paused: true, ct).ConfigureAwait(false); started = true; }
            await RunJobAsync("snapshot-load", new JsonObject
            {
                ["tag"] = tag, ["vmstate"] = disks[0].Node,
                ["devices"] = new JsonArray([.. disks.Select(d => (JsonNode)d.Node)]),
            }, ct).ConfigureAwait(false);
            var st = await Qmp.ExecuteObjectAsync("query-status", ct: ct).ConfigureAwait(false);
            if (started || st["status"]?.GetValue<string>() != "running") await Qmp.ExecuteAsync("cont",
                ct: ct).ConfigureAwait(false);
            return;
        }
        if (Pid is not null) throw new VmException(
            $"restoring the disk-only snapshot '{tag}' needs VM '{Name}' stopped: stop it first");
        foreach (var d in disks) Tools.Run(Tools.QemuImg, ["snapshot", "-q", "-a", tag, d.Path],
            $"reverting {d.Path} to '{tag}'");
    }

    public async Task DeleteSnapshotAsync(string tag, CancellationToken ct = default)
    {
        var snap = await FindSnapshotAsync(tag, ct).ConfigureAwait(false);
        var disks = WritableDisks.ToList();
        if (Pid is not null)
        {
            if (snap.Kind == SnapshotKind.Full)
                await RunJobAsync("snapshot-delete",
                    new JsonObject { ["tag"] = tag, ["devices"] =
                    new JsonArray([.. disks.Select(d => (JsonNode)d.Node)]) }, ct).ConfigureAwait(false);
            else
                foreach (var d in disks)
                    await Qmp.ExecuteAsync("blockdev-snapshot-delete-internal-sync",
                        new JsonObject { ["device"] = d.Node, ["name"] = tag }, ct: ct).ConfigureAwait(false);
        }
        else
        {
            foreach (var d in disks) Tools.Run(Tools.QemuImg, ["snapshot", "-q", "-d", tag, d.Path],
                $"deleting snapshot '{tag}' of {d.Path}");
        }
    }

    int _jobs;

    /// <summary>Runs a QMP job command and waits until it concludes; a failed job's error is thrown.</summary>
    async Task RunJobAsync(string command, JsonObject args, CancellationToken ct)
    {
        var id = $"hull-{command}-{Interlocked.Increment(ref _jobs)}";
        args["job-id"] = id;
        using var done = Qmp.Expect("JOB_STATUS_CHANGE",
            e => e.Data?["id"]?.GetValue<string>() == id && e.Data?["status"]?.GetValue<string>() == "concluded");
        await Qmp.ExecuteAsync(command, args, ct: ct).ConfigureAwait(false);
        await done.WaitAsync(TimeSpan.FromMinutes(10), ct).ConfigureAwait(false);
        var jobs = await Qmp.ExecuteAsync("query-jobs", ct: ct).ConfigureAwait(false) as JsonArray;
        var job = jobs?.FirstOrDefault(j => j?["id"]?.GetValue<string>() == id);
        var error = job?["error"]?.GetValue<string>();
        await Qmp.ExecuteAsync("job-dismiss", new JsonObject { ["id"] = id }, ct: ct).ConfigureAwait(false);
        if (error is not null) throw new VmException($"{command} of VM '{Name}' failed: {error}");
    }

    // ---------------------------------------------------------------- live migration

    /// <summary>
    /// Live-migrates the running VM to a new state dir (a second Hull host on this machine): starts the destination
    /// QEMU with the same config and -incoming, copies writable Hull-owned disks along (incremental block migration
    /// over the shared read-only base), migrates RAM with pre-copy, and ends the source. On failure the source keeps
    /// running and the destination is removed. <paramref name="uri"/> is "unix" (default) or "tcp:127.0.0.1:PORT".
    /// </summary>
    public async Task<MigrationResult> MigrateAsync(string destinationStateDir, VmHostOptions host, string? uri = null,
        long? bandwidthBytesPerSecond = null, CancellationToken ct = default)
    {
        if (Pid is null || _qmp is null) throw new VmException(
            $"VM '{Name}' is not running: only a running VM can be live-migrated");
        var destDir = Full(destinationStateDir);
        if (destDir == _dir) throw new VmException(
            "the migration destination is the VM's own state dir: give another one");
        if (File.Exists(Path.Combine(destDir, StateFiles.Config))) throw new VmException(
            $"{destDir} already holds a VM: give an empty state dir");
        var writable = WritableDisks.ToList();
        var owned = writable.Where(d => d.Owned).ToList();
        if (owned.Count > 0 && owned.Count != writable.Count)
            throw new VmException($"VM '{Name}' mixes Hull-owned and external writable disks; migration needs either " +
                "all copied or all on shared storage");
        var copyDisks = owned.Count > 0;
        string incoming;
        if (uri is null || uri == "unix") incoming = $"unix:{Path.Combine(destDir, "migrate.sock")}";
        else if (uri.StartsWith("tcp:", StringComparison.Ordinal))
        {
            var parts = uri.Split(':');
            if (parts.Length != 3 || !IPAddress.TryParse(parts[1], out var ip) || !int.TryParse(parts[2], out var port)
                || port is < 1 or > 65535)
                throw new VmException($"migration URI '{uri}' is invalid: use tcp:ADDRESS:PORT");
            using var probe = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try { probe.Bind(new IPEndPoint(ip, port)); }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressAlreadyInUse)
            {
                throw new VmException($"port {port} on {ip} is already in use: pick a free port for the migration");
            }
            incoming = uri;
        }
        else throw new VmException($"migration URI '{uri}' is not supported: use unix or tcp:ADDRESS:PORT");

        var createdDir = !Directory.Exists(destDir);
        Directory.CreateDirectory(destDir);
        var dc = JsonSerializer.Deserialize(JsonSerializer.Serialize(Config, VmJson.Default.VmConfig),
            VmJson.Default.VmConfig)!;
        dc.Incoming = incoming;
        var dest = new Vm(destDir, dc, host.CacheDir);
        try
        {
            if (dc.Boot == BootMode.Uefi) File.Copy(Path.Combine(_dir, StateFiles.OvmfVars),
                Path.Combine(destDir, StateFiles.OvmfVars));
            if (copyDisks)
            {
                // The running source knows each disk's size (no qemu-img process per disk on this path).
                var sizes = new Dictionary<string, long>(StringComparer.Ordinal);
                if (await _qmp.ExecuteAsync("query-block", ct: ct).ConfigureAwait(false) is JsonArray blocks)
                    foreach (var b in blocks)
                        if (b?["inserted"] is JsonObject ins && ins["node-name"]?.GetValue<string>() is string node
                            && ins["image"]?["virtual-size"]?.GetValue<long>() is long vs)
                            sizes[node] = vs;
                foreach (var d in dc.Disks.Where(d => d.Owned))
                {
                    var src = d.Path;
                    d.Path = Path.Combine(destDir, Path.GetFileName(src));
                    if (!sizes.TryGetValue(d.Node, out var size))
                        size = JsonNode.Parse(Tools.Run(Tools.QemuImg, ["info", "-U", "--output=json", src],
                            $"reading {src}"))?["virtual-size"]?.GetValue<long>() ?? 0;
                    var sz = size.ToString(CultureInfo.InvariantCulture);
                    if (d.Base is not null)
                        Tools.Run(Tools.QemuImg, ["create", "-q", "-f", "qcow2", "-F", ImageFormatCached(d.Base), "-b",
                            d.Base, d.Path, sz], "creating the destination overlay");
                    else
                        Tools.Run(Tools.QemuImg, ["create", "-q", "-f", d.Format == DiskFormat.Qcow2 ? "qcow2" : "raw",
                            d.Path, sz], "creating the destination disk");
                }
            }
            dest.SaveConfig();
            await dest.StartIncomingAsync(incoming, copyDisks, ct).ConfigureAwait(false);
            var res = await SendMigrationAsync(incoming, copyDisks, bandwidthBytesPerSecond, () => DestSaid(dest),
                ct).ConfigureAwait(false);
            await dest.FinishIncomingAsync(ct).ConfigureAwait(false);
            Record(VmRecordState.Migrated, $"migrated to {destDir}");
            return new MigrationResult(res.Total, res.Downtime, res.TransferredBytes, dest);
        }
        catch
        {
            await dest.DeleteAsync(removeDir: createdDir).ConfigureAwait(false);
            throw;
        }
    }

    // ---- the halves of a live migration, for two hosts (the target's hulld runs the incoming side) ----

    /// <summary>
    /// Target side: starts this (created, stopped) VM waiting for a migration on <paramref name="incoming"/>
    /// (tcp:ADDRESS:PORT or unix:PATH). With <paramref name="blockMigration"/> its Hull-owned writable disks, created
    /// over
    /// the same bases and sizes as the source's, receive the source's blocks in the same stream.
    /// </summary>
    public async Task StartIncomingAsync(string incoming, bool blockMigration, CancellationToken ct = default)
    {
        if (Pid is int p) throw new VmException(
            $"VM '{Name}' is already running (QEMU pid {p}): an incoming migration needs a stopped VM");
        Config.Incoming = incoming;
        SaveConfig();
        try
        {
            await StartAsync(ct: ct).ConfigureAwait(false);
            await Qmp.ExecuteAsync("migrate-set-capabilities",
                new JsonObject { ["capabilities"] = MigrationCaps(blockMigration) }, ct: ct).ConfigureAwait(false);
        }
        catch
        {
            if (Pid is not null) await KillAsync().ConfigureAwait(false);
            Config.Incoming = null;
            SaveConfig();
            throw;
        }
    }

    /// <summary>Target side, after the source completed: waits until the guest runs here and forgets the incoming
    /// URI.</summary>
    public async Task FinishIncomingAsync(CancellationToken ct = default)
    {
        var sw = Stopwatch.StartNew();
        VmState st;
        while ((st = await GetStateAsync(ct).ConfigureAwait(false)) is VmState.Incoming or VmState.Busy
            && sw.Elapsed < TimeSpan.FromSeconds(30))
            await Task.Delay(20, ct).ConfigureAwait(false);
        if (st is VmState.Incoming or VmState.Busy or VmState.Stopped or VmState.Crashed)
            throw new VmException($"VM '{Name}' did not start running after the migration (state " +
                $"{st}){Environment.NewLine}{Tools.Tail(QemuLogPath, 10)}");
        Config.Incoming = null;
        SaveConfig();
    }

    static JsonArray MigrationCaps(bool blockMigration) => new(
        new JsonObject { ["capability"] = "events", ["state"] = true },
        new JsonObject { ["capability"] = "block", ["state"] = blockMigration });

    /// <summary>
    /// Source side: sends the running guest (memory, devices and, with <paramref name="blockMigration"/>, its
    /// Hull-owned
    /// writable disks over their shared bases) to a target waiting on <paramref name="uri"/>, then ends QEMU here. On
    /// failure the guest keeps running here. <paramref name="targetSaid"/> adds the target's side of a failure.
    /// </summary>
    public async Task<VmMigrationStats> SendMigrationAsync(string uri, bool blockMigration,
        long? bandwidthBytesPerSecond = null, Func<string>? targetSaid = null,
        CancellationToken ct = default)
    {
        if (Pid is null || _qmp is null) throw new VmException(
            $"VM '{Name}' is not running: only a running VM can be live-migrated");
        try
        {
            await _qmp.ExecuteAsync("migrate-set-capabilities",
                new JsonObject { ["capabilities"] = MigrationCaps(blockMigration) }, ct: ct).ConfigureAwait(false);
            var pars = new JsonObject { ["block-incremental"] = blockMigration };
            if (bandwidthBytesPerSecond is long bw) pars["max-bandwidth"] = bw;
            await _qmp.ExecuteAsync("migrate-set-parameters", pars, ct: ct).ConfigureAwait(false);

            var sw = Stopwatch.StartNew();
            using (var finished = _qmp.Expect("MIGRATION",
                e => e.Data?["status"]?.GetValue<string>() is "completed" or "failed" or "cancelled"))
            {
                await _qmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = uri }, ct: ct).ConfigureAwait(false);
                await finished.WaitAsync(TimeSpan.FromMinutes(10), ct).ConfigureAwait(false);
            }
            var q = await _qmp.ExecuteObjectAsync("query-migrate", ct: ct).ConfigureAwait(false);
            // QEMU sends the completed event before its migration thread has filled in total-time and downtime
            // (they read 0 in between): ask again until they are there.
            for (var i = 0; i < 100 && q["status"]?.GetValue<string>() == "completed"
                && (q["total-time"]?.GetValue<long>() ?? 0) == 0; i++)
            {
                await Task.Delay(10, ct).ConfigureAwait(false);
                q = await _qmp.ExecuteObjectAsync("query-migrate", ct: ct).ConfigureAwait(false);
            }
            var status = q["status"]?.GetValue<string>();
            if (status != "completed")
                throw new VmException($"migration of VM '{Name}' {status}: " +
                    $"{q["error-desc"]?.GetValue<string>() ?? "no reason given"}{targetSaid?.Invoke()}");
            var total = TimeSpan.FromMilliseconds(q["total-time"]?.GetValue<long>() ?? sw.ElapsedMilliseconds);
            var down = TimeSpan.FromMilliseconds(q["downtime"]?.GetValue<long>() ?? 0);
            var bytes = (q["ram"]?["transferred"]?.GetValue<long>() ?? 0)
                + (q["disk"]?["transferred"]?.GetValue<long>() ?? 0);
            Record(VmRecordState.Migrated, $"migrated to {uri}");
            await KillAsync().ConfigureAwait(false);
            return new VmMigrationStats(total, down, bytes);
        }
        catch
        {
            // The source keeps running: cancel whatever is in flight and let the guest go on.
            try
            {
                await _qmp.ExecuteAsync("migrate_cancel", ct: CancellationToken.None).ConfigureAwait(false);
                var st = await _qmp.ExecuteObjectAsync("query-status",
                    ct: CancellationToken.None).ConfigureAwait(false);
                if (st["status"]?.GetValue<string>() is "postmigrate" or "paused" or "finish-migrate") await
                    _qmp.ExecuteAsync("cont").ConfigureAwait(false);
            }
            catch (Exception e) when (e is QmpException or QemuGoneException or TimeoutException) { }
            throw;
        }
    }

    static string DestSaid(Vm dest)
    {
        Thread.Sleep(200);
        var t = string.Join('\n', Tools.Tail(dest.QemuLogPath,
            10).Split('\n').Where(l => !l.StartsWith("---", StringComparison.Ordinal))).Trim();
        return t.Length == 0 ? "" : $"; the destination QEMU said: {t}";
    }
}
