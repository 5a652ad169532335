namespace Hull.Instances;

/// <summary>
/// A device of an instance. Each type is a small class with one lifecycle: validate its config, add (when it joins
/// an instance), start (yields what the engine must set up), stop, remove (when it leaves or the instance is deleted).
/// </summary>
public interface IDevice
{
    string Name { get; }
    string Type { get; }
    IReadOnlyDictionary<string, string> Config { get; }
    /// <summary>Throws <see cref="InstanceException"/> naming the device, the key and the valid values.</summary>
    void Validate();
    /// <summary>Called once when the device is added to an instance (the instance may be running).</summary>
    void Add(string instanceDir);
    /// <summary>Called before the instance starts: prepares host-side resources and says what the engine must
    /// do.</summary>
    DeviceRunConfig Start(string instanceDir);
    /// <summary>Called after the instance stopped: releases what <see cref="Start"/> made.</summary>
    void Stop(string instanceDir);
    /// <summary>Called when the device leaves the instance or the instance is deleted.</summary>
    void Remove(string instanceDir);
}

/// <summary>What the engine must do for a started device.</summary>
public sealed class DeviceRunConfig
{
    public required string Device { get; init; }
    public List<MountSpec> Mounts { get; } = [];
    public List<DiskSpec> Disks { get; } = [];
    /// <summary>A network interface (nic devices; hulld fills it in from the network).</summary>
    public NicSpec? Nic { get; set; }
}

/// <summary>
/// A NIC as the engine makes it: for a container, a veth pair whose end <see cref="Name"/> is made directly in the
/// container's network namespace before the container's process starts (with its MAC, addresses and default routes)
/// and whose host end <see cref="HostName"/> joins the bridge, up. A <see cref="Routed"/> NIC joins no bridge: the
/// host routes the instance's address (a /32) to the host end, and the instance reaches the gateway on-link through
/// it (the host answers ARP for its own addresses on any interface).
/// </summary>
public sealed class NicSpec
{
    public string Name { get; set; } = "eth0";
    public string HostName { get; set; } = "";
    /// <summary>The bridge the host end joins; empty for a routed NIC.</summary>
    public string Bridge { get; set; } = "";
    public bool Routed { get; set; }
    public string HwAddr { get; set; } = "";
    public int Mtu { get; set; }
    /// <summary>The instance's IPv4 address with the subnet's prefix ("10.0.3.17/24"); null: none.</summary>
    public string? Ipv4 { get; set; }
    public string? Gateway4 { get; set; }
    public string? Ipv6 { get; set; }
    public string? Gateway6 { get; set; }
}

/// <summary>A host path to bind into the instance (containers: a bind mount; VMs: a shared directory).</summary>
public sealed record MountSpec(string Source, string Target, bool ReadOnly, bool IsFile);

/// <summary>A disk: the root disk (Target "/") with an optional size, or an extra block device or image file.</summary>
public sealed record DiskSpec(string? Source, string Target, long? SizeBytes, bool ReadOnly);

/// <summary>Makes device objects from config and validates their keys.</summary>
public static class DeviceFactory
{
    public static readonly string[] Types = ["disk", "bind", "nic", "proxy"];

    /// <summary>Makes a device; with <paramref name="validate"/> (the default) checks its config, including host paths.
    /// Without it (an existing instance being stopped or deleted) only the type must be known.</summary>
    public static IDevice Create(string name, IReadOnlyDictionary<string, string> config, bool validate = true)
    {
        if (!ConfigSchema.IsValidName(name, 64))
            throw new InstanceException($"device name '{name}' is invalid: use 1-64 letters, digits, '-', '_' or " +
                "'.', starting with a letter or digit");
        if (!config.TryGetValue("type", out var type) || string.IsNullOrEmpty(type))
            throw new InstanceException($"device '{name}': the key 'type' is missing: set type to one of " +
                $"{string.Join(", ", Types)}");
        IDevice d = type switch
        {
            "disk" => new DiskDevice(name, config),
            "bind" => new BindDevice(name, config),
            "nic" => new NicDevice(name, config),
            "proxy" => new ProxyDevice(name, config),
            _ => throw new InstanceException($"device '{name}': type '{type}' is unknown: valid types are " +
                $"{string.Join(", ", Types)}"),
        };
        if (validate) d.Validate();
        return d;
    }

