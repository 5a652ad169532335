using System.Runtime.InteropServices;
using Hull.Linux;
using Hull.Oci;

namespace Hull.Containers;

/// <summary>Options of create/run (the runc flags).</summary>
public sealed class CreateOptions
{
    public required string Id { get; init; }
    public required string Bundle { get; init; }
    public string? PidFile { get; init; }
    public string? ConsoleSocket { get; init; }
    /// <summary>An already connected console socket, instead of <see cref="ConsoleSocket"/>'s path: the init sends the
    /// pty master on it (the caller reads it from the other end). The caller keeps and closes it.</summary>
    public SafeFd? ConsoleConnection { get; init; }
    public bool NoPivot { get; init; }
    public int PreserveFds { get; init; }
    /// <summary>Use this spec instead of reading bundle/config.json (the instance layer builds specs in
    /// memory).</summary>
    public Spec? Spec { get; init; }
    /// <summary>Optional stdin, stdout, stderr for the container's init and process (instead of the caller's own fds
    /// 0-2),
    /// e.g. /dev/null and a console log file. Must hold exactly three fds.</summary>
    public IReadOnlyList<SafeFd>? Stdio { get; init; }
}

/// <summary>
/// The OCI lifecycle on one state directory (--root). Each public method is one runtime operation.
/// Invariant: every operation that fails leaves no process, cgroup, mount or state directory of its own behind.
/// </summary>
public sealed unsafe partial class ContainerEngine(StateStore store, ICgroupFactory cgroups)
{
    public StateStore Store { get; } = store;
    public ICgroupFactory Cgroups { get; } = cgroups;

    /// <summary>Compiled seccomp programs, in the state directory (its name is not a valid container id).</summary>
    public SeccompCache SeccompCache { get; } = new(Path.Combine(store.Root, "@cache"));

    /// <summary>The hull binary to run as the container init (this executable, or HULL_INIT_BINARY).</summary>
    public static string InitBinary =>
        Environment.GetEnvironmentVariable("HULL_INIT_BINARY")
        ?? (Environment.ProcessPath is { Length: > 0 } self ? self : "/proc/self/exe");

    /// <summary>Set by hull-oci (a short-lived process): create re-executes it from its sealed view when the container
    /// joins an existing pid namespace, where the init's spawn child (which maps this binary until it execs the init)
    /// is visible to that namespace's processes. A daemon that hosts the engine leaves it off.</summary>
    public bool ReExecSealedToJoinPidNamespace { get; init; }

    /// <summary>Set when hull-oci re-executes itself from its sealed view (<see cref="EnsureRunningSealed"/>): a
    /// second attempt that still does not run sealed fails instead of looping.</summary>
    public const string SealedVariable = "_HULL_OCI_SEALED";

    /// <summary>
    /// The runtime binary (<see cref="InitBinary"/>) through a sealed, read-only view (<see cref="SealedExe"/>): what
    /// a process that enters a container executes or maps, so /proc/PID/exe gives nothing writable (CVE-2019-5736).
    /// A process already running sealed opens its own image.
    /// </summary>
    public SafeFd OpenSealedRuntime()
    {
        if (Environment.GetEnvironmentVariable("HULL_INIT_BINARY") is null && SealedExe.RunningSealed())
            return Sys.Open("/proc/self/exe", O.RDONLY);
        Directory.CreateDirectory(Store.Root);
        return SealedExe.Open(InitBinary, SealedExe.EnsureEmptyDir(Path.Combine(Store.Root, "@empty")));
    }

    /// <summary>
    /// For a process about to enter a container through the spawn shim (a CLONE_VM child, whose exe is this
    /// process's): re-executes this process once from the sealed view of itself unless it already runs from one.
    /// Call it first thing, before any state is made: the process starts over with the same arguments.
    /// </summary>
    public void EnsureRunningSealed()
    {
        if (SealedExe.RunningSealed()) return;
        if (Environment.GetEnvironmentVariable(SealedVariable) is not null)
            throw new ContainerException($"{Environment.ProcessPath} re-executed itself from a sealed view but does "
                + "not run from one: is overlayfs (or memfd_create) available?");
        Directory.CreateDirectory(Store.Root);
        var self = Environment.ProcessPath ?? throw new ContainerException("cannot tell this process's executable");
        using var exe = SealedExe.Open(self, SealedExe.EnsureEmptyDir(Path.Combine(Store.Root, "@empty")));
        SealedExe.ReExec(exe, SealedVariable + "=1");
    }

