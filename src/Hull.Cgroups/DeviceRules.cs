using Hull.Oci;

namespace Hull.Cgroups;

/// <summary>One device cgroup rule: type 'b' or 'c' ('a' only in the input list), major/minor (-1 = any),
/// access ("rwm" subset).</summary>
public sealed record DeviceRule(char Type, long Major, long Minor, string Access, bool Allow)
{
    public const long Any = -1;

    /// <summary>The kernel's v1 syntax: "c 1:3 rwm", "b *:* m".</summary>
    public string ToV1() =>
        $"{Type} {(Major == Any ? "*" : Major.ToString())}:{(Minor == Any ? "*" : Minor.ToString())} {Access}";

    public bool Matches(char type, long major, long minor) =>
        (Type == 'a' || Type == type) && (Major == Any || Major == major) && (Minor == Any || Minor == minor);

    public override string ToString() => (Allow ? "allow " : "deny ") + ToV1();
}

/// <summary>
/// The device access a cgroup ends up with after applying an OCI linux.resources.devices list in order, the way the
/// v1 devices controller evaluates it: a default (allow or deny everything) plus exceptions to it.
/// <para>cgroup v2 has no devices file: access is checked by a BPF_CGROUP_DEVICE program attached to the cgroup.
/// The engine compiles this rule set into such a program. For a device (type, major, minor, requested access):
/// with <see cref="DefaultAllow"/> false (an allow list) access is granted only if one exception matching the
/// type/major/minor (-1 matches any number) holds every requested bit; with <see cref="DefaultAllow"/> true (a deny
/// list) access is refused if any matching exception holds any requested bit. That is the v1 kernel's rule, and
/// <see cref="IsAllowed"/> implements it, so a compiled program can be tested against it.</para>
/// </summary>
public sealed class DeviceRuleSet
{
    /// <summary>What happens to a device no exception names.</summary>
    public bool DefaultAllow { get; }
    /// <summary>The exceptions to the default, types 'b'/'c' only, access merged per device.</summary>
    public IReadOnlyList<DeviceRule> Exceptions { get; }

    DeviceRuleSet(bool defaultAllow, IReadOnlyList<DeviceRule> exceptions) { DefaultAllow = defaultAllow; Exceptions =
        exceptions; }

    /// <summary>Everything allowed: a new cgroup under a root cgroup.</summary>
    public static readonly DeviceRuleSet AllowAll = new(true, []);

    /// <summary>Whether (type, major, minor) may be used with every access in <paramref name="access"/>.</summary>
    public bool IsAllowed(char type, long major, long minor, string access)
    {
        if (DefaultAllow)
        {
            // Deny list: refused if any exception for the device shares any requested access bit.
            foreach (var e in Exceptions)
                if (e.Matches(type, major, minor) && access.Any(e.Access.Contains)) return false;
            return true;
        }
        // Allow list: permitted only if one exception for the device grants every requested bit.
        foreach (var e in Exceptions)
            if (e.Matches(type, major, minor) && access.All(e.Access.Contains)) return true;
        return false;
    }

    /// <summary>Validates an OCI rule: type a/b/c, access from "rwm", major/minor ≥ -1.</summary>
    public static DeviceRule FromOci(DeviceCgroup d, int index)
    {
        var type = string.IsNullOrEmpty(d.Type) ? 'a' : d.Type.Length == 1 && d.Type[0] is 'a' or 'b' or 'c' ? d.Type[0]
            : throw new CgroupException($"linux.resources.devices[{index}].type \"{d.Type}\" is invalid: use \"a\", " +
                "\"b\" or \"c\"");
        var access = string.IsNullOrEmpty(d.Access) ? "rwm" : d.Access;
        if (access.Any(c => c is not ('r' or 'w' or 'm')) || access.Distinct().Count() != access.Length)
            throw new CgroupException($"linux.resources.devices[{index}].access \"{d.Access}\" is invalid: use " +
                "letters from \"rwm\", each once");
        long major = d.Major ?? DeviceRule.Any, minor = d.Minor ?? DeviceRule.Any;
        if (major < -1 || minor < -1)
            throw new CgroupException($"linux.resources.devices[{index}]: major/minor must be ≥ 0, or -1 / absent " +
                "for any");
        return new DeviceRule(type, major, minor, Normalize(access), d.Allow);
    }

