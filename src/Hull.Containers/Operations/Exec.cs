using Hull.Linux;
using Hull.Oci;

namespace Hull.Containers;

public sealed class ExecOptions
{
    public required string Id { get; init; }
    public required Hull.Oci.Process Process { get; init; }
    public string? ConsoleSocket { get; init; }
    public string? PidFile { get; init; }
    public int PreserveFds { get; init; }
    /// <summary>Optional stdin, stdout, stderr for the process (instead of the caller's fds 0-2): pipe ends or a pty
    /// slave the caller allocated. Must hold exactly three fds. Use with Process.Terminal false.</summary>
    public IReadOnlyList<SafeFd>? Stdio { get; init; }
    /// <summary>With <see cref="Stdio"/>: fd 0 is a terminal to become the process's controlling terminal.</summary>
    public bool StdioIsTerminal { get; init; }
}

public sealed unsafe partial class ContainerEngine
{
    /// <summary>Internal flags of <c>hull-oci exec</c> for hulld's execs: a unix socket fd for the outcome (the
    /// process's pidfd, or the error), and "fd 0 is a pty slave to become the controlling terminal".</summary>
    public const string ExecReportFdFlag = "hull-report-fd", ExecStdioTtyFlag = "hull-stdio-tty";

    /// <summary>
    /// The process an exec runs: the container's own process settings (capabilities, LSM labels, no_new_privs,
    /// rlimits) with the caller's args, env, cwd, user and terminal, as runc exec does.
    /// </summary>
    public Hull.Oci.Process ExecProcess(string id, List<string> args, bool tty, List<string>? env, string? cwd,
        string? user, IReadOnlyList<string>? capsToAdd)
    {
        Store.Load(id);
        var spec = Store.LoadSpec(id);
        var b = spec.Process ?? new Hull.Oci.Process();
        var p = new Hull.Oci.Process
        {
            Args = args, Terminal = tty, Env = [.. b.Env ?? [], .. env ?? []], Cwd = cwd ?? b.Cwd,
            User = new User { Uid = b.User.Uid, Gid = b.User.Gid, AdditionalGids = b.User.AdditionalGids,
                Umask = b.User.Umask },
            Capabilities = b.Capabilities, NoNewPrivileges = b.NoNewPrivileges, ApparmorProfile = b.ApparmorProfile,
            SelinuxLabel = b.SelinuxLabel, Rlimits = b.Rlimits, OomScoreAdj = b.OomScoreAdj,
        };
        if (user is not null)
        {
            var parts = user.Split(':');
            if (!uint.TryParse(parts[0], out var uid) || (parts.Length > 1 && !uint.TryParse(parts[1], out _)))
                throw new ContainerException($"--user \"{user}\": give a numeric UID[:GID]");
            if (uid == uint.MaxValue || (parts.Length > 1 && uint.Parse(parts[1]) == uint.MaxValue))
                throw new ContainerException(
                    $"--user \"{user}\": 4294967295 (-1) is not a user or group id: give one from 0 to 4294967294");
            p.User.Uid = uid;
            p.User.Gid = parts.Length > 1 ? uint.Parse(parts[1]) : p.User.Gid;
            p.User.AdditionalGids = null; // the container's groups are its user's, not this one's (as runc exec)
        }
        if (capsToAdd is { Count: > 0 })
        {
            var c = p.Capabilities ?? new Hull.Oci.Capabilities();
            p.Capabilities = new Hull.Oci.Capabilities
            {
                Bounding = [.. c.Bounding ?? [], .. capsToAdd], Effective = [.. c.Effective ?? [], .. capsToAdd],
                Permitted = [.. c.Permitted ?? [], .. capsToAdd], Inheritable = c.Inheritable, Ambient = c.Ambient,
            };
        }
        return p;
    }

