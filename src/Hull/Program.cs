using Hull.Containers;

namespace Hull;

/// <summary>
/// One NativeAOT binary, several roles chosen by name: "hull-oci" (or "hull oci ...") is the runc-compatible
/// OCI runtime; "hull init" is the container init the runtime re-executes in new namespaces.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        var name = Path.GetFileName(Environment.GetCommandLineArgs()[0]);
        if (name == "hull-oci") return Oci.Cli.OciMain.Run(args);
        if (args.Length > 0 && args[0] == "init") return ContainerInit.Main();
        if (args.Length > 0 && args[0] == "oci") return Oci.Cli.OciMain.Run(args[1..]);
        Console.Error.WriteLine("usage: hull oci COMMAND ... (or run it as hull-oci)");
        return 2;
    }
}
