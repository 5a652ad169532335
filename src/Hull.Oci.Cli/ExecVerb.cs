using System.Runtime.InteropServices;
using Hull.Containers;
using Hull.Linux;

namespace Hull.Oci.Cli;

/// <summary>exec: a new process in a running container; in the foreground it waits and returns the exit code.</summary>
static class ExecVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "exec", ["process", "p", "pid-file", "console-socket", "env", "e", "cwd", "user", "u",
                "cap", "c", "preserve-fds", "process-label", "apparmor", ReportFdFlag],
            ["tty", "t", "detach", "d", "no-new-privs", "ignore-paused", StdioTtyFlag],
            stopAtFirstPositionalAfter: true);
        if (a.Positional.Count < 1) throw new UsageException("exec needs a container id");
        // The spawn shim is a CLONE_VM child of this process: it maps this process's binary while it enters the
        // container, so this process runs from a sealed, read-only view of itself (one re-exec, ~2 ms).
        ctx.Engine.EnsureRunningSealed();
        // No fd of this process but stdio and the preserved ones may reach the container's process (CVE-2024-21626):
        // whatever the caller left open without close-on-exec gets it now.
        Sys.CloseRangeOnExec(3 + a.GetInt("preserve-fds", 0));
        if (a.Get(ReportFdFlag) is { } rfd)
            return RunForDaemon(ctx, a, int.Parse(rfd, System.Globalization.CultureInfo.InvariantCulture));
        var id = a.Positional[0];
        Hull.Oci.Process process;
        if ((a.Get("process") ?? a.Get("p")) is { } file)
        {
            if (!File.Exists(file)) throw new UsageException($"--process {file} does not exist");
            process = SpecLoader.ParseProcess(File.ReadAllText(file), file);
        }
        else
        {
            if (a.Positional.Count < 2) throw new UsageException("exec needs a command to run (or --process FILE)");
            process = ctx.Engine.ExecProcess(id, a.Positional.Skip(1).ToList(), a.Has("tty") || a.Has("t"),
                [.. a.Repeated("env"), .. a.Repeated("e")], a.Get("cwd"), a.Get("user") ?? a.Get("u"),
                    [.. a.Repeated("cap"), .. a.Repeated("c")]);
            if (a.Has("no-new-privs")) process.NoNewPrivileges = true;
            if (a.Get("apparmor") is { } aa) process.ApparmorProfile = aa;
            if (a.Get("process-label") is { } pl) process.SelinuxLabel = pl;
        }
        using var child = ctx.Engine.Exec(new ExecOptions
        {
            Id = id, Process = process, ConsoleSocket = a.Get("console-socket"), PidFile = a.Get("pid-file"),
            PreserveFds = a.GetInt("preserve-fds", 0),
        });
        if (a.Has("detach") || a.Has("d")) return 0;
        var pid = child.Pid;
        var regs = new List<PosixSignalRegistration>();
        foreach (var sig in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM, PosixSignal.SIGHUP, PosixSignal.SIGQUIT })
            regs.Add(PosixSignalRegistration.Create(sig,
                c => { c.Cancel = true; Libc.kill(pid,
                (int)c.Signal switch { -2 => 2, -3 => 3, -1 => 1, _ => 15 }); }));
        try { return Sys.ExitCode(Sys.WaitPid(pid)); }
        finally { foreach (var r in regs) r.Dispose(); }
    }

    const string ReportFdFlag = ContainerEngine.ExecReportFdFlag, StdioTtyFlag = ContainerEngine.ExecStdioTtyFlag;

    /// <summary>
    /// hulld runs its execs through this (a daemon must never be the CLONE_VM parent of a process that enters a
    /// container). The outcome goes to the unix socket at fd <paramref name="reportFd"/>: "ok" with the process's
    /// pidfd (for signals), or "error CODE MESSAGE" without an fd. Then this waits for the process and exits with
    /// its exit code (128+N for a signal), so its parent reads that as the exec's result.
    /// </summary>
    static int RunForDaemon(OciContext ctx, Args a, int reportFd)
    {
        using var report = new SafeFd(reportFd);
        var file = a.Get("process") ?? throw new UsageException($"--{ReportFdFlag} needs --process");
        SpawnedChild child;
        try
        {
            var process = SpecLoader.ParseProcess(File.ReadAllText(file), file);
            var tty = a.Has(StdioTtyFlag);
            IReadOnlyList<SafeFd>? stdio =
                tty ? [.. Enumerable.Range(0, 3).Select(i => new SafeFd(i, owns: false))] : null;
            child = ctx.Engine.Exec(new ExecOptions
            {
                Id = a.Positional[0], Process = process, Stdio = stdio, StdioIsTerminal = tty,
            });
        }
        catch (Exception e) when (e is ContainerException or LinuxException or IOException or UsageException)
        {
            var code = e is ContainerException { ExitCode: not 0 } ce ? ce.ExitCode : 1;
            Sys.WriteAll(report, System.Text.Encoding.UTF8.GetBytes($"error {code} {e.Message}"), "exec report");
            return code;
        }
        using (child)
        {
            UnixSockets.SendFd(report, "ok", child.Pidfd);
            report.Dispose();
            return Sys.ExitCode(Sys.WaitPid(child.Pid));
        }
    }
}
