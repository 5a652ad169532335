using System.Globalization;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Hull.Api;
using Hull.Instances;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Hull.Daemon;

/// <summary>The REST API: every route hulld serves. docs/api.md and openapi.json describe the same set (a test
/// checks).</summary>
public sealed partial class Api(Daemon d)
{
    InstanceManager M => d.Instances;
    static readonly HullJson J = HullJson.Default;

    public void Map(IEndpointRouteBuilder app)
    {
        Route(app, "GET", "/1.0", ServerInfo);
        Route(app, "GET", "/1.0/openapi.json", OpenApi);
        Route(app, "GET", "/1.0/metrics", Metrics);
        Route(app, "GET", "/1.0/events", Events);

        Route(app, "GET", "/1.0/instances", c => Ok(c, M.List(), J.ListInstance));
        Route(app, "POST", "/1.0/instances", CreateInstance, upload: IsBackupUpload);
        Route(app, "GET", "/1.0/instances/{name}", c => Ok(c, M.GetApi(Name(c)), J.Instance));
        Route(app, "PUT", "/1.0/instances/{name}",
            async c => await Ok(c, await M.UpdateAsync(Name(c), await Body(c, J.InstancePut), c.RequestAborted),
            J.Instance));
        Route(app, "POST", "/1.0/instances/{name}", RenameInstance);
        Route(app, "DELETE", "/1.0/instances/{name}", DeleteInstance);
        Route(app, "GET", "/1.0/instances/{name}/state",
            async c => await Ok(c, await M.StateAsync(Name(c), c.RequestAborted), J.InstanceStateInfo));
        Route(app, "PUT", "/1.0/instances/{name}/state", ChangeState);
        Route(app, "POST", "/1.0/instances/{name}/exec", ExecCollect);
        Route(app, "GET", "/1.0/instances/{name}/exec", ExecWebSocket);
        Route(app, "GET", "/1.0/instances/{name}/console", Console);
        Route(app, "GET", "/1.0/instances/{name}/logs", Logs);
        Route(app, "GET", "/1.0/instances/{name}/files", PullFile);
        Route(app, "POST", "/1.0/instances/{name}/files", PushFile, upload: _ => true);
        Route(app, "DELETE", "/1.0/instances/{name}/files", DeleteFile);
        Route(app, "GET", "/1.0/instances/{name}/snapshots", c => Ok(c, M.Snapshots(Name(c)), J.ListSnapshot));
        Route(app, "POST", "/1.0/instances/{name}/snapshots", CreateSnapshot);
        Route(app, "GET", "/1.0/instances/{name}/snapshots/{snapshot}", GetSnapshot);
        Route(app, "DELETE", "/1.0/instances/{name}/snapshots/{snapshot}", DeleteSnapshot);
        Route(app, "POST", "/1.0/instances/{name}/snapshots/{snapshot}/restore", RestoreSnapshot);
        MapBackups(app);
        MapMigration(app);

        Route(app, "GET", "/1.0/profiles", c => Ok(c, M.Profiles(), J.ListProfile));
        Route(app, "POST", "/1.0/profiles", async c =>
            await Ok(c, M.CreateProfile(await Body(c, J.ProfileCreateRequest)), J.Profile, 201));
        Route(app, "GET", "/1.0/profiles/{name}", c => Ok(c, M.GetProfile(Name(c)), J.Profile));
        Route(app, "PUT", "/1.0/profiles/{name}",
            async c => await Ok(c, M.UpdateProfile(Name(c), await Body(c, J.ProfilePut)), J.Profile));
        Route(app, "DELETE", "/1.0/profiles/{name}", c => { M.DeleteProfile(Name(c)); return NoContent(c); });
        Route(app, "GET", "/1.0/networks", c => Ok(c, M.Networks(), J.ListNetwork));
        Route(app, "POST", "/1.0/networks", async c =>
            await Ok(c, M.CreateNetwork(await Body(c, J.NetworkCreateRequest)), J.Network, 201));
        Route(app, "GET", "/1.0/networks/{name}", c => Ok(c, M.GetNetwork(Name(c)), J.Network));
        Route(app, "PUT", "/1.0/networks/{name}",
            async c => await Ok(c, M.UpdateNetwork(Name(c), await Body(c, J.NetworkPut)), J.Network));
        Route(app, "PATCH", "/1.0/networks/{name}",
            async c => await Ok(c, M.PatchNetwork(Name(c), await Body(c, J.NetworkPut)), J.Network));
        Route(app, "DELETE", "/1.0/networks/{name}", c => { M.DeleteNetwork(Name(c)); return NoContent(c); });
        Route(app, "GET", "/1.0/networks/{name}/leases", c => Ok(c, M.NetworkLeases(Name(c)), J.ListNetworkLease));
        Route(app, "GET", "/1.0/networks/{name}/state", c => Ok(c, M.NetworkStateApi(Name(c)), J.NetworkState));

        Route(app, "GET", "/1.0/images", c => Ok(c, d.Images.List(), J.ListImage));
        Route(app, "POST", "/1.0/images", ImportImage, upload: _ => true);
        Route(app, "POST", "/1.0/images/pull", c => RegistryApi.PullImage(d, c));
        Route(app, "GET", "/1.0/images/aliases", c => Ok(c, d.Images.Aliases(), J.ListImageAlias));
        Route(app, "POST", "/1.0/images/aliases", async c =>
        {
            var a = await Body(c, J.ImageAlias);
            d.Images.SetAlias(a.Name, a.Target);
            await NoContent(c);
        });
        Route(app, "DELETE", "/1.0/images/aliases/{name}",
            c => { d.Images.DeleteAlias(Name(c)); return NoContent(c); });
        Route(app, "GET", "/1.0/images/{fingerprint}", c => Ok(c, d.Images.Get(Param(c, "fingerprint")), J.Image));
        Route(app, "DELETE", "/1.0/images/{fingerprint}",
            c => { d.Images.Delete(Param(c, "fingerprint"), M.Records()); return NoContent(c); });
        Route(app, "GET", "/1.0/images/{fingerprint}/export", ExportImage);

        Route(app, "GET", "/1.0/operations", c => Ok(c, d.Operations.List(), J.ListOperation));
        Route(app, "GET", "/1.0/operations/{id}",
            c => Ok(c, d.Operations.Get(Param(c, "id")) ?? throw OpNotFound(Param(c, "id")), J.Operation));
        Route(app, "GET", "/1.0/operations/{id}/wait", WaitOperation);
        Route(app, "DELETE", "/1.0/operations/{id}", c => Ok(c, d.Operations.Cancel(Param(c, "id")), J.Operation));
    }

