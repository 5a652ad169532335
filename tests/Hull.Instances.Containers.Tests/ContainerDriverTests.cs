using System.Text;
using Hull.TestSupport;
using Hull.Api;
using Hull.Sdk;
using Xunit;

namespace Hull.Instances.Containers.Tests;

/// <summary>Real busybox containers through a real hulld: the SDK, the CLI, restarts of hulld, and clean
/// deletion.</summary>
public sealed class ContainerDriverTests
{
    static bool Mounted(string under) =>
        File.ReadAllLines("/proc/self/mountinfo").Any(l => l.Split(' ')[4].StartsWith(under, StringComparison.Ordinal));

    static string InstanceDir(ContainerDaemon d, string name) => Path.Combine(d.StateDir, "instances", name);
    static string EngineDir(ContainerDaemon d, string name) => Path.Combine(d.StateDir, "containers", name);

    /// <summary>The engine's container dirs (not its caches: '@' is never in a container id).</summary>
    static IEnumerable<string> EngineContainers(ContainerDaemon d) =>
        Directory.EnumerateDirectories(Path.Combine(d.StateDir, "containers")).Where(x =>
            !Path.GetFileName(x).StartsWith('@'));

    [SkippableFact]
    public async Task Sdk_launch_exec_files_limits_stop_start_delete()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        using var share = new Hull.TestSupport.TempDir();
        File.WriteAllText(Path.Combine(share.Path, "shared.txt"), "from the host\n");
        var inst = await c.CreateInstanceAsync(new InstanceCreateRequest
        {
            Name = "c1", Image = "busybox", Start = true,
            Config = { ["limits.memory"] = "128MiB", ["limits.processes"] = "100", ["limits.cpu"] = "1",
                ["environment.GREETING"] = "hi" },
            Devices = { ["share"] = new() { ["type"] = "bind", ["source"] = share.Path, ["path"] = "/mnt/share",
                ["readonly"] = "true" } },
        });
        Assert.Equal(InstanceStates.Running, inst.State);
        Assert.Equal(InstanceTypes.Container, inst.Type);
        var pid = inst.Pid!.Value;
        Assert.True(pid > 0);

        // A real container: own pid, uts and mount namespaces, the overlay as its root.
        Assert.NotEqual(new FileInfo("/proc/self/ns/pid").LinkTarget, new FileInfo($"/proc/{pid}/ns/pid").LinkTarget);
        Assert.NotEqual(new FileInfo("/proc/self/ns/mnt").LinkTarget, new FileInfo($"/proc/{pid}/ns/mnt").LinkTarget);
        Assert.True(Mounted(Path.Combine(InstanceDir(d, "c1"), "rootfs")),
            "the overlay is not mounted while the container runs");
        var ids = await c.ExecAsync("c1", "sh", "-c",
            "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $GREETING");
        Assert.Equal(0, ids.ExitCode);
        var lines = ids.Stdout.Split('\n');
        Assert.Equal("c1", lines[0]);
        Assert.StartsWith("/bin/sh -c", lines[1]);
        Assert.Equal("hi", lines[2]);

        // exec: exit code, stdin, stdout, stderr, env, cwd
        var r = await c.ExecAsync("c1", new ExecRequest { Command = ["sh", "-c", "echo out; echo err >&2; cat; exit 4"],
            Stdin = "from stdin" });
        Assert.Equal(4, r.ExitCode);
        Assert.Equal("out\nfrom stdin", r.Stdout);
        Assert.Equal("err\n", r.Stderr);
        var env = await c.ExecAsync("c1", new ExecRequest { Command = ["sh", "-c", "echo $FOO; pwd"],
            Environment = { ["FOO"] = "bar" }, Cwd = "/tmp" });
        Assert.Equal("bar\n/tmp\n", env.Stdout);
        var missing = await c.ExecAsync("c1", new ExecRequest { Command = ["nosuchprogram"] });
        Assert.Equal(127, missing.ExitCode);
        Assert.Contains("nosuchprogram", missing.Stderr);

        // a pty exec: stdin streamed, the window size, the exit code
        using (var s = await c.ExecInteractiveAsync("c1",
            new ExecRequest { Command = ["sh", "-c", "read line; echo got:$line; stty size; tty; exit 9"], Tty = true,
            Width = 100, Height = 30 }))
        {
            await s.WriteStdinAsync(Encoding.UTF8.GetBytes("ping\n"));
            var output = new MemoryStream();
            Assert.Equal(9, await s.RunAsync(output, null));
            var text = Encoding.UTF8.GetString(output.ToArray());
            Assert.Contains("got:ping", text);
            Assert.Contains("30 100", text);
            Assert.Contains("/dev/pts/", text);
        }

