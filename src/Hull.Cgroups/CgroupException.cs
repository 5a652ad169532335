using Hull.Linux;

namespace Hull.Cgroups;

/// <summary>
/// A cgroup operation failed or a resource value cannot be applied. When a file write failed, <see cref="File"/>,
/// <see cref="Value"/> and <see cref="Errno"/> say which, and the message says what to change.
/// </summary>
public sealed class CgroupException : Exception
{
    public string? File { get; }
    public string? Value { get; }
    public int Errno { get; }

    public CgroupException(string message, string? file = null, string? value = null, int errno = 0,
        Exception? inner = null)
        : base(message, inner)
    {
        File = file;
        Value = value;
        Errno = errno;
    }

    internal static CgroupException WriteFailed(string path, string value, int errno, string? hint)
    {
        var shown = value.Length > 60 ? value[..60] + "..." : value.TrimEnd('\n');
        var msg = $"{path} = {shown}: {Errors.Describe(errno)}";
        if (!string.IsNullOrEmpty(hint)) msg += " — " + hint;
        return new CgroupException(msg, path, value, errno);
    }
}
