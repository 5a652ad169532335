using Hull.Linux;
using Hull.TestSupport;
using Xunit;

namespace Hull.Linux.Tests;

public class SpawnerTests
{
    static (int Code, string Out) Run(SpawnRequest req)
    {
        var (r, w) = Sys.Pipe();
        req.Fds.Add((w, 1));
        using var child = Spawner.Spawn(req);
        w.Dispose();
        using var reader = new StreamReader(new FileStream(
            new Microsoft.Win32.SafeHandles.SafeFileHandle(r.Detach(), true), FileAccess.Read));
        var output = reader.ReadToEnd();
        return (Sys.ExitCode(Sys.WaitPid(child.Pid)), output);
    }

    [Fact]
    public void Spawns_a_program_and_maps_stdout()
    {
        var (code, output) = Run(new SpawnRequest { Path = "/bin/sh", Argv = ["sh", "-c", "echo hi; exit 3"],
            Env = [] });
        Assert.Equal(3, code);
        Assert.Equal("hi\n", output);
    }

    [Fact]
    public void Reports_exec_failure_with_errno_and_path()
    {
        var ex = Assert.Throws<SpawnException>(() =>
            Spawner.Spawn(new SpawnRequest { Path = "/nonexistent/prog", Argv = ["x"], Env = [] }));
        Assert.Equal(SpawnStage.Exec, ex.Stage);
        Assert.Equal(Errors.ENOENT, ex.Errno);
        Assert.Contains("/nonexistent/prog", ex.Message);
    }

    [SkippableFact]
    public void Creates_new_pid_and_uts_namespaces()
    {
        Requires.Root();
        var (code, output) = Run(new SpawnRequest
        {
            Path = "/bin/sh", Argv = ["sh", "-c", "echo $$; readlink /proc/self/ns/uts"], Env = [],
            CloneFlags = CLONE.NEWPID | CLONE.NEWUTS,
        });
        Assert.Equal(0, code);
        var lines = output.Split('\n');
        Assert.Equal("1", lines[0]);
        Assert.NotEqual(File.ResolveLinkTarget("/proc/self/ns/uts", false)?.ToString() ?? "", lines[1]);
    }

    [SkippableFact]
    public void Waits_for_release_and_exits_quietly_when_abandoned()
    {
        Requires.Root();
        var child = Spawner.Start(new SpawnRequest { Path = "/bin/true", Argv = ["true"], Env = [],
            WaitForRelease = true, CloneFlags = CLONE.NEWUSER });
        // The parent could write uid_map here; the child has not exec'd yet.
        Assert.True(File.Exists($"/proc/{child.Pid}/uid_map"));
        child.Dispose();
        Assert.False(Sys.ProcessExists(child.Pid));
    }
}
