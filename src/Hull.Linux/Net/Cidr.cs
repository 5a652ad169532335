using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Hull.Linux.Net;

/// <summary>An IPv4 or IPv6 prefix with an address in it ("10.1.2.1/24": the gateway and its subnet).</summary>
public readonly record struct Cidr(IPAddress Address, int Prefix)
{
    public bool IsV6 => Address.AddressFamily == AddressFamily.InterNetworkV6;
    public int Bits => IsV6 ? 128 : 32;

    /// <summary>The subnet's first address (host bits zero).</summary>
    public IPAddress Network => Mask(Address, Prefix);

    public static IPAddress Mask(IPAddress a, int prefix)
    {
        var b = a.GetAddressBytes();
        for (var i = 0; i < b.Length; i++)
        {
            var keep = Math.Clamp(prefix - i * 8, 0, 8);
            b[i] &= (byte)(0xff << (8 - keep));
        }
        return new IPAddress(b);
    }

    public bool Contains(IPAddress a) => a.AddressFamily == Address.AddressFamily && Mask(a, Prefix).Equals(Network);

    public bool Overlaps(Cidr o) => o.IsV6 == IsV6 && (Contains(o.Network) || o.Contains(Network));

    /// <summary>The last address of an IPv4 subnet (its broadcast address).</summary>
    public IPAddress Broadcast
    {
        get
        {
            var v = ToUInt(Network) | (Prefix == 32 ? 0 : uint.MaxValue >> Prefix);
            return FromUInt(v);
        }
    }

    public static uint ToUInt(IPAddress a)
    {
        var b = a.GetAddressBytes();
        return (uint)(b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3]);
    }

    public static IPAddress FromUInt(uint v) => new([(byte)(v >> 24), (byte)(v >> 16), (byte)(v >> 8), (byte)v]);

    public static bool TryParse(string text, out Cidr cidr)
    {
        cidr = default;
        var slash = text.IndexOf('/');
        if (slash < 0 || !IPAddress.TryParse(text[..slash], out var a)
            || !int.TryParse(text[(slash + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out var p))
            return false;
        if (a.AddressFamily == AddressFamily.InterNetwork && text[..slash].Count(c => c == '.') != 3) return false;
        if (p > (a.AddressFamily == AddressFamily.InterNetworkV6 ? 128 : 32)) return false;
        cidr = new Cidr(a, p);
        return true;
    }

    public override string ToString() => $"{Address}/{Prefix}";
    public string SubnetText => $"{Network}/{Prefix}";
}
