using Hull.Linux;

namespace Hull.Containers;

/// <summary>mount(8)-style options of an OCI mount, split into mount flags, propagation flags and fs data.</summary>
public sealed record ParsedMount(ulong Flags, ulong ClearFlags, ulong Propagation, string Data, bool Bind,
    bool Recursive, bool Mkdir)
{
    /// <summary>Flags that need a remount after a bind mount (a bind ignores them on the first call).</summary>
    public const ulong RemountFlags = MS.RDONLY | MS.NOSUID | MS.NODEV | MS.NOEXEC | MS.NOATIME | MS.NODIRATIME |
        MS.RELATIME | MS.STRICTATIME | MS.NOSYMFOLLOW;
}

public static class MountOptions
{
    // option -> (set, clear)
    static readonly Dictionary<string, (ulong Set, ulong Clear)> Flags = new()
    {
        ["ro"] = (MS.RDONLY, 0), ["rw"] = (0, MS.RDONLY),
        ["nosuid"] = (MS.NOSUID, 0), ["suid"] = (0, MS.NOSUID),
        ["nodev"] = (MS.NODEV, 0), ["dev"] = (0, MS.NODEV),
        ["noexec"] = (MS.NOEXEC, 0), ["exec"] = (0, MS.NOEXEC),
        ["sync"] = (MS.SYNCHRONOUS, 0), ["async"] = (0, MS.SYNCHRONOUS),
        ["dirsync"] = (MS.DIRSYNC, 0), ["remount"] = (MS.REMOUNT, 0), ["mand"] = (MS.MANDLOCK, 0),
        ["nomand"] = (0, MS.MANDLOCK),
        ["atime"] = (0, MS.NOATIME), ["noatime"] = (MS.NOATIME, 0), ["diratime"] = (0, MS.NODIRATIME),
        ["nodiratime"] = (MS.NODIRATIME, 0),
        ["relatime"] = (MS.RELATIME, 0), ["norelatime"] = (0, MS.RELATIME), ["strictatime"] = (MS.STRICTATIME, 0),
        ["nostrictatime"] = (0, MS.STRICTATIME),
        ["lazytime"] = (MS.LAZYTIME, 0), ["nolazytime"] = (0, MS.LAZYTIME), ["symfollow"] = (0, MS.NOSYMFOLLOW),
        ["nosymfollow"] = (MS.NOSYMFOLLOW, 0),
        ["defaults"] = (0, 0),
    };

    static readonly Dictionary<string, ulong> Propagation = new()
    {
        ["private"] = MS.PRIVATE, ["rprivate"] = MS.PRIVATE | MS.REC, ["shared"] = MS.SHARED,
        ["rshared"] = MS.SHARED | MS.REC,
        ["slave"] = MS.SLAVE, ["rslave"] = MS.SLAVE | MS.REC, ["unbindable"] = MS.UNBINDABLE,
        ["runbindable"] = MS.UNBINDABLE | MS.REC,
    };

    // Options Hull handles itself or that are meaningful only to other tools; never passed as fs data.
    static readonly HashSet<string> Ignored =
        ["bind", "rbind", "tmpcopyup", "copy-symlink", "idmap", "ridmap", "z", "Z", "U", "notmpcopyup", "X-mount.mkdir",
        "nocopyup", "copyup", "noswap"];

    public static bool IsBind(Hull.Oci.Mount m) =>
        m.Type == "bind" || (m.Options?.Any(o => o is "bind" or "rbind") ?? false);

    /// <summary>
    /// For a filesystem mount any other word is fs data (mode=, size=, a flag of that fs) that the kernel judges.
    /// A bind mount has no fs data: a name=value word there (mode=755, size=1k: a config written for a tmpfs and
    /// reused as a bind) is ignored, as runc does, while an unknown bare word is a mistake (a typo of a flag).
    /// </summary>
    public static bool IsKnown(string option, bool bind) =>
        Flags.ContainsKey(option) || Propagation.ContainsKey(option) || Ignored.Contains(option) || !bind
        || option.Contains('=');

    public static ParsedMount Parse(Hull.Oci.Mount m)
    {
        ulong set = 0, clear = 0, prop = 0;
        var data = new List<string>();
        bool bind = m.Type == "bind", rec = false, mkdir = false;
        foreach (var o in m.Options ?? [])
        {
            if (o == "bind") bind = true;
            else if (o == "rbind") { bind = true; rec = true; }
            else if (o == "X-mount.mkdir") mkdir = true;
            else if (Flags.TryGetValue(o, out var f)) { set = (set & ~f.Clear) | f.Set; clear =
                (clear & ~f.Set) | f.Clear; }
            else if (Propagation.TryGetValue(o, out var p)) prop |= p;
            else if (Ignored.Contains(o)) { }
            else data.Add(o);
        }
        return new ParsedMount(set, clear, prop, string.Join(',', data), bind, rec, mkdir);
    }
}

/// <summary>setrlimit(2) resources by their OCI names.</summary>
public static class Rlimits
{
    public static readonly string[] Names =
    [
        "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS", "RLIMIT_NPROC",
        "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME",
    ];

    public static int Resource(string name) => Array.IndexOf(Names, name);

    /// <summary>Sets one limit on the calling process, explaining the usual failure (raising a hard limit without
    /// CAP_SYS_RESOURCE).</summary>
    public static unsafe void Apply(Hull.Oci.Rlimit r)
    {
        var res = Resource(r.Type);
        ulong* lim = stackalloc ulong[2];
        ulong* old = stackalloc ulong[2];
        lim[0] = r.Soft; lim[1] = r.Hard;
        if (Libc.prlimit(0, res, lim, null) == 0) return;
        var e = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
        Libc.prlimit(0, res, null, old);
        if (e == Errors.EPERM)
            throw new ContainerException($"setting {r.Type} to soft={r.Soft} hard={r.Hard}: EPERM — raising a hard " +
                $"limit above the current one ({old[1]}) needs CAP_SYS_RESOURCE, which this runtime does not have; " +
                $"lower the hard limit to at most {old[1]} (with Podman: --ulimit " +
                $"{ShortName(r.Type)}={Math.Min(r.Soft, old[1])}:{old[1]})");
        throw new ContainerException($"setting {r.Type} to soft={r.Soft} hard={r.Hard}: {Errors.Describe(e)}");
    }

    static string ShortName(string type) => type["RLIMIT_".Length..].ToLowerInvariant();
}
