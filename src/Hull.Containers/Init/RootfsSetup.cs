using Hull.Linux;
using Hull.Oci;

namespace Hull.Containers;

/// <summary>One cgroup hierarchy as the container should see it (from the host's mountinfo and
/// /proc/self/cgroup).</summary>
public sealed record CgroupHierarchy(string Name, string FsType, string Options, string HostDir);

/// <summary>
/// The filesystem steps of container creation, in spec order, through <see cref="ISyscalls"/> so that they can be
/// checked without root. Runs in the container's new mount namespace, before and around pivot_root.
/// Order: PrepareRoot → MountAll → CreateDevices → (hooks) → PivotRoot → Finish.
/// </summary>
public sealed class RootfsSetup(ISyscalls sys, Spec spec, string rootfs, bool inUserNamespace,
    IReadOnlyList<CgroupHierarchy> cgroups, bool newCgroupNamespace,
    IReadOnlyList<int>? bindSourceFds = null)
{
    static readonly (string Path, uint Major, uint Minor)[] DefaultDevices =
        [("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7), ("/dev/random", 1, 8), ("/dev/urandom", 1, 9),
            ("/dev/tty", 5, 0)];

    public string Rootfs { get; } = rootfs.TrimEnd('/');

    string InRoot(string path) => SecurePath.Join(Rootfs, path, sys is LinuxSyscalls ? null : _ => null);

    /// <summary>Makes the host's mounts invisible to propagation and the rootfs a mount point of its own.</summary>
    public void PrepareRoot()
    {
        var prop = spec.Linux?.RootfsPropagation switch
        {
            "shared" or "rshared" => MS.SHARED,
            "private" or "rprivate" => MS.PRIVATE,
            "unbindable" or "runbindable" => MS.UNBINDABLE,
            _ => MS.SLAVE,
        };
        sys.Mount(null, "/", null, MS.REC | prop, null);
        // pivot_root refuses a shared new root or a shared parent of it (EINVAL). With "/" shared (rshared keeps
        // the host's mounts peers, for bidirectional volumes), the one mount holding the rootfs is made private
        // here, in the container's copy, as runc does; the rootfs's own propagation is set after pivot_root.
        if (prop == MS.SHARED) sys.Mount(null, MountPointOf(Rootfs), null, MS.PRIVATE, null);
        sys.Mount(Rootfs, Rootfs, null, MS.BIND | MS.REC, null);
    }

    /// <summary>The mount point of the mount that holds <paramref name="path"/> (the longest one above it).</summary>
    string MountPointOf(string path)
    {
        if (sys is not LinuxSyscalls) return "/";
        var best = "/";
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            var point = Hull.Cgroups.CgroupLayout.Unescape(line.Split(' ', 6)[4]);
            if (point.Length > best.Length && (path == point || path.StartsWith(point + "/", StringComparison.Ordinal)))
                best = point;
        }
        return best;
    }

    public void MountAll()
    {
        var mounts = spec.Mounts ?? [];
        for (var i = 0; i < mounts.Count; i++) MountOne(mounts[i],
            bindSourceFds is { } fds && i < fds.Count ? fds[i] : -1);
    }

    /// <param name="sourceFd">The bind source as a detached mount the runtime cloned (see InitPlan.BindSourceFds),
    /// or -1.</param>
    public void MountOne(Mount m, int sourceFd = -1)
    {
        var p = MountOptions.Parse(m);
        var dest = InRoot(m.Destination);
        if (m.Type == "cgroup") { MountCgroup(dest, p); return; }
        if (p.Bind)
        {
            var source = sourceFd >= 0 ? $"/proc/self/fd/{sourceFd}" : m.Source!;
            if (!sys.Exists(source))
                throw new ContainerException($"bind mount source {source} (for {m.Destination}) does not exist: " +
                    "create it or fix mounts[].source");
            if (sys.IsDirectory(source)) sys.MkdirAll(dest, 0b111_101_101);
            else sys.CreateFile(dest, 0b110_100_100);
            if (sourceFd >= 0) sys.AttachMount(sourceFd, dest);
            else sys.Mount(source, dest, null, MS.BIND | (p.Recursive ? MS.REC : 0), null);
            if ((p.Flags & ParsedMount.RemountFlags) != 0)
                Remount(dest, p.Flags & ParsedMount.RemountFlags, m.Destination);
        }
        else
        {
            sys.MkdirAll(dest, 0b111_101_101);
            try
            {
                sys.Mount(m.Source ?? m.Type, dest, m.Type, p.Flags, p.Data.Length > 0 ? p.Data : null);
            }
            catch (LinuxException e) when (e.Errno == Errors.EPERM && inUserNamespace && m.Type is "sysfs" or "mqueue")
            {
                // Without a network (sysfs) or ipc (mqueue) namespace of its own, a user namespace may not mount
                // these: give it the host's, read-only for sysfs, as runc does.
                var host = m.Type == "sysfs" ? "/sys" : "/dev/mqueue";
                sys.Mount(host, dest, null, MS.BIND | MS.REC, null);
                if (m.Type == "sysfs") Remount(dest, MS.RDONLY | MS.NOSUID | MS.NODEV | MS.NOEXEC, m.Destination);
            }
        }
        if (p.Propagation != 0) sys.Mount(null, dest, null, p.Propagation, null);
    }

    void Remount(string dest, ulong flags, string what)
    {
        try { sys.Mount(null, dest, null, MS.REMOUNT | MS.BIND | flags, null); }
        catch (LinuxException e) when (e.Errno == Errors.EPERM)
        {
            // In a user namespace the flags locked on the source (nodev, nosuid, noexec...) must be kept.
            var locked = LockedFlags(dest);
            try { sys.Mount(null, dest, null, MS.REMOUNT | MS.BIND | flags | locked, null); }
            catch (LinuxException e2) { throw new ContainerException(
                $"remounting {what} with its options: {e2.Message}", e2); }
        }
    }

    static ulong LockedFlags(string path)
    {
        try
        {
            var f = new Statvfs(path).Flags;
            ulong r = 0;
            if ((f & 2) != 0) r |= MS.NOSUID;
            if ((f & 4) != 0) r |= MS.NODEV;
            if ((f & 8) != 0) r |= MS.NOEXEC;
            if ((f & 1) != 0) r |= MS.RDONLY;
            return r;
        }
        catch (LinuxException) { return 0; }
    }

    void MountCgroup(string dest, ParsedMount p)
    {
        var flags = p.Flags | MS.NOSUID | MS.NODEV | MS.NOEXEC;
        sys.MkdirAll(dest, 0b111_101_101);
        var unifiedOnly = cgroups.Count == 1 && cgroups[0].FsType == "cgroup2";
        if (unifiedOnly)
        {
            MountHierarchy(dest, cgroups[0], flags);
            return;
        }
        // v1 or hybrid: a tmpfs holding one directory per hierarchy, as on the host.
        sys.Mount("tmpfs", dest, "tmpfs", MS.NOSUID | MS.NODEV | MS.NOEXEC, "mode=755");
        foreach (var h in cgroups)
        {
            var sub = dest + "/" + h.Name;
            sys.MkdirAll(sub, 0b111_101_101);
            MountHierarchy(sub, h, flags);
            // cpu,cpuacct is reachable as cpu and cpuacct too
            if (h.Name.Contains(','))
                foreach (var alias in h.Name.Split(','))
                    if (!sys.Exists(dest + "/" + alias)) sys.Symlink(h.Name, dest + "/" + alias);
        }
        if ((flags & MS.RDONLY) != 0) sys.Mount(null, dest, null,
            MS.REMOUNT | MS.RDONLY | MS.NOSUID | MS.NODEV | MS.NOEXEC, "mode=755");
    }

    void MountHierarchy(string target, CgroupHierarchy h, ulong flags)
    {
        // A cgroup namespace on a pure v2 host gets a cgroup2 mount of its own. Every other hierarchy is the
        // container's own directory (given by the runtime), bind-mounted: the same view as a cgroupfs mount in the
        // namespace, one mount call, and it does not depend on what /proc/self/cgroup says inside the namespace.
        if (newCgroupNamespace && h.FsType == "cgroup2" && cgroups.Count == 1)
            sys.Mount("cgroup", target, h.FsType, flags, h.Options.Length > 0 ? h.Options : null);
        else
        {
            sys.Mount(h.HostDir, target, null, MS.BIND | MS.REC, null);
            if ((flags & MS.RDONLY) != 0) Remount(target, flags & ParsedMount.RemountFlags, target);
        }
    }

    /// <summary>Device nodes: the default set and linux.devices (bind-mounted from the host inside a user namespace,
    /// where mknod is not allowed).</summary>
    public void CreateDevices()
    {
        var devIsMount = spec.Mounts?.Any(m => m.Destination.TrimEnd('/') == "/dev") ?? false;
        var devices = new List<(string Path, char Type, uint Major, uint Minor, uint Mode, uint Uid, uint Gid)>();
        if (devIsMount)
            foreach (var (path, ma, mi) in DefaultDevices) devices.Add((path, 'c', ma, mi, 0b110_110_110, 0, 0));
        foreach (var d in spec.Linux?.Devices ?? [])
        {
            devices.RemoveAll(x => x.Path == d.Path);
            devices.Add((d.Path, d.Type[0], (uint)d.Major, (uint)d.Minor, d.FileMode ?? 0b110_110_110, d.Uid ?? 0,
                d.Gid ?? 0));
        }
        foreach (var d in devices)
        {
            var dest = InRoot(d.Path);
            var dir = Path.GetDirectoryName(dest)!;
            sys.MkdirAll(dir, 0b111_101_101);
            if (inUserNamespace)
            {
                sys.CreateFile(dest, 0);
                sys.Mount(d.Path, dest, null, MS.BIND, null);
                continue;
            }
            var typeBits = d.Type switch { 'b' => 0x6000u, 'p' => 0x1000u, _ => 0x2000u };
            if (sys.Exists(dest)) continue;
            sys.Mknod(dest, typeBits | (d.Mode & 0xfff), Makedev(d.Major, d.Minor));
            sys.Chmod(dest, d.Mode & 0xfff);
            if (d.Uid != 0 || d.Gid != 0) sys.Chown(dest, d.Uid, d.Gid);
        }
        if (!devIsMount) return;
        foreach (var (link, target) in new[] { ("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2"), ("/dev/ptmx", "pts/ptmx") })
        {
            var dest = InRoot(link);
            if (!sys.Exists(dest)) sys.Symlink(target, dest);
        }
    }

    public static ulong Makedev(uint major, uint minor) =>
        ((ulong)(major & 0xfffff000) << 32) | ((ulong)(major & 0xfff) << 8) | ((ulong)(minor & 0xffffff00) << 12) | (
            minor & 0xff);

    /// <summary>Makes the rootfs "/" (pivot_root with the old root stacked on the new and then detached, as runc
    /// does).</summary>
    public void PivotRoot(bool noPivot)
    {
        if (noPivot)
        {
            sys.Chdir(Rootfs);
            sys.Mount(Rootfs, "/", null, MS.MOVE, null);
            sys.Chroot(".");
            sys.Chdir("/");
            return;
        }
        using var oldRoot = sys.OpenDirectory("/");
        sys.Chdir(Rootfs);
        sys.PivotRoot(".", ".");
        // The old root is now stacked on "/": keep its unmount from propagating to the host, then detach it.
        // "." must be the old root itself: the cwd (the new root, under it) would make the container's own mounts
        // slaves, cutting bidirectional (rshared) volumes off the host.
        sys.Fchdir(oldRoot);
        sys.Mount(null, ".", null, MS.SLAVE | MS.REC, null);
        sys.Umount(".", MS.MNT_DETACH);
        sys.Chdir("/");
    }

    /// <summary>After pivot_root: sysctls, masked and read-only paths, read-only root, final propagation.</summary>
    public void Finish()
    {
        foreach (var (key, value) in spec.Linux?.Sysctl ?? [])
            sys.WriteFile("/proc/sys/" + key.Replace('.', '/'), value);
        foreach (var path in spec.Linux?.ReadonlyPaths ?? [])
        {
            if (!sys.Exists(path)) continue;
            sys.Mount(path, path, null, MS.BIND | MS.REC, null);
            Remount(path, MS.RDONLY | MS.NOSUID | MS.NODEV | MS.NOEXEC, path);
        }
        foreach (var path in spec.Linux?.MaskedPaths ?? [])
        {
            if (!sys.Exists(path)) continue;
            if (sys.IsDirectory(path)) sys.Mount("tmpfs", path, "tmpfs", MS.RDONLY, null);
            else sys.Mount("/dev/null", path, null, MS.BIND, null);
        }
        if (spec.Root?.Readonly == true)
            Remount("/", MS.RDONLY, "/ (root.readonly)");
        if (spec.Linux?.RootfsPropagation is { Length: > 0 } rp)
        {
            var flags = MountOptions.Parse(new Mount { Options = [rp] }).Propagation;
            sys.Mount(null, "/", null, flags, null);
        }
    }
}
