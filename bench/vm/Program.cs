// Hull VM benchmark. Side by side in one run, interleaved, medians over several runs:
//  1. starting the default VM: Hull (create + start) vs the same QEMU argv started bare (same overlay creation),
//     time to the guest's userspace marker on the serial console and to the agent's Ready;
//  2. live migration of an idle and of a busy (memory-dirtying) 256 MiB guest: Hull's MigrateAsync vs QEMU's own
//     migration driven by a plain QMP script (qmp_migrate.py, the same steps);
//  3. QEMU's RSS per VM.
// Usage: dotnet run -c Release -- [runs] [cacheDir] [agentBinary] [migrationRuns]
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Hull.Agent.Protocol;
using Hull.Vm;
using Hull.Vm.Image;

CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
var runs = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 7;
var cache = Path.GetFullPath(args.Length > 1 ? args[1] : Path.Combine(Path.GetTempPath(), "hull-vm-bench-cache"));
var agentBin = Path.GetFullPath(args.Length > 2 ? args[2] : Path.Combine("out", "bin", "hull-agent"));
var migRuns = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 3;
if (!File.Exists(agentBin)) { Console.Error.WriteLine($"{agentBin} is missing: run make agent first"); return 2; }
var script = Path.Combine(AppContext.BaseDirectory, "qmp_migrate.py");
var host = new VmHostOptions { CacheDir = cache };
var image = await DefaultImage.BuildAsync(new DefaultImageOptions { CacheDir = cache, AgentBinary = agentBin });
var work = Path.Combine("/tmp", $"hvb-{Environment.ProcessId}");
Directory.CreateDirectory(work);
const string Marker = DefaultImage.ReadyMarker;
var timeout = TimeSpan.FromMinutes(3);

try
{
    // ---------------------------------------------------------------- start
    var hull = new List<Start>();
    var bare = new List<Start>();
    // One unmeasured round each first: the bench process's JIT and the host's page cache warm up.
    // (runs = 0 skips the start part.)
    if (runs > 0)
    {
        await HullStartAsync("w");
        await BareStartAsync("w", (await HullArgvAsync()));
    }
    for (var i = 0; i < runs; i++)
    {
        // Alternate which one goes first, so drift on the shared machine hits both alike.
        var argv = await HullArgvAsync();
        if (i % 2 == 0) { hull.Add(await HullStartAsync($"h{i}")); bare.Add(await BareStartAsync($"b{i}", argv)); }
        else { bare.Add(await BareStartAsync($"b{i}", argv)); hull.Add(await HullStartAsync($"h{i}")); }
        Console.WriteLine($"run {i + 1}: hull marker {hull[^1].Marker:0} agent {hull[^1].Agent:0} ms (created " +
            $"{hull[^1].Created:0}, QEMU started {hull[^1].Spawned:0}, QMP ready {hull[^1].Qmp:0}); " +
            $"bare marker {bare[^1].Marker:0} agent {bare[^1].Agent:0} ms (QEMU started {bare[^1].Spawned:0})");
    }
    if (runs > 0) {
    var accel = (await Vm.CreateAsync(Path.Combine(work, "probe"), image.ToConfig("probe"), host)).Accel;
    Console.WriteLine();
    Console.WriteLine($"## Start of the default VM ({accel}, 256 MiB, 1 vCPU), median of {runs}");
    Console.WriteLine("| Step | Hull | Bare QEMU | Hull / bare |");
    Console.WriteLine("|---|---|---|---|");
    Row("guest userspace (serial marker)", Median(hull, s => s.Marker), Median(bare, s => s.Marker));
    Row("agent ready (AgentClient Ready)", Median(hull, s => s.Agent), Median(bare, s => s.Agent));
    Console.WriteLine($"| QEMU running (its pid file written) | {Median(hull, s => s.Spawned):0} ms | " +
        $"{Median(bare, s => s.Spawned):0} ms | |");
    Console.WriteLine("| Hull: create done (validate, accel verdict, overlay, config) | " +
        $"{Median(hull, s => s.Created):0} ms | | |");
    Console.WriteLine($"| Hull: StartAsync returned (QMP negotiated) | {Median(hull, s => s.Qmp):0} ms | | |");
    Console.WriteLine($"| QEMU RSS at agent ready | {Median(hull, s => s.RssKb) / 1024:0} MiB | " +
        $"{Median(bare, s => s.RssKb) / 1024:0} MiB | |");
    }

    // ---------------------------------------------------------------- migration
    Console.WriteLine();
    Console.WriteLine("## Live migration, 256 MiB guest over a unix socket, overlay copied along (median of " +
        $"{migRuns})");
    Console.WriteLine("| Guest | Who | Wall | QEMU total | Downtime | Sent |");
    Console.WriteLine("|---|---|---|---|---|---|");
    foreach (var busy in new[] { false, true })
    {
        var hm = new List<Mig>();
        var bm = new List<Mig>();
        for (var i = 0; i < migRuns; i++)
        {
            hm.Add(await HullMigrateAsync($"hm{busy}{i}", busy));
            bm.Add(await BareMigrateAsync($"bm{busy}{i}", busy));
            Console.WriteLine($"  migration {(busy ? "busy" : "idle")} {i + 1}: hull {hm[^1]}, bare {bm[^1]}");
        }
        foreach (var (who, m) in new[] { ("Hull", hm), ("QMP script", bm) })
            Console.WriteLine($"| {(busy ? "busy (64 MiB rewritten in a loop)" : "idle")} | {who} | " +
                $"{Median(m, x => x.Wall):0} ms | {Median(m, x => x.Total):0} ms | {Median(m, x => x.Down):0} ms | " +
                $"{Median(m, x => x.Bytes) / 1048576:0} MiB |");
    }
    return 0;
}
finally
{
    foreach (var pidFile in Directory.EnumerateFiles(work, StateFiles.Pid, SearchOption.AllDirectories))
        if (int.TryParse(File.ReadAllText(pidFile).Trim(),
            out var pid)) try { Process.GetProcessById(pid).Kill(); } catch (Exception) { }
    Thread.Sleep(300);
    Directory.Delete(work, true);
}

