using System.Runtime.InteropServices;

namespace Hull.Linux;

/// <summary>
/// Raw libc and system-call entry points, named and typed as in the man pages.
/// Every call sets the last P/Invoke error; callers read it through <see cref="LinuxException.FromLastError"/>.
/// Higher layers use <see cref="Sys"/> (throwing wrappers) or <see cref="ISyscalls"/> (the testable seam).
/// </summary>
public static unsafe partial class Libc
{
    const string L = "libc";

    // ---- files ----
    [LibraryImport(L, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int open(string path, int flags, uint mode);
    [LibraryImport(L, EntryPoint = "openat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int openat(int dirfd, string path, int flags, uint mode);
    [LibraryImport(L, SetLastError = true)]
    public static partial int close(int fd);
    [LibraryImport(L, SetLastError = true)]
    public static partial nint read(int fd, byte* buf, nint count);
    [LibraryImport(L, SetLastError = true)]
    public static partial nint write(int fd, byte* buf, nint count);
    [LibraryImport(L, SetLastError = true)]
    public static partial int pipe2(int* fds, int flags);
    [LibraryImport(L, SetLastError = true)]
    public static partial int dup3(int oldfd, int newfd, int flags);
    [LibraryImport(L, SetLastError = true)]
    public static partial int fcntl(int fd, int cmd, long arg);
    [LibraryImport(L, SetLastError = true)]
    public static partial int ioctl(int fd, ulong request, nint arg);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int mkdir(string path, uint mode);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int mkdirat(int dirfd, string path, uint mode);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int mknod(string path, uint mode, ulong dev);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int symlink(string target, string linkpath);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int chmod(string path, uint mode);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int chown(string path, uint uid, uint gid);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int lchown(string path, uint uid, uint gid);
    [LibraryImport(L, SetLastError = true)]
    public static partial int fchown(int fd, uint uid, uint gid);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int unlink(string path);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rmdir(string path);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int mkfifo(string path, uint mode);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int access(string path, int mode);
    [LibraryImport(L, SetLastError = true)]
    public static partial uint umask(uint mask);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial nint lgetxattr(string path, string name, byte* value, nuint size);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int lsetxattr(string path, string name, byte* value, nuint size, int flags);

    // ---- mounts ----
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int mount(string? source, string target, string? fstype, ulong flags, string? data);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int umount2(string target, int flags);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int chdir(string path);
    [LibraryImport(L, SetLastError = true)]
    public static partial int fchdir(int fd);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int chroot(string path);

    // ---- processes, namespaces, credentials ----
    [LibraryImport(L, SetLastError = true)]
    public static partial int getpid();
    [LibraryImport(L, SetLastError = true)]
    public static partial int setns(int fd, int nstype);
    [LibraryImport(L, SetLastError = true)]
    public static partial int unshare(int flags);
    [LibraryImport(L, SetLastError = true)]
    public static partial int kill(int pid, int sig);
    [LibraryImport(L, SetLastError = true)]
    public static partial int waitpid(int pid, int* status, int options);
    [LibraryImport(L, SetLastError = true)]
    public static partial int setsid();
    [LibraryImport(L, SetLastError = true)]
    public static partial int prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);
    [LibraryImport(L, SetLastError = true)]
    public static partial int setpriority(int which, uint who, int prio);
    [LibraryImport(L, SetLastError = true)]
    public static partial int prlimit(int pid, int resource, ulong* newLimit, ulong* oldLimit);
    [LibraryImport(L, SetLastError = true)]
    public static partial int personality(nuint persona);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int sethostname(string name, nint len);
    [LibraryImport(L, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int setdomainname(string name, nint len);
    [LibraryImport(L, SetLastError = true)]
    public static partial int execve(byte* path, byte** argv, byte** envp);
    [LibraryImport(L, SetLastError = true)]
    public static partial uint geteuid();

    /// <summary>syscall(2): for calls glibc 2.36 does not wrap (pivot_root, pidfd_*, capset, seccomp, setres*id on one
    /// thread...).</summary>
    [LibraryImport(L, EntryPoint = "syscall", SetLastError = true)]
    public static partial long syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6);

    [LibraryImport(L, SetLastError = true)]
    public static partial int poll(PollFd* fds, nuint nfds, int timeout);
    [LibraryImport(L, SetLastError = true)]
    public static partial int flock(int fd, int operation);

    // ---- sockets ----
    [LibraryImport(L, SetLastError = true)]
    public static partial int socket(int domain, int type, int protocol);
    [LibraryImport(L, SetLastError = true)]
    public static partial int socketpair(int domain, int type, int protocol, int* sv);
    [LibraryImport(L, SetLastError = true)]
    public static partial int connect(int fd, byte* addr, int len);
    [LibraryImport(L, SetLastError = true)]
    public static partial int setsockopt(int fd, int level, int name, void* value, int len);
    [LibraryImport(L, SetLastError = true)]
    public static partial nint sendmsg(int fd, MsgHdr* msg, int flags);
    [LibraryImport(L, SetLastError = true)]
    public static partial nint recvmsg(int fd, MsgHdr* msg, int flags);

    // ---- terminals ----
    [LibraryImport(L, SetLastError = true)]
    public static partial int posix_openpt(int flags);
    [LibraryImport(L, SetLastError = true)]
    public static partial int grantpt(int fd);
    [LibraryImport(L, SetLastError = true)]
    public static partial int unlockpt(int fd);
    [LibraryImport(L, SetLastError = true)]
    public static partial int ptsname_r(int fd, byte* buf, nint len);
    [LibraryImport(L, SetLastError = true)]
    public static partial int isatty(int fd);
}

[StructLayout(LayoutKind.Sequential)]
public struct PollFd { public int Fd; public short Events; public short REvents; }

[StructLayout(LayoutKind.Sequential)]
public unsafe struct IoVec { public void* Base; public nint Len; }

[StructLayout(LayoutKind.Sequential)]
public unsafe struct MsgHdr
{
    public void* Name; public int NameLen; public IoVec* Iov; public nint IovLen;
    public void* Control; public nint ControlLen; public int Flags;
}
