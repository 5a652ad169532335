using System.CommandLine;
using System.Text;
using System.Text.Json;
using Hull.Api;

namespace Hull.Cli;

/// <summary>config: show and change an instance's config and devices.</summary>
public static partial class CliApp
{
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
                    Config = pr.GetValue(expanded) ? i.ExpandedConfig : i.Config,
                    Devices = pr.GetValue(expanded) ? i.ExpandedDevices : i.Devices, Profiles = i.Profiles,
                };
                var fmt = Format(pr) == "table" ? "yaml" : Format(pr);
                Output.Structured(fmt, put, Output.Pretty.InstancePut, Out);
                return 0;
            });
            config.Subcommands.Add(show);
        }
        {
            var name = NameArg();
            var kv = new Argument<string[]>("key=value") { Arity = ArgumentArity.OneOrMore,
                Description = "Keys to set" };
            var set = new Command("set", $"Set config keys ({Hull.Instances.ConfigSchema.KeyList})") { name, kv };
            Act(set, async (pr, c, ct) =>
            {
                var i = await c.GetInstanceAsync(pr.GetValue(name)!, ct);
                foreach (var (k, v) in KeyValues(pr.GetValue(kv), "config")) i.Config[k] = v;
                await c.UpdateInstanceAsync(i.Name, new InstancePut { Config = i.Config, Devices = i.Devices,
                    Profiles = i.Profiles }, ct);
                return 0;
            });
            config.Subcommands.Add(set);
        }
        {
            var name = NameArg();
            var keys = new Argument<string[]>("keys") { Arity = ArgumentArity.OneOrMore,
                Description = "Keys to remove" };
            var unset = new Command("unset", "Remove config keys") { name, keys };
            Act(unset, async (pr, c, ct) =>
            {
                var i = await c.GetInstanceAsync(pr.GetValue(name)!, ct);
                foreach (var k in pr.GetValue(keys)!)
                    if (!i.Config.Remove(k)) throw new CliException(
                        $"config key '{k}' is not set on '{i.Name}'" +
                        (i.ExpandedConfig.ContainsKey(k) ? " (it comes from a profile: change the profile)" : ""));
                await c.UpdateInstanceAsync(i.Name, new InstancePut { Config = i.Config, Devices = i.Devices,
                    Profiles = i.Profiles }, ct);
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
                var next = await EditJsonAsync(put, Output.Pretty.InstancePut, i.Name + ".json", ct);
                await c.UpdateInstanceAsync(i.Name, next, ct);
                return 0;
            });
            config.Subcommands.Add(edit);
        }
        var device = new Command("device", "Add, change or remove devices (disk, bind, nic, proxy)");
        {
            var name = NameArg();
            var dev = new Argument<string>("device") { Description = "Device name" };
            var kv = new Argument<string[]>("[type] key=value") { Arity = ArgumentArity.OneOrMore,
                Description = "The type first as Incus writes it, or as type=: "
                    + "bind source=/host/dir path=/in/instance readonly=true" };
            var add = new Command("add", "Add a device: hull config device add NAME DEVICE TYPE KEY=VALUE...")
                { name, dev, kv };
            Act(add, async (pr, c, ct) =>
            {
                var i = await c.GetInstanceAsync(pr.GetValue(name)!, ct);
                var dn = pr.GetValue(dev)!;
                if (i.Devices.ContainsKey(dn)) throw new CliException(
                    $"device '{dn}' already exists on '{i.Name}': remove it first or choose another name");
                i.Devices[dn] = DeviceKeys(pr.GetValue(kv)!);
                await c.UpdateInstanceAsync(i.Name, new InstancePut { Config = i.Config, Devices = i.Devices,
                    Profiles = i.Profiles }, ct);
                return 0;
            });
            device.Subcommands.Add(add);
        }
        foreach (var verb in new[] { "set", "override" })
        {
            var name = NameArg();
            var dev = new Argument<string>("device") { Description = "Device name" };
            var kv = new Argument<string[]>("key=value")
            {
                Arity = verb == "set" ? ArgumentArity.OneOrMore : ArgumentArity.ZeroOrMore,
                Description = "Keys to set (an empty value removes the key)",
            };
            var cmd = new Command(verb, verb == "set" ? "Set keys of an instance's own device"
                : "Copy a device of a profile into the instance, with these keys changed") { name, dev, kv };
            Act(cmd, async (pr, c, ct) =>
            {
                var i = await c.GetInstanceAsync(pr.GetValue(name)!, ct);
                var dn = pr.GetValue(dev)!;
                var fromProfile = !i.Devices.ContainsKey(dn) && i.ExpandedDevices.ContainsKey(dn);
                if (verb == "set" && fromProfile) throw new CliException($"device '{dn}' of '{i.Name}' comes from a " +
                    $"profile: 'hull config device override {i.Name} {dn} KEY=VALUE' gives the instance its own copy");
                if (verb == "override" && !fromProfile) throw new CliException(i.Devices.ContainsKey(dn)
                    ? $"device '{dn}' is already the instance's own: use 'hull config device set'"
                    : $"device '{dn}' not found in the profiles of '{i.Name}': 'hull config show {i.Name} --expanded' " +
                      "lists them");
                if (!i.Devices.ContainsKey(dn) && !fromProfile) throw new CliException(
                    $"device '{dn}' not found on '{i.Name}': 'hull config show {i.Name}' lists its devices");
                var d = new Dictionary<string, string>(fromProfile ? i.ExpandedDevices[dn] : i.Devices[dn]);
                foreach (var (k, v) in KeyValues(pr.GetValue(kv), "device key"))
                    if (v.Length == 0) d.Remove(k); else d[k] = v;
                i.Devices[dn] = d;
                await c.UpdateInstanceAsync(i.Name, new InstancePut { Config = i.Config, Devices = i.Devices,
                    Profiles = i.Profiles }, ct);
                return 0;
            });
            device.Subcommands.Add(cmd);
        }
        {
            var name = NameArg();
            var dev = new Argument<string>("device") { Description = "Device name" };
            var remove = new Command("remove", "Remove a device") { name, dev };
            Act(remove, async (pr, c, ct) =>
            {
                var i = await c.GetInstanceAsync(pr.GetValue(name)!, ct);
                var dn = pr.GetValue(dev)!;
                if (!i.Devices.Remove(dn)) throw new CliException(
                    $"device '{dn}' not found on '{i.Name}': 'hull config show {i.Name}' lists its devices");
                await c.UpdateInstanceAsync(i.Name, new InstancePut { Config = i.Config, Devices = i.Devices,
                    Profiles = i.Profiles }, ct);
                return 0;
            });
            device.Subcommands.Add(remove);
        }
        config.Subcommands.Add(device);
        return config;
    }

    /// <summary>A new device's keys: Incus's "TYPE key=value..." or "type=TYPE key=value...".</summary>
    static Dictionary<string, string> DeviceKeys(string[] items)
    {
        if (items.Length == 0 || items[0].Contains('=')) return KeyValues(items, "device key");
        var keys = KeyValues(items[1..], "device key");
        if (keys.TryGetValue("type", out var t) && t != items[0]) throw new CliException(
            $"device type given twice ('{items[0]}' and type={t}): give it once");
        keys["type"] = items[0];
        return keys;
    }
}
