using System.Text.Json;
using Hull.Cgroups;

namespace Hull.Containers;

/// <summary>The engine's cgroups on this host: Hull.Cgroups' cgroupfs driver (v1, v2 and hybrid).</summary>
public sealed class HostCgroups : ICgroupFactory
{
    public static readonly HostCgroups Instance = new();

    public IContainerCgroup Open(string cgroupsPath, string containerId)
    {
        try { return new Adapter(Cgroup.Open(cgroupsPath, containerId)); }
        catch (CgroupException e) { throw new ContainerException(e.Message, e); }
    }

    sealed class Adapter(ICgroup cg) : IContainerCgroup
    {
        public string Path => cg.Path;
        public void Create() => Wrap(cg.Create);
        public void Apply(Hull.Oci.Resources resources) => Wrap(() => cg.Apply(resources));
        public void AddProcess(int pid) => Wrap(() => cg.AddProcess(pid));
        public IReadOnlyList<int> Pids() => cg.Pids();
        public void Freeze() => Wrap(cg.Freeze);
        public void Thaw() => Wrap(cg.Thaw);
        public bool IsFrozen => cg.IsFrozen;
        public void Kill(int signal) => Wrap(() => cg.Kill(signal));
        public void Destroy() => Wrap(cg.Destroy);
        public string StatsJson() => JsonSerializer.Serialize(cg.Stats(), CgroupJson.Default.CgroupStats);

        public CgroupJoinFds PrepareJoin()
        {
            var join = cg.PrepareJoin();
            return new CgroupJoinFds { Directory = join.CgroupDir, TaskFiles = [.. join.TaskFiles], Paths = [.. cg.Directories.Values] };
        }

        static void Wrap(Action a)
        {
            try { a(); }
            catch (CgroupException e) { throw new ContainerException(e.Message, e); }
        }
    }
}
