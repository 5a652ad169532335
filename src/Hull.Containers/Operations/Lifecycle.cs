using Hull.Linux;
using Hull.Oci;

namespace Hull.Containers;

public sealed unsafe partial class ContainerEngine
{
    /// <summary>The OCI status: creating, created, running, paused or stopped.</summary>
    public ContainerStatus Status(ContainerRecord r)
    {
        if (r.Pid == 0) return ContainerStatus.Creating;
        if (!ProcFs.IsAlive(r.Pid, r.PidStartTime)) return ContainerStatus.Stopped;
        if (!r.Started && File.Exists(Store.FifoPath(r.Id))) return ContainerStatus.Created;
        try { if (Cgroups.Open(r.CgroupPath, r.Id).IsFrozen) return ContainerStatus.Paused; }
        catch (Exception) { /* the cgroup is gone: the status is what the process says */ }
        return ContainerStatus.Running;
    }

    public State StateOf(string id)
    {
        var r = Store.Load(id);
        var status = Status(r);
        return new State
        {
            Id = r.Id, Status = status.Oci(), Pid = status == ContainerStatus.Stopped ? 0 : r.Pid, Bundle = r.Bundle,
            Annotations = r.Annotations,
        };
    }

    /// <summary>start: lets a created container's init exec the process.</summary>
    public void Start(string id)
    {
        var r = Store.Load(id);
        var status = Status(r);
        if (status != ContainerStatus.Created)
            throw new ContainerException($"cannot start container \"{id}\": it is {status.Oci()}, not created" +
                (status == ContainerStatus.Stopped ? " (delete it and create it again)" : ""));
        var fifo = Store.FifoPath(id);
        // Opening for read blocks until the init opens for write; it is already waiting there.
        var fd = Libc.open(fifo, O.RDONLY | O.CLOEXEC, 0);
        if (fd < 0) throw LinuxException.FromLastError($"open {fifo}");
        using (var f = new SafeFd(fd))
        {
            Span<byte> b = stackalloc byte[1];
            if (Sys.Read(f, b) != 1)
                throw new ContainerException($"cannot start container \"{id}\": its init exited before starting the " +
                    "process");
        }
        File.Delete(fifo);
        r.Started = true;
        Store.Save(r);
        RunPoststart(id, r);
    }

    /// <summary>kill: a signal to the container's process, or with <paramref name="all"/> to every process in its
    /// cgroup.</summary>
    public void Kill(string id, int signal, bool all)
    {
        var r = Store.Load(id);
        var status = Status(r);
        if (all)
        {
            var cg = Cgroups.Open(r.CgroupPath, id);
            cg.Kill(signal);
            return;
        }
        // "container not running" is runc's wording: containerd and Podman match it to treat the kill of a container
        // that has just exited as done (containerd's StopPodSandbox fails otherwise).
        if (status is ContainerStatus.Stopped or ContainerStatus.Creating)
            throw new ContainerException(
                $"cannot kill container \"{id}\": container not running (it is {status.Oci()})");
        var exited = $"cannot kill container \"{id}\": container not running (its process has exited)";
        using var pidfd = OpenProcess(r) ?? throw new ContainerException(exited);
        try { Sys.PidfdSendSignal(pidfd, signal); }
        catch (LinuxException e) when (e.Errno == Errors.ESRCH) { throw new ContainerException(exited); }
        if (status == ContainerStatus.Paused && signal == Signals.SIGKILL)
            Cgroups.Open(r.CgroupPath, id).Thaw();
    }

    /// <summary>A pidfd for the container's process, or null if it is gone (checked against its start time).</summary>
    static SafeFd? OpenProcess(ContainerRecord r)
    {
        if (r.Pid <= 0) return null;
        SafeFd fd;
        try { fd = Sys.PidfdOpen(r.Pid); }
        catch (LinuxException e) when (e.Errno == Errors.ESRCH) { return null; }
        // The pidfd now pins the process: if the start time still matches, it is ours.
        if (!ProcFs.IsAlive(r.Pid, r.PidStartTime)) { fd.Dispose(); return null; }
        return fd;
    }

