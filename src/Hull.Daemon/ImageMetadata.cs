using System.Runtime.InteropServices;
using System.Text;
using Hull.Instances;

namespace Hull.Daemon;

/// <summary>
/// The metadata file of an Incus/LXD image (<c>metadata.yaml</c> beside <c>rootfs/</c>): Hull takes its architecture
/// (an image of another one is refused) and its properties (os, release, description...: the image's properties,
/// shown by <c>hull image list</c>). A small, strict reader of the YAML these files are written in: top-level
/// <c>key: scalar</c> lines and block mappings, of which only <c>properties</c> is read (a mapping of scalars, plain
/// or quoted); other blocks (<c>templates</c>...) are skipped. Anything else is an error naming its line.
/// </summary>
public sealed class ImageMetadata
{
    /// <summary>The file's name in a unified image.</summary>
    public const string FileName = "metadata.yaml";

    /// <summary>The most of it read: a metadata file is a few hundred bytes.</summary>
    public const int MaxSize = 64 << 10;

    public string? Architecture { get; private set; }
    public Dictionary<string, string> Properties { get; } = new(StringComparer.Ordinal);

    public static ImageMetadata Parse(string text)
    {
        var m = new ImageMetadata();
        var lines = text.Replace("\r\n", "\n").Split('\n');
        string? block = null; // the top-level key whose block is being read
        var blockIndent = -1;
        for (var i = 0; i < lines.Length; i++)
        {
            var n = i + 1;
            var raw = lines[i];
            var content = raw.TrimStart(' ');
            if (content.Length == 0 || content.StartsWith('#')) continue;
            if (content.StartsWith('\t')) throw Error(n, "indented with a tab (YAML indents with spaces)");
            var indent = raw.Length - content.Length;
            if (n == 1 && content == "---") continue;
            if (indent > 0)
            {
                if (block is null) throw Error(n, "indented, but no key above it opens a block");
                if (block != "properties") continue;
                if (blockIndent < 0) blockIndent = indent;
                if (indent != blockIndent) throw Error(n, "a property is indented unlike the one above it " +
                    "(properties is a mapping of scalars)");
                var (k, v) = KeyValue(content, n);
                if (v is null) throw Error(n, $"property '{k}' has no value (properties is a mapping of scalars)");
                m.Properties[k] = v;
                continue;
            }
            var (key, value) = KeyValue(content, n);
            block = value is null ? key : null;
            blockIndent = -1;
            if (key == "architecture") m.Architecture = value ?? throw Error(n, "architecture has no value");
            else if (key == "properties" && value is not null && value != "{}")
                throw Error(n, "properties must be a block of 'key: value' lines below it");
        }
        return m;
    }

    /// <summary>The architecture names an image of this host may carry (Incus's and the kernel's, Debian's).</summary>
    public static IReadOnlyList<string> HostArchitectures => RuntimeInformation.OSArchitecture switch
    {
        System.Runtime.InteropServices.Architecture.X64 => ["x86_64", "amd64"],
        System.Runtime.InteropServices.Architecture.Arm64 => ["aarch64", "arm64"],
        var a => [a.ToString().ToLowerInvariant()],
    };

    static (string Key, string? Value) KeyValue(string content, int n)
    {
        var colon = content.IndexOf(':');
        if (colon <= 0 || (colon + 1 < content.Length && content[colon + 1] != ' '))
            throw Error(n, "expected 'key: value' or 'key:' (a list or flow value is not read here)");
        var key = content[..colon];
        if (!key.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.'))
            throw Error(n, $"key '{key}' is not a plain name (letters, digits, '_', '-', '.')");
        var rest = content[(colon + 1)..].Trim(' ');
        if (rest.Length == 0 || rest.StartsWith('#')) return (key, null);
        return (key, Scalar(rest, n));
    }

    static string Scalar(string s, int n)
    {
        if (s[0] == '"')
        {
            var sb = new StringBuilder();
            for (var i = 1; i < s.Length; i++)
            {
                var c = s[i];
                if (c == '"') return Rest(s, i + 1) ? sb.ToString() : throw Error(n, "text after a quoted value");
                if (c == '\\')
                {
                    if (++i >= s.Length) break;
                    sb.Append(s[i] switch
                    {
                        '"' => '"', '\\' => '\\', '/' => '/', 'n' => '\n', 't' => '\t',
                        var e => throw Error(n, $"escape '\\{e}' is not read here"),
                    });
                }
                else sb.Append(c);
            }
            throw Error(n, "a double-quoted value does not end on its line");
        }
        if (s[0] == '\'')
        {
            var sb = new StringBuilder();
            for (var i = 1; i < s.Length; i++)
            {
                if (s[i] != '\'') { sb.Append(s[i]); continue; }
                if (i + 1 < s.Length && s[i + 1] == '\'') { sb.Append('\''); i++; continue; }
                return Rest(s, i + 1) ? sb.ToString() : throw Error(n, "text after a quoted value");
            }
            throw Error(n, "a single-quoted value does not end on its line");
        }
        if (s[0] is '[' or '{' or '|' or '>' or '&' or '*' or '!')
            throw Error(n, $"a value starting with '{s[0]}' (flow, block scalar, anchor or tag) is not read here");
        var comment = s.IndexOf(" #", StringComparison.Ordinal);
        return (comment >= 0 ? s[..comment] : s).TrimEnd(' ');
    }

    /// <summary>Whether only blanks or a comment follow a quoted value.</summary>
    static bool Rest(string s, int from) => s[from..].Trim(' ') is var r && (r.Length == 0 || r.StartsWith('#'));

    static InstanceException Error(int line, string what) =>
        new($"the image's {FileName}, line {line}: {what}");
}
