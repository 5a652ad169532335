using System.Runtime.InteropServices;
using Hull.Containers;
using Hull.Linux;

namespace Hull.Oci.Cli;

/// <summary>run: create + start; in the foreground it forwards signals, waits, deletes the container and returns its
/// exit code.</summary>
static class RunVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "run", ["bundle", "b", "pid-file", "console-socket", "preserve-fds"],
            ["detach", "d", "no-pivot", "no-new-keyring", "keep"]);
        if (a.Positional.Count != 1) throw new UsageException("run needs exactly one container id");
        var id = a.Positional[0];
        var detach = a.Has("detach") || a.Has("d");
        var opts = new CreateOptions
        {
            Id = id, Bundle = a.Get("bundle") ?? a.Get("b") ?? ".", PidFile = a.Get("pid-file"),
            ConsoleSocket = a.Get("console-socket"), NoPivot = a.Has("no-pivot"),
            PreserveFds = a.GetInt("preserve-fds", 0),
        };
        var pid = ctx.Engine.RunDetachedOrAttached(opts, out var pidfd);
        using (pidfd)
        {
            if (detach) return 0;
            var regs = new List<PosixSignalRegistration>();
            foreach (var sig in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM, PosixSignal.SIGHUP,
                PosixSignal.SIGQUIT })
                regs.Add(PosixSignalRegistration.Create(sig, c => { c.Cancel = true; Libc.kill(pid, Map(c.Signal)); }));
            try { return ctx.Engine.WaitAndDelete(id, pid); }
            finally { foreach (var r in regs) r.Dispose(); }
        }
    }

    static int Map(PosixSignal s) => s switch
    {
        PosixSignal.SIGINT => Signals.SIGINT, PosixSignal.SIGTERM => Signals.SIGTERM,
        PosixSignal.SIGHUP => Signals.SIGHUP,
        PosixSignal.SIGQUIT => Signals.SIGQUIT, _ => Signals.SIGTERM,
    };
}
