using System.Diagnostics;
using Hull.TestSupport;
using Xunit;

namespace Hull.Oci.Clients.Tests;

/// <summary>
/// A private containerd (its own root, state, socket and config in one temp dir) whose runc shim runs hull-oci from
/// out/bin, and a busybox OCI image built with umoci and imported with ctr. Dispose kills the tasks, stops containerd
/// and
/// its shims, unmounts the snapshots and removes the directory.
/// </summary>
public sealed class ContainerdFixture : IDisposable
{
    public const string Namespace = "hulltest";
    public const string Image = "hull.test/busybox:latest";
    public TempDir Dir { get; } = new("hull-ctr");
    public string Address => Path.Combine(Dir.Path, "containerd.sock");
    public string HullOci => Path.Combine(Repo.Bin, "hull-oci");
    /// <summary>The runc root the shim hands to hull-oci (--runc-root); the shim adds the namespace below it.</summary>
    public string RuncRoot => Path.Combine(Dir.Path, "hull-state");
    public string FifoDir => Path.Combine(Dir.Path, "fifo");
    Process? containerd;
    string? startError;
    /// <summary>The runc shim puts its sockets in /run/containerd/s whatever containerd's own state dir is.</summary>
    const string ShimRunDir = "/run/containerd";
    readonly bool shimRunDirExisted = Directory.Exists(ShimRunDir);

    public ContainerdFixture()
    {
        if (!File.Exists("/usr/bin/containerd") && !File.Exists("/usr/local/bin/containerd")) { startError =
            "containerd is not installed"; return; }
        try { Start(); }
        catch (Exception e) { startError = e.Message; }
    }

    /// <summary>Fails the calling test with the reason the fixture could not start containerd or build the
    /// image.</summary>
    public void EnsureStarted()
    {
        if (startError is not null) throw new InvalidOperationException("the private containerd is not usable: "
            + startError);
    }

    void Start()
    {
        Directory.CreateDirectory(FifoDir);
        var config = Path.Combine(Dir.Path, "config.toml");
        File.WriteAllText(config, $"""
            version = 2
            root = "{Dir.Path}/root"
            state = "{Dir.Path}/state"
            disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
            [grpc]
              address = "{Address}"
            [ttrpc]
              address = "{Address}.ttrpc"
            [debug]
              address = ""
            [metrics]
              address = ""
            """);
        var psi = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("exec containerd --config \"$1\" --log-level debug >\"$2\" 2>&1");
        psi.ArgumentList.Add("sh");
        psi.ArgumentList.Add(config);
        psi.ArgumentList.Add(Path.Combine(Dir.Path, "containerd.log"));
        containerd = Process.Start(psi) ?? throw new InvalidOperationException("cannot start containerd");
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (Ctr("version").ExitCode != 0)
        {
            if (containerd.HasExited) throw new InvalidOperationException("containerd exited: "
                + File.ReadAllText(Path.Combine(Dir.Path, "containerd.log")));
            if (DateTime.UtcNow > deadline) throw new TimeoutException("containerd did not answer on " + Address
                + " within 30 s");
            Thread.Sleep(100);
        }
        BuildAndImportImage();
    }

    void BuildAndImportImage()
    {
        var layout = Path.Combine(Dir.Path, "image");
        var bundle = Path.Combine(Dir.Path, "image-bundle");
        Cmd.Ok("umoci", ["init", "--layout", layout]);
        Cmd.Ok("umoci", ["new", "--image", layout + ":latest"]);
        Cmd.Ok("umoci", ["unpack", "--image", layout + ":latest", bundle]);
        BusyboxRootfs.Create(Path.Combine(bundle, "rootfs"));
        Cmd.Ok("umoci", ["repack", "--image", layout + ":latest", bundle]);
        Cmd.Ok("umoci", ["config", "--image", layout + ":latest", "--config.cmd", "sh"]);
        var tar = Path.Combine(Dir.Path, "image.tar");
        Cmd.Ok("tar", ["-C", layout, "-cf", tar, "."]);
        var r = Ctr("images", "import", "--base-name", "hull.test/busybox", tar);
        if (r.ExitCode != 0) throw new InvalidOperationException("ctr images import failed: " + r);
        Directory.Delete(bundle, recursive: true);
    }

