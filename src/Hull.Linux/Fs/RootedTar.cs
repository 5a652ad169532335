using System.Formats.Tar;
using System.Text;

namespace Hull.Linux;

/// <summary>What <see cref="RootedTar.ExtractAsync"/> may do: OCI whiteouts, owners, and the limits.</summary>
public sealed class RootedTarOptions
{
    /// <summary>Apply OCI layer whiteouts: ".wh.NAME" removes NAME, ".wh..wh..opq" empties its directory of what
    /// earlier layers put there. Off: such entries are ordinary files.</summary>
    public bool Whiteouts { get; init; }
    /// <summary>Give files the owners the archive names (numeric ids); off: they belong to the caller.</summary>
    public bool KeepOwners { get; init; } = true;
    /// <summary>The most file data (bytes of regular files) the archive may write; counted before writing.</summary>
    public long MaxBytes { get; init; } = long.MaxValue;
    /// <summary>The most entries the archive may hold.</summary>
    public long MaxEntries { get; init; } = long.MaxValue;
}

/// <summary>What an extraction wrote.</summary>
public readonly record struct RootedTarResult(long Bytes, long Entries, int XattrsSkipped);

/// <summary>An archive that cannot be extracted: malformed, or an entry the extractor refuses (names it).</summary>
public class RootedTarException(string message) : Exception(message);

/// <summary>The archive writes more than <see cref="RootedTarOptions.MaxBytes"/> or holds too many entries.</summary>
public sealed class RootedTarLimitException(string message, bool entries, long limit) : RootedTarException(message)
{
    /// <summary>True if the entry count was exceeded, false if the byte count was.</summary>
    public bool Entries { get; } = entries;
    public long Limit { get; } = limit;
}

/// <summary>
/// Extracts a tar stream under a root directory fd so that nothing it does lands outside that root, whatever the
/// archive holds and whatever earlier archives (layers) left there. Every parent directory is reached with
/// openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV), so symlinks already in the tree, absolute or
/// with "..", resolve as if the root were "/"; the last component is created, replaced or changed with *at calls that
/// never follow it (O_EXCL|O_NOFOLLOW, mkdirat, symlinkat, linkat without AT_SYMLINK_FOLLOW, mknodat, fchownat and
/// utimensat with AT_SYMLINK_NOFOLLOW, fchmodat2). Entry names and hard-link targets with ".." or a leading "/" are
/// confined to the root the way containerd does it (cleaned as if rooted at "/"). Owners, modes (set-id bits too),
/// mtimes (directories' at the end), runs of zeros (kept sparse) and the xattrs user.*, security.capability and POSIX
/// ACLs of PAX archives are kept; other xattrs (trusted.*, security.selinux...) are dropped.
/// </summary>
public static class RootedTar
{
    const string WhiteoutPrefix = ".wh.", OpaqueWhiteout = ".wh..wh..opq";
    const int Chunk = 128 * 1024;

    public static async Task<RootedTarResult> ExtractAsync(Stream tar, SafeFd root, RootedTarOptions? options = null,
        CancellationToken ct = default)
    {
        var o = options ?? new RootedTarOptions();
        var x = new Extraction(root, o);
        try
        {
            using var reader = new TarReader(tar, leaveOpen: true);
            while (true)
            {
                TarEntry? entry;
                try { entry = await reader.GetNextEntryAsync(copyData: false, ct); }
                catch (Exception e) when (e is InvalidDataException or FormatException or EndOfStreamException)
                {
                    throw new RootedTarException($"the archive is not a readable tar stream: {e.Message}");
                }
                if (entry is null) break;
                await x.ApplyAsync(entry, ct);
            }
            x.Finish();
            return new RootedTarResult(x.Bytes, x.Entries, x.XattrsSkipped);
        }
        finally { x.Dispose(); }
    }

    /// <summary>Splits an entry name into components, confined to the root: "/", "." and empty parts go, ".." drops
    /// the previous part and never climbs above the root.</summary>
    public static List<string> Clean(string name)
    {
        var parts = new List<string>();
        foreach (var p in name.Split('/'))
        {
            if (p.Length == 0 || p == ".") continue;
            if (p == "..") { if (parts.Count > 0) parts.RemoveAt(parts.Count - 1); continue; }
            parts.Add(p);
        }
        return parts;
    }

