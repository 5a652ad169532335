using System.CommandLine;
using System.Net.Sockets;
using Hull.Api;
using Hull.Linux;
using Hull.Sdk;

namespace Hull.Cli;

/// <summary>Reaching hulld: the --remote one, or this host's, started in the background when none answers.</summary>
public static partial class CliApp
{
    /// <summary>Connects to the hulld of --remote (or the default remote); for this host's own hulld, if none answers,
    /// starts one in the background (HULL_SOCKET, HULL_DIR choose where).</summary>
    static async Task<HullClient> ConnectAsync(ParseResult pr, CancellationToken ct) =>
        await ConnectAsync(pr.GetValue(RemoteOption), ct);

    static async Task<HullClient> ConnectAsync(string? remote, CancellationToken ct)
    {
        var remotes = Remotes.Load();
        if (remotes.SocketFor(remote) is { } socket)
        {
            var rc = new HullClient(socket);
            if (await rc.IsRunningAsync(ct)) return rc;
            rc.Dispose();
            throw new CliException($"remote '{remote ?? remotes.Default}' ({socket}) does not answer: is its hulld " +
                "running, and its socket forwarded here?");
        }
        var client = new HullClient();
        if (await client.IsRunningAsync(ct)) return client;
        var hulld = FindHulld() ?? throw new CliException(
            $"hulld is not running on {client.SocketPath} and no hulld program was found: install Hull (make " +
            "install) or set HULL_HULLD");
        var stateDir = HullPaths.StateDir;
        try { Directory.CreateDirectory(stateDir); }
        catch (UnauthorizedAccessException) { throw new CliException(
            $"hulld is not running and cannot be started by this user (state dir {stateDir}): run hull as root or " +
            "ask an admin to start hulld"); }
        var log = Path.Combine(stateDir, "hulld.log");
        // A fixed script, the paths passed as its arguments: hulld in its own session, its output in the log.
        await HostProgram.ExecAsync("/bin/sh",
            ["-c", "setsid \"$0\" --socket \"$1\" --state-dir \"$2\" </dev/null >>\"$3\" 2>&1 &", hulld,
                client.SocketPath, stateDir, log],
            new() { Interactive = true, Error = e => new CliException(e.Message) }, ct);
        await Err.WriteLineAsync($"hull: started hulld in the background (socket {client.SocketPath}, log {log})");
        for (var i = 0; i < 300; i++)
        {
            if (await client.IsRunningAsync(ct)) return client;
            await Task.Delay(50, ct);
        }
        var tail = File.Exists(log) ? string.Join("\n", File.ReadLines(log).TakeLast(5)) : "";
        throw new CliException($"hulld did not come up on {client.SocketPath}; the end of {log}:\n{tail}");
    }

    static string? FindHulld()
    {
        if (Environment.GetEnvironmentVariable("HULL_HULLD") is { Length: > 0 } h) return h;
        var candidates = new List<string> { Path.Combine(AppContext.BaseDirectory, "hulld") };
        candidates.AddRange((Environment.GetEnvironmentVariable("PATH") ?? "").Split(':',
            StringSplitOptions.RemoveEmptyEntries).Select(p => Path.Combine(p, "hulld")));
        candidates.AddRange(["/usr/local/bin/hulld", "/usr/bin/hulld"]);
        return candidates.FirstOrDefault(File.Exists);
    }
}
