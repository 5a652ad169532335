using System.Net;
using System.Net.Sockets;
using Hull.Vm;

namespace Hull.Instances.Vms;

/// <summary>
/// Moving VMs between hullds. Live (running VMs): the target's instance is made over the same image and its QEMU
/// started with -incoming on a TCP port of the address the caller names; the source's QEMU sends memory, device state
/// and the root overlay's blocks (pre-copy, incremental over the shared base) straight to it, then ends. Cold (stopped
/// VMs): the instance dir travels as a backup; on import the overlay is re-pointed at this host's copy of the base.
/// </summary>
public sealed partial class VmDriver
{
    public bool CanMigrateLive => true;

    public async Task<string> PrepareIncomingAsync(InstanceSpec spec, IReadOnlyList<DeviceRunConfig> devices,
        string listenAddress, CancellationToken ct)
    {
        if (!IPAddress.TryParse(listenAddress, out var ip))
            throw new InstanceException($"migration address '{listenAddress}' is not an IP address: give this host's " +
                "address as the source host reaches it");
        if (devices.Any(d => d.Mounts.Count > 0))
            throw new InstanceException($"VM '{spec.Name}' has a bind device: sharing host directories with a VM is " +
                "not supported: remove it first");
        await Lock(spec).WaitAsync(ct);
        try
        {
            var vm = await VmAsync(spec, ct);
            vm = await RedefineAsync(spec, vm, devices, ct);
            await DropAgentAsync(spec.Name);
            MakeTaps(devices);
            // A free port now; QEMU binds it a moment later (another process taking it in between fails the start
            // clearly).
            int port;
            using (var probe = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp))
            {
                try { probe.Bind(new IPEndPoint(ip, 0)); }
                catch (SocketException e) { throw new InstanceException(
                    $"cannot listen on {ip} for the migration ({e.Message}): give an address of this host", 400); }
                port = ((IPEndPoint)probe.LocalEndPoint!).Port;
            }
            var host = ip.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{ip}]" : ip.ToString();
            var uri = $"tcp:{host}:{port}";
            try { await vm.StartIncomingAsync(uri, blockMigration: true, ct); }
            catch (VmException e) { throw Fail($"starting VM '{spec.Name}' to receive a migration", e); }
            return uri;
        }
        finally { Lock(spec).Release(); }
    }

    public async Task<MigrationStats> MigrateOutAsync(InstanceSpec spec, string uri, CancellationToken ct)
    {
        await Lock(spec).WaitAsync(ct);
        try
        {
            var vm = await VmAsync(spec, ct);
            var external = vm.Config.Disks.Where(d => !d.ReadOnly && !d.CdRom && !d.Owned).Select(d => d.Path).ToList();
            if (external.Count > 0)
                throw new InstanceException($"VM '{spec.Name}' writes to disks on this host's storage " +
                    $"({string.Join(", ", external)}): a live move carries only its own disks; stop it, or remove " +
                    "those disk devices", 409);
            VmMigrationStats s;
            try { s = await vm.SendMigrationAsync(uri, blockMigration: true, ct: ct); }
            catch (VmException e) { throw Fail($"migrating VM '{spec.Name}' (it keeps running here)", e); }
            await ForgetAsync(spec);
            return new MigrationStats(s.Total, s.Downtime, s.TransferredBytes);
        }
        finally { Lock(spec).Release(); }
    }

    public async Task CompleteIncomingAsync(InstanceSpec spec, CancellationToken ct)
    {
        var vm = await VmAsync(spec, ct);
        try { await vm.FinishIncomingAsync(ct); }
        catch (VmException e) { throw Fail($"VM '{spec.Name}' after the migration", e); }
    }

    // ---- backups (cold move of a stopped VM) ----

    public IReadOnlyList<string>? ExportExcludes(InstanceSpec spec) =>
        ["vm/" + StateFiles.Qmp, "vm/" + StateFiles.Agent, "vm/" + StateFiles.Console, "vm/" + StateFiles.Pid];

    public async Task ImportAsync(InstanceSpec spec, CancellationToken ct)
    {
        var dir = VmDir(spec);
        if (!File.Exists(Path.Combine(dir, StateFiles.Config)))
            throw new InstanceException($"the backup of '{spec.Name}' has no VM definition (vm/{StateFiles.Config}): " +
                "it was not made by a VM export", 400);
        if (spec.Image.File.Length == 0 || !File.Exists(spec.Image.File))
            throw new InstanceException(
                $"image {spec.Image.Fingerprint[..Math.Min(12, spec.Image.Fingerprint.Length)]} of '{spec.Name}' is " +
                "not on this host: copy the image here first (hull image export/import)", 409);
        IVm old;
        try { old = await _engine.AttachAsync(dir, ct); }
        catch (VmException e) { throw new InstanceException(
            $"the VM definition in the backup of '{spec.Name}' cannot be read: {e.Message}", 400); }
        var sc = old.Config;
        await old.DisposeAsync();
        if (sc.Disks.Count == 0 || !sc.Disks[0].Owned) throw new InstanceException(
            $"the backup of '{spec.Name}' has no root disk of its own", 400);
        var disk0 = Path.Combine(dir, Path.GetFileName(sc.Disks[0].Path));
        if (!File.Exists(disk0)) throw new InstanceException(
            $"the backup of '{spec.Name}' lacks its root disk ({Path.GetFileName(disk0)})", 400);
        if (ExternalDataFile(disk0))
            throw new InstanceException($"the root disk {Path.GetFileName(disk0)} in the backup of '{spec.Name}' " +
                "keeps its data in an external file (a host path): refused; a Hull VM disk never does", 400);
        var layout = await VmImages.ResolveAsync(spec.Image.File, ct);
        // The overlay names the source host's base: point it at this host's copy of the same image (same content,
        // so an unsafe rebase that only rewrites the backing file name is exact).
        await VmImages.RunAsync("qemu-img", ["rebase", "-u", "-f", "qcow2", "-F", BaseFormat(layout.RootDisk), "-b",
            layout.RootDisk, disk0], ct);
        var c = new VmConfig
        {
            Name = spec.Name, Boot = layout.Direct ? BootMode.Direct : sc.Boot == BootMode.Uefi ? BootMode.Uefi
                : BootMode.Bios,
            Kernel = layout.Kernel, Initrd = layout.Initrd, Cmdline = layout.Cmdline,
            MemoryMiB = MemoryMiB(spec), Cpus = spec.Limits.Cpus ?? 1, Hostname = Hostname(spec.Name),
            OnPanic = PanicPolicy.Stop,
            Disks = [new DiskConfig { Path = disk0, Base = layout.RootDisk, Format = DiskFormat.Qcow2, Owned = true },
                .. DeviceDisks(SpecDisks(spec))],
        };
        File.Delete(Path.Combine(dir, StateFiles.Config));
        try { _vms[spec.Name] = await _engine.CreateAsync(dir, c, ct); }
        catch (VmException e) { throw new InstanceException(
            $"the imported VM '{spec.Name}' cannot be defined here: {e.Message}"); }
    }

    /// <summary>True for a qcow2 image whose header sets the "external data file" incompatible feature (bit 2): its
    /// data would be read and written at a path the image names, on the host. Checked before qemu-img opens
    /// it.</summary>
    static bool ExternalDataFile(string path)
    {
        Span<byte> h = stackalloc byte[80];
        using var f = new FileStream(path, new FileStreamOptions { Mode = FileMode.Open, Access = FileAccess.Read,
            Options = FileOptions.None });
        if (f.ReadAtLeast(h, h.Length, throwOnEndOfStream: false) < h.Length) return false;
        if (!h[..4].SequenceEqual((ReadOnlySpan<byte>)[0x51, 0x46, 0x49, 0xfb])) return false;
        var version = System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(h[4..]);
        return version >= 3 && (System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(h[72..]) & 0x4) != 0;
    }

    static string BaseFormat(string path)
    {
        Span<byte> magic = stackalloc byte[4];
        using var f = File.OpenRead(path);
        return f.Read(magic) == 4 && magic.SequenceEqual((ReadOnlySpan<byte>)[0x51, 0x46, 0x49, 0xfb]) ? "qcow2"
            : "raw";
    }
}