    /// <summary>Limits of the devices of an instance or profile: how many, and the length of each value.</summary>
    public const int MaxDevices = 64, MaxValueLength = 4096;

    public static List<IDevice> CreateAll(IReadOnlyDictionary<string, Dictionary<string, string>> devices,
        bool validate = true)
    {
        if (validate) CheckLimits(devices);
        var list = devices.OrderBy(d => d.Key, StringComparer.Ordinal).Select(d =>
            Create(d.Key, d.Value, validate)).ToList();
        var nicNames = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var n in list.OfType<NicDevice>())
        {
            if (nicNames.TryGetValue(n.InterfaceName, out var other))
                throw new InstanceException($"nic devices '{other}' and '{n.Name}' both name their interface " +
                    $"{n.InterfaceName}: give each its own 'name'");
            nicNames[n.InterfaceName] = n.Name;
        }
        var targets = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var d in list)
        {
            var path = d.Config.TryGetValue("path", out var p) ? NormalizeTarget(p) : null;
            if (path is null) continue;
            if (targets.TryGetValue(path, out var other))
                throw new InstanceException($"devices '{other}' and '{d.Name}' both use path {path}: give each " +
                    "device its own path");
            targets[path] = d.Name;
        }
        return list;
    }

    static void CheckLimits(IReadOnlyDictionary<string, Dictionary<string, string>> devices)
    {
        if (devices.Count > MaxDevices)
            throw new InstanceException(
                $"{devices.Count} devices are more than the limit of {MaxDevices}: use fewer devices");
        foreach (var (name, config) in devices)
            foreach (var (k, v) in config)
            {
                if (v.Length > MaxValueLength)
                    throw new InstanceException($"device '{name}': the value of '{k}' is {v.Length} characters long: " +
                        $"values are at most {MaxValueLength}");
                if (v.Contains('\0'))
                    throw new InstanceException($"device '{name}': the value of '{k}' must not contain NUL bytes");
            }
    }

    internal static string NormalizeTarget(string p) => p.Length > 1 ? p.TrimEnd('/') : p;

    internal static void CheckKeys(string device, IReadOnlyDictionary<string, string> config, string[] allowed)
    {
        foreach (var k in config.Keys)
            if (Array.IndexOf(allowed, k) < 0)
                throw new InstanceException($"device '{device}': unknown key '{k}': valid keys for this device type " +
                    $"are {string.Join(", ", allowed)}");
    }

    internal static bool Bool(string device, IReadOnlyDictionary<string, string> config, string key)
    {
        if (!config.TryGetValue(key, out var v) || v.Length == 0) return false;
        return ConfigSchema.TryParseBool(v, out var b) ? b
            : throw new InstanceException($"device '{device}': {key}='{v}' is invalid: use true or false");
    }

    internal static string AbsolutePath(string device, IReadOnlyDictionary<string, string> config, string key)
    {
        if (!config.TryGetValue(key, out var v) || v.Length == 0)
            throw new InstanceException($"device '{device}': the key '{key}' is missing: set it to an absolute path");
        if (v[0] != '/' || v.Contains('\0') || v.Split('/').Any(s => s == ".."))
            throw new InstanceException($"device '{device}': {key}='{v}' is invalid: use an absolute path without " +
                "'..'");
        return v;
    }
}

/// <summary>A disk: the root disk (path=/, optional size) or a host block device / image file (source) at a
/// path.</summary>
public sealed class DiskDevice(string name, IReadOnlyDictionary<string, string> config) : IDevice
{
    static readonly string[] Keys = ["type", "path", "source", "size", "readonly"];
    public string Name { get; } = name;
    public string Type => "disk";
    public IReadOnlyDictionary<string, string> Config { get; } = config;

