using Hull.Instances;

namespace Hull.Daemon;

public static class Program
{
    /// <summary>hulld. The engines (containers, VMs) are registered here as they land.</summary>
    public static Task<int> Main(string[] args) => Daemon.RunAsync(args, _ => Array.Empty<IInstanceDriver>());
}
