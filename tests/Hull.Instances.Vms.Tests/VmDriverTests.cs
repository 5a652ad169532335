using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using Hull.TestSupport;
using Hull.Api;
using Hull.Sdk;
using Xunit;
using Xunit.Abstractions;

namespace Hull.Instances.Vms.Tests;

/// <summary>
/// Real VMs (QEMU, the built-in busybox VM image with hull-agent) through a real hulld: the SDK, the CLI, snapshots,
/// a hulld killed with SIGKILL, and clean deletion. One VM carries the whole lifecycle to keep the boots few.
/// </summary>
public sealed class VmDriverTests(ITestOutputHelper output)
{
    static string VmStateDir(VmDaemon d, string name) => Path.Combine(d.StateDir, "instances", name, "vm");

    static async Task<string> Sh(HullClient c, string name, string script)
    {
        var r = await c.ExecAsync(name, "sh", "-c", script);
        Assert.True(r.ExitCode == 0, $"'{script}' failed with {r.ExitCode}: {r.Stderr}");
        return r.Stdout;
    }

    [SkippableFact]
    public async Task Launch_exec_files_snapshots_restart_hulld_delete()
    {
        using var d = new VmDaemon();
        var c = d.Client;

        // launch through the CLI: the built-in busybox VM image is built on first use (no download)
        var sw = Stopwatch.StartNew();
        var launch = d.Cli("launch", "busybox", "v1", "--vm", "-c", "limits.memory=192MiB", "-c", "limits.cpu=1", "-c",
            "environment.GREETING=hello-vm");
        Assert.True(launch.Code == 0, launch.Err + launch.Out + d.Log);
        var launched = sw.Elapsed;
        var inst = await c.GetInstanceAsync("v1");
        Assert.Equal(InstanceTypes.Vm, inst.Type);
        Assert.Equal(InstanceStates.Running, inst.State);
        var qemu = VmDaemon.QemuFor(VmStateDir(d, "v1"));
        Assert.Single(qemu);
        Assert.Equal(qemu[0], inst.Pid);
        var cmdline = File.ReadAllText($"/proc/{qemu[0]}/cmdline").Split('\0');
        Assert.Contains("192M", cmdline);

        // exec: the first one waits for the agent of the booting guest
        var first = await c.ExecAsync("v1", "sh", "-c", "echo $GREETING; hostname; uname -r");
        var ready = sw.Elapsed;
        output.WriteLine($"launch (image build + create + QEMU start) {launched.TotalSeconds:0.0} s; agent answered " +
            $"an exec {(ready - launched).TotalSeconds:0.0} s later");
        Assert.Equal(0, first.ExitCode);
        var lines = first.Stdout.Split('\n');
        Assert.Equal("hello-vm", lines[0]);
        Assert.Equal("v1", lines[1]);
        Assert.NotEqual(Environment.MachineName, lines[1]);

        var r = await c.ExecAsync("v1", new ExecRequest { Command = ["sh", "-c", "echo out; echo err >&2; cat; exit 4"],
            Stdin = "from stdin" });
        Assert.Equal(4, r.ExitCode);
        Assert.Equal("out\nfrom stdin", r.Stdout);
        Assert.Equal("err\n", r.Stderr);
        var env = await c.ExecAsync("v1", new ExecRequest { Command = ["sh", "-c", "echo $FOO; pwd"],
            Environment = { ["FOO"] = "bar" }, Cwd = "/tmp" });
        Assert.Equal("bar\n/tmp\n", env.Stdout);
        var missing = await c.ExecAsync("v1", new ExecRequest { Command = ["nosuchprogram"] });
        Assert.Equal(127, missing.ExitCode);
        // the CLI passes the exit code through
        var cliExec = d.Cli("exec", "v1", "--", "sh", "-c", "echo cli; exit 3");
        Assert.Equal(3, cliExec.Code);
        Assert.Equal("cli\n", cliExec.Out);

        // a pty exec through the agent: stdin streamed, the window size, the exit code
        using (var s = await c.ExecInteractiveAsync("v1",
            new ExecRequest { Command = ["sh", "-c", "read line; echo got:$line; stty size; exit 9"], Tty = true,
            Width = 100, Height = 30 }))
        {
            await s.WriteStdinAsync(Encoding.UTF8.GetBytes("ping\n"));
            var output = new MemoryStream();
            Assert.Equal(9, await s.RunAsync(output, null));
            var text = Encoding.UTF8.GetString(output.ToArray());
            Assert.Contains("got:ping", text);
            Assert.Contains("30 100", text);
        }

        // the serial console: typed input reaches the guest's shell, its output comes back
        using (var con = await c.ConsoleAsync("v1"))
        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60)))
        {
            var seen = new CaptureStream();
            var run = con.RunAsync(seen, null, cts.Token);
            while (!seen.Text.Contains("console-ok") && !cts.IsCancellationRequested)
            {
                await con.WriteStdinAsync(Encoding.UTF8.GetBytes("echo console''-ok\n"));
                await Task.Delay(1000);
            }
            Assert.Contains("console-ok", seen.Text);
            cts.Cancel();
            try { await run; } catch (OperationCanceledException) { } catch (
                System.Net.WebSockets.WebSocketException) { }
        }

        // files: push then pull byte-exact, stat and listing, delete
        var data = RandomNumberGenerator.GetBytes(300_000);
        await c.PushFileAsync("v1", "/root/dir/blob.bin", data, 0b110_000_000);
        Assert.Equal(Convert.ToHexString(SHA256.HashData(data)),
            (await Sh(c, "v1", "sha256sum /root/dir/blob.bin")).Split(' ')[0].ToUpperInvariant());
        Assert.Equal(data, await c.ReadFileAsync("v1", "/root/dir/blob.bin"));
        using (var listing = await c.PullFileAsync("v1", "/root/dir"))
        {
            var e = Assert.Single(listing.Listing!);
            Assert.Equal("blob.bin", e.Name);
            Assert.Equal(data.Length, e.Size);
            Assert.Equal(0b110_000_000, e.Mode);
        }
        var pulledViaCli = d.Cli("file", "pull", "v1/root/dir/blob.bin", Path.Combine(d.Dir, "pulled.bin"));
        Assert.True(pulledViaCli.Code == 0, pulledViaCli.Err);
        Assert.Equal(data, File.ReadAllBytes(Path.Combine(d.Dir, "pulled.bin")));
        await c.DeleteFileAsync("v1", "/root/dir/blob.bin");
        var gone = await Assert.ThrowsAsync<HullException>(() => c.ReadFileAsync("v1", "/root/dir/blob.bin"));
        Assert.Equal(404, gone.StatusCode);

        // list / info / config through the CLI: the type, the accelerator and why the probe chose it
        var list = d.Cli("list");
        Assert.Contains("vm", list.Out);
        var info = d.Cli("info", "v1");
        Assert.True(info.Code == 0, info.Err);
        output.WriteLine(info.Out);
        Assert.Contains("Type: vm", info.Out);
        Assert.Matches("Accelerator: (kvm|tcg)", info.Out);
        Assert.Contains("Accelerator reason: ", info.Out);
        Assert.Contains("Vcpus: 1", info.Out);
        var st = await c.GetStateAsync("v1");
        Assert.True(st.Stats!.MemoryBytes > 16 << 20, $"QEMU's RSS is {st.Stats.MemoryBytes}");
        Assert.True(st.Stats.CpuUsageNs > 0);

        // the console log has the guest's boot
        using (var log = await c.LogsAsync("v1"))
            Assert.Contains("hull: ready", await new StreamReader(log).ReadToEndAsync());

        // hulld killed with SIGKILL: QEMU lives on (its own session); the new hulld finds it Running and exec works
        d.Kill9();
        Assert.Equal(qemu, VmDaemon.QemuFor(VmStateDir(d, "v1")));
        d.Start();
        inst = await c.GetInstanceAsync("v1");
        Assert.Equal(InstanceStates.Running, inst.State);
        Assert.Equal(qemu[0], inst.Pid);
        Assert.Equal("after restart\n", await Sh(c, "v1", "echo after restart"));

        // a file on the root disk, then a clean stop (ACPI power button: the guest powers itself off)
        await Sh(c, "v1", "echo keep > /mnt/root/keep; sync");
        await c.StopAsync("v1", timeout: 60);
        inst = await c.GetInstanceAsync("v1");
        Assert.Equal(InstanceStates.Stopped, inst.State);
        Assert.Equal(0, inst.LastExitCode);
        Assert.Empty(VmDaemon.QemuFor(VmStateDir(d, "v1")));
        var stopped = await Assert.ThrowsAsync<HullException>(() => c.ExecAsync("v1", "true"));
        Assert.Equal(409, stopped.StatusCode);
        Assert.Contains("not running", stopped.Message);

        // a disk snapshot (stopped), then a full one (running: memory too)
        await c.CreateSnapshotAsync("v1", "disk1");
        await c.StartAsync("v1");
        Assert.Equal("keep\n", await Sh(c, "v1", "cat /mnt/root/keep"));
        await Sh(c, "v1", "echo later > /mnt/root/later; sync; echo in-ram > /root/before-full");
        await c.CreateSnapshotAsync("v1", "full1");
        await Sh(c, "v1", "echo after > /root/after-full");

        // restoring the full snapshot: the next start resumes the guest as it was (a file written after is gone)
        await c.StopAsync("v1", force: true);
        Assert.Equal(137, (await c.GetInstanceAsync("v1")).LastExitCode);
        await c.RestoreSnapshotAsync("v1", "full1");
        await c.StartAsync("v1");
        Assert.Equal("in-ram\n", await Sh(c, "v1", "cat /root/before-full"));
        Assert.Equal("no\n", await Sh(c, "v1", "[ -e /root/after-full ] && echo yes || echo no"));

        // restoring the disk snapshot: a cold boot from the disk as it was
        await c.StopAsync("v1", force: true);
        await c.RestoreSnapshotAsync("v1", "disk1");
        await c.StartAsync("v1");
        Assert.Equal("keep\n", await Sh(c, "v1", "cat /mnt/root/keep"));
        Assert.Equal("no\n", await Sh(c, "v1", "[ -e /mnt/root/later ] && echo yes || echo no; [ -e " +
            "/root/before-full ] && echo ram; true"));

        // a guest kernel panic: QEMU is ended and the instance shows Error with the reason
        Assert.Equal(0, (await c.ExecAsync("v1", "sh", "-c",
            "(sleep 1; echo c > /proc/sysrq-trigger) >/dev/null 2>&1 &")).ExitCode);
        for (var i = 0; i < 600 && (await c.GetInstanceAsync(
            "v1")).State == InstanceStates.Running; i++) await Task.Delay(200);
        inst = await c.GetInstanceAsync("v1");
        Assert.Equal(InstanceStates.Error, inst.State);
        Assert.Contains("panicked", inst.StatusMessage);
        Assert.Empty(VmDaemon.QemuFor(VmStateDir(d, "v1")));

        // delete: no QEMU, no files left
        var del = d.Cli("delete", "v1", "--force");
        Assert.True(del.Code == 0, del.Err);
        Assert.Empty(VmDaemon.QemuFor(VmStateDir(d, "v1")));
        Assert.False(Directory.Exists(Path.Combine(d.StateDir, "instances", "v1")));
    }

    [SkippableFact]
    public async Task Bad_input_is_refused_with_a_clear_message()
    {
        using var d = new VmDaemon();
        var c = d.Client;

        // a container-only key
        var procs = d.Cli("launch", "busybox", "p1", "--vm", "-c", "limits.processes=100");
        Assert.NotEqual(0, procs.Code);
        Assert.Contains("limits.processes applies to containers only", procs.Err);
        Assert.Empty(await c.ListInstancesAsync());

        // more memory than the host has
        var hostMiB = File.ReadLines("/proc/meminfo").First(l => l.StartsWith("MemTotal:")).Split(' ',
            StringSplitOptions.RemoveEmptyEntries)[1];
        var huge = (long.Parse(hostMiB) / 1024 + 1024) + "MiB";
        var mem = await Assert.ThrowsAsync<HullException>(() => c.CreateInstanceAsync(new InstanceCreateRequest
        {
            Name = "m1", Image = "busybox", Type = InstanceTypes.Vm, Config = { ["limits.memory"] = huge },
        }));
        Assert.Equal(400, mem.StatusCode);
        Assert.Contains("more than this host has", mem.Message);

        // a host directory share is refused, naming the alternatives
        using var share = new Hull.TestSupport.TempDir();
        var bind = await Assert.ThrowsAsync<HullException>(() => c.CreateInstanceAsync(new InstanceCreateRequest
        {
            Name = "b1", Image = "busybox", Type = InstanceTypes.Vm,
            Devices = { ["share"] = new() { ["type"] = "bind", ["source"] = share.Path, ["path"] = "/mnt/share" } },
        }));
        Assert.Contains("hull file push", bind.Message);
        Assert.Empty(await c.ListInstancesAsync());

        // a VM that is created but not started: exec is refused; it has an overlay on the image's root disk
        var init = d.Cli("init", "busybox", "s1", "--vm");
        Assert.True(init.Code == 0, init.Err + d.Log);
        var inst = await c.GetInstanceAsync("s1");
        Assert.Equal(InstanceTypes.Vm, inst.Type);
        Assert.Equal(InstanceStates.Stopped, inst.State);
        Assert.True(File.Exists(Path.Combine(VmStateDir(d, "s1"), "disk0.qcow2")));
        var exec = d.Cli("exec", "s1", "--", "true");
        Assert.NotEqual(0, exec.Code);
        Assert.Contains("not running", exec.Err);
        // a signal without meaning for a VM is refused only when it runs; deleting a never-started VM leaves nothing
        await c.DeleteInstanceAsync("s1");
        Assert.False(Directory.Exists(Path.Combine(d.StateDir, "instances", "s1")));
        Assert.Empty(VmDaemon.QemuFor(d.StateDir));
    }
}