    /// <summary>delete: removes a stopped container (or, with force, kills it first), then runs poststop
    /// hooks.</summary>
    public void Delete(string id, bool force)
    {
        StateStore.ValidateId(id);
        if (!Store.Exists(id))
        {
            if (Directory.Exists(Store.Dir(id)) && force) { Store.Remove(id); return; }
            throw new ContainerNotFoundException(id);
        }
        var r = Store.Load(id);
        var status = Status(r);
        if (status is not (ContainerStatus.Stopped or ContainerStatus.Creating or ContainerStatus.Created) && !force)
            throw new ContainerException(
                $"cannot delete container \"{id}\": it is {status.Oci()}; stop it first or use --force");
        var cg = Cgroups.Open(r.CgroupPath, id);
        if (status != ContainerStatus.Stopped)
        {
            using var pidfd = OpenProcess(r);
            if (pidfd is not null)
            {
                if (status == ContainerStatus.Paused) { try { cg.Thaw(); } catch (Exception) { } }
                Sys.PidfdSendSignal(pidfd, Signals.SIGKILL);
                if (!Sys.WaitPidfd(pidfd, 10_000))
                    throw new ContainerException($"container \"{id}\" (pid {r.Pid}) did not die within 10 s of " +
                        "SIGKILL; try again");
                // If it is our child (run), reap it.
                Libc.waitpid(r.Pid, null, 1 /* WNOHANG */);
            }
        }
        // Whatever is left in the cgroup (no pid namespace, or processes that escaped the init) goes too.
        try { if (cg.Pids().Count > 0) cg.Kill(Signals.SIGKILL); } catch (Exception) { }
        cg.Destroy();
        Spec? spec = null;
        if (r.HasPoststop) { try { spec = Store.LoadSpec(id); } catch (Exception) { } }
        var state = new State { Id = id, Status = ContainerStatus.Stopped.Oci(), Bundle = r.Bundle,
            Annotations = r.Annotations };
        Store.Remove(id);
        if (spec?.Hooks?.Poststop is { Count: > 0 } post)
        {
            try { HookRunner.Run("poststop", post, state); }
            catch (ContainerException e) { Console.Error.WriteLine($"hull: warning: {e.Message}"); }
        }
    }

    /// <summary>For run in the foreground: waits for the container's process and deletes the container. Returns the
    /// exit code.</summary>
    public int WaitAndDelete(string id, int pid)
    {
        var status = Sys.WaitPid(pid);
        Delete(id, force: true);
        return Sys.ExitCode(status);
    }

    public IEnumerable<(ContainerRecord Record, ContainerStatus Status)> List()
    {
        foreach (var id in Store.Ids())
        {
            ContainerRecord r;
            try { r = Store.Load(id); } catch (Exception) { continue; }
            yield return (r, Status(r));
        }
    }

    public IReadOnlyList<int> Pids(string id)
    {
        var r = Store.Load(id);
        return Cgroups.Open(r.CgroupPath, id).Pids();
    }

    public void Pause(string id)
    {
        var r = Store.Load(id);
        var status = Status(r);
        if (status != ContainerStatus.Running)
            throw new ContainerException(
                $"cannot pause container \"{id}\": container not running (it is {status.Oci()})");
        Cgroups.Open(r.CgroupPath, id).Freeze();
    }

    public void Resume(string id)
    {
        var r = Store.Load(id);
        var status = Status(r);
        if (status != ContainerStatus.Paused)
            throw new ContainerException($"cannot resume container \"{id}\": it is {status.Oci()}, not paused");
        Cgroups.Open(r.CgroupPath, id).Thaw();
    }

    public void Update(string id, Resources resources)
    {
        var r = Store.Load(id);
        if (Status(r) == ContainerStatus.Stopped)
            throw new ContainerException($"cannot update container \"{id}\": container not running (it is stopped)");
        Cgroups.Open(r.CgroupPath, id).Apply(resources);
        var spec = Store.LoadSpec(id);
        spec.Linux ??= new Hull.Oci.Linux();
        spec.Linux.Resources = Merge(spec.Linux.Resources, resources);
        Store.SaveSpec(id, spec);
    }

    static Resources Merge(Resources? old, Resources n)
    {
        if (old is null) return n;
        old.Memory = n.Memory ?? old.Memory;
        old.Cpu = n.Cpu ?? old.Cpu;
        old.Pids = n.Pids ?? old.Pids;
        old.BlockIo = n.BlockIo ?? old.BlockIo;
        old.HugepageLimits = n.HugepageLimits ?? old.HugepageLimits;
        old.Network = n.Network ?? old.Network;
        old.Unified = n.Unified ?? old.Unified;
        return old;
    }

    public string StatsJson(string id)
    {
        var r = Store.Load(id);
        return Cgroups.Open(r.CgroupPath, id).StatsJson();
    }
}
