using System.Security.Cryptography;
using System.Text.Json;
using Hull.Api;
using Hull.Instances;
using Hull.Linux;
using Microsoft.Win32.SafeHandles;

namespace Hull.Daemon;

/// <summary>
/// Flattens an OCI image layout (as skopeo and umoci write it: oci-layout, index.json, blobs/sha256/...) into a root
/// filesystem: picks the manifest (by ref name, or the only one; linux/amd64 from an image index), checks every blob
/// against its digest, and applies the layers in order, honouring whiteouts (.wh.NAME removes NAME from the layers
/// below, .wh..wh..opq hides everything below in that directory). Layers are unpacked by <see cref="ImageUnpack"/>:
/// whatever a layer holds (symlinks out of the root from an earlier layer, "..", hard links to host paths) stays inside
/// the rootfs, and the image as a whole stays within hulld's <see cref="ImageLimits"/>. The layout's own files are
/// opened with openat2 RESOLVE_IN_ROOT, so a symlink in an uploaded layout never reads a host file. The image's run
/// settings (its config blob's "config": Entrypoint, Cmd, Env...) are returned for the image store to keep.
/// </summary>
public static class OciLayout
{
    const string RefAnnotation = "org.opencontainers.image.ref.name";

    public static async Task<ImageRunConfig?> FlattenAsync(string layout, string? reference, string rootfs,
        ImageLimits limits, OperationContext? op, CancellationToken ct)
    {
        using var layoutFd = Sys.Open(layout, O.RDONLY | O.DIRECTORY);
        if (!LayoutFileExists(layoutFd, "oci-layout") || !LayoutFileExists(layoutFd, "index.json"))
            throw new InstanceException("this is not an OCI image layout (oci-layout and index.json are missing): " +
                "give a directory written by skopeo or umoci");
        using var index = JsonDocument.Parse(await ReadLayoutFileAsync(layoutFd, "index.json", ct));
        var manifests = index.RootElement.TryGetProperty("manifests", out var m) ? m.EnumerateArray().ToList() : [];
        string Ref(JsonElement e) => e.TryGetProperty("annotations", out var a)
            && a.TryGetProperty(RefAnnotation, out var r) ? r.GetString() ?? "" : "";
        JsonElement chosen;
        if (reference is not null)
        {
            var match = manifests.Where(x => Ref(x) == reference).ToList();
            if (match.Count == 0)
                throw new InstanceException($"the OCI layout has no image tagged '{reference}': its tags are " +
                    $"{string.Join(", ", manifests.Select(Ref).Where(r => r.Length > 0).DefaultIfEmpty("(none)"))}",
                    404);
            chosen = match[0];
        }
        else if (manifests.Count == 1) chosen = manifests[0];
        else throw new InstanceException($"the OCI layout holds {manifests.Count} images: choose one with --ref " +
            $"({string.Join(", ", manifests.Select(Ref).Where(r => r.Length > 0))})");

        var manifest = await ReadManifestAsync(layoutFd, chosen, ct);
        using (manifest)
        {
            var run = manifest.RootElement.TryGetProperty("config", out var configDescriptor)
                ? await ReadRunConfigAsync(layoutFd, configDescriptor, ct) : null;
            var layers = manifest.RootElement.GetProperty("layers").EnumerateArray().ToList();
            Directory.CreateDirectory(rootfs);
            var used = new RootedTarResult();
            for (var i = 0; i < layers.Count; i++)
            {
                op?.Progress($"applying layer {i + 1} of {layers.Count}");
                // Unpacked from the fd that was hashed: the bytes applied are the bytes verified.
                await using var blob = await VerifiedBlobAsync(layoutFd, layers[i], ct);
                try
                {
                    var r = await ImageUnpack.ExtractAsync(blob, rootfs, limits.Options(used, whiteouts: true),
                        $"layer {i + 1} of {layers.Count} ({layers[i].GetProperty("digest").GetString()})", ct);
                    used = new RootedTarResult(used.Bytes + r.Bytes, used.Entries + r.Entries, 0);
                }
                catch (RootedTarLimitException e) { throw limits.TooLarge(e); }
            }
            return run;
        }
    }

