namespace Hull.Oci.Cli;

/// <summary>delete: removes a stopped (or, with --force, any) container and runs its poststop hooks.</summary>
static class DeleteVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "delete", [], ["force", "f"]);
        if (a.Positional.Count != 1) throw new UsageException("delete needs exactly one container id");
        ctx.Engine.Delete(a.Positional[0], a.Has("force") || a.Has("f"));
        return 0;
    }
}
