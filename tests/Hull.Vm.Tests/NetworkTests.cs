using System.Diagnostics;
using System.Net;
using Hull.TestSupport;
using Xunit;

namespace Hull.Vm.Tests;

/// <summary>
/// A VM's NIC for real: a virtio-net device on a host tap in a bridge the test makes, with dnsmasq on the bridge as
/// hulld runs it. The default image's guest gets its reserved address, route and resolver by DHCP at boot, the host
/// reaches a server in the guest, and the guest reaches the host and resolves its own name. Traffic stays on the
/// test's own bridge.
/// </summary>
public sealed class NetworkTests
{
    static string Ip(params string[] args) => RegistryTestUtil.Run("ip", args);

    /// <summary>A 10.251.N.0/24 that no address or route of the host uses.</summary>
    static string FreeSubnet()
    {
        var used = Ip("-4", "route", "show", "table", "all") + Ip("-4", "addr");
        for (var n = Random.Shared.Next(1, 250); ; n = n % 250 + 1)
            if (!used.Contains($"10.251.{n}.", StringComparison.Ordinal)) return $"10.251.{n}";
    }

    [SkippableFact]
    public async Task The_guest_gets_its_address_by_dhcp_and_reaches_and_is_reached_through_a_bridge()
    {
        TestImages.RequireVmHost();
        Requires.Program("dnsmasq");
        var image = await TestImages.ImageAsync();
        var id = Guid.NewGuid().ToString("N")[..6];
        string br = "hvtbr" + id, tap = "hvttap" + id, net = FreeSubnet(), gw = net + ".1", guest = net + ".77";
        var mac = $"00:16:3e:{id[..2]}:{id[2..4]}:{id[4..6]}";
        await using var dir = new VmDir();
        Process? dnsmasq = null;
        try
        {
            Ip("link", "add", br, "type", "bridge");
            Ip("addr", "add", gw + "/24", "dev", br);
            Ip("link", "set", br, "up");
            Ip("tuntap", "add", "dev", tap, "mode", "tap");
            Ip("link", "set", tap, "master", br, "up");
            var psi = new ProcessStartInfo(Requires.Program("dnsmasq")) { RedirectStandardError = true };
            foreach (var a in new[] { "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                         "--bind-interfaces", $"--interface={br}", "--except-interface=lo", $"--listen-address={gw}",
                         $"--dhcp-range={net}.50,{net}.60,255.255.255.0,1h", $"--dhcp-host={mac},{guest}",
                         "--domain=hulltest", "--local=/hulltest/", $"--dhcp-leasefile={dir.Sub("leases")}",
                         "--pid-file=" })
                psi.ArgumentList.Add(a);
            dnsmasq = Process.Start(psi)!;

            var c = image.ToConfig("net1");
            c.Hostname = "hullnet";
            c.Nics.Add(new NicConfig { Tap = tap, Mac = mac, Id = "net0" });
            var vm = await Vm.CreateAsync(dir.Sub("net1"), c, TestImages.Host);
            await vm.StartAsync();
            await using var agent = await TestImages.AgentAsync(vm);

            // DHCP runs in the background at boot: wait for the lease.
            var addr = "";
            for (var i = 0; i < 100 && !addr.Contains(guest + "/24", StringComparison.Ordinal); i++)
            {
                addr = (await TestImages.ExecAsync(agent, "ip", "-4", "addr", "show", "eth0")).Out;
                await Task.Delay(200);
            }
            Assert.Contains($"inet {guest}/24", addr);
            Assert.Contains(mac, (await TestImages.ExecAsync(agent, "cat", "/sys/class/net/eth0/address")).Out);
            Assert.Contains($"default via {gw}", (await TestImages.ExecAsync(agent, "ip", "route")).Out);
            var resolv = (await TestImages.ExecAsync(agent, "cat", "/etc/resolv.conf")).Out;
            Assert.Contains($"nameserver {gw}", resolv);
            Assert.Contains("search hulltest", resolv);

            // The guest reaches the host, and the host's DNS knows the guest by the name it sent.
            Assert.Equal(0, (await TestImages.ExecAsync(agent, "ping", "-c", "1", "-W", "5", gw)).Code);
            var lookup = await TestImages.ExecAsync(agent, "nslookup", "hullnet.hulltest", gw);
            Assert.True(lookup.Out.Contains(guest, StringComparison.Ordinal), lookup.Out + lookup.Err);

            // The host reaches a server in the guest.
            var httpd = await TestImages.ExecAsync(agent, "httpd", "-p", "8080", "-h", "/etc");
            Assert.True(httpd.Code == 0, httpd.Err);
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(20) };
            Assert.Equal("hullnet\n", await http.GetStringAsync($"http://{guest}:8080/hostname"));
            await vm.KillAsync();
        }
        finally
        {
            if (dnsmasq is { HasExited: false }) { dnsmasq.Kill(); dnsmasq.WaitForExit(); }
            dnsmasq?.Dispose();
            foreach (var l in new[] { tap, br })
                try { Ip("link", "del", l); } catch (Exception) { }
        }
    }
}
