using System.Text.Json;

namespace Hull.Oci.Cli;

/// <summary>spec: writes runc's default config.json (busybox-friendly: sh, a terminal, the default mounts and
/// masks).</summary>
static class SpecVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "spec", ["bundle", "b"], ["rootless"]);
        var bundle = a.Get("bundle") ?? a.Get("b") ?? ".";
        var path = Path.Combine(bundle, "config.json");
        if (File.Exists(path)) throw new UsageException($"{path} already exists: remove it first");
        var spec = Hull.Containers.DefaultSpec.Create(["sh"], terminal: true);
        if (a.Has("rootless")) Hull.Containers.DefaultSpec.MakeRootless(spec, Hull.Linux.Libc.geteuid());
        File.WriteAllText(path, JsonSerializer.Serialize(spec, OciJson.Default.Spec) + "\n");
        return 0;
    }
}