        // limits in the container's cgroup
        var cgs = ContainerDaemon.CgroupDirsOf(pid);
        Assert.NotEmpty(cgs);
        var memFile = cgs.Select(x => Path.Combine(x, "memory.limit_in_bytes")).Concat(
            cgs.Select(x => Path.Combine(x, "memory.max"))).First(File.Exists);
        Assert.Equal((128L << 20).ToString(), File.ReadAllText(memFile).Trim());
        Assert.Equal("100", File.ReadAllText(cgs.Select(x => Path.Combine(x, "pids.max")).First(File.Exists)).Trim());

        // the read-only host share
        Assert.Equal("from the host\n", (await c.ExecAsync("c1", "cat", "/mnt/share/shared.txt")).Stdout);
        Assert.NotEqual(0, (await c.ExecAsync("c1", "sh", "-c", "echo x > /mnt/share/new")).ExitCode);
        Assert.False(File.Exists(Path.Combine(share.Path, "new")));

        // files: push, pull, list, stat, delete, and a symlink that cannot escape
        await c.PushFileAsync("c1", "/root/dir/hello.txt", Encoding.UTF8.GetBytes("hello c1"), 0b111_101_000);
        Assert.Equal("hello c1750\n", (await c.ExecAsync("c1", "sh", "-c",
            "cat /root/dir/hello.txt; stat -c %a /root/dir/hello.txt")).Stdout);
        await c.ExecAsync("c1", "sh", "-c", "echo made inside > /tmp/inside");
        Assert.Equal("made inside\n", Encoding.UTF8.GetString(await c.ReadFileAsync("c1", "/tmp/inside")));
        using (var dir = await c.PullFileAsync("c1", "/root/dir"))
        {
            Assert.Equal("directory", dir.Entry.Type);
            Assert.Contains(dir.Listing!, e => e.Name == "hello.txt" && e.Type == "file" && e.Size == 8);
        }
        await c.ExecAsync("c1", "ln", "-s", "/../../../../etc/hostname", "/tmp/escape");
        Assert.Equal("busybox\n", Encoding.UTF8.GetString(await c.ReadFileAsync("c1", "/tmp/escape")));
        Assert.Equal(404, (await Assert.ThrowsAsync<HullException>(() =>
            c.ReadFileAsync("c1", "/no/such/file"))).StatusCode);
        await c.DeleteFileAsync("c1", "/tmp/inside");
        Assert.NotEqual(0, (await c.ExecAsync("c1", "test", "-e", "/tmp/inside")).ExitCode);

        // state, list, stats, logs
        Assert.Contains(await c.ListInstancesAsync(),
            i => i.Name == "c1" && i.State == InstanceStates.Running && i.Pid == pid);
        var st = await c.GetStateAsync("c1");
        Assert.True(st.Stats!.Pids >= 1);
        Assert.True(st.Stats.MemoryBytes > 0);
        using (var logs = new StreamReader(await c.LogsAsync("c1")))
            Assert.Contains("c1: started", await logs.ReadToEndAsync());

        // pause and resume through the freezer
        await c.PauseAsync("c1");
        Assert.Equal(InstanceStates.Frozen, (await c.GetInstanceAsync("c1")).State);
        await c.ResumeAsync("c1");
        Assert.Equal(0, (await c.ExecAsync("c1", "true")).ExitCode);

        // stop: the init ends (cleanly, on SIGTERM), the overlay and the engine container go, the files stay
        await c.StopAsync("c1", timeout: 20);
        var stopped = await c.GetInstanceAsync("c1");
        Assert.Equal(InstanceStates.Stopped, stopped.State);
        Assert.Equal(0, stopped.LastExitCode);
        Assert.False(Hull.Linux.Sys.ProcessExists(pid));
        Assert.False(Mounted(Path.Combine(InstanceDir(d, "c1"), "rootfs")), "the overlay is still mounted after stop");
        Assert.False(Directory.Exists(EngineDir(d, "c1")), "the engine still has the container after stop");
        Assert.All(cgs, x => Assert.False(Directory.Exists(x), $"cgroup {x} is left after stop"));
        // files of a stopped instance
        Assert.Equal("hello c1", Encoding.UTF8.GetString(await c.ReadFileAsync("c1", "/root/dir/hello.txt")));
        await c.PushFileAsync("c1", "/root/offline.txt", Encoding.UTF8.GetBytes("pushed while stopped"));
        Assert.False(Mounted(Path.Combine(InstanceDir(d, "c1"), "rootfs")));

        await c.StartAsync("c1");
        var pid2 = (await c.GetInstanceAsync("c1")).Pid!.Value;
        Assert.NotEqual(pid, pid2);
        Assert.Equal("pushed while stopped", (await c.ExecAsync("c1", "cat", "/root/offline.txt")).Stdout);

