using System.Collections;
using System.Globalization;
using System.Net;
using System.Text;
using Hull.Instances;
using Hull.Linux;
using Hull.Linux.Net;

namespace Hull.Daemon.Networks;

/// <summary>An address an instance holds on a network, for DNS (hosts files), the leases list and the NIC's
/// filtering (its security.* keys).</summary>
/// <param name="Dhcp">the NIC asks for its address by DHCP (a VM's): dnsmasq gets a dhcp-host line for it</param>
public sealed record NicLease(string Instance, string Device, string HwAddr, IPAddress? Ipv4, IPAddress? Ipv6,
    bool Static, bool MacFiltering = false, bool Ipv4Filtering = false, bool Dhcp = false);

/// <summary>A published port: host address/port/protocol forwarded to an instance's address and port.</summary>
public sealed record PortForward(string Instance, string Device, string Protocol, IPAddress? ListenAddress,
    int ListenPort, IPAddress Target, int TargetPort);

/// <summary>Anti-spoofing on one instance NIC (Incus's security.mac_filtering / security.ipv4_filtering): frames
/// entering the bridge from its host end must carry its MAC, and with <paramref name="Ipv4Filtering"/> its IPv4
/// address (or none, for DHCP); no VLAN-tagged frames.</summary>
public sealed record NicFilter(string HostInterface, string HwAddr, IPAddress? Ipv4, bool Ipv4Filtering);

/// <summary>
/// The host side of one managed network: the bridge with its gateway addresses (rtnetlink), Hull's own nftables
/// table for it (table inet hull.NAME, replaced whole by one `nft -f` per change, never touching any other table),
/// and its dnsmasq (DNS for NAME.DOMAIN and NAME, DHCP for VMs), run detached so instances keep DNS while hulld
/// restarts, found again by its pid file. Everything is made idempotently: <see cref="Ensure"/> repairs what is
/// missing (a deleted bridge, a flushed table, a killed dnsmasq) without touching running instances' veths.
/// </summary>
public sealed class HostNetwork(string name, string runDir, INetLinks links)
{
    public string Name { get; } = name;
    public string RunDir { get; } = runDir;
    string HostsDir => Path.Combine(RunDir, "hosts");
    /// <summary>One file per instance of dnsmasq dhcp-host lines ("MAC,ADDRESS,NAME"): a VM's DHCP gets the address
    /// hulld keeps for its NIC.</summary>
    string DhcpHostsDir => Path.Combine(RunDir, "dhcp-hosts");
    string PidFile => Path.Combine(RunDir, "dnsmasq.pid");
    public string LeasesFile => Path.Combine(RunDir, "dnsmasq.leases");
    string LogFile => Path.Combine(RunDir, "dnsmasq.log");
    public string Table => $"hull.{Name}";

    /// <summary>Makes (or repairs) the bridge, its addresses, the nft table and dnsmasq.</summary>
    public void Ensure(NetworkSettings s, IReadOnlyList<NicLease> leases, string rules)
    {
        EnsureBridge(s);
        LoadRules(rules);
        WriteHosts(s, leases, signal: false);
        EnsureDnsmasq(s);
    }

    public void EnsureBridge(NetworkSettings s)
    {
        var link = links.Link(Name);
        if (link is not null && link.Kind != "bridge")
            throw new InstanceException($"network '{Name}': the host has an interface named {Name} that is not a " +
                $"bridge ({link.Kind ?? "a device"}): rename the network or remove that interface", 409);
        if (link is null) links.CreateBridge(Name, s.Mtu);
        else if (link.Mtu != s.Mtu) links.SetMtu(Name, s.Mtu);
        var index = links.IndexOf(Name)!.Value;
        var have = links.Addresses().Where(a => a.Index == index).ToList();
        foreach (var want in new[] { s.Ipv4, s.Ipv6 })
        {
            if (want is not { } c) continue;
            if (!have.Any(a => a.Address.Equals(c.Address) && a.Prefix == c.Prefix))
                links.AddAddress(Name, c.Address, c.Prefix);
        }
        // Addresses of an earlier config (ipv4.address changed) go; link-local ones stay.
        foreach (var a in have)
        {
            if (a.Address.IsIPv6LinkLocal) continue;
            if (s.Ipv4 is { } v4 && a.Address.Equals(v4.Address) || s.Ipv6 is { } v6 && a.Address.Equals(v6.Address))
                continue;
            links.DeleteAddress(Name, a.Address, a.Prefix);
        }
        if (link is null || !link.Up) links.SetUp(Name, true);
        if (s.Ipv4 is not null)
        {
            Sys.WriteFile("/proc/sys/net/ipv4/ip_forward", "1");
            // Published ports reach 127.0.0.1 too: the host's own packets to a loopback address may be routed out
            // of the bridge after DNAT (as Podman's netavark does).
            Sys.TryWriteFile($"/proc/sys/net/ipv4/conf/{Name}/route_localnet", "1", out _);
            // Bridged instances reach routed ones (whose /32 routes lead out of other interfaces) by the host's ARP
            // answers on the bridge.
            Sys.TryWriteFile($"/proc/sys/net/ipv4/conf/{Name}/proxy_arp", "1", out _);
        }
        if (s.Ipv6 is not null)
            Sys.TryWriteFile("/proc/sys/net/ipv6/conf/all/forwarding", "1", out _);
    }

