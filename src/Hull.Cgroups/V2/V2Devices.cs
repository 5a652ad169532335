using Hull.Oci;

namespace Hull.Cgroups.V2;

/// <summary>
/// cgroup v2 has no devices file: device access is decided by a BPF_CGROUP_DEVICE program attached to the cgroup.
/// This driver only compiles the OCI list into the effective <see cref="DeviceRuleSet"/>
/// (<see cref="ICgroup.EffectiveDeviceRules"/>); the engine turns that into the BPF program and attaches it
/// (BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI to the v2 directory fd).
/// </summary>
internal static class V2Devices
{
    public static DeviceRuleSet Compile(List<DeviceCgroup> devices) => DeviceRuleSet.Compile(devices);
}
