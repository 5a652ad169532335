using System.Security.Cryptography;
using System.Text.Json;
using Hull.Instances;

namespace Hull.Daemon;

/// <summary>
/// Flattens an OCI image layout (as skopeo and umoci write it: oci-layout, index.json, blobs/sha256/...) into a root
/// filesystem: picks the manifest (by ref name, or the only one; linux/amd64 from an image index), checks every blob
/// against its digest, and applies the layers in order, honouring whiteouts (.wh.NAME removes NAME from the layers
/// below, .wh..wh..opq hides everything below in that directory).
/// </summary>
public static class OciLayout
{
    const string RefAnnotation = "org.opencontainers.image.ref.name";

    public static async Task FlattenAsync(string layout, string? reference, string rootfs, OperationContext? op, CancellationToken ct)
    {
        if (!File.Exists(Path.Combine(layout, "oci-layout")) || !File.Exists(Path.Combine(layout, "index.json")))
            throw new InstanceException("this is not an OCI image layout (oci-layout and index.json are missing): give a directory written by skopeo or umoci");
        using var index = JsonDocument.Parse(await File.ReadAllBytesAsync(Path.Combine(layout, "index.json"), ct));
        var manifests = index.RootElement.TryGetProperty("manifests", out var m) ? m.EnumerateArray().ToList() : [];
        string Ref(JsonElement e) => e.TryGetProperty("annotations", out var a) && a.TryGetProperty(RefAnnotation, out var r) ? r.GetString() ?? "" : "";
        JsonElement chosen;
        if (reference is not null)
        {
            var match = manifests.Where(x => Ref(x) == reference).ToList();
            if (match.Count == 0)
                throw new InstanceException($"the OCI layout has no image tagged '{reference}': its tags are {string.Join(", ", manifests.Select(Ref).Where(r => r.Length > 0).DefaultIfEmpty("(none)"))}", 404);
            chosen = match[0];
        }
        else if (manifests.Count == 1) chosen = manifests[0];
        else throw new InstanceException($"the OCI layout holds {manifests.Count} images: choose one with --ref ({string.Join(", ", manifests.Select(Ref).Where(r => r.Length > 0))})");

        var manifest = await ReadManifestAsync(layout, chosen, ct);
        using (manifest)
        {
            var layers = manifest.RootElement.GetProperty("layers").EnumerateArray().ToList();
            Directory.CreateDirectory(rootfs);
            for (var i = 0; i < layers.Count; i++)
            {
                op?.Progress($"applying layer {i + 1} of {layers.Count}");
                var blob = await VerifiedBlobAsync(layout, layers[i], ct);
                var plain = Path.Combine(Path.GetDirectoryName(rootfs)!, "layer.tar");
                await DecompressAsync(blob, plain, ct);
                try { await ApplyLayerAsync(plain, rootfs, ct); }
                finally { File.Delete(plain); }
            }
        }
    }

    static async Task<JsonDocument> ReadManifestAsync(string layout, JsonElement descriptor, CancellationToken ct)
    {
        for (var depth = 0; depth < 4; depth++)
        {
            var path = await VerifiedBlobAsync(layout, descriptor, ct);
            var doc = JsonDocument.Parse(await File.ReadAllBytesAsync(path, ct));
            var mediaType = doc.RootElement.TryGetProperty("mediaType", out var mt) ? mt.GetString() : null;
            if (doc.RootElement.TryGetProperty("layers", out _)) return doc;
            if (!doc.RootElement.TryGetProperty("manifests", out var list))
            {
                doc.Dispose();
                throw new InstanceException($"the OCI manifest has an unknown media type '{mediaType}': expected an image manifest or index");
            }
            // An image index: take linux/amd64.
            JsonElement? next = null;
            foreach (var e in list.EnumerateArray())
                if (e.TryGetProperty("platform", out var p) && p.GetProperty("os").GetString() == "linux" && p.GetProperty("architecture").GetString() == "amd64")
                { next = e.Clone(); break; }
            doc.Dispose();
            descriptor = next ?? throw new InstanceException("the OCI image index has no linux/amd64 image");
        }
        throw new InstanceException("the OCI image indexes nest too deeply");
    }

