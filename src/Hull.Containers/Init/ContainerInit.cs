using System.Runtime.InteropServices;
using System.Text;
using Hull.Linux;
using Hull.Oci;

namespace Hull.Containers;

/// <summary>
/// The container init: the hull binary re-executed in the container's new namespaces ("hull init"). It reads its
/// <see cref="InitPlan"/> from the sync socket, builds the container's filesystem and identity, reports "ready",
/// waits for start, and execs the container's process (so the container's pid is this process's pid).
/// Any failure before "ready" is reported to the parent as an error message and the init exits.
/// </summary>
public static unsafe class ContainerInit
{
    public const string SyncFdVariable = "_HULL_INIT_FD";

    public static int Main()
    {
        // First act: nothing in the container may open this process's /proc/PID/exe or mem until it execs the
        // container's process (native/hull_spawn.c already did this before the runtime started; see there).
        Sys.Prctl(PR.SET_DUMPABLE, 0);
        if (!int.TryParse(Environment.GetEnvironmentVariable(SyncFdVariable), out var syncFd))
        {
            System.Console.Error.WriteLine("hull init is started by the runtime, not by hand");
            return 2;
        }
        var ch = new SyncChannel(new SafeFd(syncFd));
        var reportedReady = false;
        try
        {
            var plan = ch.ReceivePlan() ?? throw new ContainerException(
                "the runtime closed the sync socket before sending the plan");
            Create(plan, ch, () => reportedReady = true);
            return 0;
        }
        catch (Exception e)
        {
            var msg = e is ContainerException or LinuxException or SpawnException ? e.Message : e.ToString();
            if (!reportedReady)
            {
                try { ch.Send(new SyncMessage { Type = SyncType.Error, Message = msg,
                    ExitCode = e is ContainerException ce ? ce.ExitCode : 1 }); }
                catch (LinuxException) { }
            }
            else System.Console.Error.WriteLine($"hull: {msg}");
            return e is ContainerException c2 ? c2.ExitCode : 1;
        }
    }

    static void Create(InitPlan plan, SyncChannel ch, Action markReady)
    {
        var spec = plan.Spec!;
        var process = spec.Process!;
        // In its cgroup in every hierarchy now (the spawner joined the v1 ones): the namespace is rooted there.
        if (plan.NewCgroupNamespace) Sys.Check(Libc.unshare((int)CLONE.NEWCGROUP), "unshare(CLONE_NEWCGROUP)");
        if (plan.MountNamespaceFd >= 0) JoinMountNamespace(plan.MountNamespaceFd);
        var setup = new RootfsSetup(LinuxSyscalls.Instance, spec, plan.Rootfs, plan.InUserNamespace,
            CgroupMounts.Read(plan.CgroupPaths), plan.NewCgroupNamespace,
            plan.BindSourceFds);
        if (plan.NewMountNamespace)
        {
            setup.PrepareRoot();
            setup.MountAll();
            setup.CreateDevices();
        }
        if (plan.NewUtsNamespace)
        {
            if (!string.IsNullOrEmpty(spec.Hostname)) LinuxSyscalls.Instance.SetHostname(spec.Hostname);
            if (!string.IsNullOrEmpty(spec.Domainname)) LinuxSyscalls.Instance.SetDomainname(spec.Domainname);
        }
        if (plan.NewNetworkNamespace) Loopback.Up();
        if (plan.ParentHooks)
        {
            ch.Send(SyncType.Hooks);
            var reply = ch.Receive() ?? throw new ContainerException("the runtime went away while running hooks");
            if (reply.Type != SyncType.HooksDone) throw new ContainerException(reply.Message ?? "hooks failed");
        }
        HookRunner.Run("createContainer", spec.Hooks?.CreateContainer, plan.HookState!);
        using var listener = plan.SeccompProgram is null
            ? SeccompSupport.ConnectListenerBeforePivot(spec.Linux?.Seccomp) : null;
        // The exec fifo is reopened for writing through this process's fd directory, taken while the runtime's
        // /proc is still reachable: the container's root need not have /proc (nor any mount, without a mount
        // namespace).
        using var fdDir = plan.FifoFd >= 0 ? Sys.Open("/proc/self/fd", O.PATH | O.DIRECTORY) : null;
        if (plan.NewMountNamespace) setup.PivotRoot(plan.NoPivot);
        else
        {
            Sys.Check(Libc.chroot(plan.Rootfs), $"chroot {plan.Rootfs}");
            Sys.Check(Libc.chdir("/"), "chdir /");
        }
        SafeFd? slave = null;
        if (process.Terminal)
            slave = OpenConsole(plan.ConsoleSocketFd, process.ConsoleSize, mountOnDevConsole: plan.NewMountNamespace);
        if (plan.NewMountNamespace) setup.Finish();
        ProcessSetup.ApplyProcessAttributes(process, spec);
        var exe = ProcessSetup.ResolveExecutable(process);
        // The runtime normally compiled the profile; only a SCMP_ACT_NOTIFY profile comes here to be loaded by us.
        var seccomp = plan.SeccompProgram is { } prog
            ? (prog, plan.SeccompFlags, (Hull.Seccomp.SeccompProgram?)null)
            : SeccompSupport.Compile(spec.Linux?.Seccomp) is { } c ? (c.Program, c.Flags, c.Compiled)
                : ((byte[], uint, Hull.Seccomp.SeccompProgram?)?)null;
        // create must fail, not leave a container that cannot start: whatever would stop the init from opening
        // the exec fifo (its owner, its mode) shows now, before "ready".
        if (fdDir is not null) CheckFifo(fdDir, plan.FifoFd);
        ch.Send(new SyncMessage { Type = SyncType.Ready, Pid = Libc.getpid() });
        markReady();
        if (plan.Mode == InitMode.Create) WaitForStart(fdDir!, plan.FifoFd);
        else
        {
            var m = ch.Receive();
            if (m?.Type != SyncType.Start) Environment.Exit(1); // the runtime gave up: never run the process
        }
        ch.Dispose();
        HookRunner.Run("startContainer", spec.Hooks?.StartContainer, plan.HookState!);
        if (slave is not null) UseTerminal(slave);
        if (seccomp is { Item3.NeedsListener: true })
        {
            var state = plan.HookState!;
            state.Status = ContainerStatus.Created.Oci();
            // the host pid, as runc
            SeccompSupport.LoadWithListener(seccomp.Value.Item3, spec.Linux!.Seccomp!, state, state.Pid, listener);
            seccomp = null;
        }
        ProcessSetup.SwitchUserAndExec(process, spec, exe, plan.FirstPrivateFd, seccomp?.Item1, seccomp?.Item2 ?? 0);
    }

