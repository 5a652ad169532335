using System.Diagnostics;
using System.Reflection;
using System.Text;
using Hull.Api;
using Hull.Sdk;
using Hull.TestSupport;

namespace Hull.Daemon.Tests;

/// <summary>
/// A real hulld (the JIT build of the test host: hulld plus the process test driver) on a private state dir and socket.
/// Dispose deletes every instance, stops the daemon, kills anything left that was started from the state dir,
/// unmounts anything under it and removes it.
/// </summary>
public sealed class TestDaemon : IDisposable
{
    public string Dir { get; }
    public string Socket { get; }
    public string StateDir { get; }
    Process? _proc;
    readonly StringBuilder _log = new();
    public HullClient Client { get; }

    public static string HostDir
    {
        get
        {
            var rel = typeof(TestDaemon).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().First(a => a.Key == "HullTestHostDir").Value!;
            return Path.Combine(Repo.Root, "tests", "Hull.Daemon.Tests", rel);
        }
    }

    public static string HostExe => Path.Combine(HostDir, "hull-testhost");

    public TestDaemon(bool start = true, string[]? extraArgs = null)
    {
        Requires.Root();
        Requires.Program("chroot");
        Requires.File("/bin/busybox", "busybox-static");
        Dir = Path.Combine("/tmp", "hull-dt-" + Guid.NewGuid().ToString("N")[..10]);
        Directory.CreateDirectory(Dir);
        StateDir = Path.Combine(Dir, "state");
        Socket = Path.Combine(Dir, "hulld.sock");
        Client = new HullClient(Socket);
        if (start) Start(extraArgs);
    }

    public void Start(string[]? extraArgs = null)
    {
        var psi = new ProcessStartInfo(HostExe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--socket", Socket, "--state-dir", StateDir }.Concat(extraArgs ?? [])) psi.ArgumentList.Add(a);
        _proc = Process.Start(psi)!;
        _proc.OutputDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.ErrorDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.BeginOutputReadLine();
        _proc.BeginErrorReadLine();
        for (var i = 0; i < 400; i++)
        {
            if (_proc.HasExited) throw new InvalidOperationException($"hulld exited with {_proc.ExitCode}: {Log}");
            if (Client.IsRunningAsync().GetAwaiter().GetResult()) return;
            Thread.Sleep(25);
        }
        throw new InvalidOperationException("hulld did not answer within 10 s: " + Log);
    }

    public string Log { get { lock (_log) return _log.ToString(); } }
    public int Pid => _proc?.Id ?? 0;

    /// <summary>kill -9 hulld.</summary>
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

    /// <summary>Runs the hull CLI (the test host's "cli" mode) against this daemon.</summary>
    public (int Code, string Out, string Err) CliIn(string? stdin, params string[] args)
    {
        var psi = new ProcessStartInfo(HostExe) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
        psi.ArgumentList.Add("cli");
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["HULL_SOCKET"] = Socket;
        psi.Environment["HULL_DIR"] = StateDir;
        psi.Environment["HULL_HULLD"] = HostExe;
        psi.Environment["HULL_CONFIG_DIR"] = Path.Combine(Dir, "config");
        using var p = Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        if (stdin is not null) p.StandardInput.Write(stdin);
        p.StandardInput.Close();
        if (!p.WaitForExit(120_000)) { p.Kill(true); throw new TimeoutException("hull " + string.Join(' ', args) + " hung"); }
        return (p.ExitCode, o.Result, e.Result);
    }

    public (int Code, string Out, string Err) Cli(params string[] args) => CliIn(null, args);

    public void Dispose()
    {
        try
        {
            if (_proc is null && Directory.Exists(StateDir) && File.Exists(Path.Combine(StateDir, "hull.db"))) Start();
            if (_proc is not null || Client.IsRunningAsync().GetAwaiter().GetResult())
                foreach (var i in Client.ListInstancesAsync().GetAwaiter().GetResult())
                    try { Client.DeleteInstanceAsync(i.Name, force: true).GetAwaiter().GetResult(); } catch (HullException) { }
        }
        catch (Exception) { }
        // A CLI-started daemon is not ours by handle: stop it through its pid file.
        var pidFile = Path.Combine(StateDir, "hulld.pid");
        Stop();
        if (File.Exists(pidFile) && int.TryParse(File.ReadAllText(pidFile).Trim(), out var dpid) && IsFromDir(dpid)) Hull.Linux.Libc.kill(dpid, Hull.Linux.Signals.SIGKILL);
        KillLeftovers();
        foreach (var line in File.ReadAllLines("/proc/self/mountinfo").Reverse())
        {
            var mp = line.Split(' ')[4];
            if (mp.StartsWith(Dir + "/", StringComparison.Ordinal)) Hull.Linux.Libc.umount2(mp, Hull.Linux.MS.MNT_DETACH);
        }
        Client.Dispose();
        try { Directory.Delete(Dir, true); } catch (Exception) { }
    }

    bool IsFromDir(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/cmdline").Contains(Dir, StringComparison.Ordinal); } catch (IOException) { return false; }
    }

    /// <summary>Kills every process whose command line or root mentions this test's directory (instance monitors and inits).</summary>
    void KillLeftovers()
    {
        for (var round = 0; round < 3; round++)
        {
            foreach (var d in Directory.EnumerateDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(d), out var pid) || pid == Environment.ProcessId) continue;
                string root = "";
                try { root = new DirectoryInfo($"/proc/{pid}/root").LinkTarget ?? ""; } catch (Exception) { }
                if (IsFromDir(pid) || root.StartsWith(Dir, StringComparison.Ordinal)) Hull.Linux.Libc.kill(pid, Hull.Linux.Signals.SIGKILL);
            }
            Thread.Sleep(50);
        }
    }
}

public static class Wait
{
    /// <summary>Polls until the condition holds; fails the test after a generous bound (a hang guard, not a timing assertion).</summary>
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
