using System.Text.Json;
using Hull.Oci;

namespace Hull.Containers;

/// <summary>Reads a bundle's config.json and checks it, with errors that name the field and the fix.</summary>
public static class SpecLoader
{
    public static Spec LoadBundle(string bundle) => LoadBundle(bundle, out _);

    /// <summary>Reads and checks bundle/config.json; <paramref name="raw"/> is the file as read.</summary>
    public static Spec LoadBundle(string bundle, out byte[] raw)
    {
        if (!Directory.Exists(bundle))
            throw new InvalidSpecException($"bundle directory {bundle} does not exist: pass --bundle with the " +
                "directory that holds config.json");
        var path = Path.Combine(bundle, "config.json");
        if (!File.Exists(path))
            throw new InvalidSpecException($"{path} does not exist: create it with 'hull-oci spec' in the bundle " +
                "directory");
        raw = File.ReadAllBytes(path);
        var spec = Parse(raw, path);
        SpecValidator.Validate(spec, bundle);
        return spec;
    }

    public static Spec Parse(string json, string what) => Parse(System.Text.Encoding.UTF8.GetBytes(json), what);

    public static Spec Parse(byte[] json, string what)
    {
        // The direct reader first; the serializer for what it does not accept (and for the error message).
        if (SpecReader.TryRead(json) is { } fast) return fast;
        try
        {
            return JsonSerializer.Deserialize(json, OciJson.Default.Spec)
                ?? throw new InvalidSpecException($"{what}: the file is empty (null); it must be a JSON object");
        }
        catch (JsonException e)
        {
            var where = e.Path is { Length: > 0 } p ? $" at {p}" : "";
            var line = e.LineNumber is { } l ? $" (line {l + 1})" : "";
            throw new InvalidSpecException($"{what}: invalid JSON{where}{line}: {Simplify(e.Message)}");
        }
    }

    public static Hull.Oci.Process ParseProcess(string json, string what)
    {
        try
        {
            return JsonSerializer.Deserialize(json, OciJson.Default.Process)
                ?? throw new InvalidSpecException($"{what}: the file is empty (null); it must be a JSON object");
        }
        catch (JsonException e)
        {
            var where = e.Path is { Length: > 0 } p ? $" at {p}" : "";
            throw new InvalidSpecException($"{what}: invalid JSON{where}: {Simplify(e.Message)}");
        }
    }

    static string Simplify(string message)
    {
        // System.Text.Json appends "Path: ... | LineNumber: ..." which we already report.
        var i = message.IndexOf(" Path:", StringComparison.Ordinal);
        return i > 0 ? message[..i] : message;
    }
}
