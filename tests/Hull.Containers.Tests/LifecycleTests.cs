using Hull.Oci;
using Hull.TestSupport;
using Xunit;

namespace Hull.Containers.Tests;

[CollectionDefinition("oci", DisableParallelization = true)]
public sealed class OciCollection : ICollectionFixture<OciHarnessFixture>;

public sealed class OciHarnessFixture : IDisposable
{
    OciHarness? _h;
    public OciHarness H => _h ??= new OciHarness();
    public void Dispose() => _h?.Dispose();
}

[Collection("oci")]
public class LifecycleTests(OciHarnessFixture f)
{
    OciHarness H => f.H;

    [SkippableFact]
    public void Run_prints_output_and_returns_the_exit_code()
    {
        var b = H.Bundle(null, "sh", "-c", "echo hello; echo err >&2; exit 7");
        var (code, o, e) = H.Run("run", "--bundle", b, H.NewId());
        Assert.Equal(7, code);
        Assert.Equal("hello\n", o);
        Assert.Contains("err", e);
    }

    [SkippableFact]
    public void Create_start_state_kill_delete()
    {
        var id = H.NewId();
        var b = H.Bundle(null, "sleep", "100");
        var pidFile = Path.Combine(H.Dir.Path, id + ".pid");
        var (code, _, e) = H.Run("create", "--bundle", b, "--pid-file", pidFile, id);
        Assert.True(code == 0, e);
        var st = H.State(id);
        Assert.Equal("created", st.Status);
        Assert.Equal(int.Parse(File.ReadAllText(pidFile)), st.Pid);
        Assert.Equal(b, st.Bundle);
        // The process is still the init, not yet sleep.
        Assert.DoesNotContain("sleep", File.ReadAllText($"/proc/{st.Pid}/cmdline"));

        Assert.Equal(0, H.Run("start", id).Code);
        Assert.Equal("running", H.State(id).Status);
        // start returns once the init has taken the go-ahead (as runc's); the exec follows right after.
        for (var i = 0; i < 100 && !File.ReadAllText($"/proc/{st.Pid}/cmdline").Contains("sleep"); i++) Thread.Sleep(
            20);
        Assert.Contains("sleep", File.ReadAllText($"/proc/{st.Pid}/cmdline"));

        var again = H.Run("start", id);
        Assert.NotEqual(0, again.Code);
        Assert.Contains("not created", again.Err);

        var del = H.Run("delete", id);
        Assert.NotEqual(0, del.Code);
        Assert.Contains("--force", del.Err);

        Assert.Equal(0, H.Run("kill", id, "KILL").Code);
        for (var i = 0; i < 100 && H.State(id).Status != "stopped"; i++) Thread.Sleep(20);
        Assert.Equal("stopped", H.State(id).Status);
        Assert.Equal(0, H.Run("delete", id).Code);
        Assert.False(Directory.Exists(Path.Combine(H.Root, id)));
        var gone = H.Run("state", id);
        Assert.NotEqual(0, gone.Code);
        Assert.Contains("does not exist", gone.Err);
    }

    [SkippableFact]
    public void Delete_of_a_created_container_kills_its_init()
    {
        var id = H.NewId();
        Assert.Equal(0, H.Run("create", "--bundle", H.Bundle(null, "sleep", "100"), id).Code);
        var pid = H.State(id).Pid;
        Assert.Equal(0, H.Run("delete", id).Code);
        Assert.False(Directory.Exists($"/proc/{pid}") && !File.ReadAllText($"/proc/{pid}/stat").Contains(" Z "));
    }

    [SkippableFact]
    public void Exec_runs_in_the_containers_namespaces_with_env_cwd_and_user()
    {
        var id = H.NewId();
        Assert.Equal(0, H.Run("run", "-d", "--bundle", H.Bundle(s => s.Hostname = "box", "sleep", "100"), id).Code);
        try
        {
            var (code, o, e) = H.Run("exec", "-e", "FOO=bar", "--cwd", "/tmp", "-u", "65534:65534", id, "sh", "-c",
                "echo $$ $FOO $(pwd) $(id -u):$(id -g) $(hostname)");
            Assert.True(code == 0, e);
            var parts = o.Trim().Split(' ');
            Assert.NotEqual("1", parts[0]);
            Assert.True(int.Parse(parts[0]) < 100, "the exec'd process must be in the container's pid namespace");
            Assert.Equal(["bar", "/tmp", "65534:65534", "box"], parts[1..]);
            var limits = H.Run("exec", id, "sh", "-c", "ulimit -n");
            Assert.Equal("1024\n", limits.Out); // the container's process.rlimits apply to exec too
            var exit = H.Run("exec", id, "sh", "-c", "exit 5");
            Assert.Equal(5, exit.Code);
            var missing = H.Run("exec", id, "nosuchprogram");
            Assert.NotEqual(0, missing.Code);
            Assert.Contains("nosuchprogram", missing.Err);
            Assert.Contains("not found", missing.Err);
        }
        finally { H.Run("delete", "--force", id); }
    }

    [SkippableFact]
    public void List_shows_containers_as_table_and_json()
    {
        var id = H.NewId();
        Assert.Equal(0, H.Run("create", "--bundle", H.Bundle(null, "sleep", "100"), id).Code);
        try
        {
            var table = H.Run("list").Out;
            Assert.Contains(id, table);
            Assert.Contains("created", table);
            var json = H.Run("list", "--format", "json").Out;
            Assert.Contains($"\"id\": \"{id}\"", json);
            Assert.Contains(id, H.Run("list", "-q").Out);
        }
        finally { H.Run("delete", "--force", id); }
    }

    [SkippableFact]
    public void Spec_writes_a_config_that_runs()
    {
        using var d = new TempDir();
        Assert.Equal(0, H.Run("spec", "--bundle", d.Path).Code);
        var again = H.Run("spec", "--bundle", d.Path);
        Assert.NotEqual(0, again.Code);
        Assert.Contains("already exists", again.Err);
        var spec = SpecLoader.Parse(File.ReadAllText(Path.Combine(d.Path, "config.json")), "config.json");
        Assert.Equal(["sh"], spec.Process!.Args);
        Assert.Contains(spec.Linux!.Namespaces!, n => n.Type == "mount");
    }

    [SkippableFact]
    public void Features_reports_namespaces_and_seccomp()
    {
        var (code, o, _) = H.Run("features");
        Assert.Equal(0, code);
        Assert.Contains("\"namespaces\"", o);
        Assert.Contains("\"user\"", o);
        Assert.Contains("SCMP_ACT_ERRNO", o);
    }
}
