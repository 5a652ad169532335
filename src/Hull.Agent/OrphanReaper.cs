using Hull.Linux;

namespace Hull.Agent;

/// <summary>
/// When the agent is pid 1 (the guest's /init exec'd it), orphaned processes are re-parented to it and must be
/// reaped, or they stay zombies. On SIGCHLD it reaps every zombie child that is not an exec's own process (those
/// are reaped by their waiter thread, which needs their status). Spawning and registering an exec's pid happen under
/// <see cref="Lock"/>, so a fast-exiting exec is never mistaken for an orphan.
/// </summary>
public static class OrphanReaper
{
    public static readonly object Lock = new();
    static readonly HashSet<int> s_ours = [];

    public static void StartIfInit()
    {
        if (Libc.getpid() != 1) return;
        AgentServer.Log("running as pid 1: reaping orphaned processes");
        var t = new Thread(() =>
        {
            while (true)
            {
                Thread.Sleep(1000);
                Reap();
            }
        }, 256 * 1024) { IsBackground = true, Name = "orphan reaper" };
        t.Start();
    }

    /// <summary>Call with <see cref="Lock"/> held, right after the spawn.</summary>
    public static void Register(int pid) => s_ours.Add(pid);

    public static void Unregister(int pid)
    {
        lock (Lock) s_ours.Remove(pid);
    }

    static void Reap()
    {
        lock (Lock)
        {
            foreach (var dir in Directory.EnumerateDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(dir), out var pid) || s_ours.Contains(pid)) continue;
                string stat;
                try { stat = File.ReadAllText(Path.Combine(dir, "stat")); }
                catch (IOException) { continue; }
                // "pid (comm) S ppid ...": comm may contain spaces and parentheses, so parse after the last ')'.
                var rest = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                if (rest.Length < 2 || rest[0] != "Z" || rest[1] != "1") continue;
                try { Sys.WaitPid(pid, 1 /* WNOHANG */); }
                catch (LinuxException) { } // not our child after all (a race with its real parent)
            }
        }
    }
}