    public void Validate()
    {
        DeviceFactory.CheckKeys(Name, Config, Keys);
        var path = DeviceFactory.AbsolutePath(Name, Config, "path");
        if (Config.TryGetValue("size", out var size) && size.Length > 0)
        {
            if (!ConfigSchema.TryParseSize(size, out var bytes) || bytes < 1 << 20)
                throw new InstanceException($"device '{Name}': size='{size}' is invalid: use a size of at least 1MiB " +
                    "such as 512MiB or 10GiB");
        }
        if (path != "/" && !Config.ContainsKey("source"))
            throw new InstanceException($"device '{Name}': a disk at {path} needs 'source' (a host block device or " +
                "image file); for a host directory use a bind device");
        if (Config.TryGetValue("source", out var src))
        {
            DeviceFactory.AbsolutePath(Name, Config, "source");
            if (!File.Exists(src)) throw new InstanceException(
                $"device '{Name}': source {src} does not exist on the host: give an existing block device or image " +
                "file");
        }
        DeviceFactory.Bool(Name, Config, "readonly");
    }

    public void Add(string instanceDir) { }

    public DeviceRunConfig Start(string instanceDir)
    {
        var rc = new DeviceRunConfig { Device = Name };
        long? size = Config.TryGetValue("size", out var s) && ConfigSchema.TryParseSize(s, out var b) ? b : null;
        rc.Disks.Add(new DiskSpec(Config.GetValueOrDefault("source"), DeviceFactory.NormalizeTarget(Config["path"]),
            size,
            DeviceFactory.Bool(Name, Config, "readonly")));
        return rc;
    }

    public void Stop(string instanceDir) { }
    public void Remove(string instanceDir) { }
}

/// <summary>A host directory or file shared into the instance, read-only with readonly=true (a host share).</summary>
public sealed class BindDevice(string name, IReadOnlyDictionary<string, string> config) : IDevice
{
    static readonly string[] Keys = ["type", "source", "path", "readonly"];
    public string Name { get; } = name;
    public string Type => "bind";
    public IReadOnlyDictionary<string, string> Config { get; } = config;

    public void Validate()
    {
        DeviceFactory.CheckKeys(Name, Config, Keys);
        var src = DeviceFactory.AbsolutePath(Name, Config, "source");
        var path = DeviceFactory.AbsolutePath(Name, Config, "path");
        if (path == "/") throw new InstanceException(
            $"device '{Name}': a bind device cannot replace the root: choose another path");
        if (!File.Exists(src) && !Directory.Exists(src))
            throw new InstanceException($"device '{Name}': source {src} does not exist on the host: create it or fix " +
                "the path");
        DeviceFactory.Bool(Name, Config, "readonly");
    }

    public void Add(string instanceDir) { }

    public DeviceRunConfig Start(string instanceDir)
    {
        var src = Config["source"];
        if (!File.Exists(src) && !Directory.Exists(src))
            throw new InstanceException($"device '{Name}': source {src} no longer exists on the host: create it or " +
                "remove the device");
        var rc = new DeviceRunConfig { Device = Name };
        rc.Mounts.Add(new MountSpec(src, DeviceFactory.NormalizeTarget(Config["path"]),
            DeviceFactory.Bool(Name, Config, "readonly"), File.Exists(src)));
        return rc;
    }

    public void Stop(string instanceDir) { }
    public void Remove(string instanceDir) { }
}

