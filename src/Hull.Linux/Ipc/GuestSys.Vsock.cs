using System.Runtime.InteropServices;

namespace Hull.Linux;

/// <summary>System calls the guest agent needs (see also the other GuestSys.*.cs files).</summary>
public static unsafe partial class GuestSys
{
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
            Sys.Check(Libc.syscall(SYS.bind, fd, (long)sa, 16, 0, 0, 0), $"bind vsock port {port}");
            Sys.Check(Libc.syscall(SYS.listen, fd, 4, 0, 0, 0, 0), $"listen vsock port {port}");
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
            var r = Libc.syscall(SYS.accept4, listener.Fd, 0, 0, O.CLOEXEC, 0, 0);
            if (r >= 0) return new SafeFd((int)r);
            var e = Marshal.GetLastPInvokeError();
            if (e != Errors.EINTR) throw new LinuxException(e, "accept");
        }
    }
}
