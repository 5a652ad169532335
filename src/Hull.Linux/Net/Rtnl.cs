using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace Hull.Linux.Net;

/// <summary>rtnetlink(7) message types, attributes and flags Hull uses (linux/rtnetlink.h, if_link.h,
/// if_addr.h).</summary>
public static class RTM
{
    public const ushort NEWLINK = 16, DELLINK = 17, GETLINK = 18, SETLINK = 19, NEWADDR = 20, DELADDR = 21,
        GETADDR = 22, NEWROUTE = 24, DELROUTE = 25, GETROUTE = 26;
    public const ushort IFLA_ADDRESS = 1, IFLA_IFNAME = 3, IFLA_MTU = 4, IFLA_MASTER = 10, IFLA_LINKINFO = 18,
        IFLA_NET_NS_FD = 28;
    public const ushort IFLA_INFO_KIND = 1, IFLA_INFO_DATA = 2, VETH_INFO_PEER = 1;
    public const ushort IFA_ADDRESS = 1, IFA_LOCAL = 2;
    public const byte IFA_F_NODAD = 0x02;
    public const ushort RTA_DST = 1, RTA_OIF = 4, RTA_GATEWAY = 5, RTA_TABLE = 15;
    public const byte RT_TABLE_MAIN = 254, RTPROT_BOOT = 3, RTPROT_STATIC = 4, RT_SCOPE_UNIVERSE = 0,
        RT_SCOPE_LINK = 253, RT_SCOPE_HOST = 254, RTN_UNICAST = 1;
    public const uint IFF_UP = 0x1;
    public const byte AF_UNSPEC = 0, AF_INET = 2, AF_INET6 = 10;

    /// <summary>struct ifinfomsg: family, pad, type, index, flags, change.</summary>
    public static byte[] IfInfo(int index = 0, uint flags = 0, uint change = 0)
    {
        var b = new byte[16];
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(4), index);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(8), flags);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(12), change);
        return b;
    }

    /// <summary>struct ifaddrmsg: family, prefixlen, flags, scope, index.</summary>
    public static byte[] IfAddr(byte family, int prefix, int index, byte flags = 0, byte scope = 0)
    {
        var b = new byte[8];
        b[0] = family; b[1] = (byte)prefix; b[2] = flags; b[3] = scope;
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(4), index);
        return b;
    }

    /// <summary>struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.</summary>
    public static byte[] RtMsg(byte family, int dstLen, byte table = RT_TABLE_MAIN, byte protocol = 0,
        byte scope = RT_SCOPE_UNIVERSE, byte type = 0)
    {
        var b = new byte[12];
        b[0] = family; b[1] = (byte)dstLen; b[4] = table; b[5] = protocol; b[6] = scope; b[7] = type;
        return b;
    }
}

/// <summary>A network interface as RTM_GETLINK shows it.</summary>
public sealed record LinkInfo(int Index, string Name, string? Kind, uint Flags, int Mtu, int Master, string? HwAddr)
{
    public bool Up => (Flags & RTM.IFF_UP) != 0;
}

/// <summary>An address on an interface (RTM_GETADDR).</summary>
public sealed record AddressInfo(int Index, IPAddress Address, int Prefix);

/// <summary>A route of the main table (RTM_GETROUTE): destination/prefix, gateway, output interface.</summary>
public sealed record RouteInfo(IPAddress Destination, int Prefix, IPAddress? Gateway, int OutIndex);

