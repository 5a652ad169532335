using Hull.Oci;

namespace Hull.Seccomp;

/// <summary>
/// Hull's default seccomp profile for containers created without an OCI bundle. An allowlist: a call that no rule
/// names fails with ENOSYS (so that a program or glibc falls back from syscalls newer than this list, clone3 included),
/// the known-dangerous calls fail with EPERM, and the calls a capability guards are allowed only when the container
/// gets that capability. At least as strict as the Docker/Podman defaults; see docs/seccomp.md.
/// </summary>
public static class SeccompProfiles
{
    const uint EPERM = 1, ENOSYS = 38;

    // CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
    // (CLONE_NEWTIME is 0x80, inside clone's exit-signal byte: only clone3 and unshare take it, and both are denied.)
    const ulong CloneNamespaceFlags = 0x7E020000;

    /// <summary>Always allowed: what ordinary programs (and glibc, musl, Go, the .NET runtime) use.</summary>
    static readonly string[] Allowed =
    [
        // files and directories
        "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range", "creat", "dup",
        "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fchdir", "fchmod",
        "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr",
        "flistxattr", "flock", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
        "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd", "getdents", "getdents64", "getxattr",
        "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "lchown", "lchown32", "lgetxattr",
        "link", "linkat", "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat",
        "lstat64", "mkdir", "mkdirat", "mknod", "mknodat", "name_to_handle_at", "newfstatat", "open", "openat",
        "openat2", "pread64", "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
        "readlinkat", "readv", "removexattr", "rename", "renameat", "renameat2", "rmdir", "sendfile", "sendfile64",
        "setxattr", "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
        "sync_file_range", "syncfs", "tee", "truncate", "truncate64", "umask", "unlink", "unlinkat", "utime",
        "utimensat", "utimensat_time64", "utimes", "vmsplice", "write", "writev",
        // polling, events, timers
        "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
        "epoll_wait_old", "eventfd", "eventfd2", "poll", "ppoll", "ppoll_time64", "pselect6", "pselect6_time64",
        "select", "_newselect", "signalfd", "signalfd4", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
        "timerfd_settime", "timerfd_settime64", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
        "timer_gettime64", "timer_settime", "timer_settime64", "alarm", "getitimer", "setitimer", "nanosleep",
        "clock_nanosleep", "clock_nanosleep_time64", "clock_getres", "clock_getres_time64", "clock_gettime",
        "clock_gettime64", "gettimeofday", "time", "times", "pause",
        // memory
        "brk", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mlock", "mlock2", "mlockall",
        "mmap", "mmap2", "mprotect", "mremap", "msync", "munlock", "munlockall", "munmap", "pkey_alloc", "pkey_free",
        "pkey_mprotect", "remap_file_pages",
        // processes, threads, signals
        "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "vfork", "futex",
        "futex_time64", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue", "getcpu", "getegid", "getegid32",
        "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getpgid", "getpgrp", "getpid",
        "getppid", "getpriority", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit",
        "get_robust_list", "getrusage", "getsid", "get_thread_area", "gettid", "getuid", "getuid32", "ioprio_get",
        "ioprio_set", "kill", "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64", "process_mrelease",
        "restart_syscall", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
        "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
        "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max", "sched_get_priority_min",
        "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity",
        "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "setfsgid", "setfsgid32",
        "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setpgid", "setpriority",
        "setregid", "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
        "setrlimit", "set_robust_list", "setsid", "set_thread_area", "set_tid_address", "setuid", "setuid32",
        "sigaltstack", "signal", "sigaction", "sigpending", "sigprocmask", "sigreturn", "sigsuspend", "tgkill",
        "tkill", "ugetrlimit", "uname", "wait4", "waitid", "waitpid", "landlock_add_rule", "landlock_create_ruleset",
        "landlock_restrict_self", "sysinfo", "nice", "adjtimex", "clock_adjtime", "clock_adjtime64",
        // IPC and sockets
        "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen",
        "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "sendmmsg", "sendmsg", "sendto", "setsockopt",
        "shutdown", "socket", "socketcall", "socketpair", "pipe", "pipe2", "ipc", "msgctl", "msgget", "msgrcv",
        "msgsnd", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "shmat", "shmctl", "shmdt",
        "shmget", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
        "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "ioctl",
        // asynchronous I/O (not io_uring)
        "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup", "io_submit",
    ];

    /// <summary>Allowed only with the capability (CAP_ name without prefix → syscalls).</summary>
    static readonly (string Cap, string[] Names)[] ByCapability =
    [
        ("SYS_ADMIN", ["bpf", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "mount",
            "mount_setattr", "move_mount", "open_tree", "perf_event_open", "pivot_root", "quotactl", "quotactl_fd",
            "setdomainname", "sethostname", "setns", "swapoff", "swapon", "syslog", "umount", "umount2", "unshare"]),
        ("SYS_BOOT", ["reboot"]),
        ("SYS_CHROOT", ["chroot"]),
        ("SYS_MODULE", ["delete_module", "finit_module", "init_module"]),
        ("SYS_PACCT", ["acct"]),
        ("SYS_PTRACE", ["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"]),
        ("SYS_RAWIO", ["ioperm", "iopl"]),
        ("SYS_TIME", ["clock_settime", "clock_settime64", "settimeofday", "stime"]),
        ("SYS_TTY_CONFIG", ["vhangup"]),
        ("SYS_NICE", ["get_mempolicy", "mbind", "migrate_pages", "move_pages", "set_mempolicy",
            "set_mempolicy_home_node"]),
        ("SYSLOG", ["syslog"]),
        ("BPF", ["bpf"]),
        ("PERFMON", ["perf_event_open"]),
        ("DAC_READ_SEARCH", ["open_by_handle_at"]),
    ];

