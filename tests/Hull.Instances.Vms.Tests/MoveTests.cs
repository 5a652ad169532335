using Hull.Api;
using Hull.Sdk;
using Xunit;
using Xunit.Abstractions;

namespace Hull.Instances.Vms.Tests;

/// <summary>A running VM moves live to a second hulld (a second "host" on this machine), then moves back
/// cold.</summary>
public sealed class MoveTests(ITestOutputHelper output)
{
    [SkippableFact]
    public async Task A_running_vm_moves_live_to_another_hulld_and_back_cold()
    {
        using var a = new VmDaemon();
        using var b = new VmDaemon();
        var launch = a.Cli("launch", "busybox", "v1", "--vm", "-c", "limits.memory=192MiB");
        Assert.True(launch.Code == 0, launch.Err + a.Log);
        // State in guest memory (the initramfs root) and on the root disk (/mnt/root).
        var w = await a.Client.ExecAsync("v1", "sh", "-c",
            "echo in-memory > /run/marker; echo on-disk > /mnt/root/marker; sync; cat /proc/sys/kernel/random/boot_id");
        Assert.Equal(0, w.ExitCode);
        var bootId = w.Stdout.Trim();
        var sourceQemu = VmDaemon.QemuFor(Path.Combine(a.StateDir, "instances", "v1"));
        Assert.Single(sourceQemu);

        Assert.Equal(0, a.Cli("remote", "add", "b", "unix:" + b.Socket).Code);
        var move = a.Cli("move", "v1", "b:");
        Assert.True(move.Code == 0, move.Err + a.Log + b.Log);
        Assert.Contains("moved v1 live", move.Out);
        output.WriteLine(move.Out.Trim());

        // The same boot (not a restart) runs on the target, with its memory and disk; nothing is left on the source.
        var inst = await b.Client.GetInstanceAsync("v1");
        Assert.Equal(InstanceStates.Running, inst.State);
        var r = await b.Client.ExecAsync("v1", "sh", "-c",
            "cat /run/marker /mnt/root/marker /proc/sys/kernel/random/boot_id");
        Assert.Equal($"in-memory\non-disk\n{bootId}\n", r.Stdout);
        Assert.Empty(await a.Client.ListInstancesAsync());
        Assert.False(Directory.Exists(Path.Combine(a.StateDir, "instances", "v1")));
        Assert.DoesNotContain(sourceQemu[0], Directory.EnumerateDirectories("/proc").Select(Path.GetFileName).Select(
            n => int.TryParse(n, out var p) ? p : -1));
        Assert.Single(VmDaemon.QemuFor(Path.Combine(b.StateDir, "instances", "v1")));

        // A live move to a hulld that already has the name fails and leaves the VM running where it was.
        await a.Client.CreateInstanceAsync(new InstanceCreateRequest { Name = "v1", Image = "busybox",
            Type = InstanceTypes.Vm, Config = { ["limits.memory"] = "128MiB" } });
        var clash = await Assert.ThrowsAsync<HullException>(() => InstanceTransfer.MoveAsync(b.Client, "v1", a.Client));
        Assert.Contains("already exists", clash.Message);
        Assert.Equal(InstanceStates.Running, (await b.Client.GetInstanceAsync("v1")).State);
        await a.Client.DeleteInstanceAsync("v1");

        // Back, cold: stop it there, move it as a backup (the overlay re-pointed at this hulld's base), boot it here.
        await b.Client.StopAsync("v1", force: true);
        var back = a.Cli("move", "b:v1", "v2");
        Assert.True(back.Code == 0, back.Err + a.Log + b.Log);
        await a.Client.StartAsync("v2");
        r = await a.Client.ExecAsync("v2", "cat", "/mnt/root/marker");
        Assert.Equal("on-disk\n", r.Stdout);
        Assert.Empty(await b.Client.ListInstancesAsync());
    }
}
