using System.Runtime.InteropServices;

namespace Hull.Linux;

/// <summary>A failed system call: which call, on what, and the errno, worded like strerror.</summary>
public sealed class LinuxException : Exception
{
    public int Errno { get; }
    public string Operation { get; }

    public LinuxException(int errno, string operation)
        : base($"{operation}: {Errors.Describe(errno)}")
    {
        Errno = errno;
        Operation = operation;
    }

    /// <summary>Throws for the errno of the last P/Invoke (read it before anything else can reset it).</summary>
    public static LinuxException FromLastError(string operation) => new(Marshal.GetLastPInvokeError(), operation);
}

public static class Errors
{
    public const int EPERM = 1, ENOENT = 2, ESRCH = 3, EINTR = 4, EIO = 5, EBADF = 9, ECHILD = 10, EAGAIN = 11,
        ENOMEM = 12, EACCES = 13, EFAULT = 14, EBUSY = 16, EEXIST = 17, EXDEV = 18, ENODEV = 19, ENOTDIR = 20,
        EISDIR = 21, EINVAL = 22, ENFILE = 23, EMFILE = 24, ENOTTY = 25, ETXTBSY = 26, ENOSPC = 28, EROFS = 30,
        EPIPE = 32, ERANGE = 34, ENAMETOOLONG = 36, ENOSYS = 38, ENOTEMPTY = 39, ELOOP = 40, ENODATA = 61,
        EOPNOTSUPP = 95, ECONNREFUSED = 111, ETIMEDOUT = 110, ENXIO = 6;

    /// <summary>"ENOENT (No such file or directory)".</summary>
    public static string Describe(int errno) => $"{Name(errno)} ({Marshal.GetPInvokeErrorMessage(errno)})";

    public static string Name(int errno) => errno switch
    {
        EPERM => "EPERM", ENOENT => "ENOENT", ESRCH => "ESRCH", EINTR => "EINTR", EIO => "EIO", EBADF => "EBADF",
        ECHILD => "ECHILD", EAGAIN => "EAGAIN", ENOMEM => "ENOMEM", EACCES => "EACCES", EFAULT => "EFAULT",
        EBUSY => "EBUSY", EEXIST => "EEXIST", EXDEV => "EXDEV", ENODEV => "ENODEV", ENOTDIR => "ENOTDIR",
        EISDIR => "EISDIR", EINVAL => "EINVAL", ENFILE => "ENFILE", EMFILE => "EMFILE", ENOTTY => "ENOTTY",
        ETXTBSY => "ETXTBSY", ENOSPC => "ENOSPC", EROFS => "EROFS", EPIPE => "EPIPE", ERANGE => "ERANGE",
        ENAMETOOLONG => "ENAMETOOLONG", ENOSYS => "ENOSYS", ENOTEMPTY => "ENOTEMPTY", ELOOP => "ELOOP",
        ENODATA => "ENODATA", EOPNOTSUPP => "EOPNOTSUPP", ECONNREFUSED => "ECONNREFUSED", ETIMEDOUT => "ETIMEDOUT",
        ENXIO => "ENXIO", 8 => "ENOEXEC", _ => $"errno {errno}",
    };
}
