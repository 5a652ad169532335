using System.CommandLine;
using Hull.Api;

namespace Hull.Cli;

/// <summary>profile: the named config sets instances take.</summary>
public static partial class CliApp
{
    static Command ProfileCommand()
    {
        var profile = new Command("profile", "Manage profiles: named config sets applied in order");
        {
            var list = new Command("list", "List profiles");
            Act(list, async (pr, c, ct) =>
            {
                var ps = await c.ListProfilesAsync(ct);
                if (Output.Structured(Format(pr), ps, Output.Pretty.ListProfile, Out)) return 0;
                Output.Table(Out, ["NAME", "DESCRIPTION", "USED BY"],
                    ps.Select(p => new[] { p.Name, p.Description, p.UsedBy.Count.ToString() }));
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
                await c.CreateProfileAsync(new ProfileCreateRequest { Name = pr.GetValue(name)!,
                    Config = KeyValues(pr.GetValue(cfg), "config"), Description = pr.GetValue(desc) ?? "" }, ct);
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
                await c.UpdateProfileAsync(p.Name, new ProfilePut { Config = p.Config, Devices = p.Devices,
                    Description = p.Description }, ct);
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
                    if (!p.Config.Remove(k)) throw new CliException(
                        $"config key '{k}' is not set in profile '{p.Name}'");
                await c.UpdateProfileAsync(p.Name, new ProfilePut { Config = p.Config, Devices = p.Devices,
                    Description = p.Description }, ct);
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
            var profiles = new Argument<string>("profiles") { Description =
                "Comma-separated profiles, in order (empty string: none)" };
            var assign = new Command("assign", "Set the profiles of an instance") { inst, profiles };
            Act(assign, async (pr, c, ct) =>
            {
                var i = await c.GetInstanceAsync(pr.GetValue(inst)!, ct);
                var ps = pr.GetValue(profiles)!.Split(',',
                    StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
                await c.UpdateInstanceAsync(i.Name, new InstancePut { Config = i.Config, Devices = i.Devices,
                    Profiles = ps }, ct);
                return 0;
            });
            profile.Subcommands.Add(assign);
        }
        return profile;
    }
}
