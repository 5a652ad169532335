using Hull.Linux;

namespace Hull.Containers;

/// <summary>Linux capabilities by name (capabilities(7)). The native spawn shim applies them
/// (apply_and_exec).</summary>
public static class Capabilities
{
    public static readonly string[] Names =
    [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    ];

    /// <summary>The set Podman gives a container by default.</summary>
    public static readonly string[] Default =
    [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETFCAP",
        "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
    ];

    public static bool TryParse(string name, out int cap)
    {
        cap = Array.IndexOf(Names, name.ToUpperInvariant());
        return cap >= 0;
    }

    /// <summary>The highest capability this kernel knows (/proc/sys/kernel/cap_last_cap).</summary>
    public static int LastCap { get; } = ReadLastCap();

    static int ReadLastCap()
    {
        try { return int.Parse(File.ReadAllText("/proc/sys/kernel/cap_last_cap").Trim()); }
        catch (IOException) { return Names.Length - 1; }
    }

    /// <summary>The bounding set of this process (CapBnd in /proc/self/status): what an init it starts can
    /// hold.</summary>
    public static ulong OwnBounding()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("CapBnd:", StringComparison.Ordinal))
                return Convert.ToUInt64(line["CapBnd:".Length..].Trim(), 16);
        return ulong.MaxValue;
    }

    /// <summary>
    /// Checks process.capabilities against what the runtime can give, as runc does: a capability missing from the
    /// runtime's own bounding set fails in effective, permitted, inheritable or ambient (runc fails at "apply caps"
    /// when the process is already started; this says so at create), and is dropped from bounding (one cannot keep
    /// what one lacks). In a new user namespace the init holds every capability of that namespace: nothing to check.
    /// Returns the warnings: ambient capabilities that are not also inheritable and permitted are not raised (the
    /// kernel refuses them; runc skips them too, so a bundle from "runc spec" runs).
    /// </summary>
    public static List<string> Check(Hull.Oci.Capabilities? caps, string field, bool newUserNamespace, ulong bounding)
    {
        var warnings = new List<string>();
        if (caps is null) return warnings;
        if (!newUserNamespace)
            foreach (var (set, names) in new[] { ("effective", caps.Effective), ("permitted", caps.Permitted),
                         ("inheritable", caps.Inheritable), ("ambient", caps.Ambient) })
            {
                var missing = Mask(names) & ~bounding;
                if (missing != 0)
                    throw new ContainerException($"{field}.capabilities.{set} lists {NamesOf(missing)}, which this " +
                        "runtime does not have (its own bounding set lacks it, so the container's process could not " +
                        "hold it): remove it from the config, or run the runtime with it");
            }
        var notRaised = Mask(caps.Ambient) & ~(Mask(caps.Inheritable) & Mask(caps.Permitted));
        if (notRaised != 0)
            warnings.Add($"{field}.capabilities.ambient lists {NamesOf(notRaised)}, " +
                "not also in inheritable and permitted: not raised (an ambient capability must be in both)");
        return warnings;
    }

    static string NamesOf(ulong mask) => string.Join(", ", Names.Where((_, c) => (mask & (1UL << c)) != 0));

    public static ulong Mask(IEnumerable<string>? names)
    {
        ulong m = 0;
        if (names is null) return 0;
        foreach (var n in names)
            if (TryParse(n, out var c) && c <= LastCap) m |= 1UL << c;
        return m;
    }
}
