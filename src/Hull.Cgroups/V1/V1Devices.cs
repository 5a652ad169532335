using Hull.Linux;
using Hull.Oci;

namespace Hull.Cgroups.V1;

/// <summary>
/// cgroup v1 devices: devices.allow / devices.deny. The OCI list is applied in order through
/// <see cref="DeviceRuleSet.Compile"/> and the result is written as the kernel would end up after the same writes:
/// "a" to the file of the default, then each exception. On an update of a deny-by-default cgroup only the
/// difference is written, so a running container never passes through "deny everything".
/// </summary>
internal static class V1Devices
{
    public static DeviceRuleSet Apply(CgroupFiles f, string d, List<DeviceCgroup> devices)
    {
        var target = DeviceRuleSet.Compile(devices);
        var listText = f.ReadOrNull(d, "devices.list");
        var current = listText is null ? DeviceRuleSet.AllowAll : DeviceRuleSet.ParseV1List(listText);
        string Hint(int e) => e == Errors.EPERM
            ? "a parent cgroup does not allow this device, so this cgroup cannot either"
            : CgroupFiles.GenericHint("devices.allow", e);

        if (!target.DefaultAllow && !current.DefaultAllow)
        {
            foreach (var c in current.Exceptions)
            {
                var keep = target.Exceptions.FirstOrDefault(t => t.Type == c.Type && t.Major == c.Major
                    && t.Minor == c.Minor);
                var drop = new string(c.Access.Where(a => keep is null || !keep.Access.Contains(a)).ToArray());
                if (drop.Length > 0) f.Write(d, "devices.deny", (c with { Access = drop }).ToV1(), Hint);
            }
            foreach (var t in target.Exceptions)
            {
                var have = current.Exceptions.FirstOrDefault(c => c.Type == t.Type && c.Major == t.Major
                    && c.Minor == t.Minor);
                if (have is null || t.Access.Any(a => !have.Access.Contains(a))) f.Write(d, "devices.allow", t.ToV1(),
                    Hint);
            }
        }
        else
        {
            f.Write(d, target.DefaultAllow ? "devices.allow" : "devices.deny", "a", Hint);
            foreach (var t in target.Exceptions) f.Write(d, target.DefaultAllow ? "devices.deny" : "devices.allow",
                t.ToV1(), Hint);
        }
        if (!target.DefaultAllow && f.ReadOrNull(d, "devices.list") is { } after && after.Length > 0)
        {
            var got = DeviceRuleSet.ParseV1List(after);
            if (!got.SameAs(target))
                throw new CgroupException($"{d}/devices.list does not show the requested device rules ({target}); " +
                    $"the kernel has ({got}): a parent cgroup restricts these devices", "devices.list");
        }
        return target;
    }
}
