using System.Text;
using System.Text.Json;
using Hull.TestSupport;
using Hull.Api;
using Hull.Sdk;
using Xunit;

namespace Hull.Daemon.Tests;

/// <summary>One daemon shared by the SDK tests of this class (each test uses its own instance names).</summary>
public sealed class SharedDaemon : IDisposable
{
    public TestDaemon D { get; } = new();
    public void Dispose() => D.Dispose();
}

[Collection("daemon")]
public sealed class SdkTests(SharedDaemon shared) : IClassFixture<SharedDaemon>
{
    HullClient C => shared.D.Client;

    [SkippableFact]
    public async Task Launch_container_and_vm_from_busybox_then_exec_and_files()
    {
        var c = await C.LaunchAsync("busybox", "sdk-c1");
        var v = await C.LaunchAsync("busybox", "sdk-v1", InstanceTypes.Vm);
        Assert.Equal(InstanceStates.Running, c.State);
        Assert.Equal(InstanceTypes.Container, c.Type);
        Assert.Equal(InstanceTypes.Vm, v.Type);
        Assert.Equal(["default"], c.Profiles);
        foreach (var name in new[] { "sdk-c1", "sdk-v1" })
        {
            var r = await C.ExecAsync(name, new ExecRequest { Command =
                ["sh", "-c", "echo out; echo err >&2; cat; exit 4"], Stdin = "from stdin" });
            Assert.Equal(4, r.ExitCode);
            Assert.Equal("out\nfrom stdin", r.Stdout);
            Assert.Equal("err\n", r.Stderr);

            var env = await C.ExecAsync(name, new ExecRequest { Command = ["sh", "-c", "echo $FOO; pwd"],
                Environment = { ["FOO"] = "bar" }, Cwd = "/tmp" });
            Assert.Equal("bar\n/tmp\n", env.Stdout);

            await C.PushFileAsync(name, "/root/dir/hello.txt", Encoding.UTF8.GetBytes("hello " + name), 0b111_101_000);
            var cat = await C.ExecAsync(name, "sh", "-c", "cat /root/dir/hello.txt; stat -c %a /root/dir/hello.txt");
            Assert.Equal($"hello {name}750\n", cat.Stdout);
            await C.ExecAsync(name, "sh", "-c", "echo made inside > /tmp/inside");
            Assert.Equal("made inside\n", Encoding.UTF8.GetString(await C.ReadFileAsync(name, "/tmp/inside")));
            using var dir = await C.PullFileAsync(name, "/root/dir");
            Assert.Equal("directory", dir.Entry.Type);
            Assert.Contains(dir.Listing!, e => e.Name == "hello.txt" && e.Type == "file" && e.Size == 6 + name.Length);
            // A symlink that points outside stays inside the instance.
            await C.ExecAsync(name, "ln", "-s", "/../../../../etc/hostname", "/tmp/escape");
            Assert.Equal("busybox\n", Encoding.UTF8.GetString(await C.ReadFileAsync(name, "/tmp/escape")));
            var missing = await Assert.ThrowsAsync<HullException>(() => C.ReadFileAsync(name, "/no/such/file"));
            Assert.Equal(404, missing.StatusCode);
        }

        // An interactive exec over the websocket: stdin streamed, a pty with resize, the exit code.
        using (var s = await C.ExecInteractiveAsync("sdk-c1",
            new ExecRequest { Command = ["sh", "-c", "read line; echo got:$line; stty size; exit 9"], Tty = true,
            Width = 100, Height = 30 }))
        {
            await s.WriteStdinAsync(Encoding.UTF8.GetBytes("ping\n"));
            var output = new MemoryStream();
            var code = await s.RunAsync(output, null);
            Assert.Equal(9, code);
            var text = Encoding.UTF8.GetString(output.ToArray());
            Assert.Contains("got:ping", text);
            Assert.Contains("30 100", text);
        }

        var list = await C.ListInstancesAsync();
        Assert.Contains(list, i => i.Name == "sdk-c1" && i.State == InstanceStates.Running && i.Pid > 0);
        var st = await C.GetStateAsync("sdk-c1");
        Assert.True(st.Stats!.Pids >= 1);

        using var logs = new StreamReader(await C.LogsAsync("sdk-c1"));
        Assert.Contains("sdk-c1 booted", await logs.ReadToEndAsync());

        await C.DeleteInstanceAsync("sdk-c1", force: true);
        await C.DeleteInstanceAsync("sdk-v1", force: true);
        Assert.DoesNotContain(await C.ListInstancesAsync(), i => i.Name is "sdk-c1" or "sdk-v1");
        Assert.False(Directory.Exists(Path.Combine(shared.D.StateDir, "instances", "sdk-c1")));
    }

