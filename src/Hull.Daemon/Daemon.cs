using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Hull.Api;
using Hull.Instances;
using Hull.Linux;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Logging;

namespace Hull.Daemon;

public sealed class DaemonOptions
{
    public string StateDir = HullPaths.StateDir;
    public string Socket = HullPaths.Socket;
    /// <summary>A group allowed to use the socket (0660); null keeps it root-only (0600).</summary>
    public string? Group;
    /// <summary>The network hulld makes at its first start (and puts on the default profile as eth0); "none" makes
    /// none.</summary>
    public string DefaultNetwork = Environment.GetEnvironmentVariable("HULL_DEFAULT_NETWORK") is { Length: > 0 } n
        ? n : "hullbr0";
    public bool PrintRoutes;
    public bool Verbose;
    /// <summary>The largest JSON request body (every route but the uploads).</summary>
    public long MaxJsonBody = Env("HULL_MAX_JSON_BODY", 4L << 20, size: true);
    /// <summary>The largest upload: an image, an instance backup, a file pushed into an instance.</summary>
    public long MaxUpload = Env("HULL_MAX_UPLOAD", 64L << 30, size: true);
    /// <summary>The most an image (every layer) may unpack to, in bytes and in entries.</summary>
    public ImageLimits ImageLimits = new()
    {
        MaxBytes = Env("HULL_MAX_IMAGE_SIZE", 32L << 30, size: true),
        MaxEntries = Env("HULL_MAX_IMAGE_ENTRIES", 2_000_000, size: false),
    };

    static long Env(string env, long def, bool size) =>
        Environment.GetEnvironmentVariable(env) is { Length: > 0 } v ? Parse(env, v, size) : def;

    /// <summary>A size ("16GiB", at least 1KiB) or a count (at least 1).</summary>
    static long Parse(string what, string v, bool size) =>
        (size ? ConfigSchema.TryParseSize(v, out var n) && n >= 1024 : long.TryParse(v, out n) && n >= 1) ? n
            : throw new ArgumentException(
                $"{what} '{v}' is invalid: use "
                + (size ? "a size of at least 1KiB, such as 16GiB" : "a number of at least 1"));

    public const string Usage = $"""
        usage: hulld [--socket PATH] [--state-dir DIR] [--group NAME] [--max-json-body SIZE] [--max-upload SIZE]
                     [--max-image-size SIZE] [--max-image-entries N] [--default-network NAME] [--verbose]
          Runs the Hull daemon in the foreground. It serves the REST API on a unix socket and owns every instance.
          --socket PATH     the API socket (default $HULL_SOCKET or {HullPaths.DefaultSocket})
          --state-dir DIR   the state directory (default $HULL_DIR or {HullPaths.DefaultStateDir})
          --group NAME      let members of this group use the socket (mode 0660); without it only root can (0600)
          --max-json-body SIZE    the largest JSON request body (default $HULL_MAX_JSON_BODY or 4MiB)
          --max-upload SIZE       the largest upload: image, backup, pushed file (default $HULL_MAX_UPLOAD or 64GiB)
          --max-image-size SIZE   the most an image may unpack to (default $HULL_MAX_IMAGE_SIZE or 32GiB)
          --max-image-entries N   the most files an image may hold (default $HULL_MAX_IMAGE_ENTRIES or 2000000)
          --default-network NAME  the network made at the first start, on the default profile's eth0
                                  (default $HULL_DEFAULT_NETWORK or hullbr0; none: no network)
          --verbose         log every request
          --routes          print the API routes and exit
        """;

    public static DaemonOptions Parse(string[] args)
    {
        var o = new DaemonOptions();
        for (var i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--socket": o.Socket = Path.GetFullPath(Next()); break;
                case "--state-dir": o.StateDir = Path.GetFullPath(Next()); break;
                case "--group": o.Group = Next(); break;
                case "--max-json-body": o.MaxJsonBody = Parse(args[i], Next(), true); break;
                case "--max-upload": o.MaxUpload = Parse(args[i], Next(), true); break;
                case "--max-image-size":
                    o.ImageLimits = new()
                    {
                        MaxBytes = Parse(args[i], Next(), true), MaxEntries = o.ImageLimits.MaxEntries,
                    };
                    break;
                case "--max-image-entries":
                    o.ImageLimits = new()
                    {
                        MaxBytes = o.ImageLimits.MaxBytes, MaxEntries = Parse(args[i], Next(), false),
                    };
                    break;
                case "--default-network": o.DefaultNetwork = Next(); break;
                case "--routes": o.PrintRoutes = true; break;
                case "--verbose" or "-v": o.Verbose = true; break;
                default: throw new ArgumentException($"unknown option '{args[i]}'");
            }
        }
        return o;
    }
}