    sealed class Extraction(SafeFd root, RootedTarOptions o) : IDisposable
    {
        const ulong Resolve = FsAt.RESOLVE_IN_ROOT | FsAt.RESOLVE_NO_MAGICLINKS | FsAt.RESOLVE_NO_XDEV;
        public long Bytes, Entries;
        public int XattrsSkipped;
        readonly byte[] _buf = new byte[Chunk];
        // The directory of the previous entry: archives list a directory's files together. Dropped whenever something
        // is removed or a symlink is made, the only changes that can alter what a path resolves to.
        string? _cachedPath;
        SafeFd? _cachedFd;
        readonly List<(string Path, DateTimeOffset Mtime)> _dirTimes = [];
        (DateTimeOffset Mtime, bool Set) _rootTime;
        // Paths this archive wrote (and their parents), which an opaque whiteout in it keeps.
        readonly HashSet<string> _written = new(StringComparer.Ordinal);

        public async Task ApplyAsync(TarEntry entry, CancellationToken ct)
        {
            if (++Entries > o.MaxEntries)
                throw new RootedTarLimitException($"the archive holds more than {o.MaxEntries} entries", true,
                    o.MaxEntries);
            switch (entry.EntryType)
            {
                case TarEntryType.GlobalExtendedAttributes: return;
                case TarEntryType.SparseFile:
                    throw new RootedTarException($"'{entry.Name}' is a GNU sparse file (old format), which is not " +
                        "supported: write the archive without --sparse or in PAX format");
                case TarEntryType.MultiVolume or TarEntryType.TapeVolume or TarEntryType.RenamedOrSymlinked
                    or TarEntryType.DirectoryList:
                    throw Unsupported(entry);
            }
            var parts = Clean(entry.Name);
            if (parts.Count == 0)
            {
                if (entry.EntryType == TarEntryType.Directory) ApplyRoot(entry);
                return;
            }
            var name = parts[^1];
            var parentPath = string.Join('/', parts.Take(parts.Count - 1));
            if (o.Whiteouts && name.StartsWith(WhiteoutPrefix, StringComparison.Ordinal))
            {
                Whiteout(parentPath, name);
                return;
            }
            var path = parentPath.Length == 0 ? name : parentPath + "/" + name;
            if (o.Whiteouts)
                for (var i = 1; i <= parts.Count; i++) _written.Add(string.Join('/', parts.Take(i)));
            var dir = Dir(parentPath);
            var isDir = entry.EntryType == TarEntryType.Directory;
            // An existing name is replaced, unless both are directories (then the new one's metadata wins).
            if (FsAt.TryLstatAt(dir, name, out var st, out _) && !(isDir && st.IsDir))
            {
                FsAt.RemoveAt(dir, name);
                Invalidate();
            }
            var mode = (uint)entry.Mode & 0xFFF;
            SafeFd? fd = null;
            try
            {
                switch (entry.EntryType)
                {
                    case TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile:
                        if (entry.Length > o.MaxBytes - Bytes || entry.Length < 0)
                            throw new RootedTarLimitException(
                                $"the archive unpacks to more than {o.MaxBytes} bytes (at '{path}')", false,
                                o.MaxBytes);
                        const int Create = O.WRONLY | O.CREAT | O.EXCL | O.NOFOLLOW;
                        if (!FsAt.TryOpenAt(dir, name, Create, 0b110_000_000, out fd, out var oe))
                            throw new LinuxException(oe, $"create '{path}'");
                        Bytes += entry.Length;
                        await WriteDataAsync(entry, fd, path, ct);
                        break;
                    case TarEntryType.Directory:
                        var me = FsAt.MkdirAt(dir, name, 0b111_000_000);
                        if (me != 0 && me != Errors.EEXIST) throw new LinuxException(me, $"mkdir '{path}'");
                        if (!FsAt.TryOpenAt(dir, name, O.RDONLY | O.DIRECTORY | O.NOFOLLOW, 0, out fd, out oe))
                            throw new LinuxException(oe, $"open '{path}'");
                        _dirTimes.Add((path, entry.ModificationTime));
                        break;
                    case TarEntryType.SymbolicLink:
                        Check(FsAt.SymlinkAt(entry.LinkName, dir, name), $"symlink '{path}'");
                        Invalidate();
                        break;
                    case TarEntryType.HardLink:
                        Link(entry, dir, name, path);
                        return; // a hard link shares its target's inode: owner, mode and times are the target's
                    case TarEntryType.CharacterDevice or TarEntryType.BlockDevice or TarEntryType.Fifo:
                        var kind = entry.EntryType switch
                        {
                            TarEntryType.CharacterDevice => FsAt.S_IFCHR, TarEntryType.BlockDevice => FsAt.S_IFBLK,
                            _ => FsAt.S_IFIFO,
                        };
                        var pe = (PosixTarEntry)entry;
                        Check(FsAt.MknodAt(dir, name, kind | 0b110_000_000, MakeDev(pe.DeviceMajor, pe.DeviceMinor)),
                            $"mknod '{path}'");
                        break;
                    default:
                        throw Unsupported(entry);
                }
                if (o.KeepOwners) Check(FsAt.LchownAt(dir, name, (uint)entry.Uid, (uint)entry.Gid), $"chown '{path}'");
                // After chown, which clears set-id bits and file capabilities.
                if (entry.EntryType != TarEntryType.SymbolicLink)
                {
                    if (fd is not null) Check(FsAt.FChmod(fd, mode), $"chmod '{path}'");
                    else Check(FsAt.LchmodAt(dir, name, mode), $"chmod '{path}'");
                }
                if (entry is PaxTarEntry pax && fd is not null) SetXattrs(pax, fd, path);
                var mtime = entry.ModificationTime;
                if (!isDir) Check(FsAt.LutimesAt(dir, name, mtime, mtime), $"utimes '{path}'");
            }
            finally { fd?.Dispose(); }
        }

