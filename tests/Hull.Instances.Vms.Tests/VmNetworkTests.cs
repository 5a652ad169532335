using System.Net;
using System.Net.Sockets;
using Hull.TestSupport;
using Xunit;

namespace Hull.Instances.Vms.Tests;

/// <summary>
/// A VM on a managed network, for real under TCG: a tap in the bridge and a virtio-net NIC with the MAC hulld keeps;
/// the guest gets the address hulld keeps for it by DHCP, is reached from the host directly and through a published
/// port, and a container on the same network finds it by name. Every packet goes to addresses the test's hulld made.
/// </summary>
public sealed class VmNetworkTests
{
    static void Ok((int Code, string Out, string Err) r, string what) =>
        Assert.True(r.Code == 0, $"{what} failed ({r.Code}): {r.Out} {r.Err}");

    static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        var port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    static async Task<string> RetryGet(HttpClient http, string url)
    {
        for (var i = 0; ; i++)
        {
            try { return await http.GetStringAsync(url); }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException && i < 100)
            {
                await Task.Delay(200);
            }
        }
    }

    [SkippableFact]
    public async Task A_vm_gets_its_address_by_dhcp_and_is_reached_by_the_host_a_published_port_and_a_container()
    {
        var net = $"hvn{Random.Shared.Next(0x1000, 0xffff):x4}";
        using var d = new VmDaemon(defaultNetwork: net);
        var port = FreePort();
        Ok(d.Cli("launch", "busybox", "v1", "--vm", "-c", "limits.memory=192MiB", "-p", $"{port}:8080"), "launch v1");
        var lease = (await d.Client.ListNetworkLeasesAsync(net)).First(l =>
            l.Hostname == "v1" && l.Address.Contains('.'));
        var mac = (await d.Client.GetInstanceAsync("v1")).Config["volatile.eth0.hwaddr"];

        // The guest's DHCP client gets the address hulld keeps for its NIC (dnsmasq's dhcp-host for its MAC).
        var addr = "";
        for (var i = 0; i < 150 && !addr.Contains($"inet {lease.Address}/", StringComparison.Ordinal); i++)
        {
            addr = (await d.Client.ExecAsync("v1", "ip", "-4", "addr", "show", "eth0")).Stdout;
            await Task.Delay(200);
        }
        Assert.Contains($"inet {lease.Address}/", addr);
        Assert.Contains(mac, (await d.Client.ExecAsync("v1", "cat", "/sys/class/net/eth0/address")).Stdout);
        Assert.Contains("search hull", (await d.Client.ExecAsync("v1", "cat", "/etc/resolv.conf")).Stdout);

        // A server in the guest: the host reaches it directly and through the published port on 127.0.0.1.
        var httpd = await d.Client.ExecAsync("v1", "httpd", "-p", "8080", "-h", "/etc");
        Assert.True(httpd.ExitCode == 0, httpd.Stderr);
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        Assert.Equal("v1\n", await RetryGet(http, $"http://{lease.Address}:8080/hostname"));
        Assert.Equal("v1\n", await RetryGet(http, $"http://127.0.0.1:{port}/hostname"));

        // A container on the same network finds the VM by name and fetches from it.
        Ok(d.Cli("launch", "busybox", "c1", "--", "sleep", "1000"), "launch c1");
        var fetch = d.Cli("exec", "c1", "--", "/bin/sh", "-c",
            "a=$(nslookup v1.hull | sed -n 's/^Address: *\\([0-9.]*\\)$/\\1/p' | tail -n 1); " +
            "wget -q -O - http://$a:8080/hostname");
        Ok(fetch, "wget from the container");
        Assert.Equal("v1\n", fetch.Out);

        // Its NIC is one tap in the network's bridge; stopped, the tap goes.
        using var links = Hull.Linux.Net.Rtnl.Open();
        var bridge = links.Link(net)!.Index;
        var taps = links.Links().Where(l => l.Master == bridge && l.Kind == "tun").Select(l => l.Name).ToList();
        Assert.Single(taps);
        Ok(d.Cli("stop", "v1", "--force"), "stop v1");
        Assert.DoesNotContain(links.Links(), l => taps.Contains(l.Name));
        await d.Client.DeleteInstanceAsync("c1", force: true);
        await d.Client.DeleteInstanceAsync("v1", force: true);
    }
}