/// <summary>
/// A network interface on a managed network (Incus's nic device): keys nictype (bridged, the default, or routed),
/// network, name (default eth0), hwaddr (default: made once and kept as volatile.DEVICE.hwaddr), ipv4.address
/// (static; default: allocated by hulld from the network's subnet and kept as volatile.DEVICE.ipv4.address), mtu.
/// A routed NIC (containers only) is a veth that joins no bridge: the host routes its address to it, so a host is not
/// bound by a bridge's 1024 ports. hulld resolves the network and fills in the engine's <see cref="NicSpec"/>.
/// </summary>
public sealed class NicDevice(string name, IReadOnlyDictionary<string, string> config) : IDevice
{
    public const string MacFilteringKey = "security.mac_filtering", Ipv4FilteringKey = "security.ipv4_filtering";
    static readonly string[] Keys = ["type", "nictype", "network", "name", "hwaddr", "ipv4.address", "mtu",
        MacFilteringKey, Ipv4FilteringKey];
    public string Name { get; } = name;
    public string Type => "nic";
    public IReadOnlyDictionary<string, string> Config { get; } = config;
    public string InterfaceName => Config.TryGetValue("name", out var n) && n.Length > 0 ? n : "eth0";
    public string Network => Config.GetValueOrDefault("network") ?? "";
    public bool Routed => Config.GetValueOrDefault("nictype") == "routed";

    /// <summary>The instance config keys hulld keeps for a NIC (a copy gets new ones).</summary>
    public static string HwAddrKey(string device) => $"volatile.{device}.hwaddr";
    public static string Ipv4Key(string device) => $"volatile.{device}.ipv4.address";

    public void Validate()
    {
        DeviceFactory.CheckKeys(Name, Config, Keys);
        if (Config.TryGetValue("nictype", out var t) && t is not ("" or "bridged" or "routed"))
            throw new InstanceException($"device '{Name}': nictype='{t}' is not supported: use bridged (the default) " +
                "or routed");
        if (Network.Length == 0)
            throw new InstanceException($"device '{Name}': the key 'network' is missing: name a managed network " +
                "('hull network list' shows them)");
        var ifname = InterfaceName;
        if (ifname.Length > 15 || ifname is "lo" or "." or ".." || !ifname.All(c => char.IsAsciiLetterOrDigit(c)
            || c is '-' or '_' or '.'))
            throw new InstanceException($"device '{Name}': name='{ifname}' is invalid: an interface name has 1-15 " +
                "letters, digits, '-', '_' or '.' (and is not lo)");
        if (Config.TryGetValue("hwaddr", out var mac) && mac.Length > 0 && !IsUnicastMac(mac))
            throw new InstanceException($"device '{Name}': hwaddr='{mac}' is invalid: use a unicast MAC address " +
                "such as 02:48:00:12:34:56 (six hex pairs, the first byte even)");
        if (Config.TryGetValue("ipv4.address", out var ip) && ip.Length > 0
            && (!System.Net.IPAddress.TryParse(ip, out var a) || a.AddressFamily !=
                System.Net.Sockets.AddressFamily.InterNetwork || ip.Count(c => c == '.') != 3))
            throw new InstanceException($"device '{Name}': ipv4.address='{ip}' is invalid: use an IPv4 address " +
                "inside the network's subnet, such as 10.0.3.50");
        if (Config.TryGetValue("mtu", out var mtu) && mtu.Length > 0
            && (!int.TryParse(mtu, System.Globalization.NumberStyles.None,
                System.Globalization.CultureInfo.InvariantCulture, out var m) || m is < 1280 or > 65535))
            throw new InstanceException($"device '{Name}': mtu='{mtu}' is invalid: use a whole number from 1280 to " +
                "65535");
        foreach (var key in new[] { MacFilteringKey, Ipv4FilteringKey })
        {
            if (Config.TryGetValue(key, out var b) && b is not ("" or "true" or "false"))
                throw new InstanceException($"device '{Name}': {key}='{b}' is invalid: use true or false");
            if (Routed && b is { Length: > 0 })
                throw new InstanceException($"device '{Name}': {key} is for bridged NICs; a routed NIC needs no " +
                    "filter (the host drops what it sends from an address not its own): remove the key");
        }
    }

    public static bool IsUnicastMac(string text)
    {
        var parts = text.Split(':');
        if (parts.Length != 6 || parts.Any(p => p.Length != 2 || !p.All(char.IsAsciiHexDigit))) return false;
        var first = Convert.ToByte(parts[0], 16);
        return (first & 1) == 0 && text != "00:00:00:00:00:00";
    }

