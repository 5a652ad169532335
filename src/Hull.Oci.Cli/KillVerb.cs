using Hull.Linux;

namespace Hull.Oci.Cli;

/// <summary>kill: a signal (name or number, default SIGTERM) to the container's process, or with --all to all of
/// them.</summary>
static class KillVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "kill", [], ["all", "a"]);
        if (a.Positional.Count is < 1 or > 2) throw new UsageException(
            "kill needs a container id and optionally a signal");
        var sigText = a.Positional.Count == 2 ? a.Positional[1] : "SIGTERM";
        if (!Signals.TryParse(sigText, out var sig))
            throw new UsageException($"unknown signal \"{sigText}\": use a name such as KILL, TERM, SIGUSR1 or a " +
                "number from 1 to 64");
        ctx.Engine.Kill(a.Positional[0], sig, a.Has("all") || a.Has("a"));
        return 0;
    }
}
