using Xunit;

namespace Hull.Vm.Tests;

/// <summary>
/// Golden tests of <see cref="QemuCommand.Build"/>: the whole argv for representative configs. A change to QEMU's
/// command line shows here as a diff of the expected argv, to be made on purpose.
/// </summary>
public sealed class QemuCommandTests
{
    static void AssertArgv(IReadOnlyList<string> expected, IReadOnlyList<string> actual) =>
        Assert.True(expected.SequenceEqual(actual),
            $"expected:\n  {string.Join("\n  ", expected)}\nactual:\n  {string.Join("\n  ", actual)}");

    [Fact]
    public void Direct_boot_on_kvm_with_a_qcow2_root_disk()
    {
        var c = new VmConfig
        {
            Name = "v1", MemoryMiB = 256, Cpus = 2, ResolvedAccel = Accel.Kvm, Boot = BootMode.Direct,
            Kernel = "/k/vmlinuz", Initrd = "/k/initrd", Cmdline = " quiet ", Hostname = "v1",
            Disks = [new DiskConfig { Path = "/st/v1/disk0.qcow2", Node = "disk0" }],
        };
        AssertArgv([
            "-name", "v1,debug-threads=on", "-nodefaults", "-no-user-config",
            "-display", "none",
            "-accel", "kvm", "-cpu", "host,-arch-capabilities",
            "-M", "microvm,acpi=on",
            "-m", "256M", "-smp", "2",
            "-pidfile", "/st/v1/qemu.pid",
            "-chardev", "socket,id=qmp,path=/st/v1/qmp.sock,server=on,wait=off", "-mon", "chardev=qmp,mode=control",
            "-chardev",
            "socket,id=con0,path=/st/v1/console.sock,server=on,wait=off,logfile=/st/v1/console.log,logappend=on",
            "-serial", "chardev:con0",
            "-device", "pvpanic", "-action", "panic=pause", "-action", "shutdown=poweroff",
            "-device", "virtio-serial-device,id=vser0",
            "-chardev", "socket,id=agent0,path=/st/v1/agent.sock,server=on,wait=off",
            "-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.hull.agent.0,id=agent0-port",
            "-device", "virtio-rng-device",
            "-kernel", "/k/vmlinuz", "-initrd", "/k/initrd",
            "-append", "console=ttyS0 panic=-1 reboot=t hull.hostname=v1 hull.root=/dev/vda quiet",
            "-drive",
            "if=none,id=disk0-blk,node-name=disk0,file=/st/v1/disk0.qcow2,format=qcow2,readonly=off,discard=unmap",
            "-device", "virtio-blk-device,drive=disk0-blk,id=disk0-dev",
        ], QemuCommand.Build(c, "/st/v1"));
    }

    [Fact]
    public void Bios_boot_on_tcg_with_a_cdrom_and_a_read_only_raw_disk()
    {
        var c = new VmConfig
        {
            Name = "b1", MemoryMiB = 512, Cpus = 1, ResolvedAccel = Accel.Tcg, Boot = BootMode.Bios,
            Disks =
            [
                new DiskConfig { Path = "/img/install.iso", CdRom = true, Node = "disk0" },
                new DiskConfig { Path = "/img/data.raw", Format = DiskFormat.Raw, ReadOnly = true, Node = "disk1" },
            ],
        };
        AssertArgv([
            "-name", "b1,debug-threads=on", "-nodefaults", "-no-user-config",
            "-nographic",
            "-accel", "tcg", "-cpu", "max",
            "-M", "q35",
            "-m", "512M", "-smp", "1",
            "-pidfile", "/st/b1/qemu.pid",
            "-chardev", "socket,id=qmp,path=/st/b1/qmp.sock,server=on,wait=off", "-mon", "chardev=qmp,mode=control",
            "-chardev",
            "socket,id=con0,path=/st/b1/console.sock,server=on,wait=off,logfile=/st/b1/console.log,logappend=on",
            "-serial", "chardev:con0",
            "-device", "pvpanic", "-action", "panic=pause", "-action", "shutdown=poweroff",
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", "socket,id=agent0,path=/st/b1/agent.sock,server=on,wait=off",
            "-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.hull.agent.0,id=agent0-port",
            "-device", "virtio-rng-pci",
            "-bios", "/usr/share/seabios/bios-256k.bin",
            "-drive",
            "if=none,id=disk0-blk,node-name=disk0,file=/img/install.iso,format=raw,readonly=on,discard=unmap,"
            + "media=cdrom",
            "-device", "ide-cd,drive=disk0-blk,id=disk0-dev,bus=ide.0",
            "-drive", "if=none,id=disk1-blk,node-name=disk1,file=/img/data.raw,format=raw,readonly=on,discard=unmap",
            "-device", "virtio-blk-pci,drive=disk1-blk,id=disk1-dev",
        ], QemuCommand.Build(c, "/st/b1"));
    }