    /// <summary>
    /// Enters a mount namespace joined by path. setns refuses a process whose threads share its filesystem context
    /// (the runtime's threads do), so this thread takes its own first; it is the one that goes on to exec the
    /// container's process, and the exec leaves it alone, in this namespace.
    /// </summary>
    static void JoinMountNamespace(int fd)
    {
        using var ns = new SafeFd(fd);
        Sys.Check(Libc.unshare((int)CLONE.FS), "unshare CLONE_FS");
        Sys.Check(Libc.setns(fd, (int)CLONE.NEWNS), "setns into the mount namespace of linux.namespaces");
    }

    /// <summary>
    /// Opens the exec fifo for writing without waiting: with no reader yet that fails with ENXIO once every
    /// permission check has passed; any other error is why the init could not wait for start.
    /// </summary>
    static void CheckFifo(SafeFd fdDir, int fifoPathFd)
    {
        var fd = Libc.openat(fdDir.Fd, fifoPathFd.ToString(), O.WRONLY | O.NONBLOCK | O.CLOEXEC, 0);
        if (fd >= 0) { Libc.close(fd); return; }
        var e = Marshal.GetLastPInvokeError();
        if (e == Errors.ENXIO) return;
        throw new ContainerException(
            $"the container's root cannot open the exec fifo for writing: {Errors.Describe(e)}" +
            (e == Errors.EACCES ? " — with a user namespace, linux.uidMappings and gidMappings must map id 0" : ""));
    }

    /// <summary>Blocks until "start" opens the exec fifo for reading, then hands it one byte.</summary>
    static void WaitForStart(SafeFd fdDir, int fifoPathFd)
    {
        var fd = Libc.openat(fdDir.Fd, fifoPathFd.ToString(), O.WRONLY | O.CLOEXEC, 0);
        if (fd < 0) throw LinuxException.FromLastError("open exec fifo for writing");
        fdDir.Dispose();
        using var f = new SafeFd(fd);
        Sys.WriteAll(f, "0"u8, "write exec fifo");
        Libc.close(fifoPathFd);
    }

    /// <summary>Allocates the container's pty, sends the master to the console socket and returns the slave.</summary>
    static SafeFd OpenConsole(int consoleSocketFd, Box? size, bool mountOnDevConsole)
    {
        if (consoleSocketFd < 0) throw new ContainerException(
            "process.terminal is true but no --console-socket was given");
        var m = Libc.open("/dev/ptmx", O.RDWR | O.NOCTTY | O.CLOEXEC, 0);
        if (m < 0) throw LinuxException.FromLastError(
            "open /dev/ptmx (is devpts mounted at /dev/pts with ptmxmode=0666?)");
        using var master = new SafeFd(m);
        Sys.Check(Libc.unlockpt(m), "unlockpt");
        var buf = stackalloc byte[128];
        var err = Libc.ptsname_r(m, buf, 128); // returns the error number itself, not -1 + errno
        if (err != 0) throw new LinuxException(err, "ptsname");
        var name = Marshal.PtrToStringUTF8((nint)buf)!;
        var slave = Sys.Open(name, O.RDWR | O.NOCTTY);
        if (size is { Height: > 0, Width: > 0 })
        {
            var ws = stackalloc ushort[4];
            ws[0] = (ushort)size.Height; ws[1] = (ushort)size.Width;
            Libc.ioctl(m, 0x5414 /* TIOCSWINSZ */, (nint)ws);
        }
        if (mountOnDevConsole)
        {
            LinuxSyscalls.Instance.CreateFile("/dev/console", 0b110_000_000);
            Sys.Mount(name, "/dev/console", null, MS.BIND, null);
        }
        using var sock = new SafeFd(consoleSocketFd);
        UnixSockets.SendFd(sock, name, master);
        return slave;
    }

