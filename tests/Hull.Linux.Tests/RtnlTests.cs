using System.Net;
using System.Net.Sockets;
using Hull.Linux.Net;
using Hull.TestSupport;
using Xunit;

namespace Hull.Linux.Tests;

/// <summary>rtnetlink for real: throwaway links named hlt* in the host namespace (deleted at the end) and throwaway
/// network namespaces held by fd. Addresses are from 10.254.0.0/16 on links the test makes.</summary>
public class RtnlTests
{
    static string Name(string what) => $"hlt{what}{Random.Shared.Next(0x1000, 0xffff):x4}";

    static void Cleanup(INetLinks links, params string[] names)
    {
        foreach (var n in names) if (links.IndexOf(n) is not null) links.DeleteLink(n);
    }

    [SkippableFact]
    public void Bridge_and_veth_with_master_mtu_mac_and_up()
    {
        Requires.Root();
        using var links = Rtnl.Open();
        string br = Name("br"), a = Name("va"), b = Name("vb");
        try
        {
            links.CreateBridge(br, 1400);
            links.CreateVeth(a, b, 1400);
            links.SetMaster(a, br);
            links.SetMtu(b, 1300);
            Assert.True(MacAddress.TryParse("02:48:00:00:00:01", out var mac));
            links.SetHwAddr(b, mac);
            links.SetUp(br, true);
            links.SetUp(a, true);

            var bri = links.Link(br)!;
            Assert.Equal("bridge", bri.Kind);
            Assert.True(bri.Up);
            Assert.Equal(1400, bri.Mtu);
            var ai = links.Link(a)!;
            Assert.Equal("veth", ai.Kind);
            Assert.Equal(bri.Index, ai.Master);
            var bi = links.Link(b)!;
            Assert.Equal(1300, bi.Mtu);
            Assert.Equal("02:48:00:00:00:01", bi.HwAddr);
            Assert.Contains(links.Links(), l => l.Name == a);

            links.DeleteLink(a); // a veth goes with its peer
            Assert.Null(links.Link(a));
            Assert.Null(links.Link(b));
        }
        finally { Cleanup(links, a, b, br); }
        Assert.Null(links.Link(br));
    }

    [SkippableFact]
    public void A_link_moved_into_a_namespace_is_configured_there_and_carries_tcp()
    {
        Requires.Root();
        using var links = Rtnl.Open();
        using var ns = NetNs.Create();
        string br = Name("br"), host = Name("vh"), peer = Name("vp");
        var gw = IPAddress.Parse("10.254.7.1");
        var addr = IPAddress.Parse("10.254.7.2");
        try
        {
            links.CreateBridge(br);
            links.AddAddress(br, gw, 24);
            links.SetUp(br, true);
            links.CreateVeth(host, peer);
            links.SetMaster(host, br);
            links.SetUp(host, true);
            links.MoveToNetns(peer, ns, "eth0");
            Assert.Null(links.Link(peer));

            using (var inside = Rtnl.OpenIn(ns))
            {
                inside.SetUp("lo", true);
                inside.AddAddress("eth0", addr, 24);
                inside.SetUp("eth0", true);
                inside.AddRoute(IPAddress.Any, 0, gw, "eth0");
                Assert.Contains(inside.Addresses(), x => x.Address.Equals(addr) && x.Prefix == 24);
                Assert.Contains(inside.Routes(AddressFamily.InterNetwork),
                    r => r.Prefix == 0 && gw.Equals(r.Gateway));
                Assert.DoesNotContain(inside.Links(), l => l.Name == host);
            }
            Assert.Contains(links.Addresses(), x => x.Address.Equals(gw) && x.Index == links.IndexOf(br));

            // A TCP listener inside the namespace answers the host through the bridge.
            using var listener = NetNs.In(ns, () =>
            {
                var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                s.Bind(new IPEndPoint(addr, 7777));
                s.Listen();
                return s;
            });
            using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            client.ConnectAsync(new IPEndPoint(addr, 7777)).Wait(TimeSpan.FromSeconds(10));
            using var served = listener.Accept();
            served.Send("hello"u8);
            var buf = new byte[5];
            Assert.Equal(5, client.Receive(buf));
            Assert.Equal("hello"u8.ToArray(), buf);
        }
        finally { Cleanup(links, host, br); }
    }