    /// <param name="upload">Whether a request is an upload (image, backup, file), whose body may be up to
    /// --max-upload; every other body is JSON, up to --max-json-body.</param>
    void Route(IEndpointRouteBuilder app, string method, string pattern, RequestDelegate handler,
        Func<HttpContext, bool>? upload = null)
    {
        app.MapMethods(pattern, [method], async c =>
        {
            Interlocked.Increment(ref d.ApiRequests);
            try
            {
                LimitBody(c, upload?.Invoke(c) == true);
                await handler(c);
            }
            // A websocket request refused before its upgrade gets the error as any request, and its message also in
            // the header X-Hull-Error (URI-escaped): a websocket client sees a refused upgrade's headers, not its body.
            catch (Exception e) when (!c.Response.HasStarted)
            {
                var (code, msg) = e is Microsoft.AspNetCore.Http.BadHttpRequestException { StatusCode: 413 }
                    ? (413, TooLarge(c)) : ApiErrors.Describe(e);
                if (code >= 500) Interlocked.Increment(ref d.ApiErrors);
                if (c.WebSockets.IsWebSocketRequest) c.Response.Headers["X-Hull-Error"] = Uri.EscapeDataString(msg);
                await Error(c, code, msg);
            }
        });
    }

    /// <summary>Middleware: a request no route takes (unknown path, or a method the path lacks) gets the error
    /// JSON.</summary>
    public static async Task UnmatchedRoutes(HttpContext c, RequestDelegate next)
    {
        await next(c);
        if (c.Response.HasStarted || c.Response.StatusCode is not (404 or 405)) return;
        var what = $"{c.Request.Method} {c.Request.Path}";
        var msg = c.Response.StatusCode == 404
            ? $"no such API route: {what}; GET /1.0/openapi.json lists the routes"
            : $"method not allowed: {what}; this path takes {c.Response.Headers.Allow}";
        await Error(c, c.Response.StatusCode, msg);
    }

    const string UploadLimitKey = "hull.upload";

    /// <summary>Sets the request's body limit; refuses at once a body whose declared length is over it (413).</summary>
    void LimitBody(HttpContext c, bool upload)
    {
        c.Items[UploadLimitKey] = upload;
        var limit = upload ? d.Options.MaxUpload : d.Options.MaxJsonBody;
        if (c.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>()
            is { IsReadOnly: false } f) f.MaxRequestBodySize = limit;
        if (c.Request.ContentLength > limit) throw new InstanceException(TooLarge(c), 413);
    }

    string TooLarge(HttpContext c) => c.Items[UploadLimitKey] is true
        ? $"the upload is larger than {ConfigSchema.FormatSize(d.Options.MaxUpload)}, hulld's limit for uploads: " +
          "raise it with hulld --max-upload SIZE (or HULL_MAX_UPLOAD)"
        : $"the request body is larger than {ConfigSchema.FormatSize(d.Options.MaxJsonBody)}, " +
          "hulld's limit for JSON requests: " +
          "send less, or raise it with hulld --max-json-body SIZE (or HULL_MAX_JSON_BODY)";

    static InstanceException OpNotFound(string id) =>
        new($"operation '{id}' not found: 'hull operation list' shows the known ones", 404);

