using Hull.Oci;

namespace Hull.Cgroups.V2;

/// <summary>cgroup v2 rdma: rdma.max, same syntax as v1.</summary>
internal static class V2Rdma
{
    public static void Apply(CgroupFiles f, string d, Dictionary<string, Rdma> rdma) => V1.V1Rdma.Apply(f, d, rdma);
}
