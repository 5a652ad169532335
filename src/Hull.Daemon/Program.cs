using Hull.Instances;
using Hull.Instances.Containers;

namespace Hull.Daemon;

public static class Program
{
    /// <summary>hulld. The engines (containers, VMs) are registered here as they land.</summary>
    public static Task<int> Main(string[] args)
    {
        // The container init is the hull binary installed next to hulld (not hulld itself), unless HULL_INIT_BINARY says otherwise.
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable("HULL_INIT_BINARY")))
            Environment.SetEnvironmentVariable("HULL_INIT_BINARY", Path.Combine(AppContext.BaseDirectory, "hull"));
        return Daemon.RunAsync(args, o => [new ContainerDriver(o.StateDir)]);
    }
}
