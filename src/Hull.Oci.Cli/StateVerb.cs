using System.Text.Json;

namespace Hull.Oci.Cli;

/// <summary>state: the runtime-spec state JSON.</summary>
static class StateVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "state", [], []);
        if (a.Positional.Count != 1) throw new UsageException("state needs exactly one container id");
        Console.WriteLine(JsonSerializer.Serialize(ctx.Engine.StateOf(a.Positional[0]), OciJson.Default.State));
        return 0;
    }
}