    public void Add(string instanceDir) { }
    public DeviceRunConfig Start(string instanceDir) => new() { Device = Name };
    public void Stop(string instanceDir) { }
    public void Remove(string instanceDir) { }
}

/// <summary>
/// A published port (Incus's proxy device in NAT mode): listen=tcp:ADDR:PORT on the host is forwarded to
/// connect=tcp:ADDR:PORT of the instance (ADDR 0.0.0.0 or 127.0.0.1: the instance's address on its first NIC), by
/// nftables DNAT in the network's table, for outside traffic and the host's own (127.0.0.1 too).
/// </summary>
public sealed class ProxyDevice(string name, IReadOnlyDictionary<string, string> config) : IDevice
{
    static readonly string[] Keys = ["type", "listen", "connect", "bind", "nat"];
    public string Name { get; } = name;
    public string Type => "proxy";
    public IReadOnlyDictionary<string, string> Config { get; } = config;

    /// <summary>A proxy endpoint: protocol (tcp or udp), IPv4 address, port.</summary>
    public sealed record Endpoint(string Protocol, System.Net.IPAddress Address, int Port)
    {
        public override string ToString() => $"{Protocol}:{Address}:{Port}";
    }

    public Endpoint Listen => Parse("listen");
    public Endpoint Connect => Parse("connect");

    public void Validate()
    {
        DeviceFactory.CheckKeys(Name, Config, Keys);
        var l = Parse("listen");
        var c = Parse("connect");
        if (l.Protocol != c.Protocol)
            throw new InstanceException($"device '{Name}': listen is {l.Protocol} but connect is {c.Protocol}: use " +
                "the same protocol on both sides");
        if (!c.Address.Equals(System.Net.IPAddress.Any) && !System.Net.IPAddress.IsLoopback(c.Address))
            throw new InstanceException($"device '{Name}': connect={Config["connect"]}: the address is the " +
                $"instance's own: use {c.Protocol}:0.0.0.0:{c.Port}");
        if (Config.TryGetValue("bind", out var b) && b.Length > 0 && b != "host")
            throw new InstanceException($"device '{Name}': bind='{b}' is not supported: use host (the default)");
        if (Config.TryGetValue("nat", out var n) && n.Length > 0 && !DeviceFactory.Bool(Name, Config, "nat"))
            throw new InstanceException($"device '{Name}': nat=false (a proxy process) is not supported: published " +
                "ports are forwarded by nftables; use nat=true (the default)");
    }

    Endpoint Parse(string key)
    {
        if (!Config.TryGetValue(key, out var v) || v.Length == 0)
            throw new InstanceException($"device '{Name}': the key '{key}' is missing: set it to tcp:ADDR:PORT or " +
                "udp:ADDR:PORT, such as tcp:0.0.0.0:8080");
        var parts = v.Split(':');
        if (parts.Length != 3 || parts[0] is not ("tcp" or "udp")
            || !System.Net.IPAddress.TryParse(parts[1], out var addr)
            || addr.AddressFamily != System.Net.Sockets.AddressFamily.InterNetwork
            || parts[1].Count(c => c == '.') != 3)
            throw new InstanceException($"device '{Name}': {key}='{v}' is invalid: use tcp:ADDR:PORT or " +
                "udp:ADDR:PORT with an IPv4 address, such as tcp:0.0.0.0:8080");
        if (!int.TryParse(parts[2], System.Globalization.NumberStyles.None,
                System.Globalization.CultureInfo.InvariantCulture, out var port) || port is < 1 or > 65535)
            throw new InstanceException($"device '{Name}': {key}='{v}': the port '{parts[2]}' is outside 1-65535");
        return new Endpoint(parts[0], addr, port);
    }

    public void Add(string instanceDir) { }
    public DeviceRunConfig Start(string instanceDir) => new() { Device = Name };
    public void Stop(string instanceDir) { }
    public void Remove(string instanceDir) { }
}
