using System.Text.Json;
using System.Text.Json.Serialization;
using Hull.Containers;

namespace Hull.Oci.Cli;

public sealed class ListEntry
{
    [JsonPropertyName("ociVersion")] public string OciVersion { get; set; } = "1.2.0";
    [JsonPropertyName("id")] public string Id { get; set; } = "";
    [JsonPropertyName("pid")] public int Pid { get; set; }
    [JsonPropertyName("status")] public string Status { get; set; } = "";
    [JsonPropertyName("bundle")] public string Bundle { get; set; } = "";
    [JsonPropertyName("rootfs")] public string Rootfs { get; set; } = "";
    [JsonPropertyName("created")] public DateTime Created { get; set; }
    [JsonPropertyName("annotations")] public Dictionary<string, string>? Annotations { get; set; }
    [JsonPropertyName("owner")] public string Owner { get; set; } = "";
}

/// <summary>list: the containers under --root, as a table or JSON (runc's fields).</summary>
static class ListVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "list", ["format", "f"], ["quiet", "q"]);
        var format = a.Get("format") ?? a.Get("f") ?? "table";
        if (format is not ("table" or "json")) throw new UsageException($"--format {format}: use table or json");
        var entries = ctx.Engine.List().Select(x => new ListEntry
        {
            Id = x.Record.Id, Pid = x.Status == ContainerStatus.Stopped ? 0 : x.Record.Pid, Status = x.Status.Oci(),
            Bundle = x.Record.Bundle,
            Rootfs = x.Record.Rootfs, Created = x.Record.Created, Annotations = x.Record.Annotations,
            Owner = x.Record.Owner,
        }).ToList();
        if (a.Has("quiet") || a.Has("q")) { foreach (var e in entries) Console.WriteLine(e.Id); return 0; }
        if (format == "json") { Console.WriteLine(
            JsonSerializer.Serialize(entries, OciCliJson.Default.ListListEntry)); return 0; }
        Console.WriteLine($"{"ID",-24} {"PID",-8} {"STATUS",-10} {"BUNDLE",-40} {"CREATED",-30} OWNER");
        foreach (var e in entries)
            Console.WriteLine($"{e.Id,-24} {e.Pid,-8} {e.Status,-10} {e.Bundle,-40} " +
                $"{e.Created,-30:yyyy-MM-ddTHH:mm:ss.fffffffZ} {e.Owner}");
        return 0;
    }
}
