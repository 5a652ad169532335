using Hull.Containers;

namespace Hull.Oci.Cli;

/// <summary>Chooses the cgroup driver for the engine. (TEMPORARY: no cgroup management until Hull.Cgroups lands.)</summary>
static class CgroupFactory
{
    public static ICgroupFactory Create(bool systemd) => new NoCgroups();

    public static string Mode() => File.Exists("/sys/fs/cgroup/cgroup.controllers") ? "v2" : Directory.Exists("/sys/fs/cgroup/unified") ? "hybrid" : "v1";

    sealed class NoCgroups : ICgroupFactory
    {
        public IContainerCgroup Open(string cgroupsPath, string containerId) => new Cg(cgroupsPath.Length > 0 ? cgroupsPath : "/hull/" + containerId);
    }

    sealed class Cg(string path) : IContainerCgroup
    {
        public string Path => path;
        public void Create() { }
        public void Apply(Resources resources) { }
        public CgroupJoinFds PrepareJoin() => new();
        public void AddProcess(int pid) { }
        public IReadOnlyList<int> Pids() => [];
        public void Freeze() => throw new ContainerException("pause is not available yet");
        public void Thaw() { }
        public bool IsFrozen => false;
        public void Kill(int signal) { }
        public void Destroy() { }
        public string StatsJson() => "{}";
    }
}
