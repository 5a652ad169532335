// hulld scale benchmark (driven by bench/daemon/run.sh against a hulld it started):
//   scale   --socket S --hull PATH --pid HULLD_PID --count N [--running K] [--rest stop|init] [--step S] [--list-runs
//   R] [--net none|bridge|routed] [--json FILE]
//     launches N busybox containers one after another through the SDK (create + start, waiting for the operation),
//     keeps the first K running (K defaults to N); each later one is stopped right after its launch (--rest stop) or
//     only created, not started (--rest init: the time is then the create alone); reports the
//     per-launch latency per step, growth (median of the last step / median of the first), `hull list` wall time
//     (the NativeAOT CLI, process start included) and hulld's RSS when idle, at 1,000 and at N instances. With
//     --net bridge or routed, each container gets eth0 on a network "hbench" (a free 10.X.0.0/16, IPv4 only) made
//     for the run: a veth on its bridge (at most 1024 per bridge) or a routed veth (nictype=routed, no bridge).
//   cleanup --socket S [--prefix P]
//     force-deletes every instance (whose name starts with P) on that hulld, two at a time.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Hull.Api;
using Hull.Sdk;

var opts = new Dictionary<string, string>();
for (var i = 1; i + 1 < args.Length; i += 2) opts[args[i].TrimStart('-')] = args[i + 1];
string Opt(string k, string? def = null) => opts.TryGetValue(k, out var v) ? v : def
    ?? throw new ArgumentException($"--{k} is required");
int IntOpt(string k, int def) => opts.TryGetValue(k, out var v) ? int.Parse(v, CultureInfo.InvariantCulture) : def;

var mode = args.Length > 0 ? args[0] : "";
using var client = new HullClient(Opt("socket"));
switch (mode)
{
    case "scale": return await Scale();
    case "cleanup": return await Cleanup();
    default:
        Console.Error.WriteLine("usage: Hull.Daemon.Bench scale|cleanup --socket S ... (see the comment at the top " +
            "of Program.cs)");
        return 2;
}

async Task<int> Cleanup()
{
    var prefix = Opt("prefix", "");
    var names = (await client.ListInstancesAsync()).Select(i => i.Name).Where(n =>
        n.StartsWith(prefix, StringComparison.Ordinal)).ToList();
    var sw = Stopwatch.StartNew();
    var failed = 0;
    await Parallel.ForEachAsync(names, new ParallelOptions { MaxDegreeOfParallelism = 2 }, async (n, ct) =>
    {
        try { await client.DeleteInstanceAsync(n, force: true, ct); }
        catch (HullException e) when (e.StatusCode == 404) { }
        catch (Exception e) { Interlocked.Increment(ref failed); Console.Error.WriteLine(
            $"cleanup: deleting {n}: {e.Message}"); }
    });
    Console.WriteLine($"cleanup: deleted {names.Count - failed} instances in {sw.Elapsed.TotalSeconds:0.0} s"
        + (failed > 0 ? $", {failed} failed" : ""));
    if ((await client.ListNetworksAsync()).Any(n => n.Name == "hbench"))
    {
        var p = await client.GetProfileAsync("default");
        p.Devices.Remove("eth0");
        await client.UpdateProfileAsync("default", new ProfilePut { Description = p.Description, Config = p.Config,
            Devices = p.Devices });
        await client.DeleteNetworkAsync("hbench");
    }
    return failed == 0 ? 0 : 1;
}

// A network of the run's own with room for 10,000 addresses, on the default profile's eth0.
async Task MakeNetwork(string nictype)
{
    for (var attempt = 0; ; attempt++)
    {
        var subnet = $"10.{Random.Shared.Next(100, 250)}.0.1/16";
        try
        {
            await client.CreateNetworkAsync(new NetworkCreateRequest { Name = "hbench", Config = new()
                { ["ipv4.address"] = subnet, ["ipv6.address"] = "none" } });
            Console.WriteLine($"network hbench: {subnet}, NICs {nictype}");
            break;
        }
        catch (HullException e) when (e.StatusCode == 409 && attempt < 20) { } // the subnet clashes: another
    }
    var p = await client.GetProfileAsync("default");
    var nic = new Dictionary<string, string> { ["type"] = "nic", ["network"] = "hbench", ["name"] = "eth0" };
    if (nictype == "routed") nic["nictype"] = "routed";
    p.Devices["eth0"] = nic;
    await client.UpdateProfileAsync("default", new ProfilePut { Description = p.Description, Config = p.Config,
        Devices = p.Devices });
}

