using Hull.Linux;
using System.Globalization;
using System.Text;
using Hull.Vm.Image;

namespace Hull.Instances.Vms;

/// <summary>
/// A VM image as the image store holds it (one file). Two kinds:
/// <list type="bullet">
/// <item>a Hull VM bundle: an uncompressed tar with a "hull-vm-image" manifest, a kernel, an initramfs and a root
/// disk; it boots directly (kernel + initrd, no firmware). The built-in "busybox" VM image is one.</item>
/// <item>anything else is a bootable disk image (qcow2 or raw) and boots through the firmware (SeaBIOS).</item>
/// </list>
/// A bundle is unpacked once, next to the image file (FINGERPRINT/vm/), and shared read-only by every instance.
/// </summary>
public sealed record VmImageLayout(string? Kernel, string? Initrd, string RootDisk, string? Cmdline)
{
    public bool Direct => Kernel is not null;
}

public static class VmImages
{
    public const string Manifest = "hull-vm-image";
    static readonly SemaphoreSlim s_lock = new(1, 1);

    /// <summary>Unpacks a bundle (once) or describes a plain disk image.</summary>
    public static async Task<VmImageLayout> ResolveAsync(string imageFile, CancellationToken ct)
    {
        if (!File.Exists(imageFile))
            throw new InstanceException($"the image file {imageFile} is gone: was the image deleted? import it again",
                500);
        if (!IsTar(imageFile)) return new VmImageLayout(null, null, imageFile, null);
        var dir = Path.Combine(Path.GetDirectoryName(imageFile)!, "vm");
        if (File.Exists(Path.Combine(dir, "complete"))) return ReadManifest(dir);
        await s_lock.WaitAsync(ct);
        try
        {
            if (File.Exists(Path.Combine(dir, "complete"))) return ReadManifest(dir);
            var tmp = dir + ".tmp-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
            if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
            Directory.CreateDirectory(tmp);
            try
            {
                await RunAsync("tar", ["-xf", imageFile, "-C", tmp, "--no-same-owner"], ct);
                if (!File.Exists(Path.Combine(tmp, Manifest)))
                    throw new InstanceException($"the VM image {imageFile} is a tar file without a {Manifest} " +
                        "manifest: import a disk image (qcow2 or raw) or a Hull VM bundle");
                var layout = ReadManifest(tmp);
                File.WriteAllText(Path.Combine(tmp, "complete"), "\n");
                if (Directory.Exists(dir)) Directory.Delete(dir, true);
                Directory.Move(tmp, dir);
            }
            catch
            {
                try { Directory.Delete(tmp, true); } catch (IOException) { }
                throw;
            }
            return ReadManifest(dir);
        }
        finally { s_lock.Release(); }
    }

    /// <summary>
    /// Refuses at import what no VM can boot, naming what was found: a Hull VM bundle must carry its manifest; any
    /// other file must be a qcow2 image that qemu-img check finds whole, or a raw image with a partition table (MBR or
    /// GPT) or an ISO 9660 volume (install media, attached as a CD-ROM).
    /// </summary>
    public static async Task CheckAsync(string file, CancellationToken ct)
    {
        if (IsTar(file))
        {
            var list = await RunAsync("tar", ["-tf", file], ct);
            if (!list.Split('\n').Any(l => l.Trim() is Manifest or "./" + Manifest))
                throw new InstanceException($"the VM image is a tar file without a {Manifest} manifest: import a " +
                    "disk image (qcow2 or raw), an ISO, or a Hull VM bundle");
            return;
        }
        var size = new FileInfo(file).Length;
        var head = new byte[34 * 1024];
        int n;
        using (var f = File.OpenRead(file)) n = f.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        if (n >= 4 && head[0] == 'Q' && head[1] == 'F' && head[2] == 'I' && head[3] == 0xfb)
        {
            var check = await HostProgram.ExecAsync("qemu-img", ["check", "-q", "-f", "qcow2", file],
                new(), ct);
            if (check.ExitCode != 0) throw new InstanceException($"the qcow2 image is damaged or truncated " +
                $"(qemu-img check: {(check.Stderr + check.Stdout).Trim().Split('\n')[0]}): import a whole image");
            return;
        }
        if (IsIso(head, n) || (n >= 512 && head[510] == 0x55 && head[511] == 0xaa)
            || (n >= 520 && Encoding.ASCII.GetString(head, 512, 8) == "EFI PART"))
            return;
        var text = head.Take(n).All(b => b is (>= 0x20 and < 0x7f) or (byte)'\n' or (byte)'\r' or (byte)'\t');
        throw new InstanceException($"the file is not a VM disk image: {size} bytes of " +
            (text ? "text" : "data") + " with no qcow2 header, no partition table (MBR or GPT) and no ISO 9660 " +
            "volume: give a bootable disk image (qcow2 or raw), an ISO, or a Hull VM bundle");
    }

