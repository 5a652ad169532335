using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using Xunit;

namespace Hull.Instances.Containers.Tests;

/// <summary>
/// `hull export` then `hull import` under a new name keeps the instance's layer byte for byte: every entry's type,
/// mode, owner, size, mtime (to the nanosecond), xattrs (overlay opaque dirs, security.capability), symlink target
/// (relative ones starting with '.' included: GNU tar's --transform once rewrote those), content, device numbers,
/// hard link identity, and sparse files stay sparse.
/// </summary>
public sealed class BackupRoundTripTests
{
    [SkippableFact]
    public async Task Export_then_import_keeps_every_entry_of_the_layer()
    {
        using var a = new ContainerDaemon();
        await a.Client.LaunchAsync("busybox", "rt");
        await a.Client.StopAsync("rt", force: true);
        var upper = Path.Combine(a.StateDir, "instances", "rt", "upper");
        var d = Path.Combine(upper, "data");
        Directory.CreateDirectory(Path.Combine(d, "sub"));
        var content = RandomNumberGenerator.GetBytes(100_000);
        File.WriteAllBytes(Path.Combine(d, "file"), content);
        File.WriteAllText(Path.Combine(d, "spa ce ü"), "name with a space\n");
        File.WriteAllBytes(Path.Combine(d, "empty"), []);
        Check(link(Path.Combine(d, "file"), Path.Combine(d, "hard1")));
        Check(link(Path.Combine(d, "file"), Path.Combine(d, "sub", "hard2")));
        File.CreateSymbolicLink(Path.Combine(d, "rel-dot"), "./file");
        File.CreateSymbolicLink(Path.Combine(d, "rel-dotdot"), "../bin/busybox");
        File.CreateSymbolicLink(Path.Combine(d, "dots"), "..");
        File.CreateSymbolicLink(Path.Combine(d, "abs"), "/etc/passwd");
        File.CreateSymbolicLink(Path.Combine(d, "sub", "up"), "../../data/./file");
        File.WriteAllText(Path.Combine(d, "suid"), "#!/bin/sh\n");
        Directory.CreateDirectory(Path.Combine(d, "sticky"));
        Check(Hull.Linux.Libc.mknod(Path.Combine(d, "whiteout"), 0x2000, 0)); // char 0:0, an overlay whiteout
        Check(Hull.Linux.Libc.mknod(Path.Combine(d, "null"), 0x2000 | 0x1B6, (1 << 8) | 3));
        Check(Hull.Linux.Libc.mknod(Path.Combine(d, "loop0"), 0x6000 | 0x180, (7 << 8) | 0));
        Check(Hull.Linux.Libc.mknod(Path.Combine(d, "fifo"), 0x1000 | 0x1A4, 0));
        Directory.CreateDirectory(Path.Combine(d, "opaque"));
        File.WriteAllText(Path.Combine(d, "opaque", "x"), "x");
        using (var f = File.Create(Path.Combine(d, "sparse")))
        {
            f.Seek(64 << 20, SeekOrigin.Begin);
            f.Write(RandomNumberGenerator.GetBytes(4096));
            f.SetLength(128 << 20);
        }
        // The instance is unprivileged (the default): its layer is owned by the host ids its map gives the container's
        // ids, as a container would have written it. Owners first: chown clears set-id bits and file capabilities.
        var (uidBase, gidBase) = MapBase(Path.Combine(a.StateDir, "instances", "rt"));
        Assert.True(uidBase > 0, "the instance is unprivileged by default");
        foreach (var p in Walk(d).Append(d)) Check(lchown(p, uidBase, gidBase));
        Check(lchown(Path.Combine(d, "file"), uidBase + 1234, gidBase + 5678));
        Check(lchown(Path.Combine(d, "abs"), uidBase + 4321, gidBase + 8765));
        Check(lchown(Path.Combine(d, "sticky"), uidBase + 65534, gidBase + 65534));
        Check(chmod(Path.Combine(d, "suid"), 0x9ED)); // 04755
        Check(chmod(Path.Combine(d, "sticky"), 0x3FF)); // 01777
        Check(chmod(Path.Combine(d, "file"), 0x1A0)); // 0640
        SetXattr(Path.Combine(d, "opaque"), "trusted.overlay.opaque", "y"u8.ToArray());
        SetXattr(Path.Combine(d, "suid"), "security.capability",
            Convert.FromHexString("0100000200200000000000000000000000000000"));
        SetXattr(Path.Combine(d, "file"), "user.note", "a note"u8.ToArray());
        // Times last (files first, then dirs bottom-up), to the nanosecond, symlinks included.
        var paths = Walk(d).Append(d).OrderByDescending(p => p.Length).ToList();
        var i = 0;
        foreach (var p in paths) SetMtime(p, 1_000_000_000 + i * 1000L, 123_456_789 + i++);

        Ok(a.Cli("export", "rt", Path.Combine(a.Dir, "rt.tar")), "export");
        Ok(a.Cli("import", Path.Combine(a.Dir, "rt.tar"), "rt2"), "import");
        var copy = Path.Combine(a.StateDir, "instances", "rt2", "upper");

        // Owners as each container sees them: export may leave the source's files in the container's view, and the
        // copy's are in its own map.
        var want = Describe(upper, MapBase(Path.Combine(a.StateDir, "instances", "rt")));
        var got = Describe(copy, MapBase(Path.Combine(a.StateDir, "instances", "rt2")));
        // The description holds what it should (so an equal one means something).
        Assert.Contains(want, l => l.StartsWith("data/rel-dotdot symlink", StringComparison.Ordinal)
            && l.Contains("-> ../bin/busybox"));
        Assert.Contains(want, l => l.StartsWith("data/abs symlink", StringComparison.Ordinal)
            && l.Contains("owner=4321:8765"));
        Assert.Contains(want, l => l.StartsWith("data/opaque dir", StringComparison.Ordinal)
            && l.Contains("xattr:trusted.overlay.opaque=79"));
        Assert.Contains(want, l => l.StartsWith("data/suid file mode=4755", StringComparison.Ordinal)
            && l.Contains("xattr:security.capability="));
        Assert.Contains(want, l => l.StartsWith("data/sub/hard2 file", StringComparison.Ordinal)
            && l.Contains("links=3 same-as=data/file"));
        Assert.Contains(want, l => l.StartsWith("data/whiteout char", StringComparison.Ordinal)
            && l.Contains("dev=0:0"));
        Assert.Contains(want, l => l.StartsWith("data/loop0 block", StringComparison.Ordinal) && l.Contains("dev=7:0"));
        Assert.Contains(want, l => l.StartsWith("data/fifo fifo", StringComparison.Ordinal));
        Assert.Contains(want, l => l.StartsWith("data/sticky dir mode=1777 owner=65534:65534",
            StringComparison.Ordinal));
        Assert.Equal(want.Count, got.Count);
        for (var k = 0; k < want.Count; k++) Assert.Equal(want[k], got[k]);
        // Still sparse: the 128 MiB file holds 4 KiB of data.
        Assert.True(Stat(Path.Combine(copy, "data", "sparse")).Blocks * 512 < 1 << 20, "the sparse file was filled in");

        // And as the container sees it.
        await a.Client.StartAsync("rt2");
        var r = await a.Client.ExecAsync("rt2", "sh", "-c",
            "readlink /data/rel-dotdot; readlink /data/rel-dot; cat /data/sub/up | wc -c; ls /data/opaque");
        Assert.Equal("../bin/busybox\n./file\n100000\nx\n", r.Stdout);
    }

