using System.Text;

namespace Hull.Linux;

/// <summary>System calls the guest agent needs (see also the other GuestSys.*.cs files).</summary>
public static unsafe partial class GuestSys
{
    public const ulong TIOCSWINSZ = 0x5414;

    /// <summary>TIOCSWINSZ on a terminal fd (the master of a pty).</summary>
    public static void SetWindowSize(SafeFd fd, ushort rows, ushort cols)
    {
        var ws = stackalloc ushort[4];
        ws[0] = rows; ws[1] = cols; ws[2] = 0; ws[3] = 0;
        Sys.Check(Libc.ioctl(fd.Fd, TIOCSWINSZ, (nint)ws), "ioctl TIOCSWINSZ");
    }

    /// <summary>Opens a new pseudo-terminal pair: (master, slave), both close-on-exec, the slave not our controlling
    /// tty.</summary>
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
}
