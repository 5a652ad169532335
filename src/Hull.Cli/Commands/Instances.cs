using System.CommandLine;
using System.Runtime.InteropServices;
using Hull.Api;
using Hull.Linux;

namespace Hull.Cli;

/// <summary>launch, init, start, stop, restart, pause, resume, delete, list, info, exec, console and the other verbs on
/// one instance.</summary>
public static partial class CliApp
{
    static IEnumerable<Command> InstanceCommands()
    {
        yield return CreateCommand("launch", "Create and start an instance from an image", start: true);
        yield return CreateCommand("init", "Create an instance from an image without starting it", start: false);

        foreach (var (verb, action, help) in new[] { ("start", "start", "Start instances"),
            ("pause", "pause", "Pause (freeze) running instances"), ("resume", "resume", "Resume paused instances") })
        {
            var names = new Argument<string[]>("names") { Description = "Instance names",
                Arity = ArgumentArity.OneOrMore, CompletionSources = { _ => InstanceNames() } };
            var cmd = new Command(verb, help) { names };
            Act(cmd, async (pr, c, ct) =>
            {
                foreach (var n in pr.GetValue(names)!) await WaitOp(c,
                    await c.ChangeStateOperationAsync(n, action, ct: ct), ct);
                return 0;
            });
            yield return cmd;
        }

        foreach (var (verb, help) in new[] { ("stop",
            "Stop instances (SIGTERM or ACPI shutdown, then kill after the timeout)"),
            ("restart", "Restart instances") })
        {
            var names = new Argument<string[]>("names") { Description = "Instance names",
                Arity = ArgumentArity.OneOrMore, CompletionSources = { _ => InstanceNames() } };
            var force = new Option<bool>("--force") { Description =
                "Kill at once instead of asking the instance to stop" };
            var timeout = new Option<int>("--timeout") { Description =
                "Seconds to wait for a clean stop before killing (-1: forever)", DefaultValueFactory = _ => 30 };
            var cmd = new Command(verb, help) { names, force, timeout };
            Act(cmd, async (pr, c, ct) =>
            {
                foreach (var n in pr.GetValue(names)!)
                {
                    await WaitOp(c, await c.ChangeStateOperationAsync(n, verb, pr.GetValue(force), pr.GetValue(timeout),
                        ct), ct);
                    // A stop that had to kill says so: the instance did not end when asked.
                    if (verb == "stop" && !pr.GetValue(force)
                        && (await c.GetInstanceAsync(n, ct)).LastExitCode == 128 + Signals.SIGKILL)
                        await Err.WriteLineAsync($"hull: {n} did not stop within {pr.GetValue(timeout)} s of being " +
                            "asked (SIGTERM, its stop signal, or the ACPI power button): it was killed");
                }
                return 0;
            });
            yield return cmd;
        }

        {
            var names = new Argument<string[]>("names") { Description = "Instance names",
                Arity = ArgumentArity.OneOrMore, CompletionSources = { _ => InstanceNames() } };
            var force = new Option<bool>("--force") { Description = "Stop a running instance first" };
            var cmd = new Command("delete", "Delete instances") { names, force };
            cmd.Aliases.Add("rm");
            Act(cmd, async (pr, c, ct) =>
            {
                foreach (var n in pr.GetValue(names)!) await WaitOp(c,
                    await c.DeleteInstanceOperationAsync(n, pr.GetValue(force), ct), ct);
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
                Output.Table(Out, ["NAME", "STATE", "TYPE", "IMAGE", "IPV4", "PORTS", "PID", "PROFILES", "CREATED"],
                    list.Select(i => new[] { i.Name, i.State.ToUpperInvariant(), i.Type, i.Image,
                        i.State == InstanceStates.Running ? NetSummary(i).Ipv4.Replace("\n", ", ") : "",
                        NetSummary(i).Ports, i.Pid?.ToString() ?? "", string.Join(",", i.Profiles),
                        Output.Time(i.CreatedAt) }));
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
                foreach (var (k, v) in st.Details ?? []) Out.WriteLine(
                    $"{char.ToUpperInvariant(k[0])}{k[1..].Replace('-', ' ')}: {v}");
                if (i.LastExitCode is { } ec) Out.WriteLine($"Last exit code: {ec}");
                if (st.Addresses is { Count: > 0 } addrs)
                    Out.WriteLine($"Addresses:\n  {string.Join("\n  ", addrs)}");
                if (NetSummary(i).Ports is { Length: > 0 } published) Out.WriteLine($"Published ports: {published}");
                Out.WriteLine($"Profiles: {string.Join(", ", i.Profiles)}\nCreated: {Output.Time(i.CreatedAt)}\nLast " +
                    $"used: {Output.Time(i.LastUsedAt)}");
                if (st.Stats is { } s)
                    Out.WriteLine($"Resources:\n  CPU time: {s.CpuUsageNs / 1e9:0.00}s\n  Memory: " +
                        $"{Output.Size(s.MemoryBytes)}\n  Processes: {s.Pids}\n  Disk read/write: " +
                        $"{Output.Size(s.IoReadBytes)} / {Output.Size(s.IoWriteBytes)}");
                if (i.ExpandedConfig.Count > 0) Out.WriteLine("Config:\n"
                    + string.Join("\n", i.ExpandedConfig.OrderBy(k => k.Key).Select(k => $"  {k.Key}: {k.Value}")));
                if (i.ExpandedDevices.Count > 0)
                    Out.WriteLine("Devices:\n" + string.Join("\n",
                        i.ExpandedDevices.OrderBy(k => k.Key).Select(k =>
                        $"  {k.Key}: " + string.Join(" ",
                        k.Value.OrderBy(x => x.Key).Select(x => $"{x.Key}={x.Value}")))));
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
                    var stdin = Terminal.OpenStdin();
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
                try { await s.RunAsync(Console.OpenStandardOutput(), null, cts.Token); }
                catch (OperationCanceledException) { return 0; }
                if (cts.IsCancellationRequested) return 0;
                raw?.Dispose();
                // hulld ended the console: the instance stopped (a guest that powered off, an init that exited).
                var state = await c.GetInstanceAsync(pr.GetValue(name)!, ct);
                for (var i = 0; i < 30 && state.State is InstanceStates.Stopping or InstanceStates.Running; i++)
                {
                    await Task.Delay(100, ct);
                    state = await c.GetInstanceAsync(pr.GetValue(name)!, ct);
                }
                await Err.WriteLineAsync($"\nhull: the console closed: {state.Name} is " +
                    state.State.ToLowerInvariant() + (state.LastExitCode is { } code ? $" (exit code {code})" : ""));
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
                while ((n = await s.ReadAsync(buf, ct)) > 0) { await stdout.WriteAsync(buf.AsMemory(0, n),
                    ct); await stdout.FlushAsync(ct); }
                return 0;
            });
            yield return cmd;
        }

    }

