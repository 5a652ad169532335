using System.Text.Json.Serialization;

namespace Hull.Vm;

/// <summary>How the guest's CPU runs: hardware KVM, QEMU's TCG emulator, or chosen by a probe.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<Accel>))]
public enum Accel { Auto, Kvm, Tcg }

/// <summary>How the VM boots.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<BootMode>))]
public enum BootMode
{
    /// <summary>Linux direct boot (kernel, initrd, cmdline) on a microvm machine: the fast path.</summary>
    Direct,
    /// <summary>Firmware boot (SeaBIOS) of a disk image or ISO on a q35 machine.</summary>
    Bios,
    /// <summary>UEFI firmware boot (OVMF) on a q35 machine.</summary>
    Uefi,
}

[JsonConverter(typeof(JsonStringEnumConverter<DiskFormat>))]
public enum DiskFormat { Qcow2, Raw }

/// <summary>What happens when the guest kernel panics (pvpanic).</summary>
[JsonConverter(typeof(JsonStringEnumConverter<PanicPolicy>))]
public enum PanicPolicy
{
    /// <summary>QEMU stays, the guest paused for inspection; the VM reports Crashed until stopped.</summary>
    Keep,
    /// <summary>QEMU is ended; the VM reports Crashed.</summary>
    Stop,
}

/// <summary>A disk attached to the VM.</summary>
public sealed class DiskConfig
{
    /// <summary>The image file QEMU opens (inside the state dir for overlays).</summary>
    public string Path { get; set; } = "";
    public DiskFormat Format { get; set; } = DiskFormat.Qcow2;
    public bool ReadOnly { get; set; }
    /// <summary>For an overlay Hull created: its backing image (read-only, shared).</summary>
    public string? Base { get; set; }
    /// <summary>True when Hull made this file (it is deleted with the VM).</summary>
    public bool Owned { get; set; }
    /// <summary>A CD-ROM (ISO) instead of a disk: firmware boots only.</summary>
    public bool CdRom { get; set; }
    /// <summary>QEMU node name (disk0, disk1...).</summary>
    public string Node { get; set; } = "";
}

/// <summary>A network card: a virtio-net device on a host tap device that someone else (hulld's network code) made
/// and attached to a bridge; QEMU opens it by name. The guest sees it with this MAC.</summary>
public sealed class NicConfig
{
    /// <summary>The host tap device's name.</summary>
    public string Tap { get; set; } = "";
    /// <summary>The guest's MAC address, 00:16:3e:xx:xx:xx style (lowercase hex, colons).</summary>
    public string Mac { get; set; } = "";
    /// <summary>QEMU id (net0, net1...).</summary>
    public string Id { get; set; } = "";
}

/// <summary>A VM's definition, stored as config.json in its state dir.</summary>
public sealed class VmConfig
{
    public string Name { get; set; } = "vm";
    public int MemoryMiB { get; set; } = 256;
    public int Cpus { get; set; } = 1;
    public Accel Accel { get; set; } = Accel.Auto;
    /// <summary>The accelerator actually used (filled at create when <see cref="Accel"/> is Auto).</summary>
    public Accel ResolvedAccel { get; set; }
    /// <summary>Why the probe chose what it chose (shown to the user).</summary>
    public string? AccelReason { get; set; }
    public BootMode Boot { get; set; } = BootMode.Direct;
    public string? Kernel { get; set; }
    public string? Initrd { get; set; }
    public string? Cmdline { get; set; }
    /// <summary>SeaBIOS image or OVMF code image (defaults to the distribution's).</summary>
    public string? Firmware { get; set; }
    /// <summary>OVMF variable store template (copied into the state dir).</summary>
    public string? FirmwareVars { get; set; }
    public List<DiskConfig> Disks { get; set; } = [];
    public List<NicConfig> Nics { get; set; } = [];
    /// <summary>Guest host name, passed on the kernel command line (hull.hostname=) for Hull's init.</summary>
    public string? Hostname { get; set; }
    public PanicPolicy OnPanic { get; set; } = PanicPolicy.Keep;
    /// <summary>Seconds the guest gets to power off after the ACPI button before QEMU is ended.</summary>
    public int StopTimeoutSeconds { get; set; } = 30;
    /// <summary>Bytes of console.log kept before it is rotated to console.log.1.</summary>
    public long ConsoleLogLimit { get; set; } = 4 << 20;
    /// <summary>Extra raw QEMU arguments (expert use).</summary>
    public List<string> ExtraArgs { get; set; } = [];
    /// <summary>Set on a migration destination: the QEMU -incoming URI.</summary>
    public string? Incoming { get; set; }
    /// <summary>Path of qemu-system-x86_64 (found on PATH when empty).</summary>
    public string? QemuBinary { get; set; }
}

/// <summary>Where a VM is in its life.</summary>
public enum VmState
{
    /// <summary>Defined (state dir and config exist), QEMU not running.</summary>
    Stopped,
    Running,
    Paused,
    /// <summary>The guest kernel panicked (pvpanic), or QEMU died on its own.</summary>
    Crashed,
    /// <summary>QEMU runs and waits for an incoming migration.</summary>
    Incoming,
    /// <summary>Another transient QEMU state (migrating, saving, restoring...).</summary>
    Busy,
}

/// <summary>What a <see cref="VmRecord"/> says of QEMU (in state.json as the lower-case word).</summary>
[JsonConverter(typeof(JsonStringEnumConverter<VmRecordState>))]
public enum VmRecordState
{
    [JsonStringEnumMemberName("stopped")] Stopped,
    [JsonStringEnumMemberName("running")] Running,
    [JsonStringEnumMemberName("paused")] Paused,
    [JsonStringEnumMemberName("crashed")] Crashed,
    [JsonStringEnumMemberName("migrated")] Migrated,
}

/// <summary>What is recorded in state.json when QEMU is not (or no longer) running.</summary>
public sealed class VmRecord
{
    public VmRecordState State { get; set; } = VmRecordState.Stopped;
    public string? Reason { get; set; }
    public DateTimeOffset When { get; set; }
}

/// <summary>A snapshot as listed by <see cref="Vm.ListSnapshotsAsync"/>.</summary>
public sealed record VmSnapshot(string Name, SnapshotKind Kind, long VmStateBytes, DateTimeOffset Created);

public enum SnapshotKind { Disk, Full }

/// <summary>The result of a live migration.</summary>
/// <summary>What one side of a live migration measured: QEMU's total time, the guest's downtime, bytes sent (RAM +
/// disks).</summary>
public sealed record VmMigrationStats(TimeSpan Total, TimeSpan Downtime, long TransferredBytes);

public sealed record MigrationResult(TimeSpan Total, TimeSpan Downtime, long TransferredBytes, Vm Destination);

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(VmConfig))]
[JsonSerializable(typeof(VmRecord))]
[JsonSerializable(typeof(AccelVerdict))]
internal sealed partial class VmJson : JsonSerializerContext;
