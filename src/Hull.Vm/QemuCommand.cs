using System.Globalization;

namespace Hull.Vm;

/// <summary>Names of the files in a VM's state dir.</summary>
public static class StateFiles
{
    public const string Config = "config.json", Record = "state.json", Qmp = "qmp.sock", Agent = "agent.sock",
        Console = "console.sock", ConsoleLog = "console.log", Pid = "qemu.pid", QemuLog = "qemu.log",
        OvmfVars = "ovmf-vars.fd",
        Lock = "lock";
}

/// <summary>The virtio-serial port name of the guest agent channel.</summary>
public static class AgentChannel
{
    public const string PortName = "org.hull.agent.0";
    /// <summary>QEMU's id of the port device (VSERPORT_CHANGE events name it).</summary>
    public const string DeviceId = "agent0-port";
    /// <summary>Where the guest sees it (Hull's /init makes this link; udev does on other distributions).</summary>
    public const string GuestDevice = "/dev/virtio-ports/" + PortName;
}

/// <summary>Composes QEMU's command line from a <see cref="VmConfig"/>.</summary>
public static class QemuCommand
{
    public const string DefaultSeaBios = "/usr/share/seabios/bios-256k.bin";
    public static readonly string[] OvmfCodeCandidates =
        ["/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd"];

    /// <summary>TSC frequency passed to a TCG microvm guest (it hangs calibrating otherwise).</summary>
    public static long TscKhz()
    {
        try
        {
            foreach (var l in File.ReadLines("/proc/cpuinfo"))
                if (l.StartsWith("cpu MHz", StringComparison.Ordinal))
                    return (long)(double.Parse(l.Split(':')[1].Trim(), CultureInfo.InvariantCulture) * 1000);
        }
        catch (IOException) { }
        return 2_000_000;
    }

    public static string Escape(string v) => v.Replace(",", ",,", StringComparison.Ordinal);

    /// <summary>The full argv (without the binary) for a VM whose state dir is <paramref name="dir"/>.</summary>
    public static List<string> Build(VmConfig c, string dir)
    {
        string P(string f) => Escape(Path.Combine(dir, f));
        var a = new List<string> { "-name", $"{Escape(c.Name)},debug-threads=on", "-nodefaults", "-no-user-config" };
        // Firmware prints to the serial port only without a display (-nographic makes QEMU tell SeaBIOS to use it).
        a.AddRange(c.Boot == BootMode.Direct ? ["-display", "none"] : ["-nographic"]);
        var kvm = c.ResolvedAccel == Accel.Kvm;
        a.AddRange(["-accel", kvm ? "kvm" : "tcg", "-cpu", kvm ? AccelProbe.KvmCpu : "max"]);
        var direct = c.Boot == BootMode.Direct;
        a.AddRange(["-M", direct ? "microvm,acpi=on" : "q35"]);
        a.AddRange(["-m", $"{c.MemoryMiB}M", "-smp", c.Cpus.ToString(CultureInfo.InvariantCulture)]);
        a.AddRange(["-pidfile", P(StateFiles.Pid)]);
        a.AddRange(["-chardev", $"socket,id=qmp,path={P(StateFiles.Qmp)},server=on,wait=off", "-mon",
            "chardev=qmp,mode=control"]);
        // Serial console: a socket for interactive attach, and every byte logged.
        a.AddRange(["-chardev",
            $"socket,id=con0,path={P(StateFiles.Console)},server=on,wait=off," +
            $"logfile={P(StateFiles.ConsoleLog)},logappend=on",
            "-serial", "chardev:con0"]);
        // Panic: the guest's pvpanic driver tells QEMU, which pauses the guest; Hull reports Crashed.
        a.AddRange(["-device", "pvpanic", "-action", "panic=pause", "-action", "shutdown=poweroff"]);
        // Agent channel: a virtio-serial port backed by a host unix socket.
        a.AddRange(["-device", direct ? "virtio-serial-device,id=vser0" : "virtio-serial-pci,id=vser0",
            "-chardev", $"socket,id=agent0,path={P(StateFiles.Agent)},server=on,wait=off",
            "-device",
                $"virtserialport,bus=vser0.0,chardev=agent0,name={AgentChannel.PortName},id={AgentChannel.DeviceId}"]);
        a.AddRange(["-device", direct ? "virtio-rng-device" : "virtio-rng-pci"]);
        if (direct)
        {
            a.AddRange(["-kernel", c.Kernel!]);
            if (c.Initrd is not null) a.AddRange(["-initrd", c.Initrd]);
            a.AddRange(["-append", KernelCmdline(c)]);
        }
        else if (c.Boot == BootMode.Bios)
        {
            a.AddRange(["-bios", c.Firmware ?? DefaultSeaBios]);
        }
        else
        {
            a.AddRange(["-drive", $"if=pflash,format=raw,unit=0,readonly=on,file={Escape(c.Firmware!)}",
                "-drive", $"if=pflash,format=raw,unit=1,file={P(StateFiles.OvmfVars)}"]);
        }
        foreach (var d in c.Disks)
        {
            var ro = d.ReadOnly || d.CdRom ? "on" : "off";
            // A named BlockBackend ({node}-blk) whose format node is {node}: migration of storage needs the name.
            a.AddRange(["-drive",
                $"if=none,id={d.Node}-blk,node-name={d.Node},file={Escape(d.Path)}," +
                $"format={(d.Format == DiskFormat.Qcow2 && !d.CdRom ? "qcow2" : "raw")},readonly={ro}," +
                $"discard=unmap{(d.CdRom ? ",media=cdrom" : "")}"]);
            if (d.CdRom) a.AddRange(["-device",
                $"ide-cd,drive={d.Node}-blk,id={d.Node}-dev,bus=ide.{c.Disks.IndexOf(d)}"]);
            else a.AddRange(["-device",
                $"{(direct ? "virtio-blk-device" : "virtio-blk-pci")},drive={d.Node}-blk,id={d.Node}-dev"]);
        }
        foreach (var n in c.Nics)
            a.AddRange(["-netdev", $"tap,id={n.Id},ifname={Escape(n.Tap)},script=no,downscript=no", "-device",
                $"{(direct ? "virtio-net-device" : "virtio-net-pci")},netdev={n.Id},mac={n.Mac},id={n.Id}-dev"]);
        if (c.Incoming is not null) a.AddRange(["-incoming", c.Incoming]);
        a.AddRange(c.ExtraArgs);
        return a;
    }

    public static string KernelCmdline(VmConfig c)
    {
        var parts = new List<string> { "console=ttyS0", "panic=-1", "reboot=t" };
        if (c.ResolvedAccel == Accel.Tcg) parts.Add($"tsc_early_khz={TscKhz()}");
        if (!string.IsNullOrEmpty(c.Hostname)) parts.Add($"hull.hostname={c.Hostname}");
        if (c.Disks.Count > 0 && !c.Disks[0].CdRom) parts.Add("hull.root=/dev/vda");
        if (!string.IsNullOrWhiteSpace(c.Cmdline)) parts.Add(c.Cmdline.Trim());
        return string.Join(' ', parts);
    }
}
