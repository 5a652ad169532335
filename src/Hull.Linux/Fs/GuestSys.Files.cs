using System.Runtime.InteropServices;

namespace Hull.Linux;

/// <summary>The file status the guest agent reports (from statx(2)).</summary>
public readonly record struct StatxInfo(uint Mode, uint Uid, uint Gid, long Size, long MtimeSec, uint MtimeNsec)
{
    public const uint S_IFMT = 0xF000, S_IFREG = 0x8000, S_IFDIR = 0x4000, S_IFLNK = 0xA000, S_IFCHR = 0x2000,
        S_IFBLK = 0x6000, S_IFIFO = 0x1000, S_IFSOCK = 0xC000;

    public uint Type => Mode & S_IFMT;
    public uint Permissions => Mode & 0xFFF;

    public string TypeName => Type switch
    {
        S_IFREG => "file", S_IFDIR => "directory", S_IFLNK => "symlink", S_IFCHR => "char", S_IFBLK => "block",
        S_IFIFO => "fifo", S_IFSOCK => "socket", _ => "unknown",
    };
}

/// <summary>System calls the guest agent needs (see also the other GuestSys.*.cs files).</summary>
public static unsafe partial class GuestSys
{
    const int AT_SYMLINK_NOFOLLOW = 0x100, AT_EMPTY_PATH = 0x1000, STATX_BASIC_STATS = 0x7ff;

    [StructLayout(LayoutKind.Explicit, Size = 256)]
    struct Statx
    {
        [FieldOffset(0)] public uint Mask;
        [FieldOffset(20)] public uint Uid;
        [FieldOffset(24)] public uint Gid;
        [FieldOffset(28)] public ushort Mode;
        [FieldOffset(40)] public ulong Size;
        [FieldOffset(112)] public long MtimeSec;
        [FieldOffset(120)] public uint MtimeNsec;
    }

    /// <summary>statx of a path (not following a final symlink when <paramref name="follow"/> is false).</summary>
    public static bool TryStat(string path, bool follow, out StatxInfo info, out int errno)
    {
        Statx st;
        var p = Marshal.StringToCoTaskMemUTF8(path);
        long r;
        try { r = Libc.syscall(SYS.statx, O.AT_FDCWD, p, follow ? 0 : AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, (long)&st,
            0); }
        finally { Marshal.FreeCoTaskMem(p); }
        errno = r < 0 ? Marshal.GetLastPInvokeError() : 0;
        info = r < 0 ? default : new StatxInfo(st.Mode, st.Uid, st.Gid, (long)st.Size, st.MtimeSec, st.MtimeNsec);
        return r >= 0;
    }

    /// <summary>statx of an open fd.</summary>
    public static StatxInfo Fstat(SafeFd fd)
    {
        Statx st;
        var empty = stackalloc byte[1];
        empty[0] = 0;
        Sys.Check(Libc.syscall(SYS.statx, fd.Fd, (long)empty, AT_EMPTY_PATH, STATX_BASIC_STATS, (long)&st, 0), "statx");
        return new StatxInfo(st.Mode, st.Uid, st.Gid, (long)st.Size, st.MtimeSec, st.MtimeNsec);
    }

    public static void Fsync(SafeFd fd, string what) =>
        Sys.Check(Libc.syscall(SYS.fsync, fd.Fd, 0, 0, 0, 0, 0), $"fsync {what}");
    public static void Fchmod(SafeFd fd, uint mode, string what) =>
        Sys.Check(Libc.syscall(SYS.fchmod, fd.Fd, mode, 0, 0, 0, 0), $"chmod {what}");
    public static void Fchown(SafeFd fd, uint uid, uint gid, string what) =>
        Sys.Check(Libc.fchown(fd.Fd, uid, gid), $"chown {what}");

    public static void Rename(string from, string to)
    {
        var a = Marshal.StringToCoTaskMemUTF8(from);
        var b = Marshal.StringToCoTaskMemUTF8(to);
        try { Sys.Check(Libc.syscall(SYS.rename, a, b, 0, 0, 0, 0), $"rename {from} to {to}"); }
        finally { Marshal.FreeCoTaskMem(a); Marshal.FreeCoTaskMem(b); }
    }
}
