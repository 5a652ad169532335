using System.Text;
using System.Text.Json;
using Hull.Api;
using Hull.Linux;

namespace Hull.Instances;

/// <summary>
/// The config keys of application containers and of a container's own command:
/// app.command (the program to run, a JSON array of strings), app.share (more host directories shared read-only),
/// app.system (the host system directories shared read-only with an instance of the built-in "host" image), and the
/// run settings an OCI image's author chose, copied from the image at launch and overridable as in Podman:
/// oci.entrypoint (run before app.command), oci.cwd, oci.user and oci.stopsignal.
/// </summary>
public static class AppConfig
{
    public const string CommandKey = "app.command", ShareKey = "app.share", SystemKey = "app.system",
        EntrypointKey = "oci.entrypoint", CwdKey = "oci.cwd", UserKey = "oci.user", StopSignalKey = "oci.stopsignal";

    /// <summary>The host directories an app container shares by default (those absent on the host are
    /// skipped).</summary>
    public static readonly string[] DefaultSystem =
        ["/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc"];

    public static readonly (string Key, string Help)[] Keys =
    [
        (CommandKey, "the container's command instead of the image's init (after oci.entrypoint if set; the " +
            "image's Cmd for an OCI image), a JSON array such as [\"/usr/bin/python3\",\"-m\",\"http.server\"]"),
        (ShareKey, "more host directories shared read-only with the container, comma-separated absolute paths, e.g. " +
            "/opt/tool,/srv/data"),
        (SystemKey, "for the host image: the host system directories shared read-only (default " +
            $"{string.Join(",", DefaultSystem)}; none: share none)"),
        (EntrypointKey, "the program app.command's arguments are given to (an OCI image's Entrypoint), a JSON " +
            "array; [] for none"),
        (CwdKey, "the working directory of the container's command, an absolute path (an OCI image's WorkingDir)"),
        (UserKey, "the user the container's command runs as: NAME, UID, NAME:GROUP or UID:GID, names looked up in " +
            "the container's /etc/passwd and /etc/group (an OCI image's User)"),
        (StopSignalKey, "the signal hull stop sends the container's command, e.g. SIGTERM, SIGQUIT or 3 (an OCI " +
            "image's StopSignal)"),
    ];

    public static bool IsKey(string key) =>
        key is CommandKey or ShareKey or SystemKey or EntrypointKey or CwdKey or UserKey or StopSignalKey;

    public static void Validate(string key, string value)
    {
        switch (key)
        {
            case CommandKey: ParseCommand(value); return;
            case EntrypointKey: ParseCommand(value, key, allowEmpty: true); return;
            case ShareKey: ParseDirs(key, value); return;
            case SystemKey: if (value.Trim() != "none") ParseDirs(key, value); return;
            case CwdKey:
                if (!value.StartsWith('/') || value.Contains('\0'))
                    throw new InstanceException($"{CwdKey}='{value}' is invalid: give an absolute path such as /app");
                return;
            case UserKey: ParseUser(value); return;
            case StopSignalKey: ParseSignal(value); return;
        }
    }

    /// <summary>A user as oci.user and exec's user take it: the user (name or id) and the group (name or id), if
    /// given.</summary>
    public static (string User, string? Group) ParseUser(string value)
    {
        var parts = value.Split(':');
        if (parts.Length > 2 || parts.Any(p => p.Length == 0 || p.Contains('\0') || p.Contains('\n')))
            throw new InstanceException($"user '{value}' is invalid: give NAME, UID, NAME:GROUP or UID:GID");
        foreach (var p in parts)
            if (uint.TryParse(p, out var id) && id == uint.MaxValue)
                throw new InstanceException($"user '{value}': 4294967295 (-1) is not a user or group id: give one " +
                    "from 0 to 4294967294");
        return (parts[0], parts.Length > 1 ? parts[1] : null);
    }

