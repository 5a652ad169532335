using System.Diagnostics;
using System.IO.Compression;
using Hull.Linux;

// Unpacks TARBALL (plain or gzip) into a fresh directory next to it, alternating GNU tar (--numeric-owner -xp, as
// hulld ran it) and RootedTar (in process, confined to the directory), and prints each round's wall time. The page
// cache is warm after the first round for both; the directory is removed between rounds (not timed).
if (args.Length < 1) { Console.Error.WriteLine("usage: Hull.Unpack.Bench TARBALL [rounds]"); return 2; }
var tarball = Path.GetFullPath(args[0]);
var rounds = args.Length > 1 ? int.Parse(args[1]) : 5;
var magic = new byte[2];
using (var m = File.OpenRead(tarball)) m.ReadExactly(magic);
var gzip = magic is [0x1f, 0x8b];
var work = Path.Combine(Path.GetDirectoryName(tarball)!, "unpack-bench-" + Environment.ProcessId);
var times = new Dictionary<string, List<double>> { ["tar"] = [], ["rooted"] = [] };

for (var i = 0; i < rounds; i++)
    foreach (var way in new[] { "tar", "rooted" })
    {
        Directory.CreateDirectory(work);
        var sw = Stopwatch.StartNew();
        if (way == "tar")
        {
            var psi = new ProcessStartInfo("tar") { UseShellExecute = false };
            foreach (var a in new[] { "--numeric-owner", "-xpf", tarball, "-C", work }) psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            p.WaitForExit();
            if (p.ExitCode != 0) throw new InvalidOperationException($"tar exited with {p.ExitCode}");
        }
        else
        {
            using var root = Sys.Open(work, O.RDONLY | O.DIRECTORY);
            await using var f = new FileStream(tarball, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            Stream input = gzip ? new GZipStream(f, CompressionMode.Decompress) : f;
            await using (input) await RootedTar.ExtractAsync(input, root);
        }
        times[way].Add(sw.Elapsed.TotalMilliseconds);
        Console.WriteLine($"round {i + 1} {way,-6} {sw.Elapsed.TotalMilliseconds,8:F0} ms");
        using (var rm = Process.Start("rm", ["-rf", work])) rm.WaitForExit();
    }
foreach (var (way, t) in times)
    Console.WriteLine($"{way,-6} median {t.Order().ElementAt(t.Count / 2),8:F0} ms  min {t.Min(),8:F0} ms");
return 0;
