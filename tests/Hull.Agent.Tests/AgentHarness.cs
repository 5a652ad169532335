using System.Diagnostics;
using System.Text;
using Hull.Agent.Protocol;
using Hull.TestSupport;

[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace Hull.Agent.Tests;

/// <summary>
/// Runs the real agent as a host process on a unix socket that stands in for the virtio-serial port (the agent
/// listens; the test is the host, and may drop and reopen the connection as a host daemon would).
/// HULL_AGENT=PATH runs another build (for instance the NativeAOT binary in out/bin).
/// </summary>
public sealed partial class AgentHarness : IAsyncDisposable
{
    readonly TempDir _dir;
    readonly Process _proc;
    readonly StringBuilder _log = new();
    public string Socket { get; }
    public string Dir => _dir.Path;

    /// <summary>The agent command: HULL_AGENT (a built binary), else the JIT build run as "dotnet
    /// hull-agent.dll".</summary>
    public static string[] AgentCommand
    {
        get
        {
            if (Environment.GetEnvironmentVariable("HULL_AGENT") is { Length: > 0 } p) return [p];
            var config = AppContext.BaseDirectory.Contains("/bin/Debug/") ? "Debug" : "Release";
            var dll = Path.Combine(Repo.Root, "src", "Hull.Agent", "bin", config, "net10.0", "linux-x64",
                "hull-agent.dll");
            if (!File.Exists(dll)) throw new InvalidOperationException(
                $"{dll} is missing: build src/Hull.Agent first (building this test project does)");
            var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
            if (string.IsNullOrEmpty(dotnet))
                dotnet = Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet"
                    ? Environment.ProcessPath! : "dotnet";
            return [dotnet, dll];
        }
    }

    AgentHarness(string[] command, string[] extra)
    {
        _dir = new TempDir("hull-agent");
        Socket = Path.Combine(_dir.Path, "agent.sock");
        var psi = new ProcessStartInfo(command[0]) { RedirectStandardError = true, RedirectStandardOutput = true,
            UseShellExecute = false };
        foreach (var a in command[1..]) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add("--listen-unix");
        psi.ArgumentList.Add(Socket);
        psi.ArgumentList.Add("--verbose");
        foreach (var a in extra) psi.ArgumentList.Add(a);
        try { _proc = Process.Start(psi)!; }
        catch
        {
            _dir.Dispose();
            throw;
        }
        _proc.ErrorDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.OutputDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.BeginErrorReadLine();
        _proc.BeginOutputReadLine();
    }

    public static Task<AgentHarness> StartAsync(params string[] extra) => StartWithPrefixAsync([], extra);

    /// <summary>Runs the agent under a wrapper command (for instance unshare, to make it pid 1).</summary>
    public static async Task<AgentHarness> StartWithPrefixAsync(string[] prefix, params string[] extra)
    {
        var h = new AgentHarness([.. prefix, .. AgentCommand], extra);
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!File.Exists(h.Socket))
        {
            if (h._proc.HasExited || DateTime.UtcNow > deadline)
            {
                var log = h.Log;
                await h.DisposeAsync();
                throw new InvalidOperationException(
                    $"the agent did not start listening on {h.Socket}; its output:\n{log}");
            }
            await Task.Delay(20);
        }
        return h;
    }

    public Process Process => _proc;
    public string Log { get { lock (_log) return _log.ToString(); } }

    public async Task<AgentClient> ConnectAsync()
    {
        var c = await AgentClient.ConnectUnixAsync(Socket);
        try
        {
            await c.WaitReadyAsync(TimeSpan.FromSeconds(30));
            return c;
        }
        catch
        {
            await c.DisposeAsync();
            throw;
        }
    }

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "kill")]
    private static partial int SysKill(int pid, int sig);

    public async ValueTask DisposeAsync()
    {
        try
        {
            // SIGTERM: the agent ends its sessions (kills their process groups) and exits; SIGKILL if it does not.
            // A wrapper (unshare --fork ignores SIGTERM) is passed over: the agent is its child.
            if (!_proc.HasExited)
            {
                SysKill(_proc.Id, 15);
                try
                {
                    foreach (var child in File.ReadAllText($"/proc/{_proc.Id}/task/{_proc.Id}/children").Split(' ',
                        StringSplitOptions.RemoveEmptyEntries))
                        SysKill(int.Parse(child), 15);
                }
                catch (IOException) { }
            }
            try { await _proc.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30)); }
            catch (TimeoutException) { _proc.Kill(entireProcessTree: true); }
            await _proc.WaitForExitAsync();
        }
        catch (InvalidOperationException) { }
        _proc.Dispose();
        _dir.Dispose();
    }
}