    static readonly Dictionary<string, ulong> NsFlags = new()
    {
        ["pid"] = CLONE.NEWPID, ["network"] = CLONE.NEWNET, ["mount"] = CLONE.NEWNS, ["ipc"] = CLONE.NEWIPC,
        ["uts"] = CLONE.NEWUTS, ["user"] = CLONE.NEWUSER, ["cgroup"] = CLONE.NEWCGROUP, ["time"] = CLONE.NEWTIME,
    };
    /// <summary>
    /// A namespace path must name a namespace of its type: setns(2) would only say EINVAL. ioctl(NS_GET_NSTYPE)
    /// answers for any nsfs file, a bind-mounted one (as runtimes pin namespaces) included, and fails with ENOTTY
    /// on anything else.
    /// </summary>
    static void CheckNamespaceFile(SafeFd fd, string type, string path)
    {
        var want = NsProcName[type];
        var got = Libc.ioctl(fd.Fd, NS_GET_NSTYPE, 0);
        if (got >= 0 && (ulong)got == NsFlags[type]) return;
        var kind = NsFlags.FirstOrDefault(kv => got >= 0 && kv.Value == (ulong)got).Key;
        var what = kind is null ? "not a namespace file" : $"it is a {NsProcName[kind]} namespace";
        throw new ContainerException($"linux.namespaces: the {type} namespace path {path} is not a {type} namespace " +
            $"({what}): give a {type} namespace file such as /proc/PID/ns/{want}");
    }

    /// <summary>ioctl_ns(2): _IO(0xb7, 0x3), the CLONE_NEW* flag of a namespace file.</summary>
    const ulong NS_GET_NSTYPE = 0xb703;

    static bool IsIdmapped(Mount m) => m.UidMappings is { Count: > 0 } || m.GidMappings is { Count: > 0 };

    /// <summary>
    /// Detached copies (open_tree) of the bind mount sources (of all, or of the idmapped ones only), idmapped where
    /// the mount has uidMappings (files owned by containerID on disk show as hostID, as runc), passed to the init from
    /// fd <paramref name="next"/> on; per mount its fd number in the init, or -1. <paramref name="keep"/> holds them
    /// until the init has exec'd.
    /// </summary>
    static List<int> CloneBindSources(IList<Mount> mounts, string bundle, bool all, SpawnRequest req, List<SafeFd> keep,
        ref int next)
    {
        var fds = new List<int>(mounts.Count);
        foreach (var m in mounts)
        {
            var p = MountOptions.Parse(m);
            if (!p.Bind || m.Type == "cgroup" || string.IsNullOrEmpty(m.Source) || !(all || IsIdmapped(m)))
            {
                fds.Add(-1);
                continue;
            }
            var source = Path.IsPathRooted(m.Source) ? m.Source : Path.Combine(bundle, m.Source);
            SafeFd tree;
            try
            {
                if (IsIdmapped(m))
                {
                    using var userns = IdmappedMounts.UserNamespace(MapLines(m.UidMappings!), MapLines(m.GidMappings!));
                    tree = IdmappedMounts.Clone(source, userns, recursive: p.Recursive);
                }
                else tree = IdmappedMounts.CloneBind(source, p.Recursive);
            }
            catch (LinuxException e) when (e.Errno == Errors.ENOENT)
            {
                throw new ContainerException($"bind mount source {m.Source} (for {m.Destination}) does not exist: " +
                    "create it or fix mounts[].source");
            }
            catch (LinuxException e)
            {
                throw new ContainerException($"bind mount source {m.Source} (for {m.Destination}): {e.Message}", e);
            }
            keep.Add(tree);
            req.Fds.Add((tree, next));
            fds.Add(next++);
        }
        return fds;
    }

    static string MapLines(List<IdMapping> maps) =>
        string.Concat(maps.Select(x => $"{x.ContainerId} {x.HostId} {x.Size}\n"));