    /// <summary>The run settings of the image's config blob (image-spec config.md, "config"); null when it sets
    /// none. Values of the wrong JSON type are an error naming the field, not silently dropped.</summary>
    static async Task<ImageRunConfig?> ReadRunConfigAsync(SafeFd layout, JsonElement descriptor, CancellationToken ct)
    {
        JsonDocument doc;
        await using (var f = await VerifiedBlobAsync(layout, descriptor, ct))
        {
            if (f.Length > 4 << 20)
                throw new InstanceException("the image's config blob is larger than 4 MiB: it is not an image config");
            try { doc = await JsonDocument.ParseAsync(f, cancellationToken: ct); }
            catch (JsonException e)
            {
                throw new InstanceException($"the image's config is not valid JSON ({e.Message})");
            }
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("config", out var c) || c.ValueKind != JsonValueKind.Object)
                return null;
            var run = new ImageRunConfig
            {
                Entrypoint = Strings(c, "Entrypoint"), Cmd = Strings(c, "Cmd"), Env = Strings(c, "Env"),
                WorkingDir = Text(c, "WorkingDir"), User = Text(c, "User"), StopSignal = Text(c, "StopSignal"),
                ExposedPorts = c.TryGetProperty("ExposedPorts", out var ports)
                    && ports.ValueKind == JsonValueKind.Object
                        ? ports.EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal).ToList() : null,
            };
            return run is { Entrypoint: null, Cmd: null, Env: null, WorkingDir: null, User: null, StopSignal: null,
                ExposedPorts: null } ? null : run;
        }
    }

    static List<string>? Strings(JsonElement config, string field)
    {
        if (!config.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.Array || v.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.String))
            throw new InstanceException($"the image config's {field} is not a list of strings: the image is malformed");
        var list = v.EnumerateArray().Select(e => e.GetString()!).ToList();
        if (list.Any(x => x.Contains('\0')))
            throw new InstanceException($"the image config's {field} holds a NUL byte: the image is malformed");
        return list.Count == 0 ? null : list;
    }

    static string? Text(JsonElement config, string field)
    {
        if (!config.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.String)
            throw new InstanceException($"the image config's {field} is not a string: the image is malformed");
        var s = v.GetString()!;
        if (s.Contains('\0'))
            throw new InstanceException($"the image config's {field} holds a NUL byte: the image is malformed");
        return s.Length == 0 ? null : s;
    }

    static bool LayoutFileExists(SafeFd layout, string path)
    {
        if (!RootedFs.TryOpen(layout, path, O.RDONLY, 0, out var fd, out _)) return false;
        fd.Dispose();
        return true;
    }

    /// <summary>Opens a file of the layout: its symlinks resolve inside the layout, never to a host file.</summary>
    static FileStream OpenLayoutFile(SafeFd layout, string path) =>
        new(new SafeFileHandle(RootedFs.Open(layout, path, O.RDONLY).Detach(), ownsHandle: true), FileAccess.Read);

    static async Task<byte[]> ReadLayoutFileAsync(SafeFd layout, string path, CancellationToken ct)
    {
        await using var f = OpenLayoutFile(layout, path);
        if (f.Length > 4 << 20)
            throw new InstanceException($"the OCI layout's {path} is larger than 4 MiB: it is not an image index");
        var ms = new MemoryStream();
        await f.CopyToAsync(ms, ct);
        return ms.ToArray();
    }

    static async Task<JsonDocument> ReadManifestAsync(SafeFd layout, JsonElement descriptor, CancellationToken ct)
    {
        for (var depth = 0; depth < 4; depth++)
        {
            JsonDocument doc;
            await using (var f = await VerifiedBlobAsync(layout, descriptor, ct))
            {
                if (f.Length > 4 << 20)
                    throw new InstanceException("an OCI manifest of the layout is larger than 4 MiB: it is not a " +
                        "manifest");
                doc = await JsonDocument.ParseAsync(f, cancellationToken: ct);
            }
            var mediaType = doc.RootElement.TryGetProperty("mediaType", out var mt) ? mt.GetString() : null;
            if (doc.RootElement.TryGetProperty("layers", out _)) return doc;
            if (!doc.RootElement.TryGetProperty("manifests", out var list))
            {
                doc.Dispose();
                throw new InstanceException($"the OCI manifest has an unknown media type '{mediaType}': expected an " +
                    "image manifest or index");
            }
            // An image index: take linux/amd64.
            JsonElement? next = null;
            foreach (var e in list.EnumerateArray())
                if (e.TryGetProperty("platform", out var p) && p.GetProperty("os").GetString() == "linux"
                    && p.GetProperty("architecture").GetString() == "amd64")
                { next = e.Clone(); break; }
            doc.Dispose();
            descriptor = next ?? throw new InstanceException("the OCI image index has no linux/amd64 image");
        }
        throw new InstanceException("the OCI image indexes nest too deeply");
    }

    static async Task<FileStream> VerifiedBlobAsync(SafeFd layout, JsonElement descriptor, CancellationToken ct)
    {
        var digest = descriptor.GetProperty("digest").GetString() ?? "";
        if (!digest.StartsWith("sha256:", StringComparison.Ordinal) || digest.Length != 71
            || !digest[7..].All(Uri.IsHexDigit))
            throw new InstanceException($"the OCI layout uses an unsupported digest '{digest}': only sha256 is " +
                "supported");
        var path = "blobs/sha256/" + digest[7..];
        if (!LayoutFileExists(layout, path)) throw new InstanceException($"the OCI layout is missing blob {digest}");
        var f = OpenLayoutFile(layout, path);
        try
        {
            var actual = "sha256:" + Convert.ToHexStringLower(await SHA256.HashDataAsync(f, ct));
            if (actual != digest)
                throw new InstanceException($"blob {digest} of the OCI layout is corrupt (its content hashes to " +
                    $"{actual})");
            f.Position = 0;
            return f;
        }
        catch { await f.DisposeAsync(); throw; }
    }
}
