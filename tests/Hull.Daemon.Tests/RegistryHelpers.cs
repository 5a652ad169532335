using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json.Nodes;
using Hull.TestSupport;
using Xunit;

namespace Hull.Daemon.Tests;

/// <summary>What a daemon test checks of hulld's image store after pulls.</summary>
public static class ImageStoreLeftovers
{
    /// <summary>What hulld's image store holds on disk, minus the image dirs: work dirs and cached layer
    /// blobs.</summary>
    public static (List<string> Work, List<string> Blobs) StoreLeftovers(TestDaemon d)
    {
        var images = Path.Combine(d.StateDir, "images");
        var work = Directory.EnumerateFileSystemEntries(images).Select(Path.GetFileName).Where(n =>
            n!.StartsWith("tmp-", StringComparison.Ordinal)).Select(n => n!).ToList();
        var blobsDir = Path.Combine(images, "blobs", "sha256");
        var blobs = Directory.Exists(blobsDir) ? Directory.EnumerateFiles(blobsDir).Select(f =>
            Path.GetFileName(f)).ToList() : [];
        return (work, blobs);
    }
}

/// <summary>A minimal HTTP server on 127.0.0.1 for test doubles (a token server, a misbehaving registry).</summary>
public abstract class TestHttpServer : IDisposable
{
    readonly HttpListener _listener = new();
    readonly Task _loop;
    public int Port { get; }
    public string Host => $"127.0.0.1:{Port}";
    public List<string> Requests { get; } = [];

    protected TestHttpServer()
    {
        for (var attempt = 0; ; attempt++)
        {
            Port = RegistryTestUtil.FreePort();
            _listener.Prefixes.Clear();
            _listener.Prefixes.Add($"http://127.0.0.1:{Port}/");
            try { _listener.Start(); break; }
            catch (HttpListenerException) when (attempt < 5) { }
        }
        _loop = Task.Run(async () =>
        {
            while (_listener.IsListening)
            {
                HttpListenerContext c;
                try { c = await _listener.GetContextAsync(); }
                catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or
                    InvalidOperationException) { return; }
                lock (Requests) Requests.Add($"{c.Request.HttpMethod} {c.Request.Url!.PathAndQuery}");
                _ = Task.Run(() =>
                {
                    try { Handle(c); }
                    catch (Exception e) when (e is not HttpListenerException)
                    {
                        try { c.Response.StatusCode = 500; Write(c, "text/plain",
                            Encoding.UTF8.GetBytes(e.ToString())); } catch (Exception) { }
                    }
                    catch (HttpListenerException) { }
                });
            }
        });
    }

    protected abstract void Handle(HttpListenerContext c);

    protected static void Write(HttpListenerContext c, string contentType, byte[] body, int status = 200)
    {
        c.Response.StatusCode = status;
        c.Response.ContentType = contentType;
        c.Response.ContentLength64 = body.Length;
        try { c.Response.OutputStream.Write(body); c.Response.Close(); }
        catch (HttpListenerException) { }
    }

    /// <summary>Called first at dispose: release requests held open.</summary>
    protected virtual void Stopping() { }

    public bool HasRequest(string request) { lock (Requests) return Requests.Contains(request); }

    public void Dispose()
    {
        Stopping();
        _listener.Stop();
        _listener.Close();
        try { _loop.Wait(5000); } catch (AggregateException) { }
    }
}

/// <summary>
/// A token server as the distribution token-auth spec describes: Basic-authenticated GET /token?service=..&scope=..
/// answered with a JWT (RS256, the signing certificate in the x5c header) granting the requested repository actions.
/// The registry trusts it through its rootcertbundle, which is <see cref="CertificatePem"/>.
/// </summary>
public sealed class TokenServer : TestHttpServer
{
    readonly RSA _key = RSA.Create(2048);
    readonly X509Certificate2 _cert;
    readonly string _user, _password;
    public const string Service = "hull-test-registry", Issuer = "hull-test-token-issuer";
    public string Realm => $"http://{Host}/token";
    public string CertificatePem { get; }

    public TokenServer(string user, string password)
    {
        (_user, _password) = (user, password);
        var req = new CertificateRequest("CN=hull test token signer", _key, HashAlgorithmName.SHA256,
            RSASignaturePadding.Pkcs1);
        _cert = req.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        CertificatePem = _cert.ExportCertificatePem();
    }

    /// <summary>The registry's auth: section for this server.</summary>
    public string RegistryAuthYaml(string certPath) =>
        $"  token:\n    realm: {Realm}\n    service: {Service}\n    issuer: {Issuer}\n    rootcertbundle: {certPath}\n";