    [Fact]
    public void Uefi_boot_waiting_for_an_incoming_migration_with_commas_escaped_and_extra_args_last()
    {
        var c = new VmConfig
        {
            Name = "u,1", MemoryMiB = 1024, Cpus = 4, ResolvedAccel = Accel.Kvm, Boot = BootMode.Uefi,
            Firmware = "/fw/OVMF_CODE,4M.fd", Incoming = "tcp:127.0.0.1:4444",
            ExtraArgs = ["-device", "virtio-balloon-pci"],
            Disks = [new DiskConfig { Path = "/st/u,1/disk0.qcow2", Node = "disk0" }],
        };
        AssertArgv([
            "-name", "u,,1,debug-threads=on", "-nodefaults", "-no-user-config",
            "-nographic",
            "-accel", "kvm", "-cpu", "host,-arch-capabilities",
            "-M", "q35",
            "-m", "1024M", "-smp", "4",
            "-pidfile", "/st/u,,1/qemu.pid",
            "-chardev", "socket,id=qmp,path=/st/u,,1/qmp.sock,server=on,wait=off", "-mon", "chardev=qmp,mode=control",
            "-chardev",
            "socket,id=con0,path=/st/u,,1/console.sock,server=on,wait=off,logfile=/st/u,,1/console.log,logappend=on",
            "-serial", "chardev:con0",
            "-device", "pvpanic", "-action", "panic=pause", "-action", "shutdown=poweroff",
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", "socket,id=agent0,path=/st/u,,1/agent.sock,server=on,wait=off",
            "-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.hull.agent.0,id=agent0-port",
            "-device", "virtio-rng-pci",
            "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/fw/OVMF_CODE,,4M.fd",
            "-drive", "if=pflash,format=raw,unit=1,file=/st/u,,1/ovmf-vars.fd",
            "-drive",
            "if=none,id=disk0-blk,node-name=disk0,file=/st/u,,1/disk0.qcow2,format=qcow2,readonly=off,discard=unmap",
            "-device", "virtio-blk-pci,drive=disk0-blk,id=disk0-dev",
            "-incoming", "tcp:127.0.0.1:4444",
            "-device", "virtio-balloon-pci",
        ], QemuCommand.Build(c, "/st/u,1"));
    }

    [Fact]
    public void Direct_boot_on_tcg_passes_the_tsc_frequency_and_no_root_for_a_cdrom()
    {
        var c = new VmConfig
        {
            Name = "t1", ResolvedAccel = Accel.Tcg, Boot = BootMode.Direct, Kernel = "/k/vmlinuz",
            Disks = [new DiskConfig { Path = "/img/x.iso", CdRom = true, Node = "disk0" }],
        };
        var argv = QemuCommand.Build(c, "/st/t1");
        Assert.Equal($"console=ttyS0 panic=-1 reboot=t tsc_early_khz={QemuCommand.TscKhz()}",
            argv[argv.IndexOf("-append") + 1]);
        Assert.DoesNotContain("-initrd", argv);
        Assert.Equal(["-accel", "tcg", "-cpu", "max"], argv[argv.IndexOf("-accel")..(argv.IndexOf("-accel") + 4)]);
    }

    [Fact]
    public void A_nic_is_a_virtio_net_device_on_its_host_tap()
    {
        var nic = new NicConfig { Tap = "hulltap1", Mac = "00:16:3e:12:34:56", Id = "net0" };
        var direct = QemuCommand.Build(new VmConfig { Name = "n1", Kernel = "/k", Nics = [nic] }, "/st/n1");
        var pci = QemuCommand.Build(new VmConfig { Name = "n2", Boot = BootMode.Bios, Nics = [nic] }, "/st/n2");
        string[] netdev = ["-netdev", "tap,id=net0,ifname=hulltap1,script=no,downscript=no"];
        AssertArgv([.. netdev, "-device", "virtio-net-device,netdev=net0,mac=00:16:3e:12:34:56,id=net0-dev"],
            direct.Skip(direct.IndexOf("-netdev")).ToList());
        AssertArgv([.. netdev, "-device", "virtio-net-pci,netdev=net0,mac=00:16:3e:12:34:56,id=net0-dev"],
            pci.Skip(pci.IndexOf("-netdev")).ToList());
    }
}
