namespace Hull.Oci.Cli;

/// <summary>resume: thaws a paused container.</summary>
static class ResumeVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "resume", [], []);
        if (a.Positional.Count != 1) throw new UsageException("resume needs exactly one container id");
        ctx.Engine.Resume(a.Positional[0]);
        return 0;
    }
}
