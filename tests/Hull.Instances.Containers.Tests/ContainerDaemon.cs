using System.Diagnostics;
using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using Hull.Sdk;
using Hull.TestSupport;

namespace Hull.Instances.Containers.Tests;

/// <summary>
/// A real hulld with the container driver (the JIT build of Hull.Daemon.Program) on a private state dir and socket,
/// with the published hull binary as the container init. Dispose deletes every instance, stops the daemon, kills any
/// process still rooted under its dir, unmounts and removes everything, including engine cgroups left behind.
/// </summary>
public sealed class ContainerDaemon : IDisposable
{
    public string Dir { get; }
    public string Socket { get; }
    public string StateDir { get; }
    public HullClient Client { get; }
    Process? _proc;
    readonly StringBuilder _log = new();

    public static string HostExe
    {
        get
        {
            var rel = typeof(ContainerDaemon).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().First(a => a.Key == "HullContainerHostDir").Value!;
            return Path.Combine(Repo.Root, "tests", "Hull.Instances.Containers.Tests", rel, "hull-container-testhost");
        }
    }

    public static string InitBinary => Path.Combine(Repo.Bin, "hull-oci");

    /// <param name="stateOnOverlay">Puts the state dir on an overlayfs (as when hulld runs in a container), where the
    /// driver cannot stack its own overlays and must copy root filesystems.</param>
    public ContainerDaemon(bool stateOnOverlay = false)
    {
        Requires.Root();
        Requires.File("/bin/busybox", "busybox-static");
        Requires.File(InitBinary, "the published hull binary (make build)");
        Dir = Path.Combine("/tmp", "hull-ct-" + Guid.NewGuid().ToString("N")[..10]);
        Directory.CreateDirectory(Dir);
        StateDir = Path.Combine(Dir, "state");
        Socket = Path.Combine(Dir, "hulld.sock");
        Client = new HullClient(Socket);
        if (stateOnOverlay)
        {
            foreach (var x in new[] { "ovl/lower", "ovl/upper", "ovl/work", "state" }) Directory.CreateDirectory(Path.Combine(Dir, x));
            Hull.Linux.Sys.Mount("overlay", StateDir, "overlay", 0,
                $"lowerdir={Dir}/ovl/lower,upperdir={Dir}/ovl/upper,workdir={Dir}/ovl/work");
        }
        Start();
    }

    void Env(ProcessStartInfo psi)
    {
        psi.Environment["HULL_INIT_BINARY"] = InitBinary;
        psi.Environment["HULL_SOCKET"] = Socket;
        psi.Environment["HULL_DIR"] = StateDir;
        psi.Environment["HULL_HULLD"] = HostExe;
        psi.Environment["HULL_CONFIG_DIR"] = Path.Combine(Dir, "config");
    }

