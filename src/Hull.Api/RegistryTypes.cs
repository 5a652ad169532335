namespace Hull.Api;

/// <summary>POST /1.0/images/pull: pull an image from an OCI (Docker v2) registry into the image store.</summary>
public sealed class ImagePullRequest
{
    /// <summary>host[:port]/repository[:tag][@sha256:digest]; docker.io and the tag latest are assumed as docker
    /// does.</summary>
    public string Reference { get; set; } = "";
    /// <summary>An extra alias for the image (the normalised reference always becomes one).</summary>
    public string? Alias { get; set; }
    /// <summary>Credentials for Basic auth or the registry's token server; anonymous when absent.</summary>
    public string? Username { get; set; }
    public string? Password { get; set; }
    /// <summary>Use plain http (loopback registries always do).</summary>
    public bool Insecure { get; set; }
}
