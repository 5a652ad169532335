using Hull.Api;
using Hull.Instances;
using Hull.Instances.Containers;

namespace Hull.Daemon;

public static class Program
{
    /// <summary>hulld. The engines (containers, VMs) are registered here as they land.</summary>
    public static Task<int> Main(string[] args)
    {
        // The container init is hull-oci installed next to hulld (make install links it there), unless HULL_INIT_BINARY says otherwise.
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable("HULL_INIT_BINARY")))
            Environment.SetEnvironmentVariable("HULL_INIT_BINARY", Path.Combine(AppContext.BaseDirectory, "hull-oci"));
        if (args is ["monitor", ..]) return Task.FromResult(ContainerMonitor.Run(args[1..]));
        return Daemon.RunAsync(args, o => [new ContainerDriver(o.StateDir)],
            (_, images) => images.RegisterBuiltin("host", InstanceTypes.Container, (work, _, ct) => AppContainers.BuildHostImageAsync(work, ct)));
    }
}
