using System.Net;

namespace Hull.Registry;

/// <summary>
/// An image reference as docker and podman read it: [host[:port]/]path[:tag][@digest]. The first path component is a
/// registry host if it has a '.' or ':' or is "localhost"; without one the registry is docker.io and a one-component
/// path gets the "library/" prefix. Without a tag or digest the tag is "latest".
/// </summary>
public sealed record ImageReference
{
    public const string DockerHub = "docker.io";

    /// <summary>The registry as written (host or host:port), docker.io when none was given.</summary>
    public required string Registry { get; init; }
    /// <summary>The repository path inside the registry, e.g. "library/busybox".</summary>
    public required string Repository { get; init; }
    public string? Tag { get; init; }
    /// <summary>A digest ("sha256:HEX") if the reference pins one.</summary>
    public string? Digest { get; init; }

    /// <summary>The host:port the API is served on (docker.io is served by registry-1.docker.io).</summary>
    public string ApiHost => Registry == DockerHub ? "registry-1.docker.io" : Registry;

    /// <summary>The reference asked of the manifest endpoint: the digest if pinned, else the tag.</summary>
    public string ManifestReference => Digest ?? Tag ?? "latest";

    /// <summary>The full normalised form, e.g. "docker.io/library/busybox:latest" or
    /// "127.0.0.1:5000/app@sha256:...".</summary>
    public override string ToString() =>
        $"{Registry}/{Repository}{(Tag is null ? "" : ":" + Tag)}{(Digest is null ? "" : "@" + Digest)}";

    /// <summary>True when the registry is on this host (localhost, 127.0.0.0/8, ::1): plain http is used for it, as
    /// docker and podman do.</summary>
    public bool IsLoopback
    {
        get
        {
            var host = HostOf(Registry);
            if (host == "localhost") return true;
            return IPAddress.TryParse(host, out var ip) && IPAddress.IsLoopback(ip);
        }
    }

    static string HostOf(string registry)
    {
        if (registry.StartsWith('['))
        {
            var end = registry.IndexOf(']');
            return end > 0 ? registry[1..end] : registry;
        }
        var colon = registry.LastIndexOf(':');
        return colon > 0 ? registry[..colon] : registry;
    }

    /// <summary>True if a name can only be a registry reference, not a local image alias (aliases have no '/', ':' or
    /// '@').</summary>
    public static bool LooksLikeReference(string name) => name.IndexOfAny(['/', ':', '@']) >= 0;

    public static bool TryParse(string text, out ImageReference? reference, out string? error)
    {
        reference = null;
        error = Validate(text, out var r);
        reference = r;
        return error is null;
    }

    public static ImageReference Parse(string text) =>
        TryParse(text, out var r, out var error) ? r! : throw new RegistryException(error!, 400);

    static string? Validate(string text, out ImageReference? reference)
    {
        reference = null;
        const string Form = "write it as host[:port]/repository[:tag][@sha256:digest], e.g. " +
            "127.0.0.1:5000/busybox:latest";
        if (string.IsNullOrWhiteSpace(text)) return $"the image reference is empty: {Form}";
        if (text.Length > 1024 || text.Any(c => char.IsWhiteSpace(c) || char.IsControl(c)))
            return $"image reference '{text}' is invalid (spaces, control characters or too long): {Form}";
        var rest = text;
        string? digest = null;
        var at = rest.IndexOf('@');
        if (at >= 0)
        {
            digest = rest[(at + 1)..];
            rest = rest[..at];
            if (!IsSha256Digest(digest)) return $"image reference '{text}' has an invalid digest '{digest}': use " +
                "sha256: followed by 64 lowercase hex digits";
        }
        string registry;
        var slash = rest.IndexOf('/');
        var first = slash < 0 ? "" : rest[..slash];
        if (slash > 0 && (first.Contains('.') || first.Contains(':') || first == "localhost" || first.StartsWith('[')))
        {
            registry = first;
            rest = rest[(slash + 1)..];
            if (!IsValidRegistry(registry)) return $"image reference '{text}' has an invalid registry '{registry}': " +
                "use host or host:port";
        }
        else registry = DockerHub;
        string? tag = null;
        var lastSlash = rest.LastIndexOf('/');
        var colon = rest.IndexOf(':', lastSlash + 1);
        if (colon >= 0)
        {
            tag = rest[(colon + 1)..];
            rest = rest[..colon];
            if (!IsValidTag(tag)) return $"image reference '{text}' has an invalid tag '{tag}': use up to 128 " +
                "letters, digits, '_', '.' or '-', not starting with '.' or '-'";
        }
        if (rest.Length == 0) return $"image reference '{text}' names no repository: {Form}";
        foreach (var component in rest.Split('/'))
            if (!IsValidPathComponent(component))
                return $"image reference '{text}' has an invalid repository '{rest}': use lowercase letters, digits " +
                    "and single separators ('.', '_', '__', '-') between '/'";
        if (registry == DockerHub && !rest.Contains('/')) rest = "library/" + rest;
        if (registry.Length + 1 + rest.Length > 255) return $"image reference '{text}' is too long: the repository " +
            "name may have at most 255 characters";
        if (tag is null && digest is null) tag = "latest";
        reference = new ImageReference { Registry = registry, Repository = rest, Tag = tag, Digest = digest };
        return null;
    }

    public static bool IsSha256Digest(string d) =>
        d.Length == 71 && d.StartsWith("sha256:", StringComparison.Ordinal)
            && d.AsSpan(7).IndexOfAnyExcept("0123456789abcdef") < 0;

    static bool IsValidRegistry(string r)
    {
        var host = HostOf(r);
        if (host.Length == 0 || host.Length > 253) return false;
        if (r.StartsWith('[')) return IPAddress.TryParse(host, out _)
            && (r.Length == host.Length + 2 || IsPort(r[(host.Length + 3)..]));
        var colon = r.LastIndexOf(':');
        if (colon > 0 && !IsPort(r[(colon + 1)..])) return false;
        foreach (var label in host.Split('.'))
            if (label.Length == 0 || label.Length > 63 || label[0] == '-' || label[^1] == '-'
                || !label.All(c => char.IsAsciiLetterOrDigit(c) || c == '-'))
                return false;
        return true;
    }

    static bool IsPort(string p) => p.Length is > 0 and <= 5 && p.All(char.IsAsciiDigit)
        && int.Parse(p, System.Globalization.CultureInfo.InvariantCulture) is > 0 and < 65536;

    static bool IsValidTag(string t) =>
        t.Length is > 0 and <= 128 && (char.IsAsciiLetterOrDigit(t[0]) || t[0] == '_')
            && t.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '.' or '-');

    /// <summary>[a-z0-9]+ separated by '.', '_', '__' or runs of '-'.</summary>
    static bool IsValidPathComponent(string c)
    {
        if (c.Length == 0 || !IsLowerAlnum(c[0]) || !IsLowerAlnum(c[^1])) return false;
        for (var i = 0; i < c.Length; i++)
        {
            if (IsLowerAlnum(c[i])) continue;
            var start = i;
            while (i < c.Length && !IsLowerAlnum(c[i])) i++;
            var sep = c[start..i];
            if (sep is not ("." or "_" or "__") && !sep.All(x => x == '-')) return false;
            i--;
        }
        return true;
    }

    static bool IsLowerAlnum(char c) => c is >= 'a' and <= 'z' or >= '0' and <= '9';
}