    /// <summary>The host uid and gid that the instance's root is on disk now: its idmap file says "UIDBASE GIDBASE
    /// SIZE", or "privileged" when the files hold the container's own view.</summary>
    static (uint Uid, uint Gid) MapBase(string instanceDir)
    {
        var text = File.ReadAllText(Path.Combine(instanceDir, "idmap")).Trim();
        if (text == "privileged") return (0, 0);
        var f = text.Split(' ');
        Assert.True(f.Length == 3, $"{instanceDir}/idmap says '{text}'");
        return (uint.Parse(f[0]), uint.Parse(f[1]));
    }

    /// <summary>One line per entry below <paramref name="root"/> (sorted by path): everything the round trip keeps.
    /// Hard links are shown as the first path of their inode within the tree.</summary>
    static List<string> Describe(string root, (uint Uid, uint Gid) map)
    {
        var firstOfInode = new Dictionary<ulong, string>();
        var lines = new List<string>();
        var all = Walk(root).Append(root).Select(p => (Rel: Path.GetRelativePath(root, p), Path: p)).OrderBy(x => x.Rel,
            StringComparer.Ordinal);
        foreach (var (rel, p) in all)
        {
            var st = Stat(p);
            var type = (st.Mode & 0xF000) switch
            {
                0x8000 => "file", 0x4000 => "dir", 0xA000 => "symlink", 0x2000 => "char", 0x6000 => "block",
                0x1000 => "fifo", _ => "other",
            };
            var sb = new StringBuilder($"{rel} {type} mode={Convert.ToString(st.Mode & 0xFFF, 8)} " +
                $"owner={st.Uid - map.Uid}:{st.Gid - map.Gid} mtime={st.MtimeSec}.{st.MtimeNsec:D9}");
            if (type != "dir") sb.Append($" size={st.Size}");
            if (type is "char" or "block") sb.Append($" dev={st.RdevMajor}:{st.RdevMinor}");
            if (type == "symlink") sb.Append($" -> {new FileInfo(p).LinkTarget}");
            if (type == "file")
            {
                using var f = File.OpenRead(p);
                sb.Append(" sha256=").Append(Convert.ToHexString(SHA256.HashData(f)));
                if (st.Nlink > 1)
                {
                    firstOfInode.TryAdd(st.Ino, rel);
                    sb.Append($" links={st.Nlink} same-as={firstOfInode[st.Ino]}");
                }
            }
            foreach (var (name, value) in Xattrs(p)) sb.Append($" xattr:{name}={Convert.ToHexString(value)}");
            lines.Add(sb.ToString());
        }
        return lines;
    }

