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

/// <summary>Test helpers for registry pulls: free ports, running programs, a busybox OCI layout.</summary>
public static class RegistryTestUtil
{
    public static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        var port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    public static string Run(string program, params string[] args)
    {
        var psi = new ProcessStartInfo(Requires.Program(program)) { RedirectStandardError = true,
            RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{program} {string.Join(' ', args)}: {err.Result}{output}");
        return output;
    }

    /// <summary>
    /// An OCI layout (written by umoci) with two tags: "v1" is a busybox root filesystem in one layer (the host's
    /// static
    /// /bin/busybox and its applet links), "v2" is v1 plus a layer adding /etc/hull-release.
    /// </summary>
    public static string BuildBusyboxLayout(string dir)
    {
        Requires.File("/bin/busybox", "busybox-static");
        var rootfs = Path.Combine(dir, "bb-rootfs");
        foreach (var d in new[] { "bin", "etc", "dev", "proc", "sys", "tmp", "root" }) Directory.CreateDirectory(
            Path.Combine(rootfs, d));
        File.Copy("/bin/busybox", Path.Combine(rootfs, "bin", "busybox"));
        foreach (var applet in Run("/bin/busybox", "--list").Split('\n',
            StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            if (applet != "busybox") File.CreateSymbolicLink(Path.Combine(rootfs, "bin", applet), "busybox");
        File.WriteAllText(Path.Combine(rootfs, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\n");
        var layout = Path.Combine(dir, "layout");
        Run("umoci", "init", "--layout", layout);
        Run("umoci", "new", "--image", layout + ":v1");
        Run("umoci", "insert", "--image", layout + ":v1", rootfs, "/");
        Run("umoci", "tag", "--image", layout + ":v1", "v2");
        var extra = Path.Combine(dir, "bb-extra");
        Directory.CreateDirectory(extra);
        File.WriteAllText(Path.Combine(extra, "hull-release"), "pulled-v2\n");
        Run("umoci", "insert", "--image", layout + ":v2", extra, "/etc");
        return layout;
    }

    /// <summary>skopeo copy of a layout tag into a registry over plain http.</summary>
    public static void Push(string layout, string tag, string destination, string? creds = null)
    {
        var args = new List<string> { "--insecure-policy", "copy", "--dest-tls-verify=false" };
        if (creds is not null) { args.Add("--dest-creds"); args.Add(creds); }
        args.Add($"oci:{layout}:{tag}");
        args.Add($"docker://{destination}");
        Run("skopeo", [.. args]);
    }

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

/// <summary>Debian's docker-registry (distribution 2.8) on 127.0.0.1:PORT with its storage in a temp dir; killed and
/// removed at dispose.</summary>
public sealed class DockerRegistry : IDisposable
{
    readonly Process _proc;
    readonly StringBuilder _log = new();
    public string Dir { get; }
    public int Port { get; }
    public string Host => $"127.0.0.1:{Port}";

    /// <param name="auth">The YAML of the auth: section's body (indented by 2), or null for none.</param>
    public DockerRegistry(string dir, string? auth = null)
    {
        var exe = Requires.Program("docker-registry");
        Dir = dir;
        Directory.CreateDirectory(Path.Combine(dir, "storage"));
        Port = RegistryTestUtil.FreePort();
        var config = Path.Combine(dir, "config.yml");
        File.WriteAllText(config, $"""
            version: 0.1
            log:
              level: info
              accesslog:
                disabled: false
            storage:
              filesystem:
                rootdirectory: {Path.Combine(dir, "storage")}
              delete:
                enabled: true
            http:
              addr: 127.0.0.1:{Port}
            {(auth is null ? "" : "auth:\n" + auth)}
            """);
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true,
            UseShellExecute = false };
        psi.ArgumentList.Add("serve");
        psi.ArgumentList.Add(config);
        _proc = Process.Start(psi)!;
        _proc.OutputDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.ErrorDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.BeginOutputReadLine();
        _proc.BeginErrorReadLine();
        using var http = new HttpClient();
        for (var i = 0; ; i++)
        {
            if (_proc.HasExited) throw new InvalidOperationException(
                $"docker-registry exited with {_proc.ExitCode}: {Log}");
            try
            {
                using var r = http.GetAsync($"http://{Host}/v2/").GetAwaiter().GetResult();
                return;
            }
            catch (HttpRequestException) when (i < 200) { Thread.Sleep(50); }
        }
    }

    public string Log { get { lock (_log) return _log.ToString(); } }

    public void Dispose()
    {
        try { _proc.Kill(true); _proc.WaitForExit(); } catch (InvalidOperationException) { }
        _proc.Dispose();
        try { Directory.Delete(Dir, true); } catch (IOException) { }
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
