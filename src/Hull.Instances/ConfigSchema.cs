using System.Globalization;

namespace Hull.Instances;

/// <summary>The instance config keys, their validation (errors name the key and the valid range) and parsing.</summary>
public static class ConfigSchema
{
    public const int MaxCpus = 1024;
    public const long MinMemory = 4L << 20;
    public const long MaxMemory = 16L << 40;
    public const int MaxProcesses = 4194304;
    /// <summary>Size limits of a config (own or expanded): keys, key length, value length (bytes of UTF-8).</summary>
    public const int MaxKeys = 1024, MaxKeyLength = 256, MaxValueLength = 65536;

    public const string CpuKey = "limits.cpu", MemoryKey = "limits.memory", ProcessesKey = "limits.processes",
        AutostartKey = "boot.autostart", EnvironmentPrefix = "environment.", UserPrefix = "user.";

    /// <summary>
    /// The one table of config keys, each with its description: the fixed keys, then the prefixes (a key ending in
    /// ".NAME" stands for any name). Error messages, suggestions and the CLI's help are made from it.
    /// </summary>
    public static readonly (string Key, string Help)[] Keys =
    [
        (CpuKey, $"number of CPUs, a whole number from 1 to {MaxCpus}"),
        (MemoryKey, "memory limit, from 4MiB to 16TiB, e.g. 512MiB or 2GiB (units B, kB, MB, GB, TB, KiB, MiB, GiB, " +
            "TiB)"),
        (ProcessesKey, $"maximum number of processes, a whole number from 1 to {MaxProcesses}"),
        (AutostartKey, "start the instance when hulld starts: true or false"),
        .. AppConfig.Keys,
        .. IdMaps.Keys,
        (EnvironmentPrefix + "NAME", "an environment variable for the instance's processes"),
        (UserPrefix + "NAME", "free-form user metadata"),
    ];

    /// <summary>The keys a user sets (every key but the ones hulld sets itself, volatile.*).</summary>
    static IEnumerable<string> SettableKeys =>
        Keys.Select(k => k.Key).Where(k => !k.StartsWith("volatile.", StringComparison.Ordinal));

    /// <summary>"limits.cpu, ..., environment.&lt;NAME&gt;, user.&lt;NAME&gt;": the keys a user sets, for messages and
    /// help.</summary>
    public static string KeyList => string.Join(", ",
        SettableKeys.Select(k => k.EndsWith(".NAME", StringComparison.Ordinal) ? k[..^4] + "<NAME>" : k));

