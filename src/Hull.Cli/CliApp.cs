using System.CommandLine;
using System.Net.Http;
using System.Net.Sockets;
using Hull.Api;
using Hull.Sdk;

namespace Hull.Cli;

/// <summary>A CLI usage error: printed as "Error: ..." with exit status 1.</summary>
public sealed class CliException(string message) : Exception(message);

/// <summary>The `hull` instance verbs. The hull executable calls <see cref="RunAsync"/> for every verb that is not an
/// OCI runtime verb.</summary>
public static partial class CliApp
{
    static readonly Option<string> FormatOption = new("--format", "-f")
    {
        Description = "Output format: table (for people), json or yaml (for scripts)", Recursive = true,
        DefaultValueFactory = _ => "table",
    };

    static readonly Option<string?> RemoteOption = new("--remote")
    {
        Description = "The hulld to talk to: a name from 'hull remote list' (default: the default remote, normally " +
            "local)", Recursive = true,
    };

    static CliApp() => FormatOption.AcceptOnlyFromAmong("table", "json", "yaml");

    /// <summary>Runs one hull command line; returns the exit status (the command's own for exec).</summary>
    public static async Task<int> RunAsync(string[] args)
    {
        var root = Build();
        var parse = root.Parse(args);
        return await parse.InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
    }

    public static RootCommand Build()
    {
        var root = new RootCommand("hull: containers and VMs as instances, managed through hulld.");
        root.Options.Add(FormatOption);
        root.Options.Add(RemoteOption);
        foreach (var c in InstanceCommands()) root.Subcommands.Add(c);
        root.Subcommands.Add(FileCommand());
        root.Subcommands.Add(ConfigCommand());
        root.Subcommands.Add(ProfileCommand());
        root.Subcommands.Add(NetworkCommand());
        root.Subcommands.Add(SnapshotCommand());
        root.Subcommands.Add(ImageCommand());
        root.Subcommands.Add(OperationCommand());
        root.Subcommands.Add(EventsCommand());
        root.Subcommands.Add(CompletionCommand());
        foreach (var c in TransferCommands()) root.Subcommands.Add(c);
        root.Subcommands.Add(RemoteCommand());
        return root;
    }

    // ---- plumbing ----

    static TextWriter Out => Console.Out;
    static TextWriter Err => Console.Error;

    /// <summary>Sets an action that gets a connected client; maps errors to "Error: ..." and exit status 1.</summary>
    static void Act(Command cmd, Func<ParseResult, HullClient, CancellationToken, Task<int>> action) =>
        cmd.SetAction(async (pr, ct) =>
        {
            try
            {
                using var client = await ConnectAsync(pr, ct);
                return await action(pr, client, ct);
            }
            catch (HullException e) { await Err.WriteLineAsync("Error: " + e.Message); return 1; }
            catch (CliException e) { await Err.WriteLineAsync("Error: " + e.Message); return 1; }
            catch (HttpRequestException e) { await Err.WriteLineAsync(
                $"Error: lost the connection to hulld ({e.Message})"); return 1; }
            catch (IOException e) { await Err.WriteLineAsync("Error: " + e.Message); return 1; }
            catch (UnauthorizedAccessException e) { await Err.WriteLineAsync("Error: " + e.Message); return 1; }
        });

    static string Format(ParseResult pr) => pr.GetValue(FormatOption) ?? "table";

    static Dictionary<string, string> KeyValues(IEnumerable<string>? items, string what)
    {
        var d = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var kv in items ?? [])
        {
            var i = kv.IndexOf('=');
            if (i <= 0) throw new CliException($"{what} '{kv}' is not key=value: write it as KEY=VALUE");
            d[kv[..i]] = kv[(i + 1)..];
        }
        return d;
    }

    static async Task WaitOp(HullClient c, Operation op, CancellationToken ct)
    {
        using var p = new ProgressLine();
        await c.WaitAsync(op, p, ct);
    }

    static Argument<string> NameArg(string name = "name", string description = "Instance name") =>
        new(name) { Description = description, CompletionSources = { ctx => InstanceNames() } };

    static IEnumerable<string> InstanceNames()
    {
        try
        {
            using var c = new HullClient();
            return c.ListInstancesAsync().GetAwaiter().GetResult().Select(i => i.Name).ToList();
        }
        catch (Exception e) when (e is HttpRequestException or SocketException or HullException) { return []; }
    }
}
