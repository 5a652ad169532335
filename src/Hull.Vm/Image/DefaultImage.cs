using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;

namespace Hull.Vm.Image;

/// <summary>What goes into the default image.</summary>
public sealed class DefaultImageOptions
{
    /// <summary>Where images are cached (images/&lt;key&gt;/...).</summary>
    public required string CacheDir { get; init; }
    /// <summary>Guest kernel version (a /boot/vmlinuz-VERSION with /lib/modules/VERSION); the newest such pair when
    /// null.</summary>
    public string? KernelVersion { get; init; }
    /// <summary>The hull-agent binary to include (with the glibc libraries it links); /init starts it on the agent
    /// port.</summary>
    public string? AgentBinary { get; init; }
    /// <summary>Shell lines /init runs after the devices are ready and before the marker (test images,
    /// customisation).</summary>
    public string? ExtraInit { get; init; }
    /// <summary>A directory that becomes the root disk's contents (mkfs.ext4 -d); a small default when null.</summary>
    public string? RootDir { get; init; }
    public int RootDiskMiB { get; init; } = 64;
    /// <summary>Host paths of busybox (a static build) and the module tree (overridable for tests).</summary>
    public string Busybox { get; init; } = "/bin/busybox";
    public string BootDir { get; init; } = "/boot";
    public string ModulesDir { get; init; } = "/lib/modules";
}

/// <summary>A built default image: everything a direct-boot VM needs.</summary>
public sealed record DefaultImageInfo(string Dir, string KernelVersion, string Kernel, string Initrd, string RootDisk,
    bool HasAgent)
{
    /// <summary>A VM config that boots this image with a qcow2 overlay on its root disk.</summary>
    public VmConfig ToConfig(string name, int memoryMiB = 256) => new()
    {
        Name = name,
        MemoryMiB = memoryMiB,
        Boot = BootMode.Direct,
        Kernel = Kernel,
        Initrd = Initrd,
        Disks = [new DiskConfig { Base = RootDisk }],
    };
}

/// <summary>
/// Builds the default VM image from the host's distribution kernel: the uncompressed vmlinux (PVH entry, fast under
/// TCG) extracted from /boot/vmlinuz-VERSION, an initramfs written here (static busybox, the virtio/vsock/ext4 modules
/// with their dependencies, Hull's /init, optionally the agent), and an ext4 root disk made from a directory.
/// </summary>
public static class DefaultImage
{
    /// <summary>The line /init prints on the serial console when the guest's userspace is up.</summary>
    public const string ReadyMarker = "hull: ready";

    /// <summary>Modules loaded by /init (with their dependencies from modules.dep), in this order.</summary>
    public static readonly string[] Modules =
    [
        "virtio_ring", "virtio", "virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net", "virtio_console",
        "virtio-rng",
        "vsock", "vmw_vsock_virtio_transport", "crc32c_generic", "ext4", "pvpanic-mmio", "button", "evdev",
    ];

    static readonly SemaphoreSlim s_lock = new(1, 1);

