using Hull.Oci;

namespace Hull.Cgroups.V1;

/// <summary>rdma (v1 and v2 use the same rdma.max syntax): "mlx4_0 hca_handle=2 hca_object=2000".</summary>
internal static class V1Rdma
{
    public static string Line(string device, Rdma r) =>
        $"{device} hca_handle={(r.HcaHandles is { } h ? h.ToString() : "max")} " +
            $"hca_object={(r.HcaObjects is { } o ? o.ToString() : "max")}";

    public static void Apply(CgroupFiles f, string d, Dictionary<string, Rdma> rdma)
    {
        foreach (var (dev, r) in rdma)
        {
            if (dev.Length == 0 || dev.Contains(' ')) throw new CgroupException(
                $"linux.resources.rdma: device name \"{dev}\" is invalid");
            f.Write(d, "rdma.max", Line(dev, r), e => e == Hull.Linux.Errors.ENODEV || e == Hull.Linux.Errors.EINVAL
                ? $"there is no RDMA device \"{dev}\" (see /sys/class/infiniband)"
                    : CgroupFiles.GenericHint("rdma.max", e));
        }
    }
}
