using System.Globalization;

namespace Hull.Instances;

/// <summary>
/// The host ids an unprivileged container's ids 0..Size-1 map to: uid n is host uid UidBase+n, gid n host gid
/// GidBase+n.
/// </summary>
public sealed record IdMap(long UidBase, long GidBase, long Size)
{
    /// <summary>The form kept in an instance dir and compared: "UIDBASE GIDBASE SIZE".</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{UidBase} {GidBase} {Size}");

    public static IdMap? Parse(string text)
    {
        var p = text.Trim().Split(' ');
        return p.Length == 3 && long.TryParse(p[0], CultureInfo.InvariantCulture, out var u)
            && long.TryParse(p[1], CultureInfo.InvariantCulture, out var g)
                && long.TryParse(p[2], CultureInfo.InvariantCulture, out var n)
            ? new IdMap(u, g, n) : null;
    }

    /// <summary>The container's view of host uid <paramref name="host"/>, or null if it is not mapped.</summary>
    public long? UidIn(long host) => host >= UidBase && host < UidBase + Size ? host - UidBase : null;
    public long? GidIn(long host) => host >= GidBase && host < GidBase + Size ? host - GidBase : null;
}

/// <summary>
/// The id ranges of unprivileged containers (as Incus): the host ids root may hand out are root's lines in /etc/subuid
/// and /etc/subgid (the first of each), or <see cref="DefaultStart"/>+<see cref="DefaultCount"/> where there are none.
/// An instance gets <see cref="DefaultSize"/> ids: all instances share the first block of the range, except those with
/// security.idmap.isolated=true (a block of their own, allocated by hulld and kept as volatile.idmap.base) or with
/// security.idmap.base (set by the user); security.privileged=true maps the host's ids as they are.
/// </summary>
public static class IdMaps
{
    public const string PrivilegedKey = "security.privileged";
    public const string IsolatedKey = "security.idmap.isolated";
    public const string BaseKey = "security.idmap.base";
    public const string SizeKey = "security.idmap.size";
    /// <summary>The first host uid of an isolated instance's own block, allocated by hulld.</summary>
    public const string AllocatedKey = "volatile.idmap.base";

    public const long DefaultStart = 1_000_000, DefaultCount = 1_000_000_000, DefaultSize = 65536;

    public static readonly (string Key, string Help)[] Keys =
    [
        (PrivilegedKey, "run the container with the host's ids (container root is host root): true or false (default " +
            "false)"),
        (IsolatedKey, "give the container a uid/gid range of its own instead of the shared one: true or false"),
        (BaseKey, "the first host uid and gid of the container's range (inside root's /etc/subuid and /etc/subgid " +
            "range)"),
        (SizeKey, $"how many ids the container's range has (at least {DefaultSize}, default {DefaultSize})"),
        (AllocatedKey, "set by hulld: the first host uid of an isolated container's own range"),
    ];

    /// <summary>The host range root may map (/etc/subuid or /etc/subgid, root's first line, else the
    /// default).</summary>
    public readonly record struct HostRange(long Start, long Count, string Source)
    {
        public long End => Start + Count;
        public override string ToString() => string.Create(CultureInfo.InvariantCulture,
            $"{Start}-{End - 1} ({Source})");
    }

    /// <summary>Overridable for tests: the files the ranges are read from.</summary>
    public static string SubUidFile { get; set; } = "/etc/subuid";
    public static string SubGidFile { get; set; } = "/etc/subgid";

    public static HostRange Uids => Read(SubUidFile);
    public static HostRange Gids => Read(SubGidFile);

    static HostRange Read(string file)
    {
        if (File.Exists(file))
        {
            foreach (var line in File.ReadLines(file))
            {
                var p = line.Trim().Split(':');
                if (p.Length == 3 && p[0] is "root" or "0"
                    && long.TryParse(p[1], CultureInfo.InvariantCulture, out var s)
                    && long.TryParse(p[2], CultureInfo.InvariantCulture, out var c) && s > 0 && c > 0)
                    return new HostRange(s, c, file);
            }
        }
        return new HostRange(DefaultStart, DefaultCount, $"the default range; {file} has no line for root");
    }

    static bool Bool(IReadOnlyDictionary<string, string> c, string key) =>
        c.TryGetValue(key, out var v) && ConfigSchema.TryParseBool(v, out var b) && b;

