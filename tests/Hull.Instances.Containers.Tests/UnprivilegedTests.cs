using System.Diagnostics;
using System.Text;
using Hull.Api;
using Hull.Linux;
using Hull.Sdk;
using Xunit;

namespace Hull.Instances.Containers.Tests;

/// <summary>Containers are unprivileged by default: a user namespace, idmapped image layers, and the owners the
/// container sees kept through files, snapshots and backups.</summary>
public sealed class UnprivilegedTests
{
    /// <summary>Root's host uid range (its /etc/subuid line, or hulld's documented default
    /// 1000000-1000999999).</summary>
    static (long Start, long End) Uids
    {
        get
        {
            var line = File.Exists("/etc/subuid")
                ? File.ReadLines("/etc/subuid").FirstOrDefault(l => l.StartsWith("root:")) : null;
            if (line is null) return (1_000_000, 1_001_000_000);
            var p = line.Split(':');
            return (long.Parse(p[1]), long.Parse(p[1]) + long.Parse(p[2]));
        }
    }

    static string InstanceDir(ContainerDaemon d, string name) => Path.Combine(d.StateDir, "instances", name);

    static StatxInfo Stat(string path) =>
        GuestSys.TryStat(path, false, out var st, out var e) ? st : throw new IOException($"stat {path}: errno {e}");

    /// <summary>The first host uid of the container's map, from its /proc/self/uid_map ("0 BASE SIZE").</summary>
    static async Task<(long Base, long Size, string Text)> UidMap(HullClient c, string name)
    {
        var r = await c.ExecAsync(name, "cat", "/proc/self/uid_map");
        Assert.Equal(0, r.ExitCode);
        var p = r.Stdout.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return (long.Parse(p[1]), long.Parse(p[2]), r.Stdout);
    }

