using Hull.Containers;

[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace Hull;

/// <summary>
/// One NativeAOT binary, several roles chosen by name: "hull-oci" (or "hull oci ...") is the runc-compatible
/// OCI runtime; "hull init" is the container init the runtime re-executes in new namespaces; anything else is
/// the instance CLI, which talks to hulld.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        var name = Path.GetFileName(Environment.GetCommandLineArgs()[0]);
        if (name == "hull-oci") return Oci.Cli.OciMain.Run(args);
        if (args is ["init"] && Environment.GetEnvironmentVariable(
            ContainerInit.SyncFdVariable) is not null) return ContainerInit.Main();
        if (args.Length > 0 && args[0] == "oci") return Oci.Cli.OciMain.Run(args[1..]);
        return Hull.Cli.CliApp.RunAsync(args).GetAwaiter().GetResult();
    }
}