    public static async Task<DefaultImageInfo> BuildAsync(DefaultImageOptions o, CancellationToken ct = default)
    {
        var ver = o.KernelVersion ?? FindKernelVersion(o);
        var vmlinuz = Path.Combine(o.BootDir, $"vmlinuz-{ver}");
        var modDir = Path.Combine(o.ModulesDir, ver);
        if (!File.Exists(vmlinuz)) throw new VmException(
            $"kernel {vmlinuz} does not exist: install linux-image-amd64 (or give KernelVersion)");
        if (!Directory.Exists(modDir)) throw new VmException(
            $"kernel modules {modDir} do not exist: install the modules of kernel {ver}");
        if (!File.Exists(o.Busybox)) throw new VmException(
            $"busybox {o.Busybox} does not exist: install busybox-static");
        if (o.AgentBinary is not null && !File.Exists(o.AgentBinary)) throw new VmException(
            $"agent binary {o.AgentBinary} does not exist: build hull-agent first");
        if (o.RootDir is not null && !Directory.Exists(o.RootDir)) throw new VmException(
            $"root directory {o.RootDir} does not exist");

        var key = Key(o, ver, vmlinuz);
        var cacheDir = Path.GetFullPath(o.CacheDir);
        var dir = Path.Combine(cacheDir, "images", key);
        var kernelPath = Path.Combine(cacheDir, "kernels", $"vmlinux-{ver}");
        var info = new DefaultImageInfo(dir, ver, kernelPath, Path.Combine(dir, "initrd.cpio"),
            Path.Combine(dir, "root.qcow2"), o.AgentBinary is not null);
        if (File.Exists(Path.Combine(dir, "complete")) && File.Exists(kernelPath)) return info;
        await s_lock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (File.Exists(Path.Combine(dir, "complete")) && File.Exists(kernelPath)) return info;
            var tmp = dir + $".tmp-{Environment.ProcessId}";
            if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
            Directory.CreateDirectory(tmp);
            try
            {
                // The extracted kernel is shared by every image of this kernel version.
                await ExtractVmlinuxAsync(vmlinuz, Path.Combine(cacheDir, "kernels"), ver, ct).ConfigureAwait(false);
                WriteInitramfs(o, ver, modDir, Path.Combine(tmp, "initrd.cpio"));
                MakeRootDisk(o, tmp);
                File.WriteAllText(Path.Combine(tmp, "complete"), $"kernel {ver}\n");
                if (Directory.Exists(dir)) Directory.Delete(dir, true);
                Directory.Move(tmp, dir);
            }
            catch
            {
                try { Directory.Delete(tmp, true); } catch (IOException) { }
                throw;
            }
            return info;
        }
        finally { s_lock.Release(); }
    }

    static string FindKernelVersion(DefaultImageOptions o)
    {
        var versions = Directory.Exists(o.BootDir)
            ? Directory.GetFiles(o.BootDir, "vmlinuz-*").Select(f => Path.GetFileName(f)["vmlinuz-".Length..])
                .Where(v => Directory.Exists(Path.Combine(o.ModulesDir, v))).OrderDescending(
                    StringComparer.Ordinal).ToList()
            : [];
        return versions.FirstOrDefault()
            ?? throw new VmException($"no guest kernel found (a {o.BootDir}/vmlinuz-VERSION with " +
                $"{o.ModulesDir}/VERSION): install linux-image-amd64");
    }

    static string Key(DefaultImageOptions o, string ver, string vmlinuz)
    {
        var sb = new StringBuilder("hull-image-v3\n").Append(string.Join(",", Modules)).Append('\n');
        void F(string? p)
        {
            if (p is null) { sb.Append("-\n"); return; }
            var fi = new FileInfo(p);
            sb.Append(p).Append('|').Append(fi.Length).Append('|').Append(fi.LastWriteTimeUtc.Ticks).Append('\n');
        }
        sb.Append(ver).Append('\n');
        F(vmlinuz); F(o.Busybox); F(o.AgentBinary);
        sb.Append(o.ExtraInit ?? "-").Append('\n').Append(o.RootDiskMiB).Append('\n');
        if (o.RootDir is not null)
            foreach (var f in Directory.EnumerateFileSystemEntries(o.RootDir, "*",
                SearchOption.AllDirectories).Order(StringComparer.Ordinal))
            {
                sb.Append(Path.GetRelativePath(o.RootDir, f)).Append('|');
                if (File.Exists(f)) F(f); else sb.Append('\n');
            }
        sb.Append(InitScript(ver, [], o));
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(sb.ToString())))[..16];
    }

    // ---------------------------------------------------------------- kernel

    /// <summary>
    /// Extracts the uncompressed ELF vmlinux from a bzImage: finds the compressed payload (xz, gzip or zstd magic)
    /// and decompresses it. Cached per kernel version.
    /// </summary>
    public static async Task<string> ExtractVmlinuxAsync(string bzImage, string cacheDir, string version,
        CancellationToken ct = default)
    {
        var outPath = Path.Combine(cacheDir, $"vmlinux-{version}");
        if (File.Exists(outPath)) return outPath;
        Directory.CreateDirectory(cacheDir);
        var data = await File.ReadAllBytesAsync(bzImage, ct).ConfigureAwait(false);
        var tmp = outPath + $".tmp-{Environment.ProcessId}";
        try
        {
            var done = false;
            foreach (var (magic, kind) in new (byte[], string)[]
            {
                ([0xFD, (byte)'7', (byte)'z', (byte)'X', (byte)'Z', 0x00], "xz"),
                ([0x28, 0xB5, 0x2F, 0xFD], "zstd"),
                ([0x1F, 0x8B, 0x08], "gzip"),
            })
            {
                for (var at = data.AsSpan().IndexOf(magic); at >= 0 && !done;)
                {
                    try
                    {
                        using (var outFile = File.Create(tmp))
                        {
                            var payload = new MemoryStream(data, at, data.Length - at, writable: false);
                            switch (kind)
                            {
                                case "gzip":
                                    using (var gz = new GZipStream(payload,
                                        CompressionMode.Decompress)) await gz.CopyToAsync(outFile,
                                        ct).ConfigureAwait(false);
                                    break;
                                case "xz":
                                    Tools.Run(Tools.Find("xz", "xz-utils"), ["-dc", "--single-stream"],
                                        $"decompressing {bzImage}", stdin: payload, stdout: outFile);
                                    break;
                                default:
                                    Tools.Run(Tools.Find("zstd", "zstd"), ["-dc"], $"decompressing {bzImage}",
                                        stdin: payload, stdout: outFile);
                                    break;
                            }
                        }
                        done = IsElf(tmp);
                    }
                    catch (Exception e) when (e is VmException or InvalidDataException or IOException) { }
                    if (done) break;
                    var next = data.AsSpan(at + 1).IndexOf(magic);
                    at = next < 0 ? -1 : at + 1 + next;
                }
                if (done) break;
            }
            if (!done) throw new VmException($"cannot find a compressed ELF kernel inside {bzImage}: is it a bzImage?");
            File.Move(tmp, outPath, overwrite: true);
            return outPath;
        }
        finally { Tools.TryDelete(tmp); }
    }

    static bool IsElf(string path)
    {
        using var f = File.OpenRead(path);
        Span<byte> h = stackalloc byte[4];
        return f.Length > 4096 && f.Read(h) == 4 && h[0] == 0x7F && h[1] == 'E' && h[2] == 'L' && h[3] == 'F';
    }

    // ---------------------------------------------------------------- initramfs

    /// <summary>modules.dep closure of <see cref="Modules"/>, dependencies first: relative paths under the module
    /// dir.</summary>
    public static List<string> ResolveModules(string modDir, IEnumerable<string> wanted)
    {
        var deps = new Dictionary<string, (string Path, string[] Deps)>(StringComparer.Ordinal);
        static string NameOf(string p)
        {
            var n = Path.GetFileName(p);
            var i = n.IndexOf(".ko", StringComparison.Ordinal);
            return (i > 0 ? n[..i] : n).Replace('-', '_');
        }
        foreach (var line in File.ReadLines(Path.Combine(modDir, "modules.dep")))
        {
            var colon = line.IndexOf(':');
            if (colon < 0) continue;
            var path = line[..colon];
            deps[NameOf(path)] = (path, line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries));
        }
        var order = new List<string>();
        var seen = new HashSet<string>();
        void Visit(string name)
        {
            if (!seen.Add(name)) return;
            if (!deps.TryGetValue(name, out var d)) return; // built into this kernel
            foreach (var dep in d.Deps) Visit(NameOf(dep));
            order.Add(d.Path);
        }
        foreach (var w in wanted) Visit(w.Replace('-', '_'));
        return order;
    }

    static byte[] ReadModule(string path)
    {
        if (path.EndsWith(".ko", StringComparison.Ordinal)) return File.ReadAllBytes(path);
        using var ms = new MemoryStream();
        using var input = File.OpenRead(path);
        if (path.EndsWith(".gz", StringComparison.Ordinal)) { using var gz =
            new GZipStream(input, CompressionMode.Decompress); gz.CopyTo(ms); }
        else if (path.EndsWith(".xz", StringComparison.Ordinal)) Tools.Run(Tools.Find("xz", "xz-utils"), ["-dc"],
            $"decompressing {path}", stdin: input, stdout: ms);
        else if (path.EndsWith(".zst", StringComparison.Ordinal)) Tools.Run(Tools.Find("zstd", "zstd"), ["-dc"],
            $"decompressing {path}", stdin: input, stdout: ms);
        else throw new VmException($"module {path} has an unknown compression");
        return ms.ToArray();
    }

    static void WriteInitramfs(DefaultImageOptions o, string ver, string modDir, string output)
    {
        var mods = ResolveModules(modDir, Modules);
        var names = new List<string>();
        using var f = File.Create(output);
        using (var cpio = new CpioWriter(f))
        {
            foreach (var d in new[] { "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "etc",
                "mnt/root", "root", $"lib/modules/{ver}" })
                cpio.Directory(d);
            cpio.CharDevice("dev/console", 5, 1);
            cpio.CharDevice("dev/null", 1, 3, 0b110_110_110);
            cpio.File("bin/busybox", File.ReadAllBytes(o.Busybox), 0b111_101_101);
            cpio.Symlink("bin/sh", "busybox");
            foreach (var m in mods)
            {
                var name = Path.GetFileName(m);
                var i = name.IndexOf(".ko", StringComparison.Ordinal);
                var plain = name[..i] + ".ko";
                cpio.File($"lib/modules/{ver}/{plain}", ReadModule(Path.Combine(modDir, m)));
                names.Add(plain);
            }
            if (o.AgentBinary is not null)
            {
                cpio.File("bin/hull-agent", File.ReadAllBytes(o.AgentBinary), 0b111_101_101);
                foreach (var lib in SharedLibraries(o.AgentBinary))
                    cpio.File(lib.TrimStart('/'), File.ReadAllBytes(lib), 0b111_101_101);
            }
            cpio.File("etc/hostname", "hull\n"u8);
            cpio.File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"u8);
            cpio.File("etc/group", "root:x:0:\n"u8);
            cpio.File("init", Encoding.UTF8.GetBytes(InitScript(ver, names, o)), 0b111_101_101);
        }
    }

    /// <summary>The shared libraries a dynamic binary needs (from ldd), including the dynamic loader.</summary>
    public static List<string> SharedLibraries(string binary)
    {
        string output;
        try { output = Tools.Run(Tools.Find("ldd", "libc-bin"), [binary], $"listing the libraries of {binary}"); }
        catch (VmException e) when (e.Message.Contains("not a dynamic executable",
            StringComparison.Ordinal)) { return []; }
        var libs = new List<string>();
        foreach (var raw in output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            if (raw.Contains("not found", StringComparison.Ordinal)) throw new VmException(
                $"{binary} needs a library that is missing on this host: {raw}");
            var arrow = raw.IndexOf("=>", StringComparison.Ordinal);
            var rest = arrow >= 0 ? raw[(arrow + 2)..].Trim() : raw;
            var sp = rest.IndexOf(' ');
            var p = sp >= 0 ? rest[..sp] : rest;
            if (p.StartsWith('/') && File.Exists(p))
            {
                libs.Add(p);
                var real = Path.GetFullPath(new FileInfo(p).ResolveLinkTarget(true)?.FullName ?? p);
                if (real != p) libs.Add(real);
            }
        }
        return libs.Distinct().ToList();
    }

    static string InitScript(string ver, List<string> modules, DefaultImageOptions o)
    {
        var agent = o.AgentBinary is not null
            ? $"# The guest agent on its virtio-serial port, restarted a second after it ends.\n" +
              $"( while true; do /bin/hull-agent --serial {AgentChannel.GuestDevice}; sleep 1; done ) </dev/null " +
                  ">>/run/hull-agent.log 2>&1 &\n"
            : "";
        return $$"""
#!/bin/busybox sh
# Hull's init for the default VM image (generated).
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
for m in {{string.Join(' ', modules)}}; do
  insmod /lib/modules/{{ver}}/$m 2>/dev/null
done
root=
for w in $(cat /proc/cmdline); do
  case "$w" in
    hull.hostname=*) h="${w#hull.hostname=}"; hostname "$h"; echo "$h" >/etc/hostname ;;
    hull.root=*) root="${w#hull.root=}" ;;
  esac
done
# Name the virtio-serial ports (udev does this elsewhere).
mkdir -p /dev/virtio-ports
i=0
while [ $i -lt 50 ] && [ ! -e /sys/class/virtio-ports/vport0p1 ]; do sleep 0.1; i=$((i+1)); done
for p in /sys/class/virtio-ports/*; do
  [ -r "$p/name" ] && ln -sf "/dev/${p##*/}" "/dev/virtio-ports/$(cat "$p/name")"
done
if [ -n "$root" ]; then
  i=0
  while [ $i -lt 50 ] && [ ! -b "$root" ]; do sleep 0.1; i=$((i+1)); done
  if mount -t ext4 "$root" /mnt/root; then echo "hull: root disk $root mounted on /mnt/root"; else echo "hull: cannot mount $root"; fi
fi
# ACPI power button: the first event from the "Power Button" input device powers the guest off.
i=0
while [ $i -lt 30 ] && [ ! -e /sys/class/input/event0 ]; do sleep 0.1; i=$((i+1)); done
for e in /sys/class/input/event*; do
  if grep -q "Power Button" "$e/device/name" 2>/dev/null; then
    ( head -c 1 "/dev/input/${e##*/}" >/dev/null && sync && poweroff -f ) &
  fi
done
# Networking: lo, and each NIC (virtio-net) configured by DHCP in the background; the host's dnsmasq answers, and
# the hostname sent lets it resolve this guest by name.
ip link set lo up
cat >/run/udhcpc.script <<'EOF'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    { [ -n "$domain" ] && echo "search $domain"; for d in $dns; do echo "nameserver $d"; done; } >/etc/resolv.conf ;;
esac
EOF
chmod 755 /run/udhcpc.script
for n in /sys/class/net/*; do
  i="${n##*/}"; [ "$i" = lo ] && continue
  ip link set "$i" up
  udhcpc -i "$i" -b -s /run/udhcpc.script -x "hostname:$(hostname)" >>/run/udhcpc.log 2>&1
done
{{agent}}{{o.ExtraInit ?? ""}}
# Open the serial port before the marker: until ttyS0 is opened as a tty its receiver is off, and opening it
# discards what arrived, so input typed right after the marker would lose its first byte. This holder is not a
# session leader, so it does not take the port as its controlling terminal; the console shell does.
sleep 2147483647 <>/dev/ttyS0 >&0 2>&0 &
echo "{{ReadyMarker}} $(hostname)"
# The console shell, respawned when it exits.
while true; do
  setsid sh -c 'exec sh -l </dev/ttyS0 >/dev/ttyS0 2>&1'
done

""";
    }

    // ---------------------------------------------------------------- root disk

    static void MakeRootDisk(DefaultImageOptions o, string dir)
    {
        var raw = Path.Combine(dir, "root.raw");
        string? tmpRoot = null;
        var src = o.RootDir;
        try
        {
            if (src is null)
            {
                tmpRoot = Path.Combine(dir, "rootdir");
                Directory.CreateDirectory(Path.Combine(tmpRoot, "etc"));
                File.WriteAllText(Path.Combine(tmpRoot, "etc", "os-release"), "NAME=\"Hull default image\"\nID=hull\n");
                File.WriteAllText(Path.Combine(tmpRoot, "README"), "Hull default VM root disk.\n");
                src = tmpRoot;
            }
            Tools.Run(Tools.Find("mkfs.ext4", "e2fsprogs"),
                ["-q", "-F", "-L", "hullroot", "-d", src, raw, $"{o.RootDiskMiB}M"], "making the root disk");
            var q = Path.Combine(dir, "root.qcow2");
            Tools.Run(Tools.QemuImg, ["convert", "-q", "-f", "raw", "-O", "qcow2", raw, q],
                "converting the root disk to qcow2");
            if (OperatingSystem.IsLinux()) File.SetUnixFileMode(q,
                UnixFileMode.UserRead | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        }
        finally
        {
            Tools.TryDelete(raw);
            if (tmpRoot is not null) Directory.Delete(tmpRoot, true);
        }
    }
}
