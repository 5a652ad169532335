using Hull.Linux;
using System.Text;

namespace Hull.Vm;

/// <summary>A VM operation failed; the message names the thing and, where there is one, the fix.</summary>
public class VmException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Runs host tools (qemu-img, mkfs.ext4, xz) and finds programs.</summary>
internal static class Tools
{
    public static string Find(string name, string package)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':',
            StringSplitOptions.RemoveEmptyEntries)
                     .Concat(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]))
        {
            var p = Path.Combine(dir, name);
            if (File.Exists(p)) return p;
        }
        throw new VmException($"'{name}' was not found on PATH: install the {package} package");
    }

    public static string Qemu(VmConfig? c = null) => c?.QemuBinary ?? Find("qemu-system-x86_64", "qemu-system-x86");
    public static string QemuImg => Find("qemu-img", "qemu-utils");

    /// <summary>Runs a program to completion (<see cref="HostProgram"/>, at most 5 minutes unless told); throws
    /// <see cref="VmException"/> with its stderr when it fails.</summary>
    public static string Run(string program, IEnumerable<string> args, string what, TimeSpan? timeout = null,
        Stream? stdin = null, Stream? stdout = null) =>
        HostProgram.Run(program, args, new HostProgramOptions
        {
            What = what, Timeout = timeout ?? TimeSpan.FromMinutes(5), Stdin = stdin, Stdout = stdout,
            Error = e => new VmException(e.Message, e),
        });

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

    public static void TryDelete(string path)
    {
        try { if (File.Exists(path) || IsSocket(path)) File.Delete(path); } catch (IOException) { } catch (
            UnauthorizedAccessException) { }
    }

    static bool IsSocket(string path)
    {
        try { return (File.GetAttributes(path) & FileAttributes.Normal) == 0 && Path.Exists(path); }
        catch (IOException) { return false; }
    }
}