    /// <summary>Loads the network's nft tables (from <see cref="RenderRules"/>): the old ones are replaced in the same
    /// transaction.</summary>
    public void LoadRules(string rules) => Nft(rules, $"loading the firewall rules of network '{Name}'");

    /// <summary>"add" first so that the delete cannot fail on a missing table: the whole text is one
    /// transaction.</summary>
    string DropTables => $"add table inet {Table}\ndelete table inet {Table}\n" +
        $"add table bridge {Table}\ndelete table bridge {Table}\n";

    /// <summary>The network's tables: inet hull.NAME (NAT, published ports, the loopback guard) and, when a NIC asks
    /// for filtering, bridge hull.NAME (frames checked as they enter the bridge, before anything routes them).
    /// </summary>
    public string RenderRules(NetworkSettings s, IReadOnlyList<PortForward> ports, IReadOnlyList<NicFilter> filters)
    {
        var br = Name;
        var sb = new StringBuilder(DropTables);
        sb.Append(CultureInfo.InvariantCulture, $"table inet {Table} {{\n");
        sb.Append("  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
        // By destination, not by output interface: a routed NIC's traffic to the subnet leaves through its own veth.
        if (s.Ipv4 is { } v4 && s.Ipv4Nat)
            sb.Append(CultureInfo.InvariantCulture,
                $"    ip saddr {v4.SubnetText} ip daddr != {v4.SubnetText} masquerade\n");
        if (s.Ipv6 is { } v6 && s.Ipv6Nat)
            sb.Append(CultureInfo.InvariantCulture,
                $"    ip6 saddr {v6.SubnetText} oifname != \"{br}\" masquerade\n");
        if (ports.Count > 0 && s.Ipv4 is { } h4)
        {
            sb.Append(CultureInfo.InvariantCulture,
                $"    ip daddr {h4.SubnetText} ip saddr 127.0.0.0/8 masquerade\n");
            // Hairpin: an instance reaching a published port of another on the same network gets the answer back
            // through the host.
            sb.Append(CultureInfo.InvariantCulture,
                $"    ip daddr {h4.SubnetText} ip saddr {h4.SubnetText} ct status dnat masquerade\n");
        }
        sb.Append("  }\n");
        if (ports.Count > 0)
        {
            foreach (var (chain, hook, prio) in new[] { ("prerouting", "prerouting", "dstnat"),
                ("output", "output", "-100") })
            {
                sb.Append(CultureInfo.InvariantCulture,
                    $"  chain {chain} {{\n    type nat hook {hook} priority {prio}; policy accept;\n");
                foreach (var p in ports)
                {
                    var match = p.ListenAddress is { } la && !la.Equals(IPAddress.Any)
                        ? $"ip daddr {la}" : "fib daddr type local";
                    sb.Append(CultureInfo.InvariantCulture,
                        $"    {match} {p.Protocol} dport {p.ListenPort} dnat ip to {p.Target}:{p.TargetPort}\n");
                }
                sb.Append("  }\n");
            }
        }
        // route_localnet (for published ports on 127.0.0.1) would also let an instance send packets to the host's
        // loopback services through the bridge (as CVE-2020-8558 did to Kubernetes): nothing from the bridge to
        // 127.0.0.0/8 is taken, before conntrack (replies to the host's own forwarded connections still carry the
        // bridge's address at that point). Routed NICs' veths ("hv…", route_localnet too) are guarded alike.
        sb.Append(CultureInfo.InvariantCulture, $$"""
              chain guard {
                type filter hook prerouting priority raw; policy accept;
                iifname "{{br}}" ip daddr 127.0.0.0/8 drop
                iifname "hv*" ip daddr 127.0.0.0/8 drop
              }
              chain forward {
                type filter hook forward priority filter; policy accept;
                iifname "{{br}}" accept
                oifname "{{br}}" accept
              }
              chain input {
                type filter hook input priority filter; policy accept;
                iifname "{{br}}" udp dport { 53, 67, 547 } accept
                iifname "{{br}}" tcp dport 53 accept
              }
            }

            """);
        if (filters.Count > 0)
        {
            sb.Append(CultureInfo.InvariantCulture, $"table bridge {Table} {{\n  chain prerouting {{\n");
            sb.Append("    type filter hook prerouting priority filter; policy accept;\n");
            foreach (var f in filters)
            {
                var i = $"iifname \"{f.HostInterface}\"";
                sb.Append(CultureInfo.InvariantCulture, $"    {i} ether saddr != {f.HwAddr} drop\n");
                sb.Append(CultureInfo.InvariantCulture, $"    {i} arp saddr ether != {f.HwAddr} drop\n");
                sb.Append(CultureInfo.InvariantCulture, $"    {i} ether type 8021q drop\n");
                if (!f.Ipv4Filtering) continue;
                // DHCP's discover and request come from 0.0.0.0; nothing else may claim an address not its own.
                sb.Append(CultureInfo.InvariantCulture, $"    {i} ip saddr 0.0.0.0 udp dport 67 accept\n");
                if (f.Ipv4 is { } a)
                {
                    sb.Append(CultureInfo.InvariantCulture, $"    {i} arp saddr ip != {a} drop\n");
                    sb.Append(CultureInfo.InvariantCulture, $"    {i} ip saddr != {a} drop\n");
                }
                else
                {
                    sb.Append(CultureInfo.InvariantCulture, $"    {i} ether type {{ arp, ip }} drop\n");
                }
            }
            sb.Append("  }\n}\n");
        }
        return sb.ToString();
    }

    /// <summary>True if the kernel has this network's table (it is gone after `nft flush ruleset`).</summary>
    public bool HasRules()
    {
        try
        {
            HostProgram.Run("nft", ["list", "table", "inet", Table], new HostProgramOptions
            {
                What = "checking the firewall table", Timeout = TimeSpan.FromSeconds(10),
            });
            return true;
        }
        catch (HostProgramException e) when (e.ExitCode is not null) { return false; }
    }

    public void DeleteRules() => Nft(DropTables, $"removing the firewall rules of network '{Name}'");

    static void Nft(string rules, string what)
    {
        using var stdin = new MemoryStream(Encoding.UTF8.GetBytes(rules));
        HostProgram.Run("nft", ["-f", "-"], new HostProgramOptions
        {
            What = what, Timeout = TimeSpan.FromSeconds(30), Stdin = stdin,
            Error = e => new InstanceException($"{e.Message}; nftables (the nft program) is needed for networks: " +
                "install the nftables package", 500),
        });
    }

    // ---- dnsmasq ----

    List<string> DnsmasqArgs(NetworkSettings s)
    {
        var a = new List<string>
        {
            "--keep-in-foreground", "--conf-file=/dev/null", "--no-hosts", "--strict-order", "--bind-interfaces",
            $"--interface={Name}", "--except-interface=lo", $"--pid-file={PidFile}", $"--hostsdir={HostsDir}",
            $"--dhcp-hostsdir={DhcpHostsDir}",
            $"--dhcp-leasefile={LeasesFile}", $"--log-facility={LogFile}", $"--domain={s.Domain}",
            $"--local=/{s.Domain}/", "--domain-needed", "--expand-hosts", "--user=nobody", "--group=nogroup",
            "--quiet-dhcp", "--quiet-dhcp6", "--quiet-ra",
        };
        if (s.Ipv4 is { } v4)
        {
            a.Add($"--listen-address={v4.Address}");
            foreach (var (first, last) in s.EffectiveDhcpRanges())
                a.Add($"--dhcp-range={first},{last},{Cidr.FromUInt(uint.MaxValue << (32 - v4.Prefix))},1h");
            a.Add("--dhcp-authoritative");
            a.Add("--dhcp-no-override");
        }
        if (s.Ipv6 is { } v6)
        {
            a.Add($"--listen-address={v6.Address}");
            a.Add("--enable-ra");
            a.Add($"--dhcp-range=::,constructor:{Name},ra-stateless,ra-names");
        }
        return a;
    }

    /// <summary>The running dnsmasq of this network, found by its pid file and command line; null if none.</summary>
    public int? DnsmasqPid()
    {
        try
        {
            if (!File.Exists(PidFile)) return null;
            var pid = int.Parse(File.ReadAllText(PidFile).Trim(), CultureInfo.InvariantCulture);
            var cmd = File.ReadAllText($"/proc/{pid}/cmdline");
            return cmd.Contains($"--pid-file={PidFile}\0", StringComparison.Ordinal) ? pid : null;
        }
        catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>Starts dnsmasq if it is not running with this config (a changed config restarts it).</summary>
    public void EnsureDnsmasq(NetworkSettings s)
    {
        var args = DnsmasqArgs(s);
        if (DnsmasqPid() is { } pid)
        {
            string[] running;
            try { running = File.ReadAllText($"/proc/{pid}/cmdline").TrimEnd('\0').Split('\0')[1..]; }
            catch (IOException) { running = []; }
            if (running.SequenceEqual(args)) return;
            StopDnsmasq();
        }
        Directory.CreateDirectory(RunDir);
        Directory.CreateDirectory(HostsDir);
        Directory.CreateDirectory(DhcpHostsDir);
        File.Delete(PidFile);
        SpawnedChild child;
        using (var devnull = Sys.Open("/dev/null", O.RDWR))
        {
            var env = new List<string> { "PATH=/usr/sbin:/usr/bin:/sbin:/bin" };
            var req = new SpawnRequest
            {
                Path = FindDnsmasq(), Argv = ["dnsmasq", .. args], Env = env, Setsid = true,
            };
            req.Fds.AddRange([(devnull, 0), (devnull, 1), (devnull, 2)]);
            try { child = Spawner.Start(req); child.Finish(); }
            catch (SpawnException e) { throw new InstanceException($"network '{Name}': starting dnsmasq: {e.Message}",
                500); }
        }
        var started = child.Pid;
        new Thread(() =>
        {
            try { Sys.WaitPid(started); } catch (LinuxException) { }
            child.Dispose();
        }) { IsBackground = true, Name = "hull-dnsmasq-reap" }.Start();
        // It writes its pid file once it has bound its sockets; a bad config makes it exit at once.
        var deadline = Environment.TickCount64 + 5000;
        while (Environment.TickCount64 < deadline)
        {
            if (DnsmasqPid() is not null) return;
            if (!Sys.ProcessExists(started) || IsZombie(started)) break;
            Thread.Sleep(5);
        }
        var log = File.Exists(LogFile) ? string.Join('\n', File.ReadAllLines(LogFile).TakeLast(3)) : "";
        try { Libc.kill(started, Signals.SIGKILL); } catch (Exception) { }
        throw new InstanceException($"network '{Name}': dnsmasq did not start{(log.Length > 0 ? $": {log}" : "")}",
            500);
    }

    static bool IsZombie(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/stat").Split(") ")[1].StartsWith('Z'); }
        catch (Exception e) when (e is IOException or IndexOutOfRangeException) { return true; }
    }

    static string FindDnsmasq()
    {
        foreach (var d in new[] { "/usr/sbin", "/usr/bin", "/sbin", "/bin" })
            if (File.Exists(Path.Combine(d, "dnsmasq"))) return Path.Combine(d, "dnsmasq");
        throw new InstanceException("dnsmasq is not installed: networks need it for DNS and DHCP; install the " +
            "dnsmasq-base package", 500);
    }

    public void StopDnsmasq()
    {
        if (DnsmasqPid() is not { } pid) return;
        Libc.kill(pid, Signals.SIGTERM);
        for (var i = 0; i < 200 && Sys.ProcessExists(pid) && !IsZombie(pid); i++) Thread.Sleep(10);
        if (Sys.ProcessExists(pid) && !IsZombie(pid)) Libc.kill(pid, Signals.SIGKILL);
        File.Delete(PidFile);
    }

    /// <summary>One hosts file per instance ("ADDRESS NAME.DOMAIN NAME") and one dhcp-host file per instance that
    /// asks DHCP ("MAC,ADDRESS,NAME" per IPv4 NIC). dnsmasq watches both dirs (inotify) and reads new and changed
    /// files itself; it forgets a dhcp-host only on SIGHUP, which re-reads every file, so that is sent only when a
    /// dhcp-host file went or changed (a SIGHUP per launch made dnsmasq the bottleneck at thousands of instances).
    /// </summary>
    public void WriteHosts(NetworkSettings s, IReadOnlyList<NicLease> leases, bool signal = true)
    {
        Directory.CreateDirectory(RunDir);
        Libc.chmod(RunDir, 0b111_101_101);
        var hosts = new Dictionary<string, string>(StringComparer.Ordinal);
        var dhcp = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var g in leases.GroupBy(l => l.Instance))
        {
            var sb = new StringBuilder();
            var db = new StringBuilder();
            foreach (var l in g)
            {
                if (l.Ipv4 is { } a4) sb.Append(CultureInfo.InvariantCulture, $"{a4} {g.Key}.{s.Domain} {g.Key}\n");
                if (l.Ipv6 is { } a6) sb.Append(CultureInfo.InvariantCulture, $"{a6} {g.Key}.{s.Domain} {g.Key}\n");
                if (l.Dhcp && l.Ipv4 is { } d4 && l.HwAddr.Length > 0)
                    db.Append(CultureInfo.InvariantCulture, $"{l.HwAddr},{d4},{g.Key}\n");
            }
            hosts[g.Key] = sb.ToString();
            if (db.Length > 0) dhcp[g.Key] = db.ToString();
        }
        Sync(HostsDir, hosts);
        var replaced = Sync(DhcpHostsDir, dhcp);
        if (signal && replaced && DnsmasqPid() is { } pid) Libc.kill(pid, Signals.SIGHUP);
    }

