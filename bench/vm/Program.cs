// Hull VM benchmark: time from "start" to the guest's userspace marker on the serial console, Hull vs bare QEMU,
// interleaved in one run; then one live migration of an idle guest. Usage: dotnet run -c Release -- [runs] [cacheDir]
using System.Diagnostics;
using Hull.Vm;
using Hull.Vm.Image;

var runs = args.Length > 0 ? int.Parse(args[0]) : 5;
var cache = args.Length > 1 ? args[1] : Path.Combine(Path.GetTempPath(), "hull-vm-bench-cache");
var host = new VmHostOptions { CacheDir = cache };
var image = await DefaultImage.BuildAsync(new DefaultImageOptions { CacheDir = cache });
var work = Path.Combine(Path.GetTempPath(), $"hull-vm-bench-{Environment.ProcessId}");
Directory.CreateDirectory(work);
var hull = new List<double>();
var bare = new List<double>();
var marker = DefaultImage.ReadyMarker;
try
{
    for (var i = 0; i < runs; i++)
    {
        // Hull: create (overlay, config) + start + wait for the marker.
        var dir = Path.Combine(work, $"h{i}");
        var sw = Stopwatch.StartNew();
        var vm = await Vm.LaunchAsync(dir, image.ToConfig($"bench{i}"), host);
        await vm.WaitForConsoleAsync(marker, TimeSpan.FromMinutes(3));
        hull.Add(sw.Elapsed.TotalMilliseconds);
        var argv = vm.CommandLine();
        await vm.DeleteAsync();

        // Bare: the same QEMU argv (its own state dir), the same overlay creation, polling the same console log.
        var bdir = Path.Combine(work, $"b{i}");
        Directory.CreateDirectory(bdir);
        var bargv = argv.Select(a => a.Replace(dir, bdir, StringComparison.Ordinal)).ToList();
        sw.Restart();
        Run("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image.RootDisk, Path.Combine(bdir, "disk0.qcow2")]);
        // In its own session like Hull's QEMU (a new session is also a new scheduler autogroup: keep that equal).
        var psi = new ProcessStartInfo("setsid") { UseShellExecute = false, RedirectStandardError = true };
        psi.ArgumentList.Add("--wait");
        psi.ArgumentList.Add("qemu-system-x86_64");
        foreach (var a in bargv) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var log = Path.Combine(bdir, StateFiles.ConsoleLog);
        while (!(File.Exists(log) && ReadShared(log).Contains(marker, StringComparison.Ordinal)))
        {
            if (p.HasExited) throw new InvalidOperationException("bare QEMU exited: " + p.StandardError.ReadToEnd());
            await Task.Delay(100);
        }
        bare.Add(sw.Elapsed.TotalMilliseconds);
        Process.GetProcessById(int.Parse(File.ReadAllText(Path.Combine(bdir, StateFiles.Pid)).Trim())).Kill();
        p.WaitForExit();
        Console.WriteLine($"run {i + 1}: hull {hull[^1]:0} ms, bare {bare[^1]:0} ms");
    }
    double Median(List<double> v) { var s = v.Order().ToList(); return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2; }
    var accel = (await Vm.CreateAsync(Path.Combine(work, "probe"), image.ToConfig("probe"), host)).Accel;
    Console.WriteLine($"time to guest userspace marker ({accel}), median of {runs}: hull {Median(hull):0} ms, bare qemu {Median(bare):0} ms, ratio {Median(hull) / Median(bare):0.000}");

    // Live migration of an idle 256 MiB guest over a unix socket (storage copied incrementally).
    var src = await Vm.LaunchAsync(Path.Combine(work, "msrc"), image.ToConfig("mig"), host);
    await src.WaitForConsoleAsync(marker, TimeSpan.FromMinutes(3));
    var r = await src.MigrateAsync(Path.Combine(work, "mdst"), host);
    Console.WriteLine($"live migration (idle, 256 MiB): total {r.Total.TotalMilliseconds:0} ms, downtime {r.Downtime.TotalMilliseconds:0} ms, {r.TransferredBytes / 1048576.0:0.0} MiB sent");
    var rss = File.ReadLines($"/proc/{r.Destination.Pid}/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
    Console.WriteLine($"QEMU RSS per VM (after migration): {rss.Split(':')[1].Trim()}");
    await r.Destination.KillAsync();
}
finally
{
    Directory.Delete(work, true);
}

static string ReadShared(string path)
{
    using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
    return new StreamReader(f).ReadToEnd();
}

static void Run(string program, string[] a)
{
    var psi = new ProcessStartInfo(program) { UseShellExecute = false };
    foreach (var x in a) psi.ArgumentList.Add(x);
    using var p = Process.Start(psi)!;
    p.WaitForExit();
    if (p.ExitCode != 0) throw new InvalidOperationException($"{program} failed");
}
