using System.Text.Json.Serialization;

namespace Hull.Api;

/// <summary>Instance types and states as they appear on the wire.</summary>
public static class InstanceTypes
{
    public const string Container = "container", Vm = "vm";
    public static bool IsValid(string t) => t is Container or Vm;
}

/// <summary>
/// Where an instance is in its life. Inside Hull it is this enum; on the wire and in hulld's store it is its
/// <see cref="InstanceStates"/> word (<see cref="Paused"/> is "Frozen" there, as documented).
/// </summary>
public enum InstanceState { Stopped, Starting, Running, Stopping, Paused, Error }

/// <summary>The instance states as they appear on the wire.</summary>
public static class InstanceStates
{
    public const string Stopped = "Stopped", Starting = "Starting", Running = "Running", Stopping = "Stopping",
        Frozen = "Frozen", Error = "Error";

    public static string ToWire(this InstanceState s) => s switch
    {
        InstanceState.Stopped => Stopped,
        InstanceState.Starting => Starting,
        InstanceState.Running => Running,
        InstanceState.Stopping => Stopping,
        InstanceState.Paused => Frozen,
        _ => Error,
    };

    public static InstanceState Parse(string wire) => wire switch
    {
        Stopped => InstanceState.Stopped,
        Starting => InstanceState.Starting,
        Running => InstanceState.Running,
        Stopping => InstanceState.Stopping,
        Frozen => InstanceState.Paused,
        Error => InstanceState.Error,
        _ => throw new ArgumentException($"instance state '{wire}' is unknown: expected one of {Stopped}, " +
            $"{Starting}, {Running}, {Stopping}, {Frozen} or {Error}"),
    };

    /// <summary>Running or paused: the engine holds a live instance.</summary>
    public static bool IsLive(this InstanceState s) => s is InstanceState.Running or InstanceState.Paused;
}

/// <summary>An error reply: the message says what went wrong and what to do.</summary>
public sealed class ErrorResponse
{
    public string Error { get; set; } = "";
    public int ErrorCode { get; set; }
}

/// <summary>GET /1.0: the server.</summary>
public sealed class ServerInfo
{
    public string ApiVersion { get; set; } = "1.0";
    public string Version { get; set; } = "";
    public int Pid { get; set; }
    public string StateDir { get; set; } = "";
    public string Socket { get; set; } = "";
    public List<string> InstanceTypes { get; set; } = [];
    public DateTimeOffset StartedAt { get; set; }
}

/// <summary>An instance (a container or a VM) as stored and reported.</summary>
public sealed class Instance
{
    public string Name { get; set; } = "";
    public string Type { get; set; } = InstanceTypes.Container;
    public string Image { get; set; } = "";
    /// <summary>The fingerprint of the image the instance was made from.</summary>
    public string ImageFingerprint { get; set; } = "";
    public string State { get; set; } = InstanceStates.Stopped;
    public Dictionary<string, string> Config { get; set; } = [];
    public Dictionary<string, Dictionary<string, string>> Devices { get; set; } = [];
    public List<string> Profiles { get; set; } = [];
    public DateTimeOffset CreatedAt { get; set; }
    public DateTimeOffset? LastUsedAt { get; set; }
    /// <summary>Config and devices after merging the profiles in order, then the instance's own.</summary>
    public Dictionary<string, string> ExpandedConfig { get; set; } = [];
    public Dictionary<string, Dictionary<string, string>> ExpandedDevices { get; set; } = [];
    public int? Pid { get; set; }
    /// <summary>The exit code of the instance's main process the last time it ended.</summary>
    public int? LastExitCode { get; set; }
    /// <summary>Why the instance is in the Error state, if it is.</summary>
    public string? StatusMessage { get; set; }
}

/// <summary>POST /1.0/instances.</summary>
public sealed class InstanceCreateRequest
{
    public string Name { get; set; } = "";
    /// <summary>An image alias or fingerprint (or a unique fingerprint prefix). Ignored when <see cref="CopyFrom"/> is
    /// set.</summary>
    public string Image { get; set; } = "";
    public string Type { get; set; } = InstanceTypes.Container;
    public Dictionary<string, string> Config { get; set; } = [];
    public Dictionary<string, Dictionary<string, string>> Devices { get; set; } = [];
    /// <summary>Profiles applied in order; null means ["default"].</summary>
    public List<string>? Profiles { get; set; }
    /// <summary>Start the instance once created (launch).</summary>
    public bool Start { get; set; }
    /// <summary>Copy this existing instance (its root filesystem, config and profiles) instead of using an
    /// image.</summary>
    public string? CopyFrom { get; set; }
}