async Task<List<string>> HullArgvAsync()
{
    var d = Path.Combine(work, "argv");
    var vm = await Vm.CreateAsync(d, image.ToConfig("bench"), host);
    var a = vm.CommandLine().Select(x => x.Replace(d, "@DIR@", StringComparison.Ordinal)).ToList();
    await vm.DeleteAsync();
    return a;
}

async Task<Start> HullStartAsync(string name)
{
    var dir = Path.Combine(work, name);
    var sw = Stopwatch.StartNew();
    var vm = await Vm.CreateAsync(dir, image.ToConfig("bench"), host);
    var created = sw.Elapsed.TotalMilliseconds;
    await vm.StartAsync();
    var qmp = sw.Elapsed.TotalMilliseconds;
    var marker = await PollMarkerAsync(vm.ConsoleLogPath, sw);
    var agent = await AgentReadyAsync(vm.AgentSocketPath, sw);
    var rss = RssKb(vm.Pid!.Value);
    var spawned = PidFileAt(dir, sw);
    await vm.DeleteAsync();
    return new Start(created, spawned, qmp, marker, agent, rss);
}

async Task<Start> BareStartAsync(string name, List<string> argvTemplate)
{
    var dir = Path.Combine(work, name);
    Directory.CreateDirectory(dir);
    var argv = argvTemplate.Select(x => x.Replace("@DIR@", dir, StringComparison.Ordinal)).ToList();
    var sw = Stopwatch.StartNew();
    Run("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image.RootDisk,
        Path.Combine(dir, "disk0.qcow2")]);
    using var p = SpawnQemu(argv, dir);
    var marker = await PollMarkerAsync(Path.Combine(dir, StateFiles.ConsoleLog), sw, p);
    var agent = await AgentReadyAsync(Path.Combine(dir, StateFiles.Agent), sw);
    var rss = RssKb(QemuPid(dir));
    var spawned = PidFileAt(dir, sw);
    KillQemu(dir);
    p.WaitForExit();
    Directory.Delete(dir, true);
    return new Start(0, spawned, 0, marker, agent, rss);
}

