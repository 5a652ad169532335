using System.Text.Json;

namespace Hull.Instances;

/// <summary>
/// The config keys of application containers and of a container's own command:
/// app.command (the program to run, a JSON array of strings), app.share (more host directories shared read-only) and
/// app.system (the host system directories shared read-only with an instance of the built-in "host" image).
/// </summary>
public static class AppConfig
{
    public const string CommandKey = "app.command", ShareKey = "app.share", SystemKey = "app.system";

    /// <summary>The host directories an app container shares by default (those absent on the host are
    /// skipped).</summary>
    public static readonly string[] DefaultSystem =
        ["/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc"];

    public static readonly (string Key, string Help)[] Keys =
    [
        (CommandKey, "the container's command instead of the image's init, a JSON array such as " +
            "[\"/usr/bin/python3\",\"-m\",\"http.server\"]"),
        (ShareKey, "more host directories shared read-only with the container, comma-separated absolute paths, e.g. " +
            "/opt/tool,/srv/data"),
        (SystemKey, "for the host image: the host system directories shared read-only (default " +
            $"{string.Join(",", DefaultSystem)}; none: share none)"),
    ];

    public static bool IsKey(string key) => key is CommandKey or ShareKey or SystemKey;

    public static void Validate(string key, string value)
    {
        switch (key)
        {
            case CommandKey: ParseCommand(value); return;
            case ShareKey: ParseDirs(key, value); return;
            case SystemKey: if (value.Trim() != "none") ParseDirs(key, value); return;
        }
    }

    /// <summary>Parses app.command; throws <see cref="InstanceException"/> naming the key and the expected
    /// form.</summary>
    public static List<string> ParseCommand(string value)
    {
        var list = new List<string>();
        try
        {
            using var doc = JsonDocument.Parse(value);
            if (doc.RootElement.ValueKind != JsonValueKind.Array) throw new JsonException();
            foreach (var e in doc.RootElement.EnumerateArray())
            {
                if (e.ValueKind != JsonValueKind.String) throw new JsonException();
                var s = e.GetString()!;
                if (s.Contains('\0')) throw new InstanceException($"{CommandKey}: an argument contains a NUL byte");
                list.Add(s);
            }
        }
        catch (JsonException) { throw new InstanceException(
            $"{CommandKey}='{value}' is invalid: use a JSON array of strings such as [\"/bin/sh\",\"-c\",\"echo " +
            "hi\"]"); }
        if (list.Count == 0 || list[0].Length == 0) throw new InstanceException(
            $"{CommandKey} is empty: name a program, e.g. [\"/bin/sh\"]");
        return list;
    }

    /// <summary>Parses a comma-separated list of absolute host directories.</summary>
    public static List<string> ParseDirs(string key, string value)
    {
        var dirs = new List<string>();
        foreach (var raw in value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!raw.StartsWith('/') || raw.Split('/').Any(p => p is "." or "..") || raw.Contains('\0'))
                throw new InstanceException($"{key}: '{raw}' is not an absolute path without . or .. parts: write " +
                    "host directories as /opt/tool");
            var d = "/" + string.Join('/', raw.Split('/', StringSplitOptions.RemoveEmptyEntries));
            if (d == "/") throw new InstanceException(
                $"{key}: the host's / cannot be shared; name its directories instead");
            if (!dirs.Contains(d)) dirs.Add(d);
        }
        return dirs;
    }

    public static List<string>? Command(IReadOnlyDictionary<string, string> config) =>
        config.TryGetValue(CommandKey, out var v) ? ParseCommand(v) : null;

    public static List<string> Shares(IReadOnlyDictionary<string, string> config) =>
        config.TryGetValue(ShareKey, out var v) ? ParseDirs(ShareKey, v) : [];

    public static List<string> System(IReadOnlyDictionary<string, string> config) =>
        !config.TryGetValue(SystemKey, out var v) ? [.. DefaultSystem] : v.Trim() == "none" ? []
            : ParseDirs(SystemKey, v);
}