    static string Name(HttpContext c) => Param(c, "name");
    static string Param(HttpContext c, string key) => c.Request.RouteValues[key]?.ToString() ?? "";
    static string? Query(HttpContext c, string key) =>
        c.Request.Query.TryGetValue(key, out var v) ? v.ToString() : null;
    static bool QueryBool(HttpContext c, string key) => Query(c, key) is { } v
        && ConfigSchema.TryParseBool(v, out var b) && b;

    public static Task Ok<T>(HttpContext c, T value, JsonTypeInfo<T> type, int status = 200)
    {
        c.Response.StatusCode = status;
        c.Response.ContentType = "application/json";
        return JsonSerializer.SerializeAsync(c.Response.Body, value, type, c.RequestAborted);
    }

    static Task NoContent(HttpContext c)
    {
        c.Response.StatusCode = 204;
        return Task.CompletedTask;
    }

    public static Task Error(HttpContext c, int code, string message) =>
        Ok(c, new ErrorResponse { Error = message, ErrorCode = code }, J.ErrorResponse,
            code is >= 400 and < 600 ? code : 500);

    static async Task<T> Body<T>(HttpContext c, JsonTypeInfo<T> type) where T : class
    {
        try { return await JsonSerializer.DeserializeAsync(c.Request.Body, type, c.RequestAborted)
            ?? throw new InstanceException("the request body is empty: send a JSON object"); }
        catch (JsonException e)
        {
            throw new InstanceException($"the request body is not valid for this call: {JsonError(e)}");
        }
    }

