using Hull.Oci;

namespace Hull.Cgroups.V1;

/// <summary>cgroup v1 pids: pids.max ("max" for -1 or 0).</summary>
internal static class V1Pids
{
    public static string Value(long limit) => limit > 0 ? limit.ToString() : "max";

    public static void Apply(CgroupFiles f, string d, Pids p) => f.Write(d, "pids.max", Value(p.Limit));

    public static void Stats(CgroupFiles f, string d, CgroupStats s)
    {
        s.Pids.Current = f.ReadU64(d, "pids.current");
        var max = f.ReadU64(d, "pids.max");
        s.Pids.Limit = max == ulong.MaxValue ? 0 : max;
    }
}