/// <summary>
/// The seam between hulld's network code and the kernel's links, addresses and routes, in one network namespace.
/// <see cref="Rtnl"/> is the real kernel (rtnetlink); links are named, as ip-link(8) names them.
/// </summary>
public interface INetLinks : IDisposable
{
    /// <summary>The interface's index; null if there is none of that name.</summary>
    int? IndexOf(string name);
    LinkInfo? Link(string name);
    List<LinkInfo> Links();
    void CreateBridge(string name, int mtu = 0);
    /// <summary>A veth pair <paramref name="name"/>—<paramref name="peer"/>; with <paramref name="peerNetns"/> the
    /// peer is made directly in that network namespace.</summary>
    void CreateVeth(string name, string peer, int mtu = 0, SafeFd? peerNetns = null, byte[]? peerHwAddr = null);
    void SetMaster(string name, string master);
    void SetUp(string name, bool up);
    void SetMtu(string name, int mtu);
    void SetHwAddr(string name, byte[] mac);
    /// <summary>Moves the link into the network namespace open as <paramref name="netns"/>, renamed there to
    /// <paramref name="newName"/> if given.</summary>
    void MoveToNetns(string name, SafeFd netns, string? newName = null);
    void DeleteLink(string name);
    void AddAddress(string name, IPAddress address, int prefix);
    void DeleteAddress(string name, IPAddress address, int prefix);
    List<AddressInfo> Addresses();
    /// <summary>A route in the main table; no <paramref name="gateway"/>: on-link through <paramref name="dev"/>.
    /// </summary>
    void AddRoute(IPAddress destination, int prefix, IPAddress? gateway, string? dev);
    void DeleteRoute(IPAddress destination, int prefix, IPAddress? gateway, string? dev);
    List<RouteInfo> Routes(AddressFamily family);
}

/// <summary>rtnetlink over one <see cref="NetlinkSocket"/>; one request at a time (a lock serializes
/// callers).</summary>
public sealed class Rtnl : INetLinks
{
    readonly NetlinkSocket _s;
    readonly Lock _gate = new();

    Rtnl(NetlinkSocket s) => _s = s;

    /// <summary>The calling thread's network namespace (hulld's: the host's).</summary>
    public static Rtnl Open() => new(NetlinkSocket.OpenRoute());

    /// <summary>The network namespace open as <paramref name="netns"/> (e.g. a container's /proc/PID/ns/net).
    /// </summary>
    public static Rtnl OpenIn(SafeFd netns) => new(NetlinkSocket.OpenRouteIn(netns));

    public void Dispose() => _s.Dispose();

    public int? IndexOf(string name) => Link(name)?.Index;

    public LinkInfo? Link(string name)
    {
        var m = new NetlinkMessage(RTM.GETLINK, 0).Raw(RTM.IfInfo()).Attr(RTM.IFLA_IFNAME, name);
        lock (_gate)
        {
            try { return _s.Get(m, $"looking up link {name}") is { } r ? ParseLink(r.Payload) : null; }
            catch (LinuxException e) when (e.Errno == Errors.ENODEV) { return null; }
        }
    }

    public List<LinkInfo> Links()
    {
        var m = new NetlinkMessage(RTM.GETLINK, NLM.F_DUMP).Raw(RTM.IfInfo());
        lock (_gate) return _s.Dump(m, "listing links").Where(r => r.Type == RTM.NEWLINK)
            .Select(r => ParseLink(r.Payload)).ToList();
    }

    int Index(string name) => IndexOf(name) ?? throw new LinuxException(Errors.ENODEV, $"link {name}");

    public void CreateBridge(string name, int mtu = 0)
    {
        var m = new NetlinkMessage(RTM.NEWLINK, NLM.F_CREATE | NLM.F_EXCL).Raw(RTM.IfInfo())
            .Attr(RTM.IFLA_IFNAME, name);
        if (mtu > 0) m.Attr(RTM.IFLA_MTU, mtu);
        m.BeginNest(RTM.IFLA_LINKINFO).Attr(RTM.IFLA_INFO_KIND, "bridge").EndNest();
        Do(m, $"creating bridge {name}");
    }