    static async Task<string> VerifiedBlobAsync(string layout, JsonElement descriptor, CancellationToken ct)
    {
        var digest = descriptor.GetProperty("digest").GetString() ?? "";
        if (!digest.StartsWith("sha256:", StringComparison.Ordinal) || digest.Length != 71 || !digest[7..].All(Uri.IsHexDigit))
            throw new InstanceException($"the OCI layout uses an unsupported digest '{digest}': only sha256 is supported");
        var path = Path.Combine(layout, "blobs", "sha256", digest[7..]);
        if (!File.Exists(path)) throw new InstanceException($"the OCI layout is missing blob {digest}");
        await using var f = File.OpenRead(path);
        var actual = "sha256:" + Convert.ToHexStringLower(await SHA256.HashDataAsync(f, ct));
        if (actual != digest) throw new InstanceException($"blob {digest} of the OCI layout is corrupt (its content hashes to {actual})");
        return path;
    }

    /// <summary>Writes the layer as a plain tarball (gzip and zstd are undone), padded with zero blocks: some writers end a
    /// layer right after the last file's data, which GNU tar calls an unexpected EOF.</summary>
    static async Task DecompressAsync(string blob, string plain, CancellationToken ct)
    {
        var magic = new byte[4];
        await using (var f = File.OpenRead(blob)) await f.ReadAtLeastAsync(magic, 4, throwOnEndOfStream: false, ct);
        if (magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd)
        {
            var (rc, err) = await Files.RunAsync("zstd", ["-q", "-d", "-f", blob, "-o", plain], ct);
            if (rc != 0) throw new InstanceException($"a zstd OCI layer could not be decompressed (install zstd): {err.Trim()}");
        }
        else
        {
            await using var input = File.OpenRead(blob);
            await using var output = File.Create(plain);
            if (magic[0] == 0x1f && magic[1] == 0x8b)
            {
                await using var gz = new System.IO.Compression.GZipStream(input, System.IO.Compression.CompressionMode.Decompress);
                await gz.CopyToAsync(output, ct);
            }
            else await input.CopyToAsync(output, ct);
        }
        await using (var o = new FileStream(plain, FileMode.Append))
        {
            var pad = (int)((512 - o.Length % 512) % 512) + 1024;
            await o.WriteAsync(new byte[pad], ct);
        }
    }

    /// <summary>Applies one layer tarball (plain, gzip or zstd): whiteouts first, then the content without the whiteout markers.</summary>
    static async Task ApplyLayerAsync(string blob, string rootfs, CancellationToken ct)
    {
        var (rc, list) = await Files.RunAsync("tar", ["-tf", blob], ct);
        if (rc != 0) throw new InstanceException($"an OCI layer is not a readable tarball: {list.Trim()}");
        foreach (var raw in list.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var entry = raw.StartsWith("./", StringComparison.Ordinal) ? raw[2..] : raw.TrimStart('/');
            var name = Path.GetFileName(entry.TrimEnd('/'));
            if (!name.StartsWith(".wh.", StringComparison.Ordinal)) continue;
            var dir = Path.GetDirectoryName(entry.TrimEnd('/')) ?? "";
            if (dir.Split('/').Contains("..")) throw new InstanceException($"an OCI layer has an unsafe path '{raw}'");
            var hostDir = Path.Combine(rootfs, dir);
            if (name == ".wh..wh..opq")
            {
                if (Directory.Exists(hostDir) && !IsLink(hostDir))
                    foreach (var child in Directory.EnumerateFileSystemEntries(hostDir)) Remove(child);
            }
            else Remove(Path.Combine(hostDir, name[4..]));
        }
        (rc, var err) = await Files.RunAsync("tar", ["--numeric-owner", "-xpf", blob, "-C", rootfs, "--exclude=.wh.*"], ct);
        if (rc != 0) throw new InstanceException($"unpacking an OCI layer failed: {err.Trim()}");
    }

    static bool IsLink(string p) => new FileInfo(p).LinkTarget is not null;

    static void Remove(string path)
    {
        if (IsLink(path) || File.Exists(path)) File.Delete(path);
        else if (Directory.Exists(path)) Files.RemoveTree(path);
    }
}
