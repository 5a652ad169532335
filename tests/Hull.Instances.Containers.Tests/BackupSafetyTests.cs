using System.Formats.Tar;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using Hull.Sdk;
using Xunit;

namespace Hull.Instances.Containers.Tests;

/// <summary>
/// Hostile instance backups through a real hulld: each is a genuine `hull export` with one member made hostile (a
/// symlink, hard link or device where Hull keeps its own files, a name outside instance/, a snapshot named "../..").
/// The import must be refused naming the member, and nothing outside Hull's dirs may be written, removed or mounted,
/// even after the attack's follow-up (start, exec, snapshot restore and delete, instance delete), which is what
/// the unfixed hulld did with each of them.
/// </summary>
public sealed class BackupSafetyTests
{
    public static TheoryData<string> Variants => new()
    {
        "lower-abs", "lower-rel", "upper-abs", "upper-rel", "rootfs-abs", "rootfs-rel", "work-abs", "console-abs",
        "config-abs", "snapshots-abs", "snapshots-rel", "snapshot-name", "outside", "dotdot-member", "hardlink-host",
        "hardlink-lower", "device-console", "symlink-parent",
    };

    [SkippableTheory]
    [MemberData(nameof(Variants))]
    public async Task Hostile_backup_is_refused_and_touches_nothing_outside(string variant)
    {
        using var a = new ContainerDaemon();
        // The host paths the attack aims at.
        var sentinel = Path.Combine(a.Dir, "sentinel");
        Directory.CreateDirectory(Path.Combine(sentinel, "s1", "upper", "root"));
        File.WriteAllText(Path.Combine(sentinel, "file"), "sentinel\n");
        File.WriteAllText(Path.Combine(sentinel, "s1", "upper", "root", "host-secret"), "host secret\n");
        Directory.CreateDirectory(Path.Combine(sentinel, "victim"));
        File.WriteAllText(Path.Combine(sentinel, "victim", "keep"), "keep\n");

        await a.Client.LaunchAsync("busybox", "src");
        await a.Client.CreateSnapshotAsync("src", "s1");
        await a.Client.StopAsync("src", force: true);
        // overlayfs's random binary uuid xattr: TarReader (which rewrites the backup below) refuses some of its values.
        foreach (var dir in new[] { "upper", "snapshots/s1/upper" })
            lremovexattr(Path.Combine(a.StateDir, "instances", "src", dir), "trusted.overlay.uuid");
        var genuine = Path.Combine(a.Dir, "genuine.tar");
        Ok(a.Cli("export", "src", genuine), "export");

        var instances = Path.Combine(a.StateDir, "instances");
        var instDir = Path.Combine(instances, "evil");
        string Rel(string from, string to) => Path.GetRelativePath(from, to);
        var (bad, expect) = variant switch
        {
            "lower-abs" => (Rewrite(genuine, "instance/lower", Link("instance/lower", Path.Combine(sentinel, "file"))),
                "instance/lower"),
            "lower-rel" => (Rewrite(genuine, "instance/lower",
                Link("instance/lower", Rel(instDir, Path.Combine(sentinel, "file")))), "instance/lower"),
            "upper-abs" => (Rewrite(genuine, "instance/upper", Link("instance/upper", sentinel)), "instance/upper"),
            "upper-rel" => (Rewrite(genuine, "instance/upper", Link("instance/upper", Rel(instDir, sentinel))),
                "instance/upper"),
            "rootfs-abs" => (Rewrite(genuine, null, Link("instance/rootfs", Path.Combine(sentinel, "victim"))),
                "instance/rootfs"),
            "rootfs-rel" => (Rewrite(genuine, null,
                Link("instance/rootfs", Rel(instDir, Path.Combine(sentinel, "victim")))), "instance/rootfs"),
            "work-abs" => (Rewrite(genuine, null, Link("instance/work", Path.Combine(sentinel, "victim"))),
                "instance/work"),
            "console-abs" => (Rewrite(genuine, "instance/console.log",
                Link("instance/console.log", Path.Combine(sentinel, "file"))), "instance/console.log"),
            "config-abs" => (Rewrite(genuine, null, Link("instance/config.json", Path.Combine(sentinel, "file"))),
                "instance/config.json"),
            "snapshots-abs" => (Rewrite(genuine, "instance/snapshots", Link("instance/snapshots", sentinel)),
                "instance/snapshots"),
            "snapshots-rel" => (Rewrite(genuine, "instance/snapshots",
                Link("instance/snapshots", Rel(instDir, sentinel))), "instance/snapshots"),
            "snapshot-name" => (Rewrite(genuine, null,
                index: Rel(Path.Combine(instDir, "snapshots"), Path.Combine(sentinel, "victim"))), "snapshot name"),
            "outside" => (Rewrite(genuine, null, Member("etc/cron.d/evil", "* * * * * root touch /tmp/pwned\n")),
                "etc/cron.d/evil"),
            "dotdot-member" => (Rewrite(genuine, null, Member("instance/../../../../evil", "x")),
                "instance/../../../../evil"),
            "hardlink-host" => (Rewrite(genuine, null,
                HardLink("instance/upper/stolen", Path.Combine(sentinel, "file"))),
                "hard link 'instance/upper/stolen'"),
            "hardlink-lower" => (Rewrite(genuine, "instance/lower",
                Member("instance/upper/lower-data", ReadMember(genuine, "instance/lower")),
                HardLink("instance/lower", "instance/upper/lower-data")), "instance/lower"),
            "device-console" => (Rewrite(genuine, "instance/console.log", Device("instance/console.log", 1, 3)),
                "instance/console.log"),
            // A symlink in the container's layer, then a member written through it.
            "symlink-parent" => (Rewrite(genuine, null, Link("instance/upper/escape", sentinel),
                Member("instance/upper/escape/file", "overwritten\n")),
                "lies under 'instance/upper/escape', which is a symlink"),
            _ => throw new ArgumentException(variant),
        };
        var path = Path.Combine(a.Dir, "bad.tar");
        File.WriteAllBytes(path, bad);

        var before = Tree(sentinel);
        var mountsBefore = Mounts(a.Dir);
        var r = a.Cli("import", path, "evil");
        // What the unfixed hulld let the attack go on to do with an imported instance.
        if (r.Code == 0)
        {
            await Try(() => a.Client.StartAsync("evil"));
            await Try(() => a.Client.ExecAsync("evil", "sh", "-c",
                "echo pwned > /pwned; echo pwned > /root/host-secret"));
            await Try(() => a.Client.StopAsync("evil", force: true));
            foreach (var s in await a.Client.ListSnapshotsAsync("evil"))
            {
                await Try(() => a.Client.RestoreSnapshotAsync("evil", s.Name));
                await Try(() => a.Client.DeleteSnapshotAsync("evil", s.Name));
            }
            await Try(() => a.Client.DeleteInstanceAsync("evil", force: true));
        }
        var mountsAfter = Mounts(a.Dir);
        foreach (var m in mountsAfter.Except(mountsBefore)) Hull.Linux.Libc.umount2(m.Split(' ')[4], 2);

        Assert.Equal(before, Tree(sentinel));
        Assert.Equal(mountsBefore, mountsAfter);
        Assert.True(r.Code == 1, $"the import of a backup with a hostile {variant} succeeded: {r.Out}");
        Assert.Contains(expect, r.Err);
        Assert.Equal(["src"], (await a.Client.ListInstancesAsync()).Select(i => i.Name));
        Assert.Equal(["src"], Directory.EnumerateFileSystemEntries(instances).Select(Path.GetFileName).ToList());
        Assert.False(File.Exists("/etc/cron.d/evil"));
    }