    /// <summary>Denied with EPERM whatever the capabilities: the kernel does not namespace them, or they are obsolete
    /// attack surface. (Calls in <see cref="ByCapability"/> also get EPERM while their capability is
    /// missing.)</summary>
    static readonly string[] AlwaysDenied =
    [
        "add_key", "keyctl", "request_key", "kexec_file_load", "kexec_load", "io_uring_setup", "io_uring_enter",
        "io_uring_register", "userfaultfd", "modify_ldt", "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl",
        "create_module", "get_kernel_syms", "query_module", "lookup_dcookie", "bdflush",
        "idle", "afs_syscall", "break", "ftime", "getpmsg", "gtty", "lock",
        "mpx", "prof", "profil", "putpmsg", "security", "stty", "tuxcall", "ulimit", "vserver", "vm86", "vm86old",
    ];

    /// <summary>
    /// The default profile for a container that gets <paramref name="capabilities"/> ("CAP_SYS_ADMIN" or "SYS_ADMIN",
    /// any case; usually the bounding set). Covers x86_64, i386 and x32 programs.
    /// </summary>
    public static Hull.Oci.Seccomp DefaultProfile(IReadOnlyCollection<string> capabilities)
    {
        ArgumentNullException.ThrowIfNull(capabilities);
        var caps = new HashSet<string>(StringComparer.Ordinal);
        foreach (var c in capabilities)
        {
            var n = c.Trim().ToUpperInvariant();
            caps.Add(n.StartsWith("CAP_", StringComparison.Ordinal) ? n[4..] : n);
        }

        var allow = new SortedSet<string>(Allowed, StringComparer.Ordinal);
        foreach (var (cap, names) in ByCapability)
            if (caps.Contains(cap)) allow.UnionWith(names);
        var sysAdmin = caps.Contains("SYS_ADMIN");

        var deny = new SortedSet<string>(AlwaysDenied, StringComparer.Ordinal);
        foreach (var (_, names) in ByCapability) deny.UnionWith(names);
        deny.ExceptWith(allow);

        var rules = new List<SeccompSyscall>
        {
            new() { Names = [.. allow], Action = "SCMP_ACT_ALLOW" },
            new() { Names = [.. deny], Action = "SCMP_ACT_ERRNO", ErrnoRet = EPERM },
        };

        // personality: only the Linux personality, with and without UNAME26 / as PER_LINUX32, and the query.
        // Every other persona is EPERM: one rule whose comparisons (all on arg 0) must all hold.
        ulong[] personas = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff];
        foreach (var p in personas)
            rules.Add(new SeccompSyscall { Names = ["personality"], Action = "SCMP_ACT_ALLOW",
                Args = [Arg(0, "SCMP_CMP_EQ", p)] });
        rules.Add(new SeccompSyscall
        {
            Names = ["personality"], Action = "SCMP_ACT_ERRNO", ErrnoRet = EPERM,
            Args = [.. personas.Select(p => Arg(0, "SCMP_CMP_NE", p))],
        });

        if (sysAdmin)
            rules.Add(new SeccompSyscall { Names = ["clone"], Action = "SCMP_ACT_ALLOW" });
        else
        {
            // clone without namespace flags is a fork or a thread; with any of them EPERM.
            rules.Add(new SeccompSyscall { Names = ["clone"], Action = "SCMP_ACT_ALLOW",
                Args = [Arg(0, "SCMP_CMP_MASKED_EQ", CloneNamespaceFlags, 0)] });
            for (var bit = 0; bit < 64; bit++)
            {
                var flag = 1UL << bit;
                if ((CloneNamespaceFlags & flag) != 0)
                    rules.Add(new SeccompSyscall { Names = ["clone"], Action = "SCMP_ACT_ERRNO", ErrnoRet = EPERM,
                        Args = [Arg(0, "SCMP_CMP_MASKED_EQ", flag, flag)] });
            }
        }

        // clone3 passes its flags in memory that seccomp cannot read: ENOSYS makes glibc fall back to clone.
        rules.Add(new SeccompSyscall { Names = ["clone3"], Action = "SCMP_ACT_ERRNO", ErrnoRet = ENOSYS });

        return new Hull.Oci.Seccomp
        {
            DefaultAction = "SCMP_ACT_ERRNO",
            DefaultErrnoRet = ENOSYS,
            Architectures = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            Syscalls = rules,
        };
    }

    static SeccompArg Arg(uint index, string op, ulong value, ulong valueTwo = 0) =>
        new() { Index = index, Op = op, Value = value, ValueTwo = valueTwo };
}