    /// <summary>Validates one key and value; throws <see cref="InstanceException"/> naming the key and the valid
    /// range.</summary>
    public static void ValidateKey(string key, string value)
    {
        switch (key)
        {
            case CpuKey:
                if (!int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var cpus) || cpus < 1
                    || cpus > MaxCpus)
                    throw new InstanceException($"limits.cpu='{value}' is invalid: use a whole number of CPUs from 1 " +
                        $"to {MaxCpus}");
                return;
            case MemoryKey:
                if (!TryParseSize(value, out var mem) || mem < MinMemory || mem > MaxMemory)
                    throw new InstanceException($"limits.memory='{value}' is invalid: use a size from 4MiB to 16TiB, " +
                        "such as 512MiB or 2GiB");
                return;
            case ProcessesKey:
                if (!int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var procs) || procs < 1
                    || procs > MaxProcesses)
                    throw new InstanceException($"limits.processes='{value}' is invalid: use a whole number from 1 " +
                        $"to {MaxProcesses}");
                return;
            case AutostartKey:
                if (!TryParseBool(value, out _))
                    throw new InstanceException($"boot.autostart='{value}' is invalid: use true or false");
                return;
        }
        if (AppConfig.IsKey(key)) { AppConfig.Validate(key, value); return; }
        if (IdMaps.Keys.Any(k => k.Key == key)) { IdMaps.ValidateKey(key, value); return; }
        if (key.StartsWith(EnvironmentPrefix, StringComparison.Ordinal))
        {
            var name = key[EnvironmentPrefix.Length..];
            if (!IsEnvName(name))
                throw new InstanceException($"config key '{key}' is invalid: an environment variable name has " +
                    "letters, digits and '_' and does not start with a digit");
            if (value.Contains('\0')) throw new InstanceException($"{key}: the value must not contain NUL bytes");
            return;
        }
        if (key.StartsWith(UserPrefix, StringComparison.Ordinal) && key.Length > UserPrefix.Length) return;
        if (IsNicVolatile(key))
        {
            if (key.EndsWith(".hwaddr", StringComparison.Ordinal) ? !NicDevice.IsUnicastMac(value)
                : !System.Net.IPAddress.TryParse(value, out _))
                throw new InstanceException($"{key}='{value}' is invalid: hulld keeps a NIC's MAC and address here; " +
                    "remove the key to get new ones");
            return;
        }
        var hint = Suggest(key);
        throw new InstanceException($"unknown config key '{key}'{(hint is null ? "" : $" (did you mean {hint}?)")}: " +
            $"valid keys are {KeyList}");
    }

    public static void Validate(IReadOnlyDictionary<string, string> config)
    {
        if (config.Count > MaxKeys)
            throw new InstanceException(
                $"the config has {config.Count} keys, more than the limit of {MaxKeys}: keep fewer keys");
        foreach (var (k, v) in config)
        {
            if (k.Length > MaxKeyLength)
                throw new InstanceException(
                    $"config key '{k[..40]}...' is {k.Length} characters long: keys are at most {MaxKeyLength}");
            if (System.Text.Encoding.UTF8.GetByteCount(v) > MaxValueLength)
                throw new InstanceException($"the value of config key '{k}' is larger than " +
                    $"{MaxValueLength / 1024} KiB, the limit for a config value: store large data in a file " +
                    "(hull file push)");
            ValidateKey(k, v);
        }
        IdMaps.Validate(config);
    }

    static string? Suggest(string key)
    {
        var fixedKeys = SettableKeys.Where(k => !k.EndsWith(".NAME", StringComparison.Ordinal));
        return fixedKeys.Select(k => (k, d: Distance(k, key))).Where(x => x.d <= 3).OrderBy(x => x.d).Select(x =>
            x.k).FirstOrDefault();
    }

    static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (var i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (var j = 0; j <= b.Length; j++) d[0, j] = j;
        for (var i = 1; i <= a.Length; i++)
            for (var j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1),
                    d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }

    /// <summary>volatile.DEVICE.hwaddr and volatile.DEVICE.ipv4.address: what hulld keeps for a NIC.</summary>
    public static bool IsNicVolatile(string key) => key.StartsWith("volatile.", StringComparison.Ordinal)
        && (key.EndsWith(".hwaddr", StringComparison.Ordinal)
            || key.EndsWith(".ipv4.address", StringComparison.Ordinal))
        && key.Length > "volatile..hwaddr".Length;

    public static bool IsEnvName(string name) =>
        name.Length > 0 && !char.IsAsciiDigit(name[0]) && name.All(c => char.IsAsciiLetterOrDigit(c) || c == '_');

    /// <summary>Instance, profile, snapshot and device names: letters, digits, '-', '_', '.'; starting with a letter or
    /// digit.</summary>
    public static bool IsValidName(string name, int max = 63) =>
        name.Length > 0 && name.Length <= max && char.IsAsciiLetterOrDigit(name[0]) &&
        name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.') && name != "." && name != "..";

    public static bool TryParseBool(string v, out bool b)
    {
        switch (v.ToLowerInvariant())
        {
            case "true" or "1" or "yes" or "on": b = true; return true;
            case "false" or "0" or "no" or "off": b = false; return true;
            default: b = false; return false;
        }
    }

    /// <summary>Formats a size as TryParseSize reads it back: "4MiB", "64GiB", "1.5GiB", "100B".</summary>
    public static string FormatSize(long bytes)
    {
        (string Unit, long Mult)[] units = [("TiB", 1L << 40), ("GiB", 1L << 30), ("MiB", 1L << 20), ("KiB", 1L << 10)];
        foreach (var (unit, mult) in units)
            if (bytes >= mult)
                return (bytes / (decimal)mult).ToString("0.##", CultureInfo.InvariantCulture) + unit;
        return bytes.ToString(CultureInfo.InvariantCulture) + "B";
    }

    /// <summary>Parses "512MiB", "2GB", "1048576", "4 GiB" into bytes.</summary>
    public static bool TryParseSize(string text, out long bytes)
    {
        bytes = 0;
        var t = text.Trim();
        var i = 0;
        while (i < t.Length && (char.IsAsciiDigit(t[i]) || t[i] == '.')) i++;
        if (i == 0 || !decimal.TryParse(t[..i], NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture,
            out var n)) return false;
        var unit = t[i..].Trim();
        long mult = unit switch
        {
            "" or "B" => 1,
            "kB" or "KB" => 1000, "MB" => 1000_000, "GB" => 1000_000_000, "TB" => 1000_000_000_000,
            "KiB" or "K" or "k" => 1L << 10, "MiB" or "M" => 1L << 20, "GiB" or "G" => 1L << 30,
            "TiB" or "T" => 1L << 40,
            _ => 0,
        };
        if (mult == 0) return false;
        var v = n * mult;
        if (v > long.MaxValue || v != decimal.Truncate(v)) return false;
        bytes = (long)v;
        return true;
    }

    /// <summary>Merges profiles in order, then the instance's own config: later wins. A device named the same replaces
    /// the earlier one whole.</summary>
    public static (Dictionary<string, string> Config, Dictionary<string, Dictionary<string, string>> Devices) Expand(
        IEnumerable<(IReadOnlyDictionary<string, string> Config, IReadOnlyDictionary<string, Dictionary<string,
            string>> Devices)> layers)
    {
        var config = new Dictionary<string, string>(StringComparer.Ordinal);
        var devices = new Dictionary<string, Dictionary<string, string>>(StringComparer.Ordinal);
        foreach (var (c, d) in layers)
        {
            foreach (var (k, v) in c) config[k] = v;
            foreach (var (k, v) in d) devices[k] = new Dictionary<string, string>(v, StringComparer.Ordinal);
        }
        return (config, devices);
    }

    public static InstanceLimits ParseLimits(IReadOnlyDictionary<string, string> config) => new()
    {
        Cpus = config.TryGetValue(CpuKey, out var c)
            && int.TryParse(c, CultureInfo.InvariantCulture, out var ci) ? ci : null,
        MemoryBytes = config.TryGetValue(MemoryKey, out var m) && TryParseSize(m, out var mb) ? mb : null,
        Processes = config.TryGetValue(ProcessesKey, out var p)
            && int.TryParse(p, CultureInfo.InvariantCulture, out var pi) ? pi : null,
    };

    public static Dictionary<string, string> ParseEnvironment(IReadOnlyDictionary<string, string> config) =>
        config.Where(kv => kv.Key.StartsWith(EnvironmentPrefix, StringComparison.Ordinal))
            .ToDictionary(kv => kv.Key[EnvironmentPrefix.Length..], kv => kv.Value, StringComparer.Ordinal);

    public static bool Autostart(IReadOnlyDictionary<string, string> config) =>
        config.TryGetValue(AutostartKey, out var v) && TryParseBool(v, out var b) && b;
}
