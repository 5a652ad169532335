using Hull.Linux;

namespace Hull.Containers;

/// <summary>What the engine needs from a container's cgroup (implemented over Hull.Cgroups).</summary>
public interface IContainerCgroup
{
    string Path { get; }
    void Create();
    void Apply(Hull.Oci.Resources resources);
    CgroupJoinFds PrepareJoin();
    void AddProcess(int pid);
    IReadOnlyList<int> Pids();
    void Freeze();
    void Thaw();
    bool IsFrozen { get; }
    void Kill(int signal);
    void Destroy();
    /// <summary>Hands the cgroup to a container's root (a user namespace's host ids): see HostCgroups.</summary>
    void Delegate(uint uid, uint gid);
    /// <summary>runc-style stats as a JSON object.</summary>
    string StatsJson();
}

/// <summary>The fds a spawned child uses to start inside the cgroup.</summary>
public sealed class CgroupJoinFds : IDisposable
{
    public SafeFd? Directory { get; init; }
    public List<SafeFd> TaskFiles { get; init; } = [];
    /// <summary>The cgroup's directory in every hierarchy, as the host sees it (for the container's /sys/fs/cgroup).
    /// </summary>
    public List<string> Paths { get; init; } = [];

    public void Dispose()
    {
        Directory?.Dispose();
        foreach (var f in TaskFiles) f.Dispose();
    }
}

public interface ICgroupFactory
{
    IContainerCgroup Open(string cgroupsPath, string containerId);
}