    internal static readonly Dictionary<string, string> NsProcName = new()
    {
        ["pid"] = "pid", ["network"] = "net", ["mount"] = "mnt", ["ipc"] = "ipc", ["uts"] = "uts", ["user"] = "user",
        ["cgroup"] = "cgroup", ["time"] = "time",
    };

    /// <summary>
    /// create: sets up the container and leaves its init waiting on the exec fifo. Returns the pid.
    /// </summary>
    public int Create(CreateOptions o) => CreateContainer(o, InitMode.Create, out _, out _);

    /// <summary>
    /// run: create + start in one, the caller waiting for the process (it is our child).
    /// Returns the pid; the caller waits with <see cref="WaitAndDelete"/>.
    /// </summary>
    public int RunDetachedOrAttached(CreateOptions o, out SafeFd pidfd)
    {
        // The record is saved with Started already set: a run container has no exec fifo, so its status is the same.
        var pid = CreateContainer(o, InitMode.Run, out var ch, out var pfd);
        pidfd = pfd!;
        using (ch) ch!.Send(SyncType.Start);
        RunPoststart(o.Id);
        return pid;
    }

    int CreateContainer(CreateOptions o, InitMode mode, out SyncChannel? runChannel, out SafeFd? runPidfd)
    {
        runChannel = null;
        runPidfd = null;
        StateStore.ValidateId(o.Id);
        var bundle = Path.GetFullPath(o.Bundle);
        Spec spec;
        byte[]? rawConfig = null;
        if (o.Spec is null) spec = SpecLoader.LoadBundle(bundle, out rawConfig);
        else { spec = o.Spec; SpecValidator.Validate(spec, bundle); }
        SpecValidator.ValidateProcess(spec.Process, "process");
        // Compiled once, here: a profile the compiler rejects fails create before anything is made, and the init
        // gets the program instead of the profile (unless it must hand a notify fd to a listener itself).
        var seccomp = SeccompSupport.Compile(spec.Linux?.Seccomp, SeccompCache);
        var namespaces = spec.Linux?.Namespaces ?? [];
        if (ReExecSealedToJoinPidNamespace && namespaces.Any(n => n.Type == "pid" && !string.IsNullOrEmpty(n.Path)))
            EnsureRunningSealed();
        var ownsUserNamespace = namespaces.Any(n => n.Type == "user" && string.IsNullOrEmpty(n.Path));
        var bounding = Capabilities.OwnBounding();
        foreach (var w in Capabilities.Check(spec.Process!.Capabilities, "process", ownsUserNamespace, bounding))
            Console.Error.WriteLine($"hull: warning: {w}");
        var mountNamespace = namespaces.Any(n => n.Type == "mount");
        if (!mountNamespace) WarnNoMountNamespace(spec);
        if (spec.Process!.Terminal && o.ConsoleSocket is null && o.ConsoleConnection is null
            && mode == InitMode.Create)
            throw new ContainerException("process.terminal is true: pass --console-socket so the pty master can be " +
                "handed to the caller");
        SafeFd? consoleSocket = spec.Process.Terminal ? o.ConsoleConnection : null;
        if (spec.Process.Terminal && consoleSocket is null && o.ConsoleSocket is not null)
        {
            try { consoleSocket = UnixSockets.Connect(o.ConsoleSocket); }
            catch (LinuxException e) { throw new ContainerException(
                $"--console-socket {o.ConsoleSocket}: {e.Message}"); }
        }

        var dir = Store.Claim(o.Id);
        var cleanup = new Rollback();
        cleanup.Add(() => Store.Remove(o.Id));
        var rootfs = SpecValidator.RootfsPath(spec, bundle);
        var record = new ContainerRecord
        {
            Id = o.Id, Bundle = bundle, Rootfs = rootfs, Created = DateTime.UtcNow, Annotations = spec.Annotations,
            Namespaces = namespaces.Select(n => n.Type).ToList(),
            HasPoststart = spec.Hooks?.Poststart is { Count: > 0 },
            HasPoststop = spec.Hooks?.Poststop is { Count: > 0 },
        };
        SpawnedChild? child = null;
        var nsFds = new List<SafeFd>(); // namespaces joined by path: needed only until the child has exec'd
        try
        {
            // The cgroup's path is known before it is made: the first record names it, so that a create that dies
            // half-way leaves a "creating" container whose delete finds the cgroup.
            var cg = Cgroups.Open(spec.Linux?.CgroupsPath ?? "", o.Id);
            record.CgroupPath = cg.Path;
            Store.Save(record);
            if (rawConfig is not null) Store.SaveSpec(o.Id, rawConfig);
            else Store.SaveSpec(o.Id, spec);

            cg.Create();
            cleanup.Add(() => cg.Destroy());
            if (ownsUserNamespace && DelegatesCgroup(spec) && HostIdOfRoot(spec.Linux!.UidMappings) is { } cu
                && HostIdOfRoot(spec.Linux.GidMappings) is { } cgid)
                cg.Delegate(cu, cgid);
            if (spec.Linux?.Resources is { } res) cg.Apply(WithDefaultDevices(res, spec));

            // exec fifo (create only)
            SafeFd? fifo = null;
            if (mode == InitMode.Create)
            {
                var fifoPath = Store.FifoPath(o.Id);
                Sys.Check(Libc.mkfifo(fifoPath, 0b110_000_000), $"mkfifo {fifoPath}");
                fifo = Sys.Open(fifoPath, O.PATH);
                // The init opens it for writing as the container's root: in a new user namespace that is a host
                // uid of the mapping, which must own it (as runc's fifo). It reaches it through the fd, not the path.
                if (ownsUserNamespace && HostIdOfRoot(spec.Linux!.UidMappings) is { } ru
                    && HostIdOfRoot(spec.Linux.GidMappings) is { } rg)
                    Sys.Check(Libc.lchown(fifoPath, ru, rg), $"chown {fifoPath}");
            }

            var (parentEnd, childEnd) = Sys.SocketPair();
            var channel = new SyncChannel(parentEnd);
            cleanup.Add(channel.Dispose);
            // The init runs the runtime in the container's namespaces until it execs the container's process: it
            // runs from the sealed view (its /proc/PID/exe is read-only) and turns non-dumpable first thing.
            using var exe = OpenSealedRuntime();
            var firstPrivate = 3 + o.PreserveFds;
            var req = new SpawnRequest
            {
                ExecFd = exe,
                Argv = ["hull-oci", "init"],
                Env = [$"{ContainerInit.SyncFdVariable}={firstPrivate}"],
                Setsid = true,
            };
            req.Fds.Add((childEnd, firstPrivate));
            if (o.Stdio is { } stdio)
            {
                if (stdio.Count != 3) throw new ContainerException(
                    "CreateOptions.Stdio must hold exactly three fds (stdin, stdout, stderr)");
                for (var i = 0; i < 3; i++) req.Fds.Add((stdio[i], i));
            }
            var consoleFd = -1;
            var fifoFd = -1;
            var next = firstPrivate + 1;
            SafeFd? devNull = null;
            if (consoleSocket is not null)
            {
                consoleFd = next++;
                req.Fds.Add((consoleSocket, consoleFd));
                // The process will talk to the pty; like runc, the init must not hold the caller's stdio open, or a
                // caller that reads our output to EOF (containerd's shim) waits forever for "create" to finish.
                devNull = Sys.Open("/dev/null", O.RDWR);
                req.Fds.Add((devNull, 0)); req.Fds.Add((devNull, 1)); req.Fds.Add((devNull, 2));
            }
            if (fifo is not null) { fifoFd = next++; req.Fds.Add((fifo, fifoFd)); }

            bool newUser = false, inUser = false, newCgroup = false;
            var mountNsFd = -1;
            foreach (var ns in namespaces.OrderBy(n => n.Type == "user" ? 0 : 1))
            {
                var flag = NsFlags[ns.Type];
                if (string.IsNullOrEmpty(ns.Path))
                {
                    if (ns.Type == "time" && spec.Linux?.TimeOffsets is { Count: > 0 } offs)
                        req.TimeOffsets = string.Join("\n",
                            offs.Select(kv => $"{kv.Key} {kv.Value.Secs} {kv.Value.Nanosecs}")) + "\n";
                    // The cgroup namespace is unshared by the init, once it is in its cgroup in every hierarchy (as
                    // runc does): clone3 would root it at the caller's v1 cgroups, before the child joins its own.
                    else if (ns.Type == "cgroup") newCgroup = true;
                    else req.CloneFlags |= flag;
                    if (ns.Type == "user") { newUser = true; inUser = true; }
                }
                else
                {
                    var nsFd = Sys.Open(ns.Path, O.RDONLY);
                    nsFds.Add(nsFd);
                    CheckNamespaceFile(nsFd, ns.Type, ns.Path);
                    // The init enters a mount namespace itself, once exec'd: the namespace's own root may not
                    // hold this binary or the libraries it loads (another container's, say).
                    if (ns.Type == "mount") { mountNsFd = next++; req.Fds.Add((nsFd, mountNsFd)); }
                    else if (ns.Type == "pid") req.PidNamespace = nsFd;
                    else req.JoinNamespaces.Add((nsFd, flag));
                    if (ns.Type == "user") inUser = true;
                }
            }
            // The init mounts as the root of a new user namespace, which may not reach a bind source in a 0700 dir
            // of the caller's (Podman's userdata): clone each source here, where host root resolves it (as runc).
            // Idmapped mounts (mounts[].uidMappings) are made here too, with a user namespace of their mappings.
            var cloneAll = newUser && mountNamespace && mountNsFd < 0;
            var bindFds = cloneAll || (spec.Mounts?.Any(IsIdmapped) ?? false)
                ? CloneBindSources(spec.Mounts ?? [], bundle, cloneAll, req, nsFds, ref next) : [];
            using var join = cg.PrepareJoin();
            req.CgroupDir = join.Directory;
            req.CgroupTaskFiles.AddRange(join.TaskFiles);
            req.WaitForRelease = newUser;
            req.BecomeNamespaceRoot = newUser;

            // The spawn child shares this process's memory until it execs and may join a pid namespace that other
            // containers' processes see: non-dumpable, so none of them can open its /proc/PID/mem or exe.
            Sys.Prctl(PR.SET_DUMPABLE, 0);
            try { child = Spawner.Start(req); }
            catch (SpawnException e) { throw new ContainerException($"starting the container init: {e.Message}", e); }
            finally
            {
                childEnd.Dispose(); fifo?.Dispose(); devNull?.Dispose();
                if (o.ConsoleConnection is null) consoleSocket?.Dispose();
            }
            var pid = child.Pid;
            cleanup.Add(() => { Libc.kill(pid, Signals.SIGKILL); Sys.WaitPid(pid); });
            if (newUser)
            {
                WriteIdMap(pid, "uid_map", spec.Linux!.UidMappings!);
                WriteIdMap(pid, "gid_map", spec.Linux!.GidMappings!);
            }
            try { child.Finish(); }
            catch (SpawnException e)
            {
                cleanup.RemoveLast(); // a child that failed before its exec is reaped by Finish
                throw new ContainerException($"starting the container init: {e.Message}", e);
            }

            var hookState = new State { Id = o.Id, Status = ContainerStatus.Creating.Oci(), Pid = pid, Bundle = bundle,
                Annotations = spec.Annotations };
            var parentHooks = (spec.Hooks?.Prestart?.Count ?? 0) + (spec.Hooks?.CreateRuntime?.Count ?? 0) > 0;
            var shipProgram = seccomp is { NeedsListener: false };
            var profile = spec.Linux?.Seccomp;
            if (shipProgram) spec.Linux!.Seccomp = null; // only for the plan: it is serialized by Send below
            channel.Send(new InitPlan
            {
                Mode = mode, Id = o.Id, Bundle = bundle, Rootfs = rootfs, Spec = spec,
                SeccompProgram = shipProgram ? seccomp!.Value.Program : null,
                SeccompFlags = shipProgram ? seccomp!.Value.Flags : 0,
                // A mount namespace joined by path is set up as a new one (as runc): the rootfs is made "/" there.
                NewMountNamespace = mountNamespace,
                NewUserNamespace = newUser, InUserNamespace = inUser,
                NewNetworkNamespace = (req.CloneFlags & CLONE.NEWNET) != 0,
                NewUtsNamespace = namespaces.Any(n => n.Type == "uts"),
                NewCgroupNamespace = newCgroup,
                NoPivot = o.NoPivot, ConsoleSocketFd = consoleFd, FifoFd = fifoFd, FirstPrivateFd = firstPrivate,
                MountNamespaceFd = mountNsFd, BindSourceFds = bindFds, CgroupPaths = join.Paths,
                ParentHooks = parentHooks, HookState = hookState,
            });
            if (spec.Linux is not null) spec.Linux.Seccomp = profile;
            while (true)
            {
                var m = channel.Receive();
                if (m is null)
                {
                    var status = Sys.WaitPid(pid);
                    cleanup.RemoveLast(); // reaped already
                    throw new ContainerException($"the container init exited during setup ({DescribeStatus(status)}) " +
                        "without saying why");
                }
                if (m.Type == SyncType.Error)
                    throw new ContainerException(m.Message ?? "container setup failed")
                    {
                        ExitCode = m.ExitCode > 0 ? m.ExitCode : 1,
                    };
                if (m.Type == SyncType.Hooks)
                {
                    try
                    {
                        HookRunner.Run("prestart", spec.Hooks?.Prestart, hookState);
                        HookRunner.Run("createRuntime", spec.Hooks?.CreateRuntime, hookState);
                        channel.Send(SyncType.HooksDone);
                    }
                    catch (ContainerException e)
                    {
                        channel.Send(SyncType.Error, e.Message);
                        throw;
                    }
                    continue;
                }
                if (m.Type == SyncType.Ready) break;
            }
            record.Pid = pid;
            record.PidStartTime = ProcFs.Stat(pid)?.StartTime ?? 0;
            record.Started = mode == InitMode.Run;
            Store.Save(record);
            if (o.PidFile is not null) WritePidFile(o.PidFile, pid);
            if (mode == InitMode.Run) { runChannel = channel; runPidfd = child.Pidfd; }
            else channel.Dispose();
            cleanup.Clear();
            return pid;
        }
        catch
        {
            child?.Dispose();
            cleanup.Run();
            throw;
        }
        finally
        {
            foreach (var f in nsFds) f.Dispose();
        }
    }

