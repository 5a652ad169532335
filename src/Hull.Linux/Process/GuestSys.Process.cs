using System.Runtime.InteropServices;

namespace Hull.Linux;

/// <summary>System calls the guest agent needs (see also the other GuestSys.*.cs files).</summary>
public static unsafe partial class GuestSys
{
    /// <summary>
    /// Blocks until the process behind a pidfd has exited (waitid P_PIDFD, WEXITED). Returns false when someone else
    /// reaped it first (ECHILD): it is gone either way.
    /// </summary>
    public static bool WaitPidfd(SafeFd pidfd)
    {
        var siginfo = stackalloc byte[128];
        while (true)
        {
            if (Libc.syscall(SYS.waitid, 3 /* P_PIDFD */, pidfd.Fd, (long)siginfo, 4 /* WEXITED */, 0,
                0) == 0) return true;
            var e = Marshal.GetLastPInvokeError();
            if (e == Errors.EINTR) continue;
            if (e == Errors.ECHILD) return false;
            throw new LinuxException(e, "waitid");
        }
    }

    /// <summary>
    /// Drops to the given identity on the calling thread with raw syscalls (setgroups, setresgid, setresuid: glibc's
    /// wrappers would change every thread) and execs. Only for a process that execs right after: the other threads
    /// keep root until execve replaces the whole process. Returns only on failure, with the errno and the step.
    /// </summary>
    public static (int Errno, string Step) ExecAs(uint uid, uint gid, IReadOnlyList<uint> groups, string path,
        IReadOnlyList<string> argv, IReadOnlyList<string> env)
    {
        var g = new uint[Math.Max(1, groups.Count)];
        for (var i = 0; i < groups.Count; i++) g[i] = groups[i];
        fixed (uint* gp = g)
            if (Libc.syscall(SYS.setgroups, groups.Count, (long)gp, 0, 0, 0, 0) < 0) return (
                Marshal.GetLastPInvokeError(), "setgroups");
        if (Libc.syscall(SYS.setresgid, gid, gid, gid, 0, 0, 0) < 0) return (Marshal.GetLastPInvokeError(),
            "setresgid");
        if (Libc.syscall(SYS.setresuid, uid, uid, uid, 0, 0, 0) < 0) return (Marshal.GetLastPInvokeError(),
            "setresuid");
        // The runtime ignores SIGPIPE and execve keeps ignored signals: give the command default dispositions
        // and an empty signal mask, as a freshly spawned process has.
        var dfl = stackalloc long[4];
        dfl[0] = dfl[1] = dfl[2] = dfl[3] = 0;
        for (var sig = 1; sig <= 64; sig++)
            if (sig is not (Signals.SIGKILL or Signals.SIGSTOP)) Libc.syscall(SYS.rt_sigaction, sig, (long)dfl, 0, 8, 0,
                0);
        ulong none = 0;
        Libc.syscall(SYS.rt_sigprocmask, 2 /* SIG_SETMASK */, (long)&none, 0, 8, 0, 0);
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
