using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Hull.Api;

namespace Hull.Sdk;

/// <summary>A failed API call: the daemon's message (which says what to do) and the HTTP status.</summary>
public sealed class HullException(string message, int statusCode) : Exception(message)
{
    public int StatusCode { get; } = statusCode;
}

/// <summary>
/// A client for hulld's REST API on its unix socket. Calls that start an operation wait for it by default and throw
/// <see cref="HullException"/> if it failed; the *OperationAsync forms return the operation instead.
/// </summary>
public sealed class HullClient : IDisposable
{
    static readonly HullJson J = HullJson.Default;
    readonly HttpClient _http;
    readonly SocketsHttpHandler _handler;

    public string SocketPath { get; }

    /// <summary>The socket: the argument, else $HULL_SOCKET, else /run/hull/hulld.sock.</summary>
    public static string DefaultSocket => HullPaths.Socket;

    public HullClient(string? socketPath = null)
    {
        SocketPath = socketPath ?? DefaultSocket;
        _handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) =>
            {
                var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await s.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath), ct);
                    return new NetworkStream(s, ownsSocket: true);
                }
                catch { s.Dispose(); throw; }
            },
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
        };
        _http = new HttpClient(_handler, disposeHandler: false) { BaseAddress = new Uri("http://hull/"),
            Timeout = Timeout.InfiniteTimeSpan };
    }

    public void Dispose()
    {
        _http.Dispose();
        _handler.Dispose();
    }

    /// <summary>True if a daemon answers on the socket.</summary>
    public async Task<bool> IsRunningAsync(CancellationToken ct = default)
    {
        try { await ServerAsync(ct); return true; }
        catch (HttpRequestException) { return false; }
        catch (SocketException) { return false; }
    }

    // ---- plumbing ----

    static string E(string s) => Uri.EscapeDataString(s);

    async Task<HttpResponseMessage> SendAsync(HttpMethod method, string path, HttpContent? content,
        CancellationToken ct,
        HttpCompletionOption completion = HttpCompletionOption.ResponseContentRead)
    {
        using var req = new HttpRequestMessage(method, path) { Content = content };
        var resp = await _http.SendAsync(req, completion, ct);
        if ((int)resp.StatusCode >= 400)
        {
            using (resp) throw await ErrorAsync(resp, ct);
        }
        return resp;
    }

    static async Task<HullException> ErrorAsync(HttpResponseMessage resp, CancellationToken ct)
    {
        var body = await resp.Content.ReadAsStringAsync(ct);
        try
        {
            var e = JsonSerializer.Deserialize(body, J.ErrorResponse);
            if (e is { Error.Length: > 0 }) return new HullException(e.Error, (int)resp.StatusCode);
        }
        catch (JsonException) { }
        return new HullException($"hulld answered {(int)resp.StatusCode} {resp.ReasonPhrase}: {body}",
            (int)resp.StatusCode);
    }

    static StringContent Json<T>(T value, JsonTypeInfo<T> type) =>
        new(JsonSerializer.Serialize(value, type), Encoding.UTF8, "application/json");

    async Task<T> GetAsync<T>(string path, JsonTypeInfo<T> type, CancellationToken ct)
    {
        using var resp = await SendAsync(HttpMethod.Get, path, null, ct);
        return await ReadAsync(resp, type, ct);
    }

    static async Task<T> ReadAsync<T>(HttpResponseMessage resp, JsonTypeInfo<T> type, CancellationToken ct)
    {
        await using var s = await resp.Content.ReadAsStreamAsync(ct);
        return await JsonSerializer.DeserializeAsync(s, type, ct)
            ?? throw new HullException("hulld sent an empty reply", 500);
    }

    async Task<T> SendJsonAsync<TIn, T>(HttpMethod method, string path, TIn body, JsonTypeInfo<TIn> inType,
        JsonTypeInfo<T> outType, CancellationToken ct)
    {
        using var resp = await SendAsync(method, path, Json(body, inType), ct);
        return await ReadAsync(resp, outType, ct);
    }

    async Task SendNoReplyAsync(HttpMethod method, string path, HttpContent? content, CancellationToken ct)
    {
        using var _ = await SendAsync(method, path, content, ct);
    }

    /// <summary>Waits for an operation to finish and throws if it failed or was cancelled.</summary>
    public async Task<Operation> WaitAsync(Operation op, IProgress<Operation>? progress = null,
        CancellationToken ct = default)
    {
        while (!OperationStatus.IsFinal(op.Status))
        {
            op = await WaitOperationAsync(op.Id, progress is null ? -1 : 1, ct);
            progress?.Report(op);
        }
        if (op.Status != OperationStatus.Success)
            throw new HullException(op.Error ?? op.Status, op.ErrorCode ?? 500);
        return op;
    }

    // ---- server ----

    public Task<ServerInfo> ServerAsync(CancellationToken ct = default) => GetAsync("1.0", J.ServerInfo, ct);

    public async Task<string> OpenApiAsync(CancellationToken ct = default)
    {
        using var resp = await SendAsync(HttpMethod.Get, "1.0/openapi.json", null, ct);
        return await resp.Content.ReadAsStringAsync(ct);
    }

    public async Task<string> MetricsAsync(CancellationToken ct = default)
    {
        using var resp = await SendAsync(HttpMethod.Get, "1.0/metrics", null, ct);
        return await resp.Content.ReadAsStringAsync(ct);
    }

    /// <summary>The events stream (lifecycle, operation, logging) until <paramref name="ct"/> is cancelled.</summary>
    public async IAsyncEnumerable<Event> EventsAsync(IEnumerable<string>? types = null,
        [EnumeratorCancellation] CancellationToken ct = default)
    {
        var q = types is null ? "" : "?type=" + E(string.Join(',', types));
        using var resp = await SendAsync(HttpMethod.Get, "1.0/events" + q, null, ct,
            HttpCompletionOption.ResponseHeadersRead);
        await using var s = await resp.Content.ReadAsStreamAsync(ct);
        using var r = new StreamReader(s);
        while (await r.ReadLineAsync(ct) is { } line)
        {
            if (line.Length == 0) continue;
            var e = JsonSerializer.Deserialize(line, J.Event);
            if (e is not null) yield return e;
        }
    }

    // ---- instances ----

    public Task<List<Instance>> ListInstancesAsync(CancellationToken ct = default) =>
        GetAsync("1.0/instances", J.ListInstance, ct);
    public Task<Instance> GetInstanceAsync(string name, CancellationToken ct = default) =>
        GetAsync($"1.0/instances/{E(name)}", J.Instance, ct);

    public Task<Operation> CreateInstanceOperationAsync(InstanceCreateRequest req, CancellationToken ct = default) =>
        SendJsonAsync(HttpMethod.Post, "1.0/instances", req, J.InstanceCreateRequest, J.Operation, ct);

    /// <summary>Creates (and with <see cref="InstanceCreateRequest.Start"/> starts) an instance and waits for
    /// it.</summary>
    public async Task<Instance> CreateInstanceAsync(InstanceCreateRequest req, IProgress<Operation>? progress = null,
        CancellationToken ct = default)
    {
        await WaitAsync(await CreateInstanceOperationAsync(req, ct), progress, ct);
        return await GetInstanceAsync(req.Name, ct);
    }

    public Task<Instance> LaunchAsync(string image, string name, string type = InstanceTypes.Container,
        Dictionary<string, string>? config = null,
        List<string>? profiles = null, CancellationToken ct = default) =>
        CreateInstanceAsync(new InstanceCreateRequest { Name = name, Image = image, Type = type, Config = config ?? [],
            Profiles = profiles, Start = true }, null, ct);

    public Task<Instance> UpdateInstanceAsync(string name, InstancePut put, CancellationToken ct = default) =>
        SendJsonAsync(HttpMethod.Put, $"1.0/instances/{E(name)}", put, J.InstancePut, J.Instance, ct);

    public Task<Instance> RenameInstanceAsync(string name, string newName, CancellationToken ct = default) =>
        SendJsonAsync(HttpMethod.Post, $"1.0/instances/{E(name)}", new InstanceRenameRequest { Name = newName },
            J.InstanceRenameRequest, J.Instance, ct);

    public async Task<Operation> DeleteInstanceOperationAsync(string name, bool force = false,
        CancellationToken ct = default)
    {
        using var resp = await SendAsync(HttpMethod.Delete, $"1.0/instances/{E(name)}{(force ? "?force=true" : "")}",
            null, ct);
        return await ReadAsync(resp, J.Operation, ct);
    }

    public async Task DeleteInstanceAsync(string name, bool force = false, CancellationToken ct = default) =>
        await WaitAsync(await DeleteInstanceOperationAsync(name, force, ct), null, ct);

    public Task<Operation> ChangeStateOperationAsync(string name, string action, bool force = false, int timeout = 30,
        CancellationToken ct = default) =>
        SendJsonAsync(HttpMethod.Put, $"1.0/instances/{E(name)}/state",
            new InstanceStateRequest { Action = action, Force = force, Timeout = timeout },
            J.InstanceStateRequest, J.Operation, ct);

    public async Task ChangeStateAsync(string name, string action, bool force = false, int timeout = 30,
        IProgress<Operation>? progress = null, CancellationToken ct = default) =>
        await WaitAsync(await ChangeStateOperationAsync(name, action, force, timeout, ct), progress, ct);

    public Task StartAsync(string name, CancellationToken ct = default) => ChangeStateAsync(name, "start", ct: ct);
    public Task StopAsync(string name, bool force = false, int timeout = 30, CancellationToken ct = default) =>
        ChangeStateAsync(name, "stop", force, timeout, ct: ct);
    public Task RestartAsync(string name, bool force = false, int timeout = 30, CancellationToken ct = default) =>
        ChangeStateAsync(name, "restart", force, timeout, ct: ct);
    public Task PauseAsync(string name, CancellationToken ct = default) => ChangeStateAsync(name, "pause", ct: ct);
    public Task ResumeAsync(string name, CancellationToken ct = default) => ChangeStateAsync(name, "resume", ct: ct);

    public Task<InstanceStateInfo> GetStateAsync(string name, CancellationToken ct = default) =>
        GetAsync($"1.0/instances/{E(name)}/state", J.InstanceStateInfo, ct);

    /// <summary>Runs a command, feeding <see cref="ExecRequest.Stdin"/>, and collects its output and exit
    /// code.</summary>
    public Task<ExecResult> ExecAsync(string name, ExecRequest req, CancellationToken ct = default) =>
        SendJsonAsync(HttpMethod.Post, $"1.0/instances/{E(name)}/exec", req, J.ExecRequest, J.ExecResult, ct);

    public Task<ExecResult> ExecAsync(string name, params string[] command) =>
        ExecAsync(name, new ExecRequest { Command = [.. command] });

    /// <summary>Starts an interactive exec over a websocket: stream stdin/stdout/stderr, resize, signal, get the exit
    /// code.</summary>
    public async Task<ExecSession> ExecInteractiveAsync(string name, ExecRequest req, CancellationToken ct = default)
    {
        var json = JsonSerializer.Serialize(req, J.ExecRequest);
        var ws = await ConnectWebSocketAsync($"1.0/instances/{E(name)}/exec?request={E(json)}", ct);
        return new ExecSession(ws);
    }

    /// <summary>Attaches to the instance's console over a websocket (output on channel 1, input on channel
    /// 0).</summary>
    public async Task<ExecSession> ConsoleAsync(string name, CancellationToken ct = default) =>
        new(await ConnectWebSocketAsync($"1.0/instances/{E(name)}/console", ct));

    async Task<ClientWebSocket> ConnectWebSocketAsync(string path, CancellationToken ct)
    {
        var ws = new ClientWebSocket();
        ws.Options.CollectHttpResponseDetails = true;
        try
        {
            using var invoker = new HttpMessageInvoker(_handler, disposeHandler: false);
            await ws.ConnectAsync(new Uri("ws://hull/" + path), invoker, ct);
            return ws;
        }
        catch (WebSocketException) when (ws.HttpStatusCode >= HttpStatusCode.BadRequest)
        {
            // The daemon refused before upgrading: its message is in a header (or, from an older hulld, in the body
            // of the same request without the upgrade).
            var status = ws.HttpStatusCode;
            var header = ws.HttpResponseHeaders?.TryGetValue("X-Hull-Error", out var v) == true
                ? v.FirstOrDefault() : null;
            ws.Dispose();
            if (header is not null) throw new HullException(Uri.UnescapeDataString(header), (int)status);
            using var resp = await _http.GetAsync(path, ct);
            if ((int)resp.StatusCode >= 400) throw await ErrorAsync(resp, ct);
            throw new HullException($"hulld refused the websocket ({(int)status})", (int)status);
        }
        catch { ws.Dispose(); throw; }
    }

    public async Task<Stream> LogsAsync(string name, bool follow = false, CancellationToken ct = default)
    {
        var resp = await SendAsync(HttpMethod.Get, $"1.0/instances/{E(name)}/logs{(follow ? "?follow=true" : "")}",
            null, ct, HttpCompletionOption.ResponseHeadersRead);
        return await resp.Content.ReadAsStreamAsync(ct);
    }

    // ---- files ----

    public async Task PushFileAsync(string name, string path, Stream content, int mode = 0b110_100_100, int uid = 0,
        int gid = 0, CancellationToken ct = default)
    {
        var body = new StreamContent(content);
        body.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        using var req = new HttpRequestMessage(HttpMethod.Post,
            $"1.0/instances/{E(name)}/files?path={E(path)}") { Content = body };
        req.Headers.Add("X-Hull-Mode", mode.ToString(CultureInfo.InvariantCulture));
        req.Headers.Add("X-Hull-Uid", uid.ToString(CultureInfo.InvariantCulture));
        req.Headers.Add("X-Hull-Gid", gid.ToString(CultureInfo.InvariantCulture));
        req.Headers.ExpectContinue = true; // a refusal (413 too large, 404, 409) comes before the upload is sent
        using var resp = await _http.SendAsync(req, ct);
        if ((int)resp.StatusCode >= 400) throw await ErrorAsync(resp, ct);
    }

    public Task PushFileAsync(string name, string path, byte[] content, int mode = 0b110_100_100,
        CancellationToken ct = default) =>
        PushFileAsync(name, path, new MemoryStream(content), mode, 0, 0, ct);

    /// <summary>Reads a file from the instance. The stream is the file's bytes; <see cref="PulledFile.Entry"/> has its
    /// mode and owner.</summary>
    public async Task<PulledFile> PullFileAsync(string name, string path, CancellationToken ct = default)
    {
        var resp = await SendAsync(HttpMethod.Get, $"1.0/instances/{E(name)}/files?path={E(path)}", null, ct,
            HttpCompletionOption.ResponseHeadersRead);
        int H(string k) => resp.Headers.TryGetValues(k, out var v)
            && int.TryParse(v.FirstOrDefault(), CultureInfo.InvariantCulture, out var n) ? n : 0;
        var type = resp.Headers.TryGetValues("X-Hull-Type", out var t) ? t.First() : "file";
        var entry = new FileEntry { Name = Path.GetFileName(path), Type = type, Mode = H("X-Hull-Mode"),
            Uid = H("X-Hull-Uid"), Gid = H("X-Hull-Gid"), Size = resp.Content.Headers.ContentLength ?? 0 };
        if (type == "directory")
        {
            using (resp)
            {
                var list = await ReadAsync(resp, J.ListFileEntry, ct);
                return new PulledFile(entry, null, list);
            }
        }
        return new PulledFile(entry, await resp.Content.ReadAsStreamAsync(ct), null, resp);
    }

    public async Task<byte[]> ReadFileAsync(string name, string path, CancellationToken ct = default)
    {
        using var f = await PullFileAsync(name, path, ct);
        if (f.Content is null) throw new HullException($"{path} is a directory", 400);
        var ms = new MemoryStream();
        await f.Content.CopyToAsync(ms, ct);
        return ms.ToArray();
    }

    public Task DeleteFileAsync(string name, string path, CancellationToken ct = default) =>
        SendNoReplyAsync(HttpMethod.Delete, $"1.0/instances/{E(name)}/files?path={E(path)}", null, ct);

    // ---- snapshots ----

    public Task<List<Snapshot>> ListSnapshotsAsync(string name, CancellationToken ct = default) =>
        GetAsync($"1.0/instances/{E(name)}/snapshots", J.ListSnapshot, ct);

    public Task<Snapshot> GetSnapshotAsync(string name, string snapshot, CancellationToken ct = default) =>
        GetAsync($"1.0/instances/{E(name)}/snapshots/{E(snapshot)}", J.Snapshot, ct);

    public async Task CreateSnapshotAsync(string name, string snapshot, CancellationToken ct = default) =>
        await WaitAsync(await SendJsonAsync(HttpMethod.Post, $"1.0/instances/{E(name)}/snapshots",
            new SnapshotCreateRequest { Name = snapshot },
            J.SnapshotCreateRequest, J.Operation, ct), null, ct);

    public async Task RestoreSnapshotAsync(string name, string snapshot, CancellationToken ct = default)
    {
        using var resp = await SendAsync(HttpMethod.Post, $"1.0/instances/{E(name)}/snapshots/{E(snapshot)}/restore",
            null, ct);
        await WaitAsync(await ReadAsync(resp, J.Operation, ct), null, ct);
    }

    public async Task DeleteSnapshotAsync(string name, string snapshot, CancellationToken ct = default)
    {
        using var resp = await SendAsync(HttpMethod.Delete, $"1.0/instances/{E(name)}/snapshots/{E(snapshot)}", null,
            ct);
        await WaitAsync(await ReadAsync(resp, J.Operation, ct), null, ct);
    }

    // ---- profiles ----

    public Task<List<Profile>> ListProfilesAsync(CancellationToken ct = default) =>
        GetAsync("1.0/profiles", J.ListProfile, ct);
    public Task<Profile> GetProfileAsync(string name, CancellationToken ct = default) =>
        GetAsync($"1.0/profiles/{E(name)}", J.Profile, ct);

    public Task<Profile> CreateProfileAsync(ProfileCreateRequest req, CancellationToken ct = default) =>
        SendJsonAsync(HttpMethod.Post, "1.0/profiles", req, J.ProfileCreateRequest, J.Profile, ct);

    public Task<Profile> UpdateProfileAsync(string name, ProfilePut put, CancellationToken ct = default) =>
        SendJsonAsync(HttpMethod.Put, $"1.0/profiles/{E(name)}", put, J.ProfilePut, J.Profile, ct);

    public Task DeleteProfileAsync(string name, CancellationToken ct = default) =>
        SendNoReplyAsync(HttpMethod.Delete, $"1.0/profiles/{E(name)}", null, ct);

    // ---- networks ----

    public Task<List<Network>> ListNetworksAsync(CancellationToken ct = default) =>
        GetAsync("1.0/networks", J.ListNetwork, ct);
    public Task<Network> GetNetworkAsync(string name, CancellationToken ct = default) =>
        GetAsync($"1.0/networks/{E(name)}", J.Network, ct);

    public Task<Network> CreateNetworkAsync(NetworkCreateRequest req, CancellationToken ct = default) =>
        SendJsonAsync(HttpMethod.Post, "1.0/networks", req, J.NetworkCreateRequest, J.Network, ct);

    public Task<Network> UpdateNetworkAsync(string name, NetworkPut put, CancellationToken ct = default) =>
        SendJsonAsync(HttpMethod.Put, $"1.0/networks/{E(name)}", put, J.NetworkPut, J.Network, ct);

    /// <summary>Sets the given keys (an empty value removes one); the description too if not empty.</summary>
    public Task<Network> PatchNetworkAsync(string name, NetworkPut patch, CancellationToken ct = default) =>
        SendJsonAsync(HttpMethod.Patch, $"1.0/networks/{E(name)}", patch, J.NetworkPut, J.Network, ct);

    public Task DeleteNetworkAsync(string name, CancellationToken ct = default) =>
        SendNoReplyAsync(HttpMethod.Delete, $"1.0/networks/{E(name)}", null, ct);

    public Task<List<NetworkLease>> ListNetworkLeasesAsync(string name, CancellationToken ct = default) =>
        GetAsync($"1.0/networks/{E(name)}/leases", J.ListNetworkLease, ct);

    public Task<NetworkState> GetNetworkStateAsync(string name, CancellationToken ct = default) =>
        GetAsync($"1.0/networks/{E(name)}/state", J.NetworkState, ct);

    // ---- images ----

    public Task<List<Image>> ListImagesAsync(CancellationToken ct = default) => GetAsync("1.0/images", J.ListImage, ct);
    public Task<Image> GetImageAsync(string nameOrFingerprint, CancellationToken ct = default) =>
        GetAsync($"1.0/images/{E(nameOrFingerprint)}", J.Image, ct);

    /// <summary>Imports a rootfs tarball (container) or disk image (vm) and returns the stored image.</summary>
    public Task<Image> ImportImageAsync(Stream content, string type = InstanceTypes.Container, string? alias = null,
        string? description = null,
        IProgress<Operation>? progress = null, CancellationToken ct = default) =>
        ImportAsync(content, type, "rootfs", null, alias, description, progress, ct);

    /// <summary>Imports an OCI image layout, sent as a tar stream of its directory; <paramref name="reference"/> picks
    /// a tag.</summary>
    public Task<Image> ImportOciLayoutAsync(Stream layoutTar, string? reference = null, string? alias = null,
        string? description = null,
        IProgress<Operation>? progress = null, CancellationToken ct = default) =>
        ImportAsync(layoutTar, InstanceTypes.Container, "oci-layout", reference, alias, description, progress, ct);

    async Task<Image> ImportAsync(Stream content, string type, string format, string? reference, string? alias,
        string? description,
        IProgress<Operation>? progress, CancellationToken ct)
    {
        var body = new StreamContent(content);
        body.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        using var req = new HttpRequestMessage(HttpMethod.Post, "1.0/images") { Content = body };
        req.Headers.Add("X-Hull-Type", type);
        req.Headers.Add("X-Hull-Format", format);
        if (reference is not null) req.Headers.Add("X-Hull-Oci-Ref", reference);
        if (alias is not null) req.Headers.Add("X-Hull-Alias", alias);
        if (description is not null) req.Headers.Add("X-Hull-Description", description);
        req.Headers.ExpectContinue = true; // a refusal (413 too large, 400) comes before the upload is sent
        using var resp = await _http.SendAsync(req, ct);
        if ((int)resp.StatusCode >= 400) throw await ErrorAsync(resp, ct);
        var op = await WaitAsync(await ReadAsync(resp, J.Operation, ct), progress, ct);
        return await GetImageAsync(op.Metadata!["fingerprint"], ct);
    }

    /// <summary>Starts pulling an image from an OCI (Docker v2) registry; the operation's metadata has the fingerprint
    /// when it ends.</summary>
    public Task<Operation> PullImageOperationAsync(ImagePullRequest req, CancellationToken ct = default) =>
        SendJsonAsync(HttpMethod.Post, "1.0/images/pull", req, J.ImagePullRequest, J.Operation, ct);

    /// <summary>Pulls an image from a registry (e.g. "registry.example.com:5000/app:1.0") and returns the stored
    /// image.</summary>
    public async Task<Image> PullImageAsync(ImagePullRequest req, IProgress<Operation>? progress = null,
        CancellationToken ct = default)
    {
        var op = await WaitAsync(await PullImageOperationAsync(req, ct), progress, ct);
        return await GetImageAsync(op.Metadata!["fingerprint"], ct);
    }

    public async Task<Stream> ExportImageAsync(string nameOrFingerprint, CancellationToken ct = default)
    {
        var resp = await SendAsync(HttpMethod.Get, $"1.0/images/{E(nameOrFingerprint)}/export", null, ct,
            HttpCompletionOption.ResponseHeadersRead);
        return await resp.Content.ReadAsStreamAsync(ct);
    }

    // ---- instance backups (export/import; copy and move between hosts) ----

    /// <summary>Opens the backup tarball of a stopped instance (backup.json, then its directory).</summary>
    public async Task<Stream> ExportInstanceAsync(string name, CancellationToken ct = default)
    {
        var resp = await SendAsync(HttpMethod.Get, $"1.0/instances/{E(name)}/backup", null, ct,
            HttpCompletionOption.ResponseHeadersRead);
        return await resp.Content.ReadAsStreamAsync(ct);
    }

    /// <summary>Makes an instance from a backup tarball, under <paramref name="name"/> or the name it was exported
    /// with;
    /// with <paramref name="start"/> it is started once imported.</summary>
    public async Task<Instance> ImportInstanceAsync(Stream backup, string? name = null, bool start = false,
        IProgress<Operation>? progress = null, CancellationToken ct = default)
    {
        var body = new StreamContent(backup);
        body.Headers.ContentType = new MediaTypeHeaderValue("application/x-tar");
        using var req = new HttpRequestMessage(HttpMethod.Post,
            start ? "1.0/instances?start=true" : "1.0/instances") { Content = body };
        if (name is not null) req.Headers.Add("X-Hull-Name", name);
        req.Headers.ExpectContinue = true; // a refusal (413 too large) comes before the upload is sent
        using var resp = await _http.SendAsync(req, ct);
        if ((int)resp.StatusCode >= 400) throw await ErrorAsync(resp, ct);
        var op = await WaitAsync(await ReadAsync(resp, J.Operation, ct), progress, ct);
        return await GetInstanceAsync(op.Metadata!["name"], ct);
    }

    // ---- live migration between hullds (InstanceTransfer.MoveAsync drives these) ----

    /// <summary>Target side: makes <paramref name="instance"/> here and starts it waiting for its state; returns where
    /// to send it.</summary>
    public Task<MigrationTarget> PrepareIncomingMigrationAsync(InstanceBackup instance, string listenAddress,
        CancellationToken ct = default) =>
        SendJsonAsync(HttpMethod.Post, $"1.0/instances/{E(instance.Name)}/migration/incoming",
            new MigrationIncomingRequest { Instance = instance, ListenAddress = listenAddress },
                J.MigrationIncomingRequest, J.MigrationTarget, ct);

    /// <summary>Source side: sends the running instance to <paramref name="uri"/> and waits; the finished operation's
    /// metadata holds total_ms, downtime_ms and transferred_bytes.</summary>
    public async Task<Operation> SendMigrationAsync(string name, string uri, IProgress<Operation>? progress = null,
        CancellationToken ct = default)
    {
        using var resp = await SendAsync(HttpMethod.Post, $"1.0/instances/{E(name)}/migration/send",
            Json(new MigrationSendRequest { Uri = uri }, J.MigrationSendRequest), ct);
        return await WaitAsync(await ReadAsync(resp, J.Operation, ct), progress, ct);
    }

    /// <summary>Target side: the send ended; with <paramref name="succeeded"/> the instance takes over here, else it is
    /// removed.</summary>
    public async Task<Instance?> FinishIncomingMigrationAsync(string name, bool succeeded,
        CancellationToken ct = default)
    {
        using var resp = await SendAsync(HttpMethod.Post, $"1.0/instances/{E(name)}/migration/finish",
            Json(new MigrationFinishRequest { Succeeded = succeeded }, J.MigrationFinishRequest), ct);
        return resp.StatusCode == HttpStatusCode.NoContent ? null : await ReadAsync(resp, J.Instance, ct);
    }

    public Task DeleteImageAsync(string nameOrFingerprint, CancellationToken ct = default) =>
        SendNoReplyAsync(HttpMethod.Delete, $"1.0/images/{E(nameOrFingerprint)}", null, ct);

    public Task<List<ImageAlias>> ListImageAliasesAsync(CancellationToken ct = default) =>
        GetAsync("1.0/images/aliases", J.ListImageAlias, ct);

    public Task SetImageAliasAsync(string alias, string target, CancellationToken ct = default) =>
        SendNoReplyAsync(HttpMethod.Post, "1.0/images/aliases",
            Json(new ImageAlias { Name = alias, Target = target }, J.ImageAlias), ct);

    public Task DeleteImageAliasAsync(string alias, CancellationToken ct = default) =>
        SendNoReplyAsync(HttpMethod.Delete, $"1.0/images/aliases/{E(alias)}", null, ct);

    // ---- operations ----

    public Task<List<Operation>> ListOperationsAsync(CancellationToken ct = default) =>
        GetAsync("1.0/operations", J.ListOperation, ct);
    public Task<Operation> GetOperationAsync(string id, CancellationToken ct = default) =>
        GetAsync($"1.0/operations/{E(id)}", J.Operation, ct);

    /// <summary>Waits up to <paramref name="timeoutSeconds"/> (-1: until it ends) and returns the operation as it then
    /// is.</summary>
    public Task<Operation> WaitOperationAsync(string id, int timeoutSeconds = -1, CancellationToken ct = default) =>
        GetAsync($"1.0/operations/{E(id)}/wait?timeout={timeoutSeconds}", J.Operation, ct);

    public async Task<Operation> CancelOperationAsync(string id, CancellationToken ct = default)
    {
        using var resp = await SendAsync(HttpMethod.Delete, $"1.0/operations/{E(id)}", null, ct);
        return await ReadAsync(resp, J.Operation, ct);
    }
}

