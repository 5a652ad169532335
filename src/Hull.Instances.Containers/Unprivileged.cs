using System.Collections.Concurrent;
using Hull.Linux;
using Hull.Oci;

namespace Hull.Instances.Containers;

/// <summary>
/// Unprivileged containers (the default, as Incus): the container runs in a user namespace whose ids 0..Size-1 are
/// host ids Base..Base+Size-1 (<see cref="IdMaps"/> chooses them from the config). The shared image layers keep their
/// owners on disk: the overlay sees them through an idmapped mount. The instance's own files (the overlay's upper dir,
/// a full copy's rootfs, its snapshots) are owned by the mapped host ids; the idmap file in the instance dir says which
/// map they are in, and <see cref="Shift"/> re-owns them when the wanted map changes (an instance made before this
/// existed, security.* changed, a copy, an import). Backups hold the container's view (<see cref="Shift"/> to null).
/// </summary>
sealed class Unprivileged
{
    public const string File = "idmap";
    const string PrivilegedText = "privileged";
    /// <summary>What a host id outside the map looks like inside (the kernel's overflow id).</summary>
    const int Overflow = 65534;

    readonly ConcurrentDictionary<IdMap, SafeFd> _userns = new();
    readonly Lock _lock = new();

    /// <summary>The map the instance is to run with (null: privileged).</summary>
    public static IdMap? Wanted(InstanceSpec spec) => IdMaps.For(spec.Config);

    /// <summary>The map the instance's files are owned in now (null: the container's own view, as
    /// privileged).</summary>
    public static IdMap? OnDisk(InstanceSpec spec)
    {
        // Read through no symlink: the file may have come in a backup.
        if (ContainerDriver.ReadOwn(spec, File)?.Trim() is not { } text) return null; // made before unprivileged
        var f = Path.Combine(spec.Dir, File);
        if (text == PrivilegedText) return null;
        return IdMap.Parse(text)
            ?? throw new InstanceException($"instance '{spec.Name}': {f} is damaged ('{text}'): " +
                $"write \"{PrivilegedText}\" or \"UIDBASE GIDBASE SIZE\" as its files are owned", 500);
    }

    public static void Record(InstanceSpec spec, IdMap? map)
    {
        ContainerDriver.WriteOwn(spec, File, (map?.ToString() ?? PrivilegedText) + "\n");
    }

    /// <summary>Host owners as the container sees them.</summary>
    public static (int Uid, int Gid) Inside(IdMap? map, uint uid, uint gid) => map is null ? ((int)uid, (int)gid)
        : ((int)(map.UidIn(uid) ?? Overflow), (int)(map.GidIn(gid) ?? Overflow));

    /// <summary>The host owners of a file the container is to see owned by
    /// <paramref name="uid"/>:<paramref name="gid"/>.</summary>
    public static (uint Uid, uint Gid) Outside(InstanceSpec spec, int uid, int gid)
    {
        if (OnDisk(spec) is not { } map) return ((uint)uid, (uint)gid);
        if (uid < 0 || gid < 0 || uid >= map.Size || gid >= map.Size)
            throw new InstanceException($"owner {uid}:{gid} does not exist in instance '{spec.Name}': " +
                $"its ids are 0 to {map.Size - 1} (security.idmap.size)");
        return ((uint)(map.UidBase + uid), (uint)(map.GidBase + gid));
    }

    /// <summary>Makes a directory just made in the instance's root by hulld owned by the container's root.</summary>
    public static void OwnByRoot(InstanceSpec spec, SafeFd dir, string name)
    {
        if (OnDisk(spec) is not { } map) return;
        Sys.Check(Libc.lchown($"/proc/self/fd/{dir.Fd}/{name}", (uint)map.UidBase, (uint)map.GidBase),
            $"chown {name} in instance '{spec.Name}'");
    }

    /// <summary>
    /// Lets the container's root (a host id without privilege over host files) reach the instance's rootfs/, which the
    /// container init mounts by path: the instances dir and the state dir get search permission for others (0711 as
    /// Incus: no listing, and their files stay 0600); a dir above them that lacks it is an error. The instance dir
    /// itself is searchable by the container's root group only (0710, group: the map's host gid of root), so no other
    /// host user reaches the container's files (its "/" is 0755 like the image's) through rootfs/.
    /// </summary>
    public static void MakeReachable(InstanceSpec spec, IdMap map)
    {
        var dir = Path.GetFullPath(spec.Dir);
        Sys.Check(Libc.lchown(dir, uint.MaxValue, (uint)map.GidBase), $"chgrp {dir}");
        Sys.Check(Libc.chmod(dir, 0b111_001_000), $"chmod 0710 {dir}");
        dir = Path.GetDirectoryName(dir)!;
        for (var level = 1; dir.Length > 1; level++, dir = Path.GetDirectoryName(dir)!)
        {
            if (!GuestSys.TryStat(dir, true, out var st, out var e)) throw new LinuxException(e, $"stat {dir}");
            if ((st.Mode & 1) != 0) continue;
            if (level > 2)
                throw new InstanceException($"unprivileged container '{spec.Name}' cannot reach its root filesystem: " +
                    $"{dir} is not searchable by others (mode {Convert.ToString(st.Mode & 0xFFF, 8)}): " +
                    $"chmod o+x {dir}, or set security.privileged=true", 500);
            Sys.Check(Libc.chmod(dir, (st.Mode & 0xFFF) | 1), $"chmod o+x {dir}");
        }
    }

