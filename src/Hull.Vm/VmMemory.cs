using System.Globalization;

namespace Hull.Vm;

/// <summary>The one check of a VM's memory size, for the engine (<see cref="VmConfig.MemoryMiB"/>) and for hulld's
/// limits.memory.</summary>
public static class VmMemory
{
    /// <summary>
    /// The smallest VM Hull starts. 64 MiB, not the 16 MiB QEMU itself accepts: a Linux guest kernel with Hull's
    /// initrd and agent does not come up in less, and a VM that passes this check should boot rather than panic
    /// out of memory after it was started.
    /// </summary>
    public const int MinMiB = 64;

    /// <summary>The host's memory (MemTotal of /proc/meminfo) in MiB; long.MaxValue if it cannot be read.</summary>
    public static long HostMiB()
    {
        foreach (var l in File.ReadLines("/proc/meminfo"))
            if (l.StartsWith("MemTotal:", StringComparison.Ordinal))
                return long.Parse(l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture)
                    / 1024;
        return long.MaxValue;
    }

    /// <summary>What is wrong with a VM of <paramref name="mib"/> MiB ("is too small: give at least 64 MiB"), to
    /// follow the caller's name for the setting; null when it fits.</summary>
    public static string? Problem(long mib)
    {
        if (mib < MinMiB) return $"is too small for a VM: give at least {MinMiB} MiB";
        var host = HostMiB();
        return mib > host ? $"is more than this host has ({host} MiB): ask for less memory" : null;
    }
}
