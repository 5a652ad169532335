using System.CommandLine;
using System.Diagnostics;
using System.Net.Http;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Hull.Api;
using Hull.Sdk;

namespace Hull.Cli;

/// <summary>A CLI usage error: printed as "Error: ..." with exit status 1.</summary>
public sealed class CliException(string message) : Exception(message);

/// <summary>The `hull` instance verbs. The hull executable calls <see cref="RunAsync"/> for every verb that is not an OCI runtime verb.</summary>
public static partial class CliApp
{
    static readonly Option<string> FormatOption = new("--format", "-f")
    {
        Description = "Output format: table (for people), json or yaml (for scripts)", Recursive = true, DefaultValueFactory = _ => "table",
    };

    static readonly Option<string?> RemoteOption = new("--remote")
    {
        Description = "The hulld to talk to: a name from 'hull remote list' (default: the default remote, normally local)", Recursive = true,
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
            catch (HttpRequestException e) { await Err.WriteLineAsync($"Error: lost the connection to hulld ({e.Message})"); return 1; }
            catch (IOException e) { await Err.WriteLineAsync("Error: " + e.Message); return 1; }
            catch (UnauthorizedAccessException e) { await Err.WriteLineAsync("Error: " + e.Message); return 1; }
        });

    static string Format(ParseResult pr) => pr.GetValue(FormatOption) ?? "table";

    /// <summary>Connects to the hulld of --remote (or the default remote); for this host's own hulld, if none answers,
    /// starts one in the background (HULL_SOCKET, HULL_DIR choose where).</summary>
    static async Task<HullClient> ConnectAsync(ParseResult pr, CancellationToken ct) => await ConnectAsync(pr.GetValue(RemoteOption), ct);

    static async Task<HullClient> ConnectAsync(string? remote, CancellationToken ct)
    {
        var remotes = Remotes.Load();
        if (remotes.SocketFor(remote) is { } socket)
        {
            var rc = new HullClient(socket);
            if (await rc.IsRunningAsync(ct)) return rc;
            rc.Dispose();
            throw new CliException($"remote '{remote ?? remotes.Default}' ({socket}) does not answer: is its hulld running, and its socket forwarded here?");
        }
        var client = new HullClient();
        if (await client.IsRunningAsync(ct)) return client;
        var hulld = FindHulld() ?? throw new CliException($"hulld is not running on {client.SocketPath} and no hulld program was found: install Hull (make install) or set HULL_HULLD");
        var stateDir = Environment.GetEnvironmentVariable("HULL_DIR") is { Length: > 0 } d ? d : "/var/lib/hull";
        try { Directory.CreateDirectory(stateDir); }
        catch (UnauthorizedAccessException) { throw new CliException($"hulld is not running and cannot be started by this user (state dir {stateDir}): run hull as root or ask an admin to start hulld"); }
        var log = Path.Combine(stateDir, "hulld.log");
        var psi = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        foreach (var a in new[] { "-c", "setsid \"$0\" --socket \"$1\" --state-dir \"$2\" </dev/null >>\"$3\" 2>&1 &", hulld, client.SocketPath, stateDir, log })
            psi.ArgumentList.Add(a);
        using (var p = Process.Start(psi)!) await p.WaitForExitAsync(ct);
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
        candidates.AddRange((Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries).Select(p => Path.Combine(p, "hulld")));
        candidates.AddRange(["/usr/local/bin/hulld", "/usr/bin/hulld"]);
        return candidates.FirstOrDefault(File.Exists);
    }

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

    /// <summary>Shows operation progress on a terminal.</summary>
    sealed class ProgressLine : IProgress<Operation>, IDisposable
    {
        readonly bool _tty = !Console.IsErrorRedirected;
        int _width;

        public void Report(Operation op)
        {
            if (!_tty || op.Progress is null) return;
            var line = $"{op.Description}: {op.Progress}";
            Err.Write("\r" + line.PadRight(_width));
            _width = line.Length;
        }

        public void Dispose()
        {
            if (_tty && _width > 0) Err.Write("\r" + new string(' ', _width) + "\r");
        }
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

    // ---- instances ----

    static IEnumerable<Command> InstanceCommands()
    {
        yield return CreateCommand("launch", "Create and start an instance from an image", start: true);
        yield return CreateCommand("init", "Create an instance from an image without starting it", start: false);

        foreach (var (verb, action, help) in new[] { ("start", "start", "Start instances"), ("pause", "pause", "Pause (freeze) running instances"), ("resume", "resume", "Resume paused instances") })
        {
            var names = new Argument<string[]>("names") { Description = "Instance names", Arity = ArgumentArity.OneOrMore, CompletionSources = { _ => InstanceNames() } };
            var cmd = new Command(verb, help) { names };
            Act(cmd, async (pr, c, ct) =>
            {
                foreach (var n in pr.GetValue(names)!) await WaitOp(c, await c.ChangeStateOperationAsync(n, action, ct: ct), ct);
                return 0;
            });
            yield return cmd;
        }

        foreach (var (verb, help) in new[] { ("stop", "Stop instances (SIGTERM or ACPI shutdown, then kill after the timeout)"), ("restart", "Restart instances") })
        {
            var names = new Argument<string[]>("names") { Description = "Instance names", Arity = ArgumentArity.OneOrMore, CompletionSources = { _ => InstanceNames() } };
            var force = new Option<bool>("--force") { Description = "Kill at once instead of asking the instance to stop" };
            var timeout = new Option<int>("--timeout") { Description = "Seconds to wait for a clean stop before killing (-1: forever)", DefaultValueFactory = _ => 30 };
            var cmd = new Command(verb, help) { names, force, timeout };
            Act(cmd, async (pr, c, ct) =>
            {
                foreach (var n in pr.GetValue(names)!)
                    await WaitOp(c, await c.ChangeStateOperationAsync(n, verb, pr.GetValue(force), pr.GetValue(timeout), ct), ct);
                return 0;
            });
            yield return cmd;
        }

        {
            var names = new Argument<string[]>("names") { Description = "Instance names", Arity = ArgumentArity.OneOrMore, CompletionSources = { _ => InstanceNames() } };
            var force = new Option<bool>("--force") { Description = "Stop a running instance first" };
            var cmd = new Command("delete", "Delete instances") { names, force };
            cmd.Aliases.Add("rm");
            Act(cmd, async (pr, c, ct) =>
            {
                foreach (var n in pr.GetValue(names)!) await WaitOp(c, await c.DeleteInstanceOperationAsync(n, pr.GetValue(force), ct), ct);
                return 0;
            });
            yield return cmd;
        }

        {
            var cmd = new Command("list", "List instances");
            cmd.Aliases.Add("ls");
            Act(cmd, async (pr, c, ct) =>
            {
                var list = await c.ListInstancesAsync(ct);
                if (Output.Structured(Format(pr), list, Output.Pretty.ListInstance, Out)) return 0;
                Output.Table(Out, ["NAME", "STATE", "TYPE", "IMAGE", "PID", "PROFILES", "CREATED"],
                    list.Select(i => new[] { i.Name, i.State.ToUpperInvariant(), i.Type, i.Image, i.Pid?.ToString() ?? "", string.Join(",", i.Profiles), Output.Time(i.CreatedAt) }));
                return 0;
            });
            yield return cmd;
        }

        {
            var name = NameArg();
            var cmd = new Command("info", "Show an instance and its live state") { name };
            Act(cmd, async (pr, c, ct) =>
            {
                var i = await c.GetInstanceAsync(pr.GetValue(name)!, ct);
                if (Output.Structured(Format(pr), i, Output.Pretty.Instance, Out)) return 0;
                var st = await c.GetStateAsync(i.Name, ct);
                Out.WriteLine($"Name: {i.Name}\nType: {i.Type}\nImage: {i.Image}\nState: {i.State}");
                if (i.StatusMessage is not null) Out.WriteLine($"Status: {i.StatusMessage}");
                if (st.Pid is { } pid) Out.WriteLine($"PID: {pid}");
                foreach (var (k, v) in st.Details ?? []) Out.WriteLine($"{char.ToUpperInvariant(k[0])}{k[1..].Replace('-', ' ')}: {v}");
                if (i.LastExitCode is { } ec) Out.WriteLine($"Last exit code: {ec}");
                Out.WriteLine($"Profiles: {string.Join(", ", i.Profiles)}\nCreated: {Output.Time(i.CreatedAt)}\nLast used: {Output.Time(i.LastUsedAt)}");
                if (st.Stats is { } s)
                    Out.WriteLine($"Resources:\n  CPU time: {s.CpuUsageNs / 1e9:0.00}s\n  Memory: {Output.Size(s.MemoryBytes)}\n  Processes: {s.Pids}\n  Disk read/write: {Output.Size(s.IoReadBytes)} / {Output.Size(s.IoWriteBytes)}");
                if (i.ExpandedConfig.Count > 0) Out.WriteLine("Config:\n" + string.Join("\n", i.ExpandedConfig.OrderBy(k => k.Key).Select(k => $"  {k.Key}: {k.Value}")));
                if (i.ExpandedDevices.Count > 0)
                    Out.WriteLine("Devices:\n" + string.Join("\n", i.ExpandedDevices.OrderBy(k => k.Key).Select(k => $"  {k.Key}: " + string.Join(" ", k.Value.OrderBy(x => x.Key).Select(x => $"{x.Key}={x.Value}")))));
                return 0;
            });
            yield return cmd;
        }

        yield return ExecCommand();

        {
            var name = NameArg();
            var cmd = new Command("console", "Attach to the instance's console (detach with Ctrl-a q)") { name };
            Act(cmd, async (pr, c, ct) =>
            {
                using var s = await c.ConsoleAsync(pr.GetValue(name)!, ct);
                await Err.WriteLineAsync("To detach from the console, press <ctrl>+a q");
                using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
                using var raw = Terminal.MakeRaw();
                var input = Task.Run(async () =>
                {
                    var stdin = Console.OpenStandardInput();
                    var buf = new byte[1024];
                    var sawCtrlA = false;
                    int n;
                    while ((n = await stdin.ReadAsync(buf, cts.Token)) > 0)
                    {
                        for (var i = 0; i < n; i++)
                        {
                            if (sawCtrlA && buf[i] == (byte)'q') { cts.Cancel(); return; }
                            sawCtrlA = buf[i] == 1;
                        }
                        await s.WriteStdinAsync(buf.AsMemory(0, n), cts.Token);
                    }
                }, cts.Token);
                try { await s.RunAsync(Console.OpenStandardOutput(), null, cts.Token); } catch (OperationCanceledException) { }
                return 0;
            });
            yield return cmd;
        }

        {
            var name = NameArg();
            var follow = new Option<bool>("--follow", "-F") { Description = "Keep printing new output" };
            var cmd = new Command("logs", "Show the instance's console log") { name, follow };
            Act(cmd, async (pr, c, ct) =>
            {
                await using var s = await c.LogsAsync(pr.GetValue(name)!, pr.GetValue(follow), ct);
                var stdout = Console.OpenStandardOutput();
                var buf = new byte[16384];
                int n;
                while ((n = await s.ReadAsync(buf, ct)) > 0) { await stdout.WriteAsync(buf.AsMemory(0, n), ct); await stdout.FlushAsync(ct); }
                return 0;
            });
            yield return cmd;
        }

    }

    static Command CreateCommand(string verb, string help, bool start)
    {
        var image = new Argument<string>("image") { Description = "Image alias or fingerprint (busybox and host are built in; host: an application container), or a registry reference (host[:port]/repo[:tag]) to pull" };
        var name = new Argument<string>("name") { Description = "Instance name" };
        var vm = new Option<bool>("--vm") { Description = "Make a virtual machine instead of a container" };
        var cfg = new Option<string[]>("--config", "-c") { Description = "Config key=value (repeatable), e.g. -c limits.memory=256MiB" };
        var profiles = new Option<string[]>("--profile", "-p") { Description = "Profiles to apply, in order (repeatable; default: default)" };
        var noProfiles = new Option<bool>("--no-profiles") { Description = "Apply no profile" };
        var cmd = new Command(verb, help) { image, name, vm, cfg, profiles, noProfiles };
        var app = AddAppOptions(cmd);
        Act(cmd, async (pr, c, ct) =>
        {
            var p = pr.GetValue(profiles) is { Length: > 0 } ps ? ps.SelectMany(x => x.Split(',', StringSplitOptions.RemoveEmptyEntries)).ToList()
                : pr.GetValue(noProfiles) ? [] : null;
            var req = new InstanceCreateRequest
            {
                Name = pr.GetValue(name)!, Image = pr.GetValue(image)!, Type = pr.GetValue(vm) ? InstanceTypes.Vm : InstanceTypes.Container,
                Config = KeyValues(pr.GetValue(cfg), "config"), Profiles = p, Start = start,
            };
            ApplyAppOptions(pr, app, req);
            await Err.WriteLineAsync($"{(start ? "Launching" : "Creating")} {req.Name}");
            await WaitOp(c, await c.CreateInstanceOperationAsync(req, ct), ct);
            return 0;
        });
        return cmd;
    }

    static Command ExecCommand()
    {
        var name = NameArg();
        var command = new Argument<string[]>("command") { Description = "The command and its arguments (after --)", Arity = ArgumentArity.OneOrMore };
        var tty = new Option<bool>("--force-interactive", "-t") { Description = "Run on a pty even if stdin or stdout is not a terminal" };
        var noTty = new Option<bool>("--force-noninteractive", "-T") { Description = "Never use a pty" };
        var env = new Option<string[]>("--env") { Description = "Environment KEY=VALUE (repeatable)" };
        var cwd = new Option<string>("--cwd") { Description = "Working directory inside the instance" };
        var user = new Option<string>("--user") { Description = "User (name or uid, optionally :group) to run as" };
        var cmd = new Command("exec", "Run a command in an instance: stdio streamed, its exit status returned") { name, command, tty, noTty, env, cwd, user };
        Act(cmd, async (pr, c, ct) =>
        {
            var useTty = pr.GetValue(tty) || (!pr.GetValue(noTty) && !Console.IsInputRedirected && !Console.IsOutputRedirected);
            var (w, h) = Terminal.Size();
            var req = new ExecRequest
            {
                Command = [.. pr.GetValue(command)!], Environment = KeyValues(pr.GetValue(env), "environment variable"),
                Cwd = pr.GetValue(cwd), User = pr.GetValue(user), Tty = useTty, Width = w, Height = h,
            };
            using var s = await c.ExecInteractiveAsync(pr.GetValue(name)!, req, ct);
            using var raw = useTty && !Console.IsInputRedirected ? Terminal.MakeRaw() : null;
            using var winch = useTty ? PosixSignalRegistration.Create(PosixSignal.SIGWINCH, _ =>
            {
                var (nw, nh) = Terminal.Size();
                var resize = s.ResizeAsync(nw, nh);
            }) : null;
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
            _ = s.PumpStdinAsync(Console.OpenStandardInput(), cts.Token);
            var code = await s.RunAsync(Console.OpenStandardOutput(), Console.OpenStandardError(), ct);
            cts.Cancel();
            if (code is null) throw new CliException("the connection to hulld ended before the command did");
            return code.Value;
        });
        return cmd;
    }

    // ---- files ----

    static (string Instance, string Path) SplitTarget(string target)
    {
        var i = target.IndexOf('/');
        if (i <= 0) throw new CliException($"'{target}' is not INSTANCE/PATH: write e.g. c1/etc/hosts");
        return (target[..i], target[i..]);
    }

    static Command FileCommand()
    {
        var file = new Command("file", "Move files in and out of instances");
        {
            var src = new Argument<string>("source") { Description = "Local file ('-' for stdin)" };
            var dst = new Argument<string>("target") { Description = "INSTANCE/PATH" };
            var mode = new Option<string>("--mode") { Description = "File mode in octal (default: the local file's, or 0644)" };
            var uid = new Option<int>("--uid") { Description = "Owner uid inside the instance" };
            var gid = new Option<int>("--gid") { Description = "Owner gid inside the instance" };
            var push = new Command("push", "Copy a local file into an instance") { src, dst, mode, uid, gid };
            Act(push, async (pr, c, ct) =>
            {
                var (inst, path) = SplitTarget(pr.GetValue(dst)!);
                var s = pr.GetValue(src)!;
                var m = pr.GetValue(mode) is { } ms ? ParseMode(ms) : s == "-" ? 0b110_100_100 : (int)File.GetUnixFileMode(s) & 0xFFF;
                if (path.EndsWith('/')) path += Path.GetFileName(s);
                await using var input = s == "-" ? Console.OpenStandardInput() : File.OpenRead(s);
                await c.PushFileAsync(inst, path, input, m, pr.GetValue(uid), pr.GetValue(gid), ct);
                return 0;
            });
            file.Subcommands.Add(push);
        }
        {
            var src = new Argument<string>("source") { Description = "INSTANCE/PATH" };
            var dst = new Argument<string>("target") { Description = "Local file or directory ('-' for stdout)" };
            var pull = new Command("pull", "Copy a file out of an instance") { src, dst };
            Act(pull, async (pr, c, ct) =>
            {
                var (inst, path) = SplitTarget(pr.GetValue(src)!);
                using var f = await c.PullFileAsync(inst, path, ct);
                if (f.Content is null) throw new CliException($"{path} is a directory: pull its files one by one");
                var target = pr.GetValue(dst)!;
                if (target == "-") { await f.Content.CopyToAsync(Console.OpenStandardOutput(), ct); return 0; }
                if (Directory.Exists(target)) target = Path.Combine(target, Path.GetFileName(path));
                await using (var o = File.Create(target)) await f.Content.CopyToAsync(o, ct);
                File.SetUnixFileMode(target, (UnixFileMode)(f.Entry.Mode & 0b111_111_111));
                return 0;
            });
            file.Subcommands.Add(pull);
        }
        {
            var target = new Argument<string>("target") { Description = "INSTANCE/PATH" };
            var del = new Command("delete", "Delete a file in an instance") { target };
            Act(del, async (pr, c, ct) =>
            {
                var (inst, path) = SplitTarget(pr.GetValue(target)!);
                await c.DeleteFileAsync(inst, path, ct);
                return 0;
            });
            file.Subcommands.Add(del);
        }
        {
            var target = new Argument<string>("target") { Description = "INSTANCE/PATH" };
            var edit = new Command("edit", "Edit a file in an instance with $EDITOR") { target };
            Act(edit, async (pr, c, ct) =>
            {
                var (inst, path) = SplitTarget(pr.GetValue(target)!);
                byte[] content = [];
                var mode = 0b110_100_100;
                try
                {
                    using var f = await c.PullFileAsync(inst, path, ct);
                    if (f.Content is null) throw new CliException($"{path} is a directory");
                    var ms = new MemoryStream();
                    await f.Content.CopyToAsync(ms, ct);
                    content = ms.ToArray();
                    mode = f.Entry.Mode;
                }
                catch (HullException e) when (e.StatusCode == 404) { }
                var edited = await EditAsync(content, Path.GetFileName(path), ct);
                await c.PushFileAsync(inst, path, new MemoryStream(edited), mode, 0, 0, ct);
                return 0;
            });
            file.Subcommands.Add(edit);
        }
        return file;
    }

    static int ParseMode(string s)
    {
        try
        {
            var m = Convert.ToInt32(s, 8);
            if (m is >= 0 and <= 0b111_111_111_111) return m;
        }
        catch (FormatException) { }
        catch (OverflowException) { }
        throw new CliException($"--mode {s} is invalid: use an octal mode from 0 to 7777, e.g. 0644");
    }

    static async Task<byte[]> EditAsync(byte[] content, string name, CancellationToken ct)
    {
        var editor = Environment.GetEnvironmentVariable("VISUAL") ?? Environment.GetEnvironmentVariable("EDITOR") ?? "vi";
        var tmp = Path.Combine(Path.GetTempPath(), $"hull-edit-{Guid.NewGuid():N}-{name}");
        await File.WriteAllBytesAsync(tmp, content, ct);
        try
        {
            var psi = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
            psi.ArgumentList.Add("-c"); psi.ArgumentList.Add(editor + " \"$0\""); psi.ArgumentList.Add(tmp);
            using var p = Process.Start(psi)!;
            await p.WaitForExitAsync(ct);
            if (p.ExitCode != 0) throw new CliException($"the editor ({editor}) exited with status {p.ExitCode}: nothing was changed");
            return await File.ReadAllBytesAsync(tmp, ct);
        }
        finally { File.Delete(tmp); }
    }

    // ---- config ----

    static Command ConfigCommand()
    {
        var config = new Command("config", "Show and change an instance's config");
        {
            var name = NameArg();
            var expanded = new Option<bool>("--expanded") { Description = "Include what the profiles add" };
            var show = new Command("show", "Show the config and devices") { name, expanded };
            Act(show, async (pr, c, ct) =>
            {
                var i = await c.GetInstanceAsync(pr.GetValue(name)!, ct);
                var put = new InstancePut
                {
                    Config = pr.GetValue(expanded) ? i.ExpandedConfig : i.Config, Devices = pr.GetValue(expanded) ? i.ExpandedDevices : i.Devices, Profiles = i.Profiles,
                };
                var fmt = Format(pr) == "table" ? "yaml" : Format(pr);
                Output.Structured(fmt, put, Output.Pretty.InstancePut, Out);
                return 0;
            });
            config.Subcommands.Add(show);
        }
        {
            var name = NameArg();
            var kv = new Argument<string[]>("key=value") { Arity = ArgumentArity.OneOrMore, Description = "Keys to set" };
            var set = new Command("set", $"Set config keys ({Hull.Instances.ConfigSchema.KeyList})") { name, kv };
            Act(set, async (pr, c, ct) =>
            {
                var i = await c.GetInstanceAsync(pr.GetValue(name)!, ct);
                foreach (var (k, v) in KeyValues(pr.GetValue(kv), "config")) i.Config[k] = v;
                await c.UpdateInstanceAsync(i.Name, new InstancePut { Config = i.Config, Devices = i.Devices, Profiles = i.Profiles }, ct);
                return 0;
            });
            config.Subcommands.Add(set);
        }
        {
            var name = NameArg();
            var keys = new Argument<string[]>("keys") { Arity = ArgumentArity.OneOrMore, Description = "Keys to remove" };
            var unset = new Command("unset", "Remove config keys") { name, keys };
            Act(unset, async (pr, c, ct) =>
            {
                var i = await c.GetInstanceAsync(pr.GetValue(name)!, ct);
                foreach (var k in pr.GetValue(keys)!)
                    if (!i.Config.Remove(k)) throw new CliException($"config key '{k}' is not set on '{i.Name}'{(i.ExpandedConfig.ContainsKey(k) ? " (it comes from a profile: change the profile)" : "")}");
                await c.UpdateInstanceAsync(i.Name, new InstancePut { Config = i.Config, Devices = i.Devices, Profiles = i.Profiles }, ct);
                return 0;
            });
            config.Subcommands.Add(unset);
        }
        {
            var name = NameArg();
            var edit = new Command("edit", "Edit the config as JSON with $EDITOR") { name };
            Act(edit, async (pr, c, ct) =>
            {
                var i = await c.GetInstanceAsync(pr.GetValue(name)!, ct);
                var put = new InstancePut { Config = i.Config, Devices = i.Devices, Profiles = i.Profiles };
                var edited = await EditAsync(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(put, Output.Pretty.InstancePut)), i.Name + ".json", ct);
                InstancePut next;
                try { next = JsonSerializer.Deserialize(edited, Output.Pretty.InstancePut) ?? throw new CliException("the edited config is empty"); }
                catch (JsonException e) { throw new CliException($"the edited config is not valid JSON ({e.Message}): nothing was changed"); }
                await c.UpdateInstanceAsync(i.Name, next, ct);
                return 0;
            });
            config.Subcommands.Add(edit);
        }
        var device = new Command("device", "Add or remove devices (disk, bind)");
        {
            var name = NameArg();
            var dev = new Argument<string>("device") { Description = "Device name" };
            var kv = new Argument<string[]>("key=value") { Arity = ArgumentArity.OneOrMore, Description = "type=bind source=/host/dir path=/in/instance readonly=true" };
            var add = new Command("add", "Add a device") { name, dev, kv };
            Act(add, async (pr, c, ct) =>
            {
                var i = await c.GetInstanceAsync(pr.GetValue(name)!, ct);
                var dn = pr.GetValue(dev)!;
                if (i.Devices.ContainsKey(dn)) throw new CliException($"device '{dn}' already exists on '{i.Name}': remove it first or choose another name");
                i.Devices[dn] = KeyValues(pr.GetValue(kv), "device key");
                await c.UpdateInstanceAsync(i.Name, new InstancePut { Config = i.Config, Devices = i.Devices, Profiles = i.Profiles }, ct);
                return 0;
            });
            device.Subcommands.Add(add);
        }
        {
            var name = NameArg();
            var dev = new Argument<string>("device") { Description = "Device name" };
            var remove = new Command("remove", "Remove a device") { name, dev };
            Act(remove, async (pr, c, ct) =>
            {
                var i = await c.GetInstanceAsync(pr.GetValue(name)!, ct);
                var dn = pr.GetValue(dev)!;
                if (!i.Devices.Remove(dn)) throw new CliException($"device '{dn}' not found on '{i.Name}': 'hull config show {i.Name}' lists its devices");
                await c.UpdateInstanceAsync(i.Name, new InstancePut { Config = i.Config, Devices = i.Devices, Profiles = i.Profiles }, ct);
                return 0;
            });
            device.Subcommands.Add(remove);
        }
        config.Subcommands.Add(device);
        return config;
    }

    // ---- profiles ----

    static Command ProfileCommand()
    {
        var profile = new Command("profile", "Manage profiles: named config sets applied in order");
        {
            var list = new Command("list", "List profiles");
            Act(list, async (pr, c, ct) =>
            {
                var ps = await c.ListProfilesAsync(ct);
                if (Output.Structured(Format(pr), ps, Output.Pretty.ListProfile, Out)) return 0;
                Output.Table(Out, ["NAME", "DESCRIPTION", "USED BY"], ps.Select(p => new[] { p.Name, p.Description, p.UsedBy.Count.ToString() }));
                return 0;
            });
            profile.Subcommands.Add(list);
        }
        {
            var name = new Argument<string>("name");
            var cfg = new Option<string[]>("--config", "-c") { Description = "Config key=value (repeatable)" };
            var desc = new Option<string>("--description") { Description = "Description" };
            var create = new Command("create", "Create a profile") { name, cfg, desc };
            Act(create, async (pr, c, ct) =>
            {
                await c.CreateProfileAsync(new ProfileCreateRequest { Name = pr.GetValue(name)!, Config = KeyValues(pr.GetValue(cfg), "config"), Description = pr.GetValue(desc) ?? "" }, ct);
                return 0;
            });
            profile.Subcommands.Add(create);
        }
        {
            var name = new Argument<string>("name");
            var show = new Command("show", "Show a profile") { name };
            Act(show, async (pr, c, ct) =>
            {
                var p = await c.GetProfileAsync(pr.GetValue(name)!, ct);
                Output.Structured(Format(pr) == "table" ? "yaml" : Format(pr), p, Output.Pretty.Profile, Out);
                return 0;
            });
            profile.Subcommands.Add(show);
        }
        {
            var name = new Argument<string>("name");
            var kv = new Argument<string[]>("key=value") { Arity = ArgumentArity.OneOrMore };
            var set = new Command("set", "Set profile config keys") { name, kv };
            Act(set, async (pr, c, ct) =>
            {
                var p = await c.GetProfileAsync(pr.GetValue(name)!, ct);
                foreach (var (k, v) in KeyValues(pr.GetValue(kv), "config")) p.Config[k] = v;
                await c.UpdateProfileAsync(p.Name, new ProfilePut { Config = p.Config, Devices = p.Devices, Description = p.Description }, ct);
                return 0;
            });
            profile.Subcommands.Add(set);
        }
        {
            var name = new Argument<string>("name");
            var keys = new Argument<string[]>("keys") { Arity = ArgumentArity.OneOrMore };
            var unset = new Command("unset", "Remove profile config keys") { name, keys };
            Act(unset, async (pr, c, ct) =>
            {
                var p = await c.GetProfileAsync(pr.GetValue(name)!, ct);
                foreach (var k in pr.GetValue(keys)!)
                    if (!p.Config.Remove(k)) throw new CliException($"config key '{k}' is not set in profile '{p.Name}'");
                await c.UpdateProfileAsync(p.Name, new ProfilePut { Config = p.Config, Devices = p.Devices, Description = p.Description }, ct);
                return 0;
            });
            profile.Subcommands.Add(unset);
        }
        {
            var name = new Argument<string>("name");
            var del = new Command("delete", "Delete a profile no instance uses") { name };
            Act(del, async (pr, c, ct) => { await c.DeleteProfileAsync(pr.GetValue(name)!, ct); return 0; });
            profile.Subcommands.Add(del);
        }
        {
            var inst = NameArg();
            var profiles = new Argument<string>("profiles") { Description = "Comma-separated profiles, in order (empty string: none)" };
            var assign = new Command("assign", "Set the profiles of an instance") { inst, profiles };
            Act(assign, async (pr, c, ct) =>
            {
                var i = await c.GetInstanceAsync(pr.GetValue(inst)!, ct);
                var ps = pr.GetValue(profiles)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
                await c.UpdateInstanceAsync(i.Name, new InstancePut { Config = i.Config, Devices = i.Devices, Profiles = ps }, ct);
                return 0;
            });
            profile.Subcommands.Add(assign);
        }
        return profile;
    }

    // ---- snapshots ----

    static Command SnapshotCommand()
    {
        var snapshot = new Command("snapshot", "Snapshots of an instance's root filesystem and config");
        {
            var name = NameArg();
            var snap = new Argument<string>("snapshot") { Description = "Snapshot name (default: snapN)", Arity = ArgumentArity.ZeroOrOne };
            var create = new Command("create", "Take a snapshot") { name, snap };
            Act(create, async (pr, c, ct) =>
            {
                var n = pr.GetValue(name)!;
                var s = pr.GetValue(snap);
                if (string.IsNullOrEmpty(s))
                {
                    var existing = (await c.ListSnapshotsAsync(n, ct)).Select(x => x.Name).ToHashSet();
                    var k = 0;
                    while (existing.Contains($"snap{k}")) k++;
                    s = $"snap{k}";
                }
                await c.CreateSnapshotAsync(n, s, ct);
                return 0;
            });
            snapshot.Subcommands.Add(create);
        }
        {
            var name = NameArg();
            var snap = new Argument<string>("snapshot");
            var restore = new Command("restore", "Restore a stopped instance from a snapshot") { name, snap };
            Act(restore, async (pr, c, ct) => { await c.RestoreSnapshotAsync(pr.GetValue(name)!, pr.GetValue(snap)!, ct); return 0; });
            snapshot.Subcommands.Add(restore);
        }
        {
            var name = NameArg();
            var list = new Command("list", "List snapshots") { name };
            Act(list, async (pr, c, ct) =>
            {
                var ss = await c.ListSnapshotsAsync(pr.GetValue(name)!, ct);
                if (Output.Structured(Format(pr), ss, Output.Pretty.ListSnapshot, Out)) return 0;
                Output.Table(Out, ["NAME", "TAKEN AT"], ss.Select(s => new[] { s.Name, Output.Time(s.CreatedAt) }));
                return 0;
            });
            snapshot.Subcommands.Add(list);
        }
        {
            var name = NameArg();
            var snap = new Argument<string>("snapshot");
            var del = new Command("delete", "Delete a snapshot") { name, snap };
            Act(del, async (pr, c, ct) => { await c.DeleteSnapshotAsync(pr.GetValue(name)!, pr.GetValue(snap)!, ct); return 0; });
            snapshot.Subcommands.Add(del);
        }
        return snapshot;
    }

    // ---- images ----

    static Command ImageCommand()
    {
        var image = new Command("image", "Manage images");
        {
            var list = new Command("list", "List images");
            Act(list, async (pr, c, ct) =>
            {
                var imgs = await c.ListImagesAsync(ct);
                if (Output.Structured(Format(pr), imgs, Output.Pretty.ListImage, Out)) return 0;
                Output.Table(Out, ["ALIAS", "FINGERPRINT", "TYPE", "SIZE", "DESCRIPTION", "CREATED"],
                    imgs.Select(i => new[] { string.Join(",", i.Aliases), i.Fingerprint[..12], i.Type, Output.Size(i.Size), i.Description, Output.Time(i.CreatedAt) }));
                return 0;
            });
            image.Subcommands.Add(list);
        }
        {
            var file = new Argument<string>("file") { Description = "A rootfs tarball (tar, tar.gz, tar.xz), an OCI image layout directory, or with --vm a disk image" };
            var aliasOpt = new Option<string>("--alias") { Description = "An alias for the image" };
            var vm = new Option<bool>("--vm") { Description = "The file is a VM disk image" };
            var refOpt = new Option<string>("--ref") { Description = "For an OCI layout holding several images: the tag to import" };
            var import = new Command("import", "Import an image file or OCI image layout") { file, aliasOpt, vm, refOpt };
            Act(import, async (pr, c, ct) =>
            {
                var f = pr.GetValue(file)!;
                using var p = new ProgressLine();
                Image img;
                if (Directory.Exists(f))
                {
                    if (!File.Exists(Path.Combine(f, "oci-layout"))) throw new CliException($"{f} is a directory but not an OCI image layout (no oci-layout file): give a rootfs tarball or a layout written by skopeo or umoci");
                    var psi = new ProcessStartInfo("tar") { RedirectStandardOutput = true, UseShellExecute = false };
                    foreach (var a in new[] { "-cf", "-", "-C", f, "." }) psi.ArgumentList.Add(a);
                    using var tar = Process.Start(psi)!;
                    img = await c.ImportOciLayoutAsync(tar.StandardOutput.BaseStream, pr.GetValue(refOpt), pr.GetValue(aliasOpt), $"imported from OCI layout {Path.GetFileName(Path.GetFullPath(f).TrimEnd('/'))}", p, ct);
                    await tar.WaitForExitAsync(ct);
                }
                else
                {
                    if (!File.Exists(f)) throw new CliException($"{f} does not exist: give the path of a rootfs tarball or an OCI layout directory");
                    await using var s = File.OpenRead(f);
                    img = await c.ImportImageAsync(s, pr.GetValue(vm) ? InstanceTypes.Vm : InstanceTypes.Container, pr.GetValue(aliasOpt), $"imported from {Path.GetFileName(f)}", p, ct);
                }
                Out.WriteLine($"Image imported with fingerprint: {img.Fingerprint}");
                return 0;
            });
            image.Subcommands.Add(import);
        }
        image.Subcommands.Add(ImagePullCommand());
        {
            var img = new Argument<string>("image");
            var file = new Argument<string>("file") { Description = "Where to write the image file" };
            var export = new Command("export", "Write an image's file (rootfs tarball or disk image)") { img, file };
            Act(export, async (pr, c, ct) =>
            {
                await using var s = await c.ExportImageAsync(pr.GetValue(img)!, ct);
                await using var o = File.Create(pr.GetValue(file)!);
                await s.CopyToAsync(o, ct);
                return 0;
            });
            image.Subcommands.Add(export);
        }
        {
            var img = new Argument<string>("image");
            var info = new Command("info", "Show an image") { img };
            Act(info, async (pr, c, ct) =>
            {
                Output.Structured(Format(pr) == "table" ? "yaml" : Format(pr), await c.GetImageAsync(pr.GetValue(img)!, ct), Output.Pretty.Image, Out);
                return 0;
            });
            image.Subcommands.Add(info);
        }
        {
            var img = new Argument<string>("image");
            var del = new Command("delete", "Delete an image no instance uses") { img };
            Act(del, async (pr, c, ct) => { await c.DeleteImageAsync(pr.GetValue(img)!, ct); return 0; });
            image.Subcommands.Add(del);
        }
        var alias = new Command("alias", "Manage image aliases");
        {
            var list = new Command("list", "List aliases");
            Act(list, async (pr, c, ct) =>
            {
                var a = await c.ListImageAliasesAsync(ct);
                if (Output.Structured(Format(pr), a, Output.Pretty.ListImageAlias, Out)) return 0;
                Output.Table(Out, ["ALIAS", "FINGERPRINT"], a.Select(x => new[] { x.Name, x.Target[..12] }));
                return 0;
            });
            alias.Subcommands.Add(list);
            var an = new Argument<string>("alias");
            var target = new Argument<string>("target") { Description = "Image fingerprint or alias" };
            var create = new Command("create", "Create or move an alias") { an, target };
            Act(create, async (pr, c, ct) => { await c.SetImageAliasAsync(pr.GetValue(an)!, pr.GetValue(target)!, ct); return 0; });
            alias.Subcommands.Add(create);
            var dn = new Argument<string>("alias");
            var delete = new Command("delete", "Delete an alias") { dn };
            Act(delete, async (pr, c, ct) => { await c.DeleteImageAliasAsync(pr.GetValue(dn)!, ct); return 0; });
            alias.Subcommands.Add(delete);
        }
        image.Subcommands.Add(alias);
        return image;
    }

    // ---- operations, events ----

    static Command OperationCommand()
    {
        var operation = new Command("operation", "Long-running operations");
        var list = new Command("list", "List operations");
        Act(list, async (pr, c, ct) =>
        {
            var ops = await c.ListOperationsAsync(ct);
            if (Output.Structured(Format(pr), ops, Output.Pretty.ListOperation, Out)) return 0;
            Output.Table(Out, ["ID", "DESCRIPTION", "STATUS", "CREATED"], ops.Select(o => new[] { o.Id, o.Description, o.Status, Output.Time(o.CreatedAt) }));
            return 0;
        });
        operation.Subcommands.Add(list);
        var id = new Argument<string>("id");
        var wait = new Command("wait", "Wait for an operation to end") { id };
        Act(wait, async (pr, c, ct) =>
        {
            var op = await c.WaitOperationAsync(pr.GetValue(id)!, -1, ct);
            if (!Output.Structured(Format(pr), op, Output.Pretty.Operation, Out)) Out.WriteLine($"{op.Id}: {op.Status}{(op.Error is null ? "" : " (" + op.Error + ")")}");
            return op.Status == OperationStatus.Success ? 0 : 1;
        });
        operation.Subcommands.Add(wait);
        var cid = new Argument<string>("id");
        var cancel = new Command("cancel", "Cancel an operation") { cid };
        Act(cancel, async (pr, c, ct) => { await c.CancelOperationAsync(pr.GetValue(cid)!, ct); return 0; });
        operation.Subcommands.Add(cancel);
        return operation;
    }

    static Command EventsCommand()
    {
        var type = new Option<string[]>("--type") { Description = "lifecycle, operation or logging (repeatable; default: all)" };
        var events = new Command("events", "Print the events stream as JSON lines") { type };
        Act(events, async (pr, c, ct) =>
        {
            var types = pr.GetValue(type) is { Length: > 0 } t ? t : null;
            await foreach (var e in c.EventsAsync(types, ct))
            {
                await Out.WriteLineAsync(JsonSerializer.Serialize(e, HullJson.Default.Event));
                await Out.FlushAsync(ct);
            }
            return 0;
        });
        return events;
    }

    static Command CompletionCommand()
    {
        var shell = new Argument<string>("shell") { Description = "bash" };
        shell.AcceptOnlyFromAmong("bash");
        var cmd = new Command("completion", "Print a shell completion script: eval \"$(hull completion bash)\"") { shell };
        cmd.SetAction(_ =>
        {
            Out.Write("""
                _hull_complete() {
                  local IFS=$'\n'
                  COMPREPLY=( $(hull "[suggest:${COMP_POINT}]" "${COMP_LINE}" 2>/dev/null) )
                }
                complete -o default -F _hull_complete hull

                """);
            return 0;
        });
        return cmd;
    }
}

/// <summary>The local terminal: size and raw mode (through stty, restored on dispose).</summary>
static class Terminal
{
    public static (int Width, int Height) Size()
    {
        try { if (!Console.IsOutputRedirected) return (Math.Max(1, Console.WindowWidth), Math.Max(1, Console.WindowHeight)); }
        catch (IOException) { }
        return (80, 24);
    }

    public static IDisposable? MakeRaw()
    {
        if (Console.IsInputRedirected) return null;
        var saved = Stty("-g");
        if (saved is null) return null;
        Stty("raw -echo");
        return new Restore(saved.Trim());
    }

    sealed class Restore(string saved) : IDisposable { public void Dispose() => Stty(saved); }

    static string? Stty(string args)
    {
        try
        {
            var psi = new ProcessStartInfo("stty") { RedirectStandardOutput = true, UseShellExecute = false };
            foreach (var a in args.Split(' ')) psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            var o = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            return p.ExitCode == 0 ? o : null;
        }
        catch (System.ComponentModel.Win32Exception) { return null; }
    }
}
