using System.Diagnostics;
using System.Net.Sockets;
using System.Text.Json;
using Grpc.Core;
using Grpc.Net.Client;
using Hull.Oci.Clients.Tests;
using Hull.TestSupport;
using Hull.Cri.Tests.V1;

namespace Hull.Cri.Tests;

/// <summary>
/// A private containerd with its CRI plugin (its own root, state, socket, config.toml and CNI config in one temp dir;
/// a system containerd is never touched) and two runtime handlers on the runc v2 shim: <c>runc</c> (runc) and
/// <c>hull</c> (out/bin/hull-oci), cgroupfs. Pods get an isolated bridge of their own (no gateway, no masquerade,
/// no port mapping: the host's networking is untouched) with host-local addresses, and loopback. The pause image is
/// Debian's catatonit and the containers' image is busybox, both packed by the fixture with umoci and imported with
/// ctr: nothing is downloaded. Dispose removes every pod through the CRI, stops containerd and its shims, and removes
/// the bridge, the pods' network namespaces, the mounts, the cgroups and the directory.
/// containerd (and so its shims and the runtimes) runs in a mount namespace of its own whose mounts are shared, as
/// they are on a systemd host: the pods' mounts never reach the host's mount table and go away with that namespace.
/// </summary>
public sealed class CriFixture : IDisposable
{
    public const string Namespace = "k8s.io";
    public const string PauseImage = "hull.test/pause:latest";
    public const string BusyboxImage = "hull.test/busybox:latest";
    public static readonly string[] Handlers = ["runc", "hull"];

    public TempDir Dir { get; } = new("hull-cri");
    public string Address => Path.Combine(Dir.Path, "containerd.sock");
    public string HullOci => Path.Combine(Repo.Bin, "hull-oci");
    public string LogRoot => Path.Combine(Dir.Path, "pod-logs");
    /// <summary>The state directory the shim gives each runtime (--root); the shim adds the namespace.</summary>
    public string RuntimeRoot(string handler) => Path.Combine(Dir.Path, handler + "-state");
    /// <summary>The runtime a handler runs (both take runc's command line: --root, list, delete --force).</summary>
    public string RuntimeBinary(string handler) => handler == "hull" ? HullOci : Which("runc")!;
    /// <summary>A bridge name of this fixture alone (at most 15 characters).</summary>
    public string Bridge { get; } = "hcri" + Guid.NewGuid().ToString("N")[..8];
    /// <summary>The pods' addresses: a subnet on the fixture's bridge, which has no address, no route off.</summary>
    public const string Subnet = "10.213.77.0/24";
    /// <summary>The cgroup (cgroupfs layout) every pod of this fixture lives under.</summary>
    public string CgroupParent { get; } = "/hull-cri-" + Guid.NewGuid().ToString("N")[..8];

    /// <summary>A path as containerd's mount namespace sees it (the host's view in these tests).</summary>
    public string InMountNs(string path) => $"/proc/{containerd!.Id}/root{path}";

    /// <summary>Runs a command in containerd's mount namespace.</summary>
    public CmdResult RunInMountNs(params string[] command) =>
        Cmd.Run("nsenter", ["--target", containerd!.Id.ToString(), "--mount", "--", .. command], 60);

    public RuntimeService.RuntimeServiceClient Runtime { get; private set; } = null!;
    public ImageService.ImageServiceClient Images { get; private set; } = null!;

    Process? containerd;
    GrpcChannel? channel;
    string? startError;
    readonly HashSet<string> netnsPaths = [];
    readonly object gate = new();
    /// <summary>The runc shim puts its sockets in /run/containerd/s whatever containerd's own state dir is.</summary>
    const string ShimRunDir = "/run/containerd";
    /// <summary>containerd 1.6's CRI plugin mounts each pod's network namespace here.</summary>
    const string NetnsDir = "/run/netns";
    readonly bool shimRunDirExisted = Directory.Exists(ShimRunDir);
    readonly bool netnsDirExisted = Directory.Exists(NetnsDir);
    /// <summary>libcni keeps each attachment's result here until the pod's network is torn down.</summary>
    const string CniCacheDir = "/var/lib/cni";
    readonly bool cniCacheDirExisted = Directory.Exists(CniCacheDir);

