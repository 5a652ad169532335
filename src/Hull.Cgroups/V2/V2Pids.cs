using Hull.Cgroups.V1;
using Hull.Oci;

namespace Hull.Cgroups.V2;

/// <summary>cgroup v2 pids: pids.max (same file and syntax as v1).</summary>
internal static class V2Pids
{
    public static void Apply(CgroupFiles f, string d, Pids p) =>
        f.Write(d, "pids.max", V1Pids.Value(p.Limit),
            e => e == Hull.Linux.Errors.ENOENT ? V2Tree.MissingHint(d, "pids.max")
            : CgroupFiles.GenericHint("pids.max", e));

    public static void Stats(CgroupFiles f, string d, CgroupStats s) => V1Pids.Stats(f, d, s);
}