/// <summary>hulld: composition root and hosting. Engines plug in through <paramref name="drivers"/> of
/// <see cref="RunAsync"/>.</summary>
public sealed class Daemon
{
    public const string Version = "0.1.0";
    public required DaemonOptions Options { get; init; }
    public required Store Store { get; init; }
    public required ImageStore Images { get; init; }
    public required EventHub Events { get; init; }
    public required Operations Operations { get; init; }
    public required InstanceManager Instances { get; init; }
    public CancellationToken Shutdown { get; init; }
    public DateTimeOffset StartedAt { get; } = DateTimeOffset.UtcNow;
    public long ApiRequests, ApiErrors;

    /// <summary>Runs hulld until SIGTERM/SIGINT. Instances keep running when it stops.</summary>
    public static async Task<int> RunAsync(string[] args, Func<DaemonOptions, IReadOnlyList<IInstanceDriver>> drivers,
        Action<DaemonOptions, ImageStore>? images = null)
    {
        if (args.Contains("--help") || args.Contains("-h")) { Console.WriteLine(DaemonOptions.Usage); return 0; }
        DaemonOptions o;
        try { o = DaemonOptions.Parse(args); }
        catch (ArgumentException e)
        {
            await Console.Error.WriteLineAsync($"hulld: {e.Message}\n{DaemonOptions.Usage}");
            return 2;
        }
        if (o.PrintRoutes)
        {
            var app0 = Builder().Build();
            new Api(null!).Map(app0);
            foreach (var r in Routes(app0)) Console.WriteLine(r);
            return 0;
        }
        try { return await ServeAsync(o, drivers, images); }
        catch (DaemonStartException e)
        {
            await Console.Error.WriteLineAsync($"hulld: {e.Message}");
            return 1;
        }
    }

    sealed class DaemonStartException(string m) : Exception(m);

    /// <summary>"GET /1.0/instances" for every mapped endpoint.</summary>
    public static IEnumerable<string> Routes(IEndpointRouteBuilder app) =>
        app.DataSources.SelectMany(ds => ds.Endpoints).OfType<RouteEndpoint>()
            .SelectMany(e => (e.Metadata.GetMetadata<HttpMethodMetadata>()?.HttpMethods ?? ["*"]).Select(m =>
                $"{m} {e.RoutePattern.RawText}"))
            .Order(StringComparer.Ordinal);

