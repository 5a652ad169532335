using System.Diagnostics;
using System.Reflection;
using System.Text;
using Hull.Sdk;
using Hull.TestSupport;

namespace Hull.Instances.Vms.Tests;

/// <summary>
/// A real hulld with the real drivers (the JIT build of Hull.Daemon.Program) on a private state dir and socket, with
/// the published hull-agent for the built-in VM image and the VM cache shared with the VM engine's tests (artifacts/).
/// Dispose deletes every instance, stops the daemon, kills any process (QEMU) still naming its dir, removes everything.
/// </summary>
public sealed class VmDaemon : IDisposable
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
            var rel = typeof(VmDaemon).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().First(a => a.Key == "HullVmHostDir").Value!;
            return Path.Combine(Repo.Root, "tests", "Hull.Instances.Vms.Tests", rel, "hull-vm-testhost");
        }
    }

    public static string AgentBinary => Path.Combine(Repo.Bin, "hull-agent");
    public static string CacheDir => Path.Combine(Repo.Root, "artifacts", "vm-cache");

    public static void RequireVmHost()
    {
        Requires.Root();
        Requires.Program("qemu-system-x86_64");
        Requires.Program("qemu-img");
        Requires.Program("mkfs.ext4");
        Requires.File("/bin/busybox", "busybox-static");
        Requires.File(AgentBinary, "the published hull-agent (make build)");
        if (!Directory.EnumerateFiles("/boot", "vmlinuz-*").Any()) Requires.Missing("a guest kernel in /boot (linux-image-amd64)");
    }

    public VmDaemon()
    {
        RequireVmHost();
        Dir = Path.Combine("/tmp", "hull-vmd-" + Guid.NewGuid().ToString("N")[..10]);
        Directory.CreateDirectory(Dir);
        StateDir = Path.Combine(Dir, "state");
        Socket = Path.Combine(Dir, "hulld.sock");
        Client = new HullClient(Socket);
        Start();
    }

    void Env(ProcessStartInfo psi)
    {
        psi.Environment["HULL_INIT_BINARY"] = Path.Combine(Repo.Bin, "hull-oci");
        psi.Environment["HULL_AGENT_BINARY"] = AgentBinary;
        psi.Environment["HULL_VM_CACHE"] = CacheDir;
        psi.Environment["HULL_SOCKET"] = Socket;
        psi.Environment["HULL_DIR"] = StateDir;
        psi.Environment["HULL_CONFIG_DIR"] = Path.Combine(Dir, "config");
    }

    public void Start()
    {
        var psi = new ProcessStartInfo(HostExe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--socket", Socket, "--state-dir", StateDir }) psi.ArgumentList.Add(a);
        Env(psi);
        _proc = Process.Start(psi)!;
        _proc.OutputDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.ErrorDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.BeginOutputReadLine();
        _proc.BeginErrorReadLine();
        for (var i = 0; i < 1200; i++)
        {
            if (_proc.HasExited) throw new InvalidOperationException($"hulld exited with {_proc.ExitCode}: {Log}");
            if (Client.IsRunningAsync().GetAwaiter().GetResult()) return;
            Thread.Sleep(25);
        }
        throw new InvalidOperationException("hulld did not answer within 30 s: " + Log);
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
        if (!p.WaitForExit(300_000)) { p.Kill(true); throw new TimeoutException("hull " + string.Join(' ', args) + " hung"); }
        return (p.ExitCode, o.Result, e.Result);
    }

    public (int Code, string Out, string Err) Cli(params string[] args) => CliIn(null, args);

    /// <summary>QEMU processes whose command line names this path (a VM's state dir).</summary>
    public static List<int> QemuFor(string path)
    {
        var list = new List<int>();
        foreach (var d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), out var pid)) continue;
            try
            {
                var cmd = File.ReadAllText(Path.Combine(d, "cmdline")).Replace('\0', ' ');
                if (cmd.Contains("qemu-system", StringComparison.Ordinal) && cmd.Contains(path, StringComparison.Ordinal)) list.Add(pid);
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
        return list;
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
        for (var round = 0; round < 3; round++)
        {
            foreach (var d in Directory.EnumerateDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(d), out var pid) || pid == Environment.ProcessId) continue;
                if (Mentions(pid)) Hull.Linux.Libc.kill(pid, Hull.Linux.Signals.SIGKILL);
            }
            Thread.Sleep(50);
        }
        Client.Dispose();
        try { Directory.Delete(Dir, true); } catch (Exception) { }
    }

    bool Mentions(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/cmdline").Contains(Dir, StringComparison.Ordinal); } catch (IOException) { return false; }
    }
}
