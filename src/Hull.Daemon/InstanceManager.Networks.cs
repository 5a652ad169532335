using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Hull.Api;
using Hull.Daemon.Networks;
using Hull.Instances;
using Hull.Linux;
using Hull.Linux.Net;

namespace Hull.Daemon;

/// <summary>
/// Managed networks (Incus's bridge networks): the records and their API, the host side of each (bridge, nft table,
/// dnsmasq; see <see cref="HostNetwork"/>), kept up by a supervisor, and the NICs of instances: hwaddr and IPv4
/// address allocated once and kept in the instance config, a veth pair per NIC made before the engine starts the
/// instance and removed when it stops.
/// </summary>
public sealed partial class InstanceManager
{
    readonly Lock _netLock = new();
    INetLinks? _links;
    string? _netRunDir;
    /// <summary>The name of the network made at hulld's first start (null or "none": no default network).</summary>
    public string? DefaultNetwork { get; set; }

    INetLinks Links => _links ??= Rtnl.Open();

    /// <summary>Where dnsmasq's files of each network live: outside the (0700) state dir, so that dnsmasq, which
    /// drops root, can read them; one dir per state dir, so that two hullds on a host never share one (tests).
    /// </summary>
    string NetRunDir
    {
        get
        {
            var dir = _netRunDir ??= _stateDir == HullPaths.DefaultStateDir ? "/run/hull-networks"
                : $"/run/hull-networks-{Hash(_stateDir)[..8]}";
            if (!Directory.Exists(dir))
            {
                Directory.CreateDirectory(dir);
                Libc.chmod(dir, 0b111_001_001); // dnsmasq (nobody) passes through to its own dir
            }
            return dir;
        }
    }

    HostNetwork Host(string name) => new(name, Path.Combine(NetRunDir, name), Links);

