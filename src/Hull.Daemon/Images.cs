using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Hull.Api;
using Hull.Instances;
using Hull.Linux;

namespace Hull.Daemon;

/// <summary>Builds a built-in image into a work directory and returns the image file it made (a rootfs tarball for
/// containers).</summary>
public delegate Task<string> BuiltinImageBuilder(string workDir, OperationContext? op, CancellationToken ct);

/// <summary>Checks an image file of one type before it is added; throws <see cref="InstanceException"/> saying what
/// is wrong with it.</summary>
public delegate Task ImageCheck(string file, CancellationToken ct);

/// <summary>
/// The content-addressed image store under STATE/images: images/FINGERPRINT/{image.tar|disk.img, rootfs/}. The
/// fingerprint is the SHA-256 of the image file. Work happens in images/tmp-*; an image appears by rename, then its
/// row.
/// </summary>
public sealed partial class ImageStore
{
    readonly string _dir;
    readonly Store _store;
    readonly SemaphoreSlim _lock = new(1, 1);
    readonly Dictionary<(string Name, string Type), BuiltinImageBuilder> _builtins = [];
    readonly Dictionary<string, ImageCheck> _checks = [];

    /// <summary>How much an image may unpack to (hulld's --max-image-size and --max-image-entries).</summary>
    public ImageLimits Limits { get; set; } = new();

    public ImageStore(string stateDir, Store store)
    {
        _dir = Path.Combine(stateDir, "images");
        _store = store;
        Directory.CreateDirectory(_dir);
        _builtins[("busybox", InstanceTypes.Container)] = BuildBusyboxRootfsAsync;
    }

    /// <summary>Registers a built-in image (the VM engine registers its default "busybox" image for type vm).</summary>
    public void RegisterBuiltin(string name, string type, BuiltinImageBuilder builder) => _builtins[(name, type)] =
        builder;

    public IEnumerable<(string Name, string Type)> Builtins => _builtins.Keys;

    /// <summary>Registers the check of the image files of a type (the VM engine refuses files that are no disk
    /// image).</summary>
    public void RegisterCheck(string type, ImageCheck check) => _checks[type] = check;

    /// <summary>Removes half-made work and image directories that have no row (a crash between rename and
    /// insert).</summary>
    public void Recover()
    {
        var known = _store.ListImages().Select(i => i.Fingerprint).ToHashSet();
        foreach (var d in Directory.GetDirectories(_dir))
        {
            var name = Path.GetFileName(d);
            if (name == BlobsDirName) continue;
            if (name.StartsWith("tmp-", StringComparison.Ordinal) || !known.Contains(name)) Files.RemoveTree(d);
        }
        // Upload spools (tmp-upload-*) a crash, a full disk or a kill -9 left behind.
        foreach (var f in Directory.GetFiles(_dir, "tmp-*")) File.Delete(f);
        RecoverBlobs(known);
    }

    string ImageDir(string fp) => Path.Combine(_dir, fp);

    public ImageRef RefFor(ImageRecord r)
    {
        var d = ImageDir(r.Fingerprint);
        return new ImageRef
        {
            Fingerprint = r.Fingerprint, Type = r.Type,
            File = Path.Combine(d, r.Type == InstanceTypes.Container ? "image.tar" : "disk.img"),
            Rootfs = r.Type == InstanceTypes.Container ? Path.Combine(d, "rootfs") : null,
        };
    }

    public List<Image> List()
    {
        var aliases = _store.ListAliases();
        return _store.ListImages().Select(i => ToApi(i, aliases)).ToList();
    }

    Image ToApi(ImageRecord i, List<(string Name, string Type, string Fingerprint)> aliases) => new()
    {
        Fingerprint = i.Fingerprint, Type = i.Type, Size = i.Size, CreatedAt = i.Created, Description = i.Description,
        Builtin = i.Builtin, Properties = PropertiesOf(i.Fingerprint),
        Aliases = aliases.Where(a => a.Fingerprint == i.Fingerprint).Select(a => a.Name).ToList(),
        Config = RunConfigOf(i),
    };

