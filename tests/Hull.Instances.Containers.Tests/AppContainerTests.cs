using Hull.TestSupport;
using Hull.Api;
using Xunit;

namespace Hull.Instances.Containers.Tests;

/// <summary>Application containers (the built-in host image) through a real hulld and the CLI.</summary>
public sealed class AppContainerTests
{
    static void Ok((int Code, string Out, string Err) r, string what) =>
        Assert.True(r.Code == 0, $"{what} failed ({r.Code}): {r.Out} {r.Err}");

    [SkippableFact]
    public async Task A_host_program_sees_host_changes_at_once_cannot_write_them_and_has_its_own_tmp()
    {
        using var d = new ContainerDaemon();
        var share = Path.Combine(d.Dir, "share");
        Directory.CreateDirectory(share);
        // The app: a host shell that waits for the host to drop "go" into the shared dir, then exits with its content.
        Ok(d.Cli("launch", "host", "app1", "--share", share, "--", "/bin/sh", "-c",
            $"echo started; while [ ! -s {share}/go ]; do sleep 0.05; done; exit $(cat {share}/go)"), "launch host");
        var c = d.Client;
        var inst = await c.GetInstanceAsync("app1");
        Assert.Equal(InstanceStates.Running, inst.State);
        var pid = inst.Pid!.Value;
        Assert.NotEqual(new FileInfo("/proc/self/ns/mnt").LinkTarget, new FileInfo($"/proc/{pid}/ns/mnt").LinkTarget);
        // It runs the host's own program: the same file (device and inode) as on the host.
        var exe = new FileInfo($"/proc/{pid}/exe").LinkTarget!;
        using (var inside = Hull.Linux.Sys.Open($"/proc/{pid}/exe", Hull.Linux.O.RDONLY))
        using (var host = Hull.Linux.Sys.Open(exe, Hull.Linux.O.RDONLY))
            Assert.Equal(Hull.Linux.MonitorInterop.FileIdentity(host), Hull.Linux.MonitorInterop.FileIdentity(inside));

        // A new file in a shared dir on the host is visible inside at once: the --share dir and /etc (a default one).
        File.WriteAllText(Path.Combine(share, "new.txt"), "fresh from the host");
        var etcFile = "/etc/hull-app-test-" + Guid.NewGuid().ToString("N")[..8];
        try
        {
            File.WriteAllText(etcFile, "host etc");
            var seen = d.Cli("exec", "app1", "--", "/bin/sh", "-c", $"cat {share}/new.txt; echo; cat {etcFile}");
            Ok(seen, "exec cat");
            Assert.Equal("fresh from the host\nhost etc", seen.Out);
        }
        finally { File.Delete(etcFile); }

        // Shared dirs are read-only inside: writes fail with EROFS.
        foreach (var target in new[] { $"{share}/x", "/usr/hull-app-x", "/etc/hull-app-x" })
        {
            var w = d.Cli("exec", "app1", "--", "/bin/sh", "-c", $"echo x > {target}");
            Assert.NotEqual(0, w.Code);
            Assert.Contains("Read-only file system", w.Err);
            Assert.False(File.Exists(target));
        }
        // Merged /usr: /bin is the host's symlink to usr/bin, so host programs resolve as on the host.
        if (new DirectoryInfo("/bin").LinkTarget is { } binTarget)
            Assert.Equal(binTarget + "\n", d.Cli("exec", "app1", "--", "/bin/sh", "-c", "readlink /bin").Out);

        // /tmp, /root and /var are private: neither side sees the other's files.
        var hostTmp = Path.Combine("/tmp", "hull-app-host-" + Guid.NewGuid().ToString("N")[..8]);
        File.WriteAllText(hostTmp, "host");
        try
        {
            var priv = d.Cli("exec", "app1", "--", "/bin/sh", "-c",
                $"test -e {hostTmp} && echo leak; echo inside > /tmp/inside-app1; echo r > /root/r; echo v > " +
                    "/var/tmp/v; ls -A /root; grep ' /tmp ' /proc/mounts | cut -d' ' -f3");
            Ok(priv, "exec private");
            Assert.Equal("r\ntmpfs\n", priv.Out);
        }
        finally { File.Delete(hostTmp); }
        Assert.False(File.Exists("/tmp/inside-app1"));
        Assert.False(File.Exists("/var/tmp/v"));

        // The app's exit code is the instance's.
        File.WriteAllText(Path.Combine(share, "go.tmp"), "7\n");
        File.Move(Path.Combine(share, "go.tmp"), Path.Combine(share, "go"));
        await Wait.UntilAsync(async () => (await c.GetInstanceAsync("app1")).State == InstanceStates.Stopped,
            "the app to exit");
        Assert.Equal(7, (await c.GetInstanceAsync("app1")).LastExitCode);
        Assert.Contains("Last exit code: 7", d.Cli("info", "app1").Out);
        Assert.Contains("started", d.Cli("logs", "app1").Out);
        Ok(d.Cli("delete", "app1"), "delete");
    }

    [SkippableFact]
    public void Bad_app_requests_are_refused_with_a_clear_message()
    {
        using var d = new ContainerDaemon();
        var noCmd = d.Cli("launch", "host", "nocmd");
        Assert.Equal(1, noCmd.Code);
        Assert.Contains("after --", noCmd.Err);
        var badShare = d.Cli("launch", "host", "bad", "--share", "relative/dir", "--", "/bin/true");
        Assert.Equal(1, badShare.Code);
        Assert.Contains("app.share", badShare.Err);
        var missing = d.Cli("launch", "host", "missing", "--share", "/nonexistent-hull-dir", "--", "/bin/true");
        Assert.Equal(1, missing.Code);
        Assert.Contains("/nonexistent-hull-dir does not exist on the host", missing.Err);
        var badCmd = d.Cli("launch", "busybox", "b2", "-c", "app.command=not json");
        Assert.Equal(1, badCmd.Code);
        Assert.Contains("JSON array", badCmd.Err);
    }
}