async Task<Mig> HullMigrateAsync(string name, bool busy)
{
    var vm = await Vm.LaunchAsync(Path.Combine(work, name, "src"), image.ToConfig("mig"), host);
    await PollMarkerAsync(vm.ConsoleLogPath, Stopwatch.StartNew());
    await PrepareGuestAsync(vm.AgentSocketPath, busy);
    var sw = Stopwatch.StartNew();
    MigrationResult r;
    using (var cts = new CancellationTokenSource(MigrationLimit))
    {
        try { r = await vm.MigrateAsync(Path.Combine(work, name, "dst"), host, bandwidthBytesPerSecond: Bandwidth,
            ct: cts.Token); }
        catch (OperationCanceledException)
        {
            await vm.DeleteAsync();
            return new Mig(double.NaN, double.NaN, double.NaN, double.NaN);
        }
    }
    var wall = sw.Elapsed.TotalMilliseconds;
    await r.Destination.DeleteAsync();
    await vm.DeleteAsync();
    return new Mig(wall, r.Total.TotalMilliseconds, r.Downtime.TotalMilliseconds, r.TransferredBytes);
}

async Task<Mig> BareMigrateAsync(string name, bool busy)
{
    var src = Path.Combine(work, name, "src");
    var dst = Path.Combine(work, name, "dst");
    Directory.CreateDirectory(src);
    Directory.CreateDirectory(dst);
    var template = await HullArgvAsync();
    Run("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image.RootDisk,
        Path.Combine(src, "disk0.qcow2")]);
    using var p = SpawnQemu(template.Select(x => x.Replace("@DIR@", src, StringComparison.Ordinal)).ToList(), src);
    await PollMarkerAsync(Path.Combine(src, StateFiles.ConsoleLog), Stopwatch.StartNew(), p);
    await PrepareGuestAsync(Path.Combine(src, StateFiles.Agent), busy);
    var size = JsonNode.Parse(RunOut("qemu-img", ["info", "-U", "--output=json", Path.Combine(src, "disk0.qcow2")]))![
        "virtual-size"]!.GetValue<long>();
    var psi = new ProcessStartInfo("python3") { UseShellExecute = false, RedirectStandardOutput = true };
    foreach (var a in new[] { script, Path.Combine(src, StateFiles.Qmp), dst, image.RootDisk,
        size.ToString(CultureInfo.InvariantCulture), Bandwidth.ToString(CultureInfo.InvariantCulture),
        MigrationLimit.TotalSeconds.ToString(CultureInfo.InvariantCulture) }) psi.ArgumentList.Add(a);
    foreach (var a in template) psi.ArgumentList.Add(a.Replace("@DIR@", dst, StringComparison.Ordinal));
    using var py = Process.Start(psi)!;
    var line = await py.StandardOutput.ReadToEndAsync();
    await py.WaitForExitAsync();
    if (py.ExitCode != 0)
    {
        // Did not converge within the limit (cancelled): the source still runs.
        KillQemu(src);
        KillQemu(dst);
        await Task.Delay(300);
        Directory.Delete(Path.Combine(work, name), true);
        return new Mig(double.NaN, double.NaN, double.NaN, double.NaN);
    }
    var j = JsonNode.Parse(line)!;
    p.WaitForExit();
    KillQemu(dst);
    await Task.Delay(200);
    Directory.Delete(Path.Combine(work, name), true);
    return new Mig(j["wall_ms"]!.GetValue<double>(), j["total_ms"]!.GetValue<double>(),
        j["downtime_ms"]!.GetValue<double>(), j["bytes"]!.GetValue<double>());
}

// Waits for the agent; for a busy guest starts a process that rewrites 64 MiB of tmpfs (guest RAM) without pause,
// with non-zero bytes (QEMU sends zero pages as markers only, so zeros would not be real work).
async Task PrepareGuestAsync(string agentSocket, bool busy)
{
    await using var a = await AgentClient.ConnectUnixAsync(agentSocket);
    await a.WaitReadyAsync(timeout);
    if (!busy) return;
    var r = await a.ExecAsync(new ExecRequest { Argv = ["sh", "-c",
        "( while true; do yes hull-dirty-page | dd of=/tmp/dirty bs=1M count=64 iflag=fullblock conv=notrunc " +
            "2>/dev/null; done ) </dev/null >/dev/null 2>&1 &"] },
        null, Stream.Null, null);
    if (r.ExitCode != 0) throw new InvalidOperationException("could not start the memory-dirtying loop in the guest");
    await Task.Delay(2000);
}