/// <summary>A pulled file (Content) or directory (Listing).</summary>
public sealed class PulledFile(FileEntry entry, Stream? content, List<FileEntry>? listing, IDisposable? owner = null)
    : IDisposable
{
    public FileEntry Entry { get; } = entry;
    public Stream? Content { get; } = content;
    public List<FileEntry>? Listing { get; } = listing;

    public void Dispose()
    {
        Content?.Dispose();
        owner?.Dispose();
    }
}

/// <summary>An interactive exec or console over a websocket.</summary>
public sealed class ExecSession(ClientWebSocket ws) : IDisposable
{
    readonly SemaphoreSlim _send = new(1, 1);

    async Task SendAsync(byte channel, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        var msg = new byte[data.Length + 1];
        msg[0] = channel;
        data.CopyTo(msg.AsMemory(1));
        await _send.WaitAsync(ct);
        try { if (ws.State == WebSocketState.Open) await ws.SendAsync(msg, WebSocketMessageType.Binary, true, ct); }
        finally { _send.Release(); }
    }

    public Task WriteStdinAsync(ReadOnlyMemory<byte> data, CancellationToken ct = default) =>
        data.IsEmpty ? Task.CompletedTask : SendAsync(ExecChannel.Stdin, data, ct);
    public Task CloseStdinAsync(CancellationToken ct = default) =>
        SendAsync(ExecChannel.Stdin, ReadOnlyMemory<byte>.Empty, ct);

