using System.Diagnostics;
using System.Text.Json;
using Hull.Api;
using Hull.Instances;

namespace Hull.Daemon;

/// <summary>
/// Instance backups: export a stopped instance as one tarball (backup.json, then its directory under instance/) and
/// import it, here or on another Hull host, maybe under a new name. `hull copy/move` to another host is an export
/// piped into an import. GNU tar writes and reads the tree so that overlayfs whiteouts, xattrs, hard links, sparse
/// files and numeric owners survive.
/// </summary>
public sealed partial class InstanceManager
{
    const string BackupIndex = "backup.json";
    const string BackupDir = "instance";
    static readonly string[] TarTreeFlags = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--sparse"];

    /// <summary>Writes the backup of the stopped instance <paramref name="name"/> to <paramref name="output"/>. The
    /// instance stays locked (nothing can start or change it) while the tarball is written.</summary>
    public async Task ExportAsync(string name, Func<Stream> output, CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        var r = Get(name);
        if (r.State != InstanceStates.Stopped)
            throw new InstanceException($"instance '{name}' is {r.State.ToLowerInvariant()}: stop it before exporting or moving it{(r.Type == InstanceTypes.Container ? " (hull move --stateless stops it, moves it and starts it there)" : "")}", 409);
        if (r.Pending is not null) throw new InstanceException($"instance '{name}' has an unfinished '{r.Pending}': retry when it is done", 409);
        var driver = Driver(r.Type);
        var spec = Spec(r);
        var excludes = driver.ExportExcludes(spec)
            ?? throw new InstanceException($"{r.Type} instances cannot be exported or moved by this hulld yet", 501);
        await driver.PrepareExportAsync(spec, ct);
        var index = new InstanceBackup
        {
            Name = r.Name, Type = r.Type, Image = r.Image, ImageFingerprint = r.ImageFingerprint, Config = r.Config, Devices = r.Devices,
            Profiles = r.Profiles, CreatedAt = r.Created, Snapshots = _store.ListSnapshots(name), SourceHost = Environment.MachineName,
        };
        var stage = Path.Combine(_instancesDir, ".tmp-export-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(stage);
        try
        {
            await File.WriteAllTextAsync(Path.Combine(stage, BackupIndex), JsonSerializer.Serialize(index, HullJson.Default.InstanceBackup), ct);
            List<string> args = ["-c", "-f", "-", .. TarTreeFlags, "-C", stage, BackupIndex, "--anchored"];
            foreach (var x in excludes) args.Add("--exclude=./" + x.TrimStart('/'));
            // Members "./..." of the instance dir become "instance/...".
            args.AddRange(["--transform", @"s,^\.,instance,", "-C", spec.Dir, "."]);
            var psi = new ProcessStartInfo("tar") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var a in args) psi.ArgumentList.Add(a);
            using var p = Process.Start(psi) ?? throw new InstanceException("cannot start tar", 500);
            var err = p.StandardError.ReadToEndAsync(ct);
            try
            {
                await p.StandardOutput.BaseStream.CopyToAsync(output(), ct);
                await p.WaitForExitAsync(ct);
            }
            catch
            {
                try { p.Kill(true); } catch (InvalidOperationException) { }
                throw;
            }
            // 1 = "some files differ" (changed while being read); the instance is locked and stopped, so treat any failure as one.
            if (p.ExitCode != 0) throw new InstanceException($"writing the backup of '{name}' failed: {(await err).Trim()}", 500);
        }
        finally { Files.RemoveTree(stage); }
        _events.Lifecycle("instance-exported", name);
    }

    /// <summary>Removes export/import staging dirs a crash left in the instances dir (called by recovery).</summary>
    void SweepBackupStaging()
    {
        foreach (var d in Directory.GetDirectories(_instancesDir, ".tmp-*")) Files.RemoveTree(d);
    }