    static async Task<int> ServeAsync(DaemonOptions o, Func<DaemonOptions, IReadOnlyList<IInstanceDriver>> drivers,
        Action<DaemonOptions, ImageStore>? images)
    {
        Libc.umask(0b000_111_111);
        Directory.CreateDirectory(o.StateDir);
        Libc.chmod(o.StateDir, 0b111_000_000);
        using var lockFd = Sys.Open(Path.Combine(o.StateDir, "hulld.lock"), O.RDWR | O.CREAT, 0b110_000_000);
        if (!DaemonInterop.TryLockExclusive(lockFd))
        {
            var pid = File.Exists(Path.Combine(o.StateDir, "hulld.pid"))
                ? File.ReadAllText(Path.Combine(o.StateDir, "hulld.pid")).Trim() : "?";
            throw new DaemonStartException($"another hulld (pid {pid}) already uses the state dir {o.StateDir}: stop " +
                "it first or use another --state-dir");
        }
        PrepareSocket(o.Socket);

        using var shutdown = new CancellationTokenSource();
        using var store = new Store(Path.Combine(o.StateDir, "hull.db"));
        var imageStore = new ImageStore(o.StateDir, store) { Limits = o.ImageLimits };
        imageStore.Recover();
        images?.Invoke(o, imageStore);
        var events = new EventHub();
        DriverLog.Sink = events; // the drivers' log lines become "logging" events
        var manager = new InstanceManager(o.StateDir, store, imageStore, events, drivers(o), shutdown.Token);
        var d = new Daemon
        {
            Options = o, Store = store, Images = imageStore, Events = events, Operations = new Operations(events),
            Instances = manager,
            Shutdown = shutdown.Token,
        };

        var b = Builder();
        b.Logging.SetMinimumLevel(o.Verbose ? LogLevel.Information : LogLevel.Warning);
        b.WebHost.ConfigureKestrel(k =>
        {
            k.ListenUnixSocket(o.Socket);
            // The largest body any route takes; each route lowers it to its own limit (Api.Route).
            k.Limits.MaxRequestBodySize = Math.Max(o.MaxUpload, o.MaxJsonBody);
            k.AddServerHeader = false;
        });
        var app = b.Build();
        app.UseWebSockets();
        app.Use(Api.UnmatchedRoutes);
        new Api(d).Map(app);

        // Streams (events, logs -f, exec) end when hulld is asked to stop, rather than holding the shutdown up.
        app.Lifetime.ApplicationStopping.Register(shutdown.Cancel);
        manager.DefaultNetwork = o.DefaultNetwork;
        manager.StartNetworks();
        await manager.RecoverAsync(shutdown.Token);
        await app.StartAsync();
        SecureSocket(o);
        await File.WriteAllTextAsync(Path.Combine(o.StateDir, "hulld.pid"),
            Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "\n");
        await Console.Error.WriteLineAsync($"hulld {Version}: serving {o.Socket} (state in {o.StateDir}; engines: " +
            $"{(manager.Types.Count == 0 ? "none" : string.Join(", ", manager.Types))})");
        events.Log("info", "hulld started");
        await app.WaitForShutdownAsync();
        try { File.Delete(o.Socket); } catch (IOException) { }
        await Console.Error.WriteLineAsync("hulld: stopped; instances keep running");
        return 0;
    }

    /// <summary>Kestrel's builder without a file watcher: by default the host reads appsettings.json from the current
    /// directory with reload-on-change, which puts a recursive inotify watch on that directory (started from /, hulld
    /// watched thousands of directories and woke up for every file an instance wrote). hulld takes no settings file.
    /// </summary>
    static WebApplicationBuilder Builder() => WebApplication.CreateSlimBuilder(new WebApplicationOptions
    {
        ContentRootPath = AppContext.BaseDirectory,
        Args = ["--hostBuilder:reloadConfigOnChange=false"],
    });

