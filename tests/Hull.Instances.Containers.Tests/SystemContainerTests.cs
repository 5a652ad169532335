using System.Diagnostics;
using Hull.Api;
using Hull.Sdk;
using Hull.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Hull.Instances.Containers.Tests;

/// <summary>
/// Full-OS containers: images whose /sbin/init is an init system boot it as pid 1 (SystemContainers). The Debian 12
/// image is made by scripts/debian-rootfs.sh with debootstrap from apt's mirror and cached in /var/cache/hull-tests
/// (the first run costs about 1.5 minutes and 250 MB); the busybox-init and failing images are built here.
/// </summary>
public sealed class SystemContainerTests(ITestOutputHelper output)
{
    static string DebianImage(string flavour = "systemd")
    {
        Requires.Root();
        Requires.Program("debootstrap");
        var psi = new ProcessStartInfo(Path.Combine(Repo.Root, "scripts", "debian-rootfs.sh"), flavour)
        { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"scripts/debian-rootfs.sh {flavour}: {stderr}");
        return stdout.Result.Trim();
    }

    static async Task Import(HullClient c, string tarball, string alias)
    {
        await using var f = File.OpenRead(tarball);
        await c.ImportImageAsync(f, alias: alias);
    }

    async Task<string> Sh(HullClient c, string name, string script)
    {
        var r = await c.ExecAsync(name, "sh", "-c", script);
        output.WriteLine($"$ {script}\n{r.Stdout}{r.Stderr}");
        return r.Stdout.Trim();
    }

    /// <summary>Waits for boot to finish; "running", or "degraded" with the failed units in the message.</summary>
    async Task<string> BootState(HullClient c, string name)
    {
        // Until systemd's own bus is up (just after a start) systemctl cannot ask: retry until it answers.
        var state = await Sh(c, name, "for i in $(seq 600); do s=$(systemctl is-system-running --wait 2>/dev/null); " +
            "case \"$s\" in ''|offline|unknown|initializing|starting) sleep 0.1;; *) break;; esac; done; echo \"$s\"");
        if (state != "running") state += ": " + await Sh(c, name, "systemctl --failed --no-pager --plain --no-legend");
        return state;
    }

    async Task BootsRunsAndStopsCleanly(bool privileged)
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        await Import(c, DebianImage(), "debian");
        var req = new InstanceCreateRequest { Name = "deb1", Image = "debian", Start = true };
        if (privileged) req.Config["security.privileged"] = "true";
        await c.CreateInstanceAsync(req);

        Assert.Equal("running", await BootState(c, "deb1"));
        Assert.Equal("systemd", await Sh(c, "deb1", "cat /proc/1/comm"));
        Assert.Equal("active\nactive\nactive",
            await Sh(c, "deb1", "systemctl is-active systemd-journald systemd-logind dbus"));
        Assert.Equal("deb1", await Sh(c, "deb1", "hostname"));
        // Its own cgroup subtree only: no host path in /proc/self/cgroup, systemd's slices below its root.
        Assert.Equal("", await Sh(c, "deb1", "grep -v ':/[a-z.]*$' /proc/1/cgroup; grep -l hull /proc/1/cgroup"));
        Assert.Contains("init.scope", await Sh(c, "deb1", "ls /sys/fs/cgroup/systemd"));
        Assert.Contains("Started", await Sh(c, "deb1", "journalctl -b --no-pager | tail -50"));
        // Users other than root reach the image's files (the container's "/" has the image's mode).
        Assert.Equal("ok", await Sh(c, "deb1",
            "setpriv --reuid=65534 --regid=65534 --clear-groups cat /etc/debian_version >/dev/null && echo ok"));
        var map = await Sh(c, "deb1", "cat /proc/self/uid_map");
        Assert.Equal(privileged, map.Split(' ', StringSplitOptions.RemoveEmptyEntries) is ["0", "0", _]);
        await ConsoleShowsBootAndLogin(c, "deb1");

        // hull stop halts it (SIGRTMIN+3): systemd shuts down and halts, which ends the pid namespace's init with
        // SIGINT (130), well within the timeout; a SIGTERM would have it re-execute itself until the SIGKILL (137).
        await c.StopAsync("deb1", timeout: 20);
        var st = await c.GetInstanceAsync("deb1");
        Assert.Equal(InstanceStates.Stopped, st.State);
        Assert.Equal(130, (await c.GetStateAsync("deb1")).LastExitCode);

