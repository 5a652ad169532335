using System.Net;
using System.Net.Sockets;
using Hull.TestSupport;
using Hull.Vm;
using Xunit;

namespace Hull.Vm.Tests;

public sealed class FirmwareTests
{
    [SkippableFact]
    public async Task SeaBios_prints_its_banner_on_the_serial_console()
    {
        TestImages.RequireVmHost();
        Requires.File(QemuCommand.DefaultSeaBios, "SeaBIOS (seabios package)");
        await using var dir = new VmDir();
        var vm = await Vm.LaunchAsync(dir.Sub("bios"),
            new VmConfig { Name = "bios", Boot = BootMode.Bios, MemoryMiB = 64, Accel = Accel.Tcg }, TestImages.Host);
        var log = await vm.WaitForConsoleAsync("SeaBIOS (version", TimeSpan.FromSeconds(60));
        Assert.Contains("SeaBIOS", log);
        await vm.KillAsync();
        TestImages.AssertNoRuntimeLeft(vm.StateDir);
    }

    [SkippableFact]
    public async Task Ovmf_boots_with_a_private_variable_store_and_reaches_the_uefi_boot_manager()
    {
        TestImages.RequireVmHost();
        var code = QemuCommand.OvmfCodeCandidates.FirstOrDefault(File.Exists);
        if (code is null) Requires.Missing("OVMF (ovmf package)");
        await using var dir = new VmDir();
        var vm = await Vm.LaunchAsync(dir.Sub("uefi"),
            new VmConfig { Name = "uefi", Boot = BootMode.Uefi, MemoryMiB = 128, Accel = Accel.Tcg }, TestImages.Host);
        Assert.True(File.Exists(Path.Combine(vm.StateDir, StateFiles.OvmfVars)));
        // OVMF writes its boot manager's progress to the serial console: with no disk it tries the EFI shell / PXE.
        var log = await vm.WaitForConsoleAsync("BdsDxe", TimeSpan.FromSeconds(150));
        Assert.Contains("BdsDxe", log);
        await vm.KillAsync();
        TestImages.AssertNoRuntimeLeft(vm.StateDir);
    }
}

public sealed class BadInputTests
{
    static async Task<VmException> Refused(string state, VmConfig c)
    {
        var e = await Assert.ThrowsAnyAsync<VmException>(() => Vm.LaunchAsync(state, c, TestImages.Host));
        Assert.False(Directory.Exists(state), $"{state} was left behind");
        Assert.False(TestImages.QemuRunsFor(state));
        return e;
    }

    [SkippableFact]
    public async Task Missing_kernel_image_or_firmware_is_named()
    {
        TestImages.RequireVmHost();
        await using var dir = new VmDir();
        var e = await Refused(dir.Sub("a"), new VmConfig { Kernel = "/nonexistent/vmlinux", Accel = Accel.Tcg });
        Assert.Contains("/nonexistent/vmlinux", e.Message);
        e = await Refused(dir.Sub("b"), new VmConfig { Boot = BootMode.Bios, Firmware = "/nonexistent/bios.bin",
            Accel = Accel.Tcg });
        Assert.Contains("/nonexistent/bios.bin", e.Message);
        var image = await TestImages.ImageAsync();
        var c = image.ToConfig("x");
        c.Accel = Accel.Tcg;
        c.Disks = [new DiskConfig { Base = "/nonexistent/base.qcow2" }];
        e = await Refused(dir.Sub("c"), c);
        Assert.Contains("/nonexistent/base.qcow2", e.Message);
    }

    [SkippableFact]
    public async Task A_corrupt_qcow2_is_refused_before_QEMU_runs()
    {
        TestImages.RequireVmHost();
        await using var dir = new VmDir();
        var bad = Path.Combine(dir.Path, "bad.qcow2");
        var good = Path.Combine(dir.Path, "good.qcow2");
        Hull.Vm.Tests.Util.Run("qemu-img", "create", "-q", "-f", "qcow2", good, "16M");
        var bytes = File.ReadAllBytes(good);
        // Keep the magic, break the header: the L1 table offset points far outside the file.
        bytes[40] = 0x7f; bytes[41] = 0xff; bytes[42] = 0xff; bytes[43] = 0xff;
        File.WriteAllBytes(bad, bytes);
        var image = await TestImages.ImageAsync();
        var c = image.ToConfig("x");
        c.Accel = Accel.Tcg;
        c.Disks = [new DiskConfig { Path = bad, Format = DiskFormat.Qcow2 }];
        var e = await Refused(dir.Sub("vm"), c);
        Assert.Contains("bad.qcow2", e.Message);
        c.Disks = [new DiskConfig { Base = bad }];
        e = await Refused(dir.Sub("vm2"), c);
        Assert.Contains("bad.qcow2", e.Message);
    }

