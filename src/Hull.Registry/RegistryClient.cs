using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace Hull.Registry;

/// <summary>Username and password for a registry (sent as Basic auth, or to its token server).</summary>
public sealed record RegistryCredentials(string Username, string Password);

/// <summary>A resolved image: the linux/amd64 manifest (its bytes and digest), its config and layers.</summary>
public sealed class ResolvedImage
{
    public required string ManifestDigest { get; init; }
    public required string ManifestMediaType { get; init; }
    public required byte[] ManifestBytes { get; init; }
    public required Descriptor Config { get; init; }
    public required List<Descriptor> Layers { get; init; }
    /// <summary>The digest of the index the manifest was picked from, if the reference named one.</summary>
    public string? IndexDigest { get; init; }
}

/// <summary>
/// A client for one repository of an OCI distribution (Docker registry v2) registry. Handles the /v2/ ping, auth
/// challenges (none, Basic, Bearer tokens from the challenge's realm with its service and scope), image manifests and
/// indexes (OCI and Docker schema2; linux/amd64 is picked from an index), and blobs streamed to disk with their
/// sha256 digest and size checked. Plain http is used for loopback registries and when <c>insecure</c> is set.
/// </summary>
public sealed class RegistryClient : IDisposable
{
    const int MaxManifestBytes = 4 << 20;
    const int MaxConfigBytes = 16 << 20;
    static readonly RegistryJson J = RegistryJson.Default;
    static readonly string[] ManifestAccept =
        [MediaTypes.OciManifest, MediaTypes.OciIndex, MediaTypes.DockerManifest, MediaTypes.DockerManifestList];

    readonly HttpClient _http;
    readonly bool _ownsHttp;
    readonly RegistryCredentials? _credentials;
    AuthenticationHeaderValue? _auth;
    bool _pinged;

    public ImageReference Reference { get; }
    public Uri BaseUri { get; }
    public string Scope => $"repository:{Reference.Repository}:pull";

    public RegistryClient(ImageReference reference, RegistryCredentials? credentials = null, bool insecure = false,
        HttpMessageHandler? handler = null)
    {
        Reference = reference;
        _credentials = credentials;
        var scheme = insecure || reference.IsLoopback ? "http" : "https";
        BaseUri = new Uri($"{scheme}://{reference.ApiHost}/v2/");
        _ownsHttp = true;
        _http = new HttpClient(handler ?? new SocketsHttpHandler
        {
            ConnectTimeout = TimeSpan.FromSeconds(20),
            AllowAutoRedirect = true, // blob storage redirects; .NET drops the Authorization header on a redirect
            AutomaticDecompression = DecompressionMethods.None,
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
        }, disposeHandler: true) { Timeout = Timeout.InfiniteTimeSpan };
        _http.DefaultRequestHeaders.UserAgent.Add(new ProductInfoHeaderValue("hull", "1.0"));
    }

    public void Dispose()
    {
        if (_ownsHttp) _http.Dispose();
    }

    string Where => $"{Reference.Registry}/{Reference.Repository}";

    // ---- transport and auth ----

    async Task<HttpResponseMessage> RawSendAsync(HttpRequestMessage req, HttpCompletionOption completion,
        CancellationToken ct)
    {
        try { return await _http.SendAsync(req, completion, ct); }
        catch (HttpRequestException e) { throw Unreachable(req.RequestUri!, e); }
    }

    RegistryException Unreachable(Uri uri, HttpRequestException e)
    {
        var root = e.InnerException;
        while (root?.InnerException is not null) root = root.InnerException;
        if (e.InnerException is AuthenticationException || e.HttpRequestError == HttpRequestError.SecureConnectionError)
            return new RegistryException($"the TLS handshake with {uri.Authority} failed " +
                $"({root?.Message ?? e.Message}): if the registry serves plain http, pull with --insecure", 502, e);
        var why = root is SocketException se ? se.Message : root?.Message ?? e.Message;
        return new RegistryException($"cannot reach the registry at {uri.GetLeftPart(UriPartial.Authority)} ({why}): " +
            "check the address and that the registry is " +
            $"running{(uri.Scheme == "https" ? "; for a plain-http registry pull with --insecure" : "")}", 502, e);
    }