    /// <summary>Puts the container in a user namespace with the map.</summary>
    public static void Apply(Spec s, IdMap map)
    {
        s.Linux!.Namespaces ??= [];
        if (!s.Linux.Namespaces.Any(n => n.Type == "user")) s.Linux.Namespaces.Add(new Namespace { Type = "user" });
        s.Linux.UidMappings = [new IdMapping { ContainerId = 0, HostId = (uint)map.UidBase, Size = (uint)map.Size }];
        s.Linux.GidMappings = [new IdMapping { ContainerId = 0, HostId = (uint)map.GidBase, Size = (uint)map.Size }];
    }

    /// <summary>A user namespace with the map, for idmapped mounts (one per map, kept for hulld's lifetime).</summary>
    SafeFd UserNamespace(IdMap map)
    {
        if (_userns.TryGetValue(map, out var fd)) return fd;
        lock (_lock)
        {
            if (_userns.TryGetValue(map, out fd)) return fd;
            fd = IdmappedMounts.UserNamespace($"0 {map.UidBase} {map.Size}\n", $"0 {map.GidBase} {map.Size}\n");
            _userns[map] = fd;
            return fd;
        }
    }

    /// <summary>A detached read-only idmapped mount of an image root filesystem (an overlayfs lower layer).</summary>
    public SafeFd IdmappedLower(InstanceSpec spec, string lower, IdMap map)
    {
        try { return IdmappedMounts.Clone(lower, UserNamespace(map), readOnly: true); }
        catch (Exception e) when (e is LinuxException or SpawnException)
        {
            throw new InstanceException($"instance '{spec.Name}' is unprivileged but its image {lower} cannot be " +
                $"idmapped ({e.Message}): the kernel (5.19 or later) and the filesystem must support idmapped " +
                "mounts, or set security.privileged=true", 500);
        }
    }

    /// <summary>
    /// Replaces the read-only host binds of an application container (its host system dirs and app.share) with
    /// idmapped mounts attached under the mounted root <paramref name="root"/> before the container is made, so the
    /// host's files keep their owners inside (root's files are root's); the engine's recursive bind of the root takes
    /// them along. A host dir that cannot be idmapped, or one under a mount the init makes (such as an app.share under
    /// /tmp), stays a plain bind (its files then appear owned by nobody).
    /// </summary>
    public void IdmapReadOnlyBinds(InstanceSpec spec, Spec s, string root, IdMap map)
    {
        using var rootFd = Sys.Open(root, O.RDONLY | O.DIRECTORY);
        var binds = s.Mounts!.Where(m => m is { Type: "bind", Options: ["rbind", "ro"] }).ToList();
        foreach (var m in binds)
        {
            // One under a mount the init makes (the private /tmp...) would be hidden by it: it stays a plain bind.
            if (s.Mounts!.Any(o => !binds.Contains(o)
                && (m.Destination + "/").StartsWith(o.Destination.TrimEnd('/') + "/", StringComparison.Ordinal)))
                continue;
            SafeFd tree;
            try { tree = IdmappedMounts.Clone(m.Source!, UserNamespace(map), readOnly: true, nodev: true); }
            catch (LinuxException e)
            {
                DriverLog.Warning($"instance '{spec.Name}': {m.Source} stays a plain bind: {e.Message}", spec.Name);
                continue;
            }
            using (tree)
            {
                MakeMountPoint(spec, rootFd, m.Destination, Directory.Exists(m.Source));
                IdmappedMounts.Attach(tree, Path.Combine(root, m.Destination.TrimStart('/')));
            }
            s.Mounts!.Remove(m);
        }
    }

    static void MakeMountPoint(InstanceSpec spec, SafeFd root, string dest, bool dir)
    {
        var parts = dest.Split('/', StringSplitOptions.RemoveEmptyEntries);
        var cur = "/";
        for (var i = 0; i < parts.Length; i++)
        {
            using var d = RootedFs.Open(root, cur, O.RDONLY | O.DIRECTORY);
            if (i < parts.Length - 1 || dir)
            {
                if (RootedFs.MkdirAt(d, parts[i], 0b111_101_101)) OwnByRoot(spec, d, parts[i]);
            }
            else if (RootedFs.TryOpen(d, parts[i], O.WRONLY | O.CREAT, 0b110_100_100, out var f,
                out var e)) f.Dispose();
            else throw new LinuxException(e, $"creating the mount point {dest} in instance '{spec.Name}'");
            cur = cur.TrimEnd('/') + "/" + parts[i];
        }
    }

