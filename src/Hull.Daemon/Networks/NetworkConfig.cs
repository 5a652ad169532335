using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Hull.Instances;
using Hull.Linux.Net;

namespace Hull.Daemon.Networks;

/// <summary>
/// A managed network's keys, as Incus names them, with their defaults and validation (errors name the key and say
/// what to use). <see cref="Parse"/> gives the effective settings of a stored config.
/// </summary>
public static class NetworkConfig
{
    public const string Ipv4Address = "ipv4.address", Ipv4Nat = "ipv4.nat", Ipv6Address = "ipv6.address",
        Ipv6Nat = "ipv6.nat", DnsDomain = "dns.domain", BridgeMtu = "bridge.mtu", Ipv4DhcpRanges = "ipv4.dhcp.ranges";

    public static readonly (string Key, string Help)[] Keys =
    [
        (Ipv4Address, "the bridge's IPv4 address and subnet in CIDR form (10.0.3.1/24), auto (a free private /24) " +
            "or none"),
        (Ipv4Nat, "masquerade IPv4 traffic leaving the host: true or false (default true)"),
        (Ipv6Address, "the bridge's IPv6 address and subnet (fd42:1:2:3::1/64), auto (a random ULA /64 where the " +
            "host has IPv6) or none"),
        (Ipv6Nat, "masquerade IPv6 traffic leaving the host: true or false (default true)"),
        (DnsDomain, "the DNS domain of the instances (default hull): NAME.hull resolves"),
        (BridgeMtu, "the bridge's MTU, 1280 to 65535 (default 1500)"),
        (Ipv4DhcpRanges, "DHCP ranges for VMs, FIRST-LAST[,FIRST-LAST] inside the subnet (default: the upper half)"),
    ];

    public static string KeyList => string.Join(", ", Keys.Select(k => k.Key));

