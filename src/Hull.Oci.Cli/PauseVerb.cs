namespace Hull.Oci.Cli;

/// <summary>pause: freezes every process of the container (cgroup freezer).</summary>
static class PauseVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "pause", [], []);
        if (a.Positional.Count != 1) throw new UsageException("pause needs exactly one container id");
        ctx.Engine.Pause(a.Positional[0]);
        return 0;
    }
}