/// <summary>PUT /1.0/instances/{name}: replaces the instance's own config, devices and profiles.</summary>
public sealed class InstancePut
{
    public Dictionary<string, string> Config { get; set; } = [];
    public Dictionary<string, Dictionary<string, string>> Devices { get; set; } = [];
    public List<string> Profiles { get; set; } = [];
}

/// <summary>POST /1.0/instances/{name}: rename.</summary>
public sealed class InstanceRenameRequest
{
    public string Name { get; set; } = "";
}

/// <summary>PUT /1.0/instances/{name}/state.</summary>
public sealed class InstanceStateRequest
{
    /// <summary>start, stop, restart, pause (alias freeze) or resume (alias unfreeze).</summary>
    public string Action { get; set; } = "";
    public bool Force { get; set; }
    /// <summary>Seconds to wait for a clean stop before killing; -1 waits forever.</summary>
    public int Timeout { get; set; } = 30;
}

/// <summary>GET /1.0/instances/{name}/state: live runtime figures.</summary>
public sealed class InstanceStateInfo
{
    public string State { get; set; } = "";
    public int? Pid { get; set; }
    public int? LastExitCode { get; set; }
    public InstanceStats? Stats { get; set; }
    /// <summary>The addresses of a running instance's NICs: "eth0 inet 10.0.3.2/24 (hullbr0)".</summary>
    public List<string>? Addresses { get; set; }
    /// <summary>Engine facts (a VM: accelerator, accelerator-reason, vcpus, memory, boot); null when the engine gives
    /// none.</summary>
    public Dictionary<string, string>? Details { get; set; }
}

public sealed class InstanceStats
{
    public long CpuUsageNs { get; set; }
    public long MemoryBytes { get; set; }
    public long Pids { get; set; }
    public long IoReadBytes { get; set; }
    public long IoWriteBytes { get; set; }
}

/// <summary>The first message of an exec websocket, or the body of POST /1.0/instances/{name}/exec.</summary>
public sealed class ExecRequest
{
    public List<string> Command { get; set; } = [];
    public Dictionary<string, string> Environment { get; set; } = [];
    public string? Cwd { get; set; }
    /// <summary>A user name or uid (optionally user:group); empty means root.</summary>
    public string? User { get; set; }
    /// <summary>Run on a pty (stdout and stderr merged).</summary>
    public bool Tty { get; set; }
    public int Width { get; set; } = 80;
    public int Height { get; set; } = 24;
    /// <summary>Bytes given to the command's stdin (POST form only).</summary>
    public string? Stdin { get; set; }
}

/// <summary>The reply of POST /1.0/instances/{name}/exec (collected output).</summary>
public sealed class ExecResult
{
    public int ExitCode { get; set; }
    public string Stdout { get; set; } = "";
    public string Stderr { get; set; } = "";
}

/// <summary>A control message on the exec websocket (channel 3) from the client.</summary>
public sealed class ExecControl
{
    /// <summary>resize, signal or close-stdin.</summary>
    public string Command { get; set; } = "";
    public int Width { get; set; }
    public int Height { get; set; }
    public int Signal { get; set; }
}

/// <summary>The last message of an exec websocket (channel 4).</summary>
public sealed class ExecExit
{
    public int ExitCode { get; set; }
    public string? Error { get; set; }
}

/// <summary>Channels of the exec and console websockets: each binary message starts with one of these bytes.</summary>
public static class ExecChannel
{
    public const byte Stdin = 0, Stdout = 1, Stderr = 2, Control = 3, Exit = 4;
}

/// <summary>A file or directory inside an instance (GET files on a directory lists these).</summary>
public sealed class FileEntry
{
    public string Name { get; set; } = "";
    public string Type { get; set; } = "file";
    public long Size { get; set; }
    public int Mode { get; set; }
    public int Uid { get; set; }
    public int Gid { get; set; }
}

public sealed class Snapshot
{
    public string Name { get; set; } = "";
    public string Instance { get; set; } = "";
    public DateTimeOffset CreatedAt { get; set; }
    public Dictionary<string, string> Config { get; set; } = [];
    public Dictionary<string, Dictionary<string, string>> Devices { get; set; } = [];
    public List<string> Profiles { get; set; } = [];
}

public sealed class SnapshotCreateRequest
{
    public string Name { get; set; } = "";
}

