using Hull.Containers;

[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace Hull.Runtime;

/// <summary>
/// hull-oci: the runc-compatible OCI runtime, and (as "hull-oci init", started by the runtime itself in the new
/// namespaces) the container init. Kept apart from the hull CLI so that it stays small: it starts twice per container.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args is ["init"] && Environment.GetEnvironmentVariable(
            ContainerInit.SyncFdVariable) is not null) return ContainerInit.Main();
        return Oci.Cli.OciMain.Run(args);
    }
}
