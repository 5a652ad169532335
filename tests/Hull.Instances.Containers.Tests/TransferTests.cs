using Hull.Api;
using Hull.Sdk;
using Xunit;

namespace Hull.Instances.Containers.Tests;

/// <summary>Export/import and copy/move of container instances between two real hullds (two "hosts" on this
/// machine).</summary>
public sealed class TransferTests
{
    [SkippableFact]
    public async Task Move_to_another_hulld_carries_files_snapshots_and_the_image()
    {
        using var a = new ContainerDaemon();
        using var b = new ContainerDaemon();
        await a.Client.LaunchAsync("busybox", "m1");
        await a.Client.PushFileAsync("m1", "/root/before.txt", "in the snapshot"u8.ToArray());
        await a.Client.CreateSnapshotAsync("m1", "s1");
        await a.Client.PushFileAsync("m1", "/root/after.txt", "after the snapshot"u8.ToArray());
        await a.Client.ExecAsync("m1", "sh", "-c", "rm /bin/ls && mkdir -p /var/opaque && touch /var/opaque/x");

        // A running container is not moved without --stateless, and nothing changes on either side.
        var e = await Assert.ThrowsAsync<HullException>(() => InstanceTransfer.MoveAsync(a.Client, "m1", b.Client));
        Assert.Contains("--stateless", e.Message);
        Assert.Equal(InstanceStates.Running, (await a.Client.GetInstanceAsync("m1")).State);
        Assert.Empty(await b.Client.ListInstancesAsync());

        await a.Client.StopAsync("m1");
        var fp = (await a.Client.GetInstanceAsync("m1")).ImageFingerprint;
        Assert.DoesNotContain(await b.Client.ListImagesAsync(), i => i.Fingerprint == fp);
        var moved = await InstanceTransfer.MoveAsync(a.Client, "m1", b.Client, "m2");
        Assert.Equal("m2", moved.Name);
        Assert.Equal(InstanceStates.Stopped, moved.State);
        Assert.Contains(await b.Client.ListImagesAsync(), i => i.Fingerprint == fp);
        Assert.Empty(await a.Client.ListInstancesAsync());
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(a.StateDir, "instances")));

        await b.Client.StartAsync("m2");
        Assert.Equal("after the snapshot", System.Text.Encoding.UTF8.GetString(
            await b.Client.ReadFileAsync("m2", "/root/after.txt")));
        // The overlay's whiteouts and opaque dirs travelled: the deleted file stays deleted.
        var r = await b.Client.ExecAsync("m2", "sh", "-c", "test -e /bin/ls; echo $? $(ls /var/opaque)");
        Assert.Equal("1 x\n", r.Stdout);
        Assert.Equal(["s1"], (await b.Client.ListSnapshotsAsync("m2")).Select(s => s.Name));
        await b.Client.StopAsync("m2", force: true);
        await b.Client.RestoreSnapshotAsync("m2", "s1");
        await b.Client.StartAsync("m2");
        r = await b.Client.ExecAsync("m2", "sh", "-c", "cat /root/before.txt; test -e /root/after.txt; echo \" $?\"");
        Assert.Equal("in the snapshot 1\n", r.Stdout);
    }

    [SkippableFact]
    public async Task Cli_remotes_stateless_move_export_import_and_bad_backups()
    {
        using var a = new ContainerDaemon();
        using var b = new ContainerDaemon();
        Ok(a.Cli("remote", "add", "other", "unix:" + b.Socket), "remote add");
        Assert.Contains("other", a.Cli("remote", "list").Out);
        Assert.Equal(1, a.Cli("remote", "add", "other", "unix:/x").Code);
        var bad = a.Cli("remote", "add", "web", "https://example.org");
        Assert.Equal(1, bad.Code);
        Assert.Contains("unix:/", bad.Err);

        Ok(a.Cli("launch", "busybox", "k1"), "launch");
        Ok(a.Cli("exec", "k1", "--", "sh", "-c",
            "echo moved > /root/m.txt && dd if=/dev/urandom of=/root/big bs=64k count=16 2>/dev/null"), "exec");
        var refused = a.Cli("move", "k1", "other:");
        Assert.Equal(1, refused.Code);
        Assert.Contains("--stateless", refused.Err);
        Ok(a.Cli("move", "k1", "other:", "--stateless"), "move --stateless");
        Assert.DoesNotContain("k1", a.Cli("list").Out);
        var there = a.Cli("--remote", "other", "exec", "k1", "--", "cat", "/root/m.txt");
        Assert.True(there.Code == 0, there.Err);
        Assert.Equal("moved\n", there.Out);
        Assert.Equal(InstanceStates.Running, (await b.Client.GetInstanceAsync("k1")).State);

        // Copy back under a new name, then export to a file and import it as a third instance.
        Ok(a.Cli("--remote", "other", "stop", "k1"), "stop on the remote");
        Ok(a.Cli("copy", "other:k1", "k2"), "copy from the remote");
        Assert.Contains("k1", b.Cli("list").Out);
        var file = Path.Combine(a.Dir, "k2.tar");
        Ok(a.Cli("export", "k2", file), "export");
        Ok(a.Cli("import", file, "k3", "--start"), "import");
        Assert.Equal("moved\n", a.Cli("exec", "k3", "--", "cat", "/root/m.txt").Out);

        // Bad input: a clash, a running instance, a file that is not a backup, a truncated one. Nothing is left behind.
        var clash = a.Cli("import", file, "k3");
        Assert.Equal(1, clash.Code);
        Assert.Contains("already exists", clash.Err);
        var running = a.Cli("export", "k3", Path.Combine(a.Dir, "k3.tar"));
        Assert.Equal(1, running.Code);
        Assert.Contains("stop it", running.Err);
        Assert.False(File.Exists(Path.Combine(a.Dir, "k3.tar")));
        var junk = Path.Combine(a.Dir, "junk.tar");
        File.WriteAllText(junk, "not a tarball");
        var notBackup = a.Cli("import", junk, "k4");
        Assert.Equal(1, notBackup.Code);
        Assert.Contains("not a Hull instance backup", notBackup.Err);
        // Cut inside the 1 MiB file's data, not just the tarball's zero padding.
        var cut = Path.Combine(a.Dir, "cut.tar");
        using (var src = File.OpenRead(file))
        using (var dst = File.Create(cut))
        {
            var buf = new byte[src.Length * 2 / 3];
            src.ReadExactly(buf);
            dst.Write(buf);
        }
        var truncated = a.Cli("import", cut, "k5");
        Assert.Equal(1, truncated.Code);
        var names = (await a.Client.ListInstancesAsync()).Select(i => i.Name).Order().ToList();
        Assert.Equal(["k2", "k3"], names);
        Assert.Equal(["k2", "k3"], Directory.EnumerateFileSystemEntries(Path.Combine(a.StateDir, "instances")).Select(
            Path.GetFileName).Order().ToList());
        Ok(a.Cli("remote", "remove", "other"), "remote remove");
        Assert.Equal(1, a.Cli("copy", "k2", "other:k9").Code);
    }

    static void Ok((int Code, string Out, string Err) r, string what) =>
        Assert.True(r.Code == 0, $"{what} failed ({r.Code}): {r.Out} {r.Err}");
}
