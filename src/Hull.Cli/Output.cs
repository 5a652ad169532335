using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Hull.Api;

namespace Hull.Cli;

/// <summary>Tables for people, JSON or YAML for scripts.</summary>
public static class Output
{
    public static readonly HullJson Pretty =
        new(new JsonSerializerOptions(HullJson.Default.Options) { WriteIndented = true });

    /// <summary>Writes <paramref name="value"/> as JSON or YAML; false if the format is "table" (the caller prints a
    /// table).</summary>
    public static bool Structured<T>(string format, T value, JsonTypeInfo<T> type, TextWriter w)
    {
        switch (format)
        {
            case "json":
                w.WriteLine(JsonSerializer.Serialize(value, type));
                return true;
            case "yaml":
                using (var doc = JsonDocument.Parse(JsonSerializer.Serialize(value, type)))
                {
                    var sb = new StringBuilder();
                    Yaml(doc.RootElement, sb, 0, false);
                    w.Write(sb.ToString());
                }
                return true;
            default:
                return false;
        }
    }

    static void Yaml(JsonElement e, StringBuilder sb, int indent, bool inList)
    {
        var pad = new string(' ', indent);
        switch (e.ValueKind)
        {
            case JsonValueKind.Object:
                if (!e.EnumerateObject().Any()) { sb.Append(inList ? "{}\n" : " {}\n"); return; }
                if (!inList) sb.Append('\n');
                var first = true;
                foreach (var p in e.EnumerateObject())
                {
                    sb.Append(inList && first ? "" : pad).Append(Scalar(p.Name)).Append(':');
                    first = false;
                    if (p.Value.ValueKind is JsonValueKind.Object or JsonValueKind.Array) Yaml(p.Value, sb, indent + 2,
                        false);
                    else sb.Append(' ').Append(ScalarOf(p.Value)).Append('\n');
                }
                break;
            case JsonValueKind.Array:
                if (e.GetArrayLength() == 0) { sb.Append(" []\n"); return; }
                sb.Append('\n');
                foreach (var item in e.EnumerateArray())
                {
                    sb.Append(pad).Append("- ");
                    if (item.ValueKind is JsonValueKind.Object) Yaml(item, sb, indent + 2, true);
                    else if (item.ValueKind is JsonValueKind.Array) Yaml(item, sb, indent + 2, false);
                    else sb.Append(ScalarOf(item)).Append('\n');
                }
                break;
            default:
                sb.Append(ScalarOf(e)).Append('\n');
                break;
        }
    }

    static string ScalarOf(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String => Scalar(e.GetString()!),
        JsonValueKind.Null => "null",
        _ => e.GetRawText(),
    };

    static string Scalar(string s)
    {
        var plain = s.Length > 0 && s.All(c => char.IsLetterOrDigit(c) || c is '-' or '_' or '.' or '/')
            && !(s is "true" or "false" or "null" or "yes" or "no" or "on" or "off")
                && !double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out _);
        return plain ? s : Quoted(s);
    }

    /// <summary>A YAML double-quoted scalar: only the backslash, the quote and control characters escaped (JSON's
    /// encoder would also turn '"', '+', '&lt;' and non-ASCII text into \uXXXX).</summary>
    static string Quoted(string s)
    {
        var sb = new StringBuilder(s.Length + 2).Append('"');
        foreach (var c in s)
            _ = c switch
            {
                '\\' => sb.Append("\\\\"),
                '"' => sb.Append("\\\""),
                '\n' => sb.Append("\\n"),
                '\t' => sb.Append("\\t"),
                '\r' => sb.Append("\\r"),
                < ' ' or '\x7f' => sb.Append("\\x").Append(((int)c).ToString("X2", CultureInfo.InvariantCulture)),
                _ => sb.Append(c),
            };
        return sb.Append('"').ToString();
    }

    public static void Table(TextWriter w, string[] headers, IEnumerable<string[]> rows)
    {
        var all = rows.ToList();
        var widths = headers.Select((h, i) => Math.Max(h.Length,
            all.Select(r => r[i].Length).DefaultIfEmpty(0).Max())).ToArray();
        var line = "+" + string.Join("+", widths.Select(x => new string('-', x + 2))) + "+";
        // Built whole and written once: the console writer flushes every line, a write(2) each (10,000 for 10,000
        // rows).
        var sb = new StringBuilder((all.Count + 4) * (line.Length + 1));
        sb.Append(line).Append('\n');
        Row(sb, headers, widths);
        sb.Append(line).Append('\n');
        foreach (var r in all) Row(sb, r, widths);
        if (all.Count > 0) sb.Append(line).Append('\n');
        w.Write(sb.ToString());
        w.Flush();
    }

    static void Row(StringBuilder sb, string[] cells, int[] widths)
    {
        sb.Append('|');
        for (var i = 0; i < cells.Length; i++) sb.Append(' ').Append(cells[i]).Append(' ',
            widths[i] - cells[i].Length + 1).Append('|');
        sb.Append('\n');
    }

    public static string Size(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double v = bytes; var u = 0;
        while (v >= 1024 && u < units.Length - 1) { v /= 1024; u++; }
        return u == 0 ? $"{bytes}B" : v.ToString("0.##", CultureInfo.InvariantCulture) + units[u];
    }

    public static string Time(DateTimeOffset? t) =>
        t is { } x ? x.ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture) : "";
}
