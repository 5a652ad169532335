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

/// <summary>Path resolution confined to a root directory (openat2 RESOLVE_IN_ROOT) and fstat, for file transfer into
/// a rootfs: <see cref="FsAt"/>'s calls with the policies hulld's file API uses.</summary>
public static unsafe partial class RootedFs
{
    [LibraryImport("libc", SetLastError = true)]
    private static partial int fstat(int fd, FsAt.Stat* st);

    /// <summary>Opens <paramref name="path"/> (absolute inside the root) as if <paramref name="root"/> were
    /// "/".</summary>
    public static bool TryOpen(SafeFd root, string path, int flags, uint mode, out SafeFd fd, out int errno) =>
        FsAt.TryOpenat2(root, path.TrimStart('/'), flags, mode, FsAt.RESOLVE_IN_ROOT | FsAt.RESOLVE_NO_MAGICLINKS,
            out fd, out errno);

    /// <summary>Opens <paramref name="path"/> below <paramref name="dir"/> following no symlink at all (any component
    /// that is one fails with ELOOP) and never leaving it (EXDEV): for a program's own files in a dir it
    /// owns.</summary>
    public static bool TryOpenBeneath(SafeFd dir, string path, int flags, uint mode, out SafeFd fd, out int errno) =>
        FsAt.TryOpenat2(dir, path.TrimStart('/'), flags, mode,
            FsAt.RESOLVE_BENEATH | FsAt.RESOLVE_NO_SYMLINKS | FsAt.RESOLVE_NO_MAGICLINKS, out fd, out errno);

    /// <summary>Whether <paramref name="path"/> names anything inside <paramref name="root"/> (resolved as
    /// <see cref="TryOpen"/> resolves it).</summary>
    public static bool Exists(SafeFd root, string path)
    {
        if (!TryOpen(root, path, O.PATH, 0, out var fd, out _)) return false;
        fd.Dispose();
        return true;
    }

    public static SafeFd Open(SafeFd root, string path, int flags, uint mode = 0) =>
        TryOpen(root, path, flags, mode, out var fd, out var e) ? fd : throw new LinuxException(e, $"open {path}");

    public static FsAt.Stat FStat(SafeFd fd)
    {
        FsAt.Stat st;
        if (fstat(fd.Fd, &st) < 0) throw LinuxException.FromLastError("fstat");
        return st;
    }

    public static void FChmod(SafeFd fd, uint mode)
    {
        if (FsAt.FChmod(fd, mode) is var e and not 0) throw new LinuxException(e, "fchmod");
    }
    public static void FChown(SafeFd fd, uint uid, uint gid) => Sys.Check(Libc.fchown(fd.Fd, uid, gid), "fchown");

    /// <summary>Removes a name in a directory fd (AT_REMOVEDIR for a directory).</summary>
    public static void UnlinkAt(SafeFd dir, string name, bool isDir)
    {
        if (FsAt.UnlinkAt(dir, name, isDir) is var e and not 0) throw new LinuxException(e, $"unlink {name}");
    }

    /// <summary>mkdir inside a directory fd; false if it already existed.</summary>
    public static bool MkdirAt(SafeFd dir, string name, uint mode)
    {
        var e = FsAt.MkdirAt(dir, name, mode);
        if (e == 0) return true;
        if (e == Errors.EEXIST) return false;
        throw new LinuxException(e, $"mkdir {name}");
    }
}