public sealed class Profile
{
    public string Name { get; set; } = "";
    public string Description { get; set; } = "";
    public Dictionary<string, string> Config { get; set; } = [];
    public Dictionary<string, Dictionary<string, string>> Devices { get; set; } = [];
    /// <summary>Instances that use this profile.</summary>
    public List<string> UsedBy { get; set; } = [];
}

public sealed class ProfilePut
{
    public string Description { get; set; } = "";
    public Dictionary<string, string> Config { get; set; } = [];
    public Dictionary<string, Dictionary<string, string>> Devices { get; set; } = [];
}

public sealed class ProfileCreateRequest
{
    public string Name { get; set; } = "";
    public string Description { get; set; } = "";
    public Dictionary<string, string> Config { get; set; } = [];
    public Dictionary<string, Dictionary<string, string>> Devices { get; set; } = [];
}

/// <summary>A managed network (Incus's shape): a bridge with its subnet, NAT, DNS and DHCP.</summary>
public sealed class Network
{
    public string Name { get; set; } = "";
    public string Description { get; set; } = "";
    /// <summary>bridge.</summary>
    public string Type { get; set; } = "bridge";
    public bool Managed { get; set; } = true;
    /// <summary>Created (host side up), Errored (see <see cref="StatusMessage"/>).</summary>
    public string Status { get; set; } = "Created";
    public string? StatusMessage { get; set; }
    public Dictionary<string, string> Config { get; set; } = [];
    /// <summary>Instances and profiles with a NIC on this network ("instance c1", "profile default").</summary>
    public List<string> UsedBy { get; set; } = [];
}

public sealed class NetworkPut
{
    public string Description { get; set; } = "";
    public Dictionary<string, string> Config { get; set; } = [];
}

public sealed class NetworkCreateRequest
{
    public string Name { get; set; } = "";
    public string Description { get; set; } = "";
    /// <summary>bridge (the only type).</summary>
    public string Type { get; set; } = "bridge";
    public Dictionary<string, string> Config { get; set; } = [];
}

/// <summary>An address an instance holds on a network: static (set by ipv4.address on the NIC), allocated (by hulld)
/// or dynamic (a DHCP lease of dnsmasq).</summary>
public sealed class NetworkLease
{
    public string Hostname { get; set; } = "";
    public string Hwaddr { get; set; } = "";
    public string Address { get; set; } = "";
    public string Type { get; set; } = "";
}

/// <summary>The bridge as the kernel shows it.</summary>
public sealed class NetworkState
{
    /// <summary>up or down.</summary>
    public string State { get; set; } = "";
    public string Hwaddr { get; set; } = "";
    public int Mtu { get; set; }
    public string Type { get; set; } = "broadcast";
    public List<NetworkStateAddress> Addresses { get; set; } = [];
    public NetworkCounters Counters { get; set; } = new();
    /// <summary>The host interfaces attached to the bridge (instances' veths).</summary>
    public List<string> UpperDevices { get; set; } = [];
    /// <summary>The DNS and DHCP server of the network (dnsmasq), if it runs.</summary>
    public int? DnsmasqPid { get; set; }
}

public sealed class NetworkStateAddress
{
    /// <summary>inet or inet6.</summary>
    public string Family { get; set; } = "";
    public string Address { get; set; } = "";
    public string Netmask { get; set; } = "";
    public string Scope { get; set; } = "global";
}

public sealed class NetworkCounters
{
    public long BytesReceived { get; set; }
    public long BytesSent { get; set; }
    public long PacketsReceived { get; set; }
    public long PacketsSent { get; set; }
}

public sealed class Image
{
    public string Fingerprint { get; set; } = "";
    /// <summary>container (a rootfs tarball) or vm (a disk image).</summary>
    public string Type { get; set; } = InstanceTypes.Container;
    public long Size { get; set; }
    public DateTimeOffset CreatedAt { get; set; }
    public string Description { get; set; } = "";
    public List<string> Aliases { get; set; } = [];
    /// <summary>True for a built-in image made on this host on first use (busybox).</summary>
    public bool Builtin { get; set; }
    /// <summary>What the image's metadata file (an Incus/LXD unified image's metadata.yaml) says of it: os, release,
    /// description...; empty for an image without one.</summary>
    public Dictionary<string, string> Properties { get; set; } = [];
    /// <summary>How the image's author meant it to run (the OCI image config of a pulled or OCI-layout image); null
    /// for a rootfs tarball.</summary>
    public ImageRunConfig? Config { get; set; }
}

