using System.Text.RegularExpressions;
using Hull.Oci;

namespace Hull.Cgroups.V1;

/// <summary>cgroup v1 hugetlb: hugetlb.&lt;size&gt;.limit_in_bytes per page size ("2MB", "1GB").</summary>
internal static partial class V1Hugetlb
{
    [GeneratedRegex("^[0-9]+[KMG]B$")]
    private static partial Regex SizeRe();

    public static bool ValidSize(string s) => SizeRe().IsMatch(s);

    /// <summary>Page sizes that have <c>hugetlb.SIZE.SUFFIX</c> in <paramref name="d"/>.</summary>
    internal static List<string> Sizes(string d, string suffix)
    {
        try
        {
            return Directory.GetFiles(d, "hugetlb.*." + suffix).Select(p => Path.GetFileName(p))
                .Select(n => n["hugetlb.".Length..^(suffix.Length + 1)]).Where(ValidSize).Distinct().Order().ToList();
        }
        catch (IOException) { return []; }
    }

    internal static void Check(CgroupFiles f, string d, string size, string file, string suffix)
    {
        if (f.Exists(d, file)) return;
        var have = Sizes(d, suffix);
        throw new CgroupException($"linux.resources.hugepageLimits pageSize \"{size}\" is not supported here " +
            $"({d}/{file} is missing): this host's huge page sizes are " +
            $"{(have.Count == 0 ? "none" : string.Join(", ", have))}", file, size);
    }

    public static void Apply(CgroupFiles f, string d, List<HugepageLimit> limits)
    {
        foreach (var h in limits) Check(f, d, h.PageSize, $"hugetlb.{h.PageSize}.limit_in_bytes", "limit_in_bytes");
        foreach (var h in limits)
        {
            f.Write(d, $"hugetlb.{h.PageSize}.limit_in_bytes", h.Limit.ToString());
            if (f.Exists(d, $"hugetlb.{h.PageSize}.rsvd.limit_in_bytes"))
                f.Write(d, $"hugetlb.{h.PageSize}.rsvd.limit_in_bytes", h.Limit.ToString());
        }
    }

    public static void Stats(CgroupFiles f, string d, CgroupStats s)
    {
        foreach (var size in Sizes(d, "limit_in_bytes"))
            s.Hugetlb[size] = new HugetlbStats
            {
                Usage = f.ReadU64(d, $"hugetlb.{size}.usage_in_bytes"),
                Max = f.ReadU64(d, $"hugetlb.{size}.max_usage_in_bytes"),
                Failcnt = f.ReadU64(d, $"hugetlb.{size}.failcnt"),
            };
    }
}
