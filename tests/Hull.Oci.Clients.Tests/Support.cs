using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;

[assembly: Xunit.CollectionBehavior(DisableTestParallelization = true)]

namespace Hull.Oci.Clients.Tests;

/// <summary>The result of a finished command.</summary>
public sealed record CmdResult(string Command, int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"`{Command}` exited {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
}

/// <summary>Runs a client program (podman, ctr, ...) and captures its output; a command that hangs is killed and
/// reported.</summary>
public static class Cmd
{
    public static CmdResult Run(string file, IEnumerable<string> args, int timeoutSeconds = 120, string? stdin = null)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        var line = file + " " + string.Join(' ', psi.ArgumentList);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("cannot start " + file);
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (stdin is not null) p.StandardInput.Write(stdin);
        p.StandardInput.Close();
        if (!p.WaitForExit(timeoutSeconds * 1000))
        {
            try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            p.WaitForExit();
            throw new TimeoutException($"`{line}` did not finish within {timeoutSeconds} s\n--- " +
                $"stdout\n{stdout.Result}\n--- stderr\n{stderr.Result}");
        }
        return new CmdResult(line, p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>Runs and requires exit status 0.</summary>
    public static CmdResult Ok(string file, IEnumerable<string> args, int timeoutSeconds = 120)
    {
        var r = Run(file, args, timeoutSeconds);
        if (r.ExitCode != 0) throw new InvalidOperationException("command failed: " + r);
        return r;
    }
}

/// <summary>A busybox root filesystem: the static busybox binary and one symlink per applet in /bin.</summary>
public static class BusyboxRootfs
{
    public const string Busybox = "/bin/busybox";

    public static void Create(string rootfs)
    {
        var bin = Path.Combine(rootfs, "bin");
        Directory.CreateDirectory(bin);
        File.Copy(Busybox, Path.Combine(bin, "busybox"), overwrite: true);
        var list = Cmd.Ok(Busybox, ["--list"]).Stdout;
        foreach (var applet in list.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (applet == "busybox") continue;
            var link = Path.Combine(bin, applet);
            if (!File.Exists(link)) File.CreateSymbolicLink(link, "busybox");
        }
        foreach (var d in new[] { "etc", "tmp", "proc", "sys", "dev", "root" }) Directory.CreateDirectory(
            Path.Combine(rootfs, d));
    }
}

/// <summary>Cleanup helpers shared by the client fixtures.</summary>
public static partial class Cleanup
{
    [LibraryImport("libc", EntryPoint = "umount2", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int umount2(string target, int flags);

    const int MNT_DETACH = 2;

    /// <summary>Unmounts (lazily, deepest first) every mount at or below dir in this mount namespace.</summary>
    public static void UnmountUnder(string dir)
    {
        for (var pass = 0; pass < 5; pass++)
        {
            var targets = MountsUnder(dir);
            if (targets.Count == 0) return;
            foreach (var t in targets.OrderByDescending(t => t.Length)) umount2(t, MNT_DETACH);
        }
    }

    public static List<string> MountsUnder(string dir)
    {
        var result = new List<string>();
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            var mp = Unescape(line.Split(' ')[4]);
            if (mp == dir || mp.StartsWith(dir + "/", StringComparison.Ordinal)) result.Add(mp);
        }
        return result;
    }

    static string Unescape(string s)
    {
        if (!s.Contains('\\')) return s;
        var sb = new StringBuilder();
        for (var i = 0; i < s.Length; i++)
        {
            if (s[i] == '\\' && i + 3 < s.Length) { sb.Append(
                (char)Convert.ToInt32(s.Substring(i + 1, 3), 8)); i += 3; }
            else sb.Append(s[i]);
        }
        return sb.ToString();
    }

    /// <summary>Kills (SIGKILL) every process whose command line contains marker — a unique temp path of the fixture,
    /// so only processes the test started.</summary>
    public static void KillProcessesMentioning(string marker)
    {
        var self = Environment.ProcessId;
        foreach (var d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), out var pid) || pid == self) continue;
            string cmdline;
            try { cmdline = File.ReadAllText(Path.Combine(d, "cmdline")).Replace('\0', ' '); } catch (
                IOException) { continue; } catch (UnauthorizedAccessException) { continue; }
            if (!cmdline.Contains(marker, StringComparison.Ordinal)) continue;
            try { using var p = Process.GetProcessById(pid); p.Kill(); p.WaitForExit(5000); } catch (
                ArgumentException) { } catch (InvalidOperationException) { } catch (
                System.ComponentModel.Win32Exception) { }
        }
    }

    /// <summary>Force-deletes whatever hull-oci still lists under root (a client that failed half-way).</summary>
    public static void DeleteHullContainers(string hullOci, string root)
    {
        if (!Directory.Exists(root)) return;
        var list = Cmd.Run(hullOci, ["--root", root, "list", "-q"], 30);
        foreach (var id in list.Stdout.Split('\n',
            StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            Cmd.Run(hullOci, ["--root", root, "delete", "--force", id], 30);
    }
}
