using Hull.Api;
using Hull.Daemon;
using Hull.Instances;

namespace Hull.TestHost;

public static class Program
{
    public static Task<int> Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "cli") return Hull.Cli.CliApp.RunAsync(args[1..]);
        return Daemon.Daemon.RunAsync(args,
            _ => [new ProcessDriver(InstanceTypes.Container), new ProcessDriver(InstanceTypes.Vm)],
            (_, images) => images.RegisterBuiltin("busybox", InstanceTypes.Vm, ImageStore.BuildBusyboxRootfsAsync));
    }
}
