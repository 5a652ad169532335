using System.Formats.Tar;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using Hull.TestSupport;
using Xunit;
using static Hull.TestSupport.RegistryTestUtil;

namespace Hull.Daemon.Tests;

/// <summary>
/// Hostile image layers through hulld: layer 1 plants symlinks out of the root (absolute, and relative with ".."),
/// layer 2 writes a file through them, whites out and opaque-whites out host files through them, and hard-links a
/// host file. Imported as an OCI layout and pulled from a loopback registry, the image is made with everything
/// confined to its rootfs: the sentinel directory outside Hull's dirs is as it was. A tar bomb over the configured
/// limit fails with a 413 naming the limit and leaves nothing in the images directory.
/// </summary>
public sealed class HostileLayerTests
{
    /// <summary>A sentinel dir outside the state dir: two files and a subdirectory, which the layers aim at.</summary>
    static string MakeSentinel(TestDaemon d)
    {
        var s = Path.Combine(d.Dir, "sentinel");
        Directory.CreateDirectory(Path.Combine(s, "sub"));
        File.WriteAllText(Path.Combine(s, "keep"), "host file\n");
        File.WriteAllText(Path.Combine(s, "sub", "keep"), "host sub file\n");
        return s;
    }

    static string Snapshot(string dir)
    {
        var sb = new StringBuilder();
        var all = Directory.EnumerateFileSystemEntries(dir, "*", SearchOption.AllDirectories);
        foreach (var p in all.Order(StringComparer.Ordinal))
        {
            var kind = File.Exists(p) ? Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(p))) : "dir";
            sb.Append(p).Append(' ').Append(kind).Append('\n');
        }
        return sb.ToString();
    }

    static byte[] GzipTar(params TarEntry[] entries)
    {
        var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Fastest, leaveOpen: true))
        using (var w = new TarWriter(gz, TarEntryFormat.Pax, leaveOpen: true))
            foreach (var e in entries) w.WriteEntry(e);
        return ms.ToArray();
    }

    static TarEntry FileEntry(string name, byte[] data, int mode = 0b110_100_100) =>
        new PaxTarEntry(TarEntryType.RegularFile, name)
        {
            DataStream = new MemoryStream(data), Mode = (UnixFileMode)mode,
        };

    static TarEntry Symlink(string name, string target) =>
        new PaxTarEntry(TarEntryType.SymbolicLink, name) { LinkName = target };

    /// <summary>Writes an OCI layout (tag <paramref name="tag"/>) of gzip layers, as skopeo reads it.</summary>
    static string WriteLayout(string dir, string tag, params byte[][] layers)
    {
        var blobs = Path.Combine(dir, "blobs", "sha256");
        Directory.CreateDirectory(blobs);
        JsonObject Blob(byte[] data, string mediaType)
        {
            var hex = Convert.ToHexStringLower(SHA256.HashData(data));
            File.WriteAllBytes(Path.Combine(blobs, hex), data);
            return new JsonObject { ["mediaType"] = mediaType, ["digest"] = "sha256:" + hex, ["size"] = data.Length };
        }
        var diffIds = new JsonArray();
        foreach (var l in layers)
        {
            using var raw = new MemoryStream();
            using (var gz = new GZipStream(new MemoryStream(l), CompressionMode.Decompress)) gz.CopyTo(raw);
            diffIds.Add((JsonNode)("sha256:" + Convert.ToHexStringLower(SHA256.HashData(raw.ToArray()))));
        }
        var config = new JsonObject
        {
            ["architecture"] = "amd64", ["os"] = "linux", ["config"] = new JsonObject(),
            ["rootfs"] = new JsonObject { ["type"] = "layers", ["diff_ids"] = diffIds },
        };
        var manifest = new JsonObject
        {
            ["schemaVersion"] = 2, ["mediaType"] = "application/vnd.oci.image.manifest.v1+json",
            ["config"] = Blob(Encoding.UTF8.GetBytes(config.ToJsonString()),
                "application/vnd.oci.image.config.v1+json"),
            ["layers"] = new JsonArray(
                layers.Select(l => (JsonNode)Blob(l, "application/vnd.oci.image.layer.v1.tar+gzip")).ToArray()),
        };
        var m = Blob(Encoding.UTF8.GetBytes(manifest.ToJsonString()), "application/vnd.oci.image.manifest.v1+json");
        m["annotations"] = new JsonObject { ["org.opencontainers.image.ref.name"] = tag };
        File.WriteAllText(Path.Combine(dir, "oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}");
        var index = new JsonObject { ["schemaVersion"] = 2, ["manifests"] = new JsonArray(m) };
        File.WriteAllText(Path.Combine(dir, "index.json"), index.ToJsonString());
        return dir;
    }

    /// <summary>The hostile image: busybox and symlinks in layer 1, writes and whiteouts through them in 2.</summary>
    static string HostileLayout(string dir, string sentinel)
    {
        var relative = string.Concat(Enumerable.Repeat("../", 16)) + sentinel.TrimStart('/');
        var l1 = GzipTar(
            FileEntry("bin/busybox", File.ReadAllBytes("/bin/busybox"), 0b111_101_101), Symlink("bin/sh", "busybox"),
            Symlink("evil", sentinel), Symlink("rel", relative));
        var l2 = GzipTar(
            FileEntry("evil/planted", "written through an absolute symlink\n"u8.ToArray()),
            FileEntry("rel/planted-rel", "written through a relative symlink\n"u8.ToArray()),
            FileEntry("evil/.wh.keep", []),
            FileEntry("rel/sub/.wh..wh..opq", []),
            FileEntry("../../../../escaped", "a .. entry name\n"u8.ToArray()));
        return WriteLayout(Path.Combine(dir, "evil-layout"), "evil", l1, l2);
    }

    static string ImageRootfs(TestDaemon d, string fingerprint) =>
        Path.Combine(d.StateDir, "images", fingerprint, "rootfs");

    void AssertConfined(TestDaemon d, string sentinel, string before, string fingerprint)
    {
        Assert.Equal(before, Snapshot(sentinel));
        Assert.False(File.Exists(Path.Combine(d.Dir, "escaped")));
        Assert.False(File.Exists("/escaped"));
        // What the layers aimed outside landed inside the image's rootfs, where the symlinks resolve as in a container.
        var inRoot = Path.Combine(ImageRootfs(d, fingerprint), sentinel.TrimStart('/'));
        Assert.True(File.Exists(Path.Combine(inRoot, "planted")));
        Assert.True(File.Exists(Path.Combine(inRoot, "planted-rel")));
        Assert.True(File.Exists(Path.Combine(ImageRootfs(d, fingerprint), "escaped")));
    }

    [SkippableFact]
    public async Task Hostile_layers_imported_as_an_OCI_layout_stay_in_the_rootfs()
    {
        using var d = new TestDaemon();
        var sentinel = MakeSentinel(d);
        var before = Snapshot(sentinel);
        var layout = HostileLayout(d.Dir, sentinel);

        var r = d.Cli("image", "import", layout, "--alias", "evil");
        Assert.Equal(before, Snapshot(sentinel));
        Assert.True(r.Code == 0, r.Err + r.Out);
        var img = await d.Client.GetImageAsync("evil");
        AssertConfined(d, sentinel, before, img.Fingerprint);
        Assert.Equal(0, d.Cli("launch", "evil", "c1").Code);
        Assert.Equal(before, Snapshot(sentinel));
        await d.Client.DeleteInstanceAsync("c1", force: true);
    }

    [SkippableFact]
    public async Task Hostile_layers_pulled_from_a_registry_stay_in_the_rootfs()
    {
        Requires.Program("docker-registry");
        Requires.Program("skopeo");
        using var d = new TestDaemon();
        var sentinel = MakeSentinel(d);
        var before = Snapshot(sentinel);
        var layout = HostileLayout(d.Dir, sentinel);
        using var reg = new DockerRegistry(Path.Combine(d.Dir, "registry"));
        Push(layout, "evil", $"{reg.Host}/evil");

        var r = d.Cli("launch", $"{reg.Host}/evil", "c1");
        Assert.Equal(before, Snapshot(sentinel));
        Assert.True(r.Code == 0, r.Err + r.Out + reg.Log);
        var img = await d.Client.GetImageAsync($"{reg.Host}/evil:latest");
        AssertConfined(d, sentinel, before, img.Fingerprint);
        await d.Client.DeleteInstanceAsync("c1", force: true);
    }

    [SkippableFact]
    public async Task A_tar_bomb_over_the_limit_fails_with_413_and_leaves_nothing()
    {
        using var d = new TestDaemon(extraArgs: ["--max-image-size", "64MiB"]);
        // 200 MiB of one repeated byte: a gzip layer of about 200 KiB.
        var big = new byte[200 << 20];
        Array.Fill(big, (byte)'A');
        var layout = WriteLayout(Path.Combine(d.Dir, "bomb-layout"), "bomb", GzipTar(FileEntry("bomb", big)));
        var tarball = Path.Combine(d.Dir, "bomb.tar.gz");
        File.WriteAllBytes(tarball, GzipTar(FileEntry("bin/bomb", big)));
        var imagesDir = Path.Combine(d.StateDir, "images");
        var entriesBefore = Directory.EnumerateFileSystemEntries(imagesDir).Order().ToList();

        foreach (var source in new[] { layout, tarball })
        {
            var r = d.Cli("image", "import", source, "--alias", "bomb");
            Assert.NotEqual(0, r.Code);
            Assert.Contains("the image unpacks to more than 64.0 MiB", r.Err);
            Assert.Contains("--max-image-size", r.Err);
            Assert.Equal(entriesBefore, Directory.EnumerateFileSystemEntries(imagesDir).Order().ToList());
        }
        var ex = await Assert.ThrowsAnyAsync<Exception>(() => d.Client.GetImageAsync("bomb"));
        Assert.Contains("not found", ex.Message);
        Assert.Empty(await d.Client.ListImagesAsync());
    }
}