    static long? Number(IReadOnlyDictionary<string, string> c, string key) =>
        c.TryGetValue(key, out var v) && long.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out var n)
            ? n : null;

    public static bool Privileged(IReadOnlyDictionary<string, string> config) => Bool(config, PrivilegedKey);
    public static bool Isolated(IReadOnlyDictionary<string, string> config) =>
        !Privileged(config) && Bool(config, IsolatedKey) && Number(config, BaseKey) is null;
    public static long Size(IReadOnlyDictionary<string, string> config) => Number(config, SizeKey) ?? DefaultSize;

    /// <summary>The map an instance with this (expanded) config runs with; null for a privileged one.</summary>
    public static IdMap? For(IReadOnlyDictionary<string, string> config)
    {
        if (Privileged(config)) return null;
        var size = Size(config);
        var (uids, gids) = (Uids, Gids);
        if (Number(config, BaseKey) is { } b) return new IdMap(b, b, size);
        if (Isolated(config))
        {
            var a = Number(config, AllocatedKey)
                ?? throw new InstanceException($"the isolated id range of this instance ({IsolatedKey}=true) " +
                    $"was never allocated: set {IsolatedKey} again", 500);
            return new IdMap(a, gids.Start + (a - uids.Start), size);
        }
        return new IdMap(uids.Start, gids.Start, size);
    }

    /// <summary>Checks one key (see <see cref="ConfigSchema.ValidateKey"/>).</summary>
    public static void ValidateKey(string key, string value)
    {
        switch (key)
        {
            case PrivilegedKey or IsolatedKey:
                if (!ConfigSchema.TryParseBool(value, out _)) throw new InstanceException(
                    $"{key}='{value}' is invalid: use true or false");
                return;
            case SizeKey:
                if (!long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n < DefaultSize
                    || n > Math.Min(Uids.Count, Gids.Count))
                    throw new InstanceException($"{key}='{value}' is invalid: " +
                        $"use a whole number from {DefaultSize} to {Math.Min(Uids.Count, Gids.Count)} (the ids root " +
                            $"may map: uids {Uids}, gids {Gids})");
                return;
            case AllocatedKey:
                if (!long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var a) || a < Uids.Start
                    || a - Uids.Start + DefaultSize > Math.Min(Uids.Count, Gids.Count))
                    throw new InstanceException($"{key}='{value}' is invalid: it is set by hulld; " +
                        $"remove it and hulld allocates a range again");
                return;
            case BaseKey:
                if (!long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var b)
                    || !Inside(b, DefaultSize))
                    throw new InstanceException($"{key}='{value}' is invalid: " +
                        $"use a host id inside the ranges root may map (uids {Uids}, gids {Gids}), " +
                        $"with room for {DefaultSize} ids after it");
                return;
        }
    }

    /// <summary>True if host ids <paramref name="b"/>..+<paramref name="size"/> are inside both ranges (an explicit
    /// base
    /// is the first uid and the first gid).</summary>
    static bool Inside(long b, long size) =>
        b >= Uids.Start && b + size <= Uids.End && b >= Gids.Start && b + size <= Gids.End;

    /// <summary>Checks the keys together (an expanded config): base and size inside the allowed ranges.</summary>
    public static void Validate(IReadOnlyDictionary<string, string> config)
    {
        if (Number(config, BaseKey) is { } b && !Inside(b, Size(config)))
            throw new InstanceException($"{BaseKey}={b} with {SizeKey}={Size(config)} does not fit inside the ids " +
                $"root may map (uids {Uids}, gids {Gids}): choose a base and size inside them");
    }

    /// <summary>
    /// Picks the first free block of <paramref name="size"/> ids for an isolated instance: outside the shared block
    /// and every range in <paramref name="taken"/> (other instances' maps). Null if the range is full.
    /// </summary>
    public static long? Allocate(long size, IEnumerable<IdMap> taken)
    {
        var uids = Uids;
        var busy = taken.Select(t => (Start: t.UidBase, End: t.UidBase + t.Size)).Append(
            (Start: uids.Start, End: uids.Start + DefaultSize))
            .OrderBy(r => r.Start).ToList();
        for (var s = uids.Start + DefaultSize; s + size <= uids.End && s - uids.Start + Gids.Start + size <= Gids.End;)
        {
            var clash = busy.FirstOrDefault(r => r.Start < s + size && s < r.End);
            if (clash == default) return s;
            // Past the clash, rounded up to a whole block.
            s = uids.Start + (clash.End - uids.Start + DefaultSize - 1) / DefaultSize * DefaultSize;
        }
        return null;
    }
}