/// <summary>
/// The run settings of an OCI image config ("config" in the image spec): a container made from the image runs
/// Entrypoint + Cmd with Env, in WorkingDir, as User, and stops with StopSignal. A launch copies them into the
/// instance's own config (oci.entrypoint, app.command, environment.*, oci.cwd, oci.user, oci.stopsignal).
/// </summary>
public sealed class ImageRunConfig
{
    public List<string>? Entrypoint { get; set; }
    public List<string>? Cmd { get; set; }
    public List<string>? Env { get; set; }
    public string? WorkingDir { get; set; }
    public string? User { get; set; }
    public string? StopSignal { get; set; }
    /// <summary>The ports the image says it listens on, as "80/tcp".</summary>
    public List<string>? ExposedPorts { get; set; }
}

public sealed class ImageAlias
{
    public string Name { get; set; } = "";
    public string Target { get; set; } = "";
}

/// <summary>A long-running task (launch, start, stop, delete, snapshot...).</summary>
public sealed class Operation
{
    public string Id { get; set; } = "";
    public string Description { get; set; } = "";
    /// <summary>Pending, Running, Success, Failure or Cancelled.</summary>
    public string Status { get; set; } = "Pending";
    public DateTimeOffset CreatedAt { get; set; }
    public DateTimeOffset UpdatedAt { get; set; }
    public List<string> Resources { get; set; } = [];
    public bool MayCancel { get; set; }
    /// <summary>A human-readable progress line ("unpacking 40%") while it runs.</summary>
    public string? Progress { get; set; }
    public string? Error { get; set; }
    public int? ErrorCode { get; set; }
    /// <summary>Results of a finished operation (e.g. "fingerprint" of an imported image).</summary>
    public Dictionary<string, string>? Metadata { get; set; }
}

public static class OperationStatus
{
    public const string Pending = "Pending", Running = "Running", Success = "Success", Failure = "Failure",
        Cancelled = "Cancelled";
    public static bool IsFinal(string s) => s is Success or Failure or Cancelled;
}

/// <summary>One line of the events stream.</summary>
public sealed class Event
{
    /// <summary>lifecycle, operation or logging.</summary>
    public string Type { get; set; } = "";
    public DateTimeOffset Timestamp { get; set; }
    /// <summary>lifecycle: instance-created, instance-started, instance-stopped, ... </summary>
    public string? Action { get; set; }
    public string? Instance { get; set; }
    public Operation? Operation { get; set; }
    public string? Level { get; set; }
    public string? Message { get; set; }
}

/// <summary>
/// The index of an instance backup (GET /1.0/instances/{name}/backup): the first member, backup.json, of the tarball;
/// the instance's directory follows under instance/. Import (POST /1.0/instances/backup) reads it back.
/// </summary>
public sealed class InstanceBackup
{
    /// <summary>The format version; an importer refuses versions it does not know.</summary>
    public int Version { get; set; } = 1;
    public string Name { get; set; } = "";
    public string Type { get; set; } = InstanceTypes.Container;
    /// <summary>The image as the user named it, and its fingerprint: the importing host must hold that image (copy it
    /// first).</summary>
    public string Image { get; set; } = "";
    public string ImageFingerprint { get; set; } = "";
    public Dictionary<string, string> Config { get; set; } = [];
    public Dictionary<string, Dictionary<string, string>> Devices { get; set; } = [];
    public List<string> Profiles { get; set; } = [];
    public DateTimeOffset CreatedAt { get; set; }
    public List<Snapshot> Snapshots { get; set; } = [];
    /// <summary>The host the backup was made on (informational).</summary>
    public string SourceHost { get; set; } = "";
}

/// <summary>POST /1.0/instances/{name}/migration/incoming (on the target): make the instance and wait for its
/// state.</summary>
public sealed class MigrationIncomingRequest
{
    /// <summary>The instance as the source has it (no data: the state and disks come over the migration
    /// stream).</summary>
    public InstanceBackup Instance { get; set; } = new();
    /// <summary>The address of this (the target) host that the source host can reach; the target listens
    /// there.</summary>
    public string ListenAddress { get; set; } = "127.0.0.1";
}

/// <summary>The target's answer: where the source sends the state.</summary>
public sealed class MigrationTarget
{
    public string Uri { get; set; } = "";
}

/// <summary>POST /1.0/instances/{name}/migration/send (on the source).</summary>
public sealed class MigrationSendRequest
{
    public string Uri { get; set; } = "";
}

/// <summary>POST /1.0/instances/{name}/migration/finish (on the target), once the source's send ended.</summary>
public sealed class MigrationFinishRequest
{
    /// <summary>True: the source completed; the target's instance takes over. False: the target's copy is
    /// removed.</summary>
    public bool Succeeded { get; set; }
}
