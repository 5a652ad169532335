using Hull.Linux;
using Hull.Oci;

namespace Hull.Cgroups.V1;

/// <summary>cgroup v1 memory: memory.limit_in_bytes, memory.memsw.limit_in_bytes (memory+swap, as OCI's swap),
/// soft limit, kmem, swappiness, oom_control.</summary>
internal static class V1Memory
{
    const string Limit = "memory.limit_in_bytes", Memsw = "memory.memsw.limit_in_bytes";

    /// <summary>OCI (like runc) treats 0 as "not set" for byte limits.</summary>
    internal static long? Nz(long? v) => v == 0 ? null : v;

    public static void Apply(CgroupFiles f, string d, Memory m)
    {
        m = new Memory
        {
            Limit = Nz(m.Limit), Reservation = Nz(m.Reservation), Swap = Nz(m.Swap), Kernel = Nz(m.Kernel),
            KernelTcp = Nz(m.KernelTcp),
            Swappiness = m.Swappiness, DisableOomKiller = m.DisableOomKiller,
        };
        string LimitHint(int e) => e switch
        {
            Errors.EBUSY => $"the new limit is below current usage ({f.ReadU64(d, "memory.usage_in_bytes")} bytes in " +
                "memory.usage_in_bytes): raise the limit or free memory in the container first",
            Errors.EINVAL => "memory.limit_in_bytes must not exceed memory+swap (memory.memsw.limit_in_bytes = " +
                $"{f.ReadOrNull(d, Memsw)?.Trim() ?? "?"}): raise memory.swap as well",
            _ => CgroupFiles.GenericHint(Limit, e),
        };
        string SwapHint(int e) => e switch
        {
            Errors.EBUSY => "the new memory+swap limit is below current usage " +
                $"({f.ReadU64(d, "memory.memsw.usage_in_bytes")} bytes): raise memory.swap",
            Errors.EINVAL => "memory.swap (memory+swap on v1) must be ≥ memory.limit: raise it, or use -1 for " +
                "unlimited swap",
            _ => CgroupFiles.GenericHint(Memsw, e),
        };

        var swap = m.Swap;
        if (swap is not null && !f.Exists(d, Memsw))
        {
            if (swap == -1 || swap == m.Limit) swap = null;   // nothing to enforce without swap accounting
            else throw new CgroupException($"linux.resources.memory.swap {swap} cannot be applied: {d}/{Memsw} is " +
                "missing because the kernel does not account swap (boot with swapaccount=1, or remove memory.swap)",
                Memsw, swap.ToString());
        }
        if (m.Limit is { } limit)
        {
            if (swap is { } sw)
            {
                // memory.limit_in_bytes ≤ memory.memsw.limit_in_bytes at every step: grow memsw first, shrink it last.
                var cur = f.ReadU64(d, Memsw);
                var growing = sw == -1 || (ulong)sw > cur;
                if (growing) { f.Write(d, Memsw, sw.ToString(), SwapHint); f.Write(d, Limit, limit.ToString(),
                    LimitHint); }
                else { f.Write(d, Limit, limit.ToString(), LimitHint); f.Write(d, Memsw, sw.ToString(), SwapHint); }
            }
            else f.Write(d, Limit, limit.ToString(), LimitHint);
        }
        else if (swap is { } sw) f.Write(d, Memsw, sw.ToString(), SwapHint);

        if (m.Reservation is { } res) f.Write(d, "memory.soft_limit_in_bytes", res.ToString());
        if (m.Kernel is { } k) Kmem(f, d, "memory.kmem.limit_in_bytes", k, "kernel");
        if (m.KernelTcp is { } kt) Kmem(f, d, "memory.kmem.tcp.limit_in_bytes", kt, "kernelTCP");
        if (m.Swappiness is { } swp)
        {
            if (f.Exists(d, "memory.swappiness")) f.Write(d, "memory.swappiness", swp.ToString());
            else f.Warn("linux.resources.memory.swappiness ignored: this kernel has no memory.swappiness");
        }
        if (m.DisableOomKiller is { } off)
            f.Write(d, "memory.oom_control", off ? "1" : "0");
    }

    static void Kmem(CgroupFiles f, string d, string file, long v, string name)
    {
        if (!f.Exists(d, file)) { f.Warn($"linux.resources.memory.{name} ignored: this kernel has no {file}"); return; }
        if (f.TryWrite(d, file, v.ToString(), out var e)) return;
        if (e is Errors.EOPNOTSUPP or 524 /* ENOTSUPP */)
        {
            f.Warn($"linux.resources.memory.{name} ignored: this kernel no longer supports {file}");
            return;
        }
        throw CgroupException.WriteFailed(CgroupFiles.P(d, file), v.ToString(), e, e == Errors.EBUSY
            ? "kernel memory limits can only be set on an empty cgroup: set it before starting processes"
            : CgroupFiles.GenericHint(file, e));
    }

    public static void Stats(CgroupFiles f, string d, CgroupStats s)
    {
        var m = s.Memory;
        m.Raw = f.ReadKeyed(d, "memory.stat");
        m.Cache = m.Raw.GetValueOrDefault("cache");
        m.Usage = Entry(f, d, "memory");
        m.Swap = Entry(f, d, "memory.memsw");
        m.Kernel = Entry(f, d, "memory.kmem");
        m.KernelTcp = Entry(f, d, "memory.kmem.tcp");
    }

    static MemoryEntry Entry(CgroupFiles f, string d, string prefix) => new()
    {
        Usage = f.ReadU64(d, prefix + ".usage_in_bytes"),
        Max = f.ReadU64(d, prefix + ".max_usage_in_bytes"),
        Limit = f.ReadU64(d, prefix + ".limit_in_bytes"),
        Failcnt = f.ReadU64(d, prefix + ".failcnt"),
    };
}