    /// <summary>
    /// A JSON error in the user's terms: the field (path) and the JSON type it takes, not the .NET type that
    /// System.Text.Json names ("could not be converted to System.Int32").
    /// </summary>
    public static string JsonError(JsonException e)
    {
        var where = e.LineNumber is { } line && e.BytePositionInLine is { } col
            ? $" (line {line + 1}, byte {col + 1})" : "";
        var field = e.Path is { Length: > 1 } p ? p.TrimStart('$').TrimStart('.') : null;
        var m = ConvertedTo().Match(e.Message);
        if (!m.Success)
        {
            var text = e.Message;
            var cut = text.IndexOf(" Path: ", StringComparison.Ordinal);
            if (cut > 0) text = text[..cut];
            return $"{text}{(field is null ? "" : $" at field '{field}'")}{where}";
        }
        var t = m.Groups[1].Value;
        var expected =
            t.Contains("Dictionary", StringComparison.Ordinal) ? "an object" :
            t.Contains("List`1", StringComparison.Ordinal) || t.EndsWith("[]", StringComparison.Ordinal) ? "an array" :
            t.Contains("System.Int", StringComparison.Ordinal) || t.Contains("System.UInt", StringComparison.Ordinal)
                ? "a whole number" :
            t.Contains("System.Double", StringComparison.Ordinal)
                || t.Contains("System.Decimal", StringComparison.Ordinal) ? "a number" :
            t.Contains("System.Boolean", StringComparison.Ordinal) ? "true or false" :
            t.Contains("System.String", StringComparison.Ordinal) ? "a string" :
            t.Contains("DateTime", StringComparison.Ordinal) ? "a date and time string (ISO 8601)" : "an object";
        return field is null ? $"the body must be {expected}{where}" : $"field '{field}' must be {expected}{where}";
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"could not be converted to (.+?)\. Path:")]
    private static partial System.Text.RegularExpressions.Regex ConvertedTo();

    Task Accepted(HttpContext c, Operation op)
    {
        c.Response.Headers.Location = $"/1.0/operations/{op.Id}";
        return Ok(c, op, J.Operation, 202);
    }

    // ---- server ----

    Task ServerInfo(HttpContext c) => Ok(c, new ServerInfo
    {
        Version = Daemon.Version, Pid = Environment.ProcessId, StateDir = d.Options.StateDir, Socket = d.Options.Socket,
        InstanceTypes = [.. M.Types], StartedAt = d.StartedAt,
    }, J.ServerInfo);

    static async Task OpenApi(HttpContext c)
    {
        c.Response.ContentType = "application/json";
        await using var s = OpenApiDocument.Open();
        await s.CopyToAsync(c.Response.Body, c.RequestAborted);
    }

    async Task Metrics(HttpContext c)
    {
        c.Response.ContentType = "text/plain; version=0.0.4";
        await c.Response.WriteAsync(await d.MetricsTextAsync(c.RequestAborted), c.RequestAborted);
    }

    async Task Events(HttpContext c)
    {
        var types = Query(c, "type") is { Length: > 0 } t
            ? t.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet() : null;
        foreach (var ty in types ?? [])
            if (ty is not ("lifecycle" or "operation" or "logging"))
                throw new InstanceException($"event type '{ty}' is unknown: use lifecycle, operation or logging");
        var (id, reader) = d.Events.Subscribe(types);
        try
        {
            c.Response.ContentType = "application/x-ndjson";
            await c.Response.Body.FlushAsync(c.RequestAborted);
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(c.RequestAborted, d.Shutdown);
            await foreach (var e in reader.ReadAllAsync(cts.Token))
            {
                await c.Response.WriteAsync(JsonSerializer.Serialize(e, J.Event) + "\n", cts.Token);
                await c.Response.Body.FlushAsync(cts.Token);
            }
        }
        catch (OperationCanceledException) { }
        finally { d.Events.Unsubscribe(id); }
    }

    // ---- instances ----

    async Task CreateInstance(HttpContext c)
    {
        if (IsBackupUpload(c)) { await ImportInstance(c); return; }
        var req = await Body(c, J.InstanceCreateRequest);
        M.PrecheckCreate(req);
        var op = d.Operations.Start(req.Start ? $"launching {req.Name}" : $"creating {req.Name}",
            [$"/1.0/instances/{req.Name}"], mayCancel: true,
            async ctx => await M.CreateAsync(req, ctx, ctx.Token));
        await Accepted(c, op);
    }

    async Task RenameInstance(HttpContext c)
    {
        var req = await Body(c, J.InstanceRenameRequest);
        await M.RenameAsync(Name(c), req.Name, c.RequestAborted);
        await Ok(c, M.GetApi(req.Name), J.Instance);
    }

    async Task DeleteInstance(HttpContext c)
    {
        var name = Name(c);
        var force = QueryBool(c, "force");
        M.PrecheckDelete(name, force);
        var op = d.Operations.Start($"deleting {name}", [$"/1.0/instances/{name}"], mayCancel: false,
            ctx => M.DeleteAsync(name, force, ctx, CancellationToken.None));
        await Accepted(c, op);
    }

    async Task ChangeState(HttpContext c)
    {
        var name = Name(c);
        var req = await Body(c, J.InstanceStateRequest);
        var action = M.PrecheckState(name, req.Action);
        if (req.Timeout < -1 || req.Timeout > 86400)
            throw new InstanceException($"timeout={req.Timeout} is invalid: use -1 (wait forever) or 0 to 86400 " +
                "seconds");
        var timeout = req.Timeout < 0 ? Timeout.InfiniteTimeSpan : TimeSpan.FromSeconds(req.Timeout);
        var op = d.Operations.Start($"{action.Word()} {name}", [$"/1.0/instances/{name}"], mayCancel: false,
            action switch
        {
            StateAction.Start => ctx => M.StartAsync(name, ctx, CancellationToken.None),
            StateAction.Stop => ctx => M.StopAsync(name, req.Force, timeout, ctx, CancellationToken.None),
            StateAction.Restart => ctx => M.RestartAsync(name, req.Force, timeout, ctx, CancellationToken.None),
            StateAction.Pause => _ => M.PauseAsync(name, CancellationToken.None),
            _ => (Func<OperationContext, Task>)(_ => M.ResumeAsync(name, CancellationToken.None)),
        });
        await Accepted(c, op);
    }

    static ExecSpec ToSpec(ExecRequest r)
    {
        if (r.Command.Count == 0 || string.IsNullOrEmpty(r.Command[0])) throw new InstanceException(
            "no command given: name the program to run");
        // The kernel takes C strings: a NUL would silently cut the value, so refuse it.
        for (var i = 0; i < r.Command.Count; i++)
            if (r.Command[i].Contains('\0'))
                throw new InstanceException($"command[{i}] contains a NUL byte: arguments cannot hold NUL");
        foreach (var (k, v) in r.Environment)
            if (v.Contains('\0'))
                throw new InstanceException($"environment variable '{k}' contains a NUL byte: values cannot hold NUL");
        if (r.Cwd?.Contains('\0') == true)
            throw new InstanceException("cwd contains a NUL byte: use a path without NUL");
        if (r.User?.Contains('\0') == true)
            throw new InstanceException("user contains a NUL byte: use a name or uid without NUL");
        foreach (var k in r.Environment.Keys)
            if (!ConfigSchema.IsEnvName(k)) throw new InstanceException(
                $"environment variable name '{k}' is invalid: use letters, digits and '_', not starting with a digit");
        if (r.Cwd is { } cwd && !cwd.StartsWith('/')) throw new InstanceException(
            $"cwd '{cwd}' is invalid: use an absolute path");
        if (r.Width is < 1 or > 10000 || r.Height is < 1 or > 10000) throw new InstanceException(
            "the terminal size is invalid: use 1 to 10000 columns and rows");
        return new ExecSpec { Command = r.Command, Environment = r.Environment, Cwd = r.Cwd, User = r.User, Tty = r.Tty,
            Width = r.Width, Height = r.Height };
    }

    async Task ExecCollect(HttpContext c)
    {
        var req = await Body(c, J.ExecRequest);
        var spec = ToSpec(req);
        var (drv, inst) = M.Running(Name(c));
        await using var s = await drv.ExecAsync(inst, spec, c.RequestAborted);
        var stdin = Task.Run(async () =>
        {
            try
            {
                if (req.Stdin is { } input) await s.Stdin.WriteAsync(Encoding.UTF8.GetBytes(input), c.RequestAborted);
            }
            catch (IOException) { }
            finally { try { s.Stdin.Close(); } catch (IOException) { } }
        });
        var overflow = false;
        void TooMuch() { overflow = true; try { s.Signal(9); } catch (Exception) { } }
        var outTask = ReadBoundedAsync(s.Stdout, MaxExecOutput, TooMuch, c.RequestAborted);
        var errTask = s.Stderr is null ? Task.FromResult("")
            : ReadBoundedAsync(s.Stderr, MaxExecOutput, TooMuch, c.RequestAborted);
        var code = await s.Exit.WaitAsync(c.RequestAborted);
        await stdin;
        var (stdout, stderr) = (await outTask, await errTask);
        if (overflow)
            throw new InstanceException($"the command wrote more than {ConfigSchema.FormatSize(MaxExecOutput)} " +
                "to stdout or stderr, the limit of an exec whose output is collected, and was killed: " +
                "use the interactive exec (websocket), " +
                "which streams (hull exec)", 413);
        await Ok(c, new ExecResult { ExitCode = code, Stdout = stdout, Stderr = stderr }, J.ExecResult);
    }

    /// <summary>The most output of each stream that POST .../exec collects into its reply.</summary>
    public const int MaxExecOutput = 16 << 20;

    /// <summary>Reads a stream to its end, keeping at most <paramref name="limit"/> bytes (then calls
    /// <paramref name="over"/> once and drains the rest).</summary>
    static async Task<string> ReadBoundedAsync(Stream from, int limit, Action over, CancellationToken ct)
    {
        var kept = new MemoryStream();
        var buf = new byte[65536];
        int n;
        while ((n = await from.ReadAsync(buf, ct)) > 0)
        {
            var room = limit - (int)kept.Length;
            if (n > room)
            {
                if (room >= 0) over();
                kept.Write(buf, 0, Math.Max(room, 0));
                limit = -1;
                continue;
            }
            kept.Write(buf, 0, n);
        }
        return Encoding.UTF8.GetString(kept.GetBuffer(), 0, (int)kept.Length);
    }

    async Task ExecWebSocket(HttpContext c)
    {
        // The state first: the SDK repeats a refused upgrade as a plain GET to read the error, which must be the real
        // one.
        M.Running(Name(c));
        if (!c.WebSockets.IsWebSocketRequest)
            throw new InstanceException("this endpoint needs a websocket: POST to the same path to run a command and " +
                "collect its output");
        var json = Query(c, "request") ?? throw new InstanceException(
            "the 'request' query parameter (an exec request as JSON) is missing");
        ExecRequest req;
        try { req = JsonSerializer.Deserialize(json, J.ExecRequest)
            ?? throw new InstanceException("the exec request is empty"); }
        catch (JsonException e) { throw new InstanceException($"the exec request is not valid: {JsonError(e)}"); }
        var spec = ToSpec(req);
        var (drv, inst) = M.Running(Name(c));
        await using var s = await drv.ExecAsync(inst, spec, d.Shutdown);
        using var ws = await c.WebSockets.AcceptWebSocketAsync();
        await StreamBridge.RunExecAsync(ws, s, d.Shutdown);
    }

    async Task Console(HttpContext c)
    {
        // The state first, as for exec: the SDK repeats a refused upgrade as a plain GET to read the error.
        var (drv, inst) = M.Running(Name(c));
        if (!c.WebSockets.IsWebSocketRequest) throw new InstanceException("the console needs a websocket connection");
        await using var s = await drv.AttachConsoleAsync(inst, d.Shutdown);
        using var ws = await c.WebSockets.AcceptWebSocketAsync();
        await StreamBridge.RunConsoleAsync(ws, s, d.Shutdown);
    }

    async Task Logs(HttpContext c)
    {
        var (drv, inst) = M.Any(Name(c));
        var follow = QueryBool(c, "follow");
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(c.RequestAborted, d.Shutdown);
        await using var s = await drv.OpenLogAsync(inst, follow, cts.Token);
        c.Response.ContentType = "text/plain; charset=utf-8";
        var buf = new byte[16384];
        try
        {
            int n;
            while ((n = await s.ReadAsync(buf, cts.Token)) > 0)
            {
                await c.Response.Body.WriteAsync(buf.AsMemory(0, n), cts.Token);
                await c.Response.Body.FlushAsync(cts.Token);
            }
        }
        catch (OperationCanceledException) { }
    }

    static string FilePath(HttpContext c)
    {
        var p = Query(c, "path");
        if (string.IsNullOrEmpty(p) || p[0] != '/' || p.Contains('\0'))
            throw new InstanceException("the 'path' query parameter must be an absolute path inside the instance");
        return p;
    }

    async Task PullFile(HttpContext c)
    {
        var (drv, inst) = M.Any(Name(c));
        var path = FilePath(c);
        var st = await drv.StatFileAsync(inst, path, c.RequestAborted)
            ?? throw new InstanceException($"{path} does not exist in instance '{inst.Name}'", 404);
        c.Response.Headers["X-Hull-Type"] = st.Type;
        c.Response.Headers["X-Hull-Mode"] = st.Mode.ToString(CultureInfo.InvariantCulture);
        c.Response.Headers["X-Hull-Uid"] = st.Uid.ToString(CultureInfo.InvariantCulture);
        c.Response.Headers["X-Hull-Gid"] = st.Gid.ToString(CultureInfo.InvariantCulture);
        if (st.Type == "directory")
        {
            await Ok(c, (await drv.ListFilesAsync(inst, path, c.RequestAborted)).ToList(), J.ListFileEntry);
            return;
        }
        if (st.Type != "file")
            throw new InstanceException($"{path} in instance '{inst.Name}' is a {st.Type} " +
                "(a device, fifo or socket), " +
                "not a regular file or directory: only those can be pulled");
        await using var s = await drv.PullFileAsync(inst, path, c.RequestAborted);
        c.Response.ContentType = "application/octet-stream";
        // A pseudo file (procfs, sysfs) says size 0 and has content: it is sent chunked, up to a bound.
        if (st.Size > 0) c.Response.ContentLength = st.Size;
        var left = st.Size > 0 ? st.Size : MaxPseudoFile;
        var buf = new byte[65536];
        int n;
        while (left > 0
               && (n = await s.ReadAsync(buf.AsMemory(0, (int)Math.Min(buf.Length, left)), c.RequestAborted)) > 0)
        {
            await c.Response.Body.WriteAsync(buf.AsMemory(0, n), c.RequestAborted);
            left -= n;
        }
        // A file that shrank while sent: the reply cannot be completed, so the reader sees a cut connection.
        if (st.Size > 0 && left > 0) c.Abort();
    }

    /// <summary>The most that is sent of a file whose size is unknown (a procfs or sysfs file says 0).</summary>
    const long MaxPseudoFile = 16 << 20;

    async Task PushFile(HttpContext c)
    {
        var (drv, inst) = M.Any(Name(c));
        var path = FilePath(c);
        int H(string key, int def)
        {
            if (!c.Request.Headers.TryGetValue(key, out var v)) return def;
            return int.TryParse(v.ToString(), NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n >= 0 ? n
                : throw new InstanceException($"header {key}='{v}' is invalid: use a non-negative whole number");
        }
        var mode = H("X-Hull-Mode", 0b110_100_100);
        if (mode > 0b111_111_111_111) throw new InstanceException(
            $"file mode {Convert.ToString(mode, 8)} is invalid: use 0 to 7777 (octal)");
        await drv.PushFileAsync(inst, path, c.Request.Body,
            new FileMeta { Mode = mode, Uid = H("X-Hull-Uid", 0), Gid = H("X-Hull-Gid", 0) }, c.RequestAborted);
        await NoContent(c);
    }

    async Task DeleteFile(HttpContext c)
    {
        var (drv, inst) = M.Any(Name(c));
        await drv.DeleteFileAsync(inst, FilePath(c), c.RequestAborted);
        await NoContent(c);
    }

    // ---- snapshots ----

    async Task CreateSnapshot(HttpContext c)
    {
        var name = Name(c);
        var req = await Body(c, J.SnapshotCreateRequest);
        InstanceManager.ValidateName(req.Name, "snapshot");
        if (M.Snapshots(name).Any(s => s.Name == req.Name))
            throw new InstanceException($"snapshot '{req.Name}' of '{name}' already exists: choose another name or " +
                "delete it first", 409);
        var op = d.Operations.Start($"snapshot {name}/{req.Name}", [$"/1.0/instances/{name}"], false,
            async _ => await M.CreateSnapshotAsync(name, req.Name, CancellationToken.None));
        await Accepted(c, op);
    }

    Task GetSnapshot(HttpContext c)
    {
        var snap = Param(c, "snapshot");
        var s = M.Snapshots(Name(c)).FirstOrDefault(x => x.Name == snap)
            ?? throw new InstanceException($"snapshot '{snap}' of '{Name(c)}' not found: 'hull snapshot list " +
                $"{Name(c)}' shows them", 404);
        return Ok(c, s, J.Snapshot);
    }

    async Task DeleteSnapshot(HttpContext c)
    {
        var (name, snap) = (Name(c), Param(c, "snapshot"));
        if (M.Snapshots(name).All(x => x.Name != snap))
            throw new InstanceException($"snapshot '{snap}' of '{name}' not found: 'hull snapshot list {name}' shows " +
                "them", 404);
        var op = d.Operations.Start($"delete snapshot {name}/{snap}", [$"/1.0/instances/{name}"], false,
            _ => M.DeleteSnapshotAsync(name, snap, CancellationToken.None));
        await Accepted(c, op);
    }

    async Task RestoreSnapshot(HttpContext c)
    {
        var (name, snap) = (Name(c), Param(c, "snapshot"));
        M.PrecheckRestore(name, snap);
        var op = d.Operations.Start($"restore {name} from {snap}", [$"/1.0/instances/{name}"], false,
            _ => M.RestoreSnapshotAsync(name, snap, CancellationToken.None));
        await Accepted(c, op);
    }

    // ---- images ----

    async Task ImportImage(HttpContext c)
    {
        var type = c.Request.Headers["X-Hull-Type"].ToString() is { Length: > 0 } t ? t : InstanceTypes.Container;
        var alias = c.Request.Headers["X-Hull-Alias"].ToString() is { Length: > 0 } a ? a : null;
        var description = c.Request.Headers["X-Hull-Description"].ToString();
        var format = c.Request.Headers["X-Hull-Format"].ToString() is { Length: > 0 } fm ? fm : "rootfs";
        var reference = c.Request.Headers["X-Hull-Oci-Ref"].ToString() is { Length: > 0 } rf ? rf : null;
        if (format is not ("rootfs" or "oci-layout")) throw new InstanceException(
            $"image format '{format}' is invalid: use rootfs (a tarball or disk image) or oci-layout (a tarball of " +
            "an OCI layout directory)");
        if (format == "oci-layout" && type != InstanceTypes.Container) throw new InstanceException(
            "an OCI image layout makes a container image: drop --vm");
        if (!InstanceTypes.IsValid(type)) throw new InstanceException(
            $"image type '{type}' is invalid: use container or vm");
        if (alias is not null && !ConfigSchema.IsValidName(alias, 128))
            throw new InstanceException($"image alias '{alias}' is invalid: use letters, digits, '-', '_' or '.', " +
                "starting with a letter or digit");
        // Spool the upload inside the request, then unpack in an operation.
        var spool = Path.Combine(d.Options.StateDir, "images", "tmp-upload-" + Guid.NewGuid().ToString("N")[..12]);
        await SpoolAsync(c, spool);
        var op = d.Operations.Start($"import image{(alias is null ? "" : " " + alias)}", ["/1.0/images"], true,
            async ctx =>
        {
            try
            {
                await using var f = File.OpenRead(spool);
                var desc = description.Length == 0 ? "imported image" : description;
                var img = format == "oci-layout"
                    ? await d.Images.ImportOciLayoutAsync(f, reference, alias, desc, ctx, ctx.Token)
                    : await d.Images.ImportAsync(f, type, alias, desc, ctx, ctx.Token);
                ctx.Result("fingerprint", img.Fingerprint);
            }
            finally { File.Delete(spool); }
        });
        await Accepted(c, op);
    }

    /// <summary>
    /// Writes the request body to a spool file in the state dir; on any failure (the client went away, the body is
    /// over the limit, the disk is full: 507) the file is removed. Restart sweeps spools a crash left behind.
    /// </summary>
    internal async Task SpoolAsync(HttpContext c, string spool)
    {
        if (c.Request.ContentLength is { } len && FreeBytes(Path.GetDirectoryName(spool)!) is var free && len > free)
            throw new InstanceException($"the upload ({ConfigSchema.FormatSize(len)}) does not fit on the disk " +
                $"holding hulld's state ({d.Options.StateDir}, {ConfigSchema.FormatSize(free)} free): " +
                "free some space and retry", 507);
        try
        {
            await using var f = File.Create(spool);
            await c.Request.Body.CopyToAsync(f, c.RequestAborted);
        }
        catch
        {
            File.Delete(spool);
            throw;
        }
    }

    static long FreeBytes(string dir)
    {
        try { return new DriveInfo(dir).AvailableFreeSpace; } catch (IOException) { return long.MaxValue; }
    }

    async Task ExportImage(HttpContext c)
    {
        var path = d.Images.ExportPath(Param(c, "fingerprint"));
        c.Response.ContentType = "application/octet-stream";
        c.Response.ContentLength = new FileInfo(path).Length;
        await using var f = File.OpenRead(path);
        await f.CopyToAsync(c.Response.Body, c.RequestAborted);
    }

    // ---- operations ----

    async Task WaitOperation(HttpContext c)
    {
        var id = Param(c, "id");
        var timeout = TimeSpan.FromDays(1);
        if (Query(c, "timeout") is { } t)
        {
            if (!int.TryParse(t, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var secs)
                || secs < -1)
                throw new InstanceException($"timeout='{t}' is invalid: use seconds (0 or more) or -1 to wait until " +
                    "the end");
            if (secs >= 0) timeout = TimeSpan.FromSeconds(secs);
        }
        var op = await d.Operations.WaitAsync(id, timeout, c.RequestAborted) ?? throw OpNotFound(id);
        await Ok(c, op, J.Operation);
    }
}

