using System.Text.Json;
using Hull.Linux;

namespace Hull.Containers;

/// <summary>What Hull keeps about one container in its state directory (state.json).</summary>
public sealed class ContainerRecord
{
    public string Id { get; set; } = "";
    public string Bundle { get; set; } = "";
    public string Rootfs { get; set; } = "";
    /// <summary>The init/container process; 0 while creating.</summary>
    public int Pid { get; set; }
    /// <summary>The process's start time (clock ticks since boot, /proc/PID/stat field 22): a pid is only ours if it
    /// matches.</summary>
    public ulong PidStartTime { get; set; }
    public DateTime Created { get; set; }
    public string CgroupPath { get; set; } = "";
    /// <summary>Namespace types the container has of its own or joined (for exec), e.g. "pid", "mount".</summary>
    public List<string> Namespaces { get; set; } = [];
    public Dictionary<string, string>? Annotations { get; set; }
    public string Owner { get; set; } = "root";
    /// <summary>Whether config.json has poststart/poststop hooks (so start and delete need not parse it).</summary>
    public bool HasPoststart { get; set; }
    public bool HasPoststop { get; set; }
    /// <summary>Set once "start" has run: a container whose fifo was consumed.</summary>
    public bool Started { get; set; }

    // state.json is read and written by every verb: a hand-written reader and writer (camelCase JSON, as before)
    // instead of System.Text.Json's serializer, whose per-process metadata set-up cost more than the whole file.

    public byte[] ToJson()
    {
        var buf = new System.Buffers.ArrayBufferWriter<byte>(512);
        using (var w = new Utf8JsonWriter(buf))
        {
            w.WriteStartObject();
            w.WriteString("id", Id);
            w.WriteString("bundle", Bundle);
            w.WriteString("rootfs", Rootfs);
            w.WriteNumber("pid", Pid);
            w.WriteNumber("pidStartTime", PidStartTime);
            w.WriteString("created", Created);
            w.WriteString("cgroupPath", CgroupPath);
            w.WriteStartArray("namespaces");
            foreach (var n in Namespaces) w.WriteStringValue(n);
            w.WriteEndArray();
            if (Annotations is not null)
            {
                w.WriteStartObject("annotations");
                foreach (var (k, v) in Annotations) w.WriteString(k, v);
                w.WriteEndObject();
            }
            w.WriteString("owner", Owner);
            w.WriteBoolean("hasPoststart", HasPoststart);
            w.WriteBoolean("hasPoststop", HasPoststop);
            w.WriteBoolean("started", Started);
            w.WriteEndObject();
        }
        return buf.WrittenSpan.ToArray();
    }

    /// <summary>Reads state.json; unknown properties are skipped. Throws <see cref="JsonException"/> if it is not a
    /// JSON object.</summary>
    public static ContainerRecord FromJson(ReadOnlySpan<byte> json)
    {
        var r = new Utf8JsonReader(json);
        if (!r.Read() || r.TokenType != JsonTokenType.StartObject) throw new JsonException(
            "state.json is not a JSON object");
        var c = new ContainerRecord();
        while (r.Read() && r.TokenType == JsonTokenType.PropertyName)
        {
            var name = r.GetString();
            r.Read();
            if (r.TokenType == JsonTokenType.Null) continue;
            switch (name)
            {
                case "id": c.Id = r.GetString()!; break;
                case "bundle": c.Bundle = r.GetString()!; break;
                case "rootfs": c.Rootfs = r.GetString()!; break;
                case "pid": c.Pid = r.GetInt32(); break;
                case "pidStartTime": c.PidStartTime = r.GetUInt64(); break;
                case "created": c.Created = r.GetDateTime(); break;
                case "cgroupPath": c.CgroupPath = r.GetString()!; break;
                case "owner": c.Owner = r.GetString()!; break;
                case "hasPoststart": c.HasPoststart = r.GetBoolean(); break;
                case "hasPoststop": c.HasPoststop = r.GetBoolean(); break;
                case "started": c.Started = r.GetBoolean(); break;
                case "namespaces":
                    if (r.TokenType != JsonTokenType.StartArray) throw new JsonException("namespaces is not an array");
                    while (r.Read() && r.TokenType != JsonTokenType.EndArray) c.Namespaces.Add(r.GetString()!);
                    break;
                case "annotations":
                    if (r.TokenType != JsonTokenType.StartObject) throw new JsonException(
                        "annotations is not an object");
                    c.Annotations = [];
                    while (r.Read() && r.TokenType == JsonTokenType.PropertyName)
                    {
                        var k = r.GetString()!;
                        r.Read();
                        c.Annotations[k] = r.GetString()!;
                    }
                    break;
                default: r.Skip(); break;
            }
        }
        if (r.TokenType != JsonTokenType.EndObject) throw new JsonException("state.json ends early");
        return c;
    }
}

