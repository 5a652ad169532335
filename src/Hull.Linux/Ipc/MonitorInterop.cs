using System.Runtime.InteropServices;
using System.Text;

namespace Hull.Linux;

/// <summary>
/// What the container monitor needs beyond <see cref="Libc"/>: a listening unix seqpacket socket, messages that carry
/// file descriptors (SCM_RIGHTS), the peer's credentials, epoll, and waitid on a pidfd (the exit status of one child,
/// optionally without reaping it).
/// </summary>
public static unsafe partial class MonitorInterop
{
    const int AF_UNIX = 1, SOCK_SEQPACKET = 5, SOL_SOCKET = 1, SCM_RIGHTS = 1, SO_PEERCRED = 17;
    const int MSG_NOSIGNAL = 0x4000, MSG_CMSG_CLOEXEC = 0x40000000, MSG_TRUNC = 0x20, MSG_CTRUNC = 0x8;
    const int EPOLL_CTL_ADD = 1, EPOLL_CTL_DEL = 2;
    const int P_PIDFD = 3, WEXITED = 4, WNOHANG = 1, WNOWAIT = 0x01000000;
    const int CLD_EXITED = 1;
    /// <summary>The most descriptors one message carries.</summary>
    public const int MaxFds = 8;

    [LibraryImport("libc", SetLastError = true)] private static partial int bind(int fd, byte* addr, int len);
    [LibraryImport("libc", SetLastError = true)] private static partial int listen(int fd, int backlog);
    [LibraryImport("libc", SetLastError = true)] private static partial int accept4(int fd, void* addr, void* len,
        int flags);
    [LibraryImport("libc", SetLastError = true)] private static partial int shutdown(int fd, int how);
    [LibraryImport("libc", SetLastError = true)] private static partial int getsockopt(int fd, int level, int name,
        void* val, int* len);
    [LibraryImport("libc", SetLastError = true)] private static partial int epoll_create1(int flags);
    [LibraryImport("libc", SetLastError = true)] private static partial int epoll_ctl(int epfd, int op, int fd,
        EpollEvent* ev);
    [LibraryImport("libc", SetLastError = true)] private static partial int epoll_wait(int epfd, EpollEvent* events,
        int max, int timeout);

    [StructLayout(LayoutKind.Sequential, Pack = 4)]
    public struct EpollEvent { public uint Events; public ulong Data; }

    static int Address(string path, byte* addr)
    {
        var bytes = Encoding.UTF8.GetBytes(path);
        if (bytes.Length > 107) throw new LinuxException(Errors.EINVAL,
            $"socket path {path} is longer than 107 bytes: use a shorter state dir");
        addr[0] = AF_UNIX; addr[1] = 0;
        for (var i = 0; i < bytes.Length; i++) addr[2 + i] = bytes[i];
        addr[2 + bytes.Length] = 0;
        return 2 + bytes.Length + 1;
    }

    static SafeFd Socket()
    {
        var fd = Libc.socket(AF_UNIX, SOCK_SEQPACKET | O.CLOEXEC, 0);
        if (fd < 0) throw LinuxException.FromLastError("socket AF_UNIX SOCK_SEQPACKET");
        return new SafeFd(fd);
    }

    /// <summary>Binds and listens on a unix seqpacket socket at <paramref name="path"/> (which must not
    /// exist).</summary>
    public static SafeFd Listen(string path, int backlog = 512)
    {
        var s = Socket();
        try
        {
            var addr = stackalloc byte[110];
            var len = Address(path, addr);
            Sys.Check(bind(s.Fd, addr, len), $"bind {path}");
            Sys.Check(listen(s.Fd, backlog), $"listen {path}");
            return s;
        }
        catch { s.Dispose(); throw; }
    }

    public static SafeFd Connect(string path)
    {
        var s = Socket();
        var addr = stackalloc byte[110];
        var len = Address(path, addr);
        if (Libc.connect(s.Fd, addr, len) < 0)
        {
            var e = Marshal.GetLastPInvokeError();
            s.Dispose();
            throw new LinuxException(e, $"connect {path}");
        }
        return s;
    }

