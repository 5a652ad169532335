using System.Runtime.InteropServices;
using System.Text;

namespace Hull.Linux;

/// <summary>Unix socket helpers: connect by path, pass an fd with SCM_RIGHTS (as runc's --console-socket protocol
/// does).</summary>
public static unsafe class UnixSockets
{
    const int AF_UNIX = 1, SOCK_STREAM = 1, SOL_SOCKET = 1, SCM_RIGHTS = 1;

    public static SafeFd Connect(string path)
    {
        var fd = Libc.socket(AF_UNIX, SOCK_STREAM | O.CLOEXEC, 0);
        if (fd < 0) throw LinuxException.FromLastError("socket");
        var sock = new SafeFd(fd);
        var bytes = Encoding.UTF8.GetBytes(path);
        if (bytes.Length > 107) { sock.Dispose(); throw new ArgumentException(
            $"socket path {path} is longer than 107 bytes"); }
        var addr = stackalloc byte[110];
        addr[0] = AF_UNIX; addr[1] = 0;
        for (var i = 0; i < bytes.Length; i++) addr[2 + i] = bytes[i];
        addr[2 + bytes.Length] = 0;
        if (Libc.connect(fd, addr, 2 + bytes.Length + 1) < 0)
        {
            var e = Marshal.GetLastPInvokeError();
            sock.Dispose();
            throw new LinuxException(e, $"connect {path}");
        }
        return sock;
    }

    /// <summary>Sends <paramref name="fd"/> with <paramref name="name"/> as the data bytes.</summary>
    public static void SendFd(SafeFd socket, string name, SafeFd fd)
    {
        var data = Encoding.UTF8.GetBytes(name.Length == 0 ? "\0" : name);
        var control = stackalloc byte[24]; // CMSG_SPACE(sizeof(int)) = 24 on x86_64
        new Span<byte>(control, 24).Clear();
        *(long*)control = 20;                // cmsg_len = CMSG_LEN(4)
        *(int*)(control + 8) = SOL_SOCKET;   // cmsg_level
        *(int*)(control + 12) = SCM_RIGHTS;  // cmsg_type
        *(int*)(control + 16) = fd.Fd;
        fixed (byte* d = data)
        {
            var iov = new IoVec { Base = d, Len = data.Length };
            var msg = new MsgHdr { Iov = &iov, IovLen = 1, Control = control, ControlLen = 24 };
            if (Libc.sendmsg(socket.Fd, &msg, 0x4000 /* MSG_NOSIGNAL */) < 0) throw LinuxException.FromLastError(
                "sendmsg SCM_RIGHTS");
        }
    }

    /// <summary>Receives one fd sent with <see cref="SendFd"/>; returns it and the name.</summary>
    public static (SafeFd Fd, string Name) ReceiveFd(SafeFd socket)
    {
        var (fd, name) = ReceiveMessage(socket);
        return (fd ?? throw new LinuxException(Errors.EINVAL, "recvmsg: no file descriptor received"), name);
    }

    /// <summary>Receives one message of up to 4 KiB and the fd it carries, if any (null fd and "" at EOF).</summary>
    public static (SafeFd? Fd, string Text) ReceiveMessage(SafeFd socket)
    {
        var data = stackalloc byte[4096];
        var control = stackalloc byte[24];
        var iov = new IoVec { Base = data, Len = 4096 };
        var msg = new MsgHdr { Iov = &iov, IovLen = 1, Control = control, ControlLen = 24 };
        var n = Libc.recvmsg(socket.Fd, &msg, 0x40000000 /* MSG_CMSG_CLOEXEC */);
        if (n < 0) throw LinuxException.FromLastError("recvmsg SCM_RIGHTS");
        var fd = msg.ControlLen >= 20 && *(int*)(control + 12) == SCM_RIGHTS ? new SafeFd(*(int*)(control + 16)) : null;
        return (fd, Encoding.UTF8.GetString(data, (int)n).TrimEnd('\0'));
    }
}
