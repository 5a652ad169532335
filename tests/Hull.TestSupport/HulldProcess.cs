using System.Diagnostics;
using System.Text;
using Hull.Sdk;

namespace Hull.TestSupport;

/// <summary>
/// A real hulld for tests: a JIT test host (hulld plus the drivers a test project wants, with a "cli" mode that runs
/// the hull CLI) on a private dir under /tmp with its own state dir, socket and CLI config. Subclasses add the
/// environment their drivers need and their own cleanup; <see cref="Dispose"/> deletes every instance, stops the
/// daemon (and one a CLI started through its pid file), kills every process that names the dir or is rooted in it,
/// unmounts what is left under it and removes it.
/// </summary>
public abstract class HulldProcess : IDisposable
{
    public string Dir { get; }
    public string Socket { get; }
    public string StateDir { get; }
    public HullClient Client { get; }
    public string HostProgram { get; }
    /// <summary>The network hulld makes at its first start (HULL_DEFAULT_NETWORK); null: none.</summary>
    public string? DefaultNetwork { get; set; }
    Process? _proc;
    readonly StringBuilder _log = new();
    readonly TimeSpan _startTimeout;

    protected HulldProcess(string hostExe, string dirPrefix, TimeSpan startTimeout)
    {
        HostProgram = hostExe;
        _startTimeout = startTimeout;
        Dir = Path.Combine("/tmp", dirPrefix + Guid.NewGuid().ToString("N")[..10]);
        Directory.CreateDirectory(Dir);
        StateDir = Path.Combine(Dir, "state");
        Socket = Path.Combine(Dir, "hulld.sock");
        Client = new HullClient(Socket);
    }

    /// <summary>The environment of the daemon and of every CLI run; subclasses add their drivers' settings.</summary>
    protected virtual void Environment(ProcessStartInfo psi)
    {
        psi.Environment["HULL_SOCKET"] = Socket;
        psi.Environment["HULL_DIR"] = StateDir;
        psi.Environment["HULL_HULLD"] = HostProgram;
        psi.Environment["HULL_CONFIG_DIR"] = Path.Combine(Dir, "config");
        // Test daemons run side by side on one host, where a default network (one bridge name, hullbr0) would be
        // shared: they make none unless a test asks for its own (network tests set a unique name).
        psi.Environment["HULL_DEFAULT_NETWORK"] = DefaultNetwork ?? "none";
    }