    [SkippableFact]
    public async Task Lifecycle_states_and_exit_codes()
    {
        await C.LaunchAsync("busybox", "life");
        await C.PauseAsync("life");
        Assert.Equal(InstanceStates.Frozen, (await C.GetInstanceAsync("life")).State);
        var e = await Assert.ThrowsAsync<HullException>(() => C.ExecAsync("life", "true"));
        Assert.Contains("paused", e.Message);
        await C.ResumeAsync("life");
        Assert.Equal(0, (await C.ExecAsync("life", "true")).ExitCode);
        var pid = (await C.GetInstanceAsync("life")).Pid;
        await C.RestartAsync("life");
        var after = await C.GetInstanceAsync("life");
        Assert.Equal(InstanceStates.Running, after.State);
        Assert.NotEqual(pid, after.Pid);
        await C.StopAsync("life");
        var stopped = await C.GetInstanceAsync("life");
        Assert.Equal(InstanceStates.Stopped, stopped.State);
        Assert.Equal(0, stopped.LastExitCode); // the init traps SIGTERM and exits 0
        await C.StartAsync("life");
        await C.StopAsync("life", force: true);
        Assert.Equal(137, (await C.GetInstanceAsync("life")).LastExitCode);

        // An instance whose main process ends by itself is seen stopped, with its exit code.
        await C.LaunchAsync("busybox", "quitter",
            config: new() { ["user.test.init"] = "while [ ! -e /tmp/go ]; do sleep 0.05; done; exit 7" });
        await C.PushFileAsync("quitter", "/tmp/go", [1]);
        await Wait.UntilAsync(async () => (await C.GetInstanceAsync("quitter")).State == InstanceStates.Stopped,
            "quitter to stop");
        Assert.Equal(7, (await C.GetInstanceAsync("quitter")).LastExitCode);

        await C.DeleteInstanceAsync("life");
        await C.DeleteInstanceAsync("quitter");
    }

    [SkippableFact]
    public async Task Config_profiles_and_devices()
    {
        await C.CreateProfileAsync(new ProfileCreateRequest { Name = "small",
            Config = { ["limits.memory"] = "256MiB", ["environment.GREETING"] = "hi" } });
        await C.CreateProfileAsync(new ProfileCreateRequest { Name = "big",
            Config = { ["limits.memory"] = "2GiB", ["limits.cpu"] = "2" } });
        var i = await C.CreateInstanceAsync(new InstanceCreateRequest { Name = "cfg", Image = "busybox",
            Profiles = ["default", "small", "big"], Config = { ["limits.processes"] = "100" } });
        Assert.Equal("2GiB", i.ExpandedConfig["limits.memory"]); // later profiles win
        Assert.Equal("hi", i.ExpandedConfig["environment.GREETING"]);
        Assert.Equal("100", i.Config["limits.processes"]);
        Assert.False(i.Config.ContainsKey("limits.memory"));
        Assert.Contains("cfg", (await C.GetProfileAsync("small")).UsedBy);

        i.Config["limits.memory"] = "512MiB";
        i = await C.UpdateInstanceAsync("cfg", new InstancePut { Config = i.Config, Devices = i.Devices,
            Profiles = i.Profiles });
        Assert.Equal("512MiB", i.ExpandedConfig["limits.memory"]); // the instance's own config wins over profiles

        // A read-only host share: host changes are visible at once, writes are refused.
        var share = Path.Combine(shared.D.Dir, "share");
        Directory.CreateDirectory(share);
        File.WriteAllText(Path.Combine(share, "f"), "one");
        i.Devices["share"] = new() { ["type"] = "bind", ["source"] = share, ["path"] = "/mnt/share",
            ["readonly"] = "true" };
        await C.UpdateInstanceAsync("cfg", new InstancePut { Config = i.Config, Devices = i.Devices,
            Profiles = i.Profiles });
        await C.StartAsync("cfg");
        Assert.Equal("one", (await C.ExecAsync("cfg", "cat", "/mnt/share/f")).Stdout);
        File.WriteAllText(Path.Combine(share, "f"), "two");
        Assert.Equal("two", (await C.ExecAsync("cfg", "cat", "/mnt/share/f")).Stdout);
        var w = await C.ExecAsync("cfg", "sh", "-c", "echo x > /mnt/share/g");
        Assert.NotEqual(0, w.ExitCode);
        Assert.Contains("Read-only", w.Stderr);
        Assert.Equal("hi\n", (await C.ExecAsync("cfg", "sh", "-c", "echo $GREETING")).Stdout);

        var del = await Assert.ThrowsAsync<HullException>(() => C.DeleteProfileAsync("small"));
        Assert.Equal(409, del.StatusCode);
        Assert.Contains("cfg", del.Message);
        var defaultDel = await Assert.ThrowsAsync<HullException>(() => C.DeleteProfileAsync("default"));
        Assert.Contains("cannot be deleted", defaultDel.Message);

        await C.DeleteInstanceAsync("cfg", force: true);
        Assert.DoesNotContain(File.ReadAllText("/proc/self/mountinfo"), "/mnt/share");
        await C.DeleteProfileAsync("small");
        await C.DeleteProfileAsync("big");
    }

