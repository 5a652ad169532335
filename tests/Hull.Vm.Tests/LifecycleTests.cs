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
            Assert.True(await again.StopAsync(TimeSpan.FromSeconds(60)), "the guest did not power off on the ACPI button");
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
        Assert.Equal("crashed", vm.LastRecord?.State);
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
        var vm = await Vm.LaunchAsync(src, image.ToConfig("mig"), TestImages.Host);
        await vm.WaitForConsoleAsync(DefaultImage.ReadyMarker, TestImages.BootTimeout);
        await TestImages.ShellAsync(vm, "echo moved-state > /tmp/m; echo on-disk > /mnt/root/m; sync");

        var r = await vm.MigrateAsync(dst, TestImages.Host);
        Assert.True(r.Total > TimeSpan.Zero);
        Assert.True(r.Downtime < r.Total);
        Assert.True(r.TransferredBytes > 0);
        await using var dest = r.Destination;
        Assert.Null(vm.Pid);
        Assert.Equal("migrated", vm.LastRecord?.State);
        TestImages.AssertNoRuntimeLeft(src);
        Assert.Equal(VmState.Running, await dest.GetStateAsync());
        // Memory, disk writes, the console and the agent channel all continue on the destination.
        Assert.Equal("moved-state", (await TestImages.ShellAsync(dest, "cat /tmp/m")).Trim());
        Assert.Equal("on-disk", (await TestImages.ShellAsync(dest, "cat /mnt/root/m")).Trim());
        Assert.StartsWith("hello-dest", await TestImages.AgentEchoAsync(dest, "hello-dest", TimeSpan.FromSeconds(30)));
        await dest.KillAsync();
        TestImages.AssertNoRuntimeLeft(dst);
    }
}