    /// <summary>Every entry below <paramref name="dir"/>, not entering symlinked dirs.</summary>
    internal static IEnumerable<string> Walk(string dir)
    {
        foreach (var p in Directory.EnumerateFileSystemEntries(dir, "*",
            new EnumerationOptions { AttributesToSkip = 0 }))
        {
            yield return p;
            var fi = new FileInfo(p);
            if (fi.LinkTarget is null && fi.Attributes.HasFlag(FileAttributes.Directory))
                foreach (var q in Walk(p)) yield return q;
        }
    }

    // ---- the syscalls the comparison needs (not following symlinks) ----

    readonly record struct StatX(uint Mode, uint Uid, uint Gid, ulong Ino, long Size, long Blocks, uint Nlink,
        long MtimeSec, uint MtimeNsec, uint RdevMajor, uint RdevMinor);

    static StatX Stat(string path)
    {
        var b = new byte[256];
        Check(statx(-100, path, 0x100 /* AT_SYMLINK_NOFOLLOW */, 0x7ff, b));
        var s = b.AsSpan();
        return new StatX(BitConverter.ToUInt16(s[28..]), BitConverter.ToUInt32(s[20..]), BitConverter.ToUInt32(s[24..]),
            BitConverter.ToUInt64(s[32..]), BitConverter.ToInt64(s[40..]), BitConverter.ToInt64(s[48..]),
            BitConverter.ToUInt32(s[16..]),
            BitConverter.ToInt64(s[112..]), BitConverter.ToUInt32(s[120..]), BitConverter.ToUInt32(s[128..]),
                BitConverter.ToUInt32(s[132..]));
    }

    static List<(string, byte[])> Xattrs(string path)
    {
        var buf = new byte[65536];
        var n = llistxattr(path, buf, buf.Length);
        if (n < 0) throw new IOException($"llistxattr {path}: errno {Marshal.GetLastPInvokeError()}");
        var list = new List<(string, byte[])>();
        foreach (var name in Encoding.UTF8.GetString(buf, 0, (int)n).Split('\0',
            StringSplitOptions.RemoveEmptyEntries).Order(StringComparer.Ordinal))
        {
            var v = new byte[65536];
            var m = lgetxattr(path, name, v, v.Length);
            if (m < 0) throw new IOException($"lgetxattr {path} {name}: errno {Marshal.GetLastPInvokeError()}");
            list.Add((name, v[..(int)m]));
        }
        return list;
    }

    static void SetXattr(string path, string name, byte[] value) =>
        Check(lsetxattr(path, name, value, value.Length, 0));

    static void SetMtime(string path, long sec, long nsec)
    {
        // atime left alone (UTIME_OMIT), mtime set, on the link itself.
        Check(utimensat(-100, path, [0, (1L << 30) - 2, sec, nsec], 0x100));
    }

    static void Check(int r)
    {
        if (r < 0) throw new IOException($"errno {Marshal.GetLastPInvokeError()}");
    }

    static void Ok((int Code, string Out, string Err) r, string what) =>
        Assert.True(r.Code == 0, $"{what} failed ({r.Code}): {r.Out} {r.Err}");

    [DllImport("libc", SetLastError = true)] static extern int statx(int dirfd, string path, int flags, uint mask,
        byte[] buf);
    [DllImport("libc", SetLastError = true)] static extern nint llistxattr(string path, byte[] list, nint size);
    [DllImport("libc", SetLastError = true)] static extern nint lgetxattr(string path, string name, byte[] value,
        nint size);
    [DllImport("libc", SetLastError = true)] static extern int lsetxattr(string path, string name, byte[] value,
        nint size, int flags);
    [DllImport("libc", SetLastError = true)] static extern int lchown(string path, uint uid, uint gid);
    [DllImport("libc", SetLastError = true)] static extern int chmod(string path, uint mode);
    [DllImport("libc", SetLastError = true)] static extern int link(string oldpath, string newpath);
    [DllImport("libc", SetLastError = true)] static extern int utimensat(int dirfd, string path, long[] times,
        int flags);
}