        await c.StartAsync("deb1");
        Assert.Equal("running", await BootState(c, "deb1"));
        await c.RestartAsync("deb1", timeout: 20);
        Assert.Equal("running", await BootState(c, "deb1"));
        await RebootsFromInside(c, "deb1", "systemctl reboot");
        Assert.Equal("running", await BootState(c, "deb1"));
        await c.StopAsync("deb1", timeout: 20);
        Assert.Equal(130, (await c.GetStateAsync("deb1")).LastExitCode);
    }

    /// <summary>A reboot asked for inside ends the init with SIGHUP (in a pid namespace, reboot(2) with a restart
    /// does): hulld starts the instance again, with a new init, instead of leaving it Stopped.</summary>
    async Task RebootsFromInside(HullClient c, string name, string command)
    {
        var before = (await c.GetStateAsync(name)).Pid;
        try { await Sh(c, name, command); } catch (HullException) { } // the container may go away under the exec
        var sw = Stopwatch.StartNew();
        InstanceStateInfo st;
        while ((st = await c.GetStateAsync(name)) is not { State: InstanceStates.Running, Pid: { } pid }
               || pid == before)
        {
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(60),
                $"'{command}' in {name}: not running again after 60 s ({st.State}, exit code {st.LastExitCode})");
            await Task.Delay(50);
        }
        output.WriteLine($"{name}: '{command}' to running again with a new init: {sw.ElapsedMilliseconds} ms");
        Assert.Equal(129, st.LastExitCode);
    }

    /// <summary>/dev/console is a pty the monitor holds: systemd's boot messages are in hull logs, and hull console
    /// shows console-getty's login prompt and takes input (login answers a user name with its password prompt).
    /// </summary>
    async Task ConsoleShowsBootAndLogin(HullClient c, string name)
    {
        var log = System.Text.RegularExpressions.Regex.Replace(
            await new StreamReader(await c.LogsAsync(name)).ReadToEndAsync(), "\u001b\\[[0-9;]*m", ""); // colours
        Assert.Contains("Welcome to Debian GNU/Linux 12", log);
        Assert.Contains("Reached target", log);
        Assert.Equal("active", await Sh(c, name, "systemctl is-active console-getty"));
        using var con = await c.ConsoleAsync(name);
        var seen = new Capture();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var run = con.RunAsync(seen, null, cts.Token);
        // The prompt getty is waiting on comes first; Enter makes it ask again.
        await seen.WaitFor($"{name} login: ", cts.Token);
        await con.WriteStdinAsync("root\n"u8.ToArray(), cts.Token);
        await seen.WaitFor("Password: ", cts.Token);
        await con.WriteStdinAsync("\u0004"u8.ToArray(), cts.Token); // abandon the login (^D): getty starts again
        output.WriteLine($"console:\n{seen.Text}");
        cts.Cancel();
        try { await run; } catch (OperationCanceledException) { }
    }

    /// <summary>Collects what a console sends, for <see cref="WaitFor"/>.</summary>
    sealed class Capture : Stream
    {
        readonly System.Text.StringBuilder _text = new();
        public string Text { get { lock (_text) return _text.ToString(); } }

        public async Task WaitFor(string s, CancellationToken ct)
        {
            while (!Text.Contains(s, StringComparison.Ordinal))
            {
                if (ct.IsCancellationRequested)
                    throw new TimeoutException($"'{s}' did not come; the console sent:\n{Text}");
                await Task.Delay(20, CancellationToken.None);
            }
        }

        public override void Write(byte[] buffer, int offset, int count)
        {
            lock (_text) _text.Append(System.Text.Encoding.UTF8.GetString(buffer, offset, count));
        }
        public override void Flush() { }
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position
        {
            get => throw new NotSupportedException();
            set => throw new NotSupportedException();
        }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
    }

    [SkippableFact]
    public Task Debian_with_systemd_boots_to_running_unprivileged_and_stops_and_restarts_cleanly() =>
        BootsRunsAndStopsCleanly(privileged: false);

    [SkippableFact]
    public Task Debian_with_systemd_boots_to_running_privileged_and_stops_and_restarts_cleanly() =>
        BootsRunsAndStopsCleanly(privileged: true);

    [SkippableFact]
    public async Task Debian_with_sysvinit_starts_execs_stops_and_restarts()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        await Import(c, DebianImage("sysvinit"), "sysv");
        await c.CreateInstanceAsync(new InstanceCreateRequest { Name = "sv1", Image = "sysv", Start = true });
        Assert.Equal("init", await Sh(c, "sv1", "cat /proc/1/comm"));
        // The rc scripts of runlevel 2 ran (runlevel prints "N 2" once they did).
        Assert.Equal("N 2", await Sh(c, "sv1",
            "for i in $(seq 100); do r=$(runlevel); [ \"$r\" = 'N 2' ] && break; sleep 0.1; done; echo $r"));
        var sw = Stopwatch.StartNew();
        await c.StopAsync("sv1", timeout: 20);
        // SIGINT: its ctrlaltdel entry shuts it down (the final reboot ends the namespace's init: SIGHUP, 129).
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(15), $"stop took {sw.Elapsed}: the halt signal was not taken");
        Assert.NotEqual(137, (await c.GetStateAsync("sv1")).LastExitCode);
        await c.StartAsync("sv1");
        await c.RestartAsync("sv1", timeout: 20);
        await RebootsFromInside(c, "sv1", "for i in $(seq 100); do [ \"$(runlevel)\" = 'N 2' ] && break; " +
            "sleep 0.1; done; reboot");
        Assert.Equal("sv1", await Sh(c, "sv1", "hostname"));
        await c.StopAsync("sv1", timeout: 20);
    }

    /// <summary>20 Debian systemd containers at once (unprivileged) all boot to running, then
    /// all stop cleanly. Prints each one's boot time and host memory (its cgroup's, after boot) for the record; the
    /// figures that count are bench/system/run.sh's.</summary>
    [SkippableFact]
    public async Task Twenty_Debian_system_containers_boot_to_running_at_once_and_stop()
    {
        const int n = 20;
        using var d = new ContainerDaemon();
        var c = d.Client;
        await Import(c, DebianImage(), "debian");
        var names = Enumerable.Range(1, n).Select(i => $"d{i}").ToList();
        var sw = Stopwatch.StartNew();
        var boots = await Task.WhenAll(names.Select(async name =>
        {
            await c.CreateInstanceAsync(new InstanceCreateRequest { Name = name, Image = "debian", Start = true });
            var launched = sw.Elapsed;
            var state = await BootState(c, name);
            return (name, state, sw.Elapsed - launched);
        }));
        output.WriteLine($"{n} containers running after {sw.Elapsed.TotalSeconds:F1} s");
        foreach (var (name, state, took) in boots)
            Assert.True(state == "running", $"{name}: {state}");
        long total = 0;
        foreach (var (name, _, took) in boots)
        {
            var st = await c.GetStateAsync(name);
            total += st.Stats?.MemoryBytes ?? 0;
            output.WriteLine($"{name}: launch returned to running {took.TotalSeconds:F2} s, memory " +
                $"{(st.Stats?.MemoryBytes ?? 0) / 1048576.0:F1} MiB");
        }
        output.WriteLine($"memory per container (cgroup usage, with page cache): {total / n / 1048576.0:F1} MiB");
        sw.Restart();
        await Task.WhenAll(names.Select(name => c.StopAsync(name, timeout: 60)));
        output.WriteLine($"{n} containers stopped in {sw.Elapsed.TotalSeconds:F1} s");
        foreach (var name in names)
        {
            var st = await c.GetStateAsync(name);
            Assert.Equal(InstanceStates.Stopped, st.State);
            Assert.Equal(130, st.LastExitCode); // halted by SIGRTMIN+3, not killed after the timeout (137)
        }
    }

    /// <summary>A root filesystem of the host's static busybox with <paramref name="init"/> as /sbin/init.</summary>
    static string BusyboxTar(string dir, Action<string> init)
    {
        Requires.File("/bin/busybox", "busybox-static");
        var root = Path.Combine(dir, "rootfs");
        foreach (var x in new[] { "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run" })
            Directory.CreateDirectory(Path.Combine(root, x));
        File.Copy("/bin/busybox", Path.Combine(root, "bin/busybox"));
        foreach (var app in new[] { "sh", "echo", "sleep", "cat", "ps", "hostname", "reboot" })
            File.CreateSymbolicLink(Path.Combine(root, "bin", app), "busybox");
        init(root);
        var tar = Path.Combine(dir, "image.tar");
        using var p = Process.Start("tar", ["--numeric-owner", "-C", root, "-cf", tar, "."])!;
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
        return tar;
    }

    [SkippableFact]
    public async Task Busybox_init_starts_execs_stops_and_restarts()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        var tar = BusyboxTar(d.Dir, root =>
        {
            File.CreateSymbolicLink(Path.Combine(root, "sbin/init"), "../bin/busybox");
            File.WriteAllText(Path.Combine(root, "etc/inittab"),
                "::sysinit:/bin/echo busybox-init: up\n::respawn:/bin/sleep 1000\n" +
                "::shutdown:/bin/echo busybox-init: down\n");
        });
        await Import(c, tar, "bbinit");
        await c.CreateInstanceAsync(new InstanceCreateRequest { Name = "bb1", Image = "bbinit", Start = true });
        Assert.Equal("init", await Sh(c, "bb1", "cat /proc/1/comm"));
        Assert.Contains("sleep 1000", await Sh(c, "bb1", "ps"));
        var sw = Stopwatch.StartNew();
        await c.StopAsync("bb1", timeout: 20);
        // busybox init takes SIGUSR2 as poweroff: it runs its shutdown entries and ends well before the timeout.
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(15), $"stop took {sw.Elapsed}: the halt signal was not taken");
        Assert.NotEqual(137, (await c.GetStateAsync("bb1")).LastExitCode);
        var log = await new StreamReader(await c.LogsAsync("bb1")).ReadToEndAsync();
        Assert.Contains("busybox-init: up", log);
        Assert.Contains("busybox-init: down", log);
        await c.StartAsync("bb1");
        await c.RestartAsync("bb1", timeout: 20);
        // busybox's reboot sends SIGTERM to its init, which runs the shutdown entries and reboots.
        await RebootsFromInside(c, "bb1", "reboot");
        Assert.Equal("bb1", await Sh(c, "bb1", "hostname"));
        // The container's "/" has the image's mode (0755: the Debian test reads as a user inside); the instance dir
        // is 0710 to the container's root group, so a host user cannot reach the container's files through rootfs/.
        var inittab = Path.Combine(d.StateDir, "instances", "bb1", "rootfs", "etc", "inittab");
        var psi = new ProcessStartInfo("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "cat", inittab])
        { RedirectStandardError = true, RedirectStandardOutput = true };
        using (var p = Process.Start(psi)!)
        {
            var err = p.StandardError.ReadToEnd();
            p.WaitForExit();
            Assert.True(p.ExitCode != 0 && err.Contains("Permission denied"), $"a host user read {inittab}: {err}");
        }
        await c.StopAsync("bb1", timeout: 20);
    }

    [SkippableFact]
    public async Task An_init_that_exits_at_once_fails_the_start_with_its_status_and_console_lines()
    {
        using var d = new ContainerDaemon();
        var c = d.Client;
        var tar = BusyboxTar(d.Dir, root =>
        {
            File.WriteAllText(Path.Combine(root, "etc/inittab"), "::sysinit:/bin/true\n");
            File.WriteAllText(Path.Combine(root, "sbin/init"),
                "#!/bin/sh\necho 'init: cannot find the root device'\nexit 3\n");
            File.SetUnixFileMode(Path.Combine(root, "sbin/init"), (UnixFileMode)0b111_101_101);
        });
        await Import(c, tar, "badinit");
        var r = d.Cli("launch", "badinit", "bad1");
        Assert.NotEqual(0, r.Code);
        Assert.Contains("exited at once with code 3", r.Err);
        Assert.Contains("init: cannot find the root device", r.Err);
        Assert.Equal(InstanceStates.Stopped, (await c.GetInstanceAsync("bad1")).State);
        var again = d.Cli("start", "bad1");
        Assert.Contains("exited at once with code 3", again.Err);
    }
}