    /// <summary>GET /v2/: learns whether the registry wants auth and how (its WWW-Authenticate challenge).</summary>
    public async Task PingAsync(CancellationToken ct)
    {
        using var req = new HttpRequestMessage(HttpMethod.Get, BaseUri);
        using var resp = await RawSendAsync(req, HttpCompletionOption.ResponseContentRead, ct);
        _pinged = true;
        if (resp.StatusCode == HttpStatusCode.Unauthorized)
        {
            await AuthorizeAsync(resp, ct);
            return;
        }
        if (!resp.IsSuccessStatusCode)
            throw new RegistryException($"{BaseUri} answered {(int)resp.StatusCode} {resp.ReasonPhrase} to the API " +
                "check: is this an OCI (Docker v2) registry?", 502);
        var version = resp.Headers.TryGetValues("Docker-Distribution-API-Version", out var v) ? v.FirstOrDefault()
            : null;
        if (version is not null && !version.StartsWith("registry/2", StringComparison.Ordinal))
            throw new RegistryException($"{BaseUri} speaks '{version}', not the registry v2 API", 502);
    }

    /// <summary>Answers a 401's challenge: Basic with the credentials, or a Bearer token fetched from the
    /// realm.</summary>
    async Task AuthorizeAsync(HttpResponseMessage unauthorized, CancellationToken ct)
    {
        var challenges = unauthorized.Headers.WwwAuthenticate.ToList();
        var bearer = challenges.FirstOrDefault(c => c.Scheme.Equals("Bearer", StringComparison.OrdinalIgnoreCase));
        var basic = challenges.FirstOrDefault(c => c.Scheme.Equals("Basic", StringComparison.OrdinalIgnoreCase));
        if (bearer is not null)
        {
            var p = ParseChallenge(bearer.Parameter ?? "");
            if (!p.TryGetValue("realm", out var realm) || !Uri.TryCreate(realm, UriKind.Absolute, out var realmUri)
                || realmUri.Scheme is not ("http" or "https"))
                throw new RegistryException($"{Reference.Registry} asked for a Bearer token without a usable realm " +
                    $"('{bearer}')", 502);
            // The challenge names the scope this request needs; ask for ours too (the ping's challenge names none).
            var scopes = new List<string>();
            if (p.TryGetValue("scope", out var s)
                && s.Length > 0) scopes.AddRange(s.Split(' ', StringSplitOptions.RemoveEmptyEntries));
            if (!scopes.Contains(Scope)) scopes.Add(Scope);
            _auth = new AuthenticationHeaderValue("Bearer",
                await FetchTokenAsync(realmUri, p.GetValueOrDefault("service"), scopes, ct));
            return;
        }
        if (basic is not null)
        {
            if (_credentials is null)
                throw new RegistryException($"{Reference.Registry} needs credentials (Basic auth): give --username " +
                    "and --password, or a credentials file with --authfile", 401);
            _auth = BasicHeader(_credentials);
            return;
        }
        var schemes = string.Join(", ", challenges.Select(c => c.Scheme));
        throw new RegistryException($"{Reference.Registry} asks for an unsupported kind of auth " +
            $"({(schemes.Length == 0 ? "a 401 without a WWW-Authenticate challenge" : schemes)}): only Basic and " +
            "Bearer token auth are supported", 502);
    }

