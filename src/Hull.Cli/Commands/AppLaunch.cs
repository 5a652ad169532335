using System.CommandLine;
using System.Text;
using System.Text.Json;
using Hull.Api;

namespace Hull.Cli;

/// <summary>launch/init: the container's own command ("-- PROGRAM ARGS...", as podman run) and the host directories an
/// application container of the built-in "host" image shares read-only (--share, --system).</summary>
public static partial class CliApp
{
    sealed class AppLaunchOptions
    {
        public required Argument<string[]> Command;
        public required Option<string[]> Share;
        public required Option<string> System;
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
        };
        cmd.Arguments.Add(o.Command);
        cmd.Options.Add(o.Share);
        cmd.Options.Add(o.System);
        return o;
    }

    static void ApplyAppOptions(ParseResult pr, AppLaunchOptions o, InstanceCreateRequest req)
    {
        if (pr.GetValue(o.Command) is { Length: > 0 } command)
        {
            using var ms = new MemoryStream();
            using (var w = new Utf8JsonWriter(ms))
            {
                w.WriteStartArray();
                foreach (var a in command) w.WriteStringValue(a);
                w.WriteEndArray();
            }
            req.Config["app.command"] = Encoding.UTF8.GetString(ms.ToArray());
        }
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