    public CriFixture()
    {
        string[] programs =
            ["containerd", "ctr", "containerd-shim-runc-v2", "runc", "umoci", "catatonit", "unshare", "nsenter"];
        foreach (var p in programs)
            if (Which(p) is null) { startError = $"the program '{p}' (scripts/setup.sh installs it)"; return; }
        foreach (var plugin in new[] { "bridge", "host-local", "loopback" })
            if (!File.Exists(Path.Combine(CniBinDir, plugin)))
            { startError = $"the CNI plugin {CniBinDir}/{plugin} (containernetworking-plugins)"; return; }
        if (!File.Exists(HullOci)) { startError = $"hull-oci from 'make build' ({HullOci})"; return; }
        if (!File.Exists(BusyboxRootfs.Busybox)) { startError = "a static busybox (busybox-static)"; return; }
        try { Start(); }
        catch (Exception e) { startError = "the private containerd did not start: " + e.Message; }
    }

    const string CniBinDir = "/usr/lib/cni";

    static string? Which(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':').Concat(["/usr/sbin", "/sbin"])
            .Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);

    /// <summary>Fails (with HULL_TEST_SKIP_MISSING=1: skips) the calling test if the fixture could not start.</summary>
    public void Require()
    {
        Requires.Root();
        if (startError is null) return;
        if (startError.StartsWith("the private containerd", StringComparison.Ordinal))
            throw new InvalidOperationException(startError + "\n--- containerd.log (end)\n" + LogTail());
        Requires.Missing(startError);
    }

    public string LogTail()
    {
        var log = Path.Combine(Dir.Path, "containerd.log");
        if (!File.Exists(log)) return "";
        var lines = File.ReadAllLines(log);
        return string.Join('\n', lines.Skip(Math.Max(0, lines.Length - 40)));
    }

    void Start()
    {
        var cniConf = Path.Combine(Dir.Path, "cni", "net.d");
        Directory.CreateDirectory(cniConf);
        Directory.CreateDirectory(LogRoot);
        // The bridge gets no address (isGateway false) and the pods no default route: pods reach each other and
        // nothing else. Loopback comes from containerd itself (it runs the loopback plugin for every pod).
        File.WriteAllText(Path.Combine(cniConf, "10-hull-test.conflist"), $$"""
            {
              "cniVersion": "0.4.0",
              "name": "hull-cri-test",
              "plugins": [
                {
                  "type": "bridge",
                  "bridge": "{{Bridge}}",
                  "isGateway": false,
                  "ipMasq": false,
                  "hairpinMode": false,
                  "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": "{{Subnet}}" }]],
                    "dataDir": "{{Dir.Path}}/cni-ipam"
                  }
                }
              ]
            }
            """);
        string RuntimeTable(string name, string binary) => $"""
                    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}]
                      runtime_type = "io.containerd.runc.v2"
                      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}.options]
                        BinaryName = "{binary}"
                        Root = "{RuntimeRoot(name)}"
                        SystemdCgroup = false
            """;
        var config = Path.Combine(Dir.Path, "config.toml");
        File.WriteAllText(config, $"""
            version = 2
            root = "{Dir.Path}/root"
            state = "{Dir.Path}/state"
            disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
              "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
            [grpc]
              address = "{Address}"
            [ttrpc]
              address = "{Address}.ttrpc"
            [debug]
              address = ""
            [metrics]
              address = ""
            [plugins."io.containerd.internal.v1.opt"]
              path = "{Dir.Path}/opt"
            [plugins."io.containerd.grpc.v1.cri"]
              sandbox_image = "{PauseImage}"
              stream_server_address = "127.0.0.1"
              stream_server_port = "0"
              disable_apparmor = true
              restrict_oom_score_adj = true
              enable_selinux = false
              [plugins."io.containerd.grpc.v1.cri".cni]
                bin_dir = "{CniBinDir}"
                conf_dir = "{cniConf}"
                max_conf_num = 1
              [plugins."io.containerd.grpc.v1.cri".containerd]
                snapshotter = "overlayfs"
                default_runtime_name = "runc"
            {RuntimeTable("runc", Which("runc")!)}
            {RuntimeTable("hull", HullOci)}
            """);
        var psi = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(
            "exec unshare --mount --propagation shared containerd --config \"$1\" --log-level debug >\"$2\" 2>&1");
        psi.ArgumentList.Add("sh");
        psi.ArgumentList.Add(config);
        psi.ArgumentList.Add(Path.Combine(Dir.Path, "containerd.log"));
        containerd = Process.Start(psi) ?? throw new InvalidOperationException("cannot start containerd");
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (Ctr("version").ExitCode != 0)
        {
            if (containerd.HasExited) throw new InvalidOperationException("containerd exited");
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"containerd did not answer on {Address} in 30 s");
            Thread.Sleep(100);
        }
        channel = GrpcChannel.ForAddress("http://localhost", new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler { ConnectCallback = ConnectUnix },
            MaxReceiveMessageSize = 16 << 20,
        });
        Runtime = new RuntimeService.RuntimeServiceClient(channel);
        Images = new ImageService.ImageServiceClient(channel);

        // File.Copy keeps the mode bits (0755)
        BuildAndImport(PauseImage, rootfs => File.Copy(Which("catatonit")!, Path.Combine(rootfs, "catatonit")),
            ["--config.entrypoint", "/catatonit", "--config.entrypoint", "-P"]);
        BuildAndImport(BusyboxImage, BusyboxRootfs.Create, ["--config.cmd", "sh"]);
        WaitFor("the CRI plugin to see both images and to load the CNI config", () =>
            HasImage(PauseImage) && HasImage(BusyboxImage)
            && Runtime.Status(new StatusRequest(), deadline: In(10)).Status.Conditions.All(c => c.Status));
    }

    bool HasImage(string reference) =>
        Images.ImageStatus(new ImageStatusRequest { Image = new ImageSpec { Image = reference } }, deadline: In(10))
            .Image is not null;

    async ValueTask<Stream> ConnectUnix(SocketsHttpConnectionContext _, CancellationToken ct)
    {
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await s.ConnectAsync(new UnixDomainSocketEndPoint(Address), ct);
            return new NetworkStream(s, ownsSocket: true);
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    /// <summary>An OCI image made with umoci (one layer: what fill puts in the rootfs), imported into k8s.io.</summary>
    void BuildAndImport(string reference, Action<string> fill, string[] config)
    {
        var name = reference[..reference.LastIndexOf(':')];
        var work = Path.Combine(Dir.Path, "images", name.Replace('/', '_'));
        var layout = Path.Combine(work, "layout");
        var bundle = Path.Combine(work, "bundle");
        Cmd.Ok("umoci", ["init", "--layout", layout]);
        Cmd.Ok("umoci", ["new", "--image", layout + ":latest"]);
        Cmd.Ok("umoci", ["unpack", "--image", layout + ":latest", bundle]);
        fill(Path.Combine(bundle, "rootfs"));
        Cmd.Ok("umoci", ["repack", "--image", layout + ":latest", bundle]);
        Cmd.Ok("umoci", ["config", "--image", layout + ":latest", .. config]);
        var tar = Path.Combine(work, "image.tar");
        Cmd.Ok("tar", ["-C", layout, "-cf", tar, "."]);
        var r = Ctr("images", "import", "--base-name", name, tar);
        if (r.ExitCode != 0) throw new InvalidOperationException("ctr images import failed: " + r);
        Directory.Delete(work, recursive: true);
    }

    public CmdResult Ctr(params string[] args) =>
        Cmd.Run("ctr", ["--address", Address, "--namespace", Namespace, .. args], 120);

    /// <summary>A deadline for one CRI call.</summary>
    public static DateTime In(int seconds) => DateTime.UtcNow.AddSeconds(seconds);

    public static void WaitFor(string what, Func<bool> done, int seconds = 30)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        Exception? last = null;
        while (DateTime.UtcNow < deadline)
        {
            try { if (done()) return; }
            catch (RpcException e) { last = e; }
            Thread.Sleep(50);
        }
        throw new TimeoutException($"waited {seconds} s for {what}" + (last is null ? "" : ": " + last.Message));
    }

    /// <summary>A pod configuration: its own log directory, the fixture's cgroup parent, pod namespaces.</summary>
    public PodSandboxConfig PodConfig(string name, bool privileged = false)
    {
        var uid = Guid.NewGuid().ToString("N");
        return new PodSandboxConfig
        {
            Metadata = new PodSandboxMetadata { Name = name, Uid = uid, Namespace = "hull-test", Attempt = 0 },
            Hostname = name,
            LogDirectory = Path.Combine(LogRoot, $"hull-test_{name}_{uid}"),
            Labels = { ["app"] = name },
            Annotations = { ["hull.test/case"] = name },
            Linux = new LinuxPodSandboxConfig
            {
                CgroupParent = CgroupParent,
                SecurityContext = new LinuxSandboxSecurityContext
                {
                    NamespaceOptions = PodNamespaces(),
                    Privileged = privileged,
                },
            },
        };
    }

    /// <summary>The kubelet's default: the pod's network and IPC namespaces, a PID namespace per container.</summary>
    public static NamespaceOption PodNamespaces() =>
        new() { Network = NamespaceMode.Pod, Pid = NamespaceMode.Container, Ipc = NamespaceMode.Pod };

    /// <summary>RunPodSandbox; remembers the pod's network namespace for Dispose (if the test leaves it).</summary>
    public string RunPod(PodSandboxConfig config, string handler)
    {
        var id = Runtime.RunPodSandbox(
            new RunPodSandboxRequest { Config = config, RuntimeHandler = handler }, deadline: In(60)).PodSandboxId;
        var info = Runtime.PodSandboxStatus(
            new PodSandboxStatusRequest { PodSandboxId = id, Verbose = true }, deadline: In(30)).Info;
        if (info.TryGetValue("info", out var json))
        {
            using var doc = JsonDocument.Parse(json);
            if (NetnsPath(doc.RootElement) is { Length: > 0 } path) lock (gate) netnsPaths.Add(path);
        }
        return id;
    }

    /// <summary>The pod's network namespace file, from PodSandboxStatus' verbose info (the sandbox's spec).</summary>
    public static string? NetnsPath(JsonElement info)
    {
        if (!info.TryGetProperty("runtimeSpec", out var spec) || !spec.TryGetProperty("linux", out var linux)
            || !linux.TryGetProperty("namespaces", out var namespaces)) return null;
        foreach (var ns in namespaces.EnumerateArray())
            if (ns.GetProperty("type").GetString() == "network" && ns.TryGetProperty("path", out var path))
                return path.GetString();
        return null;
    }

    public void StopAndRemovePod(string id)
    {
        Runtime.StopPodSandbox(new StopPodSandboxRequest { PodSandboxId = id }, deadline: In(60));
        Runtime.RemovePodSandbox(new RemovePodSandboxRequest { PodSandboxId = id }, deadline: In(60));
    }

    public void Dispose()
    {
        if (containerd is { HasExited: false })
        {
            try
            {
                foreach (var pod in Runtime.ListPodSandbox(new ListPodSandboxRequest(), deadline: In(30)).Items)
                    StopAndRemovePod(pod.Id);
            }
            catch (RpcException) { }
            catch (NullReferenceException) { } // the client was never made
            channel?.Dispose();
            containerd.Kill();
            containerd.WaitForExit(10_000);
        }
        containerd?.Dispose();
        foreach (var handler in Handlers)
            try { Cleanup.DeleteHullContainers(RuntimeBinary(handler), Path.Combine(RuntimeRoot(handler), Namespace)); }
            catch (Exception) { }
        Cleanup.KillProcessesMentioning(Dir.Path);
        Cleanup.UnmountUnder(Dir.Path);
        foreach (var ns in netnsPaths)
        {
            Cleanup.UnmountUnder(ns);
            try { File.Delete(ns); } catch (IOException) { }
        }
        if (!netnsDirExisted) try { Directory.Delete(NetnsDir); } catch (IOException) { }
        if (!cniCacheDirExisted)
            foreach (var d in new[] { CniCacheDir + "/results", CniCacheDir })
                try { Directory.Delete(d); } catch (IOException) { } // only if empty
        if (Directory.Exists("/sys/class/net/" + Bridge))
            Cmd.Run("ip", ["link", "delete", Bridge, "type", "bridge"], 30);
        RemoveCgroups();
        Dir.Dispose();
        if (!shimRunDirExisted)
            foreach (var d in new[] { ShimRunDir + "/s", ShimRunDir })
                try { Directory.Delete(d); } catch (IOException) { } // only if empty: a shim of someone else may use it
    }

    /// <summary>Removes the fixture's cgroup parent (deepest first) from every cgroup hierarchy that has it.</summary>
    void RemoveCgroups()
    {
        foreach (var hierarchy in Directory.EnumerateDirectories("/sys/fs/cgroup"))
        {
            var top = hierarchy + CgroupParent;
            if (!Directory.Exists(top)) continue;
            foreach (var d in Directory.EnumerateDirectories(top, "*", SearchOption.AllDirectories)
                         .OrderByDescending(d => d.Length).Append(top))
                try { Directory.Delete(d); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>The container's cgroup directories that are left (a test checks that removal removed them).</summary>
    public List<string> CgroupsLeft(string containerId) =>
        Directory.EnumerateDirectories("/sys/fs/cgroup").Select(h => h + CgroupParent + "/" + containerId)
            .Where(Directory.Exists).ToList();
}
