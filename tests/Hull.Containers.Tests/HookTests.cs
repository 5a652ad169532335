using Hull.Oci;
using Hull.TestSupport;
using Xunit;

namespace Hull.Containers.Tests;

[Collection("oci")]
public class HookTests(OciHarnessFixture f)
{
    OciHarness H => f.H;

    static Hook Log(string file, string kind) => new()
    {
        Path = "/bin/sh", Args = ["sh", "-c", $"read -r state; echo \"{kind} $state\" >> {file}; echo \"{kind} " +
            $"ns=$(readlink /proc/self/ns/mnt)\" >> {file}"],
    };

    [SkippableFact]
    public void All_six_hook_kinds_run_in_order_with_the_state_on_stdin()
    {
        var log = Path.Combine(H.Dir.Path, "hooks-" + Guid.NewGuid().ToString("N") + ".log");
        var id = H.NewId();
        var b = H.Bundle(s => s.Hooks = new Hooks
        {
            Prestart = [Log(log, "prestart")], CreateRuntime = [Log(log, "createRuntime")],
            CreateContainer = [Log(log, "createContainer")],
            StartContainer = [new Hook { Path = "/bin/sh",
            Args = ["sh", "-c", "read -r s; echo startContainer > /tmp/started"] }],
            Poststart = [Log(log, "poststart")], Poststop = [Log(log, "poststop")],
        }, "sh", "-c", "cat /tmp/started");
        var (code, o, e) = H.Run("run", "--bundle", b, id);
        Assert.True(code == 0, e);
        Assert.Equal("startContainer\n", o); // startContainer ran inside the container, before the process
        var lines = File.ReadAllLines(log);
        var kinds = lines.Where((_, i) => i % 2 == 0).Select(l => l.Split(' ')[0]).ToArray();
        Assert.Equal(["prestart", "createRuntime", "createContainer", "poststart", "poststop"], kinds);
        Assert.Contains($"\"id\":\"{id}\"", lines[0].Replace(" ", ""));
        Assert.Contains("\"status\":\"creating\"", lines[0].Replace(" ", ""));
        Assert.Contains("\"status\":\"stopped\"", lines[8].Replace(" ", ""));
        var hostNs = new FileInfo("/proc/self/ns/mnt").LinkTarget!;
        Assert.EndsWith(hostNs, lines[3]);          // createRuntime: runtime namespace
        Assert.DoesNotContain(hostNs, lines[5]);    // createContainer: container namespace
    }

    [SkippableFact]
    public void A_failing_hook_fails_create_and_leaves_nothing_behind()
    {
        var before = OciHarness.Snapshot(H.Root);
        var id = H.NewId();
        var b = H.Bundle(s => s.Hooks = new Hooks { CreateRuntime =
            [new Hook { Path = "/bin/sh", Args = ["sh", "-c", "echo hook-says-no >&2; exit 3"] }] }, "sleep", "10");
        var (code, _, e) = H.Run("create", "--bundle", b, id);
        Assert.NotEqual(0, code);
        Assert.Contains("createRuntime hook #0", e);
        Assert.Contains("exit status 3", e);
        Assert.Contains("hook-says-no", e);
        Assert.Equal(before, OciHarness.Snapshot(H.Root));
    }

    [SkippableFact]
    public void A_hook_that_overruns_its_timeout_is_killed()
    {
        var id = H.NewId();
        var b = H.Bundle(s => s.Hooks = new Hooks { Prestart =
            [new Hook { Path = "/bin/sleep", Args = ["sleep", "30"], Timeout = 1 }] });
        var (code, _, e) = H.Run("run", "--bundle", b, id);
        Assert.NotEqual(0, code);
        Assert.Contains("timed out after 1 s", e);
        Assert.False(Directory.Exists(Path.Combine(H.Root, id)));
    }
}
