using System.Runtime.InteropServices;
using System.Text;

namespace Hull.Linux;

/// <summary>An owned kernel file descriptor (file, pipe end, pidfd, namespace, cgroup directory...).</summary>
public sealed class SafeFd : SafeHandle
{
    public SafeFd() : base(-1, ownsHandle: true) { }
    public SafeFd(int fd, bool owns = true) : base(-1, owns) => SetHandle(fd);

    public override bool IsInvalid => handle == -1;
    public int Fd => (int)handle;

    protected override bool ReleaseHandle() => Libc.close((int)handle) == 0;

    /// <summary>Gives up ownership and returns the raw fd.</summary>
    public int Detach()
    {
        var fd = (int)handle;
        SetHandleAsInvalid();
        SetHandle(-1);
        return fd;
    }

    public override string ToString() => $"fd {Fd}";
}

/// <summary>Throwing wrappers over <see cref="Libc"/> for code that runs in Hull's own processes.</summary>
public static unsafe class Sys
{
    public static SafeFd Open(string path, int flags, uint mode = 0)
    {
        var fd = Libc.open(path, flags | O.CLOEXEC, mode);
        if (fd < 0) throw LinuxException.FromLastError($"open {path}");
        return new SafeFd(fd);
    }

    public static bool TryOpen(string path, int flags, out SafeFd fd, out int errno, uint mode = 0)
    {
        var r = Libc.open(path, flags | O.CLOEXEC, mode);
        errno = r < 0 ? Marshal.GetLastPInvokeError() : 0;
        fd = new SafeFd(r < 0 ? -1 : r);
        return r >= 0;
    }

    public static (SafeFd Read, SafeFd Write) Pipe(bool cloexec = true)
    {
        int* fds = stackalloc int[2];
        if (Libc.pipe2(fds, cloexec ? O.CLOEXEC : 0) < 0) throw LinuxException.FromLastError("pipe2");
        return (new SafeFd(fds[0]), new SafeFd(fds[1]));
    }

    /// <summary>A unix stream socketpair, close-on-exec.</summary>
    public static (SafeFd A, SafeFd B) SocketPair(int type = 1 /* SOCK_STREAM */)
    {
        int* fds = stackalloc int[2];
        if (Libc.socketpair(1 /* AF_UNIX */, type | O.CLOEXEC, 0, fds) < 0) throw LinuxException.FromLastError(
            "socketpair");
        return (new SafeFd(fds[0]), new SafeFd(fds[1]));
    }

    public static int Read(SafeFd fd, Span<byte> buf)
    {
        while (true)
        {
            nint r;
            fixed (byte* p = buf) r = Libc.read(fd.Fd, p, buf.Length);
            if (r >= 0) return (int)r;
            var e = Marshal.GetLastPInvokeError();
            if (e != Errors.EINTR) throw new LinuxException(e, "read");
        }
    }

    public static void WriteAll(SafeFd fd, ReadOnlySpan<byte> data, string what = "write")
    {
        while (!data.IsEmpty)
        {
            nint r;
            fixed (byte* p = data) r = Libc.write(fd.Fd, p, data.Length);
            if (r < 0)
            {
                var e = Marshal.GetLastPInvokeError();
                if (e == Errors.EINTR) continue;
                throw new LinuxException(e, what);
            }
            data = data[(int)r..];
        }
    }

    /// <summary>Writes a whole small file (procfs, sysfs, cgroupfs) in one write(2), as those files want.</summary>
    public static void WriteFile(string path, string content, int flags = O.WRONLY | O.TRUNC)
    {
        using var fd = Open(path, flags);
        WriteAll(fd, Encoding.UTF8.GetBytes(content), $"write {path}");
    }

    public static bool TryWriteFile(string path, string content, out int errno)
    {
        errno = 0;
        var fd = Libc.open(path, O.WRONLY | O.CLOEXEC, 0);
        if (fd < 0) { errno = Marshal.GetLastPInvokeError(); return false; }
        try
        {
            var bytes = Encoding.UTF8.GetBytes(content);
            fixed (byte* p = bytes)
                if (Libc.write(fd, p, bytes.Length) < 0) { errno = Marshal.GetLastPInvokeError(); return false; }
            return true;
        }
        finally { Libc.close(fd); }
    }

    public static void Check(int result, string operation)
    {
        if (result < 0) throw LinuxException.FromLastError(operation);
    }

