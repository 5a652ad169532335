namespace Hull.Cgroups.V2;

/// <summary>cgroup v2 tree: controllers reach a cgroup only if every ancestor lists them in
/// cgroup.subtree_control.</summary>
internal static class V2Tree
{
    /// <summary>Enables in each ancestor of <paramref name="leaf"/> (from the mount down to its parent) every
    /// controller that ancestor offers. A level that refuses (it has processes of its own: the "no internal
    /// processes" rule, or the controller is not delegated) is noted as a warning; the leaf then lacks that
    /// controller and <see cref="ICgroup.Apply"/> says so if a setting needs it.</summary>
    public static void EnableControllers(CgroupFiles f, string mount, string leaf)
    {
        var rel = leaf[mount.TrimEnd('/').Length..].Split('/', StringSplitOptions.RemoveEmptyEntries);
        var level = mount.TrimEnd('/');
        for (var i = 0; i < rel.Length; i++)
        {
            var offered = CgroupLayout.ReadControllers(level).ToList();
            var enabled = (f.ReadOrNull(level, "cgroup.subtree_control") ?? "")
                .Split([' ', '\n'], StringSplitOptions.RemoveEmptyEntries).Select(c => c.TrimStart('+')).ToHashSet();
            var missing = offered.Where(c => !enabled.Contains(c)).ToList();
            if (missing.Count > 0 && !f.TryWrite(level, "cgroup.subtree_control",
                string.Join(" ", missing.Select(c => "+" + c)), out _))
            {
                foreach (var c in missing)
                    if (!f.TryWrite(level, "cgroup.subtree_control", "+" + c, out var e))
                        f.Warn($"{level}/cgroup.subtree_control = +{c}: {Hull.Linux.Errors.Describe(e)} — the {c} " +
                            $"controller will not be available below {level}" +
                            (e == Hull.Linux.Errors.EBUSY ? " (that cgroup has processes of its own; cgroup v2 " +
                                "allows controllers only for cgroups without them)" : ""));
            }
            level += "/" + rel[i];
        }
    }

    /// <summary>Hint for a missing controller file in a v2 cgroup.</summary>
    public static string MissingHint(string dir, string file)
    {
        var controller = file.Split('.')[0];
        var have = CgroupLayout.ReadControllers(dir).ToList();
        if (!have.Contains(controller) && controller != "cgroup")
            return $"the {controller} controller is not enabled for this cgroup (it has: " +
                $"{(have.Count == 0 ? "none" : string.Join(" ", have))}); enable it in the parents' " +
                "cgroup.subtree_control, or remove the setting";
        return $"this kernel has no {file}: remove the setting";
    }
}