    /// <summary>True for an ISO 9660 image ("CD001" in the primary volume descriptor at 32 KiB).</summary>
    public static bool IsIso(string file)
    {
        var head = new byte[34 * 1024];
        using var f = File.OpenRead(file);
        return IsIso(head, f.ReadAtLeast(head, head.Length, throwOnEndOfStream: false));
    }

    static bool IsIso(byte[] head, int n) => n >= 32774 && Encoding.ASCII.GetString(head, 32769, 5) == "CD001";

    static bool IsTar(string path)
    {
        using var f = File.OpenRead(path);
        if (f.Length < 512) return false;
        var b = new byte[8];
        f.Position = 257;
        return f.Read(b, 0, 5) == 5 && Encoding.ASCII.GetString(b, 0, 5) == "ustar";
    }

    static VmImageLayout ReadManifest(string dir)
    {
        var kv = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in File.ReadAllLines(Path.Combine(dir, Manifest)))
        {
            var i = line.IndexOf('=');
            if (i > 0) kv[line[..i].Trim()] = line[(i + 1)..].Trim();
        }
        string? F(string key, bool required)
        {
            if (!kv.TryGetValue(key, out var rel) || rel.Length == 0)
                return required ? throw new InstanceException(
                    $"the VM image manifest in {dir} has no '{key}': rebuild or re-import the image", 500) : null;
            if (rel.Contains('/') || rel is "." or "..") throw new InstanceException(
                $"the VM image manifest in {dir} names '{rel}' for '{key}': only file names are allowed", 500);
            var p = Path.Combine(dir, rel);
            return File.Exists(p) ? p : throw new InstanceException(
                $"the VM image in {dir} lacks its {key} file {rel}: re-import the image", 500);
        }
        return new VmImageLayout(F("kernel", true), F("initrd", false), F("root", true)!,
            kv.GetValueOrDefault("cmdline"));
    }

    /// <summary>
    /// Builds the built-in "busybox" VM image: the default image (host kernel, busybox initramfs with the virtio
    /// modules, the guest agent, an ext4 root disk) packed as a bundle in <paramref name="workDir"/>. Returns the
    /// bundle.
    /// </summary>
    public static async Task<string> BuildDefaultBundleAsync(string workDir, string cacheDir, string? agentBinary,
        Action<string>? progress, CancellationToken ct)
    {
        if (agentBinary is null || !File.Exists(agentBinary))
            throw new InstanceException("the built-in VM image needs the guest agent binary " +
                $"hull-agent{(agentBinary is null ? "" : $" ({agentBinary} does not exist)")}: install it next to " +
                "hulld (make install) or set HULL_AGENT_BINARY", 500);
        progress?.Invoke("building the default VM image (host kernel, busybox, virtio modules, hull-agent)");
        DefaultImageInfo img;
        try { img = await DefaultImage.BuildAsync(
            new DefaultImageOptions { CacheDir = cacheDir, AgentBinary = agentBinary }, ct); }
        catch (Hull.Vm.VmException e) { throw new InstanceException(
            $"building the built-in VM image failed: {e.Message}", 500); }
        var stage = Path.Combine(workDir, "bundle");
        Directory.CreateDirectory(stage);
        File.WriteAllText(Path.Combine(stage, Manifest),
            "format=1\nkernel=vmlinux\ninitrd=initrd.cpio\nroot=root.qcow2\n" +
            $"kernel-version={img.KernelVersion}\ndescription=Hull default VM image (busybox, hull-agent)\n");
        progress?.Invoke("packing the VM image");
        var bundle = Path.Combine(workDir, "busybox-vm.tar");
        await RunAsync("tar", ["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner", "-cf", bundle,
            "-C", stage, Manifest,
            "--transform", $"s,^vmlinux-{img.KernelVersion}$,vmlinux,", "-C", Path.GetDirectoryName(img.Kernel)!,
            Path.GetFileName(img.Kernel),
            "-C", img.Dir, "initrd.cpio", "root.qcow2"], ct);
        return bundle;
    }

    /// <summary>Runs a helper program (<see cref="HostProgram"/>); its failure is hulld's (500).</summary>
    internal static Task<string> RunAsync(string program, IEnumerable<string> args, CancellationToken ct) =>
        HostProgram.RunAsync(program, args, new() { Error = e => new InstanceException(e.Message, 500) }, ct);
}