    public CmdResult Ctr(params string[] args) =>
        Cmd.Run("ctr", ["--address", Address, "--namespace", Namespace, .. args], 120);

    public void Dispose()
    {
        if (containerd is { HasExited: false })
        {
            try
            {
                foreach (var line in Ctr("tasks", "ls", "-q").Stdout.Split('\n',
                    StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                {
                    Ctr("tasks", "kill", "--signal", "SIGKILL", line);
                    Ctr("tasks", "delete", "--force", line);
                }
                foreach (var line in Ctr("containers", "ls", "-q").Stdout.Split('\n',
                    StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                    Ctr("containers", "delete", line);
            }
            catch (TimeoutException) { }
            containerd.Kill();
            containerd.WaitForExit(10_000);
        }
        containerd?.Dispose();
        try { Cleanup.DeleteHullContainers(HullOci, Path.Combine(RuncRoot, Namespace)); } catch (Exception) { }
        Cleanup.KillProcessesMentioning(Dir.Path);
        Cleanup.UnmountUnder(Dir.Path);
        Dir.Dispose();
        if (!shimRunDirExisted)
            foreach (var d in new[] { ShimRunDir + "/s", ShimRunDir })
                try { Directory.Delete(d); } catch (IOException) { } // only if empty: a shim of someone else may use it
    }
}

public sealed class CtrTests : IClassFixture<ContainerdFixture>
{
    readonly ContainerdFixture f;

    public CtrTests(ContainerdFixture fixture) => f = fixture;

    void Require()
    {
        Requires.Root();
        Requires.Program("containerd");
        Requires.Program("containerd-shim-runc-v2");
        Requires.Program("ctr");
        Requires.Program("umoci");
        Requires.File(f.HullOci, "hull-oci from 'make build'");
        Requires.File(BusyboxRootfs.Busybox, "a static busybox (busybox-static)");
        f.EnsureStarted();
    }

    string[] RuntimeFlags => ["--runc-binary", f.HullOci, "--runc-root", f.RuncRoot, "--fifo-dir", f.FifoDir];

    static string NewId() => "hull-" + Guid.NewGuid().ToString("N")[..10];

    [SkippableFact]
    public void Run_rm_prints_the_output_and_passes_the_exit_status()
    {
        Require();
        var id = NewId();
        var r = f.Ctr(["run", "--rm", .. RuntimeFlags, ContainerdFixture.Image, id, "sh", "-c",
            "echo hello from hull; cat /proc/1/cmdline | tr '\\0' ' '; echo; exit 7"]);
        Assert.True(r.ExitCode == 7, r.ToString());
        Assert.Contains("hello from hull", r.Stdout);
        Assert.Contains("sh -c echo hello from hull", r.Stdout);
        Assert.DoesNotContain(id, f.Ctr("containers", "ls", "-q").Stdout);
        Assert.Empty(Cmd.Ok(f.HullOci, ["--root", Path.Combine(f.RuncRoot, ContainerdFixture.Namespace), "list",
            "-q"]).Stdout.Trim());
    }

    [SkippableFact]
    public void Detached_task_then_exec_then_kill_and_delete()
    {
        Require();
        var id = NewId();
        var hullRoot = Path.Combine(f.RuncRoot, ContainerdFixture.Namespace);
        var run = f.Ctr(["run", "-d", .. RuntimeFlags, ContainerdFixture.Image, id, "sleep", "1000"]);
        Assert.True(run.ExitCode == 0, run.ToString());
        try
        {
            // the shim drove hull-oci: Hull's own state shows the task running
            var state = Cmd.Ok(f.HullOci, ["--root", hullRoot, "state", id]);
            Assert.Contains("\"status\": \"running\"", state.Stdout);
            Assert.Matches(@"(?m)^" + id + @"\s+\d+\s+RUNNING", f.Ctr("tasks", "ls").Stdout);

            var exec = f.Ctr(["tasks", "exec", "--exec-id", "e1", "--fifo-dir", f.FifoDir, id, "sh", "-c",
                "echo exec-ok; cat /proc/1/cmdline | tr '\\0' ' '; echo; exit 6"]);
            Assert.True(exec.ExitCode == 6, exec.ToString());
            Assert.Contains("exec-ok", exec.Stdout);
            Assert.Contains("sleep 1000", exec.Stdout);

            var kill = f.Ctr("tasks", "kill", "--signal", "SIGKILL", id);
            Assert.True(kill.ExitCode == 0, kill.ToString());
            var deadline = DateTime.UtcNow.AddSeconds(20);
            while (!f.Ctr("tasks", "ls").Stdout.Contains("STOPPED"))
            {
                Assert.True(DateTime.UtcNow < deadline, "the task did not stop after SIGKILL: " + f.Ctr("tasks", "ls"));
                Thread.Sleep(100);
            }
            var delete = f.Ctr("tasks", "delete", id);
            Assert.True(delete.ExitCode == 0, delete.ToString());
            Assert.False(Cmd.Run(f.HullOci, ["--root", hullRoot, "state", id]).ExitCode == 0,
                "Hull still has the state of " + id);
        }
        finally
        {
            f.Ctr("tasks", "delete", "--force", id);
            f.Ctr("containers", "delete", id);
        }
        Assert.DoesNotContain(id, f.Ctr("containers", "ls", "-q").Stdout);
    }
    [SkippableFact]
    public void Run_with_a_tty_and_exec_with_a_tty()
    {
        Require();
        Requires.Program("script");
        var id = NewId();
        string Quote(IEnumerable<string> a) => string.Join(' ', a.Select(x => "'" + x.Replace("'", "'\\''") + "'"));
        string[] ctr = ["ctr", "--address", f.Address, "--namespace", ContainerdFixture.Namespace];
        // script(1) gives ctr a pty as stdin; the shim then asks hull-oci for a console (--console-socket).
        var run = Cmd.Run("script", ["-qec", Quote(
            [.. ctr, "run", "--rm", "-t", .. RuntimeFlags, ContainerdFixture.Image, id,
            "sh", "-c", "tty; test -t 0 && test -t 1 && echo stdin-and-stdout-are-terminals; exit 4"]), "/dev/null"]);
        Assert.True(run.ExitCode == 4, run.ToString());
        Assert.Matches(@"/dev/pts/\d+", run.Stdout);
        Assert.Contains("stdin-and-stdout-are-terminals", run.Stdout);

        var id2 = NewId();
        var d = f.Ctr(["run", "-d", .. RuntimeFlags, ContainerdFixture.Image, id2, "sleep", "1000"]);
        Assert.True(d.ExitCode == 0, d.ToString());
        try
        {
            var exec = Cmd.Run("script", ["-qec",
                Quote([.. ctr, "tasks", "exec", "-t", "--exec-id", "t1", "--fifo-dir", f.FifoDir, id2,
                "sh", "-c", "tty; test -t 0 && echo exec-has-a-terminal; exit 3"]), "/dev/null"]);
            Assert.True(exec.ExitCode == 3, exec.ToString());
            Assert.Contains("exec-has-a-terminal", exec.Stdout);
        }
        finally
        {
            f.Ctr("tasks", "kill", "--signal", "SIGKILL", id2);
            var deadline = DateTime.UtcNow.AddSeconds(20);
            while (f.Ctr("tasks", "delete", id2).ExitCode != 0 && DateTime.UtcNow < deadline) Thread.Sleep(100);
            f.Ctr("containers", "delete", id2);
        }
    }
}
