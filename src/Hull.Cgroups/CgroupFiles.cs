using System.Runtime.InteropServices;
using System.Text;
using Hull.Linux;

namespace Hull.Cgroups;

/// <summary>Reads and writes of cgroupfs files, one write(2) per value as the kernel wants, with errors that say
/// what to change. Also works on a plain directory tree (the tests' fake cgroupfs).</summary>
internal sealed unsafe class CgroupFiles
{
    /// <summary>Called before every write with (path, value): debug logging, tests.</summary>
    public Action<string, string>? OnWrite;
    /// <summary>Values that could not be applied on this host but do not fail the operation (e.g. kernel memory on
    /// v2).</summary>
    public readonly List<string> Warnings = [];

    public void Warn(string message) => Warnings.Add(message);

    public static string P(string dir, string file) => dir + "/" + file;

    public bool Exists(string dir, string file) => File.Exists(P(dir, file));

    /// <summary>Writes <paramref name="value"/>; on failure throws naming the file, the value, the errno and
    /// the fix (from <paramref name="hint"/>, called with the errno, or the generic hints).</summary>
    public void Write(string dir, string file, string value, Func<int, string?>? hint = null)
    {
        if (TryWrite(dir, file, value, out var errno)) return;
        throw CgroupException.WriteFailed(P(dir, file), value, errno, hint?.Invoke(errno) ?? GenericHint(file, errno));
    }

    public bool TryWrite(string dir, string file, string value, out int errno)
    {
        var path = P(dir, file);
        OnWrite?.Invoke(path, value);
        errno = 0;
        var fd = Libc.open(path, O.WRONLY | O.TRUNC | O.CLOEXEC, 0);
        if (fd < 0) { errno = Marshal.GetLastPInvokeError(); return false; }
        try
        {
            var bytes = Encoding.UTF8.GetBytes(value);
            while (true)
            {
                nint r;
                fixed (byte* p = bytes) r = Libc.write(fd, p, bytes.Length);
                if (r >= 0) return true;
                errno = Marshal.GetLastPInvokeError();
                if (errno != Errors.EINTR) return false;
            }
        }
        finally { Libc.close(fd); }
    }

    public static string GenericHint(string file, int errno) => errno switch
    {
        Errors.ENOENT => $"this kernel or cgroup has no {file}: the controller is not enabled here or the feature is " +
            "not built in; remove that setting",
        Errors.EACCES or Errors.EPERM => "permission denied: run as root (with CAP_SYS_ADMIN) or use a cgroup " +
            "delegated to this user",
        Errors.EROFS => "the cgroup filesystem is mounted read-only",
        Errors.EINVAL => "the kernel rejected the value: check its range and format",
        Errors.ERANGE => "the value is out of range for this file",
        Errors.EOPNOTSUPP => "the kernel no longer supports this setting; remove it",
        Errors.EBUSY => "the cgroup is busy (it has processes or children that prevent this change)",
        _ => "",
    };

    /// <summary>The file's text, or null if it does not exist.</summary>
    public string? ReadOrNull(string dir, string file)
    {
        try { return File.ReadAllText(P(dir, file)); }
        catch (FileNotFoundException) { return null; }
        catch (DirectoryNotFoundException) { return null; }
        catch (IOException) { return null; }
    }

    public string Read(string dir, string file)
    {
        try { return File.ReadAllText(P(dir, file)); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CgroupException($"cannot read {P(dir, file)}: {e.Message}", P(dir, file), inner: e);
        }
    }

    /// <summary>A single number; "max" reads as <see cref="ulong.MaxValue"/>; missing or unparsable → 0.</summary>
    public ulong ReadU64(string dir, string file)
    {
        var t = ReadOrNull(dir, file)?.Trim();
        if (t is null || t.Length == 0) return 0;
        if (t == "max") return ulong.MaxValue;
        return ulong.TryParse(t, out var v) ? v : long.TryParse(t, out var l) && l < 0 ? ulong.MaxValue : 0;
    }

    /// <summary>"key value" lines (memory.stat, cpu.stat, pids.events...).</summary>
    public Dictionary<string, ulong> ReadKeyed(string dir, string file)
    {
        var d = new Dictionary<string, ulong>(StringComparer.Ordinal);
        var t = ReadOrNull(dir, file);
        if (t is null) return d;
        foreach (var line in t.Split('\n'))
        {
            var sp = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (sp.Length == 2 && ulong.TryParse(sp[1], out var v)) d[sp[0]] = v;
        }
        return d;
    }

    /// <summary>Whitespace-separated numbers (cpuacct.usage_percpu).</summary>
    public List<ulong> ReadList(string dir, string file)
    {
        var t = ReadOrNull(dir, file);
        if (t is null) return [];
        return t.Split([' ', '\n'], StringSplitOptions.RemoveEmptyEntries).Select(s =>
            ulong.TryParse(s, out var v) ? v : 0).ToList();
    }

    /// <summary>Values OCI gives as -1 for "unlimited" become "max"; others are written as decimal.</summary>
    public static string MaxOr(long v) => v < 0 ? "max" : v.ToString();
}
