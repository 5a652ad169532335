using System.Text;
using System.Text.Json;

namespace Hull.Registry;

/// <summary>Reads credentials for a registry from an auth.json file (the format podman, skopeo and docker login
/// write).</summary>
public static class AuthFileReader
{
    /// <summary>The username and password stored for <paramref name="registry"/> (host[:port]), or null if the file has
    /// none.</summary>
    public static (string Username, string Password)? Find(string path, string registry)
    {
        AuthFile? file;
        try { file = JsonSerializer.Deserialize(File.ReadAllBytes(path), RegistryJson.Default.AuthFile); }
        catch (JsonException e) { throw new RegistryException(
            $"credentials file {path} is not valid auth.json ({e.Message}): write {{\"auths\": {{\"HOST:PORT\": " +
            $"{{\"auth\": \"BASE64(user:password)\"}}}}}}", 400); }
        if (file?.Auths is null) return null;
        // Keys may be "host:port", "https://host:port" or "host:port/v2/" (older docker); match on the host part.
        foreach (var (key, entry) in file.Auths)
        {
            var k = key;
            foreach (var scheme in new[] { "https://", "http://" })
                if (k.StartsWith(scheme, StringComparison.OrdinalIgnoreCase)) k = k[scheme.Length..];
            k = k.Split('/')[0];
            if (!string.Equals(k, registry, StringComparison.OrdinalIgnoreCase)
                && !(registry == ImageReference.DockerHub
                    && k is "index.docker.io" or "registry-1.docker.io")) continue;
            if (entry.Username is { Length: > 0 } u) return (u, entry.Password ?? "");
            if (entry.Auth is not { Length: > 0 } a) continue;
            string plain;
            try { plain = Encoding.UTF8.GetString(Convert.FromBase64String(a)); }
            catch (FormatException) { throw new RegistryException(
                $"credentials file {path}: the auth for {key} is not base64 of user:password", 400); }
            var colon = plain.IndexOf(':');
            if (colon <= 0) throw new RegistryException(
                $"credentials file {path}: the auth for {key} is not base64 of user:password", 400);
            return (plain[..colon], plain[(colon + 1)..]);
        }
        return null;
    }
}
