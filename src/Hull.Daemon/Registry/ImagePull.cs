using System.Globalization;
using System.Text.Json;
using Hull.Api;
using Hull.Instances;
using Hull.Registry;

namespace Hull.Daemon;

/// <summary>
/// Pulling from OCI (Docker v2) registries. Layer blobs are kept, verified, in images/blobs/sha256/HEX, so a layer
/// already in the store is not fetched again; images/blobs/refs/FINGERPRINT lists the layers each pulled image was
/// made from, and a blob no image lists is removed (when its last image is deleted, or after a failed pull). A pull
/// writes an OCI layout of the image in a work directory (layers hard-linked from the cache) and adds it through the
/// same flattening as an imported layout, so whiteouts and compression are handled once.
/// </summary>
public sealed partial class ImageStore
{
    const string BlobsDirName = "blobs";
    readonly Lock _blobLock = new();
    readonly Dictionary<string, int> _pinned = [];

    string BlobsDir => Path.Combine(_dir, BlobsDirName, "sha256");
    string RefsDir => Path.Combine(_dir, BlobsDirName, "refs");
    string BlobPath(string digest) => Path.Combine(BlobsDir, digest["sha256:".Length..]);

    /// <summary>Pulls an image from a registry (progress in bytes) and returns it; the normalised reference becomes an
    /// alias.</summary>
    public async Task<Image> PullAsync(ImagePullRequest req, OperationContext? op, CancellationToken ct)
    {
        ImageReference reference;
        try { reference = ImageReference.Parse(req.Reference); }
        catch (RegistryException e) { throw new InstanceException(e.Message, e.Status); }
        if (req.Alias is not null && !ConfigSchema.IsValidName(req.Alias, 128))
            throw new InstanceException($"image alias '{req.Alias}' is invalid: use letters, digits, '-', '_' or " +
                "'.', starting with a letter or digit");
        if (string.IsNullOrEmpty(req.Username) != (req.Password is null))
            throw new InstanceException(string.IsNullOrEmpty(req.Username)
                ? "a password was given without a username: give both"
                : $"no password was given for user '{req.Username}': give both");
        var creds = string.IsNullOrEmpty(req.Username) ? null : new RegistryCredentials(req.Username, req.Password!);
        try
        {
            var rec = await PullAsync(reference, creds, req.Insecure, req.Alias, op, ct);
            return ToApi(rec, _store.ListAliases());
        }
        catch (RegistryException e) { throw new InstanceException(e.Message, e.Status); }
    }

    async Task<ImageRecord> PullAsync(ImageReference reference, RegistryCredentials? creds, bool insecure,
        string? alias, OperationContext? op, CancellationToken ct)
    {
        using var client = new RegistryClient(reference, creds, insecure);
        op?.Progress($"resolving {reference}");
        var image = await client.ResolveAsync(ct);
        var config = await client.GetBlobBytesAsync(image.Config, ct);
        CheckPlatform(reference, config);
        var layers = image.Layers;
        var digests = layers.Select(l => l.Digest).Distinct().ToList();
        Pin(digests);
        var work = Path.Combine(_dir, "tmp-" + Guid.NewGuid().ToString("N")[..12]);
        ImageRecord? rec = null;
        try
        {
            Directory.CreateDirectory(work);
            Directory.CreateDirectory(BlobsDir);
            var total = layers.Sum(l => l.Size);
            long done = 0, fetchedBytes = 0;
            int fetched = 0, cached = 0;
            for (var i = 0; i < layers.Count; i++)
            {
                var l = layers[i];
                var cachePath = BlobPath(l.Digest);
                var label = $"layer {i + 1}/{layers.Count} {l.Digest[7..19]}";
                if (File.Exists(cachePath) && new FileInfo(cachePath).Length == l.Size)
                {
                    cached++;
                    done += l.Size;
                    op?.Progress($"{label}: already in the store ({Size(done)} of {Size(total)})");
                    continue;
                }
                var download = Path.Combine(work, "dl-" + l.Digest[7..]);
                var before = done;
                await client.DownloadBlobAsync(l, download, op is null ? null : new Progress(n =>
                    op.Progress($"{label}: {Size(n)} of {Size(l.Size)} ({Size(before + n)} of {Size(total)})")), ct);
                File.Move(download, cachePath, overwrite: true);
                fetched++;
                fetchedBytes += l.Size;
                done += l.Size;
            }
            op?.Progress($"fetched {fetched} layer(s), {Size(fetchedBytes)}; {cached} already in the store");
            var layout = WriteLayout(work, image, config);
            var aliases = new List<string> { reference.ToString() };
            if (alias is not null) aliases.Add(alias);
            rec = await AddOciLayoutAsync(work, layout, null, aliases,
                $"pulled from {reference} ({image.ManifestDigest})", op, ct);
            AddLayerRefs(rec.Fingerprint, digests);
            op?.Result("manifest_digest", image.ManifestDigest);
            op?.Result("layers_fetched", fetched.ToString(CultureInfo.InvariantCulture));
            op?.Result("layers_cached", cached.ToString(CultureInfo.InvariantCulture));
            op?.Result("bytes_fetched", fetchedBytes.ToString(CultureInfo.InvariantCulture));
            return rec;
        }
        finally
        {
            Files.RemoveTree(work);
            Unpin(digests);
            if (rec is null) CollectBlobs();
        }
    }

