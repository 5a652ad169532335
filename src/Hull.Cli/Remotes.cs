using Hull.Sdk;

namespace Hull.Cli;

/// <summary>
/// Named hullds ("remotes"), as in Incus: `hull remote add NAME ADDRESS`, then `NAME:instance` in copy/move and
/// `--remote NAME` on any verb. The list lives in $HULL_CONFIG_DIR/remotes (default ~/.config/hull/remotes), one
/// "NAME ADDRESS" per line; a "default NAME" line picks the remote used when none is named. "local" is always this
/// host's hulld ($HULL_SOCKET or /run/hull/hulld.sock). An address is unix:PATH (or an absolute socket path): another
/// hulld on this host, or one reached through a forwarded socket (ssh -L /tmp/h.sock:/run/hull/hulld.sock host).
/// </summary>
public sealed class Remotes
{
    public const string Local = "local";

    public Dictionary<string, string> Entries { get; } = new(StringComparer.Ordinal);
    public string Default { get; set; } = Local;
    public string FilePath { get; }

    Remotes(string path) => FilePath = path;

    public static string DefaultPath
    {
        get
        {
            if (Environment.GetEnvironmentVariable("HULL_CONFIG_DIR") is { Length: > 0 } d) return Path.Combine(d,
                "remotes");
            var xdg = Environment.GetEnvironmentVariable("XDG_CONFIG_HOME") is { Length: > 0 } x ? x
                : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".config");
            return Path.Combine(xdg, "hull", "remotes");
        }
    }

    public static Remotes Load(string? path = null)
    {
        var r = new Remotes(path ?? DefaultPath);
        if (!File.Exists(r.FilePath)) return r;
        var n = 0;
        foreach (var raw in File.ReadLines(r.FilePath))
        {
            n++;
            var line = raw.Trim();
            if (line.Length == 0 || line[0] == '#') continue;
            var parts = line.Split((char[]?)null, 2, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length != 2) throw new CliException(
                $"{r.FilePath} line {n} is not 'NAME ADDRESS' or 'default NAME': fix or remove it");
            if (parts[0] == "default") r.Default = parts[1];
            else r.Entries[parts[0]] = parts[1];
        }
        return r;
    }

    public void Save()
    {
        Directory.CreateDirectory(Path.GetDirectoryName(FilePath)!);
        var lines = new List<string> { "# hull remotes: NAME ADDRESS (unix:PATH); 'default NAME' picks the remote " +
            "used when none is named" };
        if (Default != Local) lines.Add("default " + Default);
        lines.AddRange(Entries.OrderBy(e => e.Key, StringComparer.Ordinal).Select(e => $"{e.Key} {e.Value}"));
        var tmp = FilePath + ".tmp";
        File.WriteAllLines(tmp, lines);
        File.Move(tmp, FilePath, overwrite: true);
    }

    /// <summary>The socket path an address names; a clear error for anything else.</summary>
    public static string SocketOf(string address)
    {
        var path = address.StartsWith("unix:", StringComparison.Ordinal) ? address["unix:".Length..] : address;
        if (path.StartsWith("//", StringComparison.Ordinal)) path = path[2..]; // unix:///run/hull/hulld.sock
        if (!Path.IsPathRooted(path))
            throw new CliException($"remote address '{address}' is not supported: use " +
                "unix:/absolute/path/to/hulld.sock (forward a remote host's socket with ssh -L to reach it)");
        return path;
    }

    public static void ValidateName(string name)
    {
        if (name.Length == 0 || name.Length > 64
            || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.')
            || !char.IsAsciiLetterOrDigit(name[0]))
            throw new CliException($"remote name '{name}' is invalid: use letters, digits, '-', '_' or '.', starting " +
                "with a letter or digit");
    }

    /// <summary>The socket of a remote by name (null name = the default remote); null for "local" (this host's default
    /// socket).</summary>
    public string? SocketFor(string? name)
    {
        name ??= Default;
        if (name == Local) return null;
        if (!Entries.TryGetValue(name, out var addr))
            throw new CliException($"remote '{name}' is not known: 'hull remote list' shows them; add it with 'hull " +
                $"remote add {name} unix:/path/to/hulld.sock'");
        return SocketOf(addr);
    }

    /// <summary>Splits "remote:name" (either part may be empty: "remote:" keeps the name, "name" is the default
    /// remote).</summary>
    public static (string? Remote, string Name) Split(string spec)
    {
        var i = spec.IndexOf(':');
        return i < 0 ? (null, spec) : (spec[..i], spec[(i + 1)..]);
    }

    public HullClient Client(string? remote) => new(SocketFor(remote));
}
