using System.CommandLine;
using Hull.Api;
using Hull.Sdk;

namespace Hull.Cli;

/// <summary>copy, move, export, import (instances between hullds and to files) and remote (the named hullds).</summary>
public static partial class CliApp
{
    static IEnumerable<Command> TransferCommands()
    {
        {
            var src = NameArg("source", "The instance to copy: NAME or REMOTE:NAME");
            var dst = new Argument<string>("destination") { Description =
                "The copy: NAME, REMOTE:NAME or REMOTE: (same name)" };
            var cfg = new Option<string[]>("--config",
                "-c") { Description = "Config key=value for the copy (repeatable)" };
            var cmd = new Command("copy", "Copy an instance, on this hulld or to another one (REMOTE:NAME); the " +
                "source must be stopped to go to another hulld") { src, dst, cfg };
            cmd.Aliases.Add("cp");
            Act(cmd, async (pr, c, ct) =>
            {
                var (sr, sn) = Remotes.Split(pr.GetValue(src)!);
                var (dr, dn) = Remotes.Split(pr.GetValue(dst)!);
                if (dn.Length == 0) dn = sn;
                var config = KeyValues(pr.GetValue(cfg), "config");
                if (SameRemote(pr, sr, dr))
                {
                    using var on = sr is null ? null : await ConnectAsync(sr, ct);
                    var client = on ?? c;
                    var op = await client.CreateInstanceOperationAsync(
                        new InstanceCreateRequest { Name = dn, CopyFrom = sn, Config = config }, ct);
                    await WaitOp(client, op, ct);
                    return 0;
                }
                using var from = await ConnectAsync(sr ?? pr.GetValue(RemoteOption), ct);
                using var to = await ConnectAsync(dr ?? pr.GetValue(RemoteOption), ct);
                using var p = new ProgressText();
                var made = await InstanceTransfer.CopyAsync(from, sn, to, dn, start: false, p, ct);
                if (config.Count > 0)
                    await to.UpdateInstanceAsync(made.Name, new InstancePut
                    {
                        Config = new(made.Config.Concat(config).GroupBy(kv => kv.Key).Select(g => g.Last())),
                        Devices = made.Devices, Profiles = made.Profiles,
                    }, ct);
                return 0;
            });
            yield return cmd;
        }

        {
            var src = NameArg("source", "The instance to move: NAME or REMOTE:NAME");
            var dst = new Argument<string>("destination") { Description =
                "NEWNAME (rename), REMOTE:NAME or REMOTE: (to another hulld)" };
            var stateless = new Option<bool>("--stateless") { Description =
                "Move a running instance by stopping it here and starting it there (its processes restart); without " +
                "it a running VM moves live" };
            var address = new Option<string>("--migration-address")
            {
                Description = "For a live move: the target host's address as the source host reaches it (default " +
                    "127.0.0.1: both hullds on one host)",
                DefaultValueFactory = _ => "127.0.0.1",
            };
            var cmd = new Command("move", "Rename an instance, or move it to another hulld (REMOTE:NAME); a running " +
                "VM moves live") { src, dst, stateless, address };
            cmd.Aliases.Add("mv");
            Act(cmd, async (pr, c, ct) =>
            {
                var (sr, sn) = Remotes.Split(pr.GetValue(src)!);
                var (dr, dn) = Remotes.Split(pr.GetValue(dst)!);
                if (dn.Length == 0) dn = sn;
                if (SameRemote(pr, sr, dr))
                {
                    if (dn == sn) throw new CliException(
                        $"'{sn}' is already there: give a new name or another remote (REMOTE:)");
                    using var on = sr is null ? null : await ConnectAsync(sr, ct);
                    await (on ?? c).RenameInstanceAsync(sn, dn, ct);
                    return 0;
                }
                using var from = await ConnectAsync(sr ?? pr.GetValue(RemoteOption), ct);
                using var to = await ConnectAsync(dr ?? pr.GetValue(RemoteOption), ct);
                using var p = new ProgressText();
                var inst = await from.GetInstanceAsync(sn, ct);
                if (inst.Type == InstanceTypes.Vm && inst.State is InstanceStates.Running or InstanceStates.Frozen
                    && !pr.GetValue(stateless))
                {
                    var live = await InstanceTransfer.MoveLiveAsync(from, inst, to, dn, pr.GetValue(address)!, p, ct);
                    p.Dispose();
                    await Out.WriteLineAsync($"moved {sn} live: total {live.Total.TotalMilliseconds:0} ms, downtime " +
                        $"{live.Downtime.TotalMilliseconds:0} ms, {live.TransferredBytes / 1048576.0:0.0} MiB sent");
                    return 0;
                }
                await InstanceTransfer.MoveAsync(from, sn, to, dn, pr.GetValue(stateless), pr.GetValue(address)!, p,
                    ct);
                return 0;
            });
            yield return cmd;
        }

        {
            var name = NameArg();
            var file = new Argument<string>("file") { Description = "The backup tarball to write ('-' for stdout)" };
            var cmd = new Command("export", "Write a stopped instance (its filesystem, config and snapshots) to a " +
                "backup tarball") { name, file };
            Act(cmd, async (pr, c, ct) =>
            {
                var path = pr.GetValue(file)!;
                await using var s = await c.ExportInstanceAsync(pr.GetValue(name)!, ct);
                if (path == "-") { await s.CopyToAsync(Console.OpenStandardOutput(), ct); return 0; }
                var tmp = path + ".part";
                try
                {
                    await using (var f = File.Create(tmp)) await s.CopyToAsync(f, ct);
                    File.Move(tmp, path, overwrite: true);
                }
                catch { File.Delete(tmp); throw; }
                return 0;
            });
            yield return cmd;
        }

        {
            var file = new Argument<string>("file") { Description =
                "A backup tarball made by 'hull export' ('-' for stdin)" };
            var name = new Argument<string?>("name") { Description =
                "The instance's name (default: the name it was exported with)", Arity = ArgumentArity.ZeroOrOne };
            var start = new Option<bool>("--start") { Description = "Start the instance once imported" };
            var cmd = new Command("import", "Make an instance from a backup tarball") { file, name, start };
            Act(cmd, async (pr, c, ct) =>
            {
                var path = pr.GetValue(file)!;
                await using var s = path == "-" ? Console.OpenStandardInput() : File.OpenRead(path);
                using var p = new ProgressLine();
                var inst = await c.ImportInstanceAsync(s, pr.GetValue(name), pr.GetValue(start), p, ct);
                await Out.WriteLineAsync($"imported {inst.Name}");
                return 0;
            });
            yield return cmd;
        }
    }

