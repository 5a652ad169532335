using Hull.Oci;

namespace Hull.Cgroups.V2;

/// <summary>
/// cgroup v2 has no devices file: device access is decided by a BPF_CGROUP_DEVICE program attached to the cgroup.
/// The OCI list is compiled into the effective <see cref="DeviceRuleSet"/> (v1 semantics), that into a program
/// (<see cref="DeviceFilter.Build"/>), which replaces the cgroup's previous device program
/// (<see cref="DeviceFilter.Apply"/>).
/// </summary>
internal static class V2Devices
{
    public static DeviceRuleSet Apply(string dir, List<DeviceCgroup> devices)
    {
        var rules = DeviceRuleSet.Compile(devices);
        DeviceFilter.Apply(dir, rules);
        return rules;
    }
}
