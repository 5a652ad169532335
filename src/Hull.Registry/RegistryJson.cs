using System.Text.Json.Serialization;

namespace Hull.Registry;

/// <summary>A content descriptor (OCI image spec; the Docker schema2 fields are the same).</summary>
public sealed class Descriptor
{
    public string MediaType { get; set; } = "";
    public string Digest { get; set; } = "";
    public long Size { get; set; }
    public Platform? Platform { get; set; }
    public List<string>? Urls { get; set; }
    public Dictionary<string, string>? Annotations { get; set; }
}

public sealed class Platform
{
    public string Architecture { get; set; } = "";
    public string Os { get; set; } = "";
    public string? Variant { get; set; }
}

/// <summary>An image manifest or an index (manifest list): the fields of both, as the media type says which it
/// is.</summary>
public sealed class ManifestDocument
{
    public int SchemaVersion { get; set; }
    public string? MediaType { get; set; }
    public Descriptor? Config { get; set; }
    public List<Descriptor>? Layers { get; set; }
    public List<Descriptor>? Manifests { get; set; }
}

/// <summary>The fields of an image config that a pull checks.</summary>
public sealed class ImageConfigDocument
{
    public string? Architecture { get; set; }
    public string? Os { get; set; }
}

/// <summary>A token server's answer (the distribution token spec allows either name).</summary>
public sealed class TokenResponse
{
    [JsonPropertyName("token")] public string? Token { get; set; }
    [JsonPropertyName("access_token")] public string? AccessToken { get; set; }
    [JsonPropertyName("expires_in")] public int? ExpiresIn { get; set; }
}

/// <summary>A registry error body: {"errors":[{"code":"MANIFEST_UNKNOWN","message":"..."}]}.</summary>
public sealed class RegistryErrors
{
    public List<RegistryError>? Errors { get; set; }
}

public sealed class RegistryError
{
    public string? Code { get; set; }
    public string? Message { get; set; }
}

/// <summary>An OCI image layout's index.json.</summary>
public sealed class LayoutIndex
{
    public int SchemaVersion { get; set; } = 2;
    public string MediaType { get; set; } = MediaTypes.OciIndex;
    public List<Descriptor> Manifests { get; set; } = [];
}

/// <summary>Containers' auth.json ({"auths": {"host:port": {"auth": base64("user:password")}}}), as podman, skopeo and
/// docker write it.</summary>
public sealed class AuthFile
{
    [JsonPropertyName("auths")] public Dictionary<string, AuthEntry>? Auths { get; set; }
}

public sealed class AuthEntry
{
    [JsonPropertyName("auth")] public string? Auth { get; set; }
    [JsonPropertyName("username")] public string? Username { get; set; }
    [JsonPropertyName("password")] public string? Password { get; set; }
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, WriteIndented = false)]
[JsonSerializable(typeof(ManifestDocument))]
[JsonSerializable(typeof(ImageConfigDocument))]
[JsonSerializable(typeof(TokenResponse))]
[JsonSerializable(typeof(RegistryErrors))]
[JsonSerializable(typeof(LayoutIndex))]
[JsonSerializable(typeof(AuthFile))]
public sealed partial class RegistryJson : JsonSerializerContext;

public static class MediaTypes
{
    public const string OciManifest = "application/vnd.oci.image.manifest.v1+json";
    public const string OciIndex = "application/vnd.oci.image.index.v1+json";
    public const string DockerManifest = "application/vnd.docker.distribution.manifest.v2+json";
    public const string DockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json";
    public const string DockerSchema1 = "application/vnd.docker.distribution.manifest.v1+json";
    public const string DockerSchema1Signed = "application/vnd.docker.distribution.manifest.v1+prettyjws";

    public static bool IsIndex(string? t) => t is OciIndex or DockerManifestList;
    public static bool IsManifest(string? t) => t is OciManifest or DockerManifest;
}