    public void CreateVeth(string name, string peer, int mtu = 0, SafeFd? peerNetns = null, byte[]? peerHwAddr = null)
    {
        var m = new NetlinkMessage(RTM.NEWLINK, NLM.F_CREATE | NLM.F_EXCL).Raw(RTM.IfInfo())
            .Attr(RTM.IFLA_IFNAME, name);
        if (mtu > 0) m.Attr(RTM.IFLA_MTU, mtu);
        m.BeginNest(RTM.IFLA_LINKINFO).Attr(RTM.IFLA_INFO_KIND, "veth").BeginNest(RTM.IFLA_INFO_DATA)
            .BeginNest(RTM.VETH_INFO_PEER).Raw(RTM.IfInfo()).Attr(RTM.IFLA_IFNAME, peer);
        if (mtu > 0) m.Attr(RTM.IFLA_MTU, mtu);
        if (peerHwAddr is not null) m.Attr(RTM.IFLA_ADDRESS, peerHwAddr);
        if (peerNetns is not null) m.Attr(RTM.IFLA_NET_NS_FD, peerNetns.Fd);
        m.EndNest().EndNest().EndNest();
        Do(m, $"creating veth pair {name}/{peer}");
    }

    public void SetMaster(string name, string master) =>
        SetLink(name, m => m.Attr(RTM.IFLA_MASTER, Index(master)), $"attaching {name} to {master}");

    public void SetUp(string name, bool up)
    {
        var m = new NetlinkMessage(RTM.NEWLINK, 0).Raw(RTM.IfInfo(Index(name), up ? RTM.IFF_UP : 0, RTM.IFF_UP));
        Do(m, $"setting {name} {(up ? "up" : "down")}");
    }

    public void SetMtu(string name, int mtu) => SetLink(name, m => m.Attr(RTM.IFLA_MTU, mtu),
        $"setting the mtu of {name} to {mtu}");

    public void SetHwAddr(string name, byte[] mac) => SetLink(name, m => m.Attr(RTM.IFLA_ADDRESS, mac),
        $"setting the MAC address of {name}");

    public void MoveToNetns(string name, SafeFd netns, string? newName = null) => SetLink(name, m =>
    {
        m.Attr(RTM.IFLA_NET_NS_FD, netns.Fd);
        if (newName is not null) m.Attr(RTM.IFLA_IFNAME, newName);
    }, $"moving {name} into another network namespace");

    void SetLink(string name, Action<NetlinkMessage> attrs, string what)
    {
        var m = new NetlinkMessage(RTM.NEWLINK, 0).Raw(RTM.IfInfo(Index(name)));
        attrs(m);
        Do(m, what);
    }

    public void DeleteLink(string name)
    {
        var m = new NetlinkMessage(RTM.DELLINK, 0).Raw(RTM.IfInfo()).Attr(RTM.IFLA_IFNAME, name);
        Do(m, $"deleting link {name}");
    }

    public void AddAddress(string name, IPAddress address, int prefix) =>
        Address(RTM.NEWADDR, NLM.F_CREATE | NLM.F_EXCL, name, address, prefix, $"adding {address}/{prefix} to {name}");

    public void DeleteAddress(string name, IPAddress address, int prefix) =>
        Address(RTM.DELADDR, 0, name, address, prefix, $"removing {address}/{prefix} from {name}");

    void Address(ushort type, ushort flags, string name, IPAddress address, int prefix, string what)
    {
        var v6 = address.AddressFamily == AddressFamily.InterNetworkV6;
        var m = new NetlinkMessage(type, flags)
            .Raw(RTM.IfAddr(v6 ? RTM.AF_INET6 : RTM.AF_INET, prefix, Index(name), v6 ? RTM.IFA_F_NODAD : (byte)0))
            .Attr(RTM.IFA_LOCAL, address.GetAddressBytes()).Attr(RTM.IFA_ADDRESS, address.GetAddressBytes());
        Do(m, what);
    }