    /// <summary>
    /// The device rules a container always gets after its own (as runc): mknod of any node, the standard nodes
    /// (null, zero, full, random, urandom, tty, ptmx, pts), and every node in linux.devices.
    /// </summary>
    public static Resources WithDefaultDevices(Resources res, Spec spec)
    {
        if (res.Devices is null) return res;
        var rules = new List<DeviceCgroup>(res.Devices)
        {
            new() { Allow = true, Type = "c", Access = "m" }, new() { Allow = true, Type = "b", Access = "m" },
        };
        foreach (var (ma, mi) in new (long, long?)[] { (1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2),
            (136, null) })
            rules.Add(new DeviceCgroup { Allow = true, Type = "c", Major = ma, Minor = mi, Access = "rwm" });
        foreach (var d in spec.Linux?.Devices ?? [])
            if (d.Type is "c" or "b")
                rules.Add(new DeviceCgroup { Allow = true, Type = d.Type, Major = d.Major, Minor = d.Minor,
                    Access = "rwm" });
        return new Resources
        {
            Devices = rules, Memory = res.Memory, Cpu = res.Cpu, Pids = res.Pids, BlockIo = res.BlockIo,
            HugepageLimits = res.HugepageLimits, Network = res.Network, Rdma = res.Rdma, Unified = res.Unified,
        };
    }