    /// <summary>Makes the socket's directory; refuses if a live hulld answers on the socket, removes a stale
    /// one.</summary>
    static void PrepareSocket(string socket)
    {
        var dir = Path.GetDirectoryName(socket)!;
        if (!Directory.Exists(dir))
        {
            Directory.CreateDirectory(dir);
            Libc.chmod(dir, 0b111_101_101);
        }
        if (!File.Exists(socket)) return;
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            s.Connect(new UnixDomainSocketEndPoint(socket));
            throw new DaemonStartException($"another hulld already serves {socket}: stop it first or use another " +
                "--socket");
        }
        catch (SocketException) { File.Delete(socket); }
    }

    static void SecureSocket(DaemonOptions o)
    {
        if (o.Group is null)
        {
            Sys.Check(Libc.chmod(o.Socket, 0b110_000_000), $"chmod {o.Socket}");
            return;
        }
        var gid = GroupId(o.Group) ?? throw new DaemonStartException(
            $"group '{o.Group}' does not exist: create it (groupadd {o.Group}) or drop --group");
        Sys.Check(Libc.chown(o.Socket, 0, gid), $"chown {o.Socket}");
        Sys.Check(Libc.chmod(o.Socket, 0b110_110_000), $"chmod {o.Socket}");
    }

    static uint? GroupId(string name)
    {
        if (uint.TryParse(name, NumberStyles.None, CultureInfo.InvariantCulture, out var n)) return n;
        foreach (var line in File.ReadLines("/etc/group"))
        {
            var f = line.Split(':');
            if (f.Length >= 3 && f[0] == name && uint.TryParse(f[2], NumberStyles.None, CultureInfo.InvariantCulture,
                out var g)) return g;
        }
        return null;
    }

    public async Task<string> MetricsTextAsync(CancellationToken ct)
    {
        var sb = new StringBuilder();
        void Head(string name, string type, string help) =>
            sb.Append("# HELP ").Append(name).Append(' ').Append(help).Append("\n# TYPE ").Append(name).Append(
            ' ').Append(type).Append('\n');
        static string Esc(string v) => v.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n");
        var records = Instances.Records();
        var types = records.ToDictionary(r => r.Name, r => r.Type);
        var stats = await Instances.AllStatsAsync(ct);
        void PerInstance(string name, string type, string help, Func<InstanceStats, string> value)
        {
            Head(name, type, help);
            foreach (var (n, s) in stats) sb.Append(name).Append("{name=\"").Append(Esc(n)).Append("\",type=\"").Append(
                types.GetValueOrDefault(n, "")).Append("\"} ").Append(value(s)).Append('\n');
        }
        PerInstance("hull_instance_cpu_seconds_total", "counter", "CPU time used by the instance.",
            s => (s.CpuUsageNs / 1e9).ToString("0.######", CultureInfo.InvariantCulture));
        PerInstance("hull_instance_memory_bytes", "gauge", "Memory used by the instance.",
            s => s.MemoryBytes.ToString(CultureInfo.InvariantCulture));
        PerInstance("hull_instance_pids", "gauge", "Processes (or vCPU threads) in the instance.",
            s => s.Pids.ToString(CultureInfo.InvariantCulture));
        PerInstance("hull_instance_io_read_bytes_total", "counter", "Bytes read from storage by the instance.",
            s => s.IoReadBytes.ToString(CultureInfo.InvariantCulture));
        PerInstance("hull_instance_io_write_bytes_total", "counter", "Bytes written to storage by the instance.",
            s => s.IoWriteBytes.ToString(CultureInfo.InvariantCulture));
        Head("hull_instances", "gauge", "Instances by state.");
        foreach (var st in Enum.GetValues<InstanceState>())
            sb.Append("hull_instances{state=\"").Append(st.ToWire()).Append("\"} ").Append(
                records.Count(r => r.State == st && r.Pending != PendingOp.Create)).Append('\n');
        var counters = Store.Counters();
        Head("hull_instances_created_total", "counter", "Instances created since the state dir was made.");
        sb.Append("hull_instances_created_total ").Append(counters.GetValueOrDefault("instances_created")).Append('\n');
        Head("hull_instances_started_total", "counter", "Instance starts since the state dir was made.");
        sb.Append("hull_instances_started_total ").Append(counters.GetValueOrDefault("instances_started")).Append('\n');
        Head("hull_api_requests_total", "counter", "API requests served since hulld started.");
        sb.Append("hull_api_requests_total ").Append(Interlocked.Read(ref ApiRequests)).Append('\n');
        Head("hull_api_errors_total", "counter", "API requests that failed with a server error since hulld started.");
        sb.Append("hull_api_errors_total ").Append(Interlocked.Read(ref ApiErrors)).Append('\n');
        Head("hull_operations_total", "counter", "Operations started since hulld started.");
        sb.Append("hull_operations_total ").Append(Interlocked.Read(ref Operations.Started)).Append('\n');
        Head("hull_operations_failed_total", "counter", "Operations that failed since hulld started.");
        sb.Append("hull_operations_failed_total ").Append(Interlocked.Read(ref Operations.Failed)).Append('\n');
        Head("hull_operations_running", "gauge", "Operations running now.");
        sb.Append("hull_operations_running ").Append(Operations.RunningCount).Append('\n');
        Head("hull_daemon_uptime_seconds", "gauge", "Seconds since hulld started.");
        sb.Append("hull_daemon_uptime_seconds ").Append(
            ((long)(DateTimeOffset.UtcNow - StartedAt).TotalSeconds).ToString(CultureInfo.InvariantCulture)).Append(
            '\n');
        Head("hull_daemon_resident_memory_bytes", "gauge", "hulld's resident memory.");
        sb.Append("hull_daemon_resident_memory_bytes ").Append(
            Environment.WorkingSet.ToString(CultureInfo.InvariantCulture)).Append('\n');
        return sb.ToString();
    }
}

/// <summary>The OpenAPI 3 document of the API (openapi.json beside this file, embedded).</summary>
public static class OpenApiDocument
{
    public static Stream Open() => typeof(OpenApiDocument).Assembly.GetManifestResourceStream(
        "Hull.Daemon.openapi.json")
        ?? throw new InvalidOperationException("openapi.json is not embedded in hulld");
}