    public Task ResizeAsync(int width, int height, CancellationToken ct = default) =>
        SendAsync(ExecChannel.Control, Encoding.UTF8.GetBytes(
            JsonSerializer.Serialize(new ExecControl { Command = "resize", Width = width, Height = height },
            HullJson.Default.ExecControl)), ct);

    public Task SignalAsync(int signal, CancellationToken ct = default) =>
        SendAsync(ExecChannel.Control, Encoding.UTF8.GetBytes(
            JsonSerializer.Serialize(new ExecControl { Command = "signal", Signal = signal },
            HullJson.Default.ExecControl)), ct);

    /// <summary>Copies stdin from <paramref name="input"/> (closing it at EOF) while this runs.</summary>
    public Task PumpStdinAsync(Stream input, CancellationToken ct = default) => Task.Run(async () =>
    {
        var buf = new byte[16384];
        try
        {
            int n;
            while ((n = await input.ReadAsync(buf, ct)) > 0) await WriteStdinAsync(buf.AsMemory(0, n), ct);
            await CloseStdinAsync(ct);
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException or IOException or
            ObjectDisposedException) { }
    }, ct);

    /// <summary>Streams output to the writers until the command exits; returns the exit code (or null if the connection
    /// ended first).</summary>
    public async Task<int?> RunAsync(Stream stdout, Stream? stderr, CancellationToken ct = default)
    {
        var buf = new byte[65536];
        var msg = new MemoryStream();
        while (true)
        {
            msg.SetLength(0);
            WebSocketReceiveResult r;
            do
            {
                try { r = await ws.ReceiveAsync(buf, ct); }
                catch (WebSocketException) { return null; }
                if (r.MessageType == WebSocketMessageType.Close) return null;
                msg.Write(buf, 0, r.Count);
            } while (!r.EndOfMessage);
            var data = msg.GetBuffer().AsMemory(0, (int)msg.Length);
            if (data.Length == 0) continue;
            switch (data.Span[0])
            {
                case ExecChannel.Stdout:
                    await stdout.WriteAsync(data[1..], ct); await stdout.FlushAsync(ct); break;
                case ExecChannel.Stderr:
                    var e = stderr ?? stdout;
                    await e.WriteAsync(data[1..], ct); await e.FlushAsync(ct); break;
                case ExecChannel.Exit:
                    var exit = JsonSerializer.Deserialize(Encoding.UTF8.GetString(data.Span[1..]),
                        HullJson.Default.ExecExit);
                    try { await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "done",
                        CancellationToken.None); } catch (WebSocketException) { }
                    if (exit?.Error is { } err) throw new HullException(err, 500);
                    return exit?.ExitCode;
            }
        }
    }

    public void Dispose()
    {
        ws.Dispose();
        _send.Dispose();
    }
}
