using System.Text.Json;
using Xunit;

namespace Hull.Daemon.Tests;

/// <summary>The hull CLI against a real hulld, which the CLI itself starts on first use.</summary>
[Collection("daemon")]
public sealed class CliTests
{
    static void Ok((int Code, string Out, string Err) r, string what)
    {
        Assert.True(r.Code == 0, $"{what} failed ({r.Code}): {r.Err}{r.Out}");
    }

    static void Fails((int Code, string Out, string Err) r, params string[] fragments)
    {
        Assert.NotEqual(0, r.Code);
        foreach (var f in fragments) Assert.Contains(f, r.Err);
    }

    [SkippableFact]
    public void Cli_starts_hulld_and_drives_instances()
    {
        using var d = new TestDaemon(start: false);
        var launch = d.Cli("launch", "busybox", "c1", "-c", "environment.WHO=cli");
        Ok(launch, "launch");
        Assert.Contains("started hulld", launch.Err);
        Ok(d.Cli("launch", "busybox", "v1", "--vm"), "launch --vm");

        var list = d.Cli("list", "--format", "json");
        Ok(list, "list");
        using (var doc = JsonDocument.Parse(list.Out))
        {
            var names = doc.RootElement.EnumerateArray().Select(e =>
                (e.GetProperty("name").GetString(), e.GetProperty("state").GetString(),
                e.GetProperty("type").GetString())).ToList();
            Assert.Contains(("c1", "Running", "container"), names);
            Assert.Contains(("v1", "Running", "vm"), names);
        }
        var table = d.Cli("list");
        Assert.Contains("| c1 ", table.Out);
        Assert.Contains("RUNNING", table.Out);
        var yaml = d.Cli("info", "c1", "--format", "yaml");
        Ok(yaml, "info yaml");
        Assert.Contains("name: c1", yaml.Out);
        Assert.Contains("Type: container", d.Cli("info", "c1").Out);

        // exec: stdin streamed in, stdout and stderr out, the exit status returned.
        var exec = d.CliIn("hello from stdin", "exec", "c1", "--env", "X=1", "--cwd", "/tmp", "--", "sh", "-c",
            "cat; echo; echo $WHO$X $(pwd); echo oops >&2; exit 42");
        Assert.Equal(42, exec.Code);
        Assert.Equal("hello from stdin\ncli1 /tmp\n", exec.Out);
        Assert.Contains("oops", exec.Err);
        var tty = d.Cli("exec", "-t", "v1", "--", "sh", "-c", "stty size");
        Assert.Equal(0, tty.Code);
        Assert.Contains("24 80", tty.Out);

        // files
        var local = Path.Combine(d.Dir, "local.txt");
        File.WriteAllText(local, "pushed by the cli");
        Ok(d.Cli("file", "push", local, "v1/root/pushed.txt", "--mode", "0600"), "file push");
        Assert.Equal("pushed by the cli", d.Cli("exec", "v1", "--", "cat", "/root/pushed.txt").Out);
        var back = Path.Combine(d.Dir, "back.txt");
        Ok(d.Cli("file", "pull", "v1/root/pushed.txt", back), "file pull");
        Assert.Equal("pushed by the cli", File.ReadAllText(back));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(back));

        // config and profiles
        Ok(d.Cli("config", "set", "c1", "limits.memory=128MiB", "limits.cpu=1"), "config set");
        Assert.Contains("limits.memory: 128MiB", d.Cli("config", "show", "c1").Out);
        Ok(d.Cli("config", "unset", "c1", "limits.cpu"), "config unset");
        Assert.DoesNotContain("limits.cpu", d.Cli("config", "show", "c1").Out);
        Fails(d.Cli("config", "set", "c1", "limits.memory=1"), "limits.memory='1' is invalid", "4MiB to 16TiB");
        Fails(d.Cli("config", "set", "c1", "limits.cpu"), "not key=value");
        Ok(d.Cli("profile", "create", "web", "-c", "environment.ROLE=web"), "profile create");
        Ok(d.Cli("profile", "assign", "c1", "default,web"), "profile assign");
        Ok(d.Cli("restart", "c1"), "restart");
        Assert.Equal("web\n", d.Cli("exec", "c1", "--", "sh", "-c", "echo $ROLE").Out);
        Assert.Contains("web", d.Cli("profile", "list").Out);
        Fails(d.Cli("profile", "delete", "web"), "used by c1");

        // snapshots
        Ok(d.Cli("snapshot", "create", "c1", "base"), "snapshot create");
        Assert.Contains("base", d.Cli("snapshot", "list", "c1").Out);
        Ok(d.Cli("exec", "c1", "--", "sh", "-c", "echo changed > /etc/hostname"), "exec change");
        Fails(d.Cli("snapshot", "restore", "c1", "base"), "stop it before restoring");
        Ok(d.Cli("stop", "c1", "--timeout", "10"), "stop");
        Ok(d.Cli("snapshot", "restore", "c1", "base"), "snapshot restore");
        Ok(d.Cli("start", "c1"), "start");
        Assert.Equal("busybox\n", d.Cli("exec", "c1", "--", "cat", "/etc/hostname").Out);

        // pause, resume, logs, images, operations
        Ok(d.Cli("pause", "c1"), "pause");
        Assert.Contains("FROZEN", d.Cli("list").Out);
        Ok(d.Cli("resume", "c1"), "resume");
        Assert.Contains("c1 booted", d.Cli("logs", "c1").Out);
        var images = d.Cli("image", "list", "--format", "json");
        Assert.Contains("busybox", images.Out);
        var tar = Path.Combine(d.Dir, "bb.tar");
        Ok(d.Cli("image", "export", "busybox", tar), "image export");
        Ok(d.Cli("image", "import", tar, "--alias", "mybox"), "image import");
        Ok(d.Cli("init", "mybox", "c2"), "init from alias");
        Assert.Contains("STOPPED", d.Cli("list").Out);
        Ok(d.Cli("copy", "c2", "c3"), "copy");
        Ok(d.Cli("move", "c3", "c4"), "move");
        Fails(d.Cli("move", "c4", "otherhost:c4"), "remote 'otherhost' is not known");
        Assert.Contains("Success", d.Cli("operation", "list").Out);