        async Task WriteDataAsync(TarEntry entry, SafeFd fd, string path, CancellationToken ct)
        {
            if (entry.DataStream is not { } data || entry.Length == 0) return;
            long off = 0;
            while (true)
            {
                var n = await data.ReadAtLeastAsync(_buf, _buf.Length, throwOnEndOfStream: false, ct);
                if (n == 0) break;
                // A chunk of zeros becomes a hole: sparse files stay sparse (and cost no disk).
                var chunk = _buf.AsSpan(0, n);
                if (chunk.ContainsAnyExcept((byte)0)) FsAt.PwriteAll(fd, chunk, off, $"write '{path}'");
                off += n;
                if (n < _buf.Length) break;
            }
            if (off != entry.Length)
                throw new RootedTarException($"the archive ends inside '{entry.Name}' ({off} of {entry.Length} bytes)");
            Check(FsAt.FTruncate(fd, off), $"truncate '{path}'");
        }

        void Link(TarEntry entry, SafeFd dir, string name, string path)
        {
            var target = Clean(entry.LinkName);
            var missing = new RootedTarException(
                $"hard link '{entry.Name}' points at '{entry.LinkName}', which is not in the archive");
            if (target.Count == 0) throw new RootedTarException($"hard link '{entry.Name}' points at the root");
            using var tdir = Open(string.Join('/', target.Take(target.Count - 1)), out var e) ?? throw missing;
            e = FsAt.LinkAt(tdir, target[^1], dir, name);
            if (e == Errors.ENOENT) throw missing;
            Check(e, $"link '{path}' to '{entry.LinkName}'");
        }

        void Whiteout(string parentPath, string name)
        {
            // A whiteout of a directory an earlier layer never made removes nothing.
            using var dir = Open(parentPath, out var e, O.RDONLY);
            if (dir is null)
            {
                if (e is Errors.ENOENT or Errors.ENOTDIR) return;
                throw new LinuxException(e, $"open '{parentPath}'");
            }
            Invalidate();
            if (name == OpaqueWhiteout) Opaque(dir, parentPath);
            else if (name.Length > WhiteoutPrefix.Length
                && !name.StartsWith(WhiteoutPrefix + WhiteoutPrefix, StringComparison.Ordinal))
                FsAt.RemoveAt(dir, name[WhiteoutPrefix.Length..]);
        }

        /// <summary>Removes what earlier layers put in a directory, keeping what this archive wrote there.</summary>
        void Opaque(SafeFd dir, string dirPath)
        {
            foreach (var child in FsAt.ReadDir(dir))
            {
                var p = dirPath.Length == 0 ? child : dirPath + "/" + child;
                if (!_written.Contains(p)) { FsAt.RemoveAt(dir, child); continue; }
                if (FsAt.TryLstatAt(dir, child, out var st, out _) && st.IsDir
                    && FsAt.TryOpenAt(dir, child, O.RDONLY | O.DIRECTORY | O.NOFOLLOW, 0, out var sub, out _))
                    using (sub) Opaque(sub, p);
            }
        }

        void ApplyRoot(TarEntry entry)
        {
            if (o.KeepOwners)
                Check(FsAt.LchownAt(root, ".", (uint)entry.Uid, (uint)entry.Gid), "chown the root directory");
            Check(FsAt.LchmodAt(root, ".", (uint)entry.Mode & 0xFFF), "chmod the root directory");
            _rootTime = (entry.ModificationTime, true);
        }