    /// <summary>
    /// exec: runs a process in a running container. The spawn shim joins the container's namespaces and cgroup,
    /// takes on the process's identity and execs it, so no init binary runs inside the container.
    /// Returns the pid; it is a child of the caller.
    /// </summary>
    public SpawnedChild Exec(ExecOptions o)
    {
        var r = Store.Load(o.Id);
        var status = Status(r);
        if (status is not (ContainerStatus.Running or ContainerStatus.Created))
            throw new ContainerException($"cannot exec in container \"{o.Id}\": it is {status.Oci()}" +
                (status == ContainerStatus.Paused ? " (resume it first)" : ""));
        var p = o.Process;
        SpecValidator.ValidateProcess(p, "process");
        var spec = Store.LoadSpec(o.Id);
        if (p.Terminal && o.ConsoleSocket is null)
            throw new ContainerException("a terminal was asked for (-t or process.terminal): pass --console-socket");
        using var pidfd = OpenProcess(r) ?? throw new ContainerException(
            $"cannot exec in container \"{o.Id}\": its process has exited");

        var fds = new List<SafeFd>();
        try
        {
            var req = new SpawnRequest { Argv = p.Args!, Env = ProcessSetup.BuildEnv(p), Chdir = p.Cwd, Setsid = true };
            // Namespaces: the user namespace first (it grants the capabilities to join the others), mount last.
            foreach (var type in r.Namespaces.OrderBy(t => t == "user" ? 0 : t == "mount" ? 2 : 1))
            {
                var fd = Sys.Open($"/proc/{r.Pid}/ns/{NsProcName[type]}", O.RDONLY);
                fds.Add(fd);
                if (type == "pid") req.PidNamespace = fd;
                else req.JoinNamespaces.Add((fd, NsFlags[type]));
            }
            var cg = Cgroups.Open(r.CgroupPath, o.Id);
            using var join = cg.PrepareJoin();
            req.CgroupDir = join.Directory;
            req.CgroupTaskFiles.AddRange(join.TaskFiles);
            var seccomp = SeccompSupport.Compile(spec.Linux?.Seccomp);
            if (seccomp is { Compiled.NeedsListener: true })
            {
                // SCMP_ACT_NOTIFY: the shim hands the notify fd back over this channel before exec.
                var (childEnd, parentEnd) = SeccompSupport.ExecListenerChannel(spec.Linux!.Seccomp!);
                fds.Add(childEnd); fds.Add(parentEnd);
                req.SeccompListener = (childEnd, parentEnd);
            }
            req.Attributes = ProcessSetup.Attributes(p, spec, seccomp?.Program, seccomp?.Flags ?? 0);
            req.ExecCandidates = ExecCandidates(p);
            for (var i = 3; i < 3 + o.PreserveFds; i++) { var f = new SafeFd(i, owns: false); req.Fds.Add((f, i)); }
            if (o.Stdio is { } stdio)
            {
                if (stdio.Count != 3) throw new ContainerException(
                    "ExecOptions.Stdio must hold exactly three fds (stdin, stdout, stderr)");
                if (p.Terminal) throw new ContainerException(
                    "ExecOptions.Stdio cannot be combined with process.terminal: pass the pty slave in Stdio with " +
                    "StdioIsTerminal");
                for (var i = 0; i < 3; i++) req.Fds.Add((stdio[i], i));
                if (o.StdioIsTerminal) req.ControllingTty = 0;
            }
            if (p.Terminal)
            {
                // The pty comes from the container's devpts; TIOCGPTPEER gives the peer without a path lookup.
                var master = Sys.Open($"/proc/{r.Pid}/root/dev/pts/ptmx", O.RDWR | O.NOCTTY);
                fds.Add(master);
                Sys.Check(Libc.unlockpt(master.Fd), "unlockpt");
                var sfd = Libc.ioctl(master.Fd, 0x5441 /* TIOCGPTPEER */, O.RDWR | O.NOCTTY | O.CLOEXEC);
                if (sfd < 0) throw LinuxException.FromLastError("TIOCGPTPEER");
                var slave = new SafeFd(sfd);
                fds.Add(slave);
                req.Fds.Add((slave, 0)); req.Fds.Add((slave, 1)); req.Fds.Add((slave, 2));
                req.ControllingTty = 0;
                using var sock = UnixSockets.Connect(o.ConsoleSocket!);
                UnixSockets.SendFd(sock, "exec", master);
            }
            // rlimits and the OOM score are set on the child from here, before it is released to exec.
            req.WaitForRelease = (p.Rlimits?.Count ?? 0) > 0 || p.OomScoreAdj is not null;
            // The shim shares this process's memory (CLONE_VM) and is visible in the container from clone3 on: this
            // process turns non-dumpable for good, so nothing in the container can open the shim's /proc/PID/mem
            // (this process's memory) or /proc/PID/exe (this process's binary) until the shim has exec'd. Call this
            // only from a short-lived process that runs sealed (hull-oci exec), never from a daemon.
            Sys.Prctl(PR.SET_DUMPABLE, 0);
            SpawnedChild child;
            try
            {
                child = Spawner.Start(req);
                try
                {
                    if (req.WaitForRelease) ApplyLimitsTo(child.Pid, p);
                    if (req.SeccompListener is { } sl)
                    {
                        child.Release();
                        SeccompSupport.HandOffExecListener(sl.ParentEnd, child.Pidfd, spec.Linux!.Seccomp!,
                            StateOf(o.Id), child.Pid);
                    }
                    child.Finish();
                }
                catch { child.Dispose(); throw; }
            }
            catch (SpawnException e) when (e.Stage == SpawnStage.Exec)
            {
                throw new ContainerException($"exec: \"{p.Args![0]}\": " +
                    (e.Errno == Errors.ENOENT && !p.Args[0].Contains('/')
                        ? "executable file not found in $PATH" : Errors.Describe(e.Errno)))
                {
                    ExitCode = e.Errno == Errors.ENOENT ? 127 : 126,
                };
            }
            catch (SpawnException e) { throw new ContainerException($"exec in container \"{o.Id}\": {e.Message}"); }
            if (o.PidFile is not null) WritePidFile(o.PidFile, child.Pid);
            return child;
        }
        finally
        {
            foreach (var f in fds) f.Dispose();
        }
    }