    static AuthenticationHeaderValue BasicHeader(RegistryCredentials c) =>
        new("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{c.Username}:{c.Password}")));

    async Task<string> FetchTokenAsync(Uri realm, string? service, List<string> scopes, CancellationToken ct)
    {
        var query = new StringBuilder(realm.Query.Length > 1 ? realm.Query[1..] : "");
        void Add(string k, string v) => query.Append(query.Length > 0 ? "&" : "").Append(k).Append('=').Append(
            Uri.EscapeDataString(v));
        if (!string.IsNullOrEmpty(service)) Add("service", service);
        foreach (var s in scopes) Add("scope", s);
        if (_credentials is not null) Add("account", _credentials.Username);
        var uri = new UriBuilder(realm) { Query = query.ToString() }.Uri;
        using var req = new HttpRequestMessage(HttpMethod.Get, uri);
        if (_credentials is not null) req.Headers.Authorization = BasicHeader(_credentials);
        using var resp = await RawSendAsync(req, HttpCompletionOption.ResponseContentRead, ct);
        if (resp.StatusCode is HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden)
            throw _credentials is null
                ? new RegistryException($"{Reference.Registry} needs credentials (its token server " +
                    $"{realm.GetLeftPart(UriPartial.Path)} refused an anonymous token): give --username and " +
                    "--password, or a credentials file with --authfile", 401)
                : new RegistryException($"{Reference.Registry} refused the credentials of user " +
                    $"'{_credentials.Username}' (its token server answered {(int)resp.StatusCode}): check the " +
                    "username and password", 401);
        if (!resp.IsSuccessStatusCode)
            throw new RegistryException($"the token server {realm.GetLeftPart(UriPartial.Path)} of " +
                $"{Reference.Registry} answered {(int)resp.StatusCode} {resp.ReasonPhrase}", 502);
        TokenResponse? t;
        try { t = JsonSerializer.Deserialize(await resp.Content.ReadAsByteArrayAsync(ct), J.TokenResponse); }
        catch (JsonException e) { throw new RegistryException(
            $"the token server {realm.GetLeftPart(UriPartial.Path)} sent an unreadable answer ({e.Message})", 502); }
        var token = t?.Token is { Length: > 0 } tk ? tk : t?.AccessToken;
        if (string.IsNullOrEmpty(token)) throw new RegistryException(
            $"the token server {realm.GetLeftPart(UriPartial.Path)} sent no token", 502);
        return token;
    }

    /// <summary>Parses the auth-params of a challenge: key=value or key="quoted, with \"escapes\"", comma
    /// separated.</summary>
    public static Dictionary<string, string> ParseChallenge(string parameters)
    {
        var d = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        var i = 0;
        while (i < parameters.Length)
        {
            while (i < parameters.Length && (parameters[i] == ',' || char.IsWhiteSpace(parameters[i]))) i++;
            var eq = parameters.IndexOf('=', i);
            if (eq < 0) break;
            var key = parameters[i..eq].Trim();
            i = eq + 1;
            var value = new StringBuilder();
            if (i < parameters.Length && parameters[i] == '"')
            {
                i++;
                while (i < parameters.Length && parameters[i] != '"')
                {
                    if (parameters[i] == '\\' && i + 1 < parameters.Length) i++;
                    value.Append(parameters[i++]);
                }
                i++;
            }
            else
                while (i < parameters.Length && parameters[i] != ',') value.Append(parameters[i++]);
            if (key.Length > 0) d[key] = value.ToString().Trim();
        }
        return d;
    }

    /// <summary>Sends a request with the current auth; on a 401 answers the challenge and retries once.</summary>
    async Task<HttpResponseMessage> SendAsync(Func<HttpRequestMessage> make, HttpCompletionOption completion,
        CancellationToken ct)
    {
        if (!_pinged) await PingAsync(ct);
        for (var attempt = 0; ; attempt++)
        {
            using var req = make();
            req.Headers.Authorization = _auth;
            var resp = await RawSendAsync(req, completion, ct);
            if (resp.StatusCode != HttpStatusCode.Unauthorized) return resp;
            if (attempt > 0)
            {
                resp.Dispose();
                throw _credentials is null
                    ? new RegistryException($"{Where} needs credentials: give --username and --password, or a " +
                        "credentials file with --authfile", 401)
                    : new RegistryException($"{Reference.Registry} refused the credentials of user " +
                        $"'{_credentials.Username}' for {Reference.Repository}: check the username and password", 401);
            }
            using (resp) await AuthorizeAsync(resp, ct);
        }
    }

    async Task<RegistryException> ErrorAsync(HttpResponseMessage resp, string what, CancellationToken ct)
    {
        List<RegistryError> errors = [];
        try
        {
            var body = await resp.Content.ReadAsByteArrayAsync(ct);
            if (body.Length is > 0 and < 65536) errors = JsonSerializer.Deserialize(body, J.RegistryErrors)?.Errors
                ?? [];
        }
        catch (JsonException) { }
        var codes = errors.Select(e => e.Code ?? "").ToHashSet();
        var detail = errors.Count > 0 ? $" ({string.Join("; ", errors.Select(e => $"{e.Code}: {e.Message}"))})" : "";
        return resp.StatusCode switch
        {
            HttpStatusCode.NotFound when codes.Contains("NAME_UNKNOWN") =>
                new RegistryException($"repository '{Reference.Repository}' not found on {Reference.Registry}: check " +
                    "the name", 404),
            HttpStatusCode.NotFound when what == "manifest" && Reference.Digest is null =>
                new RegistryException($"tag '{Reference.Tag}' not found in {Where}: check the tag (the repository " +
                    "has no such manifest)", 404),
            HttpStatusCode.NotFound when what == "manifest" =>
                new RegistryException($"manifest {Reference.Digest} not found in {Where}: check the digest", 404),
            HttpStatusCode.NotFound => new RegistryException(
                $"{what} not found in {Where}{detail}: the registry lost it or the image is incomplete", 502),
            HttpStatusCode.Forbidden or HttpStatusCode.Unauthorized when codes.Contains("DENIED")
                || resp.StatusCode == HttpStatusCode.Forbidden =>
                new RegistryException($"access to {Where} is denied{detail}: the user may not pull it", 403),
            HttpStatusCode.TooManyRequests => new RegistryException(
                $"{Reference.Registry} is rate limiting pulls{detail}: retry later", 503),
            _ => new RegistryException($"{Reference.Registry} answered {(int)resp.StatusCode} {resp.ReasonPhrase} " +
                $"for the {what} of {Where}{detail}", 502),
        };
    }

    // ---- manifests ----

    /// <summary>Fetches the reference's manifest; from an index (manifest list) picks linux/amd64.</summary>
    public async Task<ResolvedImage> ResolveAsync(CancellationToken ct)
    {
        var (bytes, mediaType, digest) = await GetManifestAsync(Reference.ManifestReference, Reference.Digest, ct);
        string? indexDigest = null;
        var doc = ParseManifest(bytes, mediaType, digest);
        if (MediaTypes.IsIndex(doc.MediaType ?? mediaType) || (doc.Manifests is not null && doc.Layers is null))
        {
            indexDigest = digest;
            var pick = PickPlatform(doc.Manifests ?? []);
            (bytes, mediaType, digest) = await GetManifestAsync(pick.Digest, pick.Digest, ct);
            doc = ParseManifest(bytes, mediaType, digest);
            if (doc.Layers is null) throw new RegistryException(
                $"the manifest {digest} picked from the index of {Where} is another index: nested indexes are not " +
                "supported", 502);
        }
        if (doc.Config is null || doc.Layers is null)
            throw new RegistryException($"the manifest {digest} of {Where} has no config or layers: it is not an " +
                "image manifest", 502);
        foreach (var d in doc.Layers.Append(doc.Config))
        {
            if (!ImageReference.IsSha256Digest(d.Digest)) throw new RegistryException(
                $"the manifest of {Where} uses an unsupported digest '{d.Digest}': only sha256 is supported", 502);
            if (d.Size < 0) throw new RegistryException(
                $"the manifest of {Where} gives blob {d.Digest} a negative size", 502);
        }
        if (doc.Layers.Any(l => l.MediaType.Contains("foreign", StringComparison.Ordinal)
            || l.MediaType.Contains("nondistributable", StringComparison.Ordinal)))
            throw new RegistryException($"{Where} has foreign (non-distributable) layers, which are fetched from " +
                "elsewhere: not supported", 502);
        return new ResolvedImage
        {
            ManifestDigest = digest, ManifestMediaType = doc.MediaType ?? mediaType, ManifestBytes = bytes,
            Config = doc.Config,
            Layers = doc.Layers, IndexDigest = indexDigest,
        };
    }

    Descriptor PickPlatform(List<Descriptor> manifests)
    {
        var amd64 = manifests.Where(m => m.Platform is { Os: "linux", Architecture: "amd64" }).ToList();
        if (amd64.Count == 0)
        {
            var have = string.Join(", ", manifests.Select(m =>
                m.Platform is { } p ? $"{p.Os}/{p.Architecture}{(p.Variant is null ? "" : "/" + p.Variant)}"
                : "unknown").Distinct());
            throw new RegistryException($"{Reference} has no linux/amd64 image (it has: " +
                $"{(have.Length == 0 ? "none" : have)})", 404);
        }
        return amd64[0];
    }

    ManifestDocument ParseManifest(byte[] bytes, string mediaType, string digest)
    {
        ManifestDocument? doc;
        try { doc = JsonSerializer.Deserialize(bytes, J.ManifestDocument); }
        catch (JsonException e) { throw new RegistryException(
            $"the manifest {digest} of {Where} is not valid JSON ({e.Message})", 502); }
        if (doc is null) throw new RegistryException($"the manifest {digest} of {Where} is empty", 502);
        if (doc.SchemaVersion == 1 || mediaType is MediaTypes.DockerSchema1 or MediaTypes.DockerSchema1Signed)
            throw new RegistryException($"{Where} serves a Docker schema 1 manifest, which is deprecated and not " +
                "supported: push the image again with a current tool", 502);
        if (doc.SchemaVersion != 2) throw new RegistryException(
            $"the manifest {digest} of {Where} has schemaVersion {doc.SchemaVersion}: expected 2", 502);
        return doc;
    }

    async Task<(byte[] Bytes, string MediaType, string Digest)> GetManifestAsync(string reference, string? expectDigest,
        CancellationToken ct)
    {
        using var resp = await SendAsync(() =>
        {
            var r = new HttpRequestMessage(HttpMethod.Get,
                new Uri(BaseUri, $"{Reference.Repository}/manifests/{reference}"));
            foreach (var a in ManifestAccept) r.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue(a));
            return r;
        }, HttpCompletionOption.ResponseHeadersRead, ct);
        if (!resp.IsSuccessStatusCode) throw await ErrorAsync(resp, "manifest", ct);
        if (resp.Content.Headers.ContentLength > MaxManifestBytes)
            throw new RegistryException($"the manifest of {Where} is {resp.Content.Headers.ContentLength} bytes: " +
                $"more than the {MaxManifestBytes >> 20} MiB allowed", 502);
        var bytes = await ReadLimitedAsync(resp, MaxManifestBytes, "manifest", ct);
        var digest = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(bytes));
        if (expectDigest is not null && digest != expectDigest)
            throw new RegistryException($"the manifest {expectDigest} from {Where} failed verification: its content " +
                $"hashes to {digest}", 502);
        if (resp.Headers.TryGetValues("Docker-Content-Digest", out var said) && said.FirstOrDefault() is { } claimed
            && claimed.StartsWith("sha256:", StringComparison.Ordinal) && claimed != digest)
            throw new RegistryException($"the manifest of {Where} failed verification: the registry says {claimed} " +
                $"but its content hashes to {digest}", 502);
        var mediaType = resp.Content.Headers.ContentType?.MediaType ?? "";
        return (bytes, mediaType, digest);
    }

    async Task<byte[]> ReadLimitedAsync(HttpResponseMessage resp, int limit, string what, CancellationToken ct)
    {
        await using var s = await resp.Content.ReadAsStreamAsync(ct);
        var ms = new MemoryStream();
        var buf = new byte[16384];
        int n;
        while ((n = await s.ReadAsync(buf, ct)) > 0)
        {
            ms.Write(buf, 0, n);
            if (ms.Length > limit) throw new RegistryException(
                $"the {what} of {Where} is larger than the {limit >> 20} MiB allowed", 502);
        }
        return ms.ToArray();
    }

    // ---- blobs ----

    /// <summary>Fetches a small blob (an image config) into memory, verified.</summary>
    public async Task<byte[]> GetBlobBytesAsync(Descriptor d, CancellationToken ct)
    {
        if (d.Size > MaxConfigBytes) throw new RegistryException(
            $"the config blob {d.Digest} of {Where} is {d.Size} bytes: more than the {MaxConfigBytes >> 20} MiB " +
            "allowed", 502);
        using var resp = await SendAsync(() => new HttpRequestMessage(HttpMethod.Get,
            new Uri(BaseUri, $"{Reference.Repository}/blobs/{d.Digest}")), HttpCompletionOption.ResponseHeadersRead,
            ct);
        if (!resp.IsSuccessStatusCode) throw await ErrorAsync(resp, $"blob {d.Digest}", ct);
        var bytes = await ReadLimitedAsync(resp, MaxConfigBytes, $"blob {d.Digest}", ct);
        Verify(d, "sha256:" + Convert.ToHexStringLower(SHA256.HashData(bytes)), bytes.Length);
        return bytes;
    }

    void Verify(Descriptor d, string actual, long length)
    {
        if (actual != d.Digest)
            throw new RegistryException($"blob {d.Digest} from {Where} failed verification: its content hashes to " +
                $"{actual} (corrupt in the registry or in transit); nothing was kept", 502);
        if (length != d.Size)
            throw new RegistryException($"blob {d.Digest} from {Where} is {length} bytes but the manifest says " +
                $"{d.Size}; nothing was kept", 502);
    }

    /// <summary>
    /// Streams a blob to <paramref name="path"/>: written to path.partial while hashed, checked against the digest
    /// and size, then renamed into place. On any failure the partial file is removed. Reports bytes received.
    /// </summary>
    public async Task DownloadBlobAsync(Descriptor d, string path, IProgress<long>? progress, CancellationToken ct)
    {
        var partial = path + ".partial";
        try
        {
            using var resp = await SendAsync(() =>
                new HttpRequestMessage(HttpMethod.Get, new Uri(BaseUri, $"{Reference.Repository}/blobs/{d.Digest}")),
                HttpCompletionOption.ResponseHeadersRead, ct);
            if (!resp.IsSuccessStatusCode) throw await ErrorAsync(resp, $"blob {d.Digest}", ct);
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            long total = 0;
            await using (var input = await resp.Content.ReadAsStreamAsync(ct))
            await using (var output = new FileStream(partial, FileMode.Create, FileAccess.Write, FileShare.None,
                1 << 16, useAsync: true))
            {
                var buf = new byte[1 << 16];
                var lastReport = 0L;
                int n;
                while ((n = await input.ReadAsync(buf, ct)) > 0)
                {
                    total += n;
                    if (total > d.Size)
                        throw new RegistryException($"blob {d.Digest} from {Where} is longer than the {d.Size} bytes " +
                            "the manifest says; nothing was kept", 502);
                    hash.AppendData(buf, 0, n);
                    await output.WriteAsync(buf.AsMemory(0, n), ct);
                    if (total - lastReport >= 1 << 20) { progress?.Report(total); lastReport = total; }
                }
                await output.FlushAsync(ct);
            }
            progress?.Report(total);
            Verify(d, "sha256:" + Convert.ToHexStringLower(hash.GetHashAndReset()), total);
            File.Move(partial, path, overwrite: true);
        }
        catch (HttpRequestException e) { File.Delete(partial); throw Unreachable(BaseUri, e); }
        catch (IOException e) when (e is HttpIOException || e.InnerException is SocketException or HttpRequestException)
        {
            File.Delete(partial);
            throw new RegistryException($"the download of blob {d.Digest} from {Where} broke off ({e.Message}): retry",
                502, e);
        }
        catch { File.Delete(partial); throw; }
    }
}