    /// <summary>Starts the daemon; <paramref name="program"/> runs another build of the host (an upgrade).</summary>
    public void Start(string[]? extraArgs = null, string? program = null)
    {
        var psi = new ProcessStartInfo(program ?? HostProgram) { RedirectStandardOutput = true,
            RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--socket", Socket, "--state-dir",
            StateDir }.Concat(extraArgs ?? [])) psi.ArgumentList.Add(a);
        Environment(psi);
        _proc = Process.Start(psi)!;
        _proc.OutputDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.ErrorDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.BeginOutputReadLine();
        _proc.BeginErrorReadLine();
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < _startTimeout)
        {
            if (_proc.HasExited) throw new InvalidOperationException($"hulld exited with {_proc.ExitCode}: {Log}");
            if (Client.IsRunningAsync().GetAwaiter().GetResult()) return;
            Thread.Sleep(25);
        }
        throw new InvalidOperationException($"hulld did not answer within {_startTimeout.TotalSeconds:0} s: {Log}");
    }

    public bool Running => _proc is not null;
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

    /// <summary>Runs the hull CLI (the test host's "cli" mode) against this daemon, with <paramref name="stdin"/> as
    /// its input.</summary>
    public (int Code, string Out, string Err) CliIn(string? stdin, params string[] args)
    {
        var psi = new ProcessStartInfo(HostProgram) { RedirectStandardOutput = true, RedirectStandardError = true,
            RedirectStandardInput = true, UseShellExecute = false };
        psi.ArgumentList.Add("cli");
        foreach (var a in args) psi.ArgumentList.Add(a);
        Environment(psi);
        using var p = Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        if (stdin is not null) p.StandardInput.Write(stdin);
        p.StandardInput.Close();
        if (!p.WaitForExit(300_000)) { p.Kill(true); throw new TimeoutException("hull " + string.Join(' ', args)
            + " hung"); }
        return (p.ExitCode, o.Result, e.Result);
    }

    public (int Code, string Out, string Err) Cli(params string[] args) => CliIn(null, args);

    /// <summary>Starts the CLI on a terminal of its own (a pty that script(1) holds), as a person runs it: what is
    /// written to the returned process's stdin is typed on that terminal; its stdout is what the terminal
    /// shows.</summary>
    public Process CliOnTerminal(params string[] args)
    {
        var psi = new ProcessStartInfo(Requires.Program("script")) { RedirectStandardOutput = true,
            RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
        var command = string.Join(' ', new[] { HostProgram, "cli" }.Concat(args).Select(a =>
            "'" + a.Replace("'", "'\\''", StringComparison.Ordinal) + "'"));
        foreach (var a in new[] { "-q", "-f", "-e", "-c", "exec " + command, "/dev/null" }) psi.ArgumentList.Add(a);
        Environment(psi);
        return Process.Start(psi)!;
    }

    /// <summary>True if the process's command line names this test's dir.</summary>
    protected bool Mentions(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/cmdline").Contains(Dir, StringComparison.Ordinal); } catch (
            IOException) { return false; }
    }

    /// <summary>Before the generic cleanup: deletes every instance through the daemon (subclasses may restart it
    /// first).</summary>
    protected virtual void DeleteInstances()
    {
        try
        {
            if (_proc is not null || Client.IsRunningAsync().GetAwaiter().GetResult())
                foreach (var i in Client.ListInstancesAsync().GetAwaiter().GetResult())
                    try { Client.DeleteInstanceAsync(i.Name, force: true).GetAwaiter().GetResult(); } catch (
                        HullException) { }
            DeleteNetworks();
        }
        catch (Exception) { }
    }

    /// <summary>Networks live on the host (bridge, nft table, dnsmasq): the profiles' nics go, then every
    /// network.</summary>
    void DeleteNetworks()
    {
        var nets = Client.ListNetworksAsync().GetAwaiter().GetResult();
        if (nets.Count == 0) return;
        foreach (var p in Client.ListProfilesAsync().GetAwaiter().GetResult())
        {
            var nics = p.Devices.Where(d => d.Value.GetValueOrDefault("type") == "nic").Select(d => d.Key).ToList();
            if (nics.Count == 0) continue;
            foreach (var n in nics) p.Devices.Remove(n);
            Client.UpdateProfileAsync(p.Name, new Hull.Api.ProfilePut { Config = p.Config, Devices = p.Devices,
                Description = p.Description }).GetAwaiter().GetResult();
        }
        foreach (var n in nets)
            try { Client.DeleteNetworkAsync(n.Name).GetAwaiter().GetResult(); } catch (HullException) { }
    }

    /// <summary>After the processes are gone and before the dir is removed (cgroups a subclass knows of...).</summary>
    protected virtual void CleanupExtra() { }

    public void Dispose()
    {
        DeleteInstances();
        Stop();
        // A CLI-started daemon is not ours by handle: stop it through its pid file.
        var pidFile = Path.Combine(StateDir, "hulld.pid");
        if (File.Exists(pidFile) && int.TryParse(File.ReadAllText(pidFile).Trim(), out var dpid)
            && Mentions(dpid)) Hull.Linux.Libc.kill(dpid, Hull.Linux.Signals.SIGKILL);
        for (var round = 0; round < 3; round++)
        {
            foreach (var d in Directory.EnumerateDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(d), out var pid) || pid == System.Environment.ProcessId) continue;
                string root = "";
                try { root = new DirectoryInfo($"/proc/{pid}/root").LinkTarget ?? ""; } catch (Exception) { }
                if (Mentions(pid) || root.StartsWith(Dir, StringComparison.Ordinal)) Hull.Linux.Libc.kill(pid,
                    Hull.Linux.Signals.SIGKILL);
            }
            Thread.Sleep(50);
        }
        foreach (var line in File.ReadAllLines("/proc/self/mountinfo").Reverse())
        {
            var mp = line.Split(' ')[4];
            if (mp.StartsWith(Dir + "/", StringComparison.Ordinal) || mp == Dir) Hull.Linux.Libc.umount2(mp,
                Hull.Linux.MS.MNT_DETACH);
        }
        CleanupExtra();
        Client.Dispose();
        try { Directory.Delete(Dir, true); } catch (Exception) { }
        GC.SuppressFinalize(this);
    }
}

public static class Wait
{
    /// <summary>Polls until the condition holds; fails the test after a generous bound (a hang guard, not a timing
    /// assertion).</summary>
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