    /// <summary>Owner, mode and mtime of every file of an image root filesystem (to prove it is never
    /// changed).</summary>
    static Dictionary<string, string> Snapshot(string root) =>
        Directory.EnumerateFileSystemEntries(root, "*",
            new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 })
            .ToDictionary(p => p, p =>
            {
                var st = Stat(p);
                return $"{st.Uid}:{st.Gid} {st.Mode} {st.MtimeSec}.{st.MtimeNsec}";
            });

    [SkippableFact]
    public async Task A_default_container_is_unprivileged_over_untouched_image_layers_and_cannot_reach_host_root()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        // A host file only host root may read, shared into the container (a plain bind, as a disk device).
        var secretDir = Path.Combine(d.Dir, "secret");
        Directory.CreateDirectory(secretDir);
        File.WriteAllText(Path.Combine(secretDir, "key"), "host root only\n");
        File.SetUnixFileMode(Path.Combine(secretDir, "key"), UnixFileMode.UserRead | UnixFileMode.UserWrite);
        await c.CreateInstanceAsync(new InstanceCreateRequest
        {
            Name = "u1", Image = "busybox", Start = true,
            Devices = { ["secret"] = new() { ["type"] = "bind", ["source"] = secretDir, ["path"] = "/mnt/secret" } },
        });
        var expected = Uids.Start;
        var (b, size, text) = await UidMap(c, "u1");
        Assert.Equal(expected, b);
        Assert.Equal(65536, size);
        Assert.Equal("0\n", (await c.ExecAsync("u1", "id", "-u")).Stdout);

        // Its /sys/fs/cgroup is its own cgroup, readable from inside (hulld's umask is 0077), not the host's tree.
        var cg = await c.ExecAsync("u1", "sh", "-c", "cat /sys/fs/cgroup/pids/pids.max >/dev/null && echo readable; "
            + "ls /sys/fs/cgroup/memory | "
            + "grep -c '^i-'; grep -v ':/$' /proc/self/cgroup | wc -l");
        Assert.Equal("readable\n0\n0\n", cg.Stdout);

        // The image layer: shared, not copied, not re-owned.
        var lower = File.ReadAllText(Path.Combine(InstanceDir(d, "u1"), "lower")).Trim();
        Assert.StartsWith("/", lower);
        var before = Snapshot(lower);
        Assert.Equal(0u, Stat(Path.Combine(lower, "bin")).Uid);

        // A file root makes inside is owned by the mapped root in the upper dir; inside it is root's.
        var r = await c.ExecAsync("u1", "sh", "-c",
            "echo x > /made-by-root && chown 1234:4321 /etc && stat -c '%u:%g' /made-by-root /bin/busybox /etc");
        Assert.Equal("0:0\n0:0\n1234:4321\n", r.Stdout);
        var upper = Path.Combine(InstanceDir(d, "u1"), "upper");
        Assert.Equal((uint)b, Stat(Path.Combine(upper, "made-by-root")).Uid);
        Assert.Equal((uint)(b + 1234), Stat(Path.Combine(upper, "etc")).Uid);
        Assert.Equal((uint)(b + 4321), Stat(Path.Combine(upper, "etc")).Gid);
        Assert.False(File.Exists(Path.Combine(upper, "bin", "busybox")), "the image's files were copied up");
        Assert.Equal(before, Snapshot(lower));

        // Root inside cannot read (or replace) the 0600 host-root file: it is not host root.
        r = await c.ExecAsync("u1", "sh", "-c",
            "cat /mnt/secret/key; echo rc=$?; echo evil > /mnt/secret/key; echo rc=$?; stat -c '%u' /mnt/secret/key");
        Assert.DoesNotContain("host root only", r.Stdout);
        Assert.Contains("rc=1\nrc=1\n65534\n", r.Stdout);
        Assert.Equal("host root only\n", File.ReadAllText(Path.Combine(secretDir, "key")));

        // hull file push/pull: owners as the container sees them.
        await c.PushFileAsync("u1", "/home/pushed/file.txt", new MemoryStream("pushed"u8.ToArray()), 0b110_100_000,
            uid: 1000, gid: 1001);
        Assert.Equal("1000:1001 640\n", (await c.ExecAsync("u1", "stat", "-c", "%u:%g %a",
            "/home/pushed/file.txt")).Stdout);
        Assert.Equal("0:0\n", (await c.ExecAsync("u1", "stat", "-c", "%u:%g", "/home/pushed")).Stdout);
        Assert.Equal((uint)(b + 1000), Stat(Path.Combine(upper, "home/pushed/file.txt")).Uid);
        using (var f = await c.PullFileAsync("u1", "/home/pushed/file.txt")) Assert.Equal((1000, 1001),
            (f.Entry.Uid, f.Entry.Gid));
        using (var f = await c.PullFileAsync("u1", "/bin")) Assert.Contains(f.Listing!,
            e => e.Name == "busybox" && e.Uid == 0);
        var bad = await Assert.ThrowsAsync<HullException>(() =>
            c.PushFileAsync("u1", "/x", new MemoryStream("x"u8.ToArray()), uid: 70000));
        Assert.Contains("ids are 0 to 65535", bad.Message);

        // Stopped, the files are read through the same map.
        await c.StopAsync("u1", force: true);
        using (var f = await c.PullFileAsync("u1", "/home/pushed/file.txt")) Assert.Equal((1000, 1001),
            (f.Entry.Uid, f.Entry.Gid));
        await c.StartAsync("u1");
        Assert.Equal(expected, (await UidMap(c, "u1")).Base);
        Assert.Equal("1000:1001\n", (await c.ExecAsync("u1", "stat", "-c", "%u:%g", "/home/pushed/file.txt")).Stdout);
    }

    [SkippableFact]
    public async Task Privileged_and_isolated_maps_and_bad_values()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        await c.CreateInstanceAsync(new InstanceCreateRequest { Name = "p1", Image = "busybox", Start = true,
            Config = { ["security.privileged"] = "true" } });
        Assert.Equal("0 0 4294967295", string.Join(' ',
            (await UidMap(c, "p1")).Text.Split(' ', StringSplitOptions.RemoveEmptyEntries)).Trim());
        await c.ExecAsync("p1", "sh", "-c", "echo p > /priv");
        Assert.Equal(0u, Stat(Path.Combine(InstanceDir(d, "p1"), "upper", "priv")).Uid);

        var shared = Uids.Start;
        foreach (var n in new[] { "i1", "i2" })
            await c.CreateInstanceAsync(new InstanceCreateRequest { Name = n, Image = "busybox", Start = true,
                Config = { ["security.idmap.isolated"] = "true" } });
        var m1 = await UidMap(c, "i1");
        var m2 = await UidMap(c, "i2");
        foreach (var m in new[] { m1, m2 })
        {
            Assert.Equal(65536, m.Size);
            Assert.True(m.Base >= shared + 65536, $"isolated range {m.Base} overlaps the shared one at {shared}");
        }
        Assert.True(m1.Base + m1.Size <= m2.Base || m2.Base + m2.Size <= m1.Base, $"{m1.Text} and {m2.Text} overlap");
        Assert.Equal(m1.Base.ToString(), (await c.GetInstanceAsync("i1")).Config["volatile.idmap.base"]);

        // Kept on restart; a copy gets its own range and sees the same owners.
        await c.ExecAsync("i1", "sh", "-c", "echo a > /owned && chown 42:43 /owned");
        await c.StopAsync("i1", force: true);
        await c.StartAsync("i1");
        Assert.Equal(m1.Base, (await UidMap(c, "i1")).Base);
        await c.StopAsync("i1", force: true);
        await c.CreateInstanceAsync(new InstanceCreateRequest { Name = "i3", CopyFrom = "i1", Start = true });
        var m3 = await UidMap(c, "i3");
        Assert.NotEqual(m1.Base, m3.Base);
        Assert.NotEqual(m2.Base, m3.Base);
        Assert.Equal("42:43\n", (await c.ExecAsync("i3", "stat", "-c", "%u:%g", "/owned")).Stdout);
        Assert.Equal((uint)(m3.Base + 42), Stat(Path.Combine(InstanceDir(d, "i3"), "upper", "owned")).Uid);

        // Freed on delete: the next isolated container may get it.
        await c.DeleteInstanceAsync("i1", force: true);
        await c.CreateInstanceAsync(new InstanceCreateRequest { Name = "i4", Image = "busybox", Start = true,
            Config = { ["security.idmap.isolated"] = "true" } });
        Assert.Equal(m1.Base, (await UidMap(c, "i4")).Base);

        // Switching a stopped container to privileged re-owns its files to the host's ids.
        await c.StopAsync("i4", force: true);
        var i4 = await c.GetInstanceAsync("i4");
        await c.UpdateInstanceAsync("i4", new InstancePut { Config =
            new(i4.Config) { ["security.privileged"] = "true" }, Devices = i4.Devices, Profiles = i4.Profiles });
        await c.StartAsync("i4");
        Assert.Equal((0L, 4294967295L), ((await UidMap(c, "i4")).Base, (await UidMap(c, "i4")).Size));
        Assert.Equal("0\n", (await c.ExecAsync("i4", "stat", "-c", "%u", "/bin")).Stdout);

        // An explicit base and size.
        var explicitBase = shared + 10 * 65536;
        await c.CreateInstanceAsync(new InstanceCreateRequest
        {
            Name = "e1", Image = "busybox", Start = true,
            Config = { ["security.idmap.base"] = explicitBase.ToString(), ["security.idmap.size"] = "131072" },
        });
        var me = await UidMap(c, "e1");
        Assert.Equal((explicitBase, 131072L), (me.Base, me.Size));

        // Bad values fail with the key and the valid range.
        foreach (var (key, value, says) in new[]
        {
            ("security.idmap.size", "1000", "security.idmap.size='1000' is invalid"),
            ("security.idmap.base", "5", "security.idmap.base='5' is invalid"),
            ("security.idmap.base", "x", "security.idmap.base='x' is invalid"),
            ("security.privileged", "maybe", "security.privileged='maybe' is invalid"),
        })
        {
            var e = await Assert.ThrowsAsync<HullException>(() =>
                c.CreateInstanceAsync(new InstanceCreateRequest { Name = "bad", Image = "busybox",
                Config = { [key] = value } }));
            Assert.Contains(says, e.Message);
        }
        var tooBig = await Assert.ThrowsAsync<HullException>(() => c.CreateInstanceAsync(new InstanceCreateRequest
        {
            Name = "bad", Image = "busybox",
            Config = { ["security.idmap.base"] = (Uids.End - 65536).ToString(), ["security.idmap.size"] = "131072" },
        }));
        Assert.Contains("does not fit inside", tooBig.Message);
    }

    [SkippableFact]
    public async Task Snapshots_and_backups_keep_the_owners_the_container_sees()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        await c.LaunchAsync("busybox", "b1");
        await c.ExecAsync("b1", "sh", "-c", "echo s > /kept && chown 1234:4321 /kept && chmod 4755 /kept");
        await c.StopAsync("b1", force: true);
        await c.CreateSnapshotAsync("b1", "s1");
        await c.StartAsync("b1");
        await c.ExecAsync("b1", "rm", "/kept");
        await c.StopAsync("b1", force: true);
        await c.RestoreSnapshotAsync("b1", "s1");
        await c.StartAsync("b1");
        Assert.Equal("1234:4321 4755\n", (await c.ExecAsync("b1", "stat", "-c", "%u:%g %a", "/kept")).Stdout);
        await c.StopAsync("b1", force: true);

        // The backup holds the container's view of the owners.
        var tarball = Path.Combine(d.Dir, "b1.tar");
        await using (var s = await c.ExportInstanceAsync("b1"))
        await using (var f = File.Create(tarball)) await s.CopyToAsync(f);
        var psi = new ProcessStartInfo("tar", ["-tvnf", tarball]) { RedirectStandardOutput = true };
        using (var p = Process.Start(psi)!)
        {
            var listing = await p.StandardOutput.ReadToEndAsync();
            await p.WaitForExitAsync();
            Assert.Matches(@"-rwsr-xr-x 1234/4321 .* instance/upper/kept\n", listing);
            Assert.Matches(@"1234/4321 .* instance/snapshots/s1/upper/kept\n", listing);
        }

        // Imported as an isolated container: its own range, the same owners inside, the snapshot too.
        await using (var f = File.OpenRead(tarball)) await c.ImportInstanceAsync(f, "b2");
        var b2 = await c.GetInstanceAsync("b2");
        await c.UpdateInstanceAsync("b2", new InstancePut { Config =
            new(b2.Config) { ["security.idmap.isolated"] = "true" }, Devices = b2.Devices, Profiles = b2.Profiles });
        await c.StartAsync("b2");
        var m = await UidMap(c, "b2");
        Assert.NotEqual(Uids.Start, m.Base);
        Assert.Equal("1234:4321 4755\n", (await c.ExecAsync("b2", "stat", "-c", "%u:%g %a", "/kept")).Stdout);
        Assert.Equal((uint)(m.Base + 1234), Stat(Path.Combine(InstanceDir(d, "b2"), "upper", "kept")).Uid);
        await c.StopAsync("b2", force: true);
        await c.RestoreSnapshotAsync("b2", "s1");
        await c.StartAsync("b2");
        Assert.Equal("1234:4321 4755\n", (await c.ExecAsync("b2", "stat", "-c", "%u:%g %a", "/kept")).Stdout);
        // The exported instance runs again as before.
        await c.StartAsync("b1");
        Assert.Equal("1234:4321 4755\n", (await c.ExecAsync("b1", "stat", "-c", "%u:%g %a", "/kept")).Stdout);
    }

    [SkippableFact]
    public async Task An_application_container_sees_the_host_dirs_with_their_owners()
    {
        using var d = new ContainerDaemon();
        // Outside /tmp (an app container's /tmp is its own tmpfs: a share under it stays a plain bind).
        var share = "/var/tmp/hull-share-" + Guid.NewGuid().ToString("N")[..8];
        Directory.CreateDirectory(share);
        File.WriteAllText(Path.Combine(share, "f"), "shared");
        try
        {
            var r = d.Cli("launch", "host", "app1", "--share", share, "--", "/bin/sh", "-c", "sleep 1000");
            Assert.True(r.Code == 0, r.Err);
            var e = await d.Client.ExecAsync("app1", "sh", "-c",
                $"cat /proc/self/uid_map; stat -c '%u:%g' /usr/bin /etc/passwd {share}/f; cat {share}/f; touch " +
                "/usr/x; echo rc=$?");
            Assert.Contains($" {Uids.Start} ", e.Stdout);
            Assert.True(e.Stdout.Contains("0:0\n0:0\n0:0\nshared"), e.Stdout + e.Stderr);
            Assert.Contains("rc=1", e.Stdout);
        }
        finally { Directory.Delete(share, true); }
    }
}