    [SkippableFact]
    public async Task Snapshots_restore_the_root_filesystem()
    {
        await C.LaunchAsync("busybox", "snap");
        await C.PushFileAsync("snap", "/root/state", Encoding.UTF8.GetBytes("v1"));
        await C.CreateSnapshotAsync("snap", "s1");
        await C.PushFileAsync("snap", "/root/state", Encoding.UTF8.GetBytes("v2"));
        Assert.Equal(["s1"], (await C.ListSnapshotsAsync("snap")).Select(s => s.Name));
        var running = await Assert.ThrowsAsync<HullException>(() => C.RestoreSnapshotAsync("snap", "s1"));
        Assert.Equal(409, running.StatusCode);
        Assert.Contains("stop it", running.Message);
        var clash = await Assert.ThrowsAsync<HullException>(() => C.CreateSnapshotAsync("snap", "s1"));
        Assert.Equal(409, clash.StatusCode);
        await C.StopAsync("snap");
        await C.RestoreSnapshotAsync("snap", "s1");
        await C.StartAsync("snap");
        Assert.Equal("v1", (await C.ExecAsync("snap", "cat", "/root/state")).Stdout);
        var missing = await Assert.ThrowsAsync<HullException>(() => C.RestoreSnapshotAsync("snap", "nope"));
        Assert.Equal(404, missing.StatusCode);
        await C.DeleteSnapshotAsync("snap", "s1");
        Assert.Empty(await C.ListSnapshotsAsync("snap"));
        await C.DeleteInstanceAsync("snap", force: true);
    }

    [SkippableFact]
    public async Task Images_export_import_alias_copy_and_move()
    {
        await C.CreateInstanceAsync(new InstanceCreateRequest { Name = "img-src", Image = "busybox" });
        var ms = new MemoryStream();
        await using (var s = await C.ExportImageAsync("busybox")) await s.CopyToAsync(ms);
        var busybox = (await C.ListImagesAsync()).First(i => i.Aliases.Contains("busybox")
            && i.Type == InstanceTypes.Container);
        Assert.Equal(busybox.Size, ms.Length);
        // Re-importing the same bytes is the same content-addressed image.
        ms.Position = 0;
        var same = await C.ImportImageAsync(ms, alias: "bb2");
        Assert.Equal(busybox.Fingerprint, same.Fingerprint);
        await C.CreateInstanceAsync(new InstanceCreateRequest { Name = "from-alias", Image = "bb2" });
        var inUse = await Assert.ThrowsAsync<HullException>(() => C.DeleteImageAsync("bb2"));
        Assert.Equal(409, inUse.StatusCode);
        await C.DeleteImageAliasAsync("bb2");

        var bad = await Assert.ThrowsAsync<HullException>(() =>
            C.ImportImageAsync(new MemoryStream(Encoding.UTF8.GetBytes("not a tarball at all"))));
        Assert.Contains("tarball", bad.Message);

        await C.PushFileAsync("img-src", "/root/mark", Encoding.UTF8.GetBytes("copied"));
        await C.CreateInstanceAsync(new InstanceCreateRequest { Name = "img-copy", CopyFrom = "img-src" });
        Assert.Equal("copied", Encoding.UTF8.GetString(await C.ReadFileAsync("img-copy", "/root/mark")));
        await C.RenameInstanceAsync("img-copy", "img-moved");
        Assert.Equal("copied", Encoding.UTF8.GetString(await C.ReadFileAsync("img-moved", "/root/mark")));
        await Assert.ThrowsAsync<HullException>(() => C.GetInstanceAsync("img-copy"));
        foreach (var n in new[] { "img-src", "from-alias", "img-moved" }) await C.DeleteInstanceAsync(n);
    }