    static string Hash(string s) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(s)));

    // ---- API ----

    public List<Network> Networks()
    {
        var users = NetworkUsers();
        return _store.ListNetworks().Select(n => NetworkApi(n, users)).ToList();
    }

    public Network GetNetwork(string name) => NetworkApi(GetNetworkRecord(name), NetworkUsers());

    NetworkRecord GetNetworkRecord(string name) => _store.GetNetwork(name) ?? throw new InstanceException(
        $"network '{name}' not found: 'hull network list' shows the networks", 404);

    Network NetworkApi(NetworkRecord n, Dictionary<string, List<string>> users)
    {
        var api = new Network { Name = n.Name, Description = n.Description, Config = n.Config,
            UsedBy = users.GetValueOrDefault(n.Name) ?? [] };
        lock (_netLock)
            if (_netErrors.TryGetValue(n.Name, out var err)) { api.Status = "Errored"; api.StatusMessage = err; }
        return api;
    }

    /// <summary>network name → "instance NAME" / "profile NAME" that have a nic on it.</summary>
    Dictionary<string, List<string>> NetworkUsers()
    {
        var d = new Dictionary<string, List<string>>(StringComparer.Ordinal);
        void Add(string net, string who)
        {
            if (!d.TryGetValue(net, out var l)) d[net] = l = [];
            if (!l.Contains(who)) l.Add(who);
        }
        var profiles = ProfilesByName();
        foreach (var p in profiles.Values)
            foreach (var dev in p.Devices.Values)
                if (dev.GetValueOrDefault("type") == "nic" && dev.GetValueOrDefault("network") is { } net)
                    Add(net, $"profile {p.Name}");
        foreach (var (r, devices) in AllExpanded())
            foreach (var dev in devices.Values)
                if (dev.GetValueOrDefault("type") == "nic" && dev.GetValueOrDefault("network") is { } net)
                    Add(net, $"instance {r.Name}");
        return d;
    }

    public Network CreateNetwork(NetworkCreateRequest req)
    {
        NetworkConfig.ValidateName(req.Name);
        if (req.Type is not ("" or "bridge"))
            throw new InstanceException($"network type '{req.Type}' is not supported: use bridge");
        NetworkConfig.Validate(req.Config);
        lock (_netLock)
        {
            if (_store.GetNetwork(req.Name) is not null)
                throw new InstanceException($"network '{req.Name}' already exists: choose another name or edit it",
                    409);
            if (Links.Link(req.Name) is { } l)
                throw new InstanceException($"the host already has an interface named {req.Name} " +
                    $"({l.Kind ?? "a device"}): choose another network name", 409);
            var config = Resolve(req.Name, req.Config, null);
            var n = new NetworkRecord { Name = req.Name, Description = req.Description, Config = config };
            if (!_store.InsertNetwork(n))
                throw new InstanceException($"network '{req.Name}' already exists: choose another name", 409);
            try { ApplyLocked(n); }
            catch
            {
                TryDo(() => Host(n.Name).Remove(), n.Name);
                _store.DeleteNetwork(n.Name);
                throw;
            }
            return NetworkApi(n, NetworkUsers());
        }
    }

    public Network UpdateNetwork(string name, NetworkPut put)
    {
        NetworkConfig.Validate(put.Config);
        lock (_netLock)
        {
            var old = GetNetworkRecord(name);
            var config = Resolve(name, put.Config, old);
            CheckAddressesStillFit(name, config);
            var n = new NetworkRecord { Name = name, Description = put.Description, Config = config };
            _store.UpdateNetwork(n);
            try { ApplyLocked(n); }
            catch
            {
                _store.UpdateNetwork(old);
                TryDo(() => ApplyLocked(old), name);
                throw;
            }
            return NetworkApi(n, NetworkUsers());
        }
    }

    /// <summary>PATCH: the given keys are set (an empty value removes the key); the description if given.</summary>
    public Network PatchNetwork(string name, NetworkPut patch)
    {
        var old = GetNetworkRecord(name);
        var config = new Dictionary<string, string>(old.Config);
        foreach (var (k, v) in patch.Config)
            if (v.Length == 0) config.Remove(k); else config[k] = v;
        return UpdateNetwork(name, new NetworkPut
        {
            Description = patch.Description.Length > 0 ? patch.Description : old.Description, Config = config,
        });
    }

    public void DeleteNetwork(string name)
    {
        lock (_netLock)
        {
            GetNetworkRecord(name);
            if (NetworkUsers().GetValueOrDefault(name) is { Count: > 0 } users)
                throw new InstanceException($"network '{name}' is in use by {string.Join(", ", users)}: remove its " +
                    "nic devices from them first ('hull config device remove', 'hull profile edit')", 409);
            Host(name).Remove();
            _store.DeleteNetwork(name);
            _netErrors.Remove(name);
            try { if (_netRunDir is { } rd && Directory.Exists(rd) && !Directory.EnumerateFileSystemEntries(rd).Any())
                    Directory.Delete(rd); }
            catch (IOException) { }
        }
    }

    public List<NetworkLease> NetworkLeases(string name)
    {
        GetNetworkRecord(name);
        var list = Leases(name).Select(l => new NetworkLease
        {
            Hostname = l.Instance, Hwaddr = l.HwAddr, Address = l.Ipv4?.ToString() ?? "",
            Type = l.Static ? "static" : "allocated",
        }).ToList();
        foreach (var l in Leases(name).Where(l => l.Ipv6 is not null))
            list.Add(new NetworkLease { Hostname = l.Instance, Hwaddr = l.HwAddr, Address = l.Ipv6!.ToString(),
                Type = "allocated" });
        foreach (var (mac, addr, host) in Host(name).DhcpLeases())
            list.Add(new NetworkLease { Hostname = host, Hwaddr = mac, Address = addr, Type = "dynamic" });
        return list;
    }

    public NetworkState NetworkStateApi(string name)
    {
        GetNetworkRecord(name);
        var link = Links.Link(name) ?? throw new InstanceException(
            $"network '{name}': its bridge is missing on the host (hulld is rebuilding it): try again", 503);
        var st = new NetworkState
        {
            State = link.Up ? "up" : "down", Hwaddr = link.HwAddr ?? "", Mtu = link.Mtu,
            DnsmasqPid = Host(name).DnsmasqPid(),
        };
        foreach (var a in Links.Addresses().Where(a => a.Index == link.Index))
            st.Addresses.Add(new NetworkStateAddress
            {
                Family = a.Address.AddressFamily == AddressFamily.InterNetworkV6 ? "inet6" : "inet",
                Address = a.Address.ToString(), Netmask = a.Prefix.ToString(CultureInfo.InvariantCulture),
                Scope = a.Address.IsIPv6LinkLocal ? "link" : "global",
            });
        st.UpperDevices = Links.Links().Where(l => l.Master == link.Index).Select(l => l.Name).Order().ToList();
        long Stat(string f) => long.TryParse(ReadSys($"/sys/class/net/{name}/statistics/{f}"),
            CultureInfo.InvariantCulture, out var v) ? v : 0;
        st.Counters = new NetworkCounters
        {
            BytesReceived = Stat("rx_bytes"), BytesSent = Stat("tx_bytes"), PacketsReceived = Stat("rx_packets"),
            PacketsSent = Stat("tx_packets"),
        };
        return st;
    }

    static string ReadSys(string path)
    {
        try { return File.ReadAllText(path).Trim(); } catch (IOException) { return ""; }
    }

    // ---- config resolution and overlap checks ----

    /// <summary>Turns auto into concrete subnets (kept: a network's subnet does not move) and checks that the
    /// subnets clash with no other network and no host route or address.</summary>
    Dictionary<string, string> Resolve(string name, Dictionary<string, string> config, NetworkRecord? old)
    {
        var c = new Dictionary<string, string>(config);
        var others = _store.ListNetworks().Where(n => n.Name != name)
            .SelectMany(n => new[] { NetworkConfig.Parse(n.Config).Ipv4, NetworkConfig.Parse(n.Config).Ipv6 })
            .OfType<Cidr>().ToList();
        var ownIndex = Links.IndexOf(name);
        var hostRoutes = Links.Routes(AddressFamily.InterNetwork).Concat(Links.Routes(AddressFamily.InterNetworkV6))
            .Where(r => r.Prefix > 0 && (ownIndex is null || r.OutIndex != ownIndex))
            .Select(r => new Cidr(r.Destination, r.Prefix)).ToList();
        var hostAddrs = Links.Addresses().Where(a => ownIndex is null || a.Index != ownIndex).ToList();

        string Pick(string key, bool v6)
        {
            if (old is not null && old.Config.TryGetValue(key, out var kept) && kept is not ("auto" or "none")
                && Cidr.TryParse(kept, out var k) && k.IsV6 == v6 && !Clash(k, v6, out _)) return kept;
            for (var i = 0; i < 1000; i++)
            {
                var cand = v6 ? RandomUla() : RandomV4();
                if (!Clash(cand, v6, out _)) return cand.ToString();
            }
            throw new InstanceException($"network '{name}': no free {(v6 ? "IPv6 /64" : "10.x.y.0/24")} subnet was " +
                $"found: set {key} to a free subnet yourself", 507);
        }

        bool Clash(Cidr cand, bool v6, out string what)
        {
            what = "";
            foreach (var o in others.Where(o => o.Overlaps(cand)))
            { what = $"another network's subnet {o.SubnetText}"; return true; }
            foreach (var r in hostRoutes.Where(r => r.IsV6 == v6 && r.Overlaps(cand)))
            { what = $"the host route to {r.SubnetText}"; return true; }
            foreach (var a in hostAddrs.Where(a => cand.Contains(a.Address)))
            { what = $"the host address {a.Address}"; return true; }
            return false;
        }

        var v4 = c.GetValueOrDefault(NetworkConfig.Ipv4Address, "auto");
        if (v4 == "auto") c[NetworkConfig.Ipv4Address] = Pick(NetworkConfig.Ipv4Address, false);
        var v6 = c.GetValueOrDefault(NetworkConfig.Ipv6Address, "auto");
        if (v6 == "auto")
            c[NetworkConfig.Ipv6Address] = HostHasIpv6(hostAddrs) ? Pick(NetworkConfig.Ipv6Address, true) : "none";
        foreach (var key in new[] { NetworkConfig.Ipv4Address, NetworkConfig.Ipv6Address })
            if (Cidr.TryParse(c[key], out var set) && Clash(set, set.IsV6, out var what))
                throw new InstanceException($"network '{name}': {key}={c[key]} overlaps {what}: choose a free " +
                    "subnet or auto", 409);
        return c;
    }

    static bool HostHasIpv6(List<AddressInfo> addrs) => addrs.Any(a =>
        a.Address.AddressFamily == AddressFamily.InterNetworkV6 && !a.Address.IsIPv6LinkLocal
        && !IPAddress.IsLoopback(a.Address));

    static Cidr RandomV4()
    {
        Span<byte> b = stackalloc byte[2];
        RandomNumberGenerator.Fill(b);
        return new Cidr(new IPAddress([10, b[0], b[1], 1]), 24);
    }

    static Cidr RandomUla()
    {
        var b = new byte[16];
        RandomNumberGenerator.Fill(b.AsSpan(1, 7));
        b[0] = 0xfd;
        b[15] = 1;
        return new Cidr(new IPAddress(b), 64);
    }

    /// <summary>A changed subnet must still hold every instance's static and kept address.</summary>
    void CheckAddressesStillFit(string name, Dictionary<string, string> config)
    {
        var s = NetworkConfig.Parse(config);
        foreach (var l in Leases(name))
            if (l.Ipv4 is { } a && (s.Ipv4 is not { } v4 || !v4.Contains(a)))
            {
                if (l.Static)
                    throw new InstanceException($"network '{name}': instance '{l.Instance}' has the static address " +
                        $"{a}, outside the new subnet: change its ipv4.address first", 409);
            }
    }

    // ---- host side ----

    readonly Dictionary<string, string> _netErrors = [];

    void ApplyLocked(NetworkRecord n)
    {
        var s = NetworkConfig.Parse(n.Config);
        var h = Host(n.Name);
        var leases = Leases(n.Name, runningOnly: true);
        var rules = Rules(h, s, leases);
        h.Ensure(s, leases, rules);
        _loadedRules[n.Name] = rules;
        _netErrors.Remove(n.Name);
    }

    /// <summary>
    /// At hulld's start: makes the default network if this state dir never had one (its first start with
    /// networking; a default network deleted later is not made again), then brings every network's host side up and
    /// starts the supervisor that repairs it.
    /// </summary>
    public void StartNetworks()
    {
        if (DefaultNetwork is { Length: > 0 } def && def != "none" && !_store.Counters().ContainsKey("default-network"))
        {
            if (_store.GetNetwork(def) is null)
            {
                try { CreateNetwork(new NetworkCreateRequest { Name = def, Description = "Default network" }); }
                catch (Exception e) { _events.Log("error", $"making the default network {def}: {e.Message}"); }
            }
            if (_store.GetNetwork(def) is not null && _store.GetProfile("default") is { } p
                && !p.Devices.Values.Any(d => d.GetValueOrDefault("type") == "nic"))
            {
                p.Devices["eth0"] = new() { ["type"] = "nic", ["network"] = def, ["name"] = "eth0" };
                _store.UpdateProfile(p);
            }
            _store.AddCounter("default-network", 1);
        }
        foreach (var n in _store.ListNetworks())
        {
            lock (_netLock)
            {
                try { ApplyLocked(n); }
                catch (Exception e)
                {
                    _netErrors[n.Name] = e.Message;
                    _events.Log("error", $"network {n.Name}: {e.Message}");
                }
            }
        }
        _ = Task.Run(SuperviseNetworksAsync);
    }

    /// <summary>Every second: a missing bridge, a dead dnsmasq or (every 5 s) a flushed nft table is made again.
    /// Instances' veths are not touched: a deleted bridge takes them with it only as ports, and they are attached
    /// again.</summary>
    async Task SuperviseNetworksAsync()
    {
        var tick = 0;
        while (!_shutdown.IsCancellationRequested)
        {
            try { await Task.Delay(1000, _shutdown); } catch (OperationCanceledException) { return; }
            tick++;
            foreach (var name in _store.ListNetworks().Select(n => n.Name))
            {
                lock (_netLock)
                {
                    // Read again under the lock: a network deleted meanwhile is not made again.
                    if (_store.GetNetwork(name) is not { } n) continue;
                    try
                    {
                        var h = Host(n.Name);
                        var bridgeOk = Links.Link(n.Name) is { Up: true };
                        var dnsOk = h.DnsmasqPid() is not null;
                        var rulesOk = tick % 5 != 0 || h.HasRules();
                        if (bridgeOk && dnsOk && rulesOk && !_netErrors.ContainsKey(n.Name)) continue;
                        _events.Log("warning", $"network {n.Name}: repairing (bridge {(bridgeOk ? "ok" : "missing")}" +
                            $", dnsmasq {(dnsOk ? "ok" : "not running")}, rules {(rulesOk ? "ok" : "missing")})");
                        ApplyLocked(n);
                        if (!bridgeOk) ReattachVeths(n.Name);
                    }
                    catch (Exception e) { _netErrors[n.Name] = e.Message; }
                }
            }
        }
    }

    /// <summary>After the bridge was made again: the host ends of running instances' NICs join it again.</summary>
    void ReattachVeths(string network)
    {
        foreach (var (r, devices) in AllExpanded().Where(e => e.Record.State.IsLive()))
            foreach (var (dev, cfg) in devices)
                if (cfg.GetValueOrDefault("type") == "nic" && cfg.GetValueOrDefault("network") == network
                    && cfg.GetValueOrDefault("nictype") != "routed" && Links.Link(VethName(r.Name, dev)) is not null)
                {
                    TryDo(() => Links.SetMaster(VethName(r.Name, dev), network), r.Name);
                    TryDo(() => Links.SetUp(VethName(r.Name, dev), true), r.Name);
                }
    }

    /// <summary>The addresses instances hold on a network (static or kept), for DNS and the leases list; only
    /// running instances are in DNS.</summary>
    List<NicLease> Leases(string network, bool runningOnly = false)
    {
        var list = new List<NicLease>();
        var s = _store.GetNetwork(network) is { } n ? NetworkConfig.Parse(n.Config) : null;
        foreach (var (r, devices) in AllExpanded())
        {
            if (runningOnly && !r.State.IsLive() && r.State != InstanceState.Starting) continue;
            foreach (var (dev, cfg) in devices)
            {
                if (cfg.GetValueOrDefault("type") != "nic" || cfg.GetValueOrDefault("network") != network) continue;
                var stat = cfg.GetValueOrDefault("ipv4.address") is { Length: > 0 } sa ? IPAddress.Parse(sa) : null;
                var kept = r.Config.GetValueOrDefault(NicDevice.Ipv4Key(dev)) is { Length: > 0 } ka
                    && IPAddress.TryParse(ka, out var k) ? k : null;
                var v4 = stat ?? kept;
                var mac = cfg.GetValueOrDefault("hwaddr") is { Length: > 0 } m ? m
                    : r.Config.GetValueOrDefault(NicDevice.HwAddrKey(dev)) ?? "";
                var ipv4Filter = cfg.GetValueOrDefault(NicDevice.Ipv4FilteringKey) == "true";
                var macFilter = ipv4Filter || cfg.GetValueOrDefault(NicDevice.MacFilteringKey) == "true";
                var routed = cfg.GetValueOrDefault("nictype") == "routed"; // IPv4 only
                var v6 = v4 is null || s?.Ipv6 is null || routed ? (IPAddress?)null : Ipv6For(s.Ipv6.Value, v4);
                list.Add(new NicLease(r.Name, dev, mac, v4, v6, stat is not null, macFilter, ipv4Filter,
                    Dhcp: r.Type != InstanceTypes.Container));
            }
        }
        return list;
    }

    /// <summary>"eth0 inet 10.0.3.2/24 (hullbr0)" for each address of an instance's NICs; null if it has none.
    /// </summary>
    List<string>? NicAddresses(InstanceRecord r)
    {
        var list = new List<string>();
        foreach (var (dev, cfg) in Expand(r).Devices.Where(d => d.Value.GetValueOrDefault("type") == "nic")
            .OrderBy(d => d.Key, StringComparer.Ordinal))
        {
            var net = cfg.GetValueOrDefault("network") ?? "";
            if (_store.GetNetwork(net) is not { } n) continue;
            var s = NetworkConfig.Parse(n.Config);
            var ifname = cfg.GetValueOrDefault("name") is { Length: > 0 } nm ? nm : "eth0";
            if (Leases(net).FirstOrDefault(l => l.Instance == r.Name && l.Device == dev) is not { } l) continue;
            var prefix = cfg.GetValueOrDefault("nictype") == "routed" ? 32 : s.Ipv4!.Value.Prefix;
            if (l.Ipv4 is { } a4) list.Add($"{ifname} inet {a4}/{prefix} ({net})");
            if (l.Ipv6 is { } a6) list.Add($"{ifname} inet6 {a6}/{s.Ipv6!.Value.Prefix} ({net})");
        }
        return list.Count > 0 ? list : null;
    }

    /// <summary>An instance's IPv6 address: the subnet's prefix with its IPv4 address as the host part.</summary>
    static IPAddress Ipv6For(Cidr v6, IPAddress v4)
    {
        var b = v6.Network.GetAddressBytes();
        v4.GetAddressBytes().CopyTo(b, 12);
        return new IPAddress(b);
    }

    /// <summary>The published ports (proxy devices) of the running instances whose first NIC is on this network,
    /// forwarded to the address of that NIC.</summary>
    List<PortForward> Ports(string network, List<NicLease> leases)
    {
        var list = new List<PortForward>();
        Dictionary<(string, string), NicLease>? byNic = null;
        foreach (var (r, devs) in AllExpanded())
        {
            if (!r.State.IsLive() && r.State != InstanceState.Starting) continue;
            if (!devs.Values.Any(d => d.GetValueOrDefault("type") == "proxy")) continue;
            var nic = devs.Where(d => d.Value.GetValueOrDefault("type") == "nic").OrderBy(d => d.Key,
                StringComparer.Ordinal).FirstOrDefault();
            if (nic.Value?.GetValueOrDefault("network") != network) continue;
            byNic ??= leases.ToDictionary(l => (l.Instance, l.Device));
            if (byNic.GetValueOrDefault((r.Name, nic.Key))?.Ipv4 is not { } target) continue;
            foreach (var (dev, cfg) in devs.Where(d => d.Value.GetValueOrDefault("type") == "proxy"))
            {
                ProxyDevice p;
                try { p = new ProxyDevice(dev, cfg); p.Validate(); } catch (InstanceException) { continue; }
                list.Add(new PortForward(r.Name, dev, p.Listen.Protocol, p.Listen.Address, p.Listen.Port, target,
                    p.Connect.Port));
            }
        }
        return list;
    }

    readonly Dictionary<string, string> _loadedRules = [];

    /// <summary>The network's nft tables for the running instances' published ports and filtered NICs.</summary>
    string Rules(HostNetwork h, NetworkSettings s, List<NicLease> running) => h.RenderRules(s, Ports(h.Name, running),
        running.Where(l => l.MacFiltering && l.HwAddr.Length > 0)
            .Select(l => new NicFilter(VethName(l.Instance, l.Device), l.HwAddr, l.Ipv4, l.Ipv4Filtering)).ToList());

    /// <summary>After instances started or stopped: DNS holds the running ones, and the network's table their
    /// published ports (loaded again only if it changed).</summary>
    void RefreshDns(string network)
    {
        lock (_netLock)
        {
            if (_store.GetNetwork(network) is not { } n) return;
            var s = NetworkConfig.Parse(n.Config);
            var h = Host(network);
            var leases = Leases(network, runningOnly: true);
            TryDo(() => h.WriteHosts(s, leases), network);
            var rules = Rules(h, s, leases);
            if (_loadedRules.GetValueOrDefault(network) == rules) return;
            TryDo(() => { h.LoadRules(rules); _loadedRules[network] = rules; }, network);
        }
    }

    /// <summary>
    /// A published port must be free when it is added: not published by another instance (any state: its port is
    /// its own while it exists) and not listened on by a host process. The error names the owner.
    /// </summary>
    void CheckPublishedPorts(InstanceRecord r, Dictionary<string, Dictionary<string, string>> devices)
    {
        var mine = devices.Where(d => d.Value.GetValueOrDefault("type") == "proxy")
            .Select(d => new ProxyDevice(d.Key, d.Value)).ToList();
        if (mine.Count == 0) return;
        var seen = new Dictionary<(string, int), string>();
        foreach (var p in mine)
        {
            var l = p.Listen;
            if (seen.TryGetValue((l.Protocol, l.Port), out var other))
                throw new InstanceException($"devices '{other}' and '{p.Name}' both publish {l.Protocol} port " +
                    $"{l.Port}: publish each port once");
            seen[(l.Protocol, l.Port)] = p.Name;
        }
        var profiles = ProfilesByName();
        var ownBefore = _store.GetInstance(r.Name) is { } old ? Expand(old, profiles).Devices : [];
        foreach (var (o, theirs) in AllExpanded().Where(e => e.Record.Name != r.Name))
            foreach (var (dev, cfg) in theirs.Where(d => d.Value.GetValueOrDefault("type") == "proxy"))
            {
                ProxyDevice op;
                try { op = new ProxyDevice(dev, cfg); op.Validate(); } catch (InstanceException) { continue; }
                foreach (var p in mine.Where(p => p.Listen.Protocol == op.Listen.Protocol
                    && p.Listen.Port == op.Listen.Port && (p.Listen.Address.Equals(IPAddress.Any)
                    || op.Listen.Address.Equals(IPAddress.Any) || p.Listen.Address.Equals(op.Listen.Address))))
                    throw new InstanceException($"device '{p.Name}': {p.Listen.Protocol} port {p.Listen.Port} is " +
                        $"already published by instance '{o.Name}' (device '{dev}'): choose another host port", 409);
            }
        foreach (var p in mine)
        {
            // A port this instance had already is its own: only new ones are checked against the host.
            if (ownBefore.TryGetValue(p.Name, out var had) && had.GetValueOrDefault("listen") ==
                p.Config.GetValueOrDefault("listen")) continue;
            if (HostSockets.Listener(p.Listen.Protocol, p.Listen.Address, p.Listen.Port) is { } taken)
                throw new InstanceException($"device '{p.Name}': {taken}: choose another host port", 409);
        }
    }

    // ---- NICs ----

    /// <summary>The host end ("hv…") of an instance's NIC: a hash of this hulld's state dir, the instance and the
    /// device, so that whatever a crash left behind is found again.</summary>
    string VethName(string instance, string device) => "hv" + Hash($"{_stateDir}\0{instance}\0{device}")[..10];

    /// <summary>
    /// Before the engine starts an instance: for each nic device, a MAC and an IPv4 address (kept in the instance
    /// config), /etc/resolv.conf and /etc/hosts for a container; fills in the device's <see cref="NicSpec"/>. The
    /// engine makes the veth pair (a container's monitor makes it with its peer directly in the container's network
    /// namespace: a link moved between namespaces costs the kernel an RCU grace period, about 8 ms here).
    /// </summary>
    void StartNics(InstanceRecord r, InstanceSpec spec, List<DeviceRunConfig> runs)
    {
        var nics = spec.Devices.OfType<NicDevice>().ToList();
        if (nics.Count == 0) return;
        if (r.Type != InstanceTypes.Container && nics.FirstOrDefault(n => n.Routed) is { } vmRouted)
            throw new InstanceException($"device '{vmRouted.Name}': nictype=routed is for containers; a VM's NIC " +
                "joins the network's bridge: remove the nictype key");
        var kept = new Dictionary<string, string>(r.Config);
        NicSpec? first = null;
        string? domain = null;
        foreach (var nic in nics)
        {
            var rc = runs.First(x => x.Device == nic.Name);
            NetworkSettings s;
            IPAddress? v4;
            lock (_netLock)
            {
                var n = _store.GetNetwork(nic.Network) ?? throw new InstanceException(
                    $"device '{nic.Name}': network '{nic.Network}' not found: create it ('hull network create " +
                    $"{nic.Network}') or change the device's network", 404);
                s = NetworkConfig.Parse(n.Config);
                if (Links.Link(n.Name) is not { Up: true }) ApplyLocked(n);
                v4 = AssignAddress(r, nic, s);
            }
            var mac = AssignHwAddr(r, nic);
            var hostName = VethName(r.Name, nic.Name);
            if (Links.Link(hostName) is not null) Links.DeleteLink(hostName); // left by a crash
            var mtu = nic.Config.TryGetValue("mtu", out var m) && m.Length > 0
                ? int.Parse(m, CultureInfo.InvariantCulture) : s.Mtu;
            // A routed NIC holds its address alone (a /32, routed to it by the host) and is IPv4 only.
            rc.Nic = nic.Routed ? new NicSpec
            {
                Name = nic.InterfaceName, HostName = hostName, Routed = true, HwAddr = mac, Mtu = mtu,
                Ipv4 = v4 is null ? null : $"{v4}/32", Gateway4 = s.Ipv4?.Address.ToString(),
            } : new NicSpec
            {
                Name = nic.InterfaceName, HostName = hostName, Bridge = nic.Network, HwAddr = mac,
                Mtu = mtu, Ipv4 = v4 is null ? null : $"{v4}/{s.Ipv4!.Value.Prefix}",
                Gateway4 = s.Ipv4?.Address.ToString(),
                Ipv6 = v4 is null || s.Ipv6 is not { } v6 ? null : $"{Ipv6For(v6, v4)}/{v6.Prefix}",
                Gateway6 = s.Ipv6?.Address.ToString(),
            };
            first ??= rc.Nic;
            domain ??= s.Domain;
        }
        if (r.Type == InstanceTypes.Container && first is not null)
            runs.First(x => x.Device == nics[0].Name).Mounts.AddRange(WriteResolverFiles(r.Name, spec.Dir, first,
                domain!));
        // Written only when a MAC or an address was made now (a write is an fsync).
        if (kept.Count != r.Config.Count || kept.Any(kv => r.Config.GetValueOrDefault(kv.Key) != kv.Value))
            _store.UpdateInstance(r);
        foreach (var net in nics.Select(n => n.Network).Distinct()) RefreshDns(net);
    }

    /// <summary>/etc/resolv.conf (the network's DNS at the gateway, its domain searched) and /etc/hosts for a
    /// container, written to its instance dir and bind-mounted (the image is not changed).</summary>
    static IEnumerable<MountSpec> WriteResolverFiles(string name, string dir, NicSpec nic, string domain)
    {
        var net = Path.Combine(dir, "net");
        Directory.CreateDirectory(net);
        var resolv = new StringBuilder();
        if (nic.Gateway4 is not null) resolv.Append(CultureInfo.InvariantCulture, $"nameserver {nic.Gateway4}\n");
        if (nic.Gateway6 is not null) resolv.Append(CultureInfo.InvariantCulture, $"nameserver {nic.Gateway6}\n");
        resolv.Append(CultureInfo.InvariantCulture, $"search {domain}\n");
        var hosts = new StringBuilder("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        foreach (var a in new[] { nic.Ipv4, nic.Ipv6 }.OfType<string>())
            hosts.Append(CultureInfo.InvariantCulture, $"{a[..a.IndexOf('/')]}\t{name}.{domain} {name}\n");
        foreach (var (file, text) in new[] { ("resolv.conf", resolv.ToString()), ("hosts", hosts.ToString()) })
        {
            var path = Path.Combine(net, file);
            File.WriteAllText(path, text);
            Libc.chmod(path, 0b110_100_100);
            yield return new MountSpec(path, "/etc/" + file, ReadOnly: false, IsFile: true);
        }
    }

    string AssignHwAddr(InstanceRecord r, NicDevice nic)
    {
        if (nic.Config.GetValueOrDefault("hwaddr") is { Length: > 0 } set) return set;
        var key = NicDevice.HwAddrKey(nic.Name);
        if (r.Config.GetValueOrDefault(key) is { Length: > 0 } kept) return kept;
        return r.Config[key] = MacAddress.Random();
    }

    /// <summary>The NIC's IPv4 address: its static ipv4.address (checked: inside the subnet, not the gateway, not
    /// another instance's), else the one kept from an earlier start if still free and inside, else the lowest free
    /// address below the DHCP ranges.</summary>
    IPAddress? AssignAddress(InstanceRecord r, NicDevice nic, NetworkSettings s)
    {
        var key = NicDevice.Ipv4Key(nic.Name);
        if (s.Ipv4 is not { } v4) { r.Config.Remove(key); return null; }
        var taken = Leases(nic.Network)
            .Where(l => !(l.Instance == r.Name && l.Device == nic.Name) && l.Ipv4 is not null)
            .ToDictionary(l => l.Ipv4!, l => l.Instance);
        var dhcp = s.EffectiveDhcpRanges();
        bool InDhcp(IPAddress a) => dhcp.Any(d => Cidr.ToUInt(d.First) <= Cidr.ToUInt(a)
            && Cidr.ToUInt(a) <= Cidr.ToUInt(d.Last));
        if (nic.Config.GetValueOrDefault("ipv4.address") is { Length: > 0 } st)
        {
            var a = IPAddress.Parse(st);
            if (!v4.Contains(a) || a.Equals(v4.Network) || a.Equals(v4.Broadcast))
                throw new InstanceException($"device '{nic.Name}': ipv4.address={st} is outside network " +
                    $"'{nic.Network}' ({v4.SubnetText}): choose an address inside it");
            if (a.Equals(v4.Address))
                throw new InstanceException($"device '{nic.Name}': ipv4.address={st} is the gateway of network " +
                    $"'{nic.Network}': choose another address");
            if (taken.TryGetValue(a, out var owner))
                throw new InstanceException($"device '{nic.Name}': ipv4.address={st} is already used by instance " +
                    $"'{owner}' on network '{nic.Network}': choose another address", 409);
            r.Config.Remove(key);
            return a;
        }
        if (r.Config.GetValueOrDefault(key) is { Length: > 0 } k && IPAddress.TryParse(k, out var kept)
            && v4.Contains(kept) && !kept.Equals(v4.Address) && !taken.ContainsKey(kept)) return kept;
        var net = Cidr.ToUInt(v4.Network);
        var size = 1u << (32 - v4.Prefix);
        for (var i = 2u; i < size - 1; i++)
        {
            var a = Cidr.FromUInt(net + i);
            if (a.Equals(v4.Address) || taken.ContainsKey(a) || InDhcp(a)) continue;
            r.Config[key] = a.ToString();
            return a;
        }
        throw new InstanceException($"network '{nic.Network}' has no free address left in {v4.SubnetText}: delete " +
            $"instances on it or widen its ipv4.address", 507);
    }

    /// <summary>After an instance stopped (or a start failed): its veths go (a container's peer went with its
    /// network namespace; this removes what is left) and its names leave DNS. Its MAC and address stay kept.</summary>
    void StopNics(string instance, InstanceSpec spec)
    {
        var nets = new HashSet<string>();
        foreach (var nic in spec.Devices.OfType<NicDevice>())
        {
            var h = VethName(instance, nic.Name);
            TryDo(() => { if (Links.Link(h) is not null) Links.DeleteLink(h); }, instance);
            nets.Add(nic.Network);
        }
        foreach (var n in nets) RefreshDns(n);
    }

    /// <summary>The networks an instance's NICs (its own and its profiles') are on.</summary>
    IEnumerable<string> NicNetworks(InstanceRecord r) => Expand(r).Devices.Values
        .Where(d => d.GetValueOrDefault("type") == "nic" && d.GetValueOrDefault("network") is { Length: > 0 })
        .Select(d => d["network"]).Distinct(StringComparer.Ordinal);

    /// <summary>The NIC keys hulld keeps in an instance's config (a copy must not take them).</summary>
    static Dictionary<string, string> WithoutNicVolatile(Dictionary<string, string> config) =>
        config.Where(kv => !ConfigSchema.IsNicVolatile(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value);

    /// <summary>At hulld's start after recovery: DNS holds the running instances, and no veth of a stopped instance
    /// is left (a kill -9 in the middle of a start).</summary>
    void SyncNics()
    {
        if (_store.ListNetworks().Count == 0) return;
        foreach (var r in _store.ListInstances().Where(r => !r.State.IsLive()))
            TryDo(() => StopNics(r.Name, Spec(r)), r.Name);
        foreach (var n in _store.ListNetworks()) RefreshDns(n.Name);
    }
}