/// <summary>
/// The runtime's state directory (--root): one directory per container holding state.json, the spec
/// (config.json, for exec defaults and poststop hooks) and, until started, exec.fifo.
/// Invariant: a container exists iff its directory exists; mkdir is the atomic claim on an id.
/// </summary>
public sealed class StateStore(string root)
{
    public string Root { get; } = root;

    public string Dir(string id) => Path.Combine(Root, id);
    public string FifoPath(string id) => Path.Combine(Root, id, "exec.fifo");

    public static void ValidateId(string id)
    {
        if (string.IsNullOrEmpty(id))
            throw new ContainerException("a container id is required");
        if (id is "." or ".." || id.Length > 1024
            || id.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' or '+')))
            throw new ContainerException($"invalid container id \"{id}\": use letters, digits and - _ . + only");
    }

    /// <summary>Claims the id (fails if it exists) and returns the container directory.</summary>
    public string Claim(string id)
    {
        ValidateId(id);
        Directory.CreateDirectory(Root);
        var dir = Dir(id);
        if (Libc.mkdir(dir, 0b111_000_000) < 0)
        {
            var e = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
            if (e == Errors.EEXIST) throw new ContainerException(
                $"container \"{id}\" already exists: choose another id or delete it first (hull-oci delete {id})");
            throw new LinuxException(e, $"mkdir {dir}");
        }
        return dir;
    }

    public bool Exists(string id) => Directory.Exists(Dir(id)) && File.Exists(Path.Combine(Dir(id), "state.json"));

    public ContainerRecord Load(string id)
    {
        ValidateId(id);
        var file = Path.Combine(Dir(id), "state.json");
        if (!File.Exists(file)) throw new ContainerNotFoundException(id);
        try { return ContainerRecord.FromJson(File.ReadAllBytes(file)); }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException) { throw new
            ContainerException($"{file} is empty or corrupt: remove {Dir(id)} by hand"); }
    }

    public void Save(ContainerRecord r)
    {
        var file = Path.Combine(Dir(r.Id), "state.json");
        var tmp = file + ".tmp";
        File.WriteAllBytes(tmp, r.ToJson());
        File.Move(tmp, file, overwrite: true);
    }

    public void SaveSpec(string id, Hull.Oci.Spec spec) =>
        File.WriteAllBytes(Path.Combine(Dir(id), "config.json"),
            JsonSerializer.SerializeToUtf8Bytes(spec, Hull.Oci.OciJson.Default.Spec));

    /// <summary>Keeps the bundle's config.json as it was read (the same spec, without serializing it again).</summary>
    public void SaveSpec(string id, byte[] configJson) =>
        File.WriteAllBytes(Path.Combine(Dir(id), "config.json"), configJson);

    public Hull.Oci.Spec LoadSpec(string id) =>
        JsonSerializer.Deserialize(File.ReadAllBytes(Path.Combine(Dir(id), "config.json")),
            Hull.Oci.OciJson.Default.Spec)!;

    public void Remove(string id)
    {
        var dir = Dir(id);
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
    }

    public IEnumerable<string> Ids() =>
        Directory.Exists(Root)
            ? Directory.EnumerateDirectories(Root).Select(Path.GetFileName).Where(n => n is not null
                && File.Exists(Path.Combine(Root, n, "state.json"))).Select(n => n!).OrderBy(n => n,
                StringComparer.Ordinal)
            : [];
}
