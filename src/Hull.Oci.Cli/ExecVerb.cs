using System.Runtime.InteropServices;
using Hull.Containers;
using Hull.Linux;

namespace Hull.Oci.Cli;

/// <summary>exec: a new process in a running container; in the foreground it waits and returns the exit code.</summary>
static class ExecVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "exec", ["process", "p", "pid-file", "console-socket", "env", "e", "cwd", "user", "u", "cap", "c", "preserve-fds", "process-label", "apparmor"],
            ["tty", "t", "detach", "d", "no-new-privs", "ignore-paused"], stopAtFirstPositionalAfter: true);
        if (a.Positional.Count < 1) throw new UsageException("exec needs a container id");
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
                [.. a.Repeated("env"), .. a.Repeated("e")], a.Get("cwd"), a.Get("user") ?? a.Get("u"), [.. a.Repeated("cap"), .. a.Repeated("c")]);
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
            regs.Add(PosixSignalRegistration.Create(sig, c => { c.Cancel = true; Libc.kill(pid, (int)c.Signal switch { -2 => 2, -3 => 3, -1 => 1, _ => 15 }); }));
        try { return Sys.ExitCode(Sys.WaitPid(pid)); }
        finally { foreach (var r in regs) r.Dispose(); }
    }
}
