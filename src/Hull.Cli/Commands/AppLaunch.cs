using System.CommandLine;
using System.Text;
using System.Text.Json;
using Hull.Api;

namespace Hull.Cli;

/// <summary>launch/init: the container's own command ("-- PROGRAM ARGS...", as podman run), Podman's overrides of an
/// OCI image's run settings (--entrypoint, -e, -w, -u), and the host directories an application container of the
/// built-in "host" image shares read-only (--share, --system).</summary>
public static partial class CliApp
{
    sealed class AppLaunchOptions
    {
        public required Argument<string[]> Command;
        public required Option<string[]> Share;
        public required Option<string> System;
        public required Option<string> Entrypoint, Workdir, User;
        public required Option<string[]> Env;
    }

    static AppLaunchOptions AddAppOptions(Command cmd)
    {
        var o = new AppLaunchOptions
        {
            Command = new Argument<string[]>("command")
            {
                Description = "The program and its arguments (after --) to run instead of the image's init; required " +
                    "for the host image",
                Arity = ArgumentArity.ZeroOrMore,
            },
            Share = new Option<string[]>("--share")
            {
                Description = "A host directory to share read-only at the same path (repeatable or comma-separated), " +
                    "e.g. --share /opt/tool",
            },
            System = new Option<string>("--system")
            {
                Description = "For the host image: the host system directories to share read-only, comma-separated, " +
                    "instead of the default /usr,/lib,/lib32,/lib64,/libx32,/bin,/sbin,/etc (none: share none)",
            },
            Entrypoint = new Option<string>("--entrypoint")
            {
                Description = "The program the command's arguments are given to, instead of the image's " +
                    "Entrypoint: a path, or a JSON array such as '[\"/bin/sh\",\"-c\"]' (\"\": none; the image's " +
                    "Cmd is dropped too unless a command follows --)",
            },
            Env = new Option<string[]>("--env", "-e")
            {
                Description = "An environment variable KEY=VALUE for the container (repeatable; wins over the image's)",
            },
            Workdir = new Option<string>("--workdir", "-w")
            {
                Description = "The working directory of the container's command, instead of the image's WorkingDir",
            },
            User = new Option<string>("--user", "-u")
            {
                Description = "The user the container's command runs as (NAME, UID, NAME:GROUP or UID:GID), instead " +
                    "of the image's User",
            },
        };
        cmd.Arguments.Add(o.Command);
        cmd.Options.Add(o.Share);
        cmd.Options.Add(o.System);
        cmd.Options.Add(o.Entrypoint);
        cmd.Options.Add(o.Env);
        cmd.Options.Add(o.Workdir);
        cmd.Options.Add(o.User);
        return o;
    }

    static void ApplyAppOptions(ParseResult pr, AppLaunchOptions o, InstanceCreateRequest req)
    {
        if (pr.GetValue(o.Command) is { Length: > 0 } command) req.Config["app.command"] = ConfigValues.JsonArray(command);
        if (pr.GetValue(o.Entrypoint) is { } entrypoint)
            req.Config["oci.entrypoint"] = entrypoint.TrimStart().StartsWith('[') ? entrypoint
                : ConfigValues.JsonArray(entrypoint.Length == 0 ? [] : [entrypoint]);
        foreach (var (k, v) in KeyValues(pr.GetValue(o.Env), "environment variable"))
            req.Config["environment." + k] = v;
        if (pr.GetValue(o.Workdir) is { } workdir) req.Config["oci.cwd"] = workdir;
        if (pr.GetValue(o.User) is { } user) req.Config["oci.user"] = user;
        if (pr.GetValue(o.Share) is { Length: > 0 } shares)
            req.Config["app.share"] = string.Join(",",
                shares.SelectMany(s => s.Split(',', StringSplitOptions.RemoveEmptyEntries |
                StringSplitOptions.TrimEntries)));
        if (pr.GetValue(o.System) is { } system) req.Config["app.system"] = system;
        if (req.Image == "host" && !req.Config.ContainsKey("app.command"))
            throw new CliException("the host image runs a host program: name it after --, e.g. hull launch host web " +
                "-- /usr/bin/python3 -m http.server");
    }
}