    /// <summary>-p [IP:]HOSTPORT:PORT[/tcp|udp] as a proxy device (Incus's form, forwarded by nftables).</summary>
    static (string Name, Dictionary<string, string> Device) PublishDevice(string spec)
    {
        var proto = "tcp";
        var text = spec;
        var slash = text.LastIndexOf('/');
        if (slash >= 0) { proto = text[(slash + 1)..]; text = text[..slash]; }
        var parts = text.Split(':');
        var ip = parts.Length == 3 ? parts[0] : "0.0.0.0";
        if (proto is not ("tcp" or "udp") || parts.Length is < 2 or > 3
            || !int.TryParse(parts[^2], out var hostPort) || !int.TryParse(parts[^1], out var port)
            || hostPort is < 1 or > 65535 || port is < 1 or > 65535)
            throw new CliException($"-p {spec} is invalid: use [IP:]HOSTPORT:PORT[/tcp|udp] with ports from 1 to " +
                "65535, e.g. -p 8080:80 or -p 127.0.0.1:5353:53/udp");
        return ($"{proto}{hostPort}", new Dictionary<string, string>
        {
            ["type"] = "proxy", ["listen"] = $"{proto}:{ip}:{hostPort}", ["connect"] = $"{proto}:0.0.0.0:{port}",
        });
    }

    /// <summary>An instance's IPv4 addresses (kept by hulld or static) and published ports, for list and
    /// info.</summary>
    static (string Ipv4, string Ports) NetSummary(Instance i)
    {
        var addrs = new List<string>();
        foreach (var (dev, cfg) in i.ExpandedDevices.Where(d => d.Value.GetValueOrDefault("type") == "nic")
            .OrderBy(d => d.Key, StringComparer.Ordinal))
        {
            var a = cfg.GetValueOrDefault("ipv4.address") is { Length: > 0 } st ? st
                : i.Config.GetValueOrDefault($"volatile.{dev}.ipv4.address");
            if (a is { Length: > 0 }) addrs.Add($"{a} ({cfg.GetValueOrDefault("name") ?? dev})");
        }
        var ports = i.ExpandedDevices.Values.Where(d => d.GetValueOrDefault("type") == "proxy").Select(d =>
        {
            var l = (d.GetValueOrDefault("listen") ?? "").Split(':');
            var c = (d.GetValueOrDefault("connect") ?? "").Split(':');
            return l.Length == 3 && c.Length == 3
                ? $"{(l[1] == "0.0.0.0" ? "" : l[1] + ":")}{l[2]}->{c[2]}/{l[0]}" : "";
        }).Where(x => x.Length > 0);
        return (string.Join("\n", addrs), string.Join(",", ports));
    }