    static void CheckPlatform(ImageReference reference, byte[] configBytes)
    {
        ImageConfigDocument? config;
        try { config = JsonSerializer.Deserialize(configBytes, RegistryJson.Default.ImageConfigDocument); }
        catch (JsonException e) { throw new InstanceException(
            $"the image config of {reference} is not valid JSON ({e.Message})", 502); }
        if (config is null) throw new InstanceException($"the image config of {reference} is empty", 502);
        if ((config.Os is { Length: > 0 } os && os != "linux")
            || (config.Architecture is { Length: > 0 } arch && arch != "amd64"))
            throw new InstanceException($"{reference} is a {config.Os}/{config.Architecture} image: this host runs " +
                "linux/amd64 images", 400);
    }

    /// <summary>Writes an OCI layout of the image (manifest and config written, layers hard-linked from the
    /// cache).</summary>
    string WriteLayout(string work, ResolvedImage image, byte[] config)
    {
        var layout = Path.Combine(work, "layout");
        var blobs = Path.Combine(layout, "blobs", "sha256");
        Directory.CreateDirectory(blobs);
        File.WriteAllText(Path.Combine(layout, "oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}");
        File.WriteAllBytes(Path.Combine(blobs, image.ManifestDigest[7..]), image.ManifestBytes);
        File.WriteAllBytes(Path.Combine(blobs, image.Config.Digest[7..]), config);
        foreach (var l in image.Layers)
        {
            var target = Path.Combine(blobs, l.Digest[7..]);
            if (File.Exists(target)) continue;
            if (!Hull.Linux.HardLink.TryCreate(BlobPath(l.Digest), target)) File.Copy(BlobPath(l.Digest), target);
        }
        var index = new LayoutIndex
        {
            Manifests = [new Descriptor { MediaType = image.ManifestMediaType, Digest = image.ManifestDigest,
                Size = image.ManifestBytes.Length }],
        };
        File.WriteAllBytes(Path.Combine(layout, "index.json"),
            JsonSerializer.SerializeToUtf8Bytes(index, RegistryJson.Default.LayoutIndex));
        return layout;
    }

    internal static string Size(long n) => n switch
    {
        < 1024 => $"{n} B",
        < 1024 * 1024 => (n / 1024.0).ToString("0.0", CultureInfo.InvariantCulture) + " KiB",
        < 1024L * 1024 * 1024 => (n / 1048576.0).ToString("0.0", CultureInfo.InvariantCulture) + " MiB",
        _ => (n / 1073741824.0).ToString("0.00", CultureInfo.InvariantCulture) + " GiB",
    };

    sealed class Progress(Action<long> report) : IProgress<long>
    {
        public void Report(long value) => report(value);
    }

    /// <summary>
    /// A registry reference in a URL path arrives with its '/' still escaped (routing does not decode %2F). Names
    /// and fingerprints never hold '%', so a name with one is a reference: decode it.
    /// </summary>
    static string Unescape(string name) => name.Contains('%') ? Uri.UnescapeDataString(name) : name;

    // ---- the layer cache ----

    void Pin(IEnumerable<string> digests)
    {
        lock (_blobLock) foreach (var d in digests) _pinned[d] = _pinned.GetValueOrDefault(d) + 1;
    }

    void Unpin(IEnumerable<string> digests)
    {
        lock (_blobLock)
            foreach (var d in digests)
                if (_pinned.TryGetValue(d, out var n)) { if (n <= 1) _pinned.Remove(d); else _pinned[d] = n - 1; }
    }

    void AddLayerRefs(string fingerprint, IEnumerable<string> digests)
    {
        lock (_blobLock)
        {
            Directory.CreateDirectory(RefsDir);
            var path = Path.Combine(RefsDir, fingerprint);
            var all = (File.Exists(path) ? File.ReadAllLines(path) : []).Concat(digests).Where(
                ImageReference.IsSha256Digest).Distinct().Order(StringComparer.Ordinal);
            var tmp = path + ".tmp";
            File.WriteAllLines(tmp, all);
            File.Move(tmp, path, overwrite: true);
        }
    }

    /// <summary>Forgets the layers an image was made from and removes the blobs no other image needs.</summary>
    void ReleaseLayers(string fingerprint)
    {
        // An imported image has no refs (the refs dir may not even exist): nothing to release.
        lock (_blobLock) { if (Directory.Exists(RefsDir)) File.Delete(Path.Combine(RefsDir, fingerprint)); }
        CollectBlobs();
    }

    /// <summary>Removes blobs that no image's refs list and no pull in progress uses, and leftover partial
    /// downloads.</summary>
    void CollectBlobs()
    {
        lock (_blobLock)
        {
            if (!Directory.Exists(BlobsDir)) return;
            var used = new HashSet<string>(_pinned.Keys.Select(d => d[7..]), StringComparer.Ordinal);
            if (Directory.Exists(RefsDir))
                foreach (var f in Directory.EnumerateFiles(RefsDir))
                    if (!f.EndsWith(".tmp", StringComparison.Ordinal))
                        foreach (var line in File.ReadLines(f))
                            if (ImageReference.IsSha256Digest(line)) used.Add(line[7..]);
            foreach (var f in Directory.EnumerateFiles(BlobsDir))
                if (!used.Contains(Path.GetFileName(f))) File.Delete(f);
        }
    }

    /// <summary>At start: drops the refs of images that are gone (a crash between the two) and the blobs nothing
    /// uses.</summary>
    void RecoverBlobs(HashSet<string> knownImages)
    {
        if (Directory.Exists(RefsDir))
            foreach (var f in Directory.EnumerateFiles(RefsDir))
                if (!knownImages.Contains(Path.GetFileName(f))) File.Delete(f);
        CollectBlobs();
    }

    /// <summary>
    /// For a launch from a registry reference (a name with '/', ':' or '@', which no alias has): the image pulled
    /// before under the normalised reference, or a fresh anonymous pull.
    /// </summary>
    async Task<ImageRecord?> ResolveRegistryAsync(string name, string type, OperationContext? op, CancellationToken ct)
    {
        if (!ImageReference.LooksLikeReference(name)) return null;
        if (!ImageReference.TryParse(name, out var reference, out var error)) throw new InstanceException(error!);
        if (Find(reference!.ToString(), null) is { } found)
            return found.Type == type ? found
                : throw new InstanceException($"image '{name}' is a {found.Type} image and cannot make a {type} " +
                    "instance", 400);
        if (type != InstanceTypes.Container)
            throw new InstanceException($"'{name}' is a registry reference: registry images make containers, not " +
                $"{type}s", 400);
        op?.Progress($"pulling {reference}");
        try { return await PullAsync(reference, null, false, null, op, ct); }
        catch (RegistryException e) { throw new InstanceException(e.Message, e.Status); }
    }
}
