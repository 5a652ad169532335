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
    // pax: nanosecond times, long names and xattrs in one standard header form (TarListing reads it).
    static readonly string[] TarWriteFlags = ["--format=posix", "--pax-option=delete=atime,delete=ctime"];

    /// <summary>Writes the backup of the stopped instance <paramref name="name"/> to <paramref name="output"/>. The
    /// instance stays locked (nothing can start or change it) while the tarball is written.</summary>
    public async Task ExportAsync(string name, Func<Stream> output, CancellationToken ct)
    {
        using var held = await LockAsync(name, ct);
        var r = Get(name);
        if (r.State != InstanceState.Stopped)
            throw new InstanceException($"instance '{name}' is {r.State.ToWire().ToLowerInvariant()}: stop it before " +
                "exporting or moving it" + (r.Type == InstanceTypes.Container
                    ? " (hull move --stateless stops it, moves it and starts it there)" : ""), 409);
        if (r.Pending is not null) throw new InstanceException(
            $"instance '{name}' has an unfinished '{r.Pending.Value.Word()}': retry when it is done", 409);
        var driver = Driver(r.Type);
        var spec = Spec(r);
        var excludes = driver.ExportExcludes(spec)
            ?? throw new InstanceException($"{r.Type} instances cannot be exported or moved by this hulld yet", 501);
        await driver.PrepareExportAsync(spec, ct);
        var index = new InstanceBackup
        {
            Name = r.Name, Type = r.Type, Image = r.Image, ImageFingerprint = r.ImageFingerprint, Config = r.Config,
            Devices = r.Devices,
            Profiles = r.Profiles, CreatedAt = r.Created, Snapshots = _store.ListSnapshots(name),
            SourceHost = Environment.MachineName,
        };
        var stage = Path.Combine(_instancesDir, ".tmp-export-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(stage);
        try
        {
            await File.WriteAllTextAsync(Path.Combine(stage, BackupIndex),
                JsonSerializer.Serialize(index, HullJson.Default.InstanceBackup), ct);
            List<string> args = ["-c", "-f", "-", .. TarWriteFlags, .. TarTreeFlags, "-C", stage, BackupIndex,
                "--anchored"];
            foreach (var x in excludes) args.Add("--exclude=./" + x.TrimStart('/'));
            // Members "./..." of the instance dir become "instance/...".
            // S: not in symlink targets (a link "../bin/x" stays that); hard link targets are member names, so renamed.
            args.AddRange(["--transform", @"s,^\.,instance,S", "-C", spec.Dir, "."]);
            // 1 = "some files differ" (changed while being read); the instance is locked and stopped, so treat any
            // failure as one.
            await HostProgram.RunAsync("tar", args,
                new() { What = $"writing the backup of '{name}'", Stdout = output() }, ct);
        }
        finally { Files.RemoveTree(stage); }
        _events.Lifecycle("instance-exported", name);
    }

    /// <summary>Removes export/import staging dirs a crash left in the instances dir (called by recovery).</summary>
    void SweepBackupStaging()
    {
        foreach (var d in Directory.GetDirectories(_instancesDir, ".tmp-*")) Files.RemoveTree(d);
        foreach (var f in Directory.GetFiles(_instancesDir, ".tmp-upload-*")) File.Delete(f);
    }

    /// <summary>
    /// Reads a backup's index and checks every member of the tarball before anything is unpacked (see
    /// <see cref="CheckBackupMembers"/>); the snapshot names it records are checked as a create would check them.
    /// </summary>
    async Task<InstanceBackup> ReadBackupAsync(string tarball, CancellationToken ct)
    {
        List<TarListing.Member> members;
        byte[]? json = null;
        try
        {
            await using var f = new FileStream(tarball, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            members = await Task.Run(() => TarListing.Read(f, (m, data) =>
            {
                if (m.Name != BackupIndex || json is not null || m.Size > 16 << 20) return;
                json = new byte[m.Size];
                data.ReadExactly(json);
            }), ct);
        }
        catch (InvalidDataException e)
        {
            throw new InstanceException($"the upload is not a Hull instance backup: {e.Message}. Make backups with " +
                "'hull export' (and copy a cut-short one again)");
        }
        if (json is null) throw new InstanceException(
            $"the upload is not a Hull instance backup (no {BackupIndex} in a tarball): make it with 'hull export'");
        InstanceBackup? b;
        try { b = JsonSerializer.Deserialize(json, HullJson.Default.InstanceBackup); }
        catch (JsonException e) { throw new InstanceException(
            $"{BackupIndex} in the backup is not valid: {e.Message}"); }
        if (b is null) throw new InstanceException($"{BackupIndex} in the backup is empty");
        if (b.Version != 1) throw new InstanceException(
            $"the backup has format version {b.Version}; this hulld reads version 1: upgrade hulld");
        CheckBackupMembers(members, Driver(b.Type).BackupContentDirs);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var s in b.Snapshots)
        {
            try { ValidateName(s.Name, "snapshot"); }
            catch (InstanceException e) { throw new InstanceException($"the backup is refused: {e.Message}"); }
            if (!seen.Add(s.Name)) throw new InstanceException(
                $"the backup is refused: it lists snapshot '{s.Name}' twice");
        }
        return b;
    }

    /// <summary>
    /// What makes a backup safe to hand to GNU tar (checked on the listing, before anything is written):
    /// <list type="bullet">
    /// <item>every member is backup.json or lies under instance/, with a plain relative name (no "/" at the start, no
    /// "." or ".." component, no empty one), and no name appears twice (so nothing is replaced while unpacking);</item>
    /// <item>outside the driver's content dirs (<see cref="IInstanceDriver.BackupContentDirs"/>), i.e. Hull's own files
    /// and dirs (lower, console.log, config.json, upper, snapshots, ...), only regular files and directories: no
    /// symlink, hard link, device or fifo where Hull opens, mounts, copies or removes something;</item>
    /// <item>every member's parent that the archive names is a directory, so no member is written through a symlink
    /// or onto a non-directory the archive made;</item>
    /// <item>a hard link names a regular file that came before it in the same content dir (never a host path, never one
    /// of Hull's files, never through a symlink).</item>
    /// </list>
    /// Unpacking then goes into a fresh staging dir with --keep-old-files, so tar never replaces or follows what it
    /// did not make itself.
    /// </summary>
    static void CheckBackupMembers(List<TarListing.Member> members, IReadOnlyList<string> contentDirs)
    {
        static InstanceException Refuse(string what) =>
            new($"the backup is refused: {what}. A backup made by 'hull export' never holds that; make it again with " +
                "'hull export'");
        static string Kind(char t) => t switch
        {
            '0' => "a regular file", '1' => "a hard link", '2' => "a symlink", '3' => "a character device",
            '4' => "a block device",
            '5' => "a directory", '6' => "a fifo", _ => $"tar type '{t}'",
        };
        var types = new Dictionary<string, char>(StringComparer.Ordinal);
        var names = new List<string>(members.Count);
        foreach (var m in members)
        {
            var n = m.Type == '5' && m.Name.EndsWith('/') ? m.Name[..^1] : m.Name;
            if (n.Length == 0 || n.StartsWith('/') || n.Split('/').Any(c => c is "" or "." or ".."))
                throw Refuse($"member '{m.Name}' is not a plain relative name");
            if (n != BackupIndex && n != BackupDir && !n.StartsWith(BackupDir + "/", StringComparison.Ordinal))
                throw Refuse($"member '{m.Name}' lies outside {BackupDir}/");
            if (!types.TryAdd(n, m.Type)) throw Refuse($"member '{n}' appears twice");
            names.Add(n);
        }
        if (types.GetValueOrDefault(BackupIndex) is not ('0' or '\0')) throw Refuse(
            $"{BackupIndex} is not a regular file");
        if (types.GetValueOrDefault(BackupDir) is not ('5' or '\0')) throw Refuse($"{BackupDir} is not a directory");

        // The content dir a path lies strictly inside (as "instance/upper"), or null for Hull's own paths.
        string? ContentRoot(string n)
        {
            var parts = n.Split('/');
            foreach (var pattern in contentDirs)
            {
                var pp = pattern.Split('/');
                if (parts.Length <= pp.Length + 1) continue;
                var match = true;
                for (var i = 0; i < pp.Length && match; i++)
                    match = pp[i] == "*" ? ConfigSchema.IsValidName(parts[i + 1]) : pp[i] == parts[i + 1];
                if (match) return string.Join('/', parts[..(pp.Length + 1)]);
            }
            return null;
        }

        void ParentsAreDirs(string n, string what)
        {
            for (var i = n.IndexOf('/'); i > 0; i = n.IndexOf('/', i + 1))
                if (types.TryGetValue(n[..i], out var t) && t != '5')
                    throw Refuse($"{what} '{n}' lies under '{n[..i]}', which is {Kind(t)}");
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (var i = 0; i < members.Count; i++)
        {
            var (m, n) = (members[i], names[i]);
            ParentsAreDirs(n, "member");
            var root = n == BackupIndex ? null : ContentRoot(n);
            if (root is null && m.Type is not ('0' or '5'))
                throw Refuse($"'{n}' is {Kind(m.Type)}{(m.Type is '1' or '2' ? $" (to '{m.LinkName}')" : "")}, where " +
                    "Hull expects a regular file or a directory of its own");
            if (m.Type == '1')
            {
                var target = m.LinkName.TrimEnd('/');
                if (!seen.Contains(target) || types[target] != '0' || ContentRoot(target) != root)
                    throw Refuse($"hard link '{n}' points to '{m.LinkName}', which is not a regular file before it " +
                        $"in {root}/");
                ParentsAreDirs(target, "hard link target");
            }
            seen.Add(n);
        }
    }

    /// <summary>The instance a backup would make, checked before anything is unpacked (name clash, type, profiles,
    /// config, and every member of the tarball).</summary>
    public async Task<InstanceBackup> PrecheckImportAsync(string tarball, string? newName, CancellationToken ct)
    {
        var b = await ReadBackupAsync(tarball, ct);
        var name = newName ?? b.Name;
        ValidateName(name);
        if (_store.GetInstance(name) is not null)
            throw new InstanceException($"instance '{name}' already exists here: import under another name or delete " +
                "it first", 409);
        ValidateRecord(RecordOf(b, name));
        return b;
    }

    static InstanceRecord RecordOf(InstanceBackup b, string name) => new()
    {
        Name = name, Type = b.Type, Image = b.Image, ImageFingerprint = b.ImageFingerprint, Config = b.Config,
        Devices = b.Devices,
        Profiles = b.Profiles, State = InstanceState.Stopped, Created = b.CreatedAt, Pending = PendingOp.Create,
    };

    /// <summary>Makes an instance from a backup tarball (stopped; the caller starts it if wanted). All or
    /// nothing.</summary>
    public async Task<Instance> ImportAsync(string tarball, string? newName, OperationContext? op, CancellationToken ct)
    {
        var b = await PrecheckImportAsync(tarball, newName, ct);
        var r = RecordOf(b, newName ?? b.Name);
        var driver = Driver(r.Type);
        using (await LockAsync(r.Name, ct))
        {
            if (!_store.InsertInstance(r))
                throw new InstanceException($"instance '{r.Name}' already exists here: import under another name or " +
                    "delete it first", 409);
            var stage = Path.Combine(_instancesDir, ".tmp-import-" + Guid.NewGuid().ToString("N")[..12]);
            try
            {
                Directory.CreateDirectory(stage);
                op?.Progress("unpacking the backup");
                // Checked by the precheck: a fresh dir, nothing replaced (--keep-old-files), only what the listing
                // showed.
                await HostProgram.RunAsync("tar",
                    ["-x", "-f", tarball, "-p", "--keep-old-files", .. TarTreeFlags, "-C", stage, BackupDir],
                    new() { What = "unpacking the backup (is it complete?)",
                        Error = e => new InstanceException(e.Message) },
                    ct);
                var dir = Dir(r.Name);
                Files.RemoveTree(dir);
                Directory.Move(Path.Combine(stage, BackupDir), dir);
                op?.Progress("adapting the instance to this host");
                AssignIdmap(r);
                var spec = Spec(r);
                // What an export leaves out (runtime files: pid files, sockets, scratch dirs) is never taken from a
                // backup.
                foreach (var x in driver.ExportExcludes(spec) ?? [])
                {
                    var p = Path.Combine(dir, x.TrimStart('/'));
                    if (Directory.Exists(p) && new DirectoryInfo(p).LinkTarget is null) Files.RemoveTree(p);
                    else File.Delete(p);
                }
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