    /// <summary>A new cgroup namespace and a read-write /sys/fs/cgroup: the container manages its own
    /// subtree.</summary>
    static bool DelegatesCgroup(Spec spec) =>
        spec.Linux?.Namespaces?.Any(n => n.Type == "cgroup" && string.IsNullOrEmpty(n.Path)) == true
        && spec.Mounts?.Any(m => m.Type == "cgroup" && !(m.Options?.Contains("ro") ?? false)) == true;

    /// <summary>The host id that a user namespace's mappings give to id 0, or null if 0 is not mapped.</summary>
    static uint? HostIdOfRoot(List<IdMapping>? maps) =>
        maps?.FirstOrDefault(m => m.ContainerId == 0 && m.Size > 0) is { } m ? m.HostId : null;

    /// <summary>
    /// Without a mount namespace the container shares the runtime's mounts (the spec's rule for an absent
    /// namespace): the init only chroots into root.path, as runc does without one. Mounting there would change
    /// the host's own mount table and outlive the container, so the fields that need a mount are not applied.
    /// </summary>
    static void WarnNoMountNamespace(Spec spec)
    {
        var ignored = new List<string>();
        if (spec.Mounts is { Count: > 0 } m) ignored.Add($"mounts ({m.Count})");
        if (spec.Linux?.MaskedPaths is { Count: > 0 }) ignored.Add("linux.maskedPaths");
        if (spec.Linux?.ReadonlyPaths is { Count: > 0 }) ignored.Add("linux.readonlyPaths");
        if (spec.Linux?.Devices is { Count: > 0 }) ignored.Add("linux.devices");
        if (spec.Linux?.Sysctl is { Count: > 0 }) ignored.Add("linux.sysctl");
        if (spec.Root?.Readonly == true) ignored.Add("root.readonly");
        if (!string.IsNullOrEmpty(spec.Linux?.RootfsPropagation)) ignored.Add("linux.rootfsPropagation");
        if (ignored.Count > 0)
            Console.Error.WriteLine("hull: warning: linux.namespaces has no mount namespace, so the container shares " +
                $"the runtime's mounts and only chroots into root.path; not applied: {string.Join(", ", ignored)} " +
                "(add {\"type\": \"mount\"} to get them)");
    }

