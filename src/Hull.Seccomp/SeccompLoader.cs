using System.Runtime.InteropServices;
using Hull.Linux;

namespace Hull.Seccomp;

/// <summary>
/// Installs a compiled filter on the calling thread (all threads with <see cref="SeccompFilterFlags.Tsync"/>).
/// The engine calls it on the thread that then calls execve, as the last step before exec and after
/// prctl(PR_SET_NO_NEW_PRIVS) when the process asks for no_new_privs. Without no_new_privs the kernel requires
/// CAP_SYS_ADMIN in the caller's user namespace and answers EACCES otherwise.
/// </summary>
public static unsafe class SeccompLoader
{
    const int SECCOMP_SET_MODE_FILTER = 1;

    [StructLayout(LayoutKind.Sequential)]
    struct SockFprog
    {
        public ushort Len;
        public SockFilter* Filter;
    }

    /// <summary>
    /// Loads <paramref name="p"/>. Returns the user-notification fd (close-on-exec) when the program has
    /// SCMP_ACT_NOTIFY
    /// rules, else null. Throws <see cref="LinuxException"/> with the reason when the kernel refuses.
    /// </summary>
    public static SafeFd? Load(SeccompProgram p)
    {
        ArgumentNullException.ThrowIfNull(p);
        var n = p.Instructions.Length;
        if (n is 0 or > Bpf.MaxInstructions)
            throw new SeccompException($"a seccomp program has 1 to {Bpf.MaxInstructions} instructions, this one {n}");
        long r;
        int errno;
        fixed (SockFilter* f = p.Instructions)
        {
            var prog = new SockFprog { Len = (ushort)n, Filter = f };
            r = Libc.syscall(SYS.seccomp, SECCOMP_SET_MODE_FILTER, (long)(uint)p.Flags, (long)&prog, 0, 0, 0);
            errno = Marshal.GetLastPInvokeError();
        }
        if (r < 0) throw new LinuxException(errno, Explain(errno, p.Flags));
        if ((p.Flags & SeccompFilterFlags.Tsync) != 0 && (p.Flags & SeccompFilterFlags.NewListener) == 0 && r > 0)
            throw new LinuxException(Errors.ESRCH,
                $"seccomp SECCOMP_SET_MODE_FILTER with TSYNC: thread {r} could not be synchronized (it already has a " +
                "filter that is not an ancestor of this thread's)");
        return p.NeedsListener ? new SafeFd((int)r) : null;
    }

    static string Explain(int errno, SeccompFilterFlags flags)
    {
        const string op = "seccomp SECCOMP_SET_MODE_FILTER";
        return errno switch
        {
            Errors.EACCES => $"{op}: the thread has neither no_new_privs (prctl PR_SET_NO_NEW_PRIVS) nor " +
                "CAP_SYS_ADMIN; set noNewPrivileges or keep CAP_SYS_ADMIN until the filter is loaded",
            Errors.EINVAL => $"{op} (flags {flags}): this kernel refuses a flag or the program (seccomp needs Linux " +
                "3.17; LOG 4.14, SPEC_ALLOW 4.17, NEW_LISTENER 5.0, TSYNC_ESRCH 5.7, WAIT_KILLABLE_RECV 5.19)",
            Errors.EBUSY => $"{op}: the process already has a seccomp listener (NEW_LISTENER can be used once per " +
                "filter tree)",
            Errors.ESRCH => $"{op}: TSYNC failed, another thread already has an unrelated filter",
            Errors.ENOMEM => $"{op}: out of memory, or the filters of this thread together exceed the kernel's limit " +
                "of 32768 instructions",
            _ => op,
        };
    }
}