async Task<int> Scale()
{
    var n = IntOpt("count", 1000);
    var running = IntOpt("running", n);
    var step = IntOpt("step", 100);
    var listRuns = IntOpt("list-runs", 5);
    var hull = Opt("hull");
    var pid = IntOpt("pid", 0);
    var rest = Opt("rest", "stop");
    if (rest is not ("stop" or "init")) throw new ArgumentException(
        "--rest is stop (launch, then stop) or init (create without starting)");
    var net = Opt("net", "none");
    if (net is not ("none" or "bridge" or "routed")) throw new ArgumentException("--net is none, bridge or routed");
    var json = new StringBuilder("{");
    void J(string key, string value) => json.Append(json.Length > 1 ? "," : "").Append('"').Append(key).Append(
        "\":").Append(value);
    string F(double v) => v.ToString("0.###", CultureInfo.InvariantCulture);

    Console.WriteLine($"scale: {n} containers, the first {Math.Min(running, n)} launched and kept running" +
        (n > running ? (rest == "stop" ? ", later ones stopped right after their launch"
            : ", later ones created without starting (init)") : ""));
    J("rest", $"\"{rest}\""); J("net", $"\"{net}\"");
    if (net != "none") await MakeNetwork(net);
    var idle = Rss(pid);
    Console.WriteLine($"hulld RSS idle: {idle / 1024.0:0.0} MiB");
    J("count", n.ToString(CultureInfo.InvariantCulture)); J("running",
        Math.Min(running, n).ToString(CultureInfo.InvariantCulture));
    J("rss_idle_kib", idle.ToString(CultureInfo.InvariantCulture));

    var launch = new double[n];
    var stop = new List<double>();
    var checkpoints = new List<int> { 1000, n }.Where(c => c <= n).Distinct().ToList();
    var total = Stopwatch.StartNew();
    for (var i = 0; i < n; i++)
    {
        var name = $"b{i:D5}";
        var sw = Stopwatch.StartNew();
        if (i >= running && rest == "init") await client.CreateInstanceAsync(
            new InstanceCreateRequest { Name = name, Image = "busybox", Start = false });
        else await client.LaunchAsync("busybox", name);
        launch[i] = sw.Elapsed.TotalMilliseconds;
        if (i >= running && rest == "stop")
        {
            sw.Restart();
            await client.StopAsync(name, force: true);
            stop.Add(sw.Elapsed.TotalMilliseconds);
        }
        if ((i + 1) % step == 0)
        {
            var s = launch.AsSpan(i + 1 - step, step).ToArray();
            Console.WriteLine($"  {i + 1,6} launched: launch median {Median(s):0.0} ms, p90 {Pct(s, 0.9):0.0} ms" +
                (stop.Count > 0 ? $", stop median {Median(stop.TakeLast(step).ToArray()):0.0} ms" : "")
                    + $", elapsed {total.Elapsed.TotalSeconds:0} s");
        }
        if (checkpoints.Contains(i + 1))
        {
            var (ms, rows) = await ListTimes(hull, listRuns);
            var sdk = new List<double>();
            for (var r = 0; r < listRuns; r++) { var t =
                Stopwatch.StartNew(); await client.ListInstancesAsync(); sdk.Add(t.Elapsed.TotalMilliseconds); }
            var rss = Rss(pid);
            Console.WriteLine($"  at {i + 1}: `hull list` median {Median(ms):0.0} ms (min {ms.Min():0.0}, max " +
                $"{ms.Max():0.0}, {rows} rows), SDK list median {Median([.. sdk]):0.0} ms, hulld RSS " +
                $"{rss / 1024.0:0.0} MiB");
            var k = (i + 1).ToString(CultureInfo.InvariantCulture);
            J($"list_ms_{k}", F(Median(ms))); J($"list_min_ms_{k}", F(ms.Min())); J($"sdk_list_ms_{k}",
                F(Median([.. sdk]))); J($"rss_kib_{k}", rss.ToString(CultureInfo.InvariantCulture));
        }
    }
    var first = launch.Take(Math.Min(step, n)).ToArray();
    var last = launch.Skip(Math.Max(0, n - step)).ToArray();
    var growth = Median(last) / Median(first);
    Console.WriteLine($"launch: median {Median(launch):0.0} ms; first {first.Length} {Median(first):0.0} ms, last " +
        $"{last.Length} {Median(last):0.0} ms, growth {growth:0.00}x; all {n} in {total.Elapsed.TotalSeconds:0.0} s");
    J("launch_median_ms", F(Median(launch))); J("launch_first_ms", F(Median(first))); J("launch_last_ms",
        F(Median(last))); J("growth", F(growth));
    J("total_s", F(total.Elapsed.TotalSeconds));
    if (rest == "init" && n - running >= 2 * step)
    {
        // The creates after the first K are a different operation: their growth is their own last step vs their first.
        var firstInit = launch.Skip(running).Take(step).ToArray();
        var g = Median(last) / Median(firstInit);
        Console.WriteLine($"create (init) after {running}: first {step} {Median(firstInit):0.0} ms, last {step} " +
            $"{Median(last):0.0} ms, growth {g:0.00}x");
        J("init_first_ms", F(Median(firstInit))); J("init_growth", F(g));
    }
    if (stop.Count > 0) J("stop_median_ms", F(Median([.. stop])));
    J("launch_step_medians_ms", "[" + string.Join(",",
        Enumerable.Range(0, n / step).Select(s => F(Median(launch.AsSpan(s * step, step).ToArray())))) + "]");
    json.Append('}');
    if (opts.TryGetValue("json", out var jf)) File.WriteAllText(jf, json.ToString() + "\n");
    return 0;
}

static async Task<(double[] Ms, int Rows)> ListTimes(string hull, int runs)
{
    var ms = new double[runs];
    var rows = 0;
    for (var r = 0; r < runs; r++)
    {
        var psi = new ProcessStartInfo(hull) { UseShellExecute = false, RedirectStandardOutput = true,
            RedirectStandardError = true };
        psi.ArgumentList.Add("list");
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var outp = p.StandardOutput.ReadToEndAsync();
        var err = p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        var text = await outp;
        ms[r] = sw.Elapsed.TotalMilliseconds;
        if (p.ExitCode != 0) throw new InvalidOperationException($"hull list failed ({p.ExitCode}): {await err}");
        rows = text.Split('\n').Count(l => l.StartsWith("| ", StringComparison.Ordinal)) - 1;
    }
    return (ms, rows);
}

static long Rss(int pid)
{
    if (pid <= 0) return 0;
    foreach (var line in File.ReadLines($"/proc/{pid}/status"))
        if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
            return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
    return 0;
}

static double Median(double[] v)
{
    if (v.Length == 0) return 0;
    var s = v.Order().ToArray();
    return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
}

static double Pct(double[] v, double p)
{
    var s = v.Order().ToArray();
    return s[Math.Min(s.Length - 1, (int)Math.Ceiling(p * s.Length) - 1)];
}