    public static void Check(long result, string operation)
    {
        if (result < 0) throw LinuxException.FromLastError(operation);
    }

    public static void Mount(string? source, string target, string? fstype, ulong flags, string? data) =>
        Check(Libc.mount(source, target, fstype, flags, data),
            $"mount {source ?? "none"}{(fstype is null ? "" : $" (type {fstype})")} on {target}");

    public static void SetCloexec(SafeFd fd, bool on)
    {
        var f = Libc.fcntl(fd.Fd, O.F_GETFD, 0);
        Check(f, "fcntl F_GETFD");
        Check(Libc.fcntl(fd.Fd, O.F_SETFD, on ? f | O.FD_CLOEXEC : f & ~O.FD_CLOEXEC), "fcntl F_SETFD");
    }

    public static SafeFd PidfdOpen(int pid)
    {
        var r = Libc.syscall(SYS.pidfd_open, pid, 0, 0, 0, 0, 0);
        if (r < 0) throw LinuxException.FromLastError($"pidfd_open {pid}");
        return new SafeFd((int)r);
    }

    public static void PidfdSendSignal(SafeFd pidfd, int signal) =>
        Check(Libc.syscall(SYS.pidfd_send_signal, pidfd.Fd, signal, 0, 0, 0, 0),
            $"pidfd_send_signal {Signals.Name(signal)}");

    public static void PivotRoot(string newRoot, string putOld) =>
        Check(WithPaths(newRoot, putOld, (a, b) => Libc.syscall(SYS.pivot_root, (long)a, (long)b, 0, 0, 0, 0)),
            $"pivot_root {newRoot}");

    /// <summary>close_range(first, ~0U, CLOSE_RANGE_CLOEXEC): every fd from <paramref name="first"/> on becomes
    /// close-on-exec.</summary>
    public static void CloseRangeOnExec(int first) =>
        Check(Libc.syscall(436 /* close_range */, first, uint.MaxValue, 4 /* CLOSE_RANGE_CLOEXEC */, 0, 0, 0),
            $"close_range {first}");

    public static void Prctl(int option, ulong a2 = 0, ulong a3 = 0, ulong a4 = 0, ulong a5 = 0) =>
        Check(Libc.prctl(option, (nuint)a2, (nuint)a3, (nuint)a4, (nuint)a5), $"prctl {option}");

    static long WithPaths(string a, string b, Func<nint, nint, long> f)
    {
        var pa = Marshal.StringToCoTaskMemUTF8(a);
        var pb = Marshal.StringToCoTaskMemUTF8(b);
        try { return f(pa, pb); }
        finally { Marshal.FreeCoTaskMem(pa); Marshal.FreeCoTaskMem(pb); }
    }

    /// <summary>Waits for a child by pid; returns the raw wait status. Retries on EINTR.</summary>
    public static int WaitPid(int pid, int options = 0)
    {
        int status;
        while (true)
        {
            var r = Libc.waitpid(pid, &status, options);
            if (r >= 0) return r == 0 ? -1 : status;
            var e = Marshal.GetLastPInvokeError();
            if (e != Errors.EINTR) throw new LinuxException(e, $"waitpid {pid}");
        }
    }

    /// <summary>Waits up to <paramref name="timeoutMs"/> (-1: forever) for a pidfd to become readable, i.e. the process
    /// to exit.</summary>
    public static bool WaitPidfd(SafeFd pidfd, int timeoutMs)
    {
        var deadline = timeoutMs < 0 ? long.MaxValue : Environment.TickCount64 + timeoutMs;
        while (true)
        {
            var left = timeoutMs < 0 ? -1 : (int)Math.Max(0, deadline - Environment.TickCount64);
            var p = new PollFd { Fd = pidfd.Fd, Events = 1 /* POLLIN */ };
            var r = Libc.poll(&p, 1, left);
            if (r > 0) return true;
            if (r == 0) return false;
            var e = Marshal.GetLastPInvokeError();
            if (e != Errors.EINTR) throw new LinuxException(e, "poll pidfd");
        }
    }

    /// <summary>Converts a wait status into a shell-style exit code (128+signal for a killed process).</summary>
    public static int ExitCode(int status) => (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f);

    public static bool ProcessExists(int pid) => pid > 0
        && (Libc.kill(pid, 0) == 0 || Marshal.GetLastPInvokeError() == Errors.EPERM);
}
