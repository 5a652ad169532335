using System.Runtime.InteropServices;

namespace Hull.Linux;

/// <summary>The few calls hulld needs beyond <see cref="Libc"/>: an exclusive lock on its state dir.</summary>
public static class DaemonInterop
{
    public const int LOCK_EX = 2, LOCK_NB = 4, LOCK_UN = 8;
    public const int EWOULDBLOCK = 11;

    /// <summary>Takes an exclusive, non-blocking flock on an open file; false if another process holds it.</summary>
    public static bool TryLockExclusive(SafeFd fd)
    {
        while (true)
        {
            if (Libc.flock(fd.Fd, LOCK_EX | LOCK_NB) == 0) return true;
            var e = Marshal.GetLastPInvokeError();
            if (e == EWOULDBLOCK) return false;
            if (e != Errors.EINTR) throw new LinuxException(e, "flock");
        }
    }
}

/// <summary>Path resolution confined to a root directory (openat2 RESOLVE_IN_ROOT) and fstat, for file transfer into a rootfs.</summary>
public static unsafe partial class RootedFs
{
    const ulong RESOLVE_NO_MAGICLINKS = 0x02, RESOLVE_NO_SYMLINKS = 0x04, RESOLVE_BENEATH = 0x08, RESOLVE_IN_ROOT = 0x10;

    [StructLayout(LayoutKind.Sequential)]
    struct OpenHow { public ulong Flags, Mode, Resolve; }

    [StructLayout(LayoutKind.Explicit, Size = 144)]
    public struct Stat
    {
        [FieldOffset(24)] public uint Mode;
        [FieldOffset(28)] public uint Uid;
        [FieldOffset(32)] public uint Gid;
        [FieldOffset(48)] public long Size;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fstat(int fd, Stat* st);
    [LibraryImport("libc", SetLastError = true)]
    private static partial int fchmod(int fd, uint mode);
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int unlinkat(int dirfd, string path, int flags);

    /// <summary>Opens <paramref name="path"/> (absolute inside the root) as if <paramref name="root"/> were "/".</summary>
    public static bool TryOpen(SafeFd root, string path, int flags, uint mode, out SafeFd fd, out int errno) =>
        TryOpenAt2(root, path, flags, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, out fd, out errno);

    /// <summary>Opens <paramref name="path"/> below <paramref name="dir"/> following no symlink at all (any component
    /// that is one fails with ELOOP) and never leaving it (EXDEV): for a program's own files in a dir it owns.</summary>
    public static bool TryOpenBeneath(SafeFd dir, string path, int flags, uint mode, out SafeFd fd, out int errno) =>
        TryOpenAt2(dir, path, flags, mode, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, out fd, out errno);

    static bool TryOpenAt2(SafeFd root, string path, int flags, uint mode, ulong resolve, out SafeFd fd, out int errno)
    {
        var how = new OpenHow { Flags = (ulong)(flags | O.CLOEXEC), Mode = mode, Resolve = resolve };
        var rel = path.TrimStart('/');
        if (rel.Length == 0) rel = ".";
        var p = Marshal.StringToCoTaskMemUTF8(rel);
        try
        {
            // EAGAIN: a rename or mount anywhere on the host raced a ".." in the path, so the kernel could not vouch
            // that it stayed inside the root; openat2(2) says to retry.
            long r;
            var tries = 0;
            do r = Libc.syscall(SYS.openat2, root.Fd, p, (long)&how, sizeof(OpenHow), 0, 0);
            while (r < 0 && (Marshal.GetLastPInvokeError() == Errors.EINTR
                             || (Marshal.GetLastPInvokeError() == Errors.EAGAIN && ++tries < 1000)));
            errno = r < 0 ? Marshal.GetLastPInvokeError() : 0;
            fd = new SafeFd(r < 0 ? -1 : (int)r);
            return r >= 0;
        }
        finally { Marshal.FreeCoTaskMem(p); }
    }

    public static SafeFd Open(SafeFd root, string path, int flags, uint mode = 0) =>
        TryOpen(root, path, flags, mode, out var fd, out var e) ? fd : throw new LinuxException(e, $"open {path}");

    public static Stat FStat(SafeFd fd)
    {
        Stat st;
        if (fstat(fd.Fd, &st) < 0) throw LinuxException.FromLastError("fstat");
        return st;
    }

    public static void FChmod(SafeFd fd, uint mode) => Sys.Check(fchmod(fd.Fd, mode), "fchmod");
    public static void FChown(SafeFd fd, uint uid, uint gid) => Sys.Check(Libc.fchown(fd.Fd, uid, gid), "fchown");

    /// <summary>Removes a name in a directory fd (AT_REMOVEDIR for a directory).</summary>
    public static void UnlinkAt(SafeFd dir, string name, bool isDir) =>
        Sys.Check(unlinkat(dir.Fd, name, isDir ? 0x200 : 0), $"unlink {name}");

    /// <summary>mkdir inside a directory fd; false if it already existed.</summary>
    public static bool MkdirAt(SafeFd dir, string name, uint mode)
    {
        if (Libc.mkdirat(dir.Fd, name, mode) == 0) return true;
        var e = Marshal.GetLastPInvokeError();
        if (e == Errors.EEXIST) return false;
        throw new LinuxException(e, $"mkdir {name}");
    }
}
