using Hull.Agent.Protocol;
using Hull.Vm;
using Hull.Vm.Image;
using Xunit;

namespace Hull.Vm.Tests;

public sealed class LifecycleTests
{
    [SkippableFact]
    public async Task Acpi_stop_restart_attach_kill_and_delete_leave_nothing_behind()
    {
        TestImages.RequireVmHost();
        var image = await TestImages.ImageAsync();
        await using var dir = new VmDir();
        var state = dir.Sub("life");
        var vm = await Vm.LaunchAsync(state, image.ToConfig("life"), TestImages.Host);
        await vm.WaitForConsoleAsync(DefaultImage.ReadyMarker, TestImages.BootTimeout);
        var pid = vm.Pid;
        Assert.NotNull(pid);
        Assert.True(File.Exists(Path.Combine(state, StateFiles.Config)));

        // Another Hull process (here: another Vm object) reconnects to the running QEMU.
        await vm.DisposeAsync();
        await using (var again = await Vm.AttachAsync(state, TestImages.Host))
        {
            Assert.Equal(pid, again.Pid);
            Assert.Equal(VmState.Running, await again.GetStateAsync());
            // ACPI power button: the guest's acpid powers it off by itself.
            Assert.True(await again.StopAsync(TimeSpan.FromSeconds(60)),
                "the guest did not power off on the ACPI button");
            Assert.Equal(VmState.Stopped, await again.GetStateAsync());
        }
        TestImages.AssertNoRuntimeLeft(state);

        // Restart: start again from the stopped state (same overlay), then force-kill.
        vm = await Vm.AttachAsync(state, TestImages.Host);
        var from = vm.ConsoleLogLength;
        await vm.StartAsync();
        await vm.WaitForConsoleAsync(DefaultImage.ReadyMarker, TestImages.BootTimeout, from);
        Assert.NotEqual(pid, vm.Pid);
        await vm.KillAsync();
        Assert.Equal(VmState.Stopped, await vm.GetStateAsync());
        TestImages.AssertNoRuntimeLeft(state);

        await vm.DeleteAsync();
        Assert.False(Directory.Exists(state));
    }

    [SkippableFact]
    public async Task A_guest_kernel_panic_is_reported_as_crashed_and_the_host_is_fine()
    {
        TestImages.RequireVmHost();
        var image = await TestImages.ImageAsync();
        await using var dir = new VmDir();
        var state = dir.Sub("panic");
        var c = image.ToConfig("panic");
        c.OnPanic = PanicPolicy.Stop;
        var vm = await Vm.LaunchAsync(state, c, TestImages.Host);
        await vm.WaitForConsoleAsync(DefaultImage.ReadyMarker, TestImages.BootTimeout);
        Assert.Equal("ok", (await TestImages.ShellAsync(vm, "echo ok")).Trim());
        using var panicked = vm.Qmp.Expect("GUEST_PANICKED");
        await vm.SendConsoleAsync("echo c > /proc/sysrq-trigger\n", TimeSpan.FromSeconds(20));
        await panicked.WaitAsync(TimeSpan.FromSeconds(60));
        // Policy Stop: QEMU is ended, the state stays Crashed.
        for (var i = 0; i < 100 && vm.Pid is not null; i++) await Task.Delay(100);
        Assert.Null(vm.Pid);
        Assert.Equal(VmState.Crashed, await vm.GetStateAsync());
        Assert.Equal(VmRecordState.Crashed, vm.LastRecord?.State);
        Assert.Contains("panic", vm.LastRecord?.Reason);
        Assert.Contains("Kernel panic", File.ReadAllText(vm.ConsoleLogPath));
        TestImages.AssertNoRuntimeLeft(state);
        await vm.DeleteAsync();
    }

    [SkippableFact]
    public async Task Live_migration_moves_the_guest_with_its_console_and_agent_channel()
    {
        TestImages.RequireVmHost();
        var image = await TestImages.ImageAsync();
        await using var dir = new VmDir();
        var src = dir.Sub("src");
        var dst = dir.Sub("dst");
        var mc = image.ToConfig("mig");
        mc.Hostname = "mig";
        var vm = await Vm.LaunchAsync(src, mc, TestImages.Host);
        await vm.WaitForConsoleAsync(DefaultImage.ReadyMarker, TestImages.BootTimeout);
        await TestImages.ShellAsync(vm, "echo moved-state > /tmp/m; echo on-disk > /mnt/root/m; sync");
        // A host connection to the agent stays open on the source through the migration.
        await using var srcAgent = await TestImages.AgentAsync(vm);
        var agentPid = (await TestImages.ExecAsync(srcAgent, "pidof", "hull-agent")).Out.Trim();
        Assert.NotEqual("", agentPid);

        var r = await vm.MigrateAsync(dst, TestImages.Host);
        Assert.True(r.Total > TimeSpan.Zero);
        Assert.True(r.Downtime > TimeSpan.Zero && r.Downtime < r.Total, $"downtime {r.Downtime} of {r.Total}");
        Assert.True(r.TransferredBytes > 0);
        await using var dest = r.Destination;
        Assert.Null(vm.Pid);
        Assert.Equal(VmRecordState.Migrated, vm.LastRecord?.State);
        // The source's channel is gone with its QEMU: the old connection says so instead of hanging.
        await Assert.ThrowsAsync<AgentUnavailableException>(() => TestImages.ExecAsync(srcAgent, "true"));
        TestImages.AssertNoRuntimeLeft(src);
        Assert.Equal(VmState.Running, await dest.GetStateAsync());
        // Memory, disk writes, the console and the agent channel all continue on the destination.
        Assert.Equal("moved-state", (await TestImages.ShellAsync(dest, "cat /tmp/m")).Trim());
        Assert.Equal("on-disk", (await TestImages.ShellAsync(dest, "cat /mnt/root/m")).Trim());
        // The agent in the guest answers the destination's channel: a new connection, the same agent process.
        await using (var agent = await TestImages.AgentAsync(dest))
        {
            var (code, text, _) = await TestImages.ExecAsync(agent, "sh", "-c", "cat /tmp/m; hostname");
            Assert.Equal(0, code);
            Assert.Equal("moved-state\nmig\n", text);
            Assert.Equal(agentPid, (await TestImages.ExecAsync(agent, "pidof", "hull-agent")).Out.Trim());
        }
        await dest.KillAsync();
        TestImages.AssertNoRuntimeLeft(dst);
    }
}

