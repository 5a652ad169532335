using System.Runtime.InteropServices;

namespace Hull.Linux;

/// <summary>
/// Is a path the root of a mount? One statx(2) (STATX_ATTR_MOUNT_ROOT, Linux 5.8+) instead of reading the whole
/// /proc/self/mountinfo, whose size grows with every mount in the namespace (one overlay per running container).
/// </summary>
public static unsafe class MountPoint
{
    const int AT_SYMLINK_NOFOLLOW = 0x100, AT_NO_AUTOMOUNT = 0x800, STATX_TYPE = 0x1;
    const ulong STATX_ATTR_MOUNT_ROOT = 0x2000;

    [StructLayout(LayoutKind.Explicit, Size = 256)]
    struct Statx
    {
        [FieldOffset(8)] public ulong Attributes;
        [FieldOffset(56)] public ulong AttributesMask;
    }

    /// <summary>True if <paramref name="path"/> is a mount point, false if not or if it does not exist; null if the
    /// kernel cannot tell (before 5.8: the caller falls back to mountinfo).</summary>
    public static bool? IsMountRoot(string path)
    {
        Statx st;
        var p = Marshal.StringToCoTaskMemUTF8(path);
        long r;
        try { r = Libc.syscall(SYS.statx, O.AT_FDCWD, p, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_TYPE, (long)&st,
            0); }
        finally { Marshal.FreeCoTaskMem(p); }
        if (r < 0)
        {
            var e = Marshal.GetLastPInvokeError();
            if (e == Errors.ENOENT || e == Errors.ENOTDIR) return false;
            return null;
        }
        if ((st.AttributesMask & STATX_ATTR_MOUNT_ROOT) == 0) return null;
        return (st.Attributes & STATX_ATTR_MOUNT_ROOT) != 0;
    }
}