    // ---- hostile archives, made from a genuine export ----

    static TarEntry Link(string name, string target) =>
        new PaxTarEntry(TarEntryType.SymbolicLink, name) { LinkName = target };
    static TarEntry HardLink(string name, string target) =>
        new PaxTarEntry(TarEntryType.HardLink, name) { LinkName = target };
    static TarEntry Device(string name, int major, int minor) =>
        new PaxTarEntry(TarEntryType.CharacterDevice, name) { DeviceMajor = major, DeviceMinor = minor,
            Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite };
    static TarEntry Member(string name, string text) =>
        new PaxTarEntry(TarEntryType.RegularFile, name) { DataStream = new MemoryStream(Encoding.UTF8.GetBytes(text)) };

    /// <summary>The genuine backup without <paramref name="drop"/> (and what lies under it), with
    /// <paramref name="add"/>
    /// appended; <paramref name="index"/> renames its snapshot in backup.json.</summary>
    static byte[] Rewrite(string genuine, string? drop, params TarEntry[] add) => Rewrite(genuine, drop, null, add);

    static byte[] Rewrite(string genuine, string? drop, string? index, params TarEntry[] add)
    {
        var o = new MemoryStream();
        using (var w = new TarWriter(o, TarEntryFormat.Pax, leaveOpen: true))
        {
            using var f = File.OpenRead(genuine);
            using var rd = new TarReader(f);
            while (rd.GetNextEntry(copyData: true) is { } e)
            {
                var n = e.Name.TrimEnd('/');
                if (drop is not null && (n == drop || n.StartsWith(drop + "/", StringComparison.Ordinal))) continue;
                if (index is not null && n == "backup.json")
                {
                    var j = JsonNode.Parse(e.DataStream!)!;
                    j["snapshots"]![0]!["name"] = index;
                    e.DataStream = new MemoryStream(Encoding.UTF8.GetBytes(j.ToJsonString()));
                }
                w.WriteEntry(e);
            }
            foreach (var e in add) w.WriteEntry(e);
        }
        return o.ToArray();
    }

    static string ReadMember(string tarball, string name)
    {
        using var f = File.OpenRead(tarball);
        using var rd = new TarReader(f);
        while (rd.GetNextEntry(copyData: true) is { } e)
            if (e.Name == name) return new StreamReader(e.DataStream!).ReadToEnd();
        throw new InvalidOperationException($"{name} is not in {tarball}");
    }

    // ---- what the attack could change ----

    /// <summary>Every entry below <paramref name="dir"/> (not following links): kind, size, content hash.</summary>
    static List<string> Tree(string dir)
    {
        var list = new List<string>();
        foreach (var p in BackupRoundTripTests.Walk(dir).Order(StringComparer.Ordinal))
        {
            var fi = new FileInfo(p);
            var kind = fi.LinkTarget is { } t ? "link " + t : fi.Attributes.HasFlag(FileAttributes.Directory) ? "dir"
                : "file " + Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(p)));
            list.Add($"{Path.GetRelativePath(dir, p)} {kind}");
        }
        return list;
    }

    static List<string> Mounts(string under) =>
        File.ReadAllLines("/proc/self/mountinfo").Where(l =>
            l.Split(' ')[4].StartsWith(under, StringComparison.Ordinal)).ToList();

    static async Task Try(Func<Task> f)
    {
        try { await f(); } catch (Exception) { }
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    static extern int lremovexattr(string path, string name);

    static void Ok((int Code, string Out, string Err) r, string what) =>
        Assert.True(r.Code == 0, $"{what} failed ({r.Code}): {r.Out} {r.Err}");
}
