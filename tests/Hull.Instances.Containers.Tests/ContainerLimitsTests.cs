using System.Text;
using Hull.Api;
using Hull.Linux;
using Hull.Sdk;
using Hull.TestSupport;
using Xunit;

namespace Hull.Instances.Containers.Tests;

/// <summary>The error bugs of the security run that need a real container: each does the bad thing through
/// hulld.</summary>
public sealed class ContainerLimitsTests
{
    static async Task<HullException> Fails(Func<Task> call, int status, params string[] fragments)
    {
        var e = await Assert.ThrowsAsync<HullException>(call);
        Assert.True(e.StatusCode == status, $"{e.StatusCode}: {e.Message}");
        foreach (var f in fragments) Assert.Contains(f, e.Message);
        return e;
    }

    [SkippableFact]
    public async Task Exec_as_uid_minus_one_is_refused_and_never_runs_as_root()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        await c.LaunchAsync("busybox", "u1");
        foreach (var user in new[] { "4294967295", "0:4294967295", "1000:4294967295" })
            await Fails(() => c.ExecAsync("u1", new ExecRequest { Command = ["id", "-u"], User = user }), 400,
                "4294967295 (-1) is not a user or group id");
        Assert.Equal("1000\n", (await c.ExecAsync("u1",
            new ExecRequest { Command = ["id", "-u"], User = "1000" })).Stdout);
    }

    [SkippableFact]
    public async Task Pulling_procfs_files_works_and_special_files_and_dangling_links_get_clear_errors()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        await c.LaunchAsync("busybox", "f1");
        Assert.Equal(0, (await c.ExecAsync("f1", "sh", "-c",
            "mkfifo /tmp/fifo && ln -s /nonexistent /tmp/dang")).ExitCode);

        // A procfs file says size 0 and has content.
        var status = Encoding.UTF8.GetString(await c.ReadFileAsync("f1", "/proc/1/status"));
        Assert.Contains("Name:", status);
        Assert.Contains("Pid:\t1", status);

        // Special files: refused with the reason (a fifo would hang the open, a device could stream forever).
        await Fails(() => c.ReadFileAsync("f1", "/tmp/fifo"), 400, "/tmp/fifo", "not a regular file or directory");
        await Fails(() => c.ReadFileAsync("f1", "/dev/zero"), 400, "/dev/zero", "not a regular file or directory");

        // A dangling symlink followed by "..": resolved in the container's root, it is simply not there.
        for (var i = 0; i < 20; i++)
            await Fails(() => c.ReadFileAsync("f1", "/tmp/dang/.."), 404, "does not exist");
    }
}
