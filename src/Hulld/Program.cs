using Hull.Api;
using Hull.Instances;
using Hull.Instances.Containers;
using Hull.Instances.Vms;

namespace Hull.Daemon;

public static class Program
{
    /// <summary>hulld: the daemon library (src/Hull.Daemon) with its two drivers (containers, VMs) and built-in
    /// images; "hulld monitor" runs one container's monitor.</summary>
    public static Task<int> Main(string[] args)
    {
        // The container init is hull-oci installed next to hulld (make install links it there), unless HULL_INIT_BINARY
        // says otherwise.
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable("HULL_INIT_BINARY")))
            Environment.SetEnvironmentVariable("HULL_INIT_BINARY", Path.Combine(AppContext.BaseDirectory, "hull-oci"));
        if (args is ["monitor", ..]) return Task.FromResult(ContainerMonitor.Run(args[1..]));
        VmDriverOptions? vmOptions = null;
        VmDriverOptions Vm(DaemonOptions o) => vmOptions ??= VmDriverOptions.FromEnvironment(o.StateDir);
        return Daemon.RunAsync(args, o => [new ContainerDriver(o.StateDir), new VmDriver(Vm(o))],
            (o, images) =>
            {
                images.RegisterBuiltin("host", InstanceTypes.Container,
                    (work, _, ct) => AppContainers.BuildHostImageAsync(work, ct));
                // The built-in VM image: the default image (host kernel, busybox, virtio modules, hull-agent), built on
                // first use.
                images.RegisterCheck(InstanceTypes.Vm, VmImages.CheckAsync);
                images.RegisterBuiltin("busybox", InstanceTypes.Vm,
                    (work, op, ct) => VmImages.BuildDefaultBundleAsync(work, Vm(o).CacheDir, Vm(o).AgentBinary,
                        m => op?.Progress(m), ct));
            });
    }
}
