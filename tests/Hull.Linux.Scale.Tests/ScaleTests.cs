using Hull.Linux;
using Hull.Linux.Scale;
using Hull.TestSupport;
using Xunit;

namespace Hull.Linux.Scale.Tests;

public class MountPointTests
{
    [Fact]
    public void Root_and_proc_are_mount_roots_a_plain_dir_is_not()
    {
        Assert.True(MountPoint.IsMountRoot("/"));
        Assert.True(MountPoint.IsMountRoot("/proc"));
        using var dir = new TempDir();
        Assert.False(MountPoint.IsMountRoot(dir.Path));
        Assert.False(MountPoint.IsMountRoot(Path.Combine(dir.Path, "missing")));
        Assert.False(MountPoint.IsMountRoot(Path.Combine(dir.Path, "missing", "deeper")));
    }

    [SkippableFact]
    public void Sees_a_mount_appear_and_go()
    {
        Requires.Root();
        using var dir = new TempDir();
        Assert.False(MountPoint.IsMountRoot(dir.Path));
        Sys.Mount("tmpfs", dir.Path, "tmpfs", 0, "size=64k");
        try
        {
            Assert.True(MountPoint.IsMountRoot(dir.Path));
            Directory.CreateDirectory(Path.Combine(dir.Path, "sub"));
            Assert.False(MountPoint.IsMountRoot(Path.Combine(dir.Path, "sub")));
        }
        finally { Libc.umount2(dir.Path, MS.MNT_DETACH); }
        Assert.False(MountPoint.IsMountRoot(dir.Path));
    }
}

public class ChildReaperTests
{
    static int Spawn(string script)
    {
        using var child = Spawner.Spawn(new SpawnRequest { Path = "/bin/sh", Argv = ["sh", "-c", script], Env = [] });
        return child.Pid;
    }

    [Fact]
    public async Task Reaps_many_children_with_their_exit_status()
    {
        var pids = Enumerable.Range(0, 20).Select(i => (Code: i, Pid: Spawn($"sleep 0.{i % 5}; exit {i}"))).ToList();
        var waits = pids.Select(p => (p.Code, Task: ChildReaper.Shared.WaitAsync(p.Pid))).ToList();
        foreach (var (code, task) in waits)
            Assert.Equal(code, Sys.ExitCode(await task.WaitAsync(TimeSpan.FromSeconds(30))));
        // Reaped: none is left as a zombie child of this process.
        foreach (var (_, pid) in pids) Assert.False(File.Exists($"/proc/{pid}/status") && File.ReadAllText($"/proc/{pid}/status").Contains("PPid:\t" + Environment.ProcessId));
    }

    [Fact]
    public async Task Reports_a_signal_death_and_a_child_that_exited_before_the_wait()
    {
        var killed = Spawn("kill -9 $$");
        var quick = Spawn("exit 5");
        Thread.Sleep(200); // both are zombies by now
        Assert.Equal(128 + 9, Sys.ExitCode(await ChildReaper.Shared.WaitAsync(killed).WaitAsync(TimeSpan.FromSeconds(30))));
        Assert.Equal(5, Sys.ExitCode(await ChildReaper.Shared.WaitAsync(quick).WaitAsync(TimeSpan.FromSeconds(30))));
    }

    [Fact]
    public async Task Watches_a_process_exit_without_reaping_it_and_can_be_cancelled()
    {
        var pid = Spawn("sleep 0.3; exit 4");
        await ChildReaper.Shared.ExitedAsync(Sys.PidfdOpen(pid), CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(4, Sys.ExitCode(Sys.WaitPid(pid))); // not reaped by the watcher: still ours to collect

        var sleeper = Spawn("sleep 30");
        try
        {
            using var cts = new CancellationTokenSource();
            var watch = ChildReaper.Shared.ExitedAsync(Sys.PidfdOpen(sleeper), cts.Token);
            await Task.Delay(100);
            Assert.False(watch.IsCompleted);
            cts.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => watch.WaitAsync(TimeSpan.FromSeconds(30)));
        }
        finally
        {
            Libc.kill(sleeper, Signals.SIGKILL);
            Sys.WaitPid(sleeper);
        }
    }

    [Fact]
    public async Task A_pid_that_does_not_exist_fails()
    {
        await Assert.ThrowsAsync<LinuxException>(() => ChildReaper.Shared.WaitAsync(int.MaxValue));
    }
}
