namespace Hull.Oci.Cli;

/// <summary>
/// runc-style arguments: "--flag value", "--flag=value", "-f value", boolean flags, positional arguments, and "--"
/// ending the flags. Flags are declared per verb so that unknown ones get a clear error.
/// </summary>
public sealed class Args
{
    readonly Dictionary<string, string?> _values = new(StringComparer.Ordinal);
    public List<string> Positional { get; } = [];
    public List<string> Repeated(string name) => _multi.TryGetValue(name, out var l) ? l : [];
    readonly Dictionary<string, List<string>> _multi = new(StringComparer.Ordinal);

    public static Args Parse(IReadOnlyList<string> argv, string verb, string[] valueFlags, string[] boolFlags,
        bool stopAtFirstPositionalAfter = false, int positionalBeforeStop = 1)
    {
        var a = new Args();
        for (var i = 0; i < argv.Count; i++)
        {
            var t = argv[i];
            if (t == "--") { a.Positional.AddRange(argv.Skip(i + 1)); break; }
            if (t.Length > 1 && t[0] == '-' && !(stopAtFirstPositionalAfter
                && a.Positional.Count >= positionalBeforeStop))
            {
                var name = t.TrimStart('-');
                string? value = null;
                var eq = name.IndexOf('=');
                if (eq >= 0) { value = name[(eq + 1)..]; name = name[..eq]; }
                if (valueFlags.Contains(name))
                {
                    if (value is null)
                    {
                        if (i + 1 >= argv.Count) throw new UsageException($"{verb}: flag --{name} needs a value");
                        value = argv[++i];
                    }
                    a._values[name] = value;
                    if (!a._multi.TryGetValue(name, out var l)) a._multi[name] = l = [];
                    l.Add(value);
                }
                else if (boolFlags.Contains(name))
                    a._values[name] = value ?? "true";
                else throw new UsageException($"{verb}: unknown flag {t} (see hull-oci {verb} --help)");
                continue;
            }
            a.Positional.Add(t);
        }
        return a;
    }

    public string? Get(string name) => _values.TryGetValue(name, out var v) ? v : null;
    public bool Has(string name) => _values.TryGetValue(name, out var v) && v is not ("false" or "0");
    public int GetInt(string name, int def)
    {
        var v = Get(name);
        if (v is null) return def;
        return int.TryParse(v, out var n) && n >= 0 ? n
            : throw new UsageException($"--{name} must be a non-negative number, not \"{v}\"");
    }
}

public sealed class UsageException(string message) : Exception(message);