    /// <summary>What <see cref="Sync"/> last wrote in each dir, with the dir's mtime after it: a dir not changed
    /// since is not read again (a start among thousands of instances would otherwise read a file of each).</summary>
    static readonly Dictionary<string, (DateTime Mtime, Dictionary<string, string> Files)> Written = [];
    static readonly Lock WrittenLock = new();

    /// <summary>Makes <paramref name="dir"/> hold exactly these files (name → text), each written whole by a rename
    /// from a dot file (dnsmasq's directory watch skips those); true if a file was deleted or rewritten (new files
    /// alone give false).</summary>
    static bool Sync(string dir, Dictionary<string, string> want)
    {
        Directory.CreateDirectory(dir);
        Libc.chmod(dir, 0b111_101_101);
        lock (WrittenLock)
        {
            var had = Written.TryGetValue(dir, out var w) && w.Mtime == Directory.GetLastWriteTimeUtc(dir) ? w.Files
                : Directory.GetFiles(dir).ToDictionary(f => Path.GetFileName(f), File.ReadAllText);
            var replaced = false;
            foreach (var name in had.Keys.Where(n => !want.ContainsKey(n)))
            {
                File.Delete(Path.Combine(dir, name));
                replaced = true;
            }
            foreach (var (inst, text) in want)
            {
                var known = had.TryGetValue(inst, out var old);
                if (known && old == text) continue;
                var tmp = Path.Combine(dir, $".{inst}.tmp");
                File.WriteAllText(tmp, text);
                Libc.chmod(tmp, 0b110_100_100);
                File.Move(tmp, Path.Combine(dir, inst), overwrite: true);
                replaced |= known;
            }
            Written[dir] = (Directory.GetLastWriteTimeUtc(dir), want);
            return replaced;
        }
    }

    /// <summary>dnsmasq's DHCP leases: (expiry, MAC, address, hostname).</summary>
    public List<(string Mac, string Address, string Hostname)> DhcpLeases()
    {
        var list = new List<(string, string, string)>();
        if (!File.Exists(LeasesFile)) return list;
        foreach (var line in File.ReadAllLines(LeasesFile))
        {
            var f = line.Split(' ');
            if (f.Length >= 4 && f[0] != "duid") list.Add((f[1], f[2], f[3] == "*" ? "" : f[3]));
        }
        return list;
    }

    /// <summary>Removes everything of this network from the host: dnsmasq, the table, the bridge, the run
    /// dir.</summary>
    public void Remove()
    {
        StopDnsmasq();
        try { DeleteRules(); } catch (InstanceException) { }
        if (links.Link(Name) is { Kind: "bridge" }) links.DeleteLink(Name);
        if (Directory.Exists(RunDir)) Directory.Delete(RunDir, recursive: true);
    }
}