    public List<AddressInfo> Addresses()
    {
        var m = new NetlinkMessage(RTM.GETADDR, NLM.F_DUMP).Raw(RTM.IfAddr(RTM.AF_UNSPEC, 0, 0));
        List<NetlinkReply> replies;
        lock (_gate) replies = _s.Dump(m, "listing addresses");
        var list = new List<AddressInfo>();
        foreach (var r in replies.Where(r => r.Type == RTM.NEWADDR))
        {
            var p = r.Payload.Span;
            var prefix = p[1];
            var index = BinaryPrimitives.ReadInt32LittleEndian(p[4..]);
            IPAddress? addr = null;
            foreach (var a in NetlinkAttr.Parse(r.Payload[8..]))
                if (a.Type == RTM.IFA_LOCAL || (a.Type == RTM.IFA_ADDRESS && addr is null))
                    addr = new IPAddress(a.Payload.Span);
            if (addr is not null) list.Add(new AddressInfo(index, addr, prefix));
        }
        return list;
    }

    public void AddRoute(IPAddress destination, int prefix, IPAddress? gateway, string? dev) =>
        Route(RTM.NEWROUTE, NLM.F_CREATE | NLM.F_EXCL, destination, prefix, gateway, dev,
            $"adding the route to {destination}/{prefix}{(gateway is null ? "" : $" via {gateway}")}");

    public void DeleteRoute(IPAddress destination, int prefix, IPAddress? gateway, string? dev) =>
        Route(RTM.DELROUTE, 0, destination, prefix, gateway, dev, $"deleting the route to {destination}/{prefix}");

    void Route(ushort type, ushort flags, IPAddress dst, int prefix, IPAddress? gateway, string? dev, string what)
    {
        var v6 = dst.AddressFamily == AddressFamily.InterNetworkV6;
        var scope = gateway is null ? RTM.RT_SCOPE_LINK : RTM.RT_SCOPE_UNIVERSE;
        var m = new NetlinkMessage(type, flags).Raw(RTM.RtMsg(v6 ? RTM.AF_INET6 : RTM.AF_INET, prefix,
            protocol: RTM.RTPROT_STATIC, scope: scope, type: RTM.RTN_UNICAST));
        if (prefix > 0) m.Attr(RTM.RTA_DST, dst.GetAddressBytes());
        if (gateway is not null) m.Attr(RTM.RTA_GATEWAY, gateway.GetAddressBytes());
        if (dev is not null) m.Attr(RTM.RTA_OIF, Index(dev));
        Do(m, what);
    }

    public List<RouteInfo> Routes(AddressFamily family)
    {
        var v6 = family == AddressFamily.InterNetworkV6;
        var m = new NetlinkMessage(RTM.GETROUTE, NLM.F_DUMP).Raw(RTM.RtMsg(v6 ? RTM.AF_INET6 : RTM.AF_INET, 0, 0));
        List<NetlinkReply> replies;
        lock (_gate) replies = _s.Dump(m, "listing routes");
        var list = new List<RouteInfo>();
        foreach (var r in replies.Where(r => r.Type == RTM.NEWROUTE))
        {
            var p = r.Payload.Span;
            int prefix = p[1];
            uint table = p[4];
            IPAddress? dst = null, gw = null;
            var oif = 0;
            foreach (var a in NetlinkAttr.Parse(r.Payload[12..]))
            {
                if (a.Type == RTM.RTA_DST) dst = new IPAddress(a.Payload.Span);
                else if (a.Type == RTM.RTA_GATEWAY) gw = new IPAddress(a.Payload.Span);
                else if (a.Type == RTM.RTA_OIF) oif = (int)a.U32;
                else if (a.Type == RTM.RTA_TABLE) table = a.U32;
            }
            if (table != RTM.RT_TABLE_MAIN) continue;
            list.Add(new RouteInfo(dst ?? (v6 ? IPAddress.IPv6Any : IPAddress.Any), prefix, gw, oif));
        }
        return list;
    }

    void Do(NetlinkMessage m, string what) { lock (_gate) _s.Request(m, what); }