    /// <summary>Reads the index of a backup tarball without unpacking the rest.</summary>
    static async Task<InstanceBackup> ReadBackupIndexAsync(string tarball, CancellationToken ct)
    {
        var (code, output) = await Files.RunAsync("tar", ["-x", "-O", "-f", tarball, BackupIndex], ct);
        if (code != 0) throw new InstanceException($"the upload is not a Hull instance backup (no {BackupIndex} in a tarball): make it with 'hull export'. tar said: {output.Trim()}");
        InstanceBackup? b;
        try { b = JsonSerializer.Deserialize(output, HullJson.Default.InstanceBackup); }
        catch (JsonException e) { throw new InstanceException($"{BackupIndex} in the backup is not valid: {e.Message}"); }
        if (b is null) throw new InstanceException($"{BackupIndex} in the backup is empty");
        if (b.Version != 1) throw new InstanceException($"the backup has format version {b.Version}; this hulld reads version 1: upgrade hulld");
        return b;
    }

    /// <summary>The instance a backup would make, checked before anything is unpacked (name clash, type, profiles, config).</summary>
    public async Task<InstanceBackup> PrecheckImportAsync(string tarball, string? newName, CancellationToken ct)
    {
        var b = await ReadBackupIndexAsync(tarball, ct);
        var name = newName ?? b.Name;
        ValidateName(name);
        Driver(b.Type);
        if (_store.GetInstance(name) is not null)
            throw new InstanceException($"instance '{name}' already exists here: import under another name or delete it first", 409);
        ValidateRecord(RecordOf(b, name));
        return b;
    }

    static InstanceRecord RecordOf(InstanceBackup b, string name) => new()
    {
        Name = name, Type = b.Type, Image = b.Image, ImageFingerprint = b.ImageFingerprint, Config = b.Config, Devices = b.Devices,
        Profiles = b.Profiles, State = InstanceStates.Stopped, Created = b.CreatedAt, Pending = "create",
    };

    /// <summary>Makes an instance from a backup tarball (stopped; the caller starts it if wanted). All or nothing.</summary>
    public async Task<Instance> ImportAsync(string tarball, string? newName, OperationContext? op, CancellationToken ct)
    {
        var b = await PrecheckImportAsync(tarball, newName, ct);
        var r = RecordOf(b, newName ?? b.Name);
        var driver = Driver(r.Type);
        using (await LockAsync(r.Name, ct))
        {
            if (!_store.InsertInstance(r))
                throw new InstanceException($"instance '{r.Name}' already exists here: import under another name or delete it first", 409);
            var stage = Path.Combine(_instancesDir, ".tmp-import-" + Guid.NewGuid().ToString("N")[..12]);
            try
            {
                Directory.CreateDirectory(stage);
                op?.Progress("unpacking the backup");
                var (code, output) = await Files.RunAsync("tar", ["-x", "-f", tarball, "-p", .. TarTreeFlags, "-C", stage, BackupDir], ct);
                if (code != 0) throw new InstanceException($"unpacking the backup failed (is it complete?): {output.Trim()}");
                var dir = Dir(r.Name);
                Files.RemoveTree(dir);
                Directory.Move(Path.Combine(stage, BackupDir), dir);
                op?.Progress("adapting the instance to this host");
                AssignIdmap(r);
                var spec = Spec(r);
                await driver.ImportAsync(spec, ct);
                foreach (var s in b.Snapshots)
                {
                    s.Instance = r.Name;
                    _store.InsertSnapshot(s, null);
                }
                r.Pending = null;
                _store.UpdateInstance(r);
            }
            catch
            {
                foreach (var s in b.Snapshots) _store.DeleteSnapshot(r.Name, s.Name);
                await RollbackCreateAsync(r, driver);
                throw;
            }
            finally { Files.RemoveTree(stage); }
        }
        _store.AddCounter("instances_created", 1);
        _events.Lifecycle("instance-imported", r.Name);
        return GetApi(r.Name);
    }
}