    [SkippableFact]
    public void A_veth_peer_is_made_directly_in_a_namespace_and_goes_with_it()
    {
        Requires.Root();
        using var links = Rtnl.Open();
        string host = Name("vh");
        try
        {
            using (var ns = NetNs.Create())
            {
                Assert.True(MacAddress.TryParse("02:48:aa:bb:cc:dd", out var mac));
                links.CreateVeth(host, "eth0", 1450, ns, mac);
                using var inside = Rtnl.OpenIn(ns);
                var eth0 = inside.Link("eth0")!;
                Assert.Equal("02:48:aa:bb:cc:dd", eth0.HwAddr);
                Assert.Equal(1450, eth0.Mtu);
                Assert.Equal(1450, links.Link(host)!.Mtu);
            }
            // The namespace is gone with its last fd (asynchronously): its veth end, and so the pair, with it.
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (links.Link(host) is not null && DateTime.UtcNow < deadline) Thread.Sleep(20);
            Assert.Null(links.Link(host));
        }
        finally { Cleanup(links, host); }
    }

    [SkippableFact]
    public void Routes_and_addresses_are_added_and_removed()
    {
        Requires.Root();
        using var links = Rtnl.Open();
        using var ns = NetNs.Create();
        using var inside = Rtnl.OpenIn(ns);
        inside.CreateBridge("br0");
        inside.SetUp("br0", true);
        inside.AddAddress("br0", IPAddress.Parse("10.254.9.1"), 24);
        inside.AddAddress("br0", IPAddress.Parse("fd48::1"), 64);
        var dst = IPAddress.Parse("10.254.200.0");
        inside.AddRoute(dst, 24, IPAddress.Parse("10.254.9.9"), null);
        Assert.Contains(inside.Routes(AddressFamily.InterNetwork), r => r.Destination.Equals(dst) && r.Prefix == 24);
        Assert.Contains(inside.Addresses(), a => a.Address.Equals(IPAddress.Parse("fd48::1")) && a.Prefix == 64);
        inside.DeleteRoute(dst, 24, IPAddress.Parse("10.254.9.9"), null);
        Assert.DoesNotContain(inside.Routes(AddressFamily.InterNetwork), r => r.Destination.Equals(dst));
        inside.DeleteAddress("br0", IPAddress.Parse("10.254.9.1"), 24);
        Assert.DoesNotContain(inside.Addresses(), a => a.Address.Equals(IPAddress.Parse("10.254.9.1")));
        // Nothing of this reached the host's namespace.
        Assert.DoesNotContain(links.Addresses(), a => a.Address.Equals(IPAddress.Parse("fd48::1")));
    }

    [SkippableFact]
    public void Kernel_errors_name_the_link_and_keep_their_errno()
    {
        Requires.Root();
        using var ns = NetNs.Create();
        using var inside = Rtnl.OpenIn(ns);
        var e = Assert.Throws<LinuxException>(() => inside.DeleteLink("nosuch0"));
        Assert.Equal(Errors.ENODEV, e.Errno);
        Assert.Contains("nosuch0", e.Message);
        inside.CreateBridge("br0");
        var dup = Assert.Throws<LinuxException>(() => inside.CreateBridge("br0"));
        Assert.Equal(Errors.EEXIST, dup.Errno);
        Assert.Contains("br0", dup.Message);
        var missing = Assert.Throws<LinuxException>(() => inside.SetMaster("br0", "nosuch1"));
        Assert.Contains("nosuch1", missing.Message);
    }

    [SkippableFact]
    public void A_tap_lives_as_long_as_its_fd()
    {
        Requires.Root();
        Requires.File("/dev/net/tun", "the TUN/TAP device");
        using var links = Rtnl.Open();
        var name = Name("tap");
        using (var fd = Tun.OpenTap(name))
        {
            Assert.Equal("tun", links.Link(name)!.Kind);
        }
        Assert.Null(links.Link(name));
    }
}
