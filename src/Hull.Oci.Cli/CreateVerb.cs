using Hull.Containers;

namespace Hull.Oci.Cli;

/// <summary>create: sets up the container; its process waits until start.</summary>
static class CreateVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "create", ["bundle", "b", "pid-file", "console-socket", "preserve-fds"],
            ["no-pivot", "no-new-keyring"]);
        if (a.Positional.Count != 1) throw new UsageException("create needs exactly one container id");
        ctx.Engine.Create(new CreateOptions
        {
            Id = a.Positional[0], Bundle = a.Get("bundle") ?? a.Get("b") ?? ".", PidFile = a.Get("pid-file"),
            ConsoleSocket = a.Get("console-socket"), NoPivot = a.Has("no-pivot"),
            PreserveFds = a.GetInt("preserve-fds", 0),
        });
        return 0;
    }
}
