using Hull.Oci;

namespace Hull.Cgroups.V1;

/// <summary>cgroup v1 net_cls: net_cls.classid (a tc class id, 0xAAAABBBB).</summary>
internal static class V1NetCls
{
    public static void Apply(CgroupFiles f, string d, uint classId) =>
        f.Write(d, "net_cls.classid", classId.ToString());
}

/// <summary>cgroup v1 net_prio: net_prio.ifpriomap, one "ifname priority" write per interface.</summary>
internal static class V1NetPrio
{
    public static void Apply(CgroupFiles f, string d, List<InterfacePriority> list)
    {
        foreach (var p in list)
        {
            if (p.Name.Length == 0 || p.Name.Contains(' ') || p.Name.Contains('/'))
                throw new CgroupException($"linux.resources.network.priorities: interface name \"{p.Name}\" is " +
                    "invalid");
            f.Write(d, "net_prio.ifpriomap", $"{p.Name} {p.Priority}", e => e == Hull.Linux.Errors.ENODEV
                ? $"there is no network interface \"{p.Name}\" in this network namespace"
                    : CgroupFiles.GenericHint("net_prio.ifpriomap", e));
        }
    }
}