    static unsafe void ApplyLimitsTo(int pid, Hull.Oci.Process p)
    {
        ulong* lim = stackalloc ulong[2];
        foreach (var r in p.Rlimits ?? [])
        {
            lim[0] = r.Soft; lim[1] = r.Hard;
            if (Libc.prlimit(pid, Rlimits.Resource(r.Type), lim, null) < 0)
                throw new ContainerException($"setting {r.Type} to soft={r.Soft} hard={r.Hard} for the exec'd " +
                    $"process: {Errors.Describe(System.Runtime.InteropServices.Marshal.GetLastPInvokeError())}");
        }
        if (p.OomScoreAdj is { } oom && !Sys.TryWriteFile($"/proc/{pid}/oom_score_adj", oom.ToString(), out var e))
            throw new ContainerException($"setting oomScoreAdj {oom} for the exec'd process: {Errors.Describe(e)}");
    }

    /// <summary>execvp's search list, tried by the shim inside the container's mount namespace.</summary>
    static List<string> ExecCandidates(Hull.Oci.Process p)
    {
        var name = p.Args![0];
        if (name.Contains('/')) return [name.StartsWith('/') ? name : Path.Combine(p.Cwd, name)];
        var path = p.Env?.LastOrDefault(e => e.StartsWith("PATH=", StringComparison.Ordinal))?[5..]
            ?? ProcessSetup.DefaultPath;
        return path.Split(':', StringSplitOptions.RemoveEmptyEntries).Select(d => Path.Combine(d, name)).ToList();
    }
}
