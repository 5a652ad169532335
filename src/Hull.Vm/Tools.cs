using System.Diagnostics;
using System.Text;

namespace Hull.Vm;

/// <summary>A VM operation failed; the message names the thing and, where there is one, the fix.</summary>
public class VmException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Runs host tools (qemu-img, mkfs.ext4, xz) and finds programs.</summary>
internal static class Tools
{
    public static string Find(string name, string package)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
                     .Concat(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]))
        {
            var p = Path.Combine(dir, name);
            if (File.Exists(p)) return p;
        }
        throw new VmException($"'{name}' was not found on PATH: install the {package} package");
    }

    public static string Qemu(VmConfig? c = null) => c?.QemuBinary ?? Find("qemu-system-x86_64", "qemu-system-x86");
    public static string QemuImg => Find("qemu-img", "qemu-utils");

    /// <summary>Runs a program to completion; throws <see cref="VmException"/> with its stderr when it fails.</summary>
    public static string Run(string program, IEnumerable<string> args, string what, TimeSpan? timeout = null, Stream? stdin = null, Stream? stdout = null)
    {
        var psi = new ProcessStartInfo(program)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = stdin is not null, UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new VmException($"{what}: cannot start {program}");
        var err = p.StandardError.ReadToEndAsync();
        Task<string> outText;
        if (stdout is not null) { outText = p.StandardOutput.BaseStream.CopyToAsync(stdout).ContinueWith(_ => ""); }
        else outText = p.StandardOutput.ReadToEndAsync();
        if (stdin is not null)
        {
            try { stdin.CopyTo(p.StandardInput.BaseStream); } catch (IOException) { }
            p.StandardInput.Close();
        }
        if (!p.WaitForExit(timeout ?? TimeSpan.FromMinutes(5)))
        {
            try { p.Kill(true); } catch (InvalidOperationException) { }
            throw new VmException($"{what}: {Path.GetFileName(program)} did not finish in time");
        }
        p.WaitForExit();
        var o = outText.GetAwaiter().GetResult();
        var e = err.GetAwaiter().GetResult();
        if (p.ExitCode != 0)
            throw new VmException($"{what}: {Path.GetFileName(program)} failed (exit {p.ExitCode}): {FirstLines(e.Length > 0 ? e : o)}");
        return o;
    }

    public static string FirstLines(string s, int n = 6)
    {
        var lines = s.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return string.Join("; ", lines.Take(n));
    }

    /// <summary>The last lines of a text file (QEMU's stderr log), or "".</summary>
    public static string Tail(string path, int lines = 12)
    {
        try
        {
            if (!File.Exists(path)) return "";
            using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            var start = Math.Max(0, f.Length - 8192);
            f.Position = start;
            var buf = new byte[f.Length - start];
            f.ReadExactly(buf);
            var all = Encoding.UTF8.GetString(buf).Split('\n', StringSplitOptions.RemoveEmptyEntries);
            return string.Join('\n', all.TakeLast(lines));
        }
        catch (IOException) { return ""; }
    }

    public static long HostMemoryMiB()
    {
        foreach (var l in File.ReadLines("/proc/meminfo"))
            if (l.StartsWith("MemTotal:", StringComparison.Ordinal))
                return long.Parse(l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) / 1024;
        return long.MaxValue;
    }

    public static void TryDelete(string path)
    {
        try { if (File.Exists(path) || IsSocket(path)) File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    static bool IsSocket(string path)
    {
        try { return (File.GetAttributes(path) & FileAttributes.Normal) == 0 && Path.Exists(path); }
        catch (IOException) { return false; }
    }
}