    /// <summary>Network names are interface names: 1 to 15 letters, digits, '-' or '_', starting with a
    /// letter.</summary>
    public static void ValidateName(string name)
    {
        if (name.Length is 0 or > 15 || !char.IsAsciiLetter(name[0])
            || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_'))
            throw new InstanceException($"network name '{name}' is invalid: a network is a host interface, so use " +
                "1-15 letters, digits, '-' or '_', starting with a letter (such as hullbr1)");
    }

    /// <summary>Checks each key and value on its own (overlaps with other networks are checked by the
    /// manager).</summary>
    public static void Validate(IReadOnlyDictionary<string, string> config)
    {
        foreach (var (k, v) in config) ValidateKey(k, v);
        var s = Parse(config);
        if (config.TryGetValue(Ipv4DhcpRanges, out var ranges) && ranges.Length > 0)
        {
            if (s.Ipv4 is not { } v4) throw new InstanceException(
                $"{Ipv4DhcpRanges} needs an IPv4 subnet: set {Ipv4Address} first");
            foreach (var (first, last) in ParseRanges(ranges))
                if (!v4.Contains(first) || !v4.Contains(last) || Cidr.ToUInt(first) > Cidr.ToUInt(last))
                    throw new InstanceException($"{Ipv4DhcpRanges}='{ranges}' is invalid: each range must lie in " +
                        $"{v4.SubnetText}, its first address before its last");
        }
    }

    public static void ValidateKey(string key, string value)
    {
        switch (key)
        {
            case Ipv4Address:
                if (value is "auto" or "none") return;
                if (!Cidr.TryParse(value, out var c4) || c4.IsV6 || c4.Prefix is < 8 or > 30)
                    throw new InstanceException($"{key}='{value}' is invalid: use an IPv4 address with a prefix " +
                        "length from 8 to 30 (such as 10.10.0.1/24), auto or none");
                if (c4.Address.Equals(c4.Network) || c4.Address.Equals(c4.Broadcast))
                    throw new InstanceException($"{key}='{value}' is the subnet's network or broadcast address: " +
                        $"give the bridge a host address such as {Cidr.FromUInt(Cidr.ToUInt(c4.Network) + 1)}/" +
                        $"{c4.Prefix}");
                return;
            case Ipv6Address:
                if (value is "auto" or "none") return;
                if (!Cidr.TryParse(value, out var c6) || !c6.IsV6 || c6.Prefix is < 48 or > 64)
                    throw new InstanceException($"{key}='{value}' is invalid: use an IPv6 address with a prefix " +
                        "length from 48 to 64 (such as fd42:1:2:3::1/64), auto or none");
                return;
            case Ipv4Nat or Ipv6Nat:
                if (!ConfigSchema.TryParseBool(value, out _))
                    throw new InstanceException($"{key}='{value}' is invalid: use true or false");
                return;
            case DnsDomain:
                if (value.Length is 0 or > 63 || value.StartsWith('.') || value.EndsWith('.') ||
                    !value.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '.'))
                    throw new InstanceException($"{key}='{value}' is invalid: use a DNS domain of letters, digits, " +
                        "'-' and '.' (such as hull or lab.example)");
                return;
            case BridgeMtu:
                if (!int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var mtu)
                    || mtu is < 1280 or > 65535)
                    throw new InstanceException($"{key}='{value}' is invalid: use a whole number from 1280 to 65535");
                return;
            case Ipv4DhcpRanges:
                ParseRanges(value);
                return;
        }
        if (key.StartsWith("user.", StringComparison.Ordinal) && key.Length > 5) return;
        throw new InstanceException($"unknown network key '{key}': valid keys are {KeyList}, user.<NAME>");
    }

    static List<(IPAddress First, IPAddress Last)> ParseRanges(string value)
    {
        var list = new List<(IPAddress, IPAddress)>();
        foreach (var part in value.Split(','))
        {
            var ends = part.Trim().Split('-');
            if (ends.Length != 2 || !IPAddress.TryParse(ends[0], out var a) || !IPAddress.TryParse(ends[1], out var b)
                || a.AddressFamily != AddressFamily.InterNetwork || b.AddressFamily != AddressFamily.InterNetwork)
                throw new InstanceException($"{Ipv4DhcpRanges}='{value}' is invalid: use FIRST-LAST[,FIRST-LAST] " +
                    "with IPv4 addresses, such as 10.10.0.100-10.10.0.200");
            list.Add((a, b));
        }
        return list;
    }

    /// <summary>The effective settings of a network's (stored, resolved) config.</summary>
    public static NetworkSettings Parse(IReadOnlyDictionary<string, string> c)
    {
        Cidr? v4 = c.TryGetValue(Ipv4Address, out var a4) && Cidr.TryParse(a4, out var x4) ? x4 : null;
        Cidr? v6 = c.TryGetValue(Ipv6Address, out var a6) && Cidr.TryParse(a6, out var x6) ? x6 : null;
        return new NetworkSettings
        {
            Ipv4 = v4, Ipv6 = v6,
            Ipv4Nat = Bool(c, Ipv4Nat, true), Ipv6Nat = Bool(c, Ipv6Nat, true),
            Domain = c.TryGetValue(DnsDomain, out var d) && d.Length > 0 ? d : "hull",
            Mtu = c.TryGetValue(BridgeMtu, out var m) && int.TryParse(m, CultureInfo.InvariantCulture, out var mi)
                ? mi : 1500,
            DhcpRanges = c.TryGetValue(Ipv4DhcpRanges, out var r) && r.Length > 0 ? ParseRanges(r) : [],
        };
    }

    static bool Bool(IReadOnlyDictionary<string, string> c, string key, bool def) =>
        c.TryGetValue(key, out var v) && ConfigSchema.TryParseBool(v, out var b) ? b : def;
}

/// <summary>What a network's config means.</summary>
public sealed class NetworkSettings
{
    public Cidr? Ipv4 { get; init; }
    public Cidr? Ipv6 { get; init; }
    public bool Ipv4Nat { get; init; }
    public bool Ipv6Nat { get; init; }
    public string Domain { get; init; } = "hull";
    public int Mtu { get; init; }
    public List<(IPAddress First, IPAddress Last)> DhcpRanges { get; init; } = [];

    /// <summary>The DHCP ranges (for VMs): the configured ones, or the upper half of the subnet.</summary>
    public List<(IPAddress First, IPAddress Last)> EffectiveDhcpRanges()
    {
        if (DhcpRanges.Count > 0 || Ipv4 is not { } v4) return DhcpRanges;
        var net = Cidr.ToUInt(v4.Network);
        var size = v4.Prefix == 32 ? 1u : 1u << (32 - v4.Prefix);
        return [(Cidr.FromUInt(net + size / 2), Cidr.FromUInt(net + size - 2))];
    }
}
