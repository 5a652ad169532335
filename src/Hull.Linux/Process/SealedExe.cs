using System.Runtime.InteropServices;
using System.Text;

namespace Hull.Linux;

/// <summary>
/// A read-only view of an executable for a process that enters a container (the CVE-2019-5736 class: a process in
/// the container opens /proc/PID/exe of the runtime and writes through it to the host's binary).
/// The view is a detached overlay mount (in no mount table, alive while the fd or a process's exe holds it) made
/// of the binary's directory and an empty directory, mounted read-only: reopening /proc/PID/exe for writing gives
/// EROFS, and an overlay without an upper layer cannot be remounted read-write. Where overlay is unavailable it
/// falls back to a sealed memfd copy (F_SEAL_WRITE: no write ever succeeds).
/// </summary>
public static unsafe class SealedExe
{
    const int FSOPEN_CLOEXEC = 1, FSCONFIG_SET_STRING = 1, FSCONFIG_CMD_CREATE = 6, FSMOUNT_CLOEXEC = 1;
    const long MOUNT_ATTR_RDONLY = 1, MOUNT_ATTR_NOSUID = 2, MOUNT_ATTR_NODEV = 4;
    const uint MFD_CLOEXEC = 1, MFD_ALLOW_SEALING = 2, MFD_EXEC = 0x10;
    const int F_ADD_SEALS = 1033, F_GET_SEALS = 1034;
    const int F_SEAL_SEAL = 1, F_SEAL_SHRINK = 2, F_SEAL_GROW = 4, F_SEAL_WRITE = 8;
    const long OVERLAYFS_SUPER_MAGIC = 0x794c7630, ST_RDONLY = 1;

    /// <summary>Opens <paramref name="binary"/> (close-on-exec) through a sealed view; <paramref name="emptyDir"/>
    /// is an empty directory (overlay needs two lower layers; the binary's directory twice gives ELOOP).</summary>
    public static SafeFd Open(string binary, string emptyDir)
    {
        var full = Path.GetFullPath(binary);
        if (TryOverlay(full, emptyDir) is { } fd) return fd;
        return MemfdCopy(full);
    }

    /// <summary>Makes <paramref name="dir"/> (mode 0500) if it does not exist, for <see cref="Open"/>.</summary>
    public static string EnsureEmptyDir(string dir)
    {
        if (Libc.mkdir(dir, 0b101_000_000) < 0 && Marshal.GetLastPInvokeError() != Errors.EEXIST)
            throw LinuxException.FromLastError($"mkdir {dir} (the empty layer of the sealed runtime view)");
        return dir;
    }

    static SafeFd? TryOverlay(string binary, string emptyDir)
    {
        long fs;
        fixed (byte* type = Z("overlay")) fs = Libc.syscall(SYS.fsopen, (long)type, FSOPEN_CLOEXEC, 0, 0, 0, 0);
        if (fs < 0) return null;
        using var fsFd = new SafeFd((int)fs);
        if (!Set(fsFd, "lowerdir+", Path.GetDirectoryName(binary)!) || !Set(fsFd, "lowerdir+", emptyDir)) return null;
        if (Libc.syscall(SYS.fsconfig, fsFd.Fd, FSCONFIG_CMD_CREATE, 0, 0, 0, 0) < 0) return null;
        var mnt = Libc.syscall(SYS.fsmount, fsFd.Fd, FSMOUNT_CLOEXEC,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0);
        if (mnt < 0) return null;
        using var mntFd = new SafeFd((int)mnt);
        var fd = Libc.openat(mntFd.Fd, Path.GetFileName(binary), O.RDONLY | O.CLOEXEC | O.NOFOLLOW, 0);
        if (fd < 0) throw LinuxException.FromLastError($"open {binary} in its sealed view");
        return new SafeFd(fd);
    }

    static bool Set(SafeFd fs, string key, string value)
    {
        fixed (byte* k = Z(key), v = Z(value))
            return Libc.syscall(SYS.fsconfig, fs.Fd, FSCONFIG_SET_STRING, (long)k, (long)v, 0, 0) == 0;
    }

    static SafeFd MemfdCopy(string binary)
    {
        using var src = Sys.Open(binary, O.RDONLY);
        long m;
        fixed (byte* name = Z("hull-sealed"))
        {
            m = Libc.syscall(SYS.memfd_create, (long)name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC, 0, 0, 0, 0);
            if (m < 0 && Marshal.GetLastPInvokeError() == Errors.EINVAL)
                m = Libc.syscall(SYS.memfd_create, (long)name, MFD_CLOEXEC | MFD_ALLOW_SEALING, 0, 0, 0, 0);
        }
        if (m < 0) throw LinuxException.FromLastError($"memfd_create (a sealed copy of {binary})");
        var mem = new SafeFd((int)m);
        try
        {
            while (true)
            {
                var n = Libc.syscall(SYS.sendfile, mem.Fd, src.Fd, 0, 1 << 30, 0, 0);
                if (n < 0) throw LinuxException.FromLastError($"copying {binary} into its sealed copy");
                if (n == 0) break;
            }
            Sys.Check(Libc.fcntl(mem.Fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE),
                $"sealing the copy of {binary}");
            return mem;
        }
        catch { mem.Dispose(); throw; }
    }

    /// <summary>True when this process runs from a sealed view (a read-only overlay, or a write-sealed memfd).
    /// </summary>
    public static bool RunningSealed()
    {
        if (!Sys.TryOpen("/proc/self/exe", O.RDONLY, out var fd, out _)) return false;
        using (fd)
        {
            var seals = Libc.fcntl(fd.Fd, F_GET_SEALS, 0);
            if (seals >= 0) return (seals & F_SEAL_WRITE) != 0;
            long* st = stackalloc long[15]; // struct statfs: f_type [0], f_flags [10]
            if (Libc.syscall(SYS.fstatfs, fd.Fd, (long)st, 0, 0, 0, 0) < 0) return false;
            return st[0] == OVERLAYFS_SUPER_MAGIC && (st[10] & ST_RDONLY) != 0;
        }
    }

    /// <summary>Replaces this process by <paramref name="exe"/> (execveat AT_EMPTY_PATH) with the same arguments
    /// (/proc/self/cmdline) and environment (/proc/self/environ) plus <paramref name="addEnv"/>. Returns only by
    /// throwing.</summary>
    public static void ReExec(SafeFd exe, string addEnv)
    {
        static List<string> Split(string path) =>
            [.. Encoding.UTF8.GetString(File.ReadAllBytes(path)).Split('\0').SkipLast(1)];
        Spawner.ExecInPlace(new SpawnRequest
        {
            ExecFd = exe, Argv = Split("/proc/self/cmdline"), Env = [.. Split("/proc/self/environ"), addEnv],
        });
    }

    static byte[] Z(string s) => Encoding.UTF8.GetBytes(s + "\0");
}
