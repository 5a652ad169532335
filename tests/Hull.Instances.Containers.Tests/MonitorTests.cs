using Hull.TestSupport;
using Hull.Api;
using Hull.Linux;
using Xunit;

namespace Hull.Instances.Containers.Tests;

/// <summary>
/// The container monitor through a real hulld: exit codes of containers that end while hulld is down (after kill -9
/// and after a clean stop) are exact; containers stay exec-able across a restart; a killed monitor is replaced.
/// </summary>
public sealed class MonitorTests
{
    static string Cmd(params string[] args) =>
        "[" + string.Join(",", args.Select(a =>
        "\"" + System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping.Encode(a) + "\"")) + "]";

    /// <summary>A busybox container whose process waits for /go inside it, then exits with the code written
    /// there.</summary>
    static Task<Instance> LaunchWaiter(ContainerDaemon d, string name) =>
        d.Client.CreateInstanceAsync(new InstanceCreateRequest
    {
        Name = name, Image = "busybox", Start = true,
        Config = { ["app.command"] = Cmd("/bin/sh", "-c",
            "rm -f /go; while [ ! -s /go ]; do sleep 0.05; done; exit $(cat /go)") },
    });

    static int MonitorPid(ContainerDaemon d) =>
        int.Parse(File.ReadAllText(Path.Combine(d.StateDir, "monitor.pid")).Trim());

    static bool Gone(int pid) => !Sys.ProcessExists(pid);

    /// <summary>Lets the waiter go with <paramref name="code"/> (written through its root) and waits until its init is
    /// reaped.</summary>
    static async Task EndWith(int pid, int code)
    {
        var tmp = $"/proc/{pid}/root/go.tmp";
        File.WriteAllText(tmp, code + "\n");
        File.Move(tmp, $"/proc/{pid}/root/go");
        await Wait.UntilAsync(() => Task.FromResult(Gone(pid)), $"pid {pid} to end and be reaped");
    }

    [SkippableFact]
    public async Task Exit_codes_are_exact_for_containers_that_end_while_hulld_is_killed_or_stopped()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        var k9 = (await LaunchWaiter(d, "ends-k9")).Pid!.Value;
        var stop = (await LaunchWaiter(d, "ends-stop")).Pid!.Value;
        var keeps = (await c.LaunchAsync("busybox", "keeps")).Pid!.Value;
        var monitor = MonitorPid(d);
        Assert.Equal(monitor, int.Parse(File.ReadAllText($"/proc/{k9}/stat").Split(") ")[1].Split(' ')[1]));

        // hulld killed: the monitor (its own session) and the containers stay; one container ends meanwhile.
        d.Kill9();
        Assert.True(Sys.ProcessExists(monitor), "the monitor died with hulld");
        await EndWith(k9, 7);
        d.Start();
        var i = await c.GetInstanceAsync("ends-k9");
        Assert.Equal(InstanceStates.Stopped, i.State);
        Assert.Equal(7, i.LastExitCode);
        Assert.Equal(MonitorPid(d), monitor);
        // The other containers are found again and work.
        Assert.Equal(InstanceStates.Running, (await c.GetInstanceAsync("keeps")).State);
        var r = await c.ExecAsync("keeps", new ExecRequest { Command = ["sh", "-c", "cat; echo still here"],
            Stdin = "in:" });
        Assert.Equal(0, r.ExitCode);
        Assert.Equal("in:still here\n", r.Stdout);

        // hulld stopped cleanly: the same.
        d.Stop();
        await EndWith(stop, 42);
        d.Start();
        i = await c.GetInstanceAsync("ends-stop");
        Assert.Equal(InstanceStates.Stopped, i.State);
        Assert.Equal(42, i.LastExitCode);

        // An instance that ends while hulld runs: exact too, and it starts again under the same monitor.
        await c.StartAsync("ends-k9");
        var again = (await c.GetInstanceAsync("ends-k9")).Pid!.Value;
        await EndWith(again, 3);
        await Wait.UntilAsync(async () => (await c.GetInstanceAsync("ends-k9")).State == InstanceStates.Stopped,
            "ends-k9 to stop");
        Assert.Equal(3, (await c.GetInstanceAsync("ends-k9")).LastExitCode);
        Assert.Equal(keeps, (await c.GetInstanceAsync("keeps")).Pid);

        // A stop reports the real code (the keep-alive init exits 0 on SIGTERM), not a guess.
        await c.StopAsync("keeps", timeout: 20);
        Assert.Equal(0, (await c.GetInstanceAsync("keeps")).LastExitCode);
        foreach (var n in new[] { "keeps", "ends-k9", "ends-stop" }) await c.DeleteInstanceAsync(n, force: true);

