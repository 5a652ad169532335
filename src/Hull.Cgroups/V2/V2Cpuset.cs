using Hull.Cgroups.V1;
using Hull.Oci;

namespace Hull.Cgroups.V2;

/// <summary>cgroup v2 cpuset: cpuset.cpus, cpuset.mems (empty means "inherit", so nothing is copied on
/// create).</summary>
internal static class V2Cpuset
{
    public static void Apply(CgroupFiles f, string d, Cpu c) =>
        V1Cpuset.Write(f, d, c, "cpuset.cpus.effective", "cpuset.mems.effective");

    public static void Stats(CgroupFiles f, string d, CgroupStats s)
    {
        s.Cpuset.Cpus = V1Cpuset.ParseList(f.ReadOrNull(d, "cpuset.cpus.effective") ?? f.ReadOrNull(d, "cpuset.cpus"));
        s.Cpuset.Mems = V1Cpuset.ParseList(f.ReadOrNull(d, "cpuset.mems.effective") ?? f.ReadOrNull(d, "cpuset.mems"));
    }
}