    [SkippableFact]
    public async Task Events_metrics_openapi_and_operations()
    {
        using var cts = new CancellationTokenSource();
        var seen = new List<Event>();
        var reader = Task.Run(async () =>
        {
            try { await foreach (var e in C.EventsAsync(["lifecycle", "operation"], cts.Token)) lock (seen) seen.Add(
                e); }
            catch (OperationCanceledException) { }
            catch (HttpRequestException) { }
            catch (IOException) { }
        });
        await Wait.UntilAsync(async () => { await Task.Yield(); return true; }, "subscription");
        await Task.Delay(200); // let the subscription register before the launch (not a timing assertion)
        await C.LaunchAsync("busybox", "ev");
        // The operation's success event may come after instance-started: wait for both, then check.
        await Wait.UntilAsync(() =>
        {
            lock (seen)
                return Task.FromResult(seen.Any(e => e.Action == "instance-started" && e.Instance == "ev")
                    && seen.Any(e => e.Type == "operation" && e.Operation!.Status == OperationStatus.Success));
        }, "instance-started and operation success events");
        lock (seen)
        {
            Assert.Contains(seen, e => e.Action == "instance-created" && e.Instance == "ev");
            Assert.Contains(seen, e => e.Type == "operation" && e.Operation!.Status == OperationStatus.Success);
        }
        cts.Cancel();
        await reader;

        var metrics = await C.MetricsAsync();
        Assert.Matches("hull_instance_cpu_seconds_total\\{name=\"ev\",type=\"container\"\\} [0-9.]+", metrics);
        Assert.Matches("hull_instance_pids\\{name=\"ev\",type=\"container\"\\} [1-9]", metrics);
        Assert.Contains("hull_instance_memory_bytes{name=\"ev\"", metrics);
        Assert.Contains("hull_instances{state=\"Running\"}", metrics);
        Assert.Matches("hull_api_requests_total [1-9]", metrics);

        var ops = await C.ListOperationsAsync();
        var launch = ops.Last(o => o.Description == "launching ev");
        Assert.Equal(OperationStatus.Success, (await C.WaitOperationAsync(launch.Id)).Status);
        var cancelDone = await Assert.ThrowsAsync<HullException>(() => C.CancelOperationAsync(launch.Id));
        Assert.Equal(409, cancelDone.StatusCode);
        Assert.Equal(404, (await Assert.ThrowsAsync<HullException>(() => C.GetOperationAsync("nope"))).StatusCode);

        // Every route hulld maps is in its OpenAPI document, and the document lists no route that is not mapped.
        using var doc = JsonDocument.Parse(await C.OpenApiAsync());
        var documented = doc.RootElement.GetProperty("paths").EnumerateObject()
            .SelectMany(p => p.Value.EnumerateObject().Select(m =>
                $"{m.Name.ToUpperInvariant()} {p.Name}")).Order().ToList();
        var (code, routes, err) = RunHost("--routes");
        Assert.True(code == 0, err);
        var mapped = routes.Split('\n', StringSplitOptions.RemoveEmptyEntries).Order().ToList();
        Assert.True(mapped.Count > 30);
        Assert.Equal(mapped, documented);
        await C.DeleteInstanceAsync("ev", force: true);
    }

    static (int, string, string) RunHost(params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(TestDaemon.HostExe) { RedirectStandardOutput = true,
            RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEnd();
        var e = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, o, e);
    }
}
