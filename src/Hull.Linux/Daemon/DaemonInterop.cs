using System.Runtime.InteropServices;

namespace Hull.Linux;

/// <summary>The few calls hulld needs beyond <see cref="Libc"/>: an exclusive lock on its state dir.</summary>
public static partial class DaemonInterop
{
    public const int LOCK_EX = 2, LOCK_NB = 4, LOCK_UN = 8;
    public const int EWOULDBLOCK = 11;

    [LibraryImport("libc", SetLastError = true)]
    public static partial int flock(int fd, int operation);

    /// <summary>Takes an exclusive, non-blocking flock on an open file; false if another process holds it.</summary>
    public static bool TryLockExclusive(SafeFd fd)
    {
        while (true)
        {
            if (flock(fd.Fd, LOCK_EX | LOCK_NB) == 0) return true;
            var e = Marshal.GetLastPInvokeError();
            if (e == EWOULDBLOCK) return false;
            if (e != Errors.EINTR) throw new LinuxException(e, "flock");
        }
    }
}
