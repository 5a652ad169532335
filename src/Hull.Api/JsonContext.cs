using System.Text.Json;
using System.Text.Json.Serialization;

namespace Hull.Api;

/// <summary>Source-generated JSON for every wire type (snake_case names, nulls omitted).</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, WriteIndented = false)]
[JsonSerializable(typeof(ErrorResponse))]
[JsonSerializable(typeof(ServerInfo))]
[JsonSerializable(typeof(Instance))]
[JsonSerializable(typeof(List<Instance>))]
[JsonSerializable(typeof(InstanceCreateRequest))]
[JsonSerializable(typeof(InstancePut))]
[JsonSerializable(typeof(InstanceRenameRequest))]
[JsonSerializable(typeof(InstanceStateRequest))]
[JsonSerializable(typeof(InstanceStateInfo))]
[JsonSerializable(typeof(InstanceStats))]
[JsonSerializable(typeof(ExecRequest))]
[JsonSerializable(typeof(ExecResult))]
[JsonSerializable(typeof(ExecControl))]
[JsonSerializable(typeof(ExecExit))]
[JsonSerializable(typeof(FileEntry))]
[JsonSerializable(typeof(List<FileEntry>))]
[JsonSerializable(typeof(Snapshot))]
[JsonSerializable(typeof(List<Snapshot>))]
[JsonSerializable(typeof(SnapshotCreateRequest))]
[JsonSerializable(typeof(Profile))]
[JsonSerializable(typeof(List<Profile>))]
[JsonSerializable(typeof(ProfilePut))]
[JsonSerializable(typeof(ProfileCreateRequest))]
[JsonSerializable(typeof(Image))]
[JsonSerializable(typeof(List<Image>))]
[JsonSerializable(typeof(ImageAlias))]
[JsonSerializable(typeof(List<ImageAlias>))]
[JsonSerializable(typeof(ImagePullRequest))]
[JsonSerializable(typeof(Operation))]
[JsonSerializable(typeof(List<Operation>))]
[JsonSerializable(typeof(Event))]
[JsonSerializable(typeof(Dictionary<string, string>))]
[JsonSerializable(typeof(Dictionary<string, Dictionary<string, string>>))]
[JsonSerializable(typeof(List<string>))]
[JsonSerializable(typeof(JsonElement))]
public sealed partial class HullJson : JsonSerializerContext;