    static LinkInfo ParseLink(ReadOnlyMemory<byte> payload)
    {
        var p = payload.Span;
        var index = BinaryPrimitives.ReadInt32LittleEndian(p[4..]);
        var flags = BinaryPrimitives.ReadUInt32LittleEndian(p[8..]);
        string name = "", mac = "";
        string? kind = null;
        int mtu = 0, master = 0;
        foreach (var a in NetlinkAttr.Parse(payload[16..]))
        {
            switch (a.Type)
            {
                case RTM.IFLA_IFNAME: name = a.String; break;
                case RTM.IFLA_MTU: mtu = (int)a.U32; break;
                case RTM.IFLA_MASTER: master = (int)a.U32; break;
                case RTM.IFLA_ADDRESS: mac = MacAddress.Format(a.Payload.Span); break;
                case RTM.IFLA_LINKINFO:
                    foreach (var i in NetlinkAttr.Parse(a.Payload))
                        if (i.Type == RTM.IFLA_INFO_KIND) kind = i.String;
                    break;
            }
        }
        return new LinkInfo(index, name, kind, flags, mtu, master, mac.Length == 0 ? null : mac);
    }
}

/// <summary>Ethernet addresses as text ("02:00:5e:10:00:01").</summary>
public static class MacAddress
{
    public static string Format(ReadOnlySpan<byte> mac) =>
        string.Join(':', mac.ToArray().Select(b => b.ToString("x2", System.Globalization.CultureInfo.InvariantCulture)));

    public static bool TryParse(string text, out byte[] mac)
    {
        mac = [];
        var parts = text.Split(':');
        if (parts.Length != 6) return false;
        var b = new byte[6];
        for (var i = 0; i < 6; i++)
            if (parts[i].Length != 2 || !byte.TryParse(parts[i], System.Globalization.NumberStyles.HexNumber, null,
                    out b[i])) return false;
        mac = b;
        return true;
    }

    /// <summary>A random, locally administered, unicast address (the 0x02 bit set, the 0x01 bit clear), with
    /// Hull's prefix 02:48 ("H") so the owner is visible in `ip link`.</summary>
    public static string Random()
    {
        Span<byte> b = stackalloc byte[6];
        System.Security.Cryptography.RandomNumberGenerator.Fill(b);
        b[0] = 0x02; b[1] = 0x48;
        return Format(b);
    }
}

/// <summary>TUN/TAP devices (/dev/net/tun, TUNSETIFF), for VM NICs.</summary>
public static unsafe class Tun
{
    const ulong TUNSETIFF = 0x400454ca, TUNSETPERSIST = 0x400454cb;
    const short IFF_TAP = 0x0002, IFF_NO_PI = 0x1000, IFF_VNET_HDR = 0x4000;

    /// <summary>Opens (creating if needed) the tap device <paramref name="name"/>; the device lives as long as the
    /// returned fd (not persistent), so a crash leaves none behind.</summary>
    public static SafeFd OpenTap(string name, bool vnetHeader = true)
    {
        if (name.Length is 0 or > 15) throw new ArgumentException($"a tap name has 1 to 15 characters: '{name}'");
        var fd = Sys.Open("/dev/net/tun", O.RDWR);
        var ifr = stackalloc byte[40];
        new Span<byte>(ifr, 40).Clear();
        System.Text.Encoding.ASCII.GetBytes(name, new Span<byte>(ifr, 16));
        *(short*)(ifr + 16) = (short)(IFF_TAP | IFF_NO_PI | (vnetHeader ? IFF_VNET_HDR : 0));
        if (Libc.ioctl(fd.Fd, TUNSETIFF, (nint)ifr) < 0)
        {
            var e = LinuxException.FromLastError($"TUNSETIFF {name}");
            fd.Dispose();
            throw e;
        }
        return fd;
    }

    /// <summary>Makes a persistent tap device <paramref name="name"/> (TUNSETPERSIST): it outlives this call, so a
    /// VMM opens it by name (QEMU's -netdev tap,ifname=); delete it as a link when done.</summary>
    public static void CreatePersistentTap(string name)
    {
        using var fd = OpenTap(name);
        if (Libc.ioctl(fd.Fd, TUNSETPERSIST, 1) < 0) throw LinuxException.FromLastError($"TUNSETPERSIST {name}");
    }
}
