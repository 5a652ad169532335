using System.Runtime.InteropServices;

namespace Hull.Linux;

/// <summary>
/// The *at(2) calls for working inside a directory tree without following its links: openat2(2) with RESOLVE_*
/// flags to reach a directory as if a root fd were "/", and calls on (directory fd, name) that never follow the
/// last component. x86_64 numbers and layouts.
/// </summary>
public static unsafe partial class FsAt
{
    public const ulong RESOLVE_NO_XDEV = 0x01, RESOLVE_NO_MAGICLINKS = 0x02, RESOLVE_NO_SYMLINKS = 0x04,
        RESOLVE_BENEATH = 0x08, RESOLVE_IN_ROOT = 0x10;
    public const int AT_SYMLINK_NOFOLLOW = 0x100, AT_REMOVEDIR = 0x200, AT_EMPTY_PATH = 0x1000;
    public const uint S_IFMT = 0xF000, S_IFDIR = 0x4000, S_IFREG = 0x8000, S_IFLNK = 0xA000, S_IFCHR = 0x2000,
        S_IFBLK = 0x6000, S_IFIFO = 0x1000;

    [StructLayout(LayoutKind.Sequential)]
    struct OpenHow { public ulong Flags, Mode, Resolve; }

    /// <summary>struct stat (x86_64), the fields used here.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 144)]
    public struct Stat
    {
        [FieldOffset(0)] public ulong Dev;
        [FieldOffset(8)] public ulong Ino;
        [FieldOffset(24)] public uint Mode;
        [FieldOffset(28)] public uint Uid;
        [FieldOffset(32)] public uint Gid;
        [FieldOffset(48)] public long Size;
        public readonly bool IsDir => (Mode & S_IFMT) == S_IFDIR;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct Timespec { public long Sec, Nsec; }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int symlinkat(string target, int newdirfd, string linkpath);
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int linkat(int olddirfd, string oldpath, int newdirfd, string newpath, int flags);
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int mknodat(int dirfd, string path, uint mode, ulong dev);
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int fchownat(int dirfd, string path, uint uid, uint gid, int flags);
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int utimensat(int dirfd, string path, Timespec* times, int flags);
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int unlinkat(int dirfd, string path, int flags);
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int fstatat(int dirfd, string path, Stat* st, int flags);
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int fsetxattr(int fd, string name, byte* value, nuint size, int flags);
    [LibraryImport("libc", SetLastError = true)]
    private static partial int fchmod(int fd, uint mode);
    [LibraryImport("libc", SetLastError = true)]
    private static partial int ftruncate(int fd, long length);

    static int Err() => Marshal.GetLastPInvokeError();

    /// <summary>openat2(2): opens <paramref name="path"/> relative to <paramref name="dir"/> with RESOLVE_*.</summary>
    public static bool TryOpenat2(SafeFd dir, string path, int flags, uint mode, ulong resolve, out SafeFd fd,
        out int errno)
    {
        var how = new OpenHow { Flags = (ulong)(flags | O.CLOEXEC), Mode = mode, Resolve = resolve };
        var p = Marshal.StringToCoTaskMemUTF8(path.Length == 0 ? "." : path);
        try
        {
            // EAGAIN: a rename or mount anywhere on the host raced a ".." in the path, so the kernel could not vouch
            // that it stayed inside; openat2(2) says to retry.
            long r;
            var tries = 0;
            do r = Libc.syscall(SYS.openat2, dir.Fd, p, (long)&how, sizeof(OpenHow), 0, 0);
            while (r < 0 && (Err() == Errors.EINTR || (Err() == Errors.EAGAIN && ++tries < 1000)));
            errno = r < 0 ? Err() : 0;
            fd = new SafeFd(r < 0 ? -1 : (int)r);
            return r >= 0;
        }
        finally { Marshal.FreeCoTaskMem(p); }
    }

    /// <summary>openat(2) of one name in a directory; add O.NOFOLLOW to refuse a symlink.</summary>
    public static bool TryOpenAt(SafeFd dir, string name, int flags, uint mode, out SafeFd fd, out int errno)
    {
        int r;
        do r = Libc.openat(dir.Fd, name, flags | O.CLOEXEC, mode);
        while (r < 0 && Err() == Errors.EINTR);
        errno = r < 0 ? Err() : 0;
        fd = new SafeFd(r);
        return r >= 0;
    }

    /// <summary>fstatat(2) with AT_SYMLINK_NOFOLLOW; false with the errno if the name is missing.</summary>
    public static bool TryLstatAt(SafeFd dir, string name, out Stat st, out int errno)
    {
        Stat s;
        var r = fstatat(dir.Fd, name, &s, AT_SYMLINK_NOFOLLOW | (name.Length == 0 ? AT_EMPTY_PATH : 0));
        st = s;
        errno = r < 0 ? Err() : 0;
        return r == 0;
    }