    /// <summary>
    /// Re-owns the instance's own files (upper dir or full copy, and every snapshot) from the map they are in to
    /// <paramref name="to"/> (null: the container's view) and records it. Ids outside the old map are left as they are.
    /// Called only while the instance is stopped and locked.
    /// </summary>
    public void Shift(InstanceSpec spec, IdMap? to)
    {
        var from = OnDisk(spec);
        if (from == to) return;
        var trees = new List<string> { ContainerDriver.Layer(spec) };
        var snaps = Path.Combine(spec.Dir, "snapshots");
        if (Directory.Exists(snaps)) trees.AddRange(
            Directory.GetDirectories(snaps).Select(d => Path.Combine(d, "upper")));
        foreach (var t in trees)
            if (GuestSys.TryStat(t, false, out var st, out _) && (st.Mode & StatxInfo.S_IFMT) == StatxInfo.S_IFDIR)
                ShiftTree(spec, t, st, from, to);
        Record(spec, to);
    }

    static void ShiftTree(InstanceSpec spec, string path, StatxInfo st, IdMap? from, IdMap? to)
    {
        ShiftOne(spec, path, st, from, to);
        foreach (var child in Directory.EnumerateFileSystemEntries(path))
        {
            if (!GuestSys.TryStat(child, false, out var cs, out _)) continue;
            if ((cs.Mode & StatxInfo.S_IFMT) == StatxInfo.S_IFDIR) ShiftTree(spec, child, cs, from, to);
            else ShiftOne(spec, child, cs, from, to);
        }
    }

    static void ShiftOne(InstanceSpec spec, string path, StatxInfo st, IdMap? from, IdMap? to)
    {
        long? u = from is null ? st.Uid : from.UidIn(st.Uid), g = from is null ? st.Gid : from.GidIn(st.Gid);
        long nu = u is { } cu && (to is null || cu < to.Size) ? (to?.UidBase ?? 0) + cu : st.Uid;
        long ng = g is { } cg && (to is null || cg < to.Size) ? (to?.GidBase ?? 0) + cg : st.Gid;
        if (nu == st.Uid && ng == st.Gid) return;
        var file = (st.Mode & StatxInfo.S_IFMT) == StatxInfo.S_IFREG;
        var caps = file ? FileCaps.Read(path) : null;
        Sys.Check(Libc.lchown(path, (uint)nu, (uint)ng), $"re-owning {path} of instance '{spec.Name}' for its id map");
        // chown clears set-uid and set-gid bits and drops file capabilities: put them back.
        if ((st.Mode & 0b110_000_000_000) != 0 && (st.Mode & StatxInfo.S_IFMT) != StatxInfo.S_IFLNK)
            Sys.Check(Libc.chmod(path, st.Mode & 0xFFF), $"chmod {path} of instance '{spec.Name}'");
        if (caps is not null) FileCaps.Write(path, FileCaps.Shift(caps, from, to), spec.Name);
    }
}

/// <summary>
/// The security.capability xattr of a file (capabilities(7), "File capability extended attribute versioning"):
/// version 2 applies in every namespace; version 3 names the host uid that is root where it applies (a container's
/// root wrote it), so it moves with the id map like an owner.
/// </summary>
static unsafe class FileCaps
{
    const string Name = "security.capability";
    const uint Revision2 = 0x02000000, Revision3 = 0x03000000, RevisionMask = 0xFF000000;
    const int Size2 = 20, Size3 = 24;

    public static byte[]? Read(string path)
    {
        var buf = new byte[Size3];
        nint n;
        fixed (byte* b = buf) n = Libc.lgetxattr(path, Name, b, (nuint)buf.Length);
        return n is Size2 or Size3 ? buf[..(int)n] : null; // none (ENODATA), or not one the kernel would use
    }

    public static void Write(string path, byte[] value, string instance)
    {
        fixed (byte* b = value)
            Sys.Check(Libc.lsetxattr(path, Name, b, (nuint)value.Length, 0),
                $"restoring the file capabilities of {path} of instance '{instance}'");
    }

    /// <summary>A version 3 root id moved from one map to the other (root of the container's view: version
    /// 2).</summary>
    public static byte[] Shift(byte[] caps, IdMap? from, IdMap? to)
    {
        var magic = BitConverter.ToUInt32(caps, 0);
        if ((magic & RevisionMask) != Revision3 || caps.Length != Size3) return caps;
        var root = BitConverter.ToUInt32(caps, Size2);
        long? inside = from is null ? root : from.UidIn(root);
        if (inside is not { } k || (to is not null && k >= to.Size)) return caps;
        var host = (to?.UidBase ?? 0) + k;
        if (host == 0)
        {
            var v2 = caps[..Size2];
            BitConverter.TryWriteBytes(v2.AsSpan(0, 4), (magic & ~RevisionMask) | Revision2);
            return v2;
        }
        var v3 = (byte[])caps.Clone();
        BitConverter.TryWriteBytes(v3.AsSpan(Size2, 4), (uint)host);
        return v3;
    }
}
