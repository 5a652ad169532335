using System.Diagnostics;
using Hull.Api;
using Hull.TestSupport;
using Xunit;

namespace Hull.Daemon.Tests;

/// <summary>Instances outlive hulld: kill -9 it, restart it, find them again.</summary>
[Collection("daemon")]
public sealed class RestartTests
{
    [SkippableFact]
    public async Task Kill9_hulld_then_restart_finds_instances_running_and_exit_codes_of_ended_ones()
    {
        using var d = new TestDaemon();
        var c = d.Client;
        await c.LaunchAsync("busybox", "keeps");
        await c.LaunchAsync("busybox", "ends", config: new() { ["user.test.init"] =
            "while [ ! -e /tmp/go ]; do sleep 0.05; done; exit 5" });
        await c.CreateInstanceAsync(new InstanceCreateRequest { Name = "auto", Image = "busybox",
            Config = { ["boot.autostart"] = "true" } });
        var keepsPid = (await c.GetInstanceAsync("keeps")).Pid!.Value;
        var endsPid = (await c.GetInstanceAsync("ends")).Pid!.Value;

        d.Kill9();
        Assert.True(Hull.Linux.Sys.ProcessExists(keepsPid), "the instance died with hulld");
        // While hulld is away, "ends" finishes with status 5.
        File.WriteAllText(Path.Combine(d.StateDir, "instances", "ends", "rootfs", "tmp", "go"), "");
        await Wait.UntilAsync(() => Task.FromResult(!Hull.Linux.Sys.ProcessExists(endsPid)),
            "the 'ends' instance to exit");
        // And a create was interrupted half-way (the row says so): recovery must undo it.
        Directory.CreateDirectory(Path.Combine(d.StateDir, "instances", "half", "rootfs"));
        Sqlite(d, "INSERT INTO instances (name, type, image, image_fingerprint, config, devices, profiles, state, " +
            "created, pending) " +
            "VALUES ('half', 'container', 'busybox', 'x', '{}', '{}', '[\"default\"]', 'Stopped', 0, 'create')");

        d.Start();
        var keeps = await c.GetInstanceAsync("keeps");
        Assert.Equal(InstanceStates.Running, keeps.State);
        Assert.Equal(keepsPid, keeps.Pid);
        var r = await c.ExecAsync("keeps", "sh", "-c", "echo still here");
        Assert.Equal("still here\n", r.Stdout);
        var ends = await c.GetInstanceAsync("ends");
        Assert.Equal(InstanceStates.Stopped, ends.State);
        Assert.Equal(5, ends.LastExitCode);
        Assert.DoesNotContain(await c.ListInstancesAsync(), i => i.Name == "half");
        Assert.False(Directory.Exists(Path.Combine(d.StateDir, "instances", "half")));
        Assert.Equal(InstanceStates.Running, (await c.GetInstanceAsync("auto")).State); // boot.autostart

        // A plain restart (SIGTERM) also leaves instances running.
        d.Stop();
        Assert.True(Hull.Linux.Sys.ProcessExists(keepsPid));
        d.Start();
        Assert.Equal(0, (await c.ExecAsync("keeps", "true")).ExitCode);
    }

    static void Sqlite(TestDaemon d, string sql)
    {
        var sqlite = Requires.Program("sqlite3");
        var psi = new ProcessStartInfo(sqlite) { RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(d.StateDir, "hull.db"));
        psi.ArgumentList.Add(sql);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, err);
    }

    [SkippableFact]
    public void Socket_is_root_only_by_default_and_group_accessible_with_group()
    {
        using (var d = new TestDaemon())
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(d.Socket));
        using (var d = new TestDaemon(extraArgs: ["--group", "root"]))
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead |
                UnixFileMode.GroupWrite, File.GetUnixFileMode(d.Socket));
        using (var d = new TestDaemon(start: false))
        {
            var ex = Assert.Throws<InvalidOperationException>(() => d.Start(["--group", "no-such-group-xyz"]));
            Assert.Contains("group 'no-such-group-xyz' does not exist", ex.Message);
        }
    }

    [SkippableFact]
    public async Task A_second_hulld_on_the_same_state_dir_is_refused()
    {
        using var d = new TestDaemon();
        var psi = new ProcessStartInfo(TestDaemon.HostExe) { RedirectStandardError = true };
        foreach (var a in new[] { "--socket", d.Socket + "2", "--state-dir", d.StateDir }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        Assert.Equal(1, p.ExitCode);
        Assert.Contains("already uses the state dir", err);
    }

    [SkippableFact]
    public async Task A_full_disk_fails_cleanly()
    {
        using var d = new TestDaemon(start: false);
        Directory.CreateDirectory(d.StateDir);
        Hull.Linux.Sys.Mount("tmpfs", d.StateDir, "tmpfs", 0, "size=12m");
        try
        {
            d.Start();
            await d.Client.LaunchAsync("busybox", "full");
            var e = await Assert.ThrowsAsync<Hull.Sdk.HullException>(() =>
                d.Client.PushFileAsync("full", "/root/big", new byte[16 << 20]));
            Assert.Equal(507, e.StatusCode);
            Assert.Contains("free some space", e.Message);
            // no half-written file left
            Assert.Equal("", (await d.Client.ExecAsync("full", "ls", "-A", "/root")).Stdout);
            await d.Client.DeleteInstanceAsync("full", force: true);
            d.Stop();
        }
        finally { Hull.Linux.Libc.umount2(d.StateDir, Hull.Linux.MS.MNT_DETACH); }
    }
}