        // delete: nothing left (processes, mounts, cgroups, engine state, files)
        var cgs2 = ContainerDaemon.CgroupDirsOf(pid2);
        Assert.NotEmpty(cgs2);
        await c.DeleteInstanceAsync("c1", force: true);
        Assert.DoesNotContain(await c.ListInstancesAsync(), i => i.Name == "c1");
        Assert.False(Hull.Linux.Sys.ProcessExists(pid2));
        Assert.False(Mounted(InstanceDir(d, "c1")));
        Assert.All(cgs2, x => Assert.False(Directory.Exists(x), $"cgroup {x} is left after delete"));
        Assert.False(Directory.Exists(EngineDir(d, "c1")));
        Assert.False(Directory.Exists(InstanceDir(d, "c1")));
    }

    [SkippableFact]
    public async Task Snapshots_and_copies_keep_the_instance_changes()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        await c.LaunchAsync("busybox", "s1");
        await c.ExecAsync("s1", "sh", "-c", "echo one > /root/state");
        await c.StopAsync("s1", force: true);
        await c.CreateSnapshotAsync("s1", "snap0");
        await c.StartAsync("s1");
        await c.ExecAsync("s1", "sh", "-c", "echo two > /root/state; rm /etc/hostname");
        await c.StopAsync("s1", force: true);
        await c.RestoreSnapshotAsync("s1", "snap0");
        await c.StartAsync("s1");
        Assert.Equal("one\n", (await c.ExecAsync("s1", "cat", "/root/state")).Stdout);
        Assert.Equal("busybox\n", (await c.ExecAsync("s1", "cat", "/etc/hostname")).Stdout);
        await c.StopAsync("s1", force: true);
        Assert.Equal(0, d.Cli("copy", "s1", "s2").Code);
        Assert.Equal(0, d.Cli("start", "s2").Code);
        Assert.Equal("one\n", (await c.ExecAsync("s2", "cat", "/root/state")).Stdout);
        foreach (var n in new[] { "s1", "s2" }) await c.DeleteInstanceAsync(n, force: true);
        Assert.False(Mounted(Path.Combine(d.StateDir, "instances")));
    }

    [SkippableFact]
    public async Task Without_overlayfs_under_the_state_dir_the_rootfs_is_a_copy()
    {
        using var d = new ContainerDaemon(stateOnOverlay: true);
        var c = d.Client;
        await c.LaunchAsync("busybox", "cp1");
        Assert.Equal("copy", File.ReadAllText(Path.Combine(InstanceDir(d, "cp1"), "lower")).Trim());
        Assert.False(Mounted(Path.Combine(InstanceDir(d, "cp1"), "rootfs")));
        var r = await c.ExecAsync("cp1", new ExecRequest { Command = ["sh", "-c", "cat; hostname"], Stdin = "x:" });
        Assert.Equal("x:cp1\n", r.Stdout);
        await c.PushFileAsync("cp1", "/root/a.txt", Encoding.UTF8.GetBytes("A"));
        await c.StopAsync("cp1", timeout: 20);
        await c.CreateSnapshotAsync("cp1", "s");
        await c.PushFileAsync("cp1", "/root/a.txt", Encoding.UTF8.GetBytes("B"));
        Assert.Equal("B", Encoding.UTF8.GetString(await c.ReadFileAsync("cp1", "/root/a.txt")));
        await c.RestoreSnapshotAsync("cp1", "s");
        await c.StartAsync("cp1");
        Assert.Equal("A", (await c.ExecAsync("cp1", "cat", "/root/a.txt")).Stdout);
        await c.DeleteInstanceAsync("cp1", force: true);
        Assert.False(Directory.Exists(InstanceDir(d, "cp1")));
        Assert.Empty(EngineContainers(d));
    }

    [SkippableFact]
    public async Task Containers_outlive_hulld_kill9_and_are_found_again()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        await c.LaunchAsync("busybox", "keeps");
        await c.LaunchAsync("busybox", "ends");
        var keepsPid = (await c.GetInstanceAsync("keeps")).Pid!.Value;
        var endsPid = (await c.GetInstanceAsync("ends")).Pid!.Value;
        var endsCgroups = ContainerDaemon.CgroupDirsOf(endsPid);

        d.Kill9();
        Assert.True(Hull.Linux.Sys.ProcessExists(keepsPid), "the container died with hulld");
        // While hulld is away, "ends" is stopped from the host.
        Hull.Linux.Libc.kill(endsPid, Hull.Linux.Signals.SIGTERM);
        await Wait.UntilAsync(() => Task.FromResult(!Hull.Linux.Sys.ProcessExists(endsPid)
            || File.ReadAllText($"/proc/{endsPid}/stat").Contains(") Z ")), "the 'ends' container to exit");

        d.Start();
        var keeps = await c.GetInstanceAsync("keeps");
        Assert.Equal(InstanceStates.Running, keeps.State);
        Assert.Equal(keepsPid, keeps.Pid);
        var r = await c.ExecAsync("keeps", new ExecRequest { Command = ["sh", "-c", "cat; echo still here"],
            Stdin = "in:" });
        Assert.Equal(0, r.ExitCode);
        Assert.Equal("in:still here\n", r.Stdout);
        Assert.Equal(InstanceStates.Stopped, (await c.GetInstanceAsync("ends")).State);
        Assert.False(Mounted(Path.Combine(InstanceDir(d, "ends"), "rootfs")),
            "the overlay of the ended container is still mounted");
        Assert.All(endsCgroups, x => Assert.False(Directory.Exists(x), $"cgroup {x} of the ended container is left"));
        // It starts again.
        await c.StartAsync("ends");
        Assert.Equal(0, (await c.ExecAsync("ends", "true")).ExitCode);

        // A reattached container is still stopped and watched properly.
        await c.StopAsync("keeps", timeout: 20);
        Assert.Equal(InstanceStates.Stopped, (await c.GetInstanceAsync("keeps")).State);
        Assert.False(Hull.Linux.Sys.ProcessExists(keepsPid)
            && !File.ReadAllText($"/proc/{keepsPid}/stat").Contains(") Z "));
        foreach (var n in new[] { "keeps", "ends" }) await c.DeleteInstanceAsync(n, force: true);
        Assert.False(Mounted(Path.Combine(d.StateDir, "instances")));
        Assert.Empty(EngineContainers(d));
    }

    [SkippableFact]
    public void Cli_launch_exec_files_list_info_stop_start_delete()
    {
        using var d = new ContainerDaemon();
        Ok(d.Cli("launch", "busybox", "k1", "-c", "environment.WHO=cli"), "launch");
        var exec = d.CliIn("hello from stdin", "exec", "k1", "--env", "X=1", "--cwd", "/tmp", "--", "sh", "-c",
            "cat; echo; echo $WHO$X $(pwd); echo oops >&2; exit 42");
        Assert.Equal(42, exec.Code);
        Assert.Equal("hello from stdin\ncli1 /tmp\n", exec.Out);
        Assert.Contains("oops", exec.Err);

        var local = Path.Combine(d.Dir, "local.txt");
        File.WriteAllText(local, "pushed by the cli");
        Ok(d.Cli("file", "push", local, "k1/root/pushed.txt", "--mode", "0600"), "file push");
        Assert.Equal("pushed by the cli", d.Cli("exec", "k1", "--", "cat", "/root/pushed.txt").Out);
        Assert.Equal("600\n", d.Cli("exec", "k1", "--", "stat", "-c", "%a", "/root/pushed.txt").Out);
        var back = Path.Combine(d.Dir, "back.txt");
        Ok(d.Cli("file", "pull", "k1/root/pushed.txt", back), "file pull");
        Assert.Equal("pushed by the cli", File.ReadAllText(back));

        var list = d.Cli("list", "--format", "json");
        Ok(list, "list");
        Assert.Contains("\"k1\"", list.Out);
        Assert.Contains("Running", list.Out);
        Assert.Contains("Type: container", d.Cli("info", "k1").Out);

        // Limits changed on a running container reach its cgroup at once.
        Ok(d.Cli("config", "set", "k1", "limits.memory=64MiB", "limits.processes=50"), "config set");
        var cgs = ContainerDaemon.CgroupDirsOf(d.Client.GetInstanceAsync("k1").GetAwaiter().GetResult().Pid!.Value);
        Assert.Equal("50", File.ReadAllText(cgs.Select(x => Path.Combine(x, "pids.max")).First(File.Exists)).Trim());
        var memFile = cgs.Select(x => Path.Combine(x, "memory.limit_in_bytes")).Concat(
            cgs.Select(x => Path.Combine(x, "memory.max"))).First(File.Exists);
        Assert.Equal((64L << 20).ToString(), File.ReadAllText(memFile).Trim());
        Ok(d.Cli("config", "unset", "k1", "limits.processes"), "config unset");
        Assert.Equal("max", File.ReadAllText(cgs.Select(x => Path.Combine(x, "pids.max")).First(File.Exists)).Trim());

        Ok(d.Cli("stop", "k1"), "stop");
        Assert.Contains("STOPPED", d.Cli("list").Out);
        Ok(d.Cli("start", "k1"), "start");
        Assert.Equal("pushed by the cli", d.Cli("exec", "k1", "--", "cat", "/root/pushed.txt").Out);
        Ok(d.Cli("delete", "--force", "k1"), "delete");
        Assert.DoesNotContain("k1", d.Cli("list").Out);
        Assert.False(Mounted(Path.Combine(d.StateDir, "instances")));
    }

    static void Ok((int Code, string Out, string Err) r, string what) =>
        Assert.True(r.Code == 0, $"{what} failed ({r.Code}): {r.Out} {r.Err}");
}
