using System.Net;
using System.Net.Sockets;
using System.Text;
using Hull.Api;
using Hull.Linux;
using Hull.Linux.Net;
using Hull.Sdk;
using Hull.TestSupport;
using Xunit;

namespace Hull.Instances.Containers.Tests;

/// <summary>
/// Managed networks for real: a bridge with NAT and dnsmasq, containers with a veth each, names that resolve. Every
/// packet goes to addresses the test made: the bridge, the containers, and an "outside" network namespace of its own.
/// Each test's hulld makes its own default network (a unique name), deleted at the end.
/// </summary>
public sealed class NetworkTests
{
    static void Ok((int Code, string Out, string Err) r, string what) =>
        Assert.True(r.Code == 0, $"{what} failed ({r.Code}): {r.Out} {r.Err}");

    static string NetName() => $"hnt{Random.Shared.Next(0x1000, 0xffff):x4}";

    const string Httpd =
        "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";

    static (int Code, string Out, string Err) Exec(ContainerDaemon d, string name, string script) =>
        d.Cli("exec", name, "--", "/bin/sh", "-c", script);

    static Cidr Subnet(Network n)
    {
        Assert.True(Cidr.TryParse(n.Config["ipv4.address"], out var c), n.Config["ipv4.address"]);
        return c;
    }

    static async Task<IPAddress> AddressOf(ContainerDaemon d, string instance, string network)
    {
        var l = (await d.Client.ListNetworkLeasesAsync(network)).First(l => l.Hostname == instance &&
            l.Address.Contains('.'));
        return IPAddress.Parse(l.Address);
    }

    [SkippableFact]
    public async Task A_container_gets_an_address_a_route_a_resolver_and_reaches_others_by_name()
    {
        var net = NetName();
        using var d = new ContainerDaemon(defaultNetwork: net);
        var c = d.Client;
        var n = await c.GetNetworkAsync(net);
        var subnet = Subnet(n);
        Assert.Equal(24, subnet.Prefix);
        Assert.StartsWith("10.", subnet.Address.ToString());
        Assert.Equal("Created", n.Status);
        var def = await c.GetProfileAsync("default");
        Assert.Equal("nic", def.Devices["eth0"]["type"]);
        Assert.Equal(net, def.Devices["eth0"]["network"]);

        Ok(d.Cli("launch", "busybox", "web", "--", "/bin/sh", "-c", Httpd), "launch web");
        Ok(d.Cli("launch", "busybox", "cli", "--", "/bin/sh", "-c", "exec sleep 1000"), "launch cli");
        var web = await AddressOf(d, "web", net);
        Assert.True(subnet.Contains(web), $"{web} is not in {subnet}");

        var addr = Exec(d, "web", "ip -4 addr show eth0; ip -4 route; cat /etc/resolv.conf; cat /etc/hosts");
        Ok(addr, "ip addr");
        Assert.Contains($"inet {web}/24", addr.Out);
        Assert.Contains($"default via {subnet.Address} dev eth0", addr.Out);
        Assert.Contains($"nameserver {subnet.Address}", addr.Out);
        Assert.Contains("search hull", addr.Out);
        Assert.Contains($"{web}\tweb.hull web", addr.Out);
        // Its MAC is the one hulld keeps for it.
        var inst = await c.GetInstanceAsync("web");
        var mac = inst.Config["volatile.eth0.hwaddr"];
        Assert.Contains(mac, Exec(d, "web", "cat /sys/class/net/eth0/address").Out);

        // The host reaches it on the bridge.
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(20) };
        Assert.Equal("hello-from-web\n", await RetryGet(http, $"http://{web}/"));
        // Another container reaches it by NAME.hull and by NAME, through dnsmasq at the gateway.
        // (busybox-static's wget cannot resolve names itself, glibc's static NSS crashes it, nor take -T; its
        // nslookup asks the resolver from /etc/resolv.conf directly.)
        var byName = Exec(d, "cli", "for n in web.hull web; do " +
            "a=$(nslookup $n | sed -n 's/^Address: *\\([0-9.]*\\)$/\\1/p'); wget -q -O - http://$a/ || exit 1; done");
        Ok(byName, "wget by name");
        Assert.Equal("hello-from-web\nhello-from-web\n", byName.Out);
        // The host can ask the network's DNS too.
        var dig = RunHost("/bin/busybox", "nslookup", "web.hull", subnet.Address.ToString());
        Assert.Contains(web.ToString(), dig);

        // Leases: both instances, allocated; their addresses stay across a restart.
        var leases = d.Cli("network", "list-leases", net);
        Ok(leases, "list-leases");
        Assert.Contains("web", leases.Out);
        Assert.Contains("cli", leases.Out);
        Ok(d.Cli("restart", "web", "--force"), "restart web");
        Assert.Equal(web, await AddressOf(d, "web", net));
        Assert.Contains(mac, Exec(d, "web", "cat /sys/class/net/eth0/address").Out);

