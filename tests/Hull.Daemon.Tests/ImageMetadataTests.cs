using System.Diagnostics;
using System.Text;
using Hull.Api;
using Hull.Instances;
using Hull.Sdk;
using Xunit;

namespace Hull.Daemon.Tests;

/// <summary>Incus/LXD image metadata: the metadata.yaml reader, and unified images (metadata.yaml and rootfs/)
/// imported as a tarball or a directory.</summary>
public sealed class ImageMetadataTests
{
    const string Incus = """
        architecture: x86_64
        creation_date: 1701561600 # 2023-12-03
        expiry_date: 0
        properties:
          architecture: amd64
          description: "Debian bookworm amd64 (\"minbase\")"
          os: Debian
          release: bookworm 12
          variant: 'it''s default'
        templates:
          /etc/hostname:
            when:
              - create
            template: hostname.tpl
        """;

    [Fact]
    public void Reads_the_architecture_and_the_properties_and_skips_other_blocks()
    {
        var m = ImageMetadata.Parse(Incus);
        Assert.Equal("x86_64", m.Architecture);
        Assert.Equal("Debian", m.Properties["os"]);
        Assert.Equal("bookworm 12", m.Properties["release"]);
        Assert.Equal("Debian bookworm amd64 (\"minbase\")", m.Properties["description"]);
        Assert.Equal("it's default", m.Properties["variant"]);
        Assert.Equal(5, m.Properties.Count);
    }

    [Theory]
    [InlineData("properties:\n  os: [Debian]\n", "line 2")]
    [InlineData("properties:\n  os: Debian\n    release: 12\n", "line 3")]
    [InlineData("properties:\n\tos: Debian\n", "tab")]
    [InlineData("properties: Debian\n", "line 1")]
    [InlineData("  os: Debian\n", "no key above")]
    [InlineData("properties:\n  os: \"Debian\n", "does not end")]
    [InlineData("- architecture\n", "line 1")]
    public void Refuses_what_it_does_not_read_naming_the_line(string yaml, string expected)
    {
        var e = Assert.Throws<InstanceException>(() => ImageMetadata.Parse(yaml));
        Assert.Contains(expected, e.Message);
        Assert.Contains("metadata.yaml", e.Message);
    }

    static void Tar(string dir, string tar)
    {
        using var p = Process.Start("tar", ["--numeric-owner", "-C", dir, "-cf", tar, "."])!;
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
    }

    /// <summary>A unified image's directory: busybox as its rootfs, and <paramref name="metadata"/>.</summary>
    static string ImageDir(string parent, string? metadata)
    {
        var dir = Path.Combine(parent, "img-" + Guid.NewGuid().ToString("N")[..8]);
        var root = Path.Combine(dir, "rootfs");
        Directory.CreateDirectory(Path.Combine(root, "bin"));
        File.Copy("/bin/busybox", Path.Combine(root, "bin", "busybox"));
        File.CreateSymbolicLink(Path.Combine(root, "bin", "sh"), "busybox");
        if (metadata is not null) File.WriteAllText(Path.Combine(dir, "metadata.yaml"), metadata);
        return dir;
    }

    [SkippableFact]
    public async Task A_unified_image_tarball_or_directory_gets_its_properties_and_its_rootfs()
    {
        using var d = new TestDaemon();
        var c = d.Client;
        var dir = ImageDir(d.Dir, Incus);
        var tar = Path.Combine(d.Dir, "unified.tar");
        Tar(dir, tar);
        Image img;
        await using (var f = File.OpenRead(tar)) img = await c.ImportImageAsync(f, alias: "deb");
        Assert.Equal("Debian", img.Properties["os"]);
        Assert.Equal("bookworm 12", img.Properties["release"]);
        Assert.Equal("Debian bookworm amd64 (\"minbase\")", img.Description);
        // The image's root filesystem is rootfs/ (not the tarball's top).
        var rootfs = Path.Combine(d.StateDir, "images", img.Fingerprint, "rootfs");
        Assert.True(File.Exists(Path.Combine(rootfs, "bin", "busybox")));
        Assert.False(File.Exists(Path.Combine(rootfs, "metadata.yaml")));
        Assert.Equal("bookworm 12", (await c.GetImageAsync("deb")).Properties["release"]);

        // hull image import DIR (metadata.yaml and rootfs/): the same, and hull image list shows os and release.
        File.AppendAllText(Path.Combine(dir, "rootfs", "marker"), "x");
        var r = d.Cli("image", "import", dir, "--alias", "deb-dir");
        Assert.True(r.Code == 0, r.Err);
        var list = d.Cli("image", "list");
        Assert.Matches(@"\| deb-dir +\| \S+ +\| container +\| Debian +\| bookworm 12 +\|", list.Out);

        // Another architecture is refused, saying which.
        var arm = ImageDir(d.Dir, "architecture: riscv64\nproperties:\n  os: Debian\n");
        var armTar = Path.Combine(d.Dir, "arm.tar");
        Tar(arm, armTar);
        await using (var f = File.OpenRead(armTar))
        {
            var e = await Assert.ThrowsAsync<HullException>(() => c.ImportImageAsync(f));
            Assert.Contains("architecture riscv64", e.Message);
        }
    }

    /// <summary>The upload's metadata.yaml is read without following a link: a symlink to a host file (read by hulld
    /// as root) makes a plain root filesystem, and nothing of the host file shows.</summary>
    [SkippableFact]
    public async Task A_metadata_yaml_that_is_a_symlink_to_a_host_file_is_not_read()
    {
        using var d = new TestDaemon();
        var secret = Path.Combine(d.Dir, "host-secret.yaml");
        File.WriteAllText(secret, "properties:\n  os: HOST-SECRET\n");
        var dir = ImageDir(d.Dir, null);
        File.CreateSymbolicLink(Path.Combine(dir, "metadata.yaml"), secret);
        var tar = Path.Combine(d.Dir, "hostile.tar");
        Tar(dir, tar);
        Image img;
        await using (var f = File.OpenRead(tar)) img = await d.Client.ImportImageAsync(f, alias: "hostile");
        Assert.Empty(img.Properties);
        Assert.DoesNotContain("HOST-SECRET", d.Cli("image", "list").Out);
    }
}
