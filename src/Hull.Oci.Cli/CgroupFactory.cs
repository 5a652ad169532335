using Hull.Containers;

namespace Hull.Oci.Cli;

/// <summary>Chooses the cgroup driver: cgroupfs (a systemd cgroupsPath is translated to a cgroupfs path).</summary>
static class CgroupFactory
{
    public static ICgroupFactory Create(bool systemd) => HostCgroups.Instance;

    public static string Mode() => Hull.Cgroups.CgroupLayout.Detect().Mode switch
    {
        Hull.Cgroups.CgroupMode.V1 => "v1",
        Hull.Cgroups.CgroupMode.V2 => "v2",
        _ => "hybrid",
    };
}