    public static int MkdirAt(SafeFd dir, string name, uint mode) => Libc.mkdirat(dir.Fd, name, mode) == 0 ? 0 : Err();
    public static int SymlinkAt(string target, SafeFd dir, string name) =>
        symlinkat(target, dir.Fd, name) == 0 ? 0 : Err();
    /// <summary>linkat(2) without AT_SYMLINK_FOLLOW: a symlink is linked itself, never its target.</summary>
    public static int LinkAt(SafeFd oldDir, string oldName, SafeFd newDir, string newName) =>
        linkat(oldDir.Fd, oldName, newDir.Fd, newName, 0) == 0 ? 0 : Err();
    public static int MknodAt(SafeFd dir, string name, uint mode, ulong dev) =>
        mknodat(dir.Fd, name, mode, dev) == 0 ? 0 : Err();
    public static int LchownAt(SafeFd dir, string name, uint uid, uint gid) =>
        fchownat(dir.Fd, name, uid, gid, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : Err();
    public static int UnlinkAt(SafeFd dir, string name, bool isDir) =>
        unlinkat(dir.Fd, name, isDir ? AT_REMOVEDIR : 0) == 0 ? 0 : Err();
    public static int FChmod(SafeFd fd, uint mode) => fchmod(fd.Fd, mode) == 0 ? 0 : Err();
    public static int FTruncate(SafeFd fd, long length) => ftruncate(fd.Fd, length) == 0 ? 0 : Err();

    /// <summary>fchmodat2(2) with AT_SYMLINK_NOFOLLOW (Linux 6.6): the mode of a name that is not followed.</summary>
    public static int LchmodAt(SafeFd dir, string name, uint mode)
    {
        var p = Marshal.StringToCoTaskMemUTF8(name);
        try { return Libc.syscall(SYS.fchmodat2, dir.Fd, p, mode, AT_SYMLINK_NOFOLLOW, 0, 0) == 0 ? 0 : Err(); }
        finally { Marshal.FreeCoTaskMem(p); }
    }

    /// <summary>utimensat(2) with AT_SYMLINK_NOFOLLOW: atime and mtime of a name (a symlink's own).</summary>
    public static int LutimesAt(SafeFd dir, string name, DateTimeOffset atime, DateTimeOffset mtime)
    {
        var t = stackalloc Timespec[2];
        t[0] = ToTimespec(atime);
        t[1] = ToTimespec(mtime);
        return utimensat(dir.Fd, name, t, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : Err();
    }

    static Timespec ToTimespec(DateTimeOffset t)
    {
        var ticks = t.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks;
        var sec = Math.DivRem(ticks, TimeSpan.TicksPerSecond, out var rem);
        if (rem < 0) { sec--; rem += TimeSpan.TicksPerSecond; }
        return new Timespec { Sec = sec, Nsec = rem * 100 };
    }

    /// <summary>fsetxattr(2) on an open fd (an O_PATH fd works from Linux 6.13).</summary>
    public static int FSetXattr(SafeFd fd, string name, ReadOnlySpan<byte> value)
    {
        fixed (byte* v = value) return fsetxattr(fd.Fd, name, v, (nuint)value.Length, 0) == 0 ? 0 : Err();
    }

    /// <summary>The names in a directory fd (getdents64(2)), without "." and "..".</summary>
    public static List<string> ReadDir(SafeFd dir)
    {
        var names = new List<string>();
        var buf = new byte[32768];
        while (true)
        {
            long n;
            fixed (byte* b = buf) n = Libc.syscall(SYS.getdents64, dir.Fd, (long)b, buf.Length, 0, 0, 0);
            if (n < 0) throw LinuxException.FromLastError("getdents64");
            if (n == 0) return names;
            for (var off = 0; off < n;)
            {
                var reclen = BitConverter.ToUInt16(buf, off + 16);
                var nameStart = off + 19;
                var end = Array.IndexOf(buf, (byte)0, nameStart);
                var name = System.Text.Encoding.UTF8.GetString(buf, nameStart, end - nameStart);
                if (name is not "." and not "..") names.Add(name);
                off += reclen;
            }
        }
    }

    /// <summary>
    /// Removes <paramref name="name"/> in <paramref name="dir"/> and, for a directory, everything below it, never
    /// following a symlink (each level is opened O_NOFOLLOW and emptied through its own fd). Missing is not an error.
    /// </summary>
    public static void RemoveAt(SafeFd dir, string name)
    {
        if (!TryLstatAt(dir, name, out var st, out var e))
        {
            if (e == Errors.ENOENT) return;
            throw new LinuxException(e, $"stat {name}");
        }
        if (st.IsDir)
        {
            if (!TryOpenAt(dir, name, O.RDONLY | O.DIRECTORY | O.NOFOLLOW, 0, out var sub, out e))
                throw new LinuxException(e, $"open {name}");
            using (sub)
                foreach (var child in ReadDir(sub)) RemoveAt(sub, child);
        }
        e = UnlinkAt(dir, name, st.IsDir);
        if (e != 0 && e != Errors.ENOENT) throw new LinuxException(e, $"remove {name}");
    }
}

public static unsafe partial class FsAt
{
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint readlinkat(int dirfd, string path, byte* buf, nuint size);
    [LibraryImport("libc", SetLastError = true)]
    private static partial nint pwrite(int fd, byte* buf, nuint count, long offset);

    /// <summary>readlinkat(2): the target of a symlink; null with the errno if the name is not one.</summary>
    public static string? ReadLinkAt(SafeFd dir, string name, out int errno)
    {
        var buf = stackalloc byte[4097];
        var n = readlinkat(dir.Fd, name, buf, 4096);
        errno = n < 0 ? Err() : 0;
        return n < 0 ? null : System.Text.Encoding.UTF8.GetString(buf, (int)n);
    }

    /// <summary>pwrite(2) of the whole buffer at an offset.</summary>
    public static void PwriteAll(SafeFd fd, ReadOnlySpan<byte> data, long offset, string what)
    {
        while (!data.IsEmpty)
        {
            nint r;
            fixed (byte* p = data) r = pwrite(fd.Fd, p, (nuint)data.Length, offset);
            if (r < 0)
            {
                var e = Err();
                if (e == Errors.EINTR) continue;
                throw new LinuxException(e, what);
            }
            data = data[(int)r..];
            offset += r;
        }
    }
}
