using System.CommandLine;
using System.Text;
using System.Text.Json;
using Hull.Api;

namespace Hull.Cli;

/// <summary>network: managed bridge networks (Incus's keys: ipv4.address, ipv4.nat, ipv6.address, ipv6.nat,
/// dns.domain, bridge.mtu, ipv4.dhcp.ranges).</summary>
public static partial class CliApp
{
    static Command NetworkCommand()
    {
        var network = new Command("network", "Manage networks: bridges with NAT, DNS (NAME.hull) and DHCP");
        {
            var list = new Command("list", "List networks");
            Act(list, async (pr, c, ct) =>
            {
                var ns = await c.ListNetworksAsync(ct);
                if (Output.Structured(Format(pr), ns, Output.Pretty.ListNetwork, Out)) return 0;
                Output.Table(Out, ["NAME", "TYPE", "IPV4", "IPV6", "DESCRIPTION", "USED BY", "STATE"],
                    ns.Select(n => new[] { n.Name, n.Type, n.Config.GetValueOrDefault("ipv4.address", ""),
                        n.Config.GetValueOrDefault("ipv6.address", ""), n.Description, n.UsedBy.Count.ToString(),
                        n.Status == "Created" ? "CREATED" : $"ERRORED: {n.StatusMessage}" }));
                return 0;
            });
            network.Subcommands.Add(list);
        }
        {
            var name = new Argument<string>("name");
            var kv = new Argument<string[]>("key=value") { Arity = ArgumentArity.ZeroOrMore,
                Description = "ipv4.address=auto|CIDR|none ipv4.nat=true ipv6.address=auto|CIDR|none dns.domain=hull" };
            var desc = new Option<string>("--description") { Description = "Description" };
            var create = new Command("create", "Create a network (a free private subnet is chosen when none is given)")
                { name, kv, desc };
            Act(create, async (pr, c, ct) =>
            {
                var n = await c.CreateNetworkAsync(new NetworkCreateRequest { Name = pr.GetValue(name)!,
                    Config = KeyValues(pr.GetValue(kv), "config"), Description = pr.GetValue(desc) ?? "" }, ct);
                Out.WriteLine($"Network {n.Name} created (ipv4.address {n.Config.GetValueOrDefault("ipv4.address")}" +
                    $", ipv6.address {n.Config.GetValueOrDefault("ipv6.address")})");
                return 0;
            });
            network.Subcommands.Add(create);
        }
        {
            var name = new Argument<string>("name");
            var show = new Command("show", "Show a network's config") { name };
            Act(show, async (pr, c, ct) =>
            {
                var n = await c.GetNetworkAsync(pr.GetValue(name)!, ct);
                Output.Structured(Format(pr) == "table" ? "yaml" : Format(pr), n, Output.Pretty.Network, Out);
                return 0;
            });
            network.Subcommands.Add(show);
        }
        {
            var name = new Argument<string>("name");
            var info = new Command("info", "Show a network's live state: addresses, counters, attached interfaces")
                { name };
            Act(info, async (pr, c, ct) =>
            {
                var st = await c.GetNetworkStateAsync(pr.GetValue(name)!, ct);
                if (Format(pr) != "table") { Output.Structured(Format(pr), st, Output.Pretty.NetworkState, Out);
                    return 0; }
                var sb = new StringBuilder();
                sb.AppendLine($"Name: {pr.GetValue(name)}");
                sb.AppendLine($"MAC address: {st.Hwaddr}");
                sb.AppendLine($"MTU: {st.Mtu}");
                sb.AppendLine($"State: {st.State}");
                sb.AppendLine($"Type: {st.Type}");
                sb.AppendLine("IP addresses:");
                foreach (var a in st.Addresses) sb.AppendLine($"  {a.Family}\t{a.Address}/{a.Netmask} ({a.Scope})");
                sb.AppendLine("Network usage:");
                sb.AppendLine($"  Bytes received: {st.Counters.BytesReceived}");
                sb.AppendLine($"  Bytes sent: {st.Counters.BytesSent}");
                sb.AppendLine($"  Packets received: {st.Counters.PacketsReceived}");
                sb.AppendLine($"  Packets sent: {st.Counters.PacketsSent}");
                sb.AppendLine($"Attached interfaces: {string.Join(", ", st.UpperDevices)}");
                sb.AppendLine($"DNS/DHCP (dnsmasq): {(st.DnsmasqPid is { } p ? $"pid {p}" : "not running")}");
                Out.Write(sb.ToString());
                return 0;
            });
            network.Subcommands.Add(info);
        }
        {
            var name = new Argument<string>("name");
            var kv = new Argument<string[]>("key=value") { Arity = ArgumentArity.OneOrMore };
            var set = new Command("set", "Set network config keys") { name, kv };
            Act(set, async (pr, c, ct) =>
            {
                await c.PatchNetworkAsync(pr.GetValue(name)!, new NetworkPut
                    { Config = KeyValues(pr.GetValue(kv), "config") }, ct);
                return 0;
            });
            network.Subcommands.Add(set);
        }
        {
            var name = new Argument<string>("name");
            var keys = new Argument<string[]>("keys") { Arity = ArgumentArity.OneOrMore };
            var unset = new Command("unset", "Remove network config keys (back to their defaults)") { name, keys };
            Act(unset, async (pr, c, ct) =>
            {
                var n = await c.GetNetworkAsync(pr.GetValue(name)!, ct);
                foreach (var k in pr.GetValue(keys)!)
                    if (!n.Config.Remove(k))
                        throw new CliException($"config key '{k}' is not set on network '{n.Name}'");
                await c.UpdateNetworkAsync(n.Name, new NetworkPut { Config = n.Config, Description = n.Description },
                    ct);
                return 0;
            });
            network.Subcommands.Add(unset);
        }
        {
            var name = new Argument<string>("name");
            var edit = new Command("edit", "Edit a network's description and config as JSON with $EDITOR") { name };
            Act(edit, async (pr, c, ct) =>
            {
                var n = await c.GetNetworkAsync(pr.GetValue(name)!, ct);
                var put = new NetworkPut { Config = n.Config, Description = n.Description };
                var next = await EditJsonAsync(put, Output.Pretty.NetworkPut, n.Name + ".json", ct);
                await c.UpdateNetworkAsync(n.Name, next, ct);
                return 0;
            });
            network.Subcommands.Add(edit);
        }
        {
            var name = new Argument<string>("name");
            var del = new Command("delete", "Delete a network no instance or profile uses") { name };
            Act(del, async (pr, c, ct) => { await c.DeleteNetworkAsync(pr.GetValue(name)!, ct); return 0; });
            network.Subcommands.Add(del);
        }
        {
            var name = new Argument<string>("name");
            var leases = new Command("list-leases", "List the addresses instances hold on a network") { name };
            Act(leases, async (pr, c, ct) =>
            {
                var ls = await c.ListNetworkLeasesAsync(pr.GetValue(name)!, ct);
                if (Output.Structured(Format(pr), ls, Output.Pretty.ListNetworkLease, Out)) return 0;
                Output.Table(Out, ["HOSTNAME", "MAC ADDRESS", "IP ADDRESS", "TYPE"],
                    ls.Select(l => new[] { l.Hostname, l.Hwaddr, l.Address, l.Type.ToUpperInvariant() }));
                return 0;
            });
            network.Subcommands.Add(leases);
        }
        return network;
    }
}
