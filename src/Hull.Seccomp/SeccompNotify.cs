using System.Runtime.InteropServices;
using Hull.Linux;

namespace Hull.Seccomp;

/// <summary>One intercepted syscall read from a notify fd (struct seccomp_notif).</summary>
public readonly record struct SeccompNotification(ulong Id, int Pid, uint Nr, uint Arch, ulong InstructionPointer,
    ulong[] Args);

/// <summary>The agent side of SCMP_ACT_NOTIFY: receive a notification, answer it (linux/seccomp.h ioctls).</summary>
public static unsafe class SeccompNotify
{
    const ulong NOTIF_RECV = 0xC0502100;     // _IOWR('!', 0, struct seccomp_notif)      (80 bytes)
    const ulong NOTIF_SEND = 0xC0182101;     // _IOWR('!', 1, struct seccomp_notif_resp) (24 bytes)
    const ulong NOTIF_ID_VALID = 0x40082102; // _IOW('!', 2, __u64)
    /// <summary>SECCOMP_USER_NOTIF_FLAG_CONTINUE: let the kernel run the syscall.</summary>
    public const uint FlagContinue = 1;

    /// <summary>Blocks until a task hits a SCMP_ACT_NOTIFY rule. Retries on EINTR.</summary>
    public static SeccompNotification Receive(SafeFd notifyFd)
    {
        byte* buf = stackalloc byte[80];
        while (true)
        {
            new Span<byte>(buf, 80).Clear();
            if (Libc.ioctl(notifyFd.Fd, NOTIF_RECV, (nint)buf) == 0) break;
            var e = Marshal.GetLastPInvokeError();
            if (e != Errors.EINTR) throw new LinuxException(e, "ioctl SECCOMP_IOCTL_NOTIF_RECV");
        }
        var args = new ulong[6];
        for (var i = 0; i < 6; i++) args[i] = *(ulong*)(buf + 16 + 16 + 8 * i);
        return new SeccompNotification(*(ulong*)buf, *(int*)(buf + 8), *(uint*)(buf + 16), *(uint*)(buf + 20),
            *(ulong*)(buf + 24), args);
    }

    /// <summary>Answers notification <paramref name="id"/>: the syscall returns <paramref name="value"/>, or fails
    /// with <paramref name="errno"/> when it is not 0, or runs for real with <see cref="FlagContinue"/>.</summary>
    public static void Respond(SafeFd notifyFd, ulong id, long value, int errno, uint flags = 0)
    {
        byte* buf = stackalloc byte[24];
        *(ulong*)buf = id;
        *(long*)(buf + 8) = value;
        *(int*)(buf + 16) = errno == 0 ? 0 : -Math.Abs(errno);
        *(uint*)(buf + 20) = flags;
        if (Libc.ioctl(notifyFd.Fd, NOTIF_SEND, (nint)buf) != 0)
            throw LinuxException.FromLastError("ioctl SECCOMP_IOCTL_NOTIF_SEND");
    }

    /// <summary>True while the task behind <paramref name="id"/> still waits (guards against pid reuse before acting on
    /// its memory).</summary>
    public static bool IsValid(SafeFd notifyFd, ulong id) => Libc.ioctl(notifyFd.Fd, NOTIF_ID_VALID, (nint)(&id)) == 0;
}