public sealed class ImageAndDiskTests
{
    [SkippableFact]
    public async Task The_image_carries_the_agent_with_its_libraries_and_the_modules_with_their_dependencies()
    {
        TestImages.RequireVmHost();
        var cpio = Hull.TestSupport.Requires.Program("cpio");
        // Any dynamically linked program stands in for the agent binary here.
        var image = await DefaultImage.BuildAsync(
            new DefaultImageOptions { CacheDir = TestImages.CacheDir, AgentBinary = "/bin/ls" });
        Assert.True(image.HasAgent);
        var psi = new System.Diagnostics.ProcessStartInfo(cpio, "-t") { RedirectStandardInput = true,
            RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        await using (var f = File.OpenRead(image.Initrd)) await f.CopyToAsync(p.StandardInput.BaseStream);
        p.StandardInput.Close();
        await p.WaitForExitAsync();
        var names = (await stdout).Split('\n', StringSplitOptions.RemoveEmptyEntries).ToHashSet();
        Assert.Contains("bin/hull-agent", names);
        Assert.Contains(names, n => n.EndsWith("/libc.so.6", StringComparison.Ordinal));
        Assert.Contains(names, n => n.Contains("ld-linux-x86-64.so.2", StringComparison.Ordinal));
        foreach (var m in new[] { "virtio_console.ko", "virtio_blk.ko", "ext4.ko", "jbd2.ko", "mbcache.ko", "crc16.ko",
            "vmw_vsock_virtio_transport.ko", "pvpanic-mmio.ko" })
            Assert.Contains(names, n => n.EndsWith("/" + m, StringComparison.Ordinal));
        Assert.Contains("init", names);
        Assert.Contains("/bin/hull-agent --serial " + AgentChannel.GuestDevice, InitOf(image));
        // The kernel is the uncompressed ELF extracted from the bzImage.
        var head = new byte[4];
        await using (var k = File.OpenRead(image.Kernel)) k.ReadExactly(head);
        Assert.Equal(new byte[] { 0x7f, (byte)'E', (byte)'L', (byte)'F' }, head);
    }

    static string InitOf(DefaultImageInfo image)
    {
        var bytes = File.ReadAllBytes(image.Initrd);
        var text = System.Text.Encoding.Latin1.GetString(bytes);
        var i = text.IndexOf("#!/bin/busybox sh\n# Hull's init", StringComparison.Ordinal);
        return i < 0 ? "" : text[i..Math.Min(text.Length, i + 6000)];
    }

    [SkippableFact]
    public async Task Raw_disks_offline_resize_and_disk_snapshot_restore_on_a_stopped_vm()
    {
        TestImages.RequireVmHost();
        var image = await TestImages.ImageAsync();
        await using var dir = new VmDir();
        var c = image.ToConfig("disks");
        var vm = await Vm.CreateAsync(dir.Sub("disks"), c, TestImages.Host);
        var raw = vm.AddDataDisk(8 << 20, DiskFormat.Raw);
        Assert.Equal(8L << 20, new FileInfo(vm.Config.Disks[1].Path).Length);
        await vm.ResizeDiskAsync(raw, 12 << 20);
        Assert.Equal(12L << 20, new FileInfo(vm.Config.Disks[1].Path).Length);
        // The overlay is small and backed by the shared read-only base.
        var overlay = vm.Config.Disks[0].Path;
        Assert.StartsWith(vm.StateDir, overlay);
        Assert.True(new FileInfo(overlay).Length < 1 << 20);
        // A raw disk cannot hold internal snapshots: a clear refusal.
        var e = await Assert.ThrowsAsync<VmException>(() => vm.SnapshotAsync("s1", SnapshotKind.Disk));
        Assert.Contains("raw", e.Message);
        await vm.DeleteAsync();
        Assert.False(Directory.Exists(dir.Sub("disks")));
        Assert.True(File.Exists(image.RootDisk));

        // Disk-only snapshot of a stopped VM, a change, restore: the change is gone at the next boot.
        vm = await Vm.CreateAsync(dir.Sub("snap"), image.ToConfig("snap"), TestImages.Host);
        await vm.SnapshotAsync("clean", SnapshotKind.Disk);
        Assert.Single(await vm.ListSnapshotsAsync());
        await vm.StartAsync();
        await vm.WaitForConsoleAsync(DefaultImage.ReadyMarker, TestImages.BootTimeout);
        await TestImages.ShellAsync(vm, "echo dirty > /mnt/root/dirty; sync");
        await vm.KillAsync();
        await vm.RestoreSnapshotAsync("clean");
        var from = vm.ConsoleLogLength;
        await vm.StartAsync();
        await vm.WaitForConsoleAsync(DefaultImage.ReadyMarker, TestImages.BootTimeout, from);
        Assert.Equal("gone", (await TestImages.ShellAsync(vm,
            "[ -e /mnt/root/dirty ] && echo present || echo gone")).Trim());
        await vm.KillAsync();
        await vm.DeleteSnapshotAsync("clean");
        Assert.Empty(await vm.ListSnapshotsAsync());
        await vm.DeleteAsync();
    }
}