    [SkippableFact]
    public async Task More_memory_than_the_host_has_is_refused()
    {
        TestImages.RequireVmHost();
        await using var dir = new VmDir();
        var image = await TestImages.ImageAsync();
        var c = image.ToConfig("big", memoryMiB: 64 * 1024 * 1024);
        c.Accel = Accel.Tcg;
        var e = await Refused(dir.Sub("vm"), c);
        Assert.Contains("more than this host has", e.Message);
    }

    [SkippableFact]
    public async Task QEMU_dying_at_start_surfaces_its_stderr_and_leaves_nothing()
    {
        TestImages.RequireVmHost();
        await using var dir = new VmDir();
        var image = await TestImages.ImageAsync();
        var c = image.ToConfig("dies");
        c.Accel = Accel.Tcg;
        c.ExtraArgs = ["-device", "no-such-device-model"];
        var e = await Refused(dir.Sub("vm"), c);
        Assert.Contains("no-such-device-model", e.Message);
    }

    [SkippableFact]
    public async Task A_migration_port_already_in_use_is_refused_and_the_source_keeps_running()
    {
        TestImages.RequireVmHost();
        await using var dir = new VmDir();
        var image = await TestImages.ImageAsync();
        var c = image.ToConfig("busy");
        c.Accel = Accel.Tcg;
        var vm = await Vm.LaunchAsync(dir.Sub("src"), c, TestImages.Host);
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var e = await Assert.ThrowsAsync<VmException>(() =>
            vm.MigrateAsync(dir.Sub("dst"), TestImages.Host, $"tcp:127.0.0.1:{port}"));
        Assert.Contains($"port {port}", e.Message);
        Assert.False(Directory.Exists(dir.Sub("dst")));
        Assert.NotNull(vm.Pid);
        Assert.Contains(await vm.GetStateAsync(), new[] { VmState.Running, VmState.Paused });
        await vm.KillAsync();
        TestImages.AssertNoRuntimeLeft(vm.StateDir);
    }

    [SkippableFact]
    public async Task Invalid_names_and_a_second_create_in_the_same_dir_are_refused()
    {
        TestImages.RequireVmHost();
        await using var dir = new VmDir();
        var image = await TestImages.ImageAsync();
        var c = image.ToConfig("bad name!");
        c.Accel = Accel.Tcg;
        var e = await Refused(dir.Sub("a"), c);
        Assert.Contains("bad name!", e.Message);
        c = image.ToConfig("ok");
        c.Accel = Accel.Tcg;
        var vm = await Vm.CreateAsync(dir.Sub("b"), c, TestImages.Host);
        var e2 = await Assert.ThrowsAsync<VmException>(() => Vm.CreateAsync(dir.Sub("b"), c, TestImages.Host));
        Assert.Contains("already holds a VM", e2.Message);
        await vm.DeleteAsync();
        Assert.False(Directory.Exists(dir.Sub("b")));
    }
}

static class Util
{
    public static void Run(string program, params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(Requires.Program(program)) { UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
    }
}

public sealed class AgentChannelTests
{
    [SkippableFact]
    public async Task The_agent_port_opening_is_seen_and_a_silent_guest_times_out_with_a_clear_message()
    {
        TestImages.RequireVmHost();
        // The plain default image (no agent, no echo loop): nothing opens the port.
        var plain = await Hull.Vm.Image.DefaultImage.BuildAsync(
            new Hull.Vm.Image.DefaultImageOptions { CacheDir = TestImages.CacheDir });
        await using var dir = new VmDir();
        var vm = await Vm.LaunchAsync(dir.Sub("silent"), plain.ToConfig("silent"), TestImages.Host);
        await vm.WaitForConsoleAsync(Hull.Vm.Image.DefaultImage.ReadyMarker, TestImages.BootTimeout);
        var e = await Assert.ThrowsAsync<VmException>(() => vm.WaitForAgentPortAsync(TimeSpan.FromSeconds(3)));
        Assert.Contains(AgentChannel.PortName, e.Message);
        Assert.Contains("did not answer", e.Message);
        Assert.False(vm.AgentPortOpen);
        // Something opening the port in the guest is what "agent ready" looks like from the host.
        await TestImages.ShellAsync(vm, $"( exec 3<>{AgentChannel.GuestDevice}; sleep 30 ) & true");
        await vm.WaitForAgentPortAsync(TimeSpan.FromSeconds(30));
        Assert.True(vm.AgentPortOpen);
        await vm.KillAsync();
        TestImages.AssertNoRuntimeLeft(vm.StateDir);
    }
}
