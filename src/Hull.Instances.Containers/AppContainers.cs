using Hull.Linux;
using Hull.Oci;

namespace Hull.Instances.Containers;

/// <summary>
/// Application containers (the sandboxes of the classic LXC description): an instance of the built-in "host" image
/// runs a host program. Its root is a small skeleton of its own (overlayfs as usual: /var, /home, /root, /srv, /opt...
/// are the instance's, /tmp is a tmpfs) onto which the host's system directories are bind-mounted read-only at start:
/// by default /usr, /lib, /lib32, /lib64, /libx32, /bin, /sbin and /etc as present on the host (app.system chooses
/// others), plus app.share. A top-level system directory that is a symlink on the host (merged /usr: /bin -> usr/bin)
/// becomes the same symlink in the instance's root. Bind mounts show host changes at once: a host upgrade is visible
/// inside immediately; the instance cannot write there (EROFS).
/// </summary>
public static class AppContainers
{
    /// <summary>The file in the root of the host image's skeleton that marks an instance made from it.</summary>
    public const string Marker = ".hull-host-rootfs";

    static readonly string[] SkeletonDirs = ["dev", "proc", "sys", "tmp", "run", "var/tmp", "var/log", "var/cache",
        "var/lib", "home", "root", "mnt", "opt", "srv", "media"];

    /// <summary>Builds the tarball of the "host" image: only the skeleton; the host's directories are mounted at
    /// start.</summary>
    public static async Task<string> BuildHostImageAsync(string work, CancellationToken ct)
    {
        var root = Path.Combine(work, "rootfs");
        foreach (var d in SkeletonDirs) Directory.CreateDirectory(Path.Combine(root, d));
        foreach (var d in new[] { "tmp", "var/tmp" }) Sys.Check(Libc.chmod(Path.Combine(root, d), 0b1_111_111_111),
            $"chmod {d}");
        Sys.Check(Libc.chmod(Path.Combine(root, "root"), 0b111_000_000), "chmod root");
        await File.WriteAllTextAsync(Path.Combine(root, Marker),
            "The root of a Hull application container: the host's system directories are bind-mounted read-only at " +
                "start.\n", ct);
        var tar = Path.Combine(work, "host.tar");
        await HostProgram.RunAsync("tar",
            ["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner", "-cf", tar, "-C", root, "."],
            new() { What = "packing the host image", Error = e => new InstanceException(e.Message, 500) }, ct);
        return tar;
    }

    /// <summary>True if <paramref name="lowerOrRoot"/> (the image root the instance is made from) is the host
    /// skeleton.</summary>
    public static bool IsHostImage(string lowerOrRoot) => File.Exists(Path.Combine(lowerOrRoot, Marker));

    /// <summary>
    /// Turns a container spec into an application container's: the command from app.command, the host's system
    /// directories and app.share bind-mounted read-only, a private /tmp. <paramref name="root"/> is the mounted
    /// instance root (top-level symlinks for merged-/usr hosts are made there).
    /// </summary>
    public static void Apply(InstanceSpec spec, Spec oci, string root)
    {
        var command = AppConfig.Command(spec.Config)
            ?? throw new InstanceException($"instance '{spec.Name}' is an application container of the host image " +
                $"and has no command: set {AppConfig.CommandKey} (hull launch host NAME -- PROGRAM [ARGS...])");
        oci.Process!.Args = command;
        oci.Process.Cwd = "/";
        // A sandboxed program: it cannot gain privileges through set-uid files.
        oci.Process.NoNewPrivileges = true;
        oci.Mounts!.Add(new Mount { Destination = "/tmp", Type = "tmpfs", Source = "tmpfs",
            Options = ["nosuid", "nodev", "mode=1777"] });
        using var rootFd = Sys.Open(root, O.RDONLY | O.DIRECTORY);
        foreach (var dir in AppConfig.System(spec.Config))
        {
            var info = new DirectoryInfo(dir);
            if (info.LinkTarget is { } target && dir.LastIndexOf('/') == 0)
            {
                // Merged /usr: /bin -> usr/bin. The same symlink inside follows the shared /usr.
                EnsureSymlink(spec, rootFd, dir[1..], target);
                continue;
            }
            if (!info.Exists) continue; // not on this host (e.g. /lib32)
            if (dir.LastIndexOf('/') == 0) EnsureNotSymlink(spec, rootFd, dir[1..]);
            oci.Mounts.Add(ReadOnlyBind(dir));
        }
        foreach (var dir in AppConfig.Shares(spec.Config))
        {
            if (!Directory.Exists(dir) && !File.Exists(dir))
                throw new InstanceException($"{AppConfig.ShareKey}: {dir} does not exist on the host: create it or " +
                    $"remove it from {AppConfig.ShareKey}");
            if (dir.LastIndexOf('/') == 0) EnsureNotSymlink(spec, rootFd, dir[1..]);
            oci.Mounts.Add(ReadOnlyBind(dir));
        }
    }

    static Mount ReadOnlyBind(string dir) =>
        new() { Destination = dir, Type = "bind", Source = dir, Options = ["rbind", "ro"] };

    /// <summary>Makes the top-level entry <paramref name="name"/> of the instance root a symlink to
    /// <paramref name="target"/>
    /// (replacing an empty directory or another symlink); the names never leave the root (openat2 on its fd).</summary>
    static void EnsureSymlink(InstanceSpec spec, SafeFd root, string name, string target)
    {
        if (RootedFs.TryOpen(root, name, O.PATH | O.NOFOLLOW, 0, out var fd, out _))
        {
            string? current;
            using (fd)
            {
                var st = RootedFs.FStat(fd);
                current = (st.Mode & 0xF000) == 0xA000 ? new FileInfo($"/proc/self/fd/{root.Fd}/{name}").LinkTarget
                    : null;
                if (current == target) return;
            }
            try { RootedFs.UnlinkAt(root, name, current is null); }
            catch (LinuxException e)
            {
                throw new InstanceException($"instance '{spec.Name}': /{name} must become a symlink to {target} as " +
                    $"on the host, but it is a non-empty directory ({e.Message}): move its contents away", 409);
            }
        }
        Sys.Check(Libc.symlink(target, $"/proc/self/fd/{root.Fd}/{name}"),
            $"symlink /{name} -> {target} in instance '{spec.Name}'");
    }

    /// <summary>Removes a top-level symlink where a directory is to be mounted (the host stopped using a symlink
    /// there).</summary>
    static void EnsureNotSymlink(InstanceSpec spec, SafeFd root, string name)
    {
        if (!RootedFs.TryOpen(root, name, O.PATH | O.NOFOLLOW, 0, out var fd, out _)) return;
        bool link;
        using (fd) link = (RootedFs.FStat(fd).Mode & 0xF000) == 0xA000;
        if (link) RootedFs.UnlinkAt(root, name, false);
    }
}