    /// <summary>Accepts a connection; null once the listener was shut down.</summary>
    public static SafeFd? Accept(SafeFd listener)
    {
        while (true)
        {
            var fd = accept4(listener.Fd, null, null, O.CLOEXEC);
            if (fd >= 0) return new SafeFd(fd);
            var e = Marshal.GetLastPInvokeError();
            if (e is Errors.EINTR or 103 /* ECONNABORTED */ or 24 /* EMFILE */ or 23 /* ENFILE */)
            {
                if (e is 24 or 23) Thread.Sleep(50);
                continue;
            }
            if (e is Errors.EINVAL or Errors.EBADF) return null;
            throw new LinuxException(e, "accept");
        }
    }

    /// <summary>Wakes a thread blocked in <see cref="Accept"/> or a receive on this socket.</summary>
    public static void Shutdown(SafeFd socket) => shutdown(socket.Fd, 2 /* SHUT_RDWR */);

    /// <summary>The uid and pid of the process at the other end of a unix socket.</summary>
    public static (int Pid, uint Uid) PeerCredentials(SafeFd socket)
    {
        var cred = stackalloc int[3];
        var len = 12;
        Sys.Check(getsockopt(socket.Fd, SOL_SOCKET, SO_PEERCRED, cred, &len), "getsockopt SO_PEERCRED");
        return (cred[0], (uint)cred[1]);
    }

    /// <summary>Sends one message with up to <see cref="MaxFds"/> descriptors attached.</summary>
    public static void Send(SafeFd socket, ReadOnlySpan<byte> data, IReadOnlyList<SafeFd>? fds = null)
    {
        var n = fds?.Count ?? 0;
        if (n > MaxFds) throw new ArgumentException($"at most {MaxFds} descriptors per message");
        var space = 16 + ((4 * n + 7) & ~7);
        var control = stackalloc byte[16 + 4 * MaxFds + 8];
        new Span<byte>(control, space).Clear();
        if (n > 0)
        {
            *(long*)control = 16 + 4 * n;     // cmsg_len = CMSG_LEN(4n)
            *(int*)(control + 8) = SOL_SOCKET;
            *(int*)(control + 12) = SCM_RIGHTS;
            for (var i = 0; i < n; i++) *(int*)(control + 16 + 4 * i) = fds![i].Fd;
        }
        fixed (byte* d = data)
        {
            var iov = new IoVec { Base = d, Len = data.Length };
            var msg = new MsgHdr { Iov = &iov, IovLen = 1, Control = n > 0 ? control : null,
                ControlLen = n > 0 ? space : 0 };
            while (true)
            {
                if (Libc.sendmsg(socket.Fd, &msg, MSG_NOSIGNAL) >= 0) break;
                var e = Marshal.GetLastPInvokeError();
                if (e != Errors.EINTR) throw new LinuxException(e, "sendmsg");
            }
        }
        GC.KeepAlive(fds);
    }

    /// <summary>Sends what the socket's buffer takes now, without waiting (MSG_DONTWAIT): the number of bytes sent
    /// (fewer than asked, even 0, when the buffer is full); -1 when the peer has gone.</summary>
    public static int SendNow(SafeFd socket, ReadOnlySpan<byte> data)
    {
        fixed (byte* d = data)
        {
            var iov = new IoVec { Base = d, Len = data.Length };
            var msg = new MsgHdr { Iov = &iov, IovLen = 1 };
            while (true)
            {
                var r = Libc.sendmsg(socket.Fd, &msg, MSG_NOSIGNAL | 0x40 /* MSG_DONTWAIT */);
                if (r >= 0) return (int)r;
                var e = Marshal.GetLastPInvokeError();
                if (e == Errors.EINTR) continue;
                return e == Errors.EAGAIN ? 0 : -1;
            }
        }
    }