    static void UseTerminal(SafeFd slave)
    {
        for (var i = 0; i < 3; i++) Sys.Check(Libc.dup3(slave.Fd, i, 0), "dup3 terminal");
        Sys.Check(Libc.ioctl(0, 0x540E /* TIOCSCTTY */, 0), "TIOCSCTTY");
        slave.Dispose();
    }
}

/// <summary>The cgroup hierarchies of the calling process, for the container's /sys/fs/cgroup.</summary>
public static class CgroupMounts
{
    /// <summary>Each hierarchy mounted here, with the container's directory in it: the one of
    /// <paramref name="containerPaths"/> below its mount point (the runtime's view, right whatever cgroup namespace
    /// this process is in), else this process's own cgroup from /proc/self/cgroup.</summary>
    public static IReadOnlyList<CgroupHierarchy> Read(IReadOnlyList<string> containerPaths)
    {
        var own = new Dictionary<string, string>(); // controller list ("" for v2) -> path
        try
        {
            foreach (var line in File.ReadLines("/proc/self/cgroup"))
            {
                var parts = line.Split(':', 3);
                if (parts.Length == 3) own[parts[1]] = parts[2];
            }
        }
        catch (IOException) { return []; }
        var result = new List<CgroupHierarchy>();
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            // A host may have thousands of mounts (the init sees a copy of them all): only cgroup lines are split.
            if (!line.Contains(" - cgroup", StringComparison.Ordinal)) continue;
            var sep = line.IndexOf(" - ", StringComparison.Ordinal);
            if (sep < 0) continue;
            var left = line[..sep].Split(' ');
            var right = line[(sep + 3)..].Split(' ');
            var fstype = right[0];
            if (fstype is not ("cgroup" or "cgroup2")) continue;
            var mountRoot = left[3];
            var mountPoint = left[4];
            string key, options = "";
            if (fstype == "cgroup2") key = "";
            else
            {
                var opts = right.Length > 2 ? right[2].Split(',') : [];
                var ctrls = opts.Where(o => o is not ("rw" or "ro" or "nosuid" or "nodev" or "noexec" or "relatime")
                    && !o.StartsWith("release_agent", StringComparison.Ordinal) && o != "xattr" && o != "clone_children"
                    && o != "nsdelegate" && o != "cpuset_v2_mode" && o != "noprefix" && o != "favordynmods").ToList();
                key = string.Join(',', ctrls.Where(c => !c.StartsWith("name=", StringComparison.Ordinal)));
                var named = ctrls.FirstOrDefault(c => c.StartsWith("name=", StringComparison.Ordinal));
                if (key.Length == 0 && named is not null) key = named;
                options = string.Join(',', ctrls);
            }
            if (!own.TryGetValue(key, out var path)) continue;
            // the cgroup's path below the mount's root ("/" when the hierarchy is mounted from its top)
            var rel = mountRoot == "/" ? path
                : path == mountRoot ? ""
                : path.StartsWith(mountRoot + "/", StringComparison.Ordinal) ? path[mountRoot.Length..] : path;
            var hostDir = containerPaths.FirstOrDefault(d => d == mountPoint || d.StartsWith(mountPoint + "/",
                StringComparison.Ordinal)) ?? mountPoint + rel;
            var name = Path.GetFileName(mountPoint);
            result.Add(new CgroupHierarchy(name, fstype, options, hostDir));
        }
        return result;
    }
}

/// <summary>Brings up "lo" in a new network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS), as runc does.</summary>
public static unsafe class Loopback
{
    public static void Up()
    {
        var s = Libc.socket(2 /* AF_INET */, 2 /* SOCK_DGRAM */ | O.CLOEXEC, 0);
        if (s < 0) throw LinuxException.FromLastError("socket for lo");
        using var sock = new SafeFd(s);
        var ifr = stackalloc byte[40];
        new Span<byte>(ifr, 40).Clear();
        ifr[0] = (byte)'l'; ifr[1] = (byte)'o';
        Sys.Check(Libc.ioctl(s, 0x8913 /* SIOCGIFFLAGS */, (nint)ifr), "SIOCGIFFLAGS lo");
        *(short*)(ifr + 16) |= 1 /* IFF_UP */;
        Sys.Check(Libc.ioctl(s, 0x8914 /* SIOCSIFFLAGS */, (nint)ifr), "SIOCSIFFLAGS lo");
    }
}