    /// <summary>The image's run settings (images/FP/run.json, written when an OCI image is added); null for a rootfs
    /// tarball image.</summary>
    public ImageRunConfig? RunConfigOf(ImageRecord i)
    {
        var path = Path.Combine(ImageDir(i.Fingerprint), RunConfigFile);
        try { return JsonSerializer.Deserialize(File.ReadAllBytes(path), HullJson.Default.ImageRunConfig); }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException) { return null; }
    }

    const string RunConfigFile = "run.json";

    /// <summary>Finds an image by alias (for the type), full fingerprint or unique fingerprint prefix; null if
    /// none.</summary>
    public ImageRecord? Find(string name, string? type)
    {
        name = Unescape(name);
        var images = _store.ListImages();
        foreach (var a in _store.ListAliases())
            if (a.Name == name && (type is null || a.Type == type))
                return images.FirstOrDefault(i => i.Fingerprint == a.Fingerprint);
        if (name.Length >= 6 && name.All(Uri.IsHexDigit))
        {
            var m = images.Where(i => i.Fingerprint.StartsWith(name, StringComparison.Ordinal)
                && (type is null || i.Type == type)).ToList();
            if (m.Count == 1) return m[0];
            if (m.Count > 1) throw new InstanceException(
                $"image fingerprint prefix '{name}' is ambiguous: give more characters");
        }
        return null;
    }

    public Image Get(string name) =>
        Find(name, null) is { } r ? ToApi(r, _store.ListAliases())
            : throw new InstanceException($"image '{name}' not found: 'hull image list' shows the images; built-in: " +
                $"{string.Join(", ", _builtins.Keys.Select(b => b.Name).Distinct())}", 404);

    /// <summary>Resolves an image for a new instance, building a built-in one on first use.</summary>
    public async Task<ImageRecord> ResolveAsync(string name, string type, OperationContext? op, CancellationToken ct)
    {
        if (Find(name, type) is { } found) return found;
        if (!_builtins.ContainsKey((name, type))
            && await ResolveRegistryAsync(name, type, op, ct) is { } pulled) return pulled;
        if (!_builtins.TryGetValue((name, type), out var builder))
        {
            if (Find(name, null) is { } other)
                throw new InstanceException($"image '{name}' is a {other.Type} image and cannot make a {type} " +
                    $"instance: {(type == InstanceTypes.Vm ? "drop --vm" : "add --vm")} or use another image");
            var builtins = string.Join(", ", _builtins.Keys.Where(b => b.Type == type).Select(b => b.Name));
            throw new InstanceException($"image '{name}' not found for a {type}: import it with 'hull image import', " +
                "pull it with 'hull image pull HOST[:PORT]/REPO[:TAG]' or use a built-in image " +
                $"({(builtins.Length == 0 ? "none for this type" : builtins)})", 404);
        }
        await _lock.WaitAsync(ct);
        try
        {
            if (Find(name, type) is { } again) return again;
            op?.Progress($"building the built-in {type} image '{name}'");
            var work = Path.Combine(_dir, "tmp-" + Guid.NewGuid().ToString("N")[..12]);
            Directory.CreateDirectory(work);
            try
            {
                var file = await builder(work, op, ct);
                var rec = await AddLockedAsync(file, type, $"built-in {name} image, made on this host", builtin: true,
                    op, ct);
                _store.SetAlias(name, type, rec.Fingerprint);
                return rec;
            }
            finally { Files.RemoveTree(work); }
        }
        finally { _lock.Release(); }
    }

    /// <summary>Imports an OCI image layout sent as a tarball of its directory: the layers are flattened into a rootfs
    /// image.</summary>
    public async Task<Image> ImportOciLayoutAsync(Stream body, string? reference, string? alias, string description,
        OperationContext? op, CancellationToken ct)
    {
        if (alias is not null && !ConfigSchema.IsValidName(alias, 128))
            throw new InstanceException($"image alias '{alias}' is invalid: use letters, digits, '-', '_' or '.', " +
                "starting with a letter or digit");
        var work = Path.Combine(_dir, "tmp-" + Guid.NewGuid().ToString("N")[..12]);
        try
        {
            Directory.CreateDirectory(work);
            var upload = Path.Combine(work, "layout.tar");
            await using (var f = File.Create(upload)) await body.CopyToAsync(f, ct);
            var layout = Path.Combine(work, "layout");
            Directory.CreateDirectory(layout);
            try
            {
                var options = Limits.Options(default, whiteouts: false, keepOwners: false);
                await ImageUnpack.ExtractAsync(upload, layout, options, "the OCI layout upload", ct);
            }
            catch (RootedTarLimitException e) { throw Limits.TooLarge(e); }
            File.Delete(upload);
            var rec = await AddOciLayoutAsync(work, layout, reference, alias is null ? [] : [alias], description, op,
                ct);
            return ToApi(rec, _store.ListAliases());
        }
        finally { Files.RemoveTree(work); }
    }

    /// <summary>Flattens an OCI layout directory inside <paramref name="work"/> into a rootfs image, adds it and points
    /// the aliases at it.</summary>
    async Task<ImageRecord> AddOciLayoutAsync(string work, string layout, string? reference,
        IReadOnlyList<string> aliases, string description, OperationContext? op, CancellationToken ct)
    {
        var rootfs = Path.Combine(work, "rootfs");
        var run = await OciLayout.FlattenAsync(layout, reference, rootfs, Limits, op, ct);
        Files.RemoveTree(layout);
        op?.Progress("packing the root filesystem");
        var tar = Path.Combine(work, "image.tar");
        await HostProgram.RunAsync("tar", ["--sort=name", "--mtime=@0", "--numeric-owner", "-cf", tar, "-C", rootfs,
            "."],
            new() { What = "packing the flattened image" }, ct);
        Files.RemoveTree(rootfs);
        await _lock.WaitAsync(ct);
        try
        {
            var rec = await AddLockedAsync(tar, InstanceTypes.Container, description, builtin: false, op, ct, run);
            foreach (var a in aliases) _store.SetAlias(a, InstanceTypes.Container, rec.Fingerprint);
            return rec;
        }
        finally { _lock.Release(); }
    }

    /// <summary>Imports an image file (a rootfs tarball, plain or compressed, for containers; a disk image for
    /// VMs).</summary>
    public async Task<Image> ImportAsync(Stream body, string type, string? alias, string description,
        OperationContext? op, CancellationToken ct)
    {
        if (!InstanceTypes.IsValid(type)) throw new InstanceException(
            $"image type '{type}' is invalid: use container or vm");
        if (alias is not null && !ConfigSchema.IsValidName(alias, 128))
            throw new InstanceException($"image alias '{alias}' is invalid: use letters, digits, '-', '_' or '.', " +
                "starting with a letter or digit");
        await _lock.WaitAsync(ct);
        var work = Path.Combine(_dir, "tmp-" + Guid.NewGuid().ToString("N")[..12]);
        try
        {
            Directory.CreateDirectory(work);
            var file = Path.Combine(work, "upload");
            await using (var f = File.Create(file)) await body.CopyToAsync(f, ct);
            if (new FileInfo(file).Length == 0) throw new InstanceException(
                "the image file is empty: give a rootfs tarball (tar, tar.gz, tar.xz) or a disk image");
            var rec = await AddLockedAsync(file, type, description, builtin: false, op, ct);
            if (alias is not null) _store.SetAlias(alias, type, rec.Fingerprint);
            return ToApi(rec, _store.ListAliases());
        }
        finally
        {
            Files.RemoveTree(work);
            _lock.Release();
        }
    }

    async Task<ImageRecord> AddLockedAsync(string file, string type, string description, bool builtin,
        OperationContext? op, CancellationToken ct, ImageRunConfig? run = null)
    {
        op?.Progress("computing the fingerprint");
        string fp;
        await using (var f = File.OpenRead(file)) fp = Convert.ToHexStringLower(await SHA256.HashDataAsync(f, ct));
        var existing = _store.ListImages().FirstOrDefault(i => i.Fingerprint == fp);
        if (existing is not null) return existing;
        var stage = Path.Combine(Path.GetDirectoryName(file)!, "image");
        Directory.CreateDirectory(stage);
        if (type == InstanceTypes.Container)
        {
            var rootfs = Path.Combine(stage, "rootfs");
            Directory.CreateDirectory(rootfs);
            op?.Progress("unpacking the root filesystem");
            var options = Limits.Options(default, whiteouts: false);
            try { await ImageUnpack.ExtractAsync(file, rootfs, options, "the image tarball", ct); }
            catch (RootedTarLimitException e) { throw Limits.TooLarge(e); }
            catch (InstanceException e) when (e.Status == 400)
            {
                throw new InstanceException($"{e.Message}: give a rootfs tarball (tar, tar.gz, tar.xz)");
            }
            if (!Directory.EnumerateFileSystemEntries(rootfs).Any()) throw new InstanceException(
                "the image tarball is empty: give a tarball of a root filesystem");
            if (Unified(stage) is { } meta)
            {
                File.WriteAllText(Path.Combine(stage, PropertiesFile),
                    JsonSerializer.Serialize(meta.Properties, HullJson.Default.DictionaryStringString));
                if (meta.Properties.GetValueOrDefault("description") is { Length: > 0 } d) description = d;
            }
            File.Move(file, Path.Combine(stage, "image.tar"));
            if (run is not null) await File.WriteAllBytesAsync(Path.Combine(stage, RunConfigFile),
                JsonSerializer.SerializeToUtf8Bytes(run, HullJson.Default.ImageRunConfig), ct);
        }
        else
        {
            if (_checks.TryGetValue(type, out var check)) await check(file, ct);
            File.Move(file, Path.Combine(stage, "disk.img"));
        }
        var size = new FileInfo(Path.Combine(stage, type == InstanceTypes.Container ? "image.tar" : "disk.img")).Length;
        Directory.Move(stage, ImageDir(fp));
        var rec = new ImageRecord { Fingerprint = fp, Type = type, Size = size, Created = DateTimeOffset.UtcNow,
            Description = description, Builtin = builtin };
        _store.InsertImage(rec);
        return rec;
    }

    /// <summary>The image's properties (from its metadata file), in its dir.</summary>
    const string PropertiesFile = "properties.json";

    /// <summary>
    /// An Incus/LXD unified image (metadata.yaml and rootfs/ at the top of the tarball), unpacked in
    /// <paramref name="stage"/>/rootfs: its metadata, with rootfs/ moved up to be the image's root filesystem; null
    /// for a plain root filesystem. The unpacked tree is the upload's: the metadata file is read without following a
    /// link, and only a real directory rootfs/ counts.
    /// </summary>
    static ImageMetadata? Unified(string stage)
    {
        var top = Path.Combine(stage, "rootfs");
        var inner = Path.Combine(top, "rootfs");
        if (!Sys.TryOpen(Path.Combine(top, ImageMetadata.FileName), O.RDONLY | O.NOFOLLOW | O.NONBLOCK, out var fd,
            out _)) return null;
        string text;
        using (fd)
        {
            var st = RootedFs.FStat(fd);
            if ((st.Mode & 0xF000) != 0x8000 || !Directory.Exists(inner)
                || new DirectoryInfo(inner).LinkTarget is not null) return null;
            if (st.Size > ImageMetadata.MaxSize) throw new InstanceException(
                $"the image's {ImageMetadata.FileName} is larger than {ImageMetadata.MaxSize / 1024} KiB");
            var buf = new byte[st.Size];
            var n = 0;
            while (n < buf.Length && Sys.Read(fd, buf.AsSpan(n)) is var r and > 0) n += r;
            text = Encoding.UTF8.GetString(buf, 0, n);
        }
        var meta = ImageMetadata.Parse(text);
        var host = ImageMetadata.HostArchitectures[0];
        if (meta.Architecture is { } arch && !ImageMetadata.HostArchitectures.Contains(arch))
            throw new InstanceException($"the image is for architecture {arch}, not this host's ({host}): import an " +
                $"image built for {host}");
        var outer = Path.Combine(stage, "unified");
        Directory.Move(top, outer);
        Directory.Move(Path.Combine(outer, "rootfs"), top);
        Files.RemoveTree(outer);
        return meta;
    }

    /// <summary>The properties an image's metadata file gave it (empty without one).</summary>
    Dictionary<string, string> PropertiesOf(string fingerprint)
    {
        var f = Path.Combine(ImageDir(fingerprint), PropertiesFile);
        try
        {
            return File.Exists(f) ? JsonSerializer.Deserialize(File.ReadAllText(f),
                HullJson.Default.DictionaryStringString) ?? [] : [];
        }
        catch (Exception e) when (e is IOException or JsonException) { return []; }
    }

    public string ExportPath(string name)
    {
        var r = Find(name, null) ?? throw new InstanceException(
            $"image '{name}' not found: 'hull image list' shows the images", 404);
        return RefFor(r).File;
    }

    public void Delete(string name, IEnumerable<InstanceRecord> instances)
    {
        var r = Find(name, null) ?? throw new InstanceException(
            $"image '{name}' not found: 'hull image list' shows the images", 404);
        var users = instances.Where(i => i.ImageFingerprint == r.Fingerprint).Select(i => i.Name).ToList();
        if (users.Count > 0)
            throw new InstanceException($"image {r.Fingerprint[..12]} is used by instance(s) " +
                $"{string.Join(", ", users)}: delete them first", 409);
        _store.DeleteImage(r.Fingerprint);
        Files.RemoveTree(ImageDir(r.Fingerprint));
        ReleaseLayers(r.Fingerprint);
    }

    public void SetAlias(string alias, string target)
    {
        if (!ConfigSchema.IsValidName(alias, 128))
            throw new InstanceException($"image alias '{alias}' is invalid: use letters, digits, '-', '_' or '.', " +
                "starting with a letter or digit");
        var r = Find(target, null) ?? throw new InstanceException(
            $"image '{target}' not found: 'hull image list' shows the images", 404);
        _store.SetAlias(alias, r.Type, r.Fingerprint);
    }

    public void DeleteAlias(string alias)
    {
        alias = Unescape(alias);
        if (_store.DeleteAlias(alias) == 0) throw new InstanceException(
            $"image alias '{alias}' not found: 'hull image alias list' shows the aliases", 404);
    }

    public List<ImageAlias> Aliases() => _store.ListAliases().Select(a =>
        new ImageAlias { Name = a.Name, Target = a.Fingerprint }).ToList();

    /// <summary>The built-in busybox container image: the host's static busybox with its applet links, a minimal
    /// /etc.</summary>
    public static async Task<string> BuildBusyboxRootfsAsync(string work, OperationContext? op, CancellationToken ct)
    {
        var busybox = new[] { "/bin/busybox", "/usr/bin/busybox" }.FirstOrDefault(File.Exists)
            ?? throw new InstanceException("the built-in busybox image needs the host's static busybox " +
                "(/bin/busybox): install busybox-static (make setup does)", 500);
        var root = Path.Combine(work, "rootfs");
        foreach (var d in new[] { "bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "tmp", "root",
            "run", "var/log", "home" })
            Directory.CreateDirectory(Path.Combine(root, d));
        File.Copy(busybox, Path.Combine(root, "bin/busybox"));
        File.SetUnixFileMode(Path.Combine(root, "bin/busybox"), (UnixFileMode)0b111_101_101);
        File.SetUnixFileMode(Path.Combine(root, "tmp"), (UnixFileMode)0b1_111_111_111);
        var list = await HostProgram.RunAsync(busybox, ["--list-full"],
            new() { What = "listing busybox's applets (install busybox-static)" }, ct);
        foreach (var line in list.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (line == "bin/busybox" || line.Contains("..")) continue;
            var link = Path.Combine(root, line);
            Directory.CreateDirectory(Path.GetDirectoryName(link)!);
            if (!File.Exists(link)) File.CreateSymbolicLink(link, "/bin/busybox");
        }
        await File.WriteAllTextAsync(Path.Combine(root, "etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", ct);
        await File.WriteAllTextAsync(Path.Combine(root, "etc/group"), "root:x:0:\nnogroup:x:65534:\n", ct);
        await File.WriteAllTextAsync(Path.Combine(root, "etc/hostname"), "busybox\n", ct);
        op?.Progress("packing the busybox root filesystem");
        var tar = Path.Combine(work, "busybox.tar");
        await HostProgram.RunAsync("tar",
            ["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner", "-cf", tar, "-C", root, "."],
            new() { What = "packing the busybox image" }, ct);
        return tar;
    }
}