    /// <summary>Receives one message into <paramref name="buffer"/>; attached descriptors are added to
    /// <paramref name="fds"/>
    /// (close-on-exec). Returns the message length, 0 at end of stream. A message larger than the buffer is an
    /// error.</summary>
    public static int Receive(SafeFd socket, byte[] buffer, List<SafeFd> fds)
    {
        var control = stackalloc byte[16 + 4 * MaxFds + 8];
        var cap = 16 + 4 * MaxFds + 8;
        fixed (byte* d = buffer)
        {
            var iov = new IoVec { Base = d, Len = buffer.Length };
            var msg = new MsgHdr { Iov = &iov, IovLen = 1, Control = control, ControlLen = cap };
            nint r;
            while (true)
            {
                r = Libc.recvmsg(socket.Fd, &msg, MSG_CMSG_CLOEXEC);
                if (r >= 0) break;
                var e = Marshal.GetLastPInvokeError();
                if (e == Errors.EINTR) continue;
                if (e == 104 /* ECONNRESET */) return 0;
                throw new LinuxException(e, "recvmsg");
            }
            // Take ownership of whatever arrived before checking anything else, so nothing leaks.
            if (msg.ControlLen >= 16 && *(int*)(control + 8) == SOL_SOCKET && *(int*)(control + 12) == SCM_RIGHTS)
            {
                var count = (int)((*(long*)control - 16) / 4);
                for (var i = 0; i < count; i++) fds.Add(new SafeFd(*(int*)(control + 16 + 4 * i)));
            }
            if ((msg.Flags & MSG_TRUNC) != 0) throw new LinuxException(Errors.EINVAL,
                $"recvmsg: a message longer than {buffer.Length} bytes");
            if ((msg.Flags & MSG_CTRUNC) != 0) throw new LinuxException(Errors.EINVAL,
                $"recvmsg: more than {MaxFds} descriptors in one message");
            return (int)r;
        }
    }

    public static SafeFd EpollCreate()
    {
        var fd = epoll_create1(O.CLOEXEC);
        if (fd < 0) throw LinuxException.FromLastError("epoll_create1");
        return new SafeFd(fd);
    }

    public static void EpollAdd(SafeFd epoll, SafeFd fd, ulong data)
    {
        var ev = new EpollEvent { Events = 1 /* EPOLLIN */, Data = data };
        Sys.Check(epoll_ctl(epoll.Fd, EPOLL_CTL_ADD, fd.Fd, &ev), "epoll_ctl ADD");
    }

    public static void EpollRemove(SafeFd epoll, SafeFd fd) => epoll_ctl(epoll.Fd, EPOLL_CTL_DEL, fd.Fd, null);

    /// <summary>Waits for events; fills <paramref name="data"/> with the data of the ready fds and returns how many (0
    /// on timeout).</summary>
    public static int EpollWait(SafeFd epoll, Span<ulong> data, int timeoutMs)
    {
        var max = Math.Min(data.Length, 256);
        var evs = stackalloc EpollEvent[256];
        while (true)
        {
            var n = epoll_wait(epoll.Fd, evs, max, timeoutMs);
            if (n >= 0)
            {
                for (var i = 0; i < n; i++) data[i] = evs[i].Data;
                return n;
            }
            var e = Marshal.GetLastPInvokeError();
            if (e != Errors.EINTR) throw new LinuxException(e, "epoll_wait");
        }
    }

    /// <summary>
    /// waitid(P_PIDFD, WEXITED|WNOHANG) on a child: returns its shell-style exit code (128+n for signal n) once it has
    /// ended, null while it runs. With <paramref name="reap"/> false the child stays a zombie (WNOWAIT).
    /// </summary>
    public static int? TryWaitPidfd(SafeFd pidfd, bool reap)
    {
        var info = stackalloc byte[128];
        while (true)
        {
            new Span<byte>(info, 128).Clear();
            var r = Libc.syscall(SYS.waitid, P_PIDFD, pidfd.Fd, (long)info, WEXITED | WNOHANG | (reap ? 0 : WNOWAIT), 0,
                0);
            if (r < 0)
            {
                var e = Marshal.GetLastPInvokeError();
                if (e == Errors.EINTR) continue;
                throw new LinuxException(e, "waitid P_PIDFD");
            }
            if (*(int*)(info + 16) == 0) return null; // si_pid: nothing has changed state yet
            var code = *(int*)(info + 8);
            var status = *(int*)(info + 24);
            return code == CLD_EXITED ? status & 0xff : 128 + status;
        }
    }
}

public static unsafe partial class MonitorInterop
{
    [LibraryImport("libc", SetLastError = true)] private static partial int fstat(int fd, byte* st);

    /// <summary>"dev:ino:size:mtime" of an open file: tells two builds of a binary apart even at the same
    /// path.</summary>
    public static string FileIdentity(SafeFd fd)
    {
        var st = stackalloc byte[144];
        Sys.Check(fstat(fd.Fd, st), "fstat");
        return $"{*(ulong*)st:x}:{*(ulong*)(st + 8)}:{*(long*)(st + 48)}:{*(long*)(st + 88)}.{*(long*)(st + 96)}";
    }
}
