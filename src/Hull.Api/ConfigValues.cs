using System.Text;
using System.Text.Json;

namespace Hull.Api;

/// <summary>Config values in the forms the keys take, written the same way by the CLI and by hulld.</summary>
public static class ConfigValues
{
    /// <summary>A JSON array of strings, as app.command and oci.entrypoint hold a command line.</summary>
    public static string JsonArray(IEnumerable<string> items)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartArray();
            foreach (var a in items) w.WriteStringValue(a);
            w.WriteEndArray();
        }
        return Encoding.UTF8.GetString(ms.ToArray());
    }
}