    static void WriteIdMap(int pid, string file, List<IdMapping> maps)
    {
        var text = string.Join("\n", maps.Select(m => $"{m.ContainerId} {m.HostId} {m.Size}")) + "\n";
        if (!Sys.TryWriteFile($"/proc/{pid}/{file}", text, out var e))
            throw new ContainerException($"writing linux.{(file == "uid_map" ? "uidMappings" : "gidMappings")} " +
                $"({text.Trim().Replace("\n", "; ")}): {Errors.Describe(e)} — ranges must not overlap and must exist " +
                "on the host");
    }

    internal static void WritePidFile(string path, int pid)
    {
        var full = Path.GetFullPath(path);
        var tmp = full + ".tmp";
        File.WriteAllText(tmp, pid.ToString());
        File.Move(tmp, full, overwrite: true);
    }

    internal static string DescribeStatus(int status) =>
        (status & 0x7f) == 0 ? $"exit status {(status >> 8) & 0xff}" : $"killed by {Signals.Name(status & 0x7f)}";

    void RunPoststart(string id, ContainerRecord? record = null)
    {
        var r = record ?? Store.Load(id);
        if (!r.HasPoststart) return;
        var spec = Store.LoadSpec(id);
        if (spec.Hooks?.Poststart is not { Count: > 0 } hooks) return;
        // The state of the start that just happened (as runc), not a fresh look: a short-lived process may have
        // exited already, and a hook must still learn that the container ran, and its pid.
        var state = new State
        {
            Id = r.Id, Status = ContainerStatus.Running.Oci(), Pid = r.Pid, Bundle = r.Bundle,
            Annotations = r.Annotations,
        };
        try { HookRunner.Run("poststart", hooks, state); }
        catch (ContainerException e) { Console.Error.WriteLine($"hull: warning: {e.Message}"); }
    }
}

/// <summary>Undo actions, run in reverse order on failure.</summary>
public sealed class Rollback
{
    readonly List<Action> _undo = [];
    public void Add(Action a) => _undo.Add(a);
    public void RemoveLast() => _undo.RemoveAt(_undo.Count - 1);
    public void Clear() => _undo.Clear();

    public void Run()
    {
        for (var i = _undo.Count - 1; i >= 0; i--)
        {
            try { _undo[i](); }
            catch (Exception e) { Console.Error.WriteLine($"hull: warning: cleanup step failed: {e.Message}"); }
        }
        _undo.Clear();
    }
}