        // bad input: exit status != 0 and a message that says what to do
        Fails(d.Cli("info", "ghost"), "instance 'ghost' not found");
        Fails(d.Cli("launch", "nosuchimage", "x1"), "image 'nosuchimage' not found");
        Fails(d.Cli("launch", "busybox", "x1", "--profile", "nosuchprofile"), "profile 'nosuchprofile' not found");
        Fails(d.Cli("launch", "busybox", "x1", "-c", "limits.bogus=1"), "unknown config key 'limits.bogus'");
        Fails(d.Cli("launch", "busybox", "c1"), "already exists");
        Fails(d.Cli("start", "c1"), "already running");
        Fails(d.Cli("delete", "c1"), "--force");
        Fails(d.Cli("file", "pull", "c1-no-slash", back), "INSTANCE/PATH");
        Assert.NotEqual(0, d.Cli("frobnicate").Code);
        Assert.DoesNotContain("x1", d.Cli("list").Out);

        foreach (var n in new[] { "c1", "v1", "c2", "c4" }) Ok(d.Cli("delete", "--force", n), "delete " + n);
        Assert.DoesNotContain("c1", d.Cli("list").Out);
    }

    [SkippableFact]
    public void Completion_script_and_help()
    {
        using var d = new TestDaemon(start: false);
        var r = d.Cli("completion", "bash");
        Assert.Equal(0, r.Code);
        Assert.Contains("complete -o default -F _hull_complete hull", r.Out);
        var help = d.Cli("--help");
        Assert.Contains("launch", help.Out);
        Assert.Contains("snapshot", help.Out);
    }
}

/// <summary>OCI image layouts (as umoci and skopeo write them): layers flattened with whiteouts honoured.</summary>
[Collection("daemon")]
public sealed class OciLayoutTests
{
    static void Run(string program, params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(
            Hull.TestSupport.Requires.Program(program)) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        var err = p.StandardError.ReadToEnd() + p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{program} {string.Join(' ', args)}: {err}");
    }

    [SkippableFact]
    public async Task Import_an_oci_layout_with_whiteouts_and_launch_it()
    {
        using var d = new TestDaemon();
        // A layout with three layers: the busybox rootfs, a layer adding files, a layer whiting one out and making /opt
        // opaque.
        var export = Path.Combine(d.Dir, "bb.tar");
        await d.Client.LaunchAsync("busybox", "seed"); // builds the built-in image
        Assert.Equal(0, d.Cli("image", "export", "busybox", export).Code);
        var rootfs = Path.Combine(d.Dir, "rootfs");
        Directory.CreateDirectory(rootfs);
        Run("tar", "-xf", export, "-C", rootfs);
        var layout = Path.Combine(d.Dir, "layout");
        Run("umoci", "init", "--layout", layout);
        Run("umoci", "new", "--image", layout + ":app");
        Run("umoci", "insert", "--image", layout + ":app", rootfs, "/");
        var extra = Path.Combine(d.Dir, "extra");
        Directory.CreateDirectory(Path.Combine(extra, "old"));
        File.WriteAllText(Path.Combine(extra, "keep"), "kept");
        File.WriteAllText(Path.Combine(extra, "gone"), "should be whited out");
        File.WriteAllText(Path.Combine(extra, "old", "lower"), "hidden by the opaque dir");
        Run("umoci", "insert", "--image", layout + ":app", extra, "/opt");
        Run("umoci", "insert", "--image", layout + ":app", "--whiteout", "/opt/gone");
        var upper = Path.Combine(d.Dir, "upper");
        Directory.CreateDirectory(upper);
        File.WriteAllText(Path.Combine(upper, "upper"), "from the top layer");
        Run("umoci", "insert", "--image", layout + ":app", "--opaque", upper, "/opt/old");

        var r = d.Cli("image", "import", layout, "--alias", "app");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("fingerprint", r.Out);
        Assert.Equal(0, d.Cli("launch", "app", "oci1").Code);
        var ls = await d.Client.ExecAsync("oci1", "sh", "-c", "cat /opt/keep; ls /opt; ls /opt/old");
        Assert.Equal("kept" + "keep\nold\n" + "upper\n", ls.Stdout);

        var badRef = d.Cli("image", "import", layout, "--ref", "nope");
        Assert.NotEqual(0, badRef.Code);
        Assert.Contains("no image tagged 'nope'", badRef.Err);
        Assert.Contains("app", badRef.Err);
        // A corrupt blob is refused and leaves no image.
        var images = (await d.Client.ListImagesAsync()).Count;
        var blob = Directory.GetFiles(Path.Combine(layout, "blobs", "sha256")).OrderByDescending(f =>
            new FileInfo(f).Length).First();
        await using (var f = File.OpenWrite(blob)) { f.Seek(100,
            SeekOrigin.Begin); f.WriteByte(0x42); f.WriteByte(0x43); }
        var corrupt = d.Cli("image", "import", layout);
        Assert.NotEqual(0, corrupt.Code);
        Assert.Contains("corrupt", corrupt.Err);
        Assert.Equal(images, (await d.Client.ListImagesAsync()).Count);
        await d.Client.DeleteInstanceAsync("oci1", force: true);
    }
}