    static Command CreateCommand(string verb, string help, bool start)
    {
        var image = new Argument<string>("image") { Description =
            "Image alias or fingerprint (busybox and host are built in; host: an application container), or a " +
            "registry reference (host[:port]/repo[:tag]) to pull" };
        var name = new Argument<string>("name") { Description = "Instance name" };
        var vm = new Option<bool>("--vm") { Description = "Make a virtual machine instead of a container" };
        var cfg = new Option<string[]>("--config",
            "-c") { Description = "Config key=value (repeatable), e.g. -c limits.memory=256MiB" };
        var profiles = new Option<string[]>("--profile")
            { Description = "Profiles to apply, in order (repeatable; default: default)" };
        var noProfiles = new Option<bool>("--no-profiles") { Description = "Apply no profile" };
        var publish = new Option<string[]>("--publish", "-p") { Description =
            "Publish a port: [IP:]HOSTPORT:PORT[/tcp|udp] (repeatable), e.g. -p 8080:80; a proxy device" };
        var network = new Option<string>("--network", "-n") { Description =
            "Attach eth0 to this managed network, instead of the profiles' eth0" };
        var cmd = new Command(verb, help) { image, name, vm, cfg, profiles, noProfiles, network, publish };
        var app = AddAppOptions(cmd);
        Act(cmd, async (pr, c, ct) =>
        {
            var p = pr.GetValue(profiles) is { Length: > 0 } ps
                ? ps.SelectMany(x => x.Split(',', StringSplitOptions.RemoveEmptyEntries)).ToList()
                : pr.GetValue(noProfiles) ? [] : null;
            var req = new InstanceCreateRequest
            {
                Name = pr.GetValue(name)!, Image = pr.GetValue(image)!,
                Type = pr.GetValue(vm) ? InstanceTypes.Vm : InstanceTypes.Container,
                Config = KeyValues(pr.GetValue(cfg), "config"), Profiles = p, Start = start,
            };
            ApplyAppOptions(pr, app, req);
            if (pr.GetValue(network) is { Length: > 0 } net)
                req.Devices["eth0"] = new() { ["type"] = "nic", ["network"] = net, ["name"] = "eth0" };
            foreach (var spec in pr.GetValue(publish) ?? [])
            {
                var (devName, dev) = PublishDevice(spec);
                if (!req.Devices.TryAdd(devName, dev))
                    throw new CliException($"-p {spec}: that host port is published twice");
            }
            await Err.WriteLineAsync($"{(start ? "Launching" : "Creating")} {req.Name}");
            await WaitOp(c, await c.CreateInstanceOperationAsync(req, ct), ct);
            // A VM that could not have KVM runs under emulation (TCG), many times slower: say so, and why.
            if (start && req.Type == InstanceTypes.Vm
                && (await c.GetStateAsync(req.Name, ct)).Details is { } d
                && d.GetValueOrDefault("accelerator") == "tcg")
                await Err.WriteLineAsync($"hull: {req.Name} runs under TCG emulation, not KVM: " +
                    d.GetValueOrDefault("accelerator-reason", "no reason recorded"));
            return 0;
        });
        return cmd;
    }

    static Command ExecCommand()
    {
        var name = NameArg();
        var command = new Argument<string[]>("command") { Description = "The command and its arguments (after --)",
            Arity = ArgumentArity.OneOrMore };
        var tty = new Option<bool>("--force-interactive",
            "-t") { Description = "Run on a pty even if stdin or stdout is not a terminal" };
        var noTty = new Option<bool>("--force-noninteractive", "-T") { Description = "Never use a pty" };
        var env = new Option<string[]>("--env") { Description = "Environment KEY=VALUE (repeatable)" };
        var cwd = new Option<string>("--cwd") { Description = "Working directory inside the instance" };
        var user = new Option<string>("--user") { Description = "User (name or uid, optionally :group) to run as" };
        var cmd = new Command("exec", "Run a command in an instance: stdio streamed, its exit status returned") { name,
            command, tty, noTty, env, cwd, user };
        Act(cmd, async (pr, c, ct) =>
        {
            var useTty = pr.GetValue(tty) || (!pr.GetValue(noTty) && !Console.IsInputRedirected
                && !Console.IsOutputRedirected);
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
            _ = s.PumpStdinAsync(Terminal.OpenStdin(), cts.Token);
            var code = await s.RunAsync(Console.OpenStandardOutput(), Console.OpenStandardError(), ct);
            cts.Cancel();
            if (code is null) throw new CliException("the connection to hulld ended before the command did");
            return code.Value;
        });
        return cmd;
    }
}
