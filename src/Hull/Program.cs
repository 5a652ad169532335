using Hull.Linux;

namespace Hull;

public static class Program
{
    public static int Main(string[] args)
    {
        var req = new SpawnRequest
        {
            Path = args.Length > 0 ? args[0] : "/bin/echo",
            Argv = args.Length > 0 ? args : ["echo", "hello from a new namespace"],
            Env = ["PATH=/usr/bin:/bin"],
            CloneFlags = CLONE.NEWUTS | CLONE.NEWPID | CLONE.NEWIPC,
        };
        using var c = Spawner.Spawn(req);
        return Sys.ExitCode(Sys.WaitPid(c.Pid));
    }
}
