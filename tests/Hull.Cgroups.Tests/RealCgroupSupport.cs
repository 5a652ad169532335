using Hull.Cgroups;
using Hull.Linux;

namespace Hull.Cgroups.Tests;

/// <summary>A unique top-level cgroup path for one test; Dispose kills what is left in it and removes it from
/// every hierarchy of every layout the test used.</summary>
sealed class CgroupScope : IDisposable
{
    public string Path { get; } = "/hull-test-" + Guid.NewGuid().ToString("N")[..10];
    readonly List<CgroupLayoutInfo> _layouts = [];

    public CgroupScope(params CgroupLayoutInfo[] layouts) => _layouts.AddRange(layouts);

    public ICgroup Open(string name, CgroupLayoutInfo layout)
    {
        if (!_layouts.Contains(layout)) _layouts.Add(layout);
        return Cgroup.Open(Path + "/" + name, name, layout);
    }

    public void Dispose()
    {
        foreach (var l in _layouts)
        {
            var top = Cgroup.Open(Path, "x", l);
            try { top.Kill(Signals.SIGKILL); } catch (CgroupException) { }
            try { top.Destroy(); } catch (CgroupException) { }
        }
    }
}

/// <summary>A child started with the spawner; Dispose kills and reaps it if the test did not.</summary>
sealed class Child : IDisposable
{
    readonly SpawnedChild _c;
    bool _reaped;
    public int Pid => _c.Pid;

    public Child(ICgroup? cg, string[] argv)
    {
        var req = new SpawnRequest { Path = argv[0], Argv = argv, Env = [] };
        using var join = cg?.PrepareJoin();
        join?.AddTo(req);
        _c = Spawner.Spawn(req);
    }

    public static Child Sleep(ICgroup? cg) => new(cg, ["/bin/sleep", "30"]);

    /// <summary>Waits for it to exit; returns the shell-style code.</summary>
    public int Wait()
    {
        _reaped = true;
        return Sys.ExitCode(Sys.WaitPid(_c.Pid));
    }

    public string State() =>
        File.ReadAllLines($"/proc/{Pid}/status").First(l =>
            l.StartsWith("State:", StringComparison.Ordinal))["State:".Length..].Trim();

    /// <summary>The state once it starts with <paramref name="c"/> (a process just exec'd may still be running for a
    /// moment), or the last state seen after a bounded wait.</summary>
    public string WaitState(char c)
    {
        var st = State();
        for (var i = 0; i < 400 && st[0] != c; i++) { Thread.Sleep(5); st = State(); }
        return st;
    }

    public Dictionary<string, string> Cgroups() =>
        CgroupLayout.ParseProcCgroup(File.ReadAllText($"/proc/{Pid}/cgroup"));

    public void Dispose()
    {
        if (!_reaped)
        {
            Libc.kill(_c.Pid, Signals.SIGKILL);
            Sys.WaitPid(_c.Pid);
        }
        _c.Dispose();
    }
}