/// <summary>The exec and console websocket framing: each binary message is one channel byte, then data.</summary>
public static class StreamBridge
{
    public static async Task RunExecAsync(WebSocket ws, IExecSession s, CancellationToken shutdown)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(shutdown);
        var send = new SemaphoreSlim(1, 1);
        var outTask = Pump(s.Stdout, ExecChannel.Stdout, ws, send, cts.Token);
        var errTask = s.Stderr is null ? Task.CompletedTask : Pump(s.Stderr, ExecChannel.Stderr, ws, send, cts.Token);
        var input = Task.Run(() => ReceiveLoop(ws, s.Stdin, msg =>
        {
            var ctl = JsonSerializer.Deserialize(msg, HullJson.Default.ExecControl);
            if (ctl is null) return;
            switch (ctl.Command)
            {
                case "resize": s.Resize(ctl.Width, ctl.Height); break;
                case "signal": s.Signal(ctl.Signal); break;
            }
        }, cts.Token));
        int code;
        string? error = null;
        try { code = await s.Exit; }
        catch (Exception e) { code = -1; error = e.Message; }
        try { await Task.WhenAll(outTask, errTask).WaitAsync(TimeSpan.FromSeconds(5)); } catch (TimeoutException) { }
        var exit = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new ExecExit { ExitCode = code, Error = error },
            HullJson.Default.ExecExit));
        await SendAsync(ws, send, ExecChannel.Exit, exit, CancellationToken.None);
        try { await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "exited", CancellationToken.None); } catch (
            WebSocketException) { }
        // Let the client answer the close (its unread input would otherwise reset the connection and lose the exit
        // message).
        try { await input.WaitAsync(TimeSpan.FromSeconds(5)); } catch (Exception) { }
        cts.Cancel();
        try { await input; } catch (Exception) { }
    }

    public static async Task RunConsoleAsync(WebSocket ws, IConsoleSession s, CancellationToken shutdown)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(shutdown);
        var send = new SemaphoreSlim(1, 1);
        var outTask = Pump(s.Output, ExecChannel.Stdout, ws, send, cts.Token);
        var input = ReceiveLoop(ws, s.Input, _ => { }, cts.Token);
        await Task.WhenAny(outTask, input);
        cts.Cancel();
        try { await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "detached",
            CancellationToken.None); } catch (Exception) { }
    }

    static void Dbg(string m) { if (Environment.GetEnvironmentVariable("HULL_DEBUG") == "1") Console.Error.WriteLine(
        "hulld debug: " + m); }

    static async Task Pump(Stream from, byte channel, WebSocket ws, SemaphoreSlim send, CancellationToken ct)
    {
        var buf = new byte[32768];
        try
        {
            int n;
            while ((n = await from.ReadAsync(buf, ct)) > 0) await SendAsync(ws, send, channel, buf.AsMemory(0, n), ct);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or WebSocketException or
            ObjectDisposedException) { }
    }

    static async Task SendAsync(WebSocket ws, SemaphoreSlim send, byte channel, ReadOnlyMemory<byte> data,
        CancellationToken ct)
    {
        var msg = new byte[data.Length + 1];
        msg[0] = channel;
        data.CopyTo(msg.AsMemory(1));
        await send.WaitAsync(ct);
        try { if (ws.State == WebSocketState.Open) await ws.SendAsync(msg, WebSocketMessageType.Binary, true,
            ct); else Dbg($"send on {ws.State} channel {channel}"); }
        catch (WebSocketException e) { Dbg(e.ToString()); }
        finally { send.Release(); }
    }

    /// <summary>The largest websocket message hulld takes from a client (stdin data, control).</summary>
    public const int MaxMessage = 1 << 20;

    /// <summary>Reads client messages: channel 0 is input (an empty one closes it), channel 3 is a JSON control
    /// message.</summary>
    static async Task ReceiveLoop(WebSocket ws, Stream? stdin, Action<string> control, CancellationToken ct)
    {
        var buf = new byte[65536];
        var msg = new MemoryStream();
        try
        {
            while (ws.State == WebSocketState.Open && !ct.IsCancellationRequested)
            {
                msg.SetLength(0);
                WebSocketReceiveResult r;
                do
                {
                    r = await ws.ReceiveAsync(buf, ct);
                    if (r.MessageType == WebSocketMessageType.Close) { stdin?.Close(); return; }
                    msg.Write(buf, 0, r.Count);
                    if (msg.Length > MaxMessage)
                    {
                        // Input is streamed message by message; one message is not buffered past this.
                        await ws.CloseOutputAsync(WebSocketCloseStatus.MessageTooBig,
                            $"a message is at most {MaxMessage} bytes: send input in smaller pieces",
                            CancellationToken.None);
                        stdin?.Close();
                        return;
                    }
                } while (!r.EndOfMessage);
                var data = msg.GetBuffer().AsMemory(0, (int)msg.Length);
                if (data.Length == 0) continue;
                switch (data.Span[0])
                {
                    case ExecChannel.Stdin when stdin is not null:
                        if (data.Length == 1) { stdin.Close(); stdin = null; }
                        else { await stdin.WriteAsync(data[1..], ct); await stdin.FlushAsync(ct); }
                        break;
                    case ExecChannel.Control:
                        control(Encoding.UTF8.GetString(data.Span[1..]));
                        break;
                }
            }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or WebSocketException or
            ObjectDisposedException) { }
    }
}