    static string Normalize(string access) => new(access.Distinct().OrderBy(c => "rwm".IndexOf(c)).ToArray());

    /// <summary>Applies <paramref name="devices"/> in order on top of <paramref name="start"/> (default: allow
    /// all).</summary>
    public static DeviceRuleSet Compile(IReadOnlyList<DeviceCgroup>? devices, DeviceRuleSet? start = null)
    {
        start ??= AllowAll;
        var defaultAllow = start.DefaultAllow;
        var ex = new List<DeviceRule>(start.Exceptions);
        for (var i = 0; i < (devices?.Count ?? 0); i++)
        {
            var r = FromOci(devices![i], i);
            if (r.Type == 'a' && r.Major == DeviceRule.Any && r.Minor == DeviceRule.Any && r.Access == "rwm")
            {
                defaultAllow = r.Allow;
                ex.Clear();
                continue;
            }
            foreach (var t in r.Type == 'a' ? "bc" : r.Type.ToString())
            {
                var one = r with { Type = t };
                if (one.Allow == defaultAllow) Remove(ex, one);
                else Add(ex, one);
            }
        }
        return new DeviceRuleSet(defaultAllow, ex);
    }

    // An exception for the same device gains the access bits; a rule with the default's polarity takes bits away.
    static void Add(List<DeviceRule> ex, DeviceRule r)
    {
        var i = ex.FindIndex(e => e.Type == r.Type && e.Major == r.Major && e.Minor == r.Minor);
        var rule = r with { Allow = r.Allow };
        if (i >= 0) ex[i] = ex[i] with { Access = Normalize(ex[i].Access + r.Access) };
        else ex.Add(rule);
    }

    static void Remove(List<DeviceRule> ex, DeviceRule r)
    {
        var i = ex.FindIndex(e => e.Type == r.Type && e.Major == r.Major && e.Minor == r.Minor);
        if (i < 0) return;
        var left = new string(ex[i].Access.Where(c => !r.Access.Contains(c)).ToArray());
        if (left.Length == 0) ex.RemoveAt(i);
        else ex[i] = ex[i] with { Access = left };
    }

    /// <summary>Parses a v1 devices.list (which shows the exceptions only in deny-by-default mode; in allow mode it
    /// shows "a *:* rwm" alone).</summary>
    public static DeviceRuleSet ParseV1List(string text)
    {
        var lines = text.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        if (lines.Any(l => l.Trim() == "a *:* rwm")) return AllowAll;
        var ex = new List<DeviceRule>();
        foreach (var l in lines)
        {
            var sp = l.Trim().Split(' ');
            if (sp.Length != 3) continue;
            var mm = sp[1].Split(':');
            if (mm.Length != 2) continue;
            long Num(string s) => s == "*" ? DeviceRule.Any : long.TryParse(s, out var v) ? v : DeviceRule.Any;
            foreach (var t in sp[0] == "a" ? "bc" : sp[0])
                ex.Add(new DeviceRule(t, Num(mm[0]), Num(mm[1]), Normalize(sp[2]), true));
        }
        return new DeviceRuleSet(false, ex);
    }

    /// <summary>The same default and the same exceptions (order aside).</summary>
    public bool SameAs(DeviceRuleSet o) =>
        DefaultAllow == o.DefaultAllow && Exceptions.Count == o.Exceptions.Count &&
        Exceptions.All(e => o.Exceptions.Any(x => x.Type == e.Type && x.Major == e.Major && x.Minor == e.Minor
            && x.Access == e.Access));

    public override string ToString() =>
        (DefaultAllow ? "allow all" : "deny all")
            + string.Concat(Exceptions.Select(e => (DefaultAllow ? "; deny " : "; allow ") + e.ToV1()));
}