    static string B64Url(byte[] b) => Convert.ToBase64String(b).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    protected override void Handle(HttpListenerContext c)
    {
        if (c.Request.Url!.AbsolutePath != "/token") { Write(c, "text/plain", [], 404); return; }
        var auth = c.Request.Headers["Authorization"];
        string? user = null;
        if (auth is not null && auth.StartsWith("Basic ", StringComparison.Ordinal))
        {
            var plain = Encoding.UTF8.GetString(Convert.FromBase64String(auth[6..]));
            var i = plain.IndexOf(':');
            if (i > 0 && plain[..i] == _user && plain[(i + 1)..] == _password) user = _user;
            else { Write(c, "application/json", Encoding.UTF8.GetBytes("{\"details\":\"bad credentials\"}"),
                401); return; }
        }
        if (user is null) { Write(c, "application/json",
            Encoding.UTF8.GetBytes("{\"details\":\"anonymous access is not allowed\"}"), 401); return; }
        if (c.Request.QueryString["service"] != Service) { Write(c, "text/plain",
            Encoding.UTF8.GetBytes("unknown service"), 400); return; }
        var access = new JsonArray();
        foreach (var scope in c.Request.QueryString.GetValues("scope") ?? [])
        {
            var parts = scope.Split(':');
            if (parts.Length != 3 || parts[0] != "repository") continue;
            access.Add((JsonNode)new JsonObject { ["type"] = "repository", ["name"] = parts[1],
                ["actions"] = new JsonArray(parts[2].Split(',').Select(a =>
                (JsonNode)JsonValue.Create(a)!).ToArray()) });
        }
        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var header = new JsonObject { ["typ"] = "JWT", ["alg"] = "RS256",
            ["x5c"] = new JsonArray(JsonValue.Create(Convert.ToBase64String(_cert.RawData))) };
        var claims = new JsonObject
        {
            ["iss"] = Issuer, ["sub"] = user, ["aud"] = Service, ["exp"] = now + 300, ["nbf"] = now - 10, ["iat"] = now,
            ["jti"] = Guid.NewGuid().ToString("N"), ["access"] = access,
        };
        var signingInput = B64Url(Encoding.UTF8.GetBytes(header.ToJsonString())) + "."
            + B64Url(Encoding.UTF8.GetBytes(claims.ToJsonString()));
        var sig = _key.SignData(Encoding.ASCII.GetBytes(signingInput), HashAlgorithmName.SHA256,
            RSASignaturePadding.Pkcs1);
        var token = signingInput + "." + B64Url(sig);
        var body = new JsonObject { ["token"] = token, ["access_token"] = token, ["expires_in"] = 300 };
        Write(c, "application/json", Encoding.UTF8.GetBytes(body.ToJsonString()));
    }
}

/// <summary>
/// A tiny registry double serving prepared manifests and blobs by path, with no auth. A blob's content may deliberately
/// not match its digest (to test verification).
/// </summary>
public sealed class FakeRegistry : TestHttpServer
{
    readonly Dictionary<string, (string Type, byte[] Body)> _manifests = [];
    readonly Dictionary<string, byte[]> _blobs = [];

    readonly Dictionary<string, (byte[] First, long Size)> _stalling = [];
    readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Serves the first part of a blob of <paramref name="size"/> bytes, then holds the response open until
    /// dispose.</summary>
    public void AddStallingBlob(string repo, string digest, byte[] first, long size) =>
        _stalling[$"{repo}/blobs/{digest}"] = (first, size);

    protected override void Stopping() => _release.TrySetResult();

    public static string Digest(byte[] b) => "sha256:" + Convert.ToHexStringLower(SHA256.HashData(b));

    /// <summary>Serves <paramref name="body"/> as blob <paramref name="digest"/> of <paramref name="repo"/> (whether or
    /// not it matches).</summary>
    public void AddBlob(string repo, string digest, byte[] body) => _blobs[$"{repo}/blobs/{digest}"] = body;

    /// <summary>Serves a manifest under a tag and under its digest; returns the digest.</summary>
    public string AddManifest(string repo, string tag, string mediaType, string json)
    {
        var body = Encoding.UTF8.GetBytes(json);
        var digest = Digest(body);
        _manifests[$"{repo}/manifests/{tag}"] = (mediaType, body);
        _manifests[$"{repo}/manifests/{digest}"] = (mediaType, body);
        return digest;
    }

    protected override void Handle(HttpListenerContext c)
    {
        var path = c.Request.Url!.AbsolutePath;
        if (path == "/v2/") { c.Response.Headers["Docker-Distribution-API-Version"] =
            "registry/2.0"; Write(c, "application/json", "{}"u8.ToArray()); return; }
        var key = path.StartsWith("/v2/", StringComparison.Ordinal) ? path[4..] : path;
        if (_manifests.TryGetValue(key, out var m)) { Write(c, m.Type, m.Body); return; }
        if (_blobs.TryGetValue(key, out var b)) { Write(c, "application/octet-stream", b); return; }
        if (_stalling.TryGetValue(key, out var st))
        {
            c.Response.ContentType = "application/octet-stream";
            c.Response.ContentLength64 = st.Size;
            c.Response.OutputStream.Write(st.First);
            c.Response.OutputStream.Flush();
            _release.Task.Wait();
            c.Response.Abort();
            return;
        }
        Write(c, "application/json", Encoding.UTF8.GetBytes(key.Contains("/manifests/")
            ? "{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\",\"message\":\"manifest unknown\"}]}"
            : "{\"errors\":[{\"code\":\"BLOB_UNKNOWN\",\"message\":\"blob unknown\"}]}"), 404);
    }
}