        // With no container left and no hulld connected, the monitor exits by itself.
        d.Stop();
        await Wait.UntilAsync(() => Task.FromResult(Gone(monitor)), "the idle monitor to exit");
        Assert.False(File.Exists(Path.Combine(d.StateDir, "monitor.sock")));
    }

    [SkippableFact]
    public async Task A_killed_monitor_is_replaced_and_its_containers_keep_running()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        var old = (await c.LaunchAsync("busybox", "before")).Pid!.Value;
        var monitor = MonitorPid(d);
        Libc.kill(monitor, Signals.SIGKILL);
        await Wait.UntilAsync(() => Task.FromResult(File.Exists(Path.Combine(d.StateDir, "monitor.pid"))
            && MonitorPid(d) != monitor && Sys.ProcessExists(MonitorPid(d))),
            "hulld to start a new monitor");
        Assert.Contains("went away", d.Log);

        // The container of the dead monitor still runs (re-parented) and is usable.
        Assert.True(Sys.ProcessExists(old));
        Assert.Equal(InstanceStates.Running, (await c.GetInstanceAsync("before")).State);
        Assert.Equal(0, (await c.ExecAsync("before", "true")).ExitCode);

        // New containers have the new monitor as parent, with exact exit codes.
        var pid = (await LaunchWaiter(d, "after")).Pid!.Value;
        Assert.Equal(MonitorPid(d), int.Parse(File.ReadAllText($"/proc/{pid}/stat").Split(") ")[1].Split(' ')[1]));
        await EndWith(pid, 9);
        await Wait.UntilAsync(async () => (await c.GetInstanceAsync("after")).State == InstanceStates.Stopped,
            "'after' to stop");
        Assert.Equal(9, (await c.GetInstanceAsync("after")).LastExitCode);

        // The orphan still stops (its code is what a stop implies: the monitor that could have recorded it is gone).
        await c.StopAsync("before", timeout: 20);
        Assert.Equal(InstanceStates.Stopped, (await c.GetInstanceAsync("before")).State);
        foreach (var n in new[] { "before", "after" }) await c.DeleteInstanceAsync(n, force: true);
    }

    [SkippableFact]
    public async Task After_its_monitor_is_killed_an_exit_code_nobody_saw_is_unknown_not_made_up()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        var pid = (await LaunchWaiter(d, "orphan")).Pid!.Value;
        var monitor = MonitorPid(d);
        Libc.kill(monitor, Signals.SIGKILL);
        await Wait.UntilAsync(() => Task.FromResult(Gone(monitor)), "the monitor to die");
        // The orphan ends with 0; nothing that could record it was its parent.
        await EndWith(pid, 0);
        await Wait.UntilAsync(async () => (await c.GetInstanceAsync("orphan")).State == InstanceStates.Stopped,
            "'orphan' to stop");
        var i = await c.GetInstanceAsync("orphan");
        Assert.Null(i.LastExitCode);
        Assert.Contains("exit code unknown", i.StatusMessage);
        Assert.Null((await c.GetStateAsync("orphan")).LastExitCode);
        var (code, info, _) = d.Cli("info", "orphan");
        Assert.Equal(0, code);
        Assert.Contains("exit code unknown", info);
        Assert.DoesNotContain("Last exit code: 137", info);
        await c.DeleteInstanceAsync("orphan");
    }

    [SkippableFact]
    public async Task After_an_upgrade_the_old_monitor_keeps_its_containers_and_a_new_one_serves_new_ones()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        var old = (await LaunchWaiter(d, "old")).Pid!.Value;
        var oldMonitor = MonitorPid(d);

        // "Upgrade": the same program installed anew (another file: another build to the monitor's identity check).
        var upgraded = Path.Combine(d.Dir, "upgraded");
        Directory.CreateDirectory(upgraded);
        foreach (var f in Directory.EnumerateFiles(Path.GetDirectoryName(ContainerDaemon.HostExe)!))
            File.Copy(f, Path.Combine(upgraded, Path.GetFileName(f)));
        d.Stop();
        d.Start(program: Path.Combine(upgraded, Path.GetFileName(ContainerDaemon.HostExe)));
        await Wait.UntilAsync(() => Task.FromResult(MonitorPid(d) != oldMonitor),
            "the new hulld to retire the old monitor and start its own");
        Assert.True(Sys.ProcessExists(oldMonitor), "the retired monitor must stay while it has a container");
        Assert.Contains("retiring the container monitor", d.Log);

        // New containers get the new monitor; the old one still records the exit of its own.
        var fresh = (await LaunchWaiter(d, "fresh")).Pid!.Value;
        Assert.Equal(MonitorPid(d), int.Parse(File.ReadAllText($"/proc/{fresh}/stat").Split(") ")[1].Split(' ')[1]));
        Assert.Equal(oldMonitor, int.Parse(File.ReadAllText($"/proc/{old}/stat").Split(") ")[1].Split(' ')[1]));
        await EndWith(old, 11);
        await Wait.UntilAsync(async () => (await c.GetInstanceAsync("old")).State == InstanceStates.Stopped,
            "'old' to stop");
        Assert.Equal(11, (await c.GetInstanceAsync("old")).LastExitCode);
        await Wait.UntilAsync(() => Task.FromResult(Gone(oldMonitor)),
            "the retired monitor to exit after its last container");
        await EndWith(fresh, 12);
        await Wait.UntilAsync(async () => (await c.GetInstanceAsync("fresh")).State == InstanceStates.Stopped,
            "'fresh' to stop");
        Assert.Equal(12, (await c.GetInstanceAsync("fresh")).LastExitCode);
        foreach (var n in new[] { "old", "fresh" }) await c.DeleteInstanceAsync(n, force: true);
    }
}
