using System.Diagnostics;
using Hull.Cgroups;
using Hull.Linux;
using Hull.Oci;

// Three ways to start /bin/true, each repeated N times, on the host's real cgroups:
//   plain  : no cgroup at all (the baseline);
//   join   : PrepareJoin — the child writes "0" to every v1 "tasks" file, and clone3 uses CLONE_INTO_CGROUP for v2;
//   procs  : spawn, then the parent writes the pid to every hierarchy's cgroup.procs, then release the child.
// For procs the writes themselves are timed too (per write and per process).
// "cold": pause between spawns so the kernel's cgroup_threadgroup_rwsem is idle again (a writer then waits for an
// RCU grace period), which is what a container start usually meets; "warm": back to back.
var n = args.Length > 0 ? int.Parse(args[0]) : 200;
var pauseMs = args.Length > 1 && args[1] == "cold" ? 50 : 0;
var firstWrite = new List<double>();
var layout = CgroupLayout.Detect();
Console.WriteLine($"layout: {layout}");
var path = "/hull-bench-" + Environment.ProcessId;
var cg = Cgroup.Open(path + "/c", "c", layout);
cg.Create();
cg.Apply(new Resources());
try
{
    SpawnRequest Req(bool release = false) =>
        new() { Path = "/bin/true", Argv = ["true"], Env = [], WaitForRelease = release };
    void Run(SpawnRequest r) { using var c = Spawner.Spawn(r); Sys.WaitPid(c.Pid); }

    for (var i = 0; i < 20; i++) Run(Req());   // warm up
    var plain = new List<double>(); var join = new List<double>(); var procs = new List<double>();
    var procsWrites = new List<double>(); var perWrite = new List<double>();
    var dirs = cg.Directories.Values.ToList();
    for (var i = 0; i < n; i++)
    {
        if (pauseMs > 0) Thread.Sleep(pauseMs);
        var sw = Stopwatch.StartNew();
        Run(Req());
        plain.Add(sw.Elapsed.TotalMilliseconds);

        if (pauseMs > 0) Thread.Sleep(pauseMs);
        sw.Restart();
        using (var j = cg.PrepareJoin())
        {
            var r = Req();
            j.AddTo(r);
            Run(r);
        }
        join.Add(sw.Elapsed.TotalMilliseconds);

        if (pauseMs > 0) Thread.Sleep(pauseMs);
        sw.Restart();
        using (var c = Spawner.Start(Req(release: true)))
        {
            var w = Stopwatch.StartNew();
            foreach (var d in dirs)
            {
                var one = Stopwatch.StartNew();
                Sys.WriteFile(d + "/cgroup.procs", c.Pid.ToString(), O.WRONLY);
                (d == dirs[0] ? firstWrite : perWrite).Add(one.Elapsed.TotalMilliseconds);
            }
            procsWrites.Add(w.Elapsed.TotalMilliseconds);
            c.Finish();
            Sys.WaitPid(c.Pid);
        }
        procs.Add(sw.Elapsed.TotalMilliseconds);
    }
    static string S(List<double> x)
    {
        var o = x.Order().ToList();
        return $"mean {x.Average():F3} ms, median {o[o.Count / 2]:F3} ms, p90 {o[(int)(o.Count * 0.9)]:F3} ms";
    }
    Console.WriteLine(
        $"mode: {(pauseMs > 0 ? $"cold ({pauseMs} ms pause before each spawn)" : "warm (back to back)")}");
    Console.WriteLine($"iterations: {n}, hierarchies: {dirs.Count} ({string.Join(" ", cg.Directories.Keys)})");
    Console.WriteLine($"spawn /bin/true, no cgroup:               {S(plain)}");
    Console.WriteLine($"spawn /bin/true, joined at spawn:         {S(join)}");
    Console.WriteLine($"spawn /bin/true, then pid → cgroup.procs: {S(procs)}");
    Console.WriteLine($"  the cgroup.procs writes per process:    {S(procsWrites)}");
    Console.WriteLine($"  the first cgroup.procs write:           {S(firstWrite)}");
    Console.WriteLine($"  each later cgroup.procs write:          {S(perWrite)}");
    Console.WriteLine($"join cost (joined − plain, means):        {join.Average() - plain.Average():F3} ms");
}
finally
{
    cg.Kill(Signals.SIGKILL);
    cg.Destroy();
    Cgroup.Open(path, "x", layout).Destroy();
}
