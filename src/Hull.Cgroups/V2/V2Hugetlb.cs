using Hull.Cgroups.V1;
using Hull.Oci;

namespace Hull.Cgroups.V2;

/// <summary>cgroup v2 hugetlb: hugetlb.&lt;size&gt;.max (and .rsvd.max when the kernel has it).</summary>
internal static class V2Hugetlb
{
    public static void Apply(CgroupFiles f, string d, List<HugepageLimit> limits)
    {
        foreach (var h in limits)
        {
            if (!f.Exists(d, $"hugetlb.{h.PageSize}.max") && V1Hugetlb.Sizes(d, "max").Count == 0)
                throw new CgroupException("linux.resources.hugepageLimits cannot be applied: " +
                    $"{V2Tree.MissingHint(d, "hugetlb.max")}", $"hugetlb.{h.PageSize}.max", h.PageSize);
            V1Hugetlb.Check(f, d, h.PageSize, $"hugetlb.{h.PageSize}.max", "max");
        }
        foreach (var h in limits)
        {
            f.Write(d, $"hugetlb.{h.PageSize}.max", h.Limit.ToString());
            if (f.Exists(d, $"hugetlb.{h.PageSize}.rsvd.max")) f.Write(d, $"hugetlb.{h.PageSize}.rsvd.max",
                h.Limit.ToString());
        }
    }

    public static void Stats(CgroupFiles f, string d, CgroupStats s)
    {
        foreach (var size in V1Hugetlb.Sizes(d, "max").Where(x => !x.EndsWith(".rsvd", StringComparison.Ordinal)))
            s.Hugetlb[size] = new HugetlbStats
            {
                Usage = f.ReadU64(d, $"hugetlb.{size}.current"),
                Failcnt = f.ReadKeyed(d, $"hugetlb.{size}.events").GetValueOrDefault("max"),
            };
    }
}