    /// <summary>True when both ends name the same hulld (no prefix means --remote, else the default remote).</summary>
    static bool SameRemote(ParseResult pr, string? a, string? b)
    {
        var remotes = Remotes.Load();
        var dflt = pr.GetValue(RemoteOption) ?? remotes.Default;
        return (a ?? dflt) == (b ?? dflt);
    }

    /// <summary>Step messages of a multi-call job (copy to another hulld...) on a terminal.</summary>
    sealed class ProgressText : IProgress<string>, IDisposable
    {
        readonly bool _tty = !Console.IsErrorRedirected;
        int _width;

        public void Report(string text)
        {
            if (!_tty) return;
            Err.Write("\r" + text.PadRight(_width));
            _width = text.Length;
        }

        public void Dispose()
        {
            if (_tty && _width > 0) Err.Write("\r" + new string(' ', _width) + "\r");
            _width = 0;
        }
    }

    static Command RemoteCommand()
    {
        var cmd = new Command("remote", "Named hullds to copy and move instances to (REMOTE:NAME), or to talk to " +
            "with --remote");
        {
            var name = new Argument<string>("name") { Description = "The remote's name" };
            var addr = new Argument<string>("address") { Description =
                "unix:/path/to/hulld.sock (another hulld here, or a forwarded socket)" };
            var c = new Command("add", "Add a remote") { name, addr };
            Local(c, pr =>
            {
                var n = pr.GetValue(name)!;
                Remotes.ValidateName(n);
                if (n is Remotes.Local or "default") throw new CliException(
                    $"'{n}' is reserved: choose another remote name");
                Remotes.SocketOf(pr.GetValue(addr)!);
                var r = Remotes.Load();
                if (r.Entries.ContainsKey(n)) throw new CliException($"remote '{n}' exists already: remove it first");
                r.Entries[n] = pr.GetValue(addr)!;
                r.Save();
                return 0;
            });
            cmd.Subcommands.Add(c);
        }
        {
            var c = new Command("list", "List the remotes");
            c.Aliases.Add("ls");
            Local(c, pr =>
            {
                var r = Remotes.Load();
                var rows = new List<string[]> { new[] { Remotes.Local
                    + (r.Default == Remotes.Local ? " (default)" : ""), "unix:" + HullClient.DefaultSocket } };
                rows.AddRange(r.Entries.OrderBy(e => e.Key,
                    StringComparer.Ordinal).Select(e =>
                    new[] { e.Key + (r.Default == e.Key ? " (default)" : ""), e.Value }));
                var list = rows.Select(x => new Dictionary<string,
                    string> { ["name"] = x[0].Replace(" (default)", ""), ["address"] = x[1] }).ToList();
                if (!Output.Structured(Format(pr), list, Output.Pretty.ListDictionaryStringString, Out))
                    Output.Table(Out, ["NAME", "ADDRESS"], rows);
                return 0;
            });
            cmd.Subcommands.Add(c);
        }
        {
            var name = new Argument<string>("name") { Description = "The remote's name" };
            var c = new Command("remove", "Remove a remote") { name };
            c.Aliases.Add("rm");
            Local(c, pr =>
            {
                var r = Remotes.Load();
                var n = pr.GetValue(name)!;
                if (!r.Entries.Remove(n)) throw new CliException(
                    $"remote '{n}' is not known: 'hull remote list' shows them");
                if (r.Default == n) r.Default = Remotes.Local;
                r.Save();
                return 0;
            });
            cmd.Subcommands.Add(c);
        }
        {
            var name = new Argument<string>("name") { Description =
                "The remote to use when none is named ('local' for this host)" };
            var c = new Command("switch", "Set the default remote") { name };
            Local(c, pr =>
            {
                var r = Remotes.Load();
                var n = pr.GetValue(name)!;
                if (n != Remotes.Local && !r.Entries.ContainsKey(n)) throw new CliException(
                    $"remote '{n}' is not known: 'hull remote list' shows them");
                r.Default = n;
                r.Save();
                return 0;
            });
            cmd.Subcommands.Add(c);
        }
        return cmd;
    }

    /// <summary>An action that needs no hulld (local config); errors print as "Error: ..." with exit status
    /// 1.</summary>
    static void Local(Command cmd, Func<ParseResult, int> action) =>
        cmd.SetAction(pr =>
        {
            try { return action(pr); }
            catch (CliException e) { Err.WriteLine("Error: " + e.Message); return 1; }
            catch (IOException e) { Err.WriteLine("Error: " + e.Message); return 1; }
            catch (UnauthorizedAccessException e) { Err.WriteLine("Error: " + e.Message); return 1; }
        });
}