        // A network in use cannot go.
        var del = d.Cli("network", "delete", net);
        Assert.NotEqual(0, del.Code);
        Assert.Contains("in use by", del.Err);
        Assert.Contains("instance web", del.Err);
        Assert.Contains("profile default", del.Err);
        // A copy gets a MAC and an address of its own.
        Ok(d.Cli("stop", "cli", "--force"), "stop cli");
        Ok(d.Cli("copy", "cli", "cli2"), "copy");
        Ok(d.Cli("start", "cli2"), "start cli2");
        var copy = await c.GetInstanceAsync("cli2");
        Assert.NotEqual((await c.GetInstanceAsync("cli")).Config["volatile.eth0.hwaddr"],
            copy.Config["volatile.eth0.hwaddr"]);
        Assert.NotEqual((await c.GetInstanceAsync("cli")).Config["volatile.eth0.ipv4.address"],
            copy.Config["volatile.eth0.ipv4.address"]);
    }

    static async Task<string> RetryGet(HttpClient http, string url)
    {
        for (var i = 0; ; i++)
        {
            try { return await http.GetStringAsync(url); }
            catch (HttpRequestException) when (i < 50) { await Task.Delay(100); }
        }
    }

    static string RunHost(string program, params string[] args) =>
        HostProgram.Run(program, args, new HostProgramOptions { Timeout = TimeSpan.FromSeconds(20) });

    [SkippableFact]
    public async Task Outbound_traffic_is_masqueraded_to_an_outside_namespace_and_stops_without_nat()
    {
        var net = NetName();
        using var d = new ContainerDaemon(defaultNetwork: net);
        var subnet = Subnet(await d.Client.GetNetworkAsync(net));
        using var links = Rtnl.Open();
        using var outside = NetNs.Create();
        // An outside network: a veth to a namespace of the test's own, 10.253.X.0/24, no route back to the bridge.
        var x = Random.Shared.Next(1, 250);
        if (subnet.Contains(IPAddress.Parse($"10.253.{x}.1"))) x = (x + 1) % 250;
        var hostSide = $"hlo{Random.Shared.Next(0x1000, 0xffff):x4}";
        IPAddress hostAddr = IPAddress.Parse($"10.253.{x}.1"), outAddr = IPAddress.Parse($"10.253.{x}.2");
        try
        {
            links.CreateVeth(hostSide, "eth0", 0, outside);
            links.AddAddress(hostSide, hostAddr, 24);
            links.SetUp(hostSide, true);
            using (var inside = Rtnl.OpenIn(outside))
            {
                inside.AddAddress("eth0", outAddr, 24);
                inside.SetUp("eth0", true);
                inside.SetUp("lo", true);
            }
            using var listener = NetNs.In(outside, () =>
            {
                var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                s.Bind(new IPEndPoint(outAddr, 8000));
                s.Listen();
                return s;
            });
            // It answers every request with the address it saw the request come from.
            var serving = Task.Run(() =>
            {
                while (true)
                {
                    Socket conn;
                    try { conn = listener.Accept(); } catch (SocketException) { return; }
                    catch (ObjectDisposedException) { return; }
                    using (conn)
                    {
                        var buf = new byte[4096];
                        try { conn.Receive(buf); } catch (SocketException) { continue; }
                        var from = ((IPEndPoint)conn.RemoteEndPoint!).Address.ToString();
                        conn.Send(Encoding.ASCII.GetBytes($"HTTP/1.0 200 OK\r\nContent-Length: {from.Length + 1}\r\n" +
                            $"\r\n{from}\n"));
                    }
                }
            });

            Ok(d.Cli("launch", "busybox", "c1", "--", "/bin/sh", "-c", "exec sleep 1000"), "launch");
            var r = Exec(d, "c1", $"wget -q -O - http://{outAddr}:8000/");
            Ok(r, "wget outside");
            Assert.Equal($"{hostAddr}\n", r.Out); // masqueraded: the outside saw the host, not 10.x

            Ok(d.Cli("network", "set", net, "ipv4.nat=false"), "nat off");
            var noNat = Exec(d, "c1", $"timeout 3 wget -q -O - http://{outAddr}:8000/");
            Assert.NotEqual(0, noNat.Code); // the outside has no route back to the bridge's subnet
            Ok(d.Cli("network", "set", net, "ipv4.nat=true"), "nat on");
            Ok(Exec(d, "c1", $"wget -q -O - http://{outAddr}:8000/"), "wget with nat again");
            listener.Close();
            await serving;
        }
        finally { if (links.Link(hostSide) is not null) links.DeleteLink(hostSide); }
    }

    static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Any, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    [SkippableFact]
    public async Task A_published_port_reaches_the_container_from_outside_the_host_and_127_0_0_1()
    {
        var net = NetName();
        using var d = new ContainerDaemon(defaultNetwork: net);
        var c = d.Client;
        var port = FreePort();
        Ok(d.Cli("launch", "busybox", "web", "-p", $"{port}:80", "--", "/bin/sh", "-c", Httpd), "launch -p");
        var web = await AddressOf(d, "web", net);
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(20) };
        // The host's own traffic: 127.0.0.1 and a host address.
        Assert.Equal("hello-from-web\n", await RetryGet(http, $"http://127.0.0.1:{port}/"));
        var list = d.Cli("list");
        Assert.Contains($"{port}->80/tcp", list.Out);
        Assert.Contains(web.ToString(), list.Out);
        Assert.Contains($"eth0 inet {web}/24 ({net})", d.Cli("info", "web").Out);
        // Another instance on the bridge through the published port at the gateway (hairpin).
        var gw = Subnet(await c.GetNetworkAsync(net)).Address;
        Ok(d.Cli("launch", "busybox", "c2", "--", "/bin/sh", "-c", "exec sleep 1000"), "launch c2");
        var hairpin = Exec(d, "c2", $"wget -q -O - http://{gw}:{port}/");
        Ok(hairpin, "wget through the gateway's published port");
        Assert.Equal("hello-from-web\n", hairpin.Out);

        // Outside traffic: a client in a namespace of the test's own, through a veth to the host.
        using var links = Rtnl.Open();
        using var outside = NetNs.Create();
        var x = Random.Shared.Next(1, 250);
        var hostSide = $"hlo{Random.Shared.Next(0x1000, 0xffff):x4}";
        IPAddress hostAddr = IPAddress.Parse($"10.252.{x}.1"), outAddr = IPAddress.Parse($"10.252.{x}.2");
        try
        {
            links.CreateVeth(hostSide, "eth0", 0, outside);
            links.AddAddress(hostSide, hostAddr, 24);
            links.SetUp(hostSide, true);
            using (var inside = Rtnl.OpenIn(outside))
            {
                inside.AddAddress("eth0", outAddr, 24);
                inside.SetUp("eth0", true);
            }
            var page = NetNs.In(outside, () =>
            {
                using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                s.ConnectAsync(new IPEndPoint(hostAddr, port)).Wait(TimeSpan.FromSeconds(10));
                s.Send(Encoding.ASCII.GetBytes("GET / HTTP/1.0\r\n\r\n"));
                var buf = new byte[4096];
                var sb = new StringBuilder();
                int n;
                while ((n = s.Receive(buf)) > 0) sb.Append(Encoding.ASCII.GetString(buf, 0, n));
                return sb.ToString();
            });
            Assert.EndsWith("hello-from-web\n", page);
        }
        finally { if (links.Link(hostSide) is not null) links.DeleteLink(hostSide); }

        // A port taken is refused when it is added, naming the owner: another instance, a host process.
        var twice = d.Cli("launch", "busybox", "web2", "-p", $"{port}:80");
        Assert.NotEqual(0, twice.Code);
        Assert.Contains($"tcp port {port} is already published by instance 'web'", twice.Err);
        var hostPort = FreePort();
        using (var held = new TcpListener(IPAddress.Any, hostPort))
        {
            held.Start();
            var busy = d.Cli("launch", "busybox", "web3", "-p", $"{hostPort}:80");
            Assert.NotEqual(0, busy.Code);
            Assert.Contains($"tcp port {hostPort} is already in use on the host", busy.Err);
            Assert.Contains($"(pid {System.Environment.ProcessId})", busy.Err);
        }
        var range = d.Cli("launch", "busybox", "web4", "-p", "70000:80");
        Assert.NotEqual(0, range.Code);
        Assert.Contains("ports from 1 to 65535", range.Err);
        Assert.DoesNotContain((await c.ListInstancesAsync()).Select(i => i.Name), n => n is "web2" or "web3" or
            "web4");

        // Stopped: the forward goes with it.
        Ok(d.Cli("stop", "web", "--force"), "stop");
        Assert.DoesNotContain($"dport {port}", RunHost("nft", "list", "table", "inet", $"hull.{net}"));
        Ok(d.Cli("start", "web"), "start");
        Assert.Contains($"dport {port}", RunHost("nft", "list", "table", "inet", $"hull.{net}"));
        Assert.Equal("hello-from-web\n", await RetryGet(http, $"http://127.0.0.1:{port}/"));
    }

    /// <summary>Sends a UDP datagram to 127.0.0.1:PORT as raw Ethernet frames to the gateway's MAC (argv: ifname,
    /// gateway MAC, source IPv4, port, own MAC): what a process with CAP_NET_RAW in a container's namespace can do.
    /// </summary>
    const string LoopbackSpoofer = """
        #include <arpa/inet.h>
        #include <linux/if_packet.h>
        #include <net/if.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        #include <sys/socket.h>
        #include <unistd.h>
        static unsigned short csum(unsigned char *p, int n) {
            unsigned long s = 0; for (int i = 0; i < n; i += 2) s += (p[i] << 8) | p[i + 1];
            while (s >> 16) s = (s & 0xffff) + (s >> 16); return (unsigned short)~s;
        }
        int main(int argc, char **argv) {
            if (argc != 6) return 2;
            int fd = socket(AF_PACKET, SOCK_RAW, htons(0x0800)); if (fd < 0) { perror("socket"); return 1; }
            unsigned char f[64] = {0}; unsigned int m[6];
            sscanf(argv[2], "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
            for (int i = 0; i < 6; i++) f[i] = m[i];
            sscanf(argv[5], "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
            for (int i = 0; i < 6; i++) f[6 + i] = m[i];
            f[12] = 0x08; f[13] = 0x00;
            unsigned char *ip = f + 14; ip[0] = 0x45; ip[3] = 20 + 8 + 5; ip[8] = 64; ip[9] = 17;
            inet_pton(AF_INET, argv[3], ip + 12); inet_pton(AF_INET, "127.0.0.1", ip + 16);
            unsigned short c = csum(ip, 20); ip[10] = c >> 8; ip[11] = c & 0xff;
            unsigned char *udp = ip + 20; int port = atoi(argv[4]);
            udp[0] = 0x30; udp[1] = 0x39; udp[2] = port >> 8; udp[3] = port & 0xff; udp[5] = 8 + 5;
            memcpy(udp + 8, "spoof", 5);
            struct sockaddr_ll a = {0}; a.sll_family = AF_PACKET; a.sll_ifindex = if_nametoindex(argv[1]);
            a.sll_halen = 6; memcpy(a.sll_addr, f, 6);
            for (int i = 0; i < 5; i++)
                if (sendto(fd, f, 14 + 20 + 8 + 5, 0, (struct sockaddr *)&a, sizeof a) < 0) {
                    perror("send"); return 1;
                }
            puts("sent"); return 0;
        }
        """;

    [SkippableFact]
    public async Task An_instance_cannot_reach_the_hosts_loopback_through_the_bridge()
    {
        Requires.File("/usr/bin/gcc", "gcc");
        var net = NetName();
        using var d = new ContainerDaemon(defaultNetwork: net);
        // route_localnet is on for the bridge once a port is published on it.
        Ok(d.Cli("launch", "busybox", "web", "-p", $"{FreePort()}:80", "--", "/bin/sh", "-c", Httpd), "launch web");
        Ok(d.Cli("launch", "busybox", "evil", "--", "/bin/sh", "-c", "exec sleep 1000"), "launch evil");
        var evil = await AddressOf(d, "evil", net);
        var gwMac = (await d.Client.GetNetworkStateAsync(net)).Hwaddr;
        var bin = Path.Combine(d.Dir, "spoof");
        File.WriteAllText(bin + ".c", LoopbackSpoofer);
        var gcc = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("gcc",
            ["-static", "-O2", "-o", bin, bin + ".c"]) { RedirectStandardError = true })!;
        var err = gcc.StandardError.ReadToEnd();
        gcc.WaitForExit();
        Assert.True(gcc.ExitCode == 0, $"gcc -static: {err}");
        // A host service bound to loopback only.
        using var victim = new UdpClient(new IPEndPoint(IPAddress.Loopback, 0));
        var port = ((IPEndPoint)victim.Client.LocalEndPoint!).Port;
        // Hull's containers lack CAP_NET_RAW by default; one that has it (an image or a privileged container that
        // keeps it) is played by the helper run in the container's network namespace from the host.
        var pid = (await d.Client.GetInstanceAsync("evil")).Pid!.Value;
        var sent = RunHost(Requires.Program("nsenter"), $"--net=/proc/{pid}/ns/net", bin, "eth0", gwMac,
            evil.ToString(), port.ToString(System.Globalization.CultureInfo.InvariantCulture),
            (await d.Client.GetInstanceAsync("evil")).Config["volatile.eth0.hwaddr"]);
        Assert.Contains("sent", sent);
        var got = victim.ReceiveAsync();
        var done = await Task.WhenAny(got, Task.Delay(2000));
        Assert.True(done != got, "a container reached a service bound to the host's 127.0.0.1 through the bridge");
    }

    [SkippableFact]
    public async Task Bad_input_is_refused_before_anything_is_made()
    {
        var net = NetName();
        using var d = new ContainerDaemon(defaultNetwork: net);
        var c = d.Client;
        var subnet = Subnet(await c.GetNetworkAsync(net));
        var before = HostState(net);

        async Task<string> Refused(Func<Task> f)
        {
            var e = await Assert.ThrowsAsync<HullException>(f);
            return e.Message;
        }
        var other = NetName();
        Assert.Contains("overlaps another network's subnet",
            await Refused(() => c.CreateNetworkAsync(new NetworkCreateRequest { Name = other,
                Config = new() { ["ipv4.address"] = $"{Cidr.FromUInt(Cidr.ToUInt(subnet.Network) + 9)}/24" } })));
        using (var links = Rtnl.Open())
        {
            var route = links.Routes(AddressFamily.InterNetwork).First(r => r.Prefix is > 0 and < 31
                && r.OutIndex != links.IndexOf(net));
            var inRoute = Cidr.FromUInt(Cidr.ToUInt(route.Destination) + 1);
            Assert.Contains("overlaps the host route",
                await Refused(() => c.CreateNetworkAsync(new NetworkCreateRequest { Name = other,
                    Config = new() { ["ipv4.address"] = $"{inRoute}/{Math.Max(route.Prefix, 8)}" } })));
        }
        Assert.Contains("is invalid", await Refused(() => c.CreateNetworkAsync(new NetworkCreateRequest
            { Name = other, Config = new() { ["ipv4.address"] = "10.1.2.300/24" } })));
        Assert.Contains("network or broadcast address", await Refused(() => c.CreateNetworkAsync(
            new NetworkCreateRequest { Name = other, Config = new() { ["ipv4.address"] = "10.77.0.0/24" } })));
        Assert.Contains("unknown network key", await Refused(() => c.CreateNetworkAsync(new NetworkCreateRequest
            { Name = other, Config = new() { ["ipv4.adress"] = "auto" } })));
        Assert.Contains("network name", await Refused(() => c.CreateNetworkAsync(new NetworkCreateRequest
            { Name = "a-name-far-too-long" })));
        Assert.Null((await c.ListNetworksAsync()).FirstOrDefault(n => n.Name == other));

        // NICs: a static address outside the subnet, the gateway, another's; a bad MAC; a missing network.
        var outsideAddr = Cidr.FromUInt(Cidr.ToUInt(subnet.Network) + 256);
        var bad = await Refused(() => c.CreateInstanceAsync(new InstanceCreateRequest { Name = "b1",
            Image = "busybox", Start = true, Devices = new() { ["eth0"] = new() { ["type"] = "nic",
                ["network"] = net, ["ipv4.address"] = outsideAddr.ToString() } } }));
        Assert.Contains("outside network", bad);
        Assert.Contains("hwaddr='01:00:5e:00:00:01' is invalid", await Refused(() => c.CreateInstanceAsync(
            new InstanceCreateRequest { Name = "b2", Image = "busybox", Devices = new() { ["eth0"] = new()
                { ["type"] = "nic", ["network"] = net, ["hwaddr"] = "01:00:5e:00:00:01" } } })));
        var missing = await Refused(() => c.CreateInstanceAsync(new InstanceCreateRequest { Name = "b3",
            Image = "busybox", Start = true, Devices = new() { ["eth0"] = new() { ["type"] = "nic",
                ["network"] = "nosuchnet" } } }));
        Assert.Contains("network 'nosuchnet' not found", missing);
        Ok(d.Cli("launch", "busybox", "s1", "--", "/bin/sh", "-c", "exec sleep 1000"), "launch s1");
        var s1 = await AddressOf(d, "s1", net);
        var taken = await Refused(() => c.CreateInstanceAsync(new InstanceCreateRequest { Name = "b4",
            Image = "busybox", Start = true, Devices = new() { ["eth0"] = new() { ["type"] = "nic",
                ["network"] = net, ["ipv4.address"] = s1.ToString() } } }));
        Assert.Contains("already used by instance 's1'", taken);
        foreach (var b in new[] { "b1", "b2", "b3", "b4" })
            try { await c.DeleteInstanceAsync(b, force: true); } catch (HullException) { }
        await c.DeleteInstanceAsync("s1", force: true);
        // Nothing was left of the failed starts.
        Assert.Equal(before, HostState(net));
    }

    /// <summary>
    /// security.mac_filtering / security.ipv4_filtering: a container that takes the MAC or the IPv4 address of another
    /// (stopped) instance reaches nobody with it, while the same change in a container without filtering works (the
    /// control, so that the test can fail). Its own address and MAC keep working under the filter.
    /// </summary>
    [SkippableFact]
    public async Task A_filtered_nic_cannot_reach_anyone_with_another_instances_mac_or_address()
    {
        var net = NetName();
        using var d = new ContainerDaemon(defaultNetwork: net);
        var gw = Subnet(await d.Client.GetNetworkAsync(net)).Address;
        void Boot(string name, string respawn, params string[] nicKeys) => BootSystem(d, name, respawn, nicKeys);
        Boot("web", $"/bin/sh -c '{Httpd}'");
        Boot("victim", "/bin/sleep 1000");
        var victim = await d.Client.GetInstanceAsync("victim");
        var victimIp = victim.Config["volatile.eth0.ipv4.address"];
        var victimMac = victim.Config["volatile.eth0.hwaddr"];
        Ok(d.Cli("stop", "victim", "--force"), "stop victim");
        var web = await AddressOf(d, "web", net);
        Boot("free", "/bin/sleep 1000");
        Boot("boxed", "/bin/sleep 1000", "security.mac_filtering=true", "security.ipv4_filtering=true");
        Assert.Equal("true", (await d.Client.GetInstanceAsync("boxed")).Devices["eth0"]["security.ipv4_filtering"]);

        (int Code, string Out, string Err) Fetch(string who, string change)
        {
            Ok(Exec(d, "web", "ip neigh flush dev eth0 >/dev/null"), "flush web's neighbours");
            return Exec(d, who, $"{change} ip neigh flush dev eth0 >/dev/null; timeout 4 wget -q -O - http://{web}/");
        }
        // Their own MAC and address work, filtered or not.
        foreach (var n in new[] { "free", "boxed" })
            Assert.Equal("hello-from-web\n", Fetch(n, "").Out);
        // Another's MAC: the filtered one reaches nothing (its frames are dropped as they enter the bridge).
        var takeMac = $"ip link set eth0 address {victimMac};";
        Assert.Equal("hello-from-web\n", Fetch("free", takeMac).Out);
        Assert.NotEqual(0, Fetch("boxed", takeMac).Code);
        // Another's IPv4 address (with their own MAC back): the same.
        foreach (var n in new[] { "free", "boxed" })
        {
            var mac = (await d.Client.GetInstanceAsync(n)).Config["volatile.eth0.hwaddr"];
            Ok(Exec(d, n, $"ip link set eth0 address {mac}"), $"{n}: its MAC back");
        }
        var takeIp = $"ip addr flush dev eth0; ip addr add {victimIp}/24 dev eth0; ip route add default via {gw};";
        Assert.Equal("hello-from-web\n", Fetch("free", takeIp).Out);
        Assert.NotEqual(0, Fetch("boxed", takeIp).Code);
        // The gateway (the host's DNS) is not reached with it either.
        Assert.NotEqual(0, Exec(d, "boxed", $"timeout 3 nslookup web.hull {gw}").Code);
    }

    /// <summary>busybox init with an inittab that respawns <paramref name="respawn"/> makes a system container: root
    /// with CAP_NET_ADMIN in its own user namespace, what an attacker needs to change its own MAC and address
    /// (application containers lack it). <paramref name="nicKeys"/> override keys of its eth0.</summary>
    static void BootSystem(ContainerDaemon d, string name, string respawn, params string[] nicKeys)
    {
        Ok(d.Cli("init", "busybox", name), $"init {name}");
        var tab = Path.GetTempFileName();
        File.WriteAllText(tab, $"::respawn:{respawn}\n");
        try { Ok(d.Cli("file", "push", tab, $"{name}/etc/inittab"), "push inittab"); }
        finally { File.Delete(tab); }
        if (nicKeys.Length > 0) Ok(d.Cli(["config", "device", "override", name, "eth0", .. nicKeys]), "override");
        Ok(d.Cli("start", name), $"start {name}");
    }

    /// <summary>The host's count of packets dropped by reverse-path filtering (TcpExt IPReversePathFilter).</summary>
    static long ReversePathDrops()
    {
        var lines = File.ReadAllLines("/proc/net/netstat").Where(l => l.StartsWith("TcpExt:", StringComparison.Ordinal))
            .Select(l => l.Split(' ')).ToList();
        var i = Array.IndexOf(lines[0], "IPReversePathFilter");
        return long.Parse(lines[1][i], System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// nictype=routed: a veth that joins no bridge. The container holds its address alone (/32) with the gateway
    /// on-link; the host routes the address to the veth. It reaches a bridged container by name, the host and the
    /// bridged container reach it (proxy ARP on the bridge), a published port on 127.0.0.1 (added while it runs)
    /// reaches it, and what it sends from an address not its own is dropped by the host's reverse-path filter before
    /// it reaches anyone. Deleting it leaves no route and no veth.
    /// </summary>
    [SkippableFact]
    public async Task A_routed_nic_holds_its_address_alone_reaches_and_is_reached_and_cannot_spoof()
    {
        var net = NetName();
        using var d = new ContainerDaemon(defaultNetwork: net);
        var gw = Subnet(await d.Client.GetNetworkAsync(net)).Address;
        Ok(d.Cli("launch", "busybox", "web", "--", "/bin/sh", "-c", Httpd), "launch web");
        var web = await AddressOf(d, "web", net);
        BootSystem(d, "rt", $"/bin/sh -c '{Httpd}'", "nictype=routed");
        var rt = await AddressOf(d, "rt", net);
        Assert.NotEqual(web, rt);

        var inside = Exec(d, "rt", "ip -4 addr show eth0; ip -4 route");
        Ok(inside, "ip addr");
        Assert.Contains($"inet {rt}/32", inside.Out);
        Assert.Contains($"default via {gw} dev eth0", inside.Out);
        Assert.Contains($"eth0 inet {rt}/32 ({net})", d.Cli("info", "rt").Out);
        var route = RunHost("ip", "-4", "route", "show", $"{rt}/32");
        Assert.Matches(@"dev hv[0-9a-f]{10}", route);
        var hostEnd = route.Split(' ')[2];
        Assert.Null((await d.Client.GetNetworkStateAsync(net)).UpperDevices.FirstOrDefault(u => u == hostEnd));

        // It reaches the bridged container by name, through the gateway's DNS.
        var byName = Exec(d, "rt", "a=$(nslookup web.hull | sed -n 's/^Address: *\\([0-9.]*\\)$/\\1/p'); " +
            "wget -q -O - http://$a/");
        Ok(byName, "wget web by name");
        Assert.Equal("hello-from-web\n", byName.Out);
        // The host and the bridged container reach it.
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(20) };
        Assert.Equal("hello-from-rt\n", await RetryGet(http, $"http://{rt}/"));
        var fromWeb = Exec(d, "web", $"wget -q -O - http://{rt}/");
        Ok(fromWeb, "wget rt from the bridged container");
        Assert.Equal("hello-from-rt\n", fromWeb.Out);
        // A published port on 127.0.0.1.
        var port = FreePort();
        Ok(d.Cli("config", "device", "add", "rt", "http", "proxy", $"listen=tcp:127.0.0.1:{port}",
            "connect=tcp:127.0.0.1:80"), "add proxy");
        Assert.Equal("hello-from-rt\n", await RetryGet(http, $"http://127.0.0.1:{port}/"));

        // Its own address pings the bridged one; with another address of the subnet (the bridged one's, or a free
        // one) its pings to the gateway are dropped on the host end by the reverse-path filter (the host's counter
        // of such drops grows by each of them), so nothing it sends with a borrowed address is answered. The
        // gateway's MAC is pinned first: the host does not answer ARP from a borrowed address either, and the pings
        // must reach it to show the filter.
        Ok(Exec(d, "rt", $"ping -c 1 -W 3 {web}"), "ping with its own address");
        var hostMac = File.ReadAllText($"/sys/class/net/{hostEnd}/address").Trim();
        foreach (var other in new[] { web.ToString(), Cidr.FromUInt(Cidr.ToUInt(rt) + 100).ToString() })
        {
            var drops0 = ReversePathDrops();
            var spoof = Exec(d, "rt", $"ip addr flush dev eth0; ip addr add {other}/32 dev eth0; " +
                $"ip route add {gw} dev eth0; ip route add default via {gw}; arp -s {gw} {hostMac}; " +
                $"ping -c 10 -i 0.2 -W 1 {gw}; " +
                $"ip addr flush dev eth0; ip addr add {rt}/32 dev eth0; ip route add {gw} dev eth0; " +
                $"ip route add default via {gw}");
            Assert.Contains("100% packet loss", spoof.Out);
            var dropped = ReversePathDrops() - drops0;
            Assert.True(dropped >= 10, $"the host's reverse-path filter dropped {dropped} of 10 pings from {other}");
        }
        Ok(Exec(d, "rt", $"ping -c 1 -W 3 {web}"), "ping with its own address again");

        Ok(d.Cli("delete", "--force", "rt"), "delete rt");
        Assert.Equal("", RunHost("ip", "-4", "route", "show", $"{rt}/32").Trim());
        using var links = Rtnl.Open();
        Assert.Null(links.Link(hostEnd));
    }

    /// <summary>A routed NIC takes no filtering keys (its host end filters by route); an unknown nictype is refused.
    /// </summary>
    [SkippableFact]
    public void A_routed_nic_refuses_filter_keys()
    {
        var net = NetName();
        using var d = new ContainerDaemon(defaultNetwork: net);
        Ok(d.Cli("init", "busybox", "c1"), "init");
        var r = d.Cli("config", "device", "override", "c1", "eth0", "nictype=routed", "security.mac_filtering=true");
        Assert.NotEqual(0, r.Code);
        Assert.Contains("security.mac_filtering is for bridged NICs", r.Err);
        r = d.Cli("config", "device", "override", "c1", "eth0", "nictype=switched");
        Assert.NotEqual(0, r.Code);
        Assert.Contains("nictype='switched' is not supported: use bridged (the default) or routed", r.Err);
    }

    /// <summary>What networks leave on the host: veths of instances ("hv…"/"hp…"), Hull's nft tables, dnsmasq
    /// processes of this network.</summary>
    static string HostState(string net)
    {
        using var links = Rtnl.Open();
        var veths = links.Links().Count(l => l.Name.StartsWith("hv", StringComparison.Ordinal)
            || l.Name.StartsWith("hp", StringComparison.Ordinal));
        var tables = RunHost("nft", "list", "tables").Split('\n').Count(t => t.Contains($"hull.{net}"));
        var dnsmasq = Directory.EnumerateDirectories("/proc").Count(p =>
        {
            try { return File.ReadAllText(Path.Combine(p, "cmdline")).Contains($"--interface={net}\0"); }
            catch (IOException) { return false; }
        });
        return $"veths {veths}, tables {tables}, dnsmasq {dnsmasq}";
    }

    [SkippableFact]
    public async Task Networking_survives_hulld_kill_and_is_rebuilt_when_lost_and_nothing_leaks()
    {
        var net = NetName();
        var before = HostState(net).Split(',')[0];
        using (var d = new ContainerDaemon(defaultNetwork: net))
        {
            var c = d.Client;
            var subnet = Subnet(await c.GetNetworkAsync(net));
            Ok(d.Cli("launch", "busybox", "web", "--", "/bin/sh", "-c", Httpd), "launch web");
            var web = await AddressOf(d, "web", net);
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(20) };
            Assert.Equal("hello-from-web\n", await RetryGet(http, $"http://{web}/"));
            var pid = (await c.GetInstanceAsync("web")).Pid;

            // kill -9 of hulld: the container and its network go on; a new hulld finds them.
            d.Kill9();
            Assert.Equal("hello-from-web\n", await RetryGet(http, $"http://{web}/"));
            d.Start();
            Assert.Equal(pid, (await c.GetInstanceAsync("web")).Pid);
            Assert.Equal(web, await AddressOf(d, "web", net));
            Assert.Equal("hello-from-web\n", await RetryGet(http, $"http://{web}/"));

            // dnsmasq killed: started again; names resolve again.
            var st = await c.GetNetworkStateAsync(net);
            Assert.NotNull(st.DnsmasqPid);
            Libc.kill(st.DnsmasqPid!.Value, Signals.SIGKILL);
            await Wait.UntilAsync(async () => (await c.GetNetworkStateAsync(net)).DnsmasqPid is { } p
                && p != st.DnsmasqPid, "dnsmasq to be restarted");
            Assert.Contains(web.ToString(), await RetryLookup("web.hull", subnet.Address));

            // The bridge deleted: made again, with the running container's veth on it; the container answers.
            using (var links = Rtnl.Open()) links.DeleteLink(net);
            await Wait.UntilAsync(async () =>
            {
                try { return (await c.GetNetworkStateAsync(net)).UpperDevices.Count == 1; }
                catch (HullException) { return false; }
            }, "the bridge to be rebuilt");
            Assert.Equal("hello-from-web\n", await RetryGet(http, $"http://{web}/"));

            // Hull's table deleted (only Hull's: other tables on the host are never touched): loaded again.
            RunHost("nft", "delete", "table", "inet", $"hull.{net}");
            await Wait.UntilAsync(() => Task.FromResult(RunHost("nft", "list", "tables").Contains($"hull.{net}")),
                "the nft table to be reloaded");

            // kill -9 in the middle of a launch: whatever it made is cleaned up by the next hulld.
            var launch = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo(d.HostProgram,
                ["cli", "launch", "busybox", "mid", "--", "/bin/sh", "-c", "exec sleep 1000"])
            {
                Environment = { ["HULL_SOCKET"] = d.Socket, ["HULL_CONFIG_DIR"] = Path.Combine(d.Dir, "config") },
                RedirectStandardOutput = true, RedirectStandardError = true,
            })!;
            await Wait.UntilAsync(async () => (await c.ListInstancesAsync()).Any(i => i.Name == "mid")
                || launch.HasExited, "the launch to begin");
            await Task.Delay(Random.Shared.Next(0, 300));
            d.Kill9();
            launch.WaitForExit();
            d.Start();
            foreach (var i in await c.ListInstancesAsync())
                await c.DeleteInstanceAsync(i.Name, force: true);
            Assert.Empty(await c.ListInstancesAsync());
            using (var links = Rtnl.Open())
                Assert.DoesNotContain(links.Links(), l => l.Master == links.IndexOf(net));
        }
        // After the daemon's cleanup (instances, then networks): no veth, table or dnsmasq of it is left.
        Assert.Equal($"{before}, tables 0, dnsmasq 0", HostState(net));
        using (var links = Rtnl.Open()) Assert.Null(links.Link(net));
    }

    static async Task<string> RetryLookup(string name, IPAddress server)
    {
        for (var i = 0; ; i++)
        {
            try { return RunHost("/bin/busybox", "nslookup", name, server.ToString()); }
            catch (HostProgramException) when (i < 50) { await Task.Delay(100); }
        }
    }
}
