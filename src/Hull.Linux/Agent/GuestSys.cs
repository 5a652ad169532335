using System.Runtime.InteropServices;
using System.Text;

namespace Hull.Linux.Agent;

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

/// <summary>System calls the guest agent needs that the shared interop layer does not wrap (raw syscall numbers, x86_64).</summary>
public static unsafe class GuestSys
{
    const long SYS_rt_sigaction = 13, SYS_rt_sigprocmask = 14, SYS_bind = 49, SYS_listen = 50, SYS_accept4 = 288,
        SYS_fsync = 74, SYS_waitid = 247, SYS_rename = 82, SYS_fchmod = 91, SYS_sync = 162, SYS_reboot = 169, SYS_statx = 332;
    const int AT_SYMLINK_NOFOLLOW = 0x100, AT_EMPTY_PATH = 0x1000, STATX_BASIC_STATS = 0x7ff;
    public const ulong TIOCSWINSZ = 0x5414;
    public const uint LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC, LINUX_REBOOT_CMD_RESTART = 0x01234567;

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
        try { r = Libc.syscall(SYS_statx, O.AT_FDCWD, p, follow ? 0 : AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, (long)&st, 0); }
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
        Sys.Check(Libc.syscall(SYS_statx, fd.Fd, (long)empty, AT_EMPTY_PATH, STATX_BASIC_STATS, (long)&st, 0), "statx");
        return new StatxInfo(st.Mode, st.Uid, st.Gid, (long)st.Size, st.MtimeSec, st.MtimeNsec);
    }

    public static void Fsync(SafeFd fd, string what) => Sys.Check(Libc.syscall(SYS_fsync, fd.Fd, 0, 0, 0, 0, 0), $"fsync {what}");
    public static void Fchmod(SafeFd fd, uint mode, string what) => Sys.Check(Libc.syscall(SYS_fchmod, fd.Fd, mode, 0, 0, 0, 0), $"chmod {what}");
    public static void Fchown(SafeFd fd, uint uid, uint gid, string what) => Sys.Check(Libc.fchown(fd.Fd, uid, gid), $"chown {what}");

    public static void Rename(string from, string to)
    {
        var a = Marshal.StringToCoTaskMemUTF8(from);
        var b = Marshal.StringToCoTaskMemUTF8(to);
        try { Sys.Check(Libc.syscall(SYS_rename, a, b, 0, 0, 0, 0), $"rename {from} to {to}"); }
        finally { Marshal.FreeCoTaskMem(a); Marshal.FreeCoTaskMem(b); }
    }

    /// <summary>A listening AF_VSOCK stream socket on any CID and the given port.</summary>
    public static SafeFd VsockListen(uint port)
    {
        var fd = Libc.socket(40 /* AF_VSOCK */, 1 /* SOCK_STREAM */ | O.CLOEXEC, 0);
        if (fd < 0) throw LinuxException.FromLastError("socket AF_VSOCK");
        var s = new SafeFd(fd);
        try
        {
            // struct sockaddr_vm: family u16, reserved u16, port u32, cid u32, zero[4]
            var sa = stackalloc byte[16];
            new Span<byte>(sa, 16).Clear();
            *(ushort*)sa = 40;
            *(uint*)(sa + 4) = port;
            *(uint*)(sa + 8) = 0xFFFFFFFF; // VMADDR_CID_ANY
            Sys.Check(Libc.syscall(SYS_bind, fd, (long)sa, 16, 0, 0, 0), $"bind vsock port {port}");
            Sys.Check(Libc.syscall(SYS_listen, fd, 4, 0, 0, 0, 0), $"listen vsock port {port}");
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    /// <summary>accept4 (close-on-exec), retrying on EINTR.</summary>
    public static SafeFd Accept(SafeFd listener)
    {
        while (true)
        {
            var r = Libc.syscall(SYS_accept4, listener.Fd, 0, 0, O.CLOEXEC, 0, 0);
            if (r >= 0) return new SafeFd((int)r);
            var e = Marshal.GetLastPInvokeError();
            if (e != Errors.EINTR) throw new LinuxException(e, "accept");
        }
    }

    /// <summary>
    /// Blocks until the process behind a pidfd has exited (waitid P_PIDFD, WEXITED). Returns false when someone else
    /// reaped it first (ECHILD): it is gone either way.
    /// </summary>
    public static bool WaitPidfd(SafeFd pidfd)
    {
        var siginfo = stackalloc byte[128];
        while (true)
        {
            if (Libc.syscall(SYS_waitid, 3 /* P_PIDFD */, pidfd.Fd, (long)siginfo, 4 /* WEXITED */, 0, 0) == 0) return true;
            var e = Marshal.GetLastPInvokeError();
            if (e == Errors.EINTR) continue;
            if (e == Errors.ECHILD) return false;
            throw new LinuxException(e, "waitid");
        }
    }

    public static void SyncAll() => Libc.syscall(SYS_sync, 0, 0, 0, 0, 0, 0);

    /// <summary>reboot(2) with the magic numbers; returns only on failure.</summary>
    public static void Reboot(uint cmd) =>
        Sys.Check(Libc.syscall(SYS_reboot, unchecked((int)0xfee1dead), 672274793, cmd, 0, 0, 0), "reboot");

    /// <summary>TIOCSWINSZ on a terminal fd (the master of a pty).</summary>
    public static void SetWindowSize(SafeFd fd, ushort rows, ushort cols)
    {
        var ws = stackalloc ushort[4];
        ws[0] = rows; ws[1] = cols; ws[2] = 0; ws[3] = 0;
        Sys.Check(Libc.ioctl(fd.Fd, TIOCSWINSZ, (nint)ws), "ioctl TIOCSWINSZ");
    }

    /// <summary>Opens a new pseudo-terminal pair: (master, slave), both close-on-exec, the slave not our controlling tty.</summary>
    public static (SafeFd Master, SafeFd Slave) OpenPty()
    {
        var m = Libc.posix_openpt(O.RDWR | O.NOCTTY | O.CLOEXEC);
        if (m < 0) throw LinuxException.FromLastError("posix_openpt");
        var master = new SafeFd(m);
        try
        {
            Sys.Check(Libc.grantpt(m), "grantpt");
            Sys.Check(Libc.unlockpt(m), "unlockpt");
            var buf = stackalloc byte[128];
            var r = Libc.ptsname_r(m, buf, 128);
            if (r != 0) throw new LinuxException(r, "ptsname_r");
            var name = Encoding.UTF8.GetString(buf, new ReadOnlySpan<byte>(buf, 128).IndexOf((byte)0));
            var slave = Sys.Open(name, O.RDWR | O.NOCTTY);
            return (master, slave);
        }
        catch
        {
            master.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Drops to the given identity on the calling thread with raw syscalls (setgroups, setresgid, setresuid: glibc's
    /// wrappers would change every thread) and execs. Only for a process that execs right after: the other threads
    /// keep root until execve replaces the whole process. Returns only on failure, with the errno and the step.
    /// </summary>
    public static (int Errno, string Step) ExecAs(uint uid, uint gid, IReadOnlyList<uint> groups, string path, IReadOnlyList<string> argv, IReadOnlyList<string> env)
    {
        var g = new uint[Math.Max(1, groups.Count)];
        for (var i = 0; i < groups.Count; i++) g[i] = groups[i];
        fixed (uint* gp = g)
            if (Libc.syscall(SYS.setgroups, groups.Count, (long)gp, 0, 0, 0, 0) < 0) return (Marshal.GetLastPInvokeError(), "setgroups");
        if (Libc.syscall(SYS.setresgid, gid, gid, gid, 0, 0, 0) < 0) return (Marshal.GetLastPInvokeError(), "setresgid");
        if (Libc.syscall(SYS.setresuid, uid, uid, uid, 0, 0, 0) < 0) return (Marshal.GetLastPInvokeError(), "setresuid");
        // The runtime ignores SIGPIPE and execve keeps ignored signals: give the command default dispositions
        // and an empty signal mask, as a freshly spawned process has.
        var dfl = stackalloc long[4];
        dfl[0] = dfl[1] = dfl[2] = dfl[3] = 0;
        for (var sig = 1; sig <= 64; sig++)
            if (sig is not (Signals.SIGKILL or Signals.SIGSTOP)) Libc.syscall(SYS_rt_sigaction, sig, (long)dfl, 0, 8, 0, 0);
        ulong none = 0;
        Libc.syscall(SYS_rt_sigprocmask, 2 /* SIG_SETMASK */, (long)&none, 0, 8, 0, 0);
        var mem = new List<nint>();
        try
        {
            byte* P(string s) { var p = Marshal.StringToCoTaskMemUTF8(s); mem.Add(p); return (byte*)p; }
            byte** Arr(IReadOnlyList<string> items)
            {
                var a = (byte**)Marshal.AllocCoTaskMem((items.Count + 1) * sizeof(nint));
                mem.Add((nint)a);
                for (var i = 0; i < items.Count; i++) a[i] = P(items[i]);
                a[items.Count] = null;
                return a;
            }
            Libc.execve(P(path), Arr(argv), Arr(env));
            return (Marshal.GetLastPInvokeError(), "execve " + path);
        }
        finally
        {
            foreach (var p in mem) Marshal.FreeCoTaskMem(p);
        }
    }
}