        void SetXattrs(PaxTarEntry entry, SafeFd fd, string path)
        {
            foreach (var (key, value) in entry.ExtendedAttributes)
            {
                string xname;
                byte[] bytes;
                if (key.StartsWith("LIBARCHIVE.xattr.", StringComparison.Ordinal))
                {
                    xname = Uri.UnescapeDataString(key["LIBARCHIVE.xattr.".Length..]);
                    try { bytes = Convert.FromBase64String(value.PadRight((value.Length + 3) / 4 * 4, '=')); }
                    catch (FormatException) { XattrsSkipped++; continue; }
                }
                else if (key.StartsWith("SCHILY.xattr.", StringComparison.Ordinal))
                {
                    xname = key["SCHILY.xattr.".Length..];
                    var both = "LIBARCHIVE.xattr." + Uri.EscapeDataString(xname);
                    if (entry.ExtendedAttributes.ContainsKey(both)) continue;
                    // The reader decodes PAX values as UTF-8: a binary value that was not valid UTF-8 is lost, and
                    // a mangled security.capability must not be written.
                    if (value.Contains('\uFFFD')) { XattrsSkipped++; continue; }
                    bytes = Encoding.UTF8.GetBytes(value);
                }
                else continue;
                if (!(xname.StartsWith("user.", StringComparison.Ordinal) || xname is "security.capability"
                    or "system.posix_acl_access" or "system.posix_acl_default"))
                {
                    XattrsSkipped++;
                    continue;
                }
                var e = FsAt.FSetXattr(fd, xname, bytes);
                if (e is Errors.EOPNOTSUPP or Errors.EPERM or Errors.EINVAL) { XattrsSkipped++; continue; }
                Check(e, $"set xattr {xname} on '{path}'");
            }
        }

        /// <summary>Directory times last: writing into a directory changes its mtime.</summary>
        public void Finish()
        {
            Invalidate();
            for (var i = _dirTimes.Count - 1; i >= 0; i--)
            {
                var (path, mtime) = _dirTimes[i];
                var slash = path.LastIndexOf('/');
                using var dir = Open(slash < 0 ? "" : path[..slash], out _);
                if (dir is not null) FsAt.LutimesAt(dir, path[(slash + 1)..], mtime, mtime);
            }
            if (_rootTime.Set) FsAt.LutimesAt(root, ".", _rootTime.Mtime, _rootTime.Mtime);
        }

        /// <summary>The directory <paramref name="path"/> in the root, made (0755, the caller's) if missing.</summary>
        SafeFd Dir(string path)
        {
            if (_cachedPath == path && _cachedFd is not null) return _cachedFd;
            _cachedFd?.Dispose();
            _cachedFd = null;
            _cachedFd = Ensure(path, 0);
            _cachedPath = path;
            return _cachedFd;
        }

        SafeFd Ensure(string path, int depth)
        {
            if (Open(path, out var e) is { } fd) return fd;
            if (e != Errors.ENOENT || depth > 40) throw new LinuxException(e, $"open directory '{path}' in the root");
            var slash = path.LastIndexOf('/');
            using (var parent = Ensure(slash < 0 ? "" : path[..slash], depth + 1))
            {
                var last = path[(slash + 1)..];
                e = FsAt.MkdirAt(parent, last, 0b111_101_101);
                if (e == Errors.EEXIST && FsAt.ReadLinkAt(parent, last, out _) is { } target)
                {
                    // A dangling symlink on the way: make its target, inside the root, as tar would through it.
                    var full = target.StartsWith('/') ? target : (slash < 0 ? "" : path[..slash] + "/") + target;
                    Ensure(full, depth + 1).Dispose();
                }
                else if (e != 0 && e != Errors.EEXIST) throw new LinuxException(e, $"mkdir '{path}' in the root");
            }
            return Open(path, out e) ?? throw new LinuxException(e, $"open directory '{path}' in the root");
        }

        SafeFd? Open(string path, out int errno, int flags = O.PATH) =>
            FsAt.TryOpenat2(root, path, flags | O.DIRECTORY, 0, Resolve, out var fd, out errno) ? fd : null;

        /// <summary>Forgets the cached directory (its fd may be in use for the current entry: closed later).</summary>
        void Invalidate() => _cachedPath = null;

        static RootedTarException Unsupported(TarEntry entry) =>
            new($"'{entry.Name}' has an unsupported tar entry type ({entry.EntryType})");

        static void Check(int errno, string what)
        {
            if (errno != 0) throw new LinuxException(errno, what);
        }

        static ulong MakeDev(int major, int minor)
        {
            ulong ma = (uint)major, mi = (uint)minor;
            return ((ma & 0xfffff000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffffff00) << 12) | (mi & 0xff);
        }

        public void Dispose() => _cachedFd?.Dispose();
    }
}
