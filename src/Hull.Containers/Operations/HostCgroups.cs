using System.Runtime.InteropServices;
using System.Text.Json;
using Hull.Cgroups;
using Hull.Linux;

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

        /// <summary>Files of a delegated cgroup the delegatee owns (cgroup v2's list is the kernel's, in
        /// /sys/kernel/cgroup/delegate; v1's named hierarchy is the one systemd manages).</summary>
        static readonly string[] V1Delegated = ["cgroup.procs", "tasks", "cgroup.clone_children", "notify_on_release"];

        /// <summary>
        /// Hands the container's cgroup to its root, as the kernel documents delegation (cgroup-v2.rst): the
        /// directory and its delegatable files, in the cgroup2 hierarchy and the named v1 one (name=systemd).
        /// Controller limits stay the host's (root-owned files its user namespace cannot write); the v1 controller
        /// hierarchies are not delegated.
        /// </summary>
        public void Delegate(uint uid, uint gid)
        {
            string[]? v2Files = null;
            foreach (var (key, dir) in cg.Directories)
            {
                string[] files;
                if (key == "v2")
                    files = v2Files ??= File.Exists("/sys/kernel/cgroup/delegate")
                        ? File.ReadAllLines("/sys/kernel/cgroup/delegate").Where(l => l.Length > 0).ToArray()
                        : ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"];
                else if (key == "name=systemd") files = V1Delegated;
                else continue;
                Sys.Check(Libc.lchown(dir, uid, gid), $"delegating cgroup {dir}: chown");
                foreach (var f in files)
                {
                    var path = System.IO.Path.Combine(dir, f);
                    if (Libc.lchown(path, uid, gid) < 0 && Marshal.GetLastPInvokeError() != Errors.ENOENT)
                        throw LinuxException.FromLastError($"delegating cgroup {dir}: chown {f}");
                }
            }
        }

        public string StatsJson() => JsonSerializer.Serialize(cg.Stats(), CgroupJson.Default.CgroupStats);

        public CgroupJoinFds PrepareJoin()
        {
            var join = cg.PrepareJoin();
            return new CgroupJoinFds { Directory = join.CgroupDir, TaskFiles = [.. join.TaskFiles],
                Paths = [.. cg.Directories.Values] };
        }

        static void Wrap(Action a)
        {
            try { a(); }
            catch (CgroupException e) { throw new ContainerException(e.Message, e); }
        }
    }
}