Process SpawnQemu(List<string> argv, string dir)
{
    // In its own session like Hull's QEMU (a new session is also a new scheduler autogroup: keep that equal).
    var psi = new ProcessStartInfo("setsid") { UseShellExecute = false, WorkingDirectory = dir,
        RedirectStandardError = true };
    psi.ArgumentList.Add("--wait");
    psi.ArgumentList.Add("qemu-system-x86_64");
    foreach (var a in argv) psi.ArgumentList.Add(a);
    return Process.Start(psi)!;
}

async Task<double> PollMarkerAsync(string log, Stopwatch sw, Process? p = null)
{
    // The same 10 ms poll of the console log for Hull and bare QEMU.
    var deadline = sw.Elapsed + timeout;
    while (true)
    {
        if (File.Exists(log) && ReadShared(log).Contains(Marker,
            StringComparison.Ordinal)) return sw.Elapsed.TotalMilliseconds;
        if (p is { HasExited: true }) throw new InvalidOperationException("bare QEMU exited: "
            + p.StandardError.ReadToEnd());
        if (sw.Elapsed > deadline) throw new TimeoutException($"no marker in {log}");
        await Task.Delay(10);
    }
}

async Task<double> AgentReadyAsync(string socket, Stopwatch sw)
{
    await using var a = await AgentClient.ConnectUnixAsync(socket);
    await a.WaitReadyAsync(timeout);
    return sw.Elapsed.TotalMilliseconds;
}

// When QEMU wrote its pid file (it does so early in its start), in ms since the stopwatch started.
static double PidFileAt(string dir, Stopwatch sw) =>
    sw.Elapsed.TotalMilliseconds - (DateTime.UtcNow - File.GetLastWriteTimeUtc(
        Path.Combine(dir, StateFiles.Pid))).TotalMilliseconds;

static int QemuPid(string dir) => int.Parse(File.ReadAllText(Path.Combine(dir, StateFiles.Pid)).Trim(),
    CultureInfo.InvariantCulture);

static void KillQemu(string dir)
{
    try { Process.GetProcessById(QemuPid(dir)).Kill(); } catch (Exception) { }
}

static double RssKb(int pid)
{
    var line = File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
    return double.Parse(line.Split(':')[1].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
}

static double Median<T>(List<T> v, Func<T, double> f)
{
    var s = v.Select(f).Order().ToList();
    return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2;
}

static void Row(string what, double h, double b) =>
    Console.WriteLine($"| {what} | {h:0} ms | {b:0} ms | {h / b:0.000} |");

static string ReadShared(string path)
{
    using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
    return new StreamReader(f, Encoding.UTF8).ReadToEnd();
}

static void Run(string program, string[] a) => RunOut(program, a);

static string RunOut(string program, string[] a)
{
    var psi = new ProcessStartInfo(program) { UseShellExecute = false, RedirectStandardOutput = true };
    foreach (var x in a) psi.ArgumentList.Add(x);
    using var p = Process.Start(psi)!;
    var o = p.StandardOutput.ReadToEnd();
    p.WaitForExit();
    if (p.ExitCode != 0) throw new InvalidOperationException($"{program} failed");
    return o;
}

static partial class Program
{
    // Both sides migrate with the same settings: this bandwidth cap, and this limit after which the migration is
    // cancelled and reported as not converged.
    public const long Bandwidth = 1L << 30;
    public static readonly TimeSpan MigrationLimit = TimeSpan.FromSeconds(120);
}

record Start(double Created, double Spawned, double Qmp, double Marker, double Agent, double RssKb);

record Mig(double Wall, double Total, double Down, double Bytes)
{
    public override string ToString() => $"wall {Wall:0} ms, total {Total:0} ms, downtime {Down:0} ms, " +
        $"{Bytes / 1048576:0} MiB";
}