    /// <param name="exe">Another copy of the host (another build, as after an upgrade); default <see cref="HostExe"/>.</param>
    public void Start(string? exe = null)
    {
        var psi = new ProcessStartInfo(exe ?? HostExe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--socket", Socket, "--state-dir", StateDir }) psi.ArgumentList.Add(a);
        Env(psi);
        _proc = Process.Start(psi)!;
        _proc.OutputDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.ErrorDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.BeginOutputReadLine();
        _proc.BeginErrorReadLine();
        for (var i = 0; i < 800; i++)
        {
            if (_proc.HasExited) throw new InvalidOperationException($"hulld exited with {_proc.ExitCode}: {Log}");
            if (Client.IsRunningAsync().GetAwaiter().GetResult()) return;
            Thread.Sleep(25);
        }
        throw new InvalidOperationException("hulld did not answer within 20 s: " + Log);
    }

    public string Log { get { lock (_log) return _log.ToString(); } }

    public void Kill9()
    {
        _proc!.Kill();
        _proc.WaitForExit();
        _proc.Dispose();
        _proc = null;
    }

    public void Stop()
    {
        if (_proc is null) return;
        Hull.Linux.Libc.kill(_proc.Id, Hull.Linux.Signals.SIGTERM);
        if (!_proc.WaitForExit(15000)) _proc.Kill();
        _proc.WaitForExit();
        _proc.Dispose();
        _proc = null;
    }

    public (int Code, string Out, string Err) CliIn(string? stdin, params string[] args)
    {
        var psi = new ProcessStartInfo(HostExe) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
        psi.ArgumentList.Add("cli");
        foreach (var a in args) psi.ArgumentList.Add(a);
        Env(psi);
        using var p = Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        if (stdin is not null) p.StandardInput.Write(stdin);
        p.StandardInput.Close();
        if (!p.WaitForExit(120_000)) { p.Kill(true); throw new TimeoutException("hull " + string.Join(' ', args) + " hung"); }
        return (p.ExitCode, o.Result, e.Result);
    }

    public (int Code, string Out, string Err) Cli(params string[] args) => CliIn(null, args);

    /// <summary>The engine's cgroup directories of a running container (every hierarchy), from its init's /proc/PID/cgroup.</summary>
    public static List<string> CgroupDirsOf(int pid)
    {
        var dirs = new List<string>();
        foreach (var line in File.ReadAllLines($"/proc/{pid}/cgroup"))
        {
            var parts = line.Split(':', 3);
            if (parts.Length < 3 || !parts[2].Contains("/hull/", StringComparison.Ordinal)) continue;
            var ctrl = parts[1].Length == 0 ? "" : parts[1].StartsWith("name=", StringComparison.Ordinal) ? parts[1][5..] : parts[1];
            foreach (var mnt in ctrl.Length == 0 ? new[] { "/sys/fs/cgroup/unified", "/sys/fs/cgroup" } : [Path.Combine("/sys/fs/cgroup", ctrl)])
                if (Directory.Exists(mnt + parts[2])) { dirs.Add(mnt + parts[2]); break; }
        }
        return dirs;
    }

    public void Dispose()
    {
        try
        {
            if (_proc is not null)
                foreach (var i in Client.ListInstancesAsync().GetAwaiter().GetResult())
                    try { Client.DeleteInstanceAsync(i.Name, force: true).GetAwaiter().GetResult(); } catch (HullException) { }
        }
        catch (Exception) { }
        Stop();
        var pidFile = Path.Combine(StateDir, "hulld.pid");
        if (File.Exists(pidFile) && int.TryParse(File.ReadAllText(pidFile).Trim(), out var dpid) && Mentions(dpid)) Hull.Linux.Libc.kill(dpid, Hull.Linux.Signals.SIGKILL);
        var cgroups = new List<string>();
        var engine = Path.Combine(StateDir, "containers");
        if (Directory.Exists(engine))
            foreach (var f in Directory.EnumerateFiles(engine, "state.json", SearchOption.AllDirectories))
                foreach (Match m in Regex.Matches(File.ReadAllText(f), "\"[cC]groupPath\"\\s*:\\s*\"([^\"]+)\""))
                    cgroups.Add(m.Groups[1].Value);
        for (var round = 0; round < 3; round++)
        {
            foreach (var d in Directory.EnumerateDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(d), out var pid) || pid == Environment.ProcessId) continue;
                string root = "";
                try { root = new DirectoryInfo($"/proc/{pid}/root").LinkTarget ?? ""; } catch (Exception) { }
                if (Mentions(pid) || root.StartsWith(Dir, StringComparison.Ordinal)) Hull.Linux.Libc.kill(pid, Hull.Linux.Signals.SIGKILL);
            }
            Thread.Sleep(50);
        }
        foreach (var line in File.ReadAllLines("/proc/self/mountinfo").Reverse())
        {
            var mp = line.Split(' ')[4];
            if (mp.StartsWith(Dir + "/", StringComparison.Ordinal)) Hull.Linux.Libc.umount2(mp, Hull.Linux.MS.MNT_DETACH);
        }
        foreach (var cg in cgroups)
            foreach (var h in Directory.EnumerateDirectories("/sys/fs/cgroup").Append("/sys/fs/cgroup"))
                try { if (Directory.Exists(h + cg)) Directory.Delete(h + cg); } catch (Exception) { }
        Client.Dispose();
        try { Directory.Delete(Dir, true); } catch (Exception) { }
    }

    bool Mentions(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/cmdline").Contains(Dir, StringComparison.Ordinal); } catch (IOException) { return false; }
    }
}

public static class Wait
{
    /// <summary>Polls until the condition holds; fails after a generous bound (a hang guard, not a timing assertion).</summary>
    public static async Task UntilAsync(Func<Task<bool>> cond, string what)
    {
        for (var i = 0; i < 600; i++)
        {
            if (await cond()) return;
            await Task.Delay(50);
        }
        throw new TimeoutException("gave up waiting for " + what);
    }
}
