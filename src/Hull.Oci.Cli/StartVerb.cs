namespace Hull.Oci.Cli;

/// <summary>start: runs the process of a created container.</summary>
static class StartVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "start", [], []);
        if (a.Positional.Count != 1) throw new UsageException("start needs exactly one container id");
        ctx.Engine.Start(a.Positional[0]);
        return 0;
    }
}
