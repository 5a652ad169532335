using Hull.Linux;
using Hull.Oci;

namespace Hull.Cgroups.V2;

/// <summary>cgroup v2 memory: memory.max, memory.low, memory.swap.max (swap only, where OCI and v1 count
/// memory+swap). Kernel memory, swappiness and the OOM-killer switch do not exist on v2.</summary>
internal static class V2Memory
{
    /// <summary>runc's conversion of OCI swap (memory+swap) to memory.swap.max (swap only). -1 = "max", null =
    /// unset.</summary>
    public static long? SwapToV2(long? swap, long? memory)
    {
        if (memory == -1 && swap is null or 0) return -1;
        if (swap is null or 0) return null;   // unset
        if (swap == -1) return -1;
        if (memory is null or 0 or -1)
            throw new CgroupException("linux.resources.memory.swap needs memory.limit on cgroup v2 (swap there " +
                "counts only swap, computed as swap − limit): set memory.limit too");
        if (swap < memory)
            throw new CgroupException($"linux.resources.memory.swap {swap} is below memory.limit {memory}: OCI swap " +
                "is memory+swap, so it must be ≥ the limit (or -1)");
        return swap - memory;
    }

    public static void Apply(CgroupFiles f, string d, Memory m)
    {
        m = new Memory
        {
            Limit = V1.V1Memory.Nz(m.Limit), Reservation = V1.V1Memory.Nz(m.Reservation), Swap = m.Swap,
            Kernel = m.Kernel, KernelTcp = m.KernelTcp,
            Swappiness = m.Swappiness, DisableOomKiller = m.DisableOomKiller,
        };
        string Hint(string file, int e) => e == Errors.ENOENT ? V2Tree.MissingHint(d, file)
            : CgroupFiles.GenericHint(file, e);
        var swap = SwapToV2(m.Swap, m.Limit);
        if (swap is { } sw)
        {
            if (f.Exists(d, "memory.swap.max")) f.Write(d, "memory.swap.max", CgroupFiles.MaxOr(sw),
                e => Hint("memory.swap.max", e));
            else if (sw != -1)
                throw new CgroupException($"linux.resources.memory.swap cannot be applied: {d}/memory.swap.max is " +
                    "missing (the kernel does not account swap, or the memory controller is not enabled): remove " +
                    "memory.swap", "memory.swap.max", sw.ToString());
        }
        if (m.Limit is { } limit) f.Write(d, "memory.max", CgroupFiles.MaxOr(limit), e => Hint("memory.max", e));
        if (m.Reservation is { } res) f.Write(d, "memory.low", CgroupFiles.MaxOr(res), e => Hint("memory.low", e));
        if (m.Kernel is { } k && k != 0) f.Warn(
            "linux.resources.memory.kernel ignored: cgroup v2 accounts kernel memory within memory.max");
        if (m.KernelTcp is { } kt && kt != 0) f.Warn(
            "linux.resources.memory.kernelTCP ignored: cgroup v2 accounts socket memory within memory.max");
        if (m.Swappiness is not null) f.Warn("linux.resources.memory.swappiness ignored: cgroup v2 has no per-cgroup " +
            "swappiness");
        if (m.DisableOomKiller == true) f.Warn(
            "linux.resources.memory.disableOOMKiller ignored: cgroup v2 cannot disable the OOM killer");
    }

    public static void Stats(CgroupFiles f, string d, CgroupStats s)
    {
        var m = s.Memory;
        m.Raw = f.ReadKeyed(d, "memory.stat");
        m.Cache = m.Raw.GetValueOrDefault("file");
        var events = f.ReadKeyed(d, "memory.events");
        m.Usage = new MemoryEntry
        {
            Usage = f.ReadU64(d, "memory.current"),
            Max = f.ReadU64(d, "memory.peak"),
            Limit = f.Exists(d, "memory.max") ? f.ReadU64(d, "memory.max") : ulong.MaxValue,
            Failcnt = events.GetValueOrDefault("max"),
        };
        if (f.Exists(d, "memory.swap.current"))
        {
            var swapMax = f.ReadU64(d, "memory.swap.max");
            m.Swap = new MemoryEntry
            {
                Usage = Sat(f.ReadU64(d, "memory.swap.current"), m.Usage.Usage),
                Max = Sat(f.ReadU64(d, "memory.swap.peak"), m.Usage.Max),
                Limit = Sat(swapMax, m.Usage.Limit),
                Failcnt = f.ReadKeyed(d, "memory.swap.events").GetValueOrDefault("max"),
            };
        }
    }

    static ulong Sat(ulong a, ulong b) => a > ulong.MaxValue - b ? ulong.MaxValue : a + b;
}
