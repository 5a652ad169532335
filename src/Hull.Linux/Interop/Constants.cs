namespace Hull.Linux;

/// <summary>open(2) and fcntl(2) flags (x86_64).</summary>
public static class O
{
    public const int RDONLY = 0, WRONLY = 1, RDWR = 2, CREAT = 0x40, EXCL = 0x80, NOCTTY = 0x100, TRUNC = 0x200,
        APPEND = 0x400, NONBLOCK = 0x800, DIRECTORY = 0x10000, NOFOLLOW = 0x20000, CLOEXEC = 0x80000, PATH = 0x200000;
    public const int AT_FDCWD = -100;
    public const int F_GETFD = 1, F_SETFD = 2, F_GETFL = 3, F_SETFL = 4, FD_CLOEXEC = 1, F_DUPFD_CLOEXEC = 1030;
}

/// <summary>mount(2) flags.</summary>
public static class MS
{
    public const ulong RDONLY = 1, NOSUID = 2, NODEV = 4, NOEXEC = 8, SYNCHRONOUS = 16, REMOUNT = 32, MANDLOCK = 64,
        DIRSYNC = 128, NOSYMFOLLOW = 256, NOATIME = 1024, NODIRATIME = 2048, BIND = 4096, MOVE = 8192, REC = 16384,
        SILENT = 32768, POSIXACL = 1 << 16, UNBINDABLE = 1 << 17, PRIVATE = 1 << 18, SLAVE = 1 << 19, SHARED = 1 << 20,
        RELATIME = 1 << 21, STRICTATIME = 1 << 24, LAZYTIME = 1 << 25;
    public const int MNT_FORCE = 1, MNT_DETACH = 2, MNT_EXPIRE = 4, UMOUNT_NOFOLLOW = 8;
}

/// <summary>clone(2) namespace flags.</summary>
public static class CLONE
{
    public const ulong NEWTIME = 0x80, NEWNS = 0x20000, NEWCGROUP = 0x02000000, NEWUTS = 0x04000000,
        NEWIPC = 0x08000000, NEWUSER = 0x10000000, NEWPID = 0x20000000, NEWNET = 0x40000000;
    /// <summary>For unshare(2): a filesystem context (root, cwd, umask) of the calling thread's own.</summary>
    public const ulong FS = 0x200;
}

/// <summary>Syscall numbers (x86_64) for calls that glibc 2.36 does not wrap.</summary>
public static class SYS
{
    public const long setresuid = 117, setresgid = 119, setgroups = 116, capget = 125, capset = 126,
        pivot_root = 155, prctl = 157, seccomp = 317, pidfd_send_signal = 424, pidfd_open = 434, open_tree = 428,
        move_mount = 429, fsopen = 430, fsconfig = 431, fsmount = 432, mount_setattr = 442, openat2 = 437;
    // files and file systems
    public const long fsync = 74, rename = 82, fchmod = 91, fstatfs = 138, sync = 162, getdents64 = 217, statx = 332,
        fchmodat2 = 452, sendfile = 40, memfd_create = 319;
    // processes and signals
    public const long rt_sigaction = 13, rt_sigprocmask = 14, reboot = 169, waitid = 247, execveat = 322;
    // sockets
    public const long bind = 49, listen = 50, accept4 = 288;
    // bpf(2)
    public const long bpf = 321;
}

/// <summary>prctl(2) options.</summary>
public static class PR
{
    public const int SET_PDEATHSIG = 1, SET_DUMPABLE = 4, SET_KEEPCAPS = 8, SET_NAME = 15, CAPBSET_READ = 23,
        CAPBSET_DROP = 24,
        SET_SECUREBITS = 28, SET_NO_NEW_PRIVS = 38, SET_CHILD_SUBREAPER = 36, CAP_AMBIENT = 47,
        CAP_AMBIENT_RAISE = 2, CAP_AMBIENT_CLEAR_ALL = 4;
}

public static class Signals
{
    public const int SIGHUP = 1, SIGINT = 2, SIGQUIT = 3, SIGKILL = 9, SIGUSR1 = 10, SIGUSR2 = 12, SIGTERM = 15,
        SIGCHLD = 17, SIGCONT = 18, SIGSTOP = 19, SIGWINCH = 28, SIGRTMIN = 34;

    static readonly string[] Names =
    {
        "", "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM",
        "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF",
        "WINCH", "IO", "PWR", "SYS",
    };

    /// <summary>Parses "9", "KILL", "SIGKILL", "sigkill", "RTMIN+3". Returns false for anything else.</summary>
    public static bool TryParse(string text, out int signal)
    {
        signal = 0;
        var t = text.Trim();
        if (int.TryParse(t, out var n)) { signal = n; return n is > 0 and <= 64; }
        t = t.ToUpperInvariant();
        if (t.StartsWith("SIG", StringComparison.Ordinal)) t = t[3..];
        if (t == "IOT") t = "ABRT";
        if (t == "CLD") t = "CHLD";
        if (t == "POLL") t = "IO";
        for (var i = 1; i < Names.Length; i++)
            if (Names[i] == t) { signal = i; return true; }
        if (t.StartsWith("RTMIN", StringComparison.Ordinal))
        {
            var rest = t[5..];
            var off = rest.Length == 0 ? 0 : rest[0] == '+' && int.TryParse(rest[1..], out var k) ? k : -1;
            if (off is >= 0 and <= 30) { signal = 34 + off; return true; }
        }
        if (t.StartsWith("RTMAX", StringComparison.Ordinal))
        {
            var rest = t[5..];
            var off = rest.Length == 0 ? 0 : rest[0] == '-' && int.TryParse(rest[1..], out var k) ? k : -1;
            if (off is >= 0 and <= 30) { signal = 64 - off; return true; }
        }
        return false;
    }

    public static string Name(int signal) => signal > 0
        && signal < Names.Length ? "SIG" + Names[signal] : signal.ToString();
}