    public static int ParseSignal(string value) => Signals.TryParse(value, out var s) ? s
        : throw new InstanceException($"{StopSignalKey}='{value}' is invalid: give a signal name or number such as " +
            "SIGTERM, SIGQUIT or 15");

    /// <summary>Parses app.command (or another command key); throws <see cref="InstanceException"/> naming the key and
    /// the expected form.</summary>
    public static List<string> ParseCommand(string value, string key = CommandKey, bool allowEmpty = false)
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
                if (s.Contains('\0')) throw new InstanceException($"{key}: an argument contains a NUL byte");
                list.Add(s);
            }
        }
        catch (JsonException) { throw new InstanceException(
            $"{key}='{value}' is invalid: use a JSON array of strings such as [\"/bin/sh\",\"-c\",\"echo " +
            "hi\"]"); }
        if (allowEmpty && list.Count == 0) return list;
        if (list.Count == 0 || list[0].Length == 0) throw new InstanceException(
            $"{key} is empty: name a program, e.g. [\"/bin/sh\"]");
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

    /// <summary>What the container runs instead of its image's init: oci.entrypoint followed by app.command; null
    /// when neither is set.</summary>
    public static List<string>? Process(IReadOnlyDictionary<string, string> config)
    {
        var entrypoint = config.TryGetValue(EntrypointKey, out var e) ? ParseCommand(e, EntrypointKey, true) : null;
        var command = Command(config);
        if (entrypoint is null && command is null) return null;
        List<string> args = [.. entrypoint ?? [], .. command ?? []];
        if (args.Count == 0 || args[0].Length == 0) throw new InstanceException(
            $"{EntrypointKey} is empty and {CommandKey} is not set: the container has nothing to run; set one of them");
        return args;
    }

    /// <summary>
    /// The keys a launch from an OCI image adds to the instance's own config, from the image's run settings, for
    /// each setting the request does not give itself (as Podman: a request's command replaces the image's Cmd, its
    /// entrypoint replaces Entrypoint and drops Cmd, its environment.NAME wins over the image's NAME).
    /// </summary>
    public static Dictionary<string, string> FromImage(ImageRunConfig run, IReadOnlyDictionary<string, string> given)
    {
        var add = new Dictionary<string, string>(StringComparer.Ordinal);
        var ownEntrypoint = given.ContainsKey(EntrypointKey);
        if (!ownEntrypoint && run.Entrypoint is { Count: > 0 } ep) add[EntrypointKey] = ConfigValues.JsonArray(ep);
        if (!ownEntrypoint && !given.ContainsKey(CommandKey) && run.Cmd is { Count: > 0 } cmd)
            add[CommandKey] = ConfigValues.JsonArray(cmd);
        if (run.WorkingDir is { } wd && !given.ContainsKey(CwdKey)) add[CwdKey] = wd;
        if (run.User is { } user && !given.ContainsKey(UserKey)) add[UserKey] = user;
        if (run.StopSignal is { } sig && !given.ContainsKey(StopSignalKey)) add[StopSignalKey] = sig;
        foreach (var kv in run.Env ?? [])
        {
            var eq = kv.IndexOf('=');
            var name = eq < 0 ? kv : kv[..eq];
            if (!ConfigSchema.IsEnvName(name)) throw new InstanceException(
                $"the image sets environment variable '{name}', a name Hull cannot carry: the image is malformed");
            var key = ConfigSchema.EnvironmentPrefix + name;
            if (!given.ContainsKey(key)) add[key] = eq < 0 ? "" : kv[(eq + 1)..];
        }
        return add;
    }

    public static List<string> Shares(IReadOnlyDictionary<string, string> config) =>
        config.TryGetValue(ShareKey, out var v) ? ParseDirs(ShareKey, v) : [];

    public static List<string> System(IReadOnlyDictionary<string, string> config) =>
        !config.TryGetValue(SystemKey, out var v) ? [.. DefaultSystem] : v.Trim() == "none" ? []
            : ParseDirs(SystemKey, v);
}
