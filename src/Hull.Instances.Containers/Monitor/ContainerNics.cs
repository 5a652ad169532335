using System.Net;
using Hull.Linux;
using Hull.Linux.Net;

namespace Hull.Instances.Containers;

/// <summary>
/// A container's NICs, in the monitor between the engine's create and start: each veth pair is made with its peer
/// directly in the container's network namespace (the init's, owned by the container's user namespace when
/// unprivileged) under its name there (not moved there afterwards, which costs the kernel an RCU grace period) and
/// its host end joins the bridge; inside, the peer gets its addresses and comes up, with default routes through the
/// network's gateway. A routed NIC's host end joins no bridge: the host routes the instance's /32 to it, drops what
/// arrives on it from another source (rp_filter), and answers the instance's ARP for the gateway (an address of the
/// host's). Netlink and /proc/sys only: no program is run. On failure the host ends made are deleted (the peers and
/// routes go with them).
/// </summary>
static class ContainerNics
{
    static readonly Lock Gate = new();
    static Rtnl? _host;

    public static void Configure(int initPid, IReadOnlyList<NicSpec> nics)
    {
        using var ns = NetNs.OfProcess(initPid);
        // Never configure the host's own namespace (a container without a network namespace of its own).
        if (new FileInfo($"/proc/{initPid}/ns/net").LinkTarget == new FileInfo("/proc/self/ns/net").LinkTarget)
            throw new InstanceException("the container has no network namespace of its own: its nic devices " +
                "cannot be set up; remove them or give it a network namespace");
        var made = new List<string>();
        try
        {
            lock (Gate)
            {
                _host ??= Rtnl.Open();
                foreach (var n in nics)
                {
                    MacAddress.TryParse(n.HwAddr, out var mac);
                    _host.CreateVeth(n.HostName, n.Name, n.Mtu, ns, mac.Length == 6 ? mac : null);
                    made.Add(n.HostName);
                    WithoutIpv6(n.HostName);
                    if (n.Routed)
                    {
                        RoutedHostEnd(n);
                        continue;
                    }
                    _host.SetMaster(n.HostName, n.Bridge);
                    _host.SetUp(n.HostName, true);
                }
            }
            using var inside = Rtnl.OpenIn(ns);
            foreach (var n in nics)
            {
                if (n.Ipv4 is { } a4) AddAddress(inside, n.Name, a4);
                if (n.Ipv6 is { } a6) AddAddress(inside, n.Name, a6);
                inside.SetUp(n.Name, true);
                // A routed NIC's address is alone in its /32: the gateway is reached on-link.
                if (n.Routed && n.Gateway4 is { } gw) inside.AddRoute(IPAddress.Parse(gw), 32, null, n.Name);
            }
            // One default route per family: through the first NIC that has a gateway of it.
            if (nics.FirstOrDefault(n => n.Ipv4 is not null && n.Gateway4 is not null) is { } g4)
                inside.AddRoute(IPAddress.Any, 0, IPAddress.Parse(g4.Gateway4!), g4.Name);
            if (nics.FirstOrDefault(n => n.Ipv6 is not null && n.Gateway6 is not null) is { } g6)
                inside.AddRoute(IPAddress.IPv6Any, 0, IPAddress.Parse(g6.Gateway6!), g6.Name);
        }
        catch
        {
            lock (Gate)
                foreach (var h in made)
                    try { _host!.DeleteLink(h); } catch (LinuxException) { }
            throw;
        }
    }

    /// <summary>
    /// A host end needs no IPv6 of its own (a bridge port forwards IPv6 frames without it; a routed NIC is IPv4
    /// only), and with it every host end adds a link-local address and fe80::/64 route to the host's table, whose
    /// route lookups then walk one sibling per instance: launches slowed with the number running.
    /// </summary>
    static void WithoutIpv6(string hostName)
    {
        var path = $"/proc/sys/net/ipv6/conf/{hostName}/disable_ipv6";
        if (!Directory.Exists("/proc/sys/net/ipv6")) return; // a kernel without IPv6
        if (!Sys.TryWriteFile(path, "1", out var errno))
            throw new InstanceException($"NIC host end {hostName}: setting {path} failed: {Errors.Describe(errno)}");
    }

    static void RoutedHostEnd(NicSpec n)
    {
        var conf = $"/proc/sys/net/ipv4/conf/{n.HostName}/";
        // Strict reverse-path filtering: the instance cannot send from an address the host does not route to it.
        // route_localnet: published ports on 127.0.0.1 reach it (the table's guard drops its own packets to 127/8).
        foreach (var (key, value) in new[] { ("rp_filter", "1"), ("route_localnet", "1") })
            if (!Sys.TryWriteFile(conf + key, value, out var errno))
                throw new InstanceException($"routed NIC {n.Name}: setting {conf}{key} failed: " +
                    $"{Errors.Describe(errno)}");
        _host!.SetUp(n.HostName, true);
        if (n.Ipv4 is { } a4)
            _host.AddRoute(IPAddress.Parse(a4[..a4.IndexOf('/')]), 32, null, n.HostName);
    }

    static void AddAddress(INetLinks links, string dev, string cidr)
    {
        var slash = cidr.IndexOf('/');
        links.AddAddress(dev, IPAddress.Parse(cidr[..slash]), int.Parse(cidr[(slash + 1)..],
            System.Globalization.CultureInfo.InvariantCulture));
    }
}
